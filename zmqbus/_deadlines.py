"""Deadlines of a client core's pending work, keyed by ref.

Nearly all deadlines arrive in order (one timeout for every publish), so they
queue in a deque, O(1) each way; one earlier than the deque's last goes to a
heap. An entry whose work finished stays until it surfaces (nothing is
searched on completion); entries are compacted once finished ones dominate,
so memory follows what is pending.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Mapping

__all__ = ["Deadlines"]

_COMPACT_AT = 1024


class Deadlines:
    """Deadlines by ref: a ref counts while it is a key of ``pending``; the
    empty ref (the handshake) while ``handshake()`` says so."""

    __slots__ = ("_fifo", "_handshake", "_heap", "_pending")

    def __init__(self, pending: Mapping[bytes, object], handshake: Callable[[], bool]) -> None:
        self._pending = pending
        self._handshake = handshake
        self._fifo: deque[tuple[float, bytes]] = deque()
        self._heap: list[tuple[float, bytes]] = []

    def _alive(self, key: bytes) -> bool:
        return key in self._pending or (not key and self._handshake())

    def _kept(self, entries: Iterator[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
        pending = self._pending
        return (t for t in entries if t[1] in pending or not t[1])

    def __len__(self) -> int:
        """Entries held, finished ones included."""
        return len(self._fifo) + len(self._heap)

    def add(self, deadline: float, key: bytes) -> None:
        """Add ``key``, due at ``deadline``."""
        fifo = self._fifo
        if not fifo or deadline >= fifo[-1][0]:
            fifo.append((deadline, key))
            if len(fifo) > _COMPACT_AT and len(fifo) > 4 * (len(self._pending) + 1):
                self._fifo = deque(self._kept(iter(fifo)))
            return
        heap = self._heap
        heapq.heappush(heap, (deadline, key))
        if len(heap) > _COMPACT_AT and len(heap) > 4 * (len(self._pending) + 1):
            self._heap = list(self._kept(iter(heap)))
            heapq.heapify(self._heap)

    def earliest(self) -> float | None:
        """The earliest deadline of a live key, dropping finished ones on the way."""
        alive = self._alive
        best: float | None = None
        fifo = self._fifo
        while fifo:
            deadline, key = fifo[0]
            if alive(key):
                best = deadline
                break
            fifo.popleft()
        heap = self._heap
        while heap:
            deadline, key = heap[0]
            if alive(key):
                if best is None or deadline < best:
                    best = deadline
                break
            heapq.heappop(heap)
        return best

    def due(self, now: float) -> Iterator[bytes]:
        """Take out, in order, every key due at or before ``now`` (live or not)."""
        fifo, heap = self._fifo, self._heap
        while True:
            if fifo and fifo[0][0] <= now:
                yield fifo.popleft()[1]
            elif heap and heap[0][0] <= now:
                yield heapq.heappop(heap)[1]
            else:
                return

    def clear(self) -> None:
        """Forget every deadline."""
        self._fifo.clear()
        self._heap.clear()
