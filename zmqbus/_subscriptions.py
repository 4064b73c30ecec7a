"""A client core's local subscriptions: one record each, found by sid, by
sink and by pattern."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import protocol as p

if TYPE_CHECKING:
    from ._client import Sink

__all__ = ["Sub", "Subscriptions"]


class Sub:
    """One local subscription: its sid, the sink its messages go to, what it
    asked the broker for, and the ref of its SUBSCRIBE (b"" for none yet)."""

    __slots__ = ("consume", "pattern", "queue", "ref", "sid", "sink", "stream")

    def __init__(
        self, sid: bytes, sink: Sink, pattern: str, queue: str, consume: bytes | None = None
    ) -> None:
        self.sid = sid
        self.sink = sink
        self.pattern = pattern
        self.queue = queue
        self.ref = b""
        # A stream consumer's CONSUME body, and its stream's name (else None).
        self.consume = consume
        self.stream = ""

    def subscribe_frames(self, channel: bytes) -> list[bytes]:
        """The SUBSCRIBE (or, for a consumer, the CONSUME) that asks the
        broker for this subscription."""
        if self.consume is not None:
            return [p.H_CONSUME, channel, self.ref, self.sid, self.consume]
        return [
            p.H_SUBSCRIBE,
            channel,
            self.ref,
            self.sid,
            self.pattern.encode(),
            self.queue.encode(),
        ]


class Subscriptions:
    """Every open local subscription of one bus."""

    __slots__ = ("_by_pattern", "_by_sink", "_seq", "sinks")

    def __init__(self) -> None:
        # sid -> sink: the receive path's one lookup per message, kept flat.
        self.sinks: dict[bytes, Sink] = {}
        self._by_sink: dict[Sink, Sub] = {}
        self._by_pattern: dict[str, list[Sub]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_sink)

    def __iter__(self) -> Iterator[Sub]:
        """Every subscription, oldest first."""
        return iter(list(self._by_sink.values()))

    def add(self, sink: Sink, queue: str, consume: bytes | None = None) -> Sub:
        """Open a subscription for ``sink`` under a new sid (they wrap at 2**32);
        with ``consume``, a stream consumer's binding."""
        self._seq += 1
        sid = (self._seq & 0xFFFFFFFF).to_bytes(p.SID_BYTES, "big")
        sub = Sub(sid, sink, sink.pattern, queue, consume)
        self.sinks[sid] = sink
        self._by_sink[sink] = sub
        self._by_pattern.setdefault(sub.pattern, []).append(sub)
        return sub

    def remove(self, sink: Sink) -> Sub | None:
        """Close ``sink``'s subscription (ending the sink); None if it has none."""
        sub = self._by_sink.get(sink)
        if sub is None:
            return None
        subs = self._by_pattern[sub.pattern]
        subs.remove(sub)
        if not subs:
            del self._by_pattern[sub.pattern]
        self._forget(sub)
        return sub

    def remove_pattern(self, pattern: str) -> list[Sub]:
        """Close every subscription to exactly ``pattern`` (ending their sinks)."""
        subs = self._by_pattern.pop(pattern, [])
        for sub in subs:
            self._forget(sub)
        return subs

    def _forget(self, sub: Sub) -> None:
        del self._by_sink[sub.sink]
        del self.sinks[sub.sid]
        sub.sink.end()

    def by_sid(self, sid: bytes) -> Sub | None:
        """The subscription of ``sid``, if open."""
        sink = self.sinks.get(sid)
        return self._by_sink.get(sink) if sink is not None else None

    def targets(self, sids: bytes) -> list[Sink]:
        """The sinks named in a sids frame that are still open; ``ProtocolError``
        if the frame is malformed."""
        sinks = self.sinks
        if len(sids) == p.SID_BYTES:
            sink = sinks.get(sids)
            return [sink] if sink is not None else []
        p.check_sids(sids)
        return [sinks[s] for s in p.split_sids(sids) if s in sinks]

    def close_all(self) -> None:
        """End every sink and forget every subscription."""
        for sink in self.sinks.values():
            sink.end()
        self.sinks.clear()
        self._by_sink.clear()
        self._by_pattern.clear()
