"""Streams held in this process's memory: lost with it, committed on every write."""

from __future__ import annotations

import builtins
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator

from ._common import StoreBase, StreamBase
from .base import StoredMessage, StreamConfig, SubjectFilter

__all__ = ["MemoryStore", "MemoryStream"]

log = logging.getLogger("zmqbus.store")

# Removed seqs stay in the seq index until they are this many and half of it.
_COMPACT_MIN = 1024


class MemoryStream(StreamBase):
    """A stream whose messages, dedup ids and consumer states live in dicts."""

    def __init__(self, config: StreamConfig) -> None:
        super().__init__(config, first_seq=1, last_seq=0, messages=0, nbytes=0)
        self._msgs: dict[int, StoredMessage] = {}
        # Every seq appended, ascending, removed ones included until compaction:
        # bisect finds a start in O(log n) without sorting the dict.
        self._seqs: list[int] = []
        self._head = 0  # index in _seqs of the first stored message
        self._holes = 0  # removed seqs in _seqs[_head:]
        self._ids: dict[builtins.bytes, tuple[int, float]] = {}
        self._id_order: deque[tuple[float, builtins.bytes, int]] = deque()
        self._consumers: dict[str, builtins.bytes] = {}

    def _insert(
        self,
        seq: int,
        topic: builtins.bytes,
        body: builtins.bytes,
        msg_id: builtins.bytes,
        now: float,
        size: int,
    ) -> None:
        self._msgs[seq] = StoredMessage(seq, topic, body, msg_id, now)
        self._seqs.append(seq)

    def _fetch(self, seq: int) -> StoredMessage | None:
        return self._msgs.get(seq)

    def _iter_head(self) -> Iterator[tuple[int, int, float]]:
        seqs, msgs = self._seqs, self._msgs
        for i in range(self._head, len(seqs)):
            m = msgs.get(seqs[i])
            if m is not None:
                yield m.seq, len(m.topic) + len(m.body), m.time

    def _next_entry(self, seq: int) -> tuple[int, float] | None:
        seqs, msgs = self._seqs, self._msgs
        for i in range(bisect_left(seqs, seq, self._head), len(seqs)):
            m = msgs.get(seqs[i])
            if m is not None:
                return m.seq, m.time
        return None

    def _delete_below(self, seq: int) -> None:
        seqs, msgs = self._seqs, self._msgs
        i = self._head
        while i < len(seqs) and seqs[i] < seq:
            if msgs.pop(seqs[i], None) is None:
                self._holes -= 1
            i += 1
        self._head = i
        self._compact()

    def _delete_one(self, seq: int) -> int | None:
        m = self._msgs.pop(seq, None)
        if m is None:
            return None
        self._holes += 1
        seqs, msgs = self._seqs, self._msgs
        while self._head < len(seqs) and seqs[self._head] not in msgs:
            self._head += 1
            self._holes -= 1
        self._compact()
        return len(m.topic) + len(m.body)

    def _delete_all(self) -> None:
        self._msgs.clear()
        self._seqs.clear()
        self._head = self._holes = 0

    def _compact(self) -> None:
        dead = self._head + self._holes
        if dead >= _COMPACT_MIN and dead * 2 >= len(self._seqs):
            self._seqs = [s for s in self._seqs[self._head :] if s in self._msgs]
            self._head = self._holes = 0

    def _scan(self, start: int, limit: int, match: SubjectFilter) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        seqs, msgs = self._seqs, self._msgs
        for i in range(bisect_left(seqs, start, self._head), len(seqs)):
            m = msgs.get(seqs[i])
            if m is not None and match(m.topic):
                out.append(m)
                if len(out) >= limit:
                    break
        return out

    def _newest(self, match: SubjectFilter) -> StoredMessage | None:
        seqs, msgs = self._seqs, self._msgs
        for i in range(len(seqs) - 1, self._head - 1, -1):
            m = msgs.get(seqs[i])
            if m is not None and match(m.topic):
                return m
        return None

    def _lookup_id(self, msg_id: builtins.bytes) -> tuple[int, float] | None:
        return self._ids.get(msg_id)

    def _claim_id(self, msg_id: builtins.bytes, seq: int, now: float, cutoff: float) -> int | None:
        seen = self._ids.get(msg_id)
        if seen is not None and seen[1] > cutoff:
            return seen[0]
        self._ids[msg_id] = (seq, now)
        self._id_order.append((now, msg_id, seq))
        return None

    def _forget_ids(self, cutoff: float) -> None:
        order, ids = self._id_order, self._ids
        while order and order[0][0] <= cutoff:
            t, msg_id, seq = order.popleft()
            # The id may have been stored again since: then this entry is stale.
            if ids.get(msg_id) == (seq, t):
                del ids[msg_id]

    def _consumer_blobs(self) -> list[builtins.bytes]:
        return [self._consumers[k] for k in sorted(self._consumers)]

    def _put_consumer(self, name: str, blob: builtins.bytes) -> None:
        self._consumers[name] = blob

    def _drop_consumer(self, name: str) -> bool:
        return self._consumers.pop(name, None) is not None


class MemoryStore(StoreBase[MemoryStream]):
    """A store of memory streams only (``storage="memory"``)."""

    def __init__(self) -> None:
        self._streams: dict[str, MemoryStream] = {}
        self._closed = False

    def create_stream(self, config: StreamConfig) -> MemoryStream:
        """See ``Store.create_stream``; only ``storage="memory"`` configs."""
        existing = self._existing(config, "memory", "a memory store")
        if existing is not None:
            return existing
        stream = self._streams[config.name] = MemoryStream(config)
        log.debug("created memory stream %r", config.name)
        return stream

    def delete_stream(self, name: str) -> bool:
        """See ``Store.delete_stream``."""
        self._live()
        stream = self._streams.pop(name, None)
        if stream is None:
            return False
        stream._dead = f"stream {name!r} was deleted"
        log.debug("deleted memory stream %r", name)
        return True

    def commit(self) -> None:
        """Nothing to do: memory writes take effect at once."""
        self._live()

    def close(self) -> None:
        """Drop every stream; idempotent."""
        if self._closed:
            return
        for stream in self._streams.values():
            stream._dead = "store is closed"
        self._streams.clear()
        self._closed = True
