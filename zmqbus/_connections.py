"""The broker's transport connections: which have joined, and which to close.

A connection is known by its key, ``(fd, address)``: the descriptor libzmq
accepted it on and the peer's address as the kernel gives it. A descriptor
alone is not enough, as the kernel hands a closed one's number to the next
connection. Sans-IO: the broker reports what its socket monitor and HELLOs
show, and closes what ``expired`` names.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["ConnKey", "Connections"]

ConnKey = tuple[int, str]


class Connections:
    """Accepted connections, joined (a HELLO was welcomed on them) or not.

    An unjoined connection holds a descriptor and a libzmq session for
    nothing: it is closed once unjoined for ``hello_timeout`` seconds, and the
    oldest unjoined ones are closed at once while more than ``capacity`` are
    open (so that libzmq never runs out of descriptors to accept on).
    """

    __slots__ = ("_closing", "_joined", "_unjoined", "capacity", "hello_timeout")

    def __init__(self, hello_timeout: float, capacity: int) -> None:
        self.hello_timeout = hello_timeout
        self.capacity = capacity
        # Unjoined connections, oldest first: key -> since when.
        self._unjoined: OrderedDict[ConnKey, float] = OrderedDict()
        self._joined: dict[ConnKey, bytes] = {}  # key -> the routing id joined on it
        self._closing: set[ConnKey] = set()  # named by expired(), not yet closed

    def __len__(self) -> int:
        """Connections open (as far as the events reported so far show)."""
        return len(self._unjoined) + len(self._joined) + len(self._closing)

    @property
    def unjoined(self) -> int:
        """Open connections on which no peer is joined (closing ones included)."""
        return len(self._unjoined) + len(self._closing)

    def accepted(self, key: ConnKey, now: float) -> None:
        """A connection was accepted at ``now``."""
        if key not in self._joined:  # a HELLO's report may come first
            self._unjoined[key] = now

    def closed(self, key: ConnKey) -> bytes | None:
        """The connection ``key`` closed; returns the routing id joined on it."""
        self._unjoined.pop(key, None)
        self._closing.discard(key)
        return self._joined.pop(key, None)

    def joined(self, key: ConnKey, ident: bytes) -> None:
        """A HELLO that came on ``key`` was welcomed: it holds a peer now."""
        self._unjoined.pop(key, None)
        self._closing.discard(key)
        self._joined[key] = ident

    def left(self, key: ConnKey, ident: bytes, now: float) -> None:
        """The peer ``ident`` joined on ``key`` left, its connection still open:
        unjoined again from ``now``."""
        if self._joined.get(key) == ident:
            del self._joined[key]
            self._unjoined[key] = now

    def ident(self, key: ConnKey) -> bytes | None:
        """The routing id joined on ``key``, if any."""
        return self._joined.get(key)

    def expired(self, now: float) -> list[ConnKey]:
        """The connections to close now, each named once: every one unjoined
        for ``hello_timeout``, and the oldest unjoined past ``capacity``."""
        unjoined = self._unjoined
        out: list[ConnKey] = []
        # Those already closing are as good as gone.
        over = len(self._unjoined) + len(self._joined) - self.capacity
        limit = now - self.hello_timeout
        while unjoined:
            key, since = next(iter(unjoined.items()))
            if over <= len(out) and since > limit:
                break
            del unjoined[key]
            self._closing.add(key)
            out.append(key)
        return out

    def due(self) -> float | None:
        """When ``expired`` next has one to name (None: none unjoined)."""
        if self._unjoined and len(self._unjoined) + len(self._joined) > self.capacity:
            return float("-inf")
        for since in self._unjoined.values():
            return since + self.hello_timeout
        return None
