"""Durable streams at the broker, with no sockets: what a channel's streams
capture, stream management, and consumers with their deliveries and acks.

``BrokerState`` owns one ``Streams``. It asks ``capture`` for each message
published on a channel that has streams, hands it STREAM, CONSUME and
STREAM_ACK requests, and calls ``pump`` (deliveries to consumers), ``tick``
(ack waits and redeliveries) and ``commit`` (one store transaction per loop
pass, before any reply of the pass is sent). Storage is the store's business
(``zmqbus.store``): nothing here knows whether a stream lives in SQLite or
in memory.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import msgpack  # type: ignore[import-untyped]

from . import protocol as p
from .errors import ProtocolError
from .limits import Limits
from .protocol import ErrorCode
from .store import ConsumerState, Store, StoreError, StreamConfig, StreamFull
from .store import Stream as StoredStream
from .topics import matches, validate_pattern, validate_topic
from .users import overlaps

if TYPE_CHECKING:
    from ._peer import Peer

__all__ = ["ConsumerConfig", "Streams"]

log = logging.getLogger("zmqbus.broker")

# Stored messages read from the store per consumer per pass: a consumer with a
# backlog of millions never holds the loop up for long.
READ_SLICE = 256
# Topic -> capturing stream, per channel, before the cache is cleared.
CAPTURE_CACHE = 4096
# Seconds a durable consumer's changes (deliveries, acks) may wait to be saved:
# one save of its whole state then covers every ack of that time, where a save
# per loop pass cost more than the acks (2.2k acks/s). A crash forgets at most
# this much, and what it forgets is delivered again (at least once).
SAVE_EVERY = 0.1
# A message body starts [bin16 id, ...]: fixarray of 4 or more, then bin8 of 16.
_ID_AT = 3
_ID_END = _ID_AT + 16
TOKEN_BYTES = 4 + 8 + 16  # consumer id, sequence, tag
_TAG_AT = 12
_SESSIONS_CACHED = 4096
_OP_NEEDS_NAME = frozenset(
    ("info", "delete", "purge", "get", "consumer_info", "consumer_delete", "consumer_list")
)


_CONFIG_KEYS = frozenset(f.name for f in fields(StreamConfig)) - {"channel"}


def message_id(body: bytes) -> bytes:
    """The 16-byte id at the head of a message body; 422 if it has none."""
    if len(body) >= _ID_END and 0x94 <= body[0] <= 0x9F and body[1:3] == b"\xc4\x10":
        return body[_ID_AT:_ID_END]
    raise ProtocolError(ErrorCode.BAD_BODY, "a stored message's body must start [bin16 id, ...]")


def _bad(text: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_BODY, text)


def _number(d: Mapping[str, Any], key: str, default: float, *, lo: float = 0.0) -> float:
    value = d.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{key} must be a number")
    if value < lo:
        raise _bad(f"{key} must be at least {lo:g}")
    return float(value)


def _int(d: Mapping[str, Any], key: str, default: int, *, lo: int) -> int:
    value = d.get(key, default)
    if value is None:
        return default
    if type(value) is not int or (value < lo and value != -1):
        raise _bad(f"{key} must be an int of at least {lo} (or -1: no limit)")
    return value


def _name(value: str, what: str) -> None:
    try:
        p.check_stream_name(value.encode("utf-8", "replace"))
    except ProtocolError as exc:
        raise _bad(f"{what}: {exc.detail}") from None


def _text(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(f"{key} must be a non-empty str")
    return value


@dataclass(frozen=True)
class ConsumerConfig:
    """A consumer as CONSUME (or the ``consumer_add`` op) asks for it. Times
    in seconds here, milliseconds on the wire."""

    stream: str
    durable: str | None = None
    filter: str | None = None
    deliver: str = "all"  # "all", "new", "last", "seq" (start_seq), "time" (start_time)
    start_seq: int = 0
    start_time: float = 0.0
    ack_wait: float = 30.0
    max_deliver: int = -1
    backoff: tuple[float, ...] = ()
    dead_letter: str | None = None
    max_ack_pending: int = 1000

    @classmethod
    def from_body(cls, d: Mapping[str, Any], limits: Limits) -> ConsumerConfig:
        """Checked from a CONSUME body (or ``config`` of ``consumer_add``)."""
        # Keys it does not know are ignored (the spec's rule for bodies), so a
        # later client's options reach an older broker harmlessly.
        stream = d.get("stream") or d.get("name")
        if not isinstance(stream, str):
            raise _bad("stream must be a stream name")
        _name(stream, "stream")
        durable = _text(d, "durable")
        if durable is not None:
            _name(durable, "durable")
        flt = _text(d, "filter")
        if flt is not None:
            try:
                validate_pattern(flt)
            except (TypeError, ValueError) as exc:
                raise ProtocolError(ErrorCode.BAD_TOPIC, f"filter: {exc}") from None
        dead = _text(d, "dead_letter")
        if dead is not None:
            try:
                validate_topic(dead)
            except (TypeError, ValueError) as exc:
                raise ProtocolError(ErrorCode.BAD_TOPIC, f"dead_letter: {exc}") from None
        start_seq = _int(d, "start_seq", 0, lo=0)
        start_time = _number(d, "start_time", 0.0)
        deliver = d.get("deliver", "all") or "all"
        if deliver not in ("all", "new", "last"):
            raise _bad("deliver must be 'all', 'new' or 'last'")
        if start_seq > 0:
            deliver = "seq"
        elif start_time > 0:
            deliver = "time"
        backoff = d.get("backoff") or []
        if not isinstance(backoff, list | tuple) or len(backoff) > 100:
            raise _bad("backoff must be a list of at most 100 delays (ms)")
        delays = tuple(_number({"backoff": b}, "backoff", 0.0) / 1000 for b in backoff)
        pending = _int(d, "max_ack_pending", 1000, lo=1)
        if pending == -1 or pending > limits.max_ack_pending:
            pending = limits.max_ack_pending
        max_deliver = _int(d, "max_deliver", -1, lo=1)
        return cls(
            stream=stream,
            durable=durable,
            filter=flt,
            deliver=deliver,
            start_seq=start_seq,
            start_time=start_time,
            ack_wait=_number(d, "ack_wait", 30_000.0, lo=1.0) / 1000,
            max_deliver=max_deliver,
            backoff=delays,
            dead_letter=dead,
            max_ack_pending=pending,
        )

    def to_dict(self) -> dict[str, Any]:
        """As the wire and the store carry it (milliseconds)."""
        return {
            "stream": self.stream,
            "durable": self.durable,
            "filter": self.filter,
            # "seq" and "time" are how it is kept; on the wire start_seq or
            # start_time says so, so that the map is a CONSUME body again.
            "deliver": self.deliver if self.deliver in ("all", "new", "last") else "all",
            "start_seq": self.start_seq,
            "start_time": self.start_time,
            "ack_wait": round(self.ack_wait * 1000),
            "max_deliver": self.max_deliver,
            "backoff": [round(b * 1000) for b in self.backoff],
            "dead_letter": self.dead_letter,
            "max_ack_pending": self.max_ack_pending,
        }

    def same_binding(self, other: ConsumerConfig) -> bool:
        """True if ``other`` asks for this consumer as it is: where it starts
        matters only when it is made."""
        return self.to_dict() | {"deliver": "", "start_seq": 0, "start_time": 0} == (
            other.to_dict() | {"deliver": "", "start_seq": 0, "start_time": 0}
        )


class _Consumer:
    """One consumer: its position, what it has out, and who takes its messages."""

    __slots__ = (
        "cid",
        "config",
        "cursor",
        "due",
        "errors",
        "members",
        "next_member",
        "outstanding",
        "ready",
        "redelivered",
        "state",
        "stream",
        "subjects",
    )

    def __init__(
        self, cid: int, stream: StoredStream, config: ConsumerConfig, state: ConsumerState
    ) -> None:
        self.cid = cid
        self.stream = stream
        self.config = config
        self.state = state
        self.subjects: list[str] | None = [config.filter] if config.filter else None
        self.cursor = state.delivered_seq + 1  # the next stored sequence to read
        self.members: list[tuple[bytes, bytes]] = []  # (ident, sid), in bind order
        self.next_member = 0
        # Delivered and not settled: seq -> (member ident, deadline, the token
        # sent, the member's session).
        self.outstanding: dict[int, tuple[bytes, float, bytes, bytes]] = {}
        # In sequence order (a loaded state may not be): the oldest unsettled
        # comes first, which the ack floor reads.
        state.pending = dict(sorted(state.pending.items()))
        self.ready: deque[int] = deque(state.pending)  # to deliver again now
        self.due: list[tuple[float, int]] = []  # (when, seq): naked with a delay
        self.errors: dict[int, str] = {}  # seq -> the last nak or handler error text
        self.redelivered = 0

    @property
    def name(self) -> str | None:
        return self.config.durable

    def info(self) -> dict[str, Any]:
        state = self.state
        return {
            "stream": self.stream.config.name,
            "name": self.config.durable,
            "config": self.config.to_dict(),
            "delivered": state.delivered_seq,
            "ack_floor": state.ack_floor,
            "pending": len(state.pending),
            "waiting": len(self.members),
            "redelivered": self.redelivered,
        }


class Streams:
    """A broker's streams and consumers (see the module)."""

    def __init__(
        self,
        store: Store,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.time,
        key: bytes | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.clock = clock  # wall time: stored times, max_age, start_time
        self._key = key if key is not None else os.urandom(32)
        self._sessions: dict[bytes, Any] = {}  # session -> its keyed blake2b, to copy
        # Streams by channel, and per channel a topic -> stream cache.
        self.by_channel: dict[bytes, list[StoredStream]] = {}
        self._cache: dict[bytes, dict[bytes, StoredStream | None]] = {}
        self.consumers: dict[int, _Consumer] = {}
        self._durables: dict[tuple[str, str], _Consumer] = {}
        self._bindings: dict[tuple[bytes, bytes], _Consumer] = {}  # (ident, sid)
        self.bound: Counter[bytes] = Counter()  # sids bound, by ident
        self._next_cid = 0
        self.dirty = False  # staged writes await commit()
        self.changed: set[_Consumer] = set()  # durable consumers to save at commit
        # When the changed consumers are saved next (None: none changed); a
        # STREAM or CONSUME request has them saved before its reply instead.
        self.save_at: float | None = None
        self._save_now = False
        # The earliest ack wait or delayed redelivery (None: none), and
        # whether any stream has a max_age (tick then expires once a second).
        self.next_due: float | None = None
        # A consumer has more to look at than one pass read: pass again soon.
        self.more = False
        # Consumers that may have something to deliver: woken by a stored
        # message, an ack, a bind, a redelivery; only these are pumped.
        self.awake: dict[_Consumer, None] = {}  # ordered: consumers take turns fairly
        self._readers: dict[str, list[_Consumer]] = {}  # by stream name
        self.expiring = False
        self._expire_at = 0.0
        self.counters: Counter[str] = Counter()
        # (channel, topic, body) dead letters for the broker to publish.
        self.dead_letters: list[tuple[bytes, bytes, bytes]] = []
        for stream in store.streams():
            self._index(stream)
            for state in stream.consumers():
                self._load(stream, state)

    # --- capture -------------------------------------------------------------

    def capture(self, channel: bytes, topic: bytes) -> StoredStream | None:
        """The stream of ``channel`` that stores messages on ``topic``, if any."""
        cache = self._cache.get(channel)
        if cache is None:
            return None
        stream = cache.get(topic, False)
        if stream is not False:
            return stream  # type: ignore[return-value]
        text = topic.decode("utf-8")
        found = None
        for candidate in self.by_channel.get(channel, ()):
            if any(matches(s, text) for s in candidate.config.subjects):
                found = candidate
                break
        if len(cache) >= CAPTURE_CACHE:
            cache.clear()
        cache[topic] = found
        return found

    def put(self, stream: StoredStream, topic: bytes, body: bytes) -> tuple[int, bool]:
        """Stage one message: (seq, duplicate). 429 if the stream is full and
        refuses new messages, 422 for a body with no id, 507 if the store fails."""
        msg_id = message_id(body)
        try:
            seq, duplicate = stream.append(topic, body, msg_id, self.clock())
        except StreamFull as exc:
            self.counters["stream_full"] += 1
            raise ProtocolError(ErrorCode.LIMIT_REACHED, str(exc)) from None
        except StoreError as exc:
            raise self._failed(exc) from None
        self.dirty = True
        if duplicate:
            self.counters["duplicates"] += 1
        else:
            self.counters["stored"] += 1
            readers = self._readers.get(stream.config.name)
            if readers:
                self.awake.update(dict.fromkeys(readers))
        return seq, duplicate

    def _failed(self, exc: Exception) -> ProtocolError:
        log.error("stream store failed: %s", exc)
        self.counters["store_errors"] += 1
        return ProtocolError(ErrorCode.STORE_FAILED, f"the broker's store failed: {exc}")

    # --- management ----------------------------------------------------------

    def request(self, channel: bytes, body: Mapping[str, Any], now: float) -> dict[str, Any]:
        """One STREAM request on ``channel``: the STREAM_REPLY body, or a
        ProtocolError (404 unknown, 410 conflicts, 422 bad arguments, 429
        limits, 507 store failure)."""
        self._save_now = True  # what its reply shows of a consumer is saved first
        op = body.get("op")
        name = body.get("name")
        if op in _OP_NEEDS_NAME:
            if not isinstance(name, str):
                raise _bad(f"{op} needs a stream name")
            stream = self._stream(channel, name)
        if op == "add":
            return {"stream": self._info(self._add(channel, body.get("config")))}
        if op == "list":
            return {"streams": [self._info(s) for s in self.by_channel.get(channel, ())]}
        if op == "info":
            return {"stream": self._info(stream)}
        if op == "delete":
            self._delete(stream)
            return {"deleted": True}
        if op == "purge":
            purged = self._write(stream.purge)
            for consumer in self._of(stream):
                self._forget_pending(consumer)
            return {"purged": purged}
        if op == "get":
            seq = body.get("seq")
            if type(seq) is not int or seq < 1:
                raise _bad("get needs seq, a positive int")
            msg = stream.get(seq)
            if msg is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"stream {name!r} has no message {seq}")
            return {
                "message": {"seq": msg.seq, "topic": msg.topic, "body": msg.body, "time": msg.time}
            }
        if op == "consumer_list":
            return {"consumers": [c.info() for c in self._of(stream)]}
        if op in ("consumer_info", "consumer_delete"):
            durable = body.get("consumer")
            found = self._durables.get((stream.config.name, str(durable)))
            if found is None:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"stream {name!r} has no consumer {durable!r}"
                )
            if op == "consumer_info":
                return {"consumer": found.info()}
            self._drop_consumer(found)
            return {"deleted": True}
        if op == "consumer_add":
            config = body.get("config")
            if not isinstance(config, dict):
                raise _bad("consumer_add needs config, a map")
            cfg = ConsumerConfig.from_body(config, self.limits)
            if cfg.durable is None:
                raise _bad("consumer_add makes durable consumers: give config.durable")
            return {"consumer": self._consumer(channel, cfg, now).info()}
        raise _bad(f"unknown stream op {op!r}")

    def _stream(self, channel: bytes, name: str) -> StoredStream:
        stream = self.store.stream(name)
        if stream is None or stream.config.channel != channel:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no stream {name!r} on this channel")
        return stream

    def _add(self, channel: bytes, raw: object) -> StoredStream:
        if not isinstance(raw, dict):
            raise _bad("add needs config, a map")
        try:
            # Keys it does not know are ignored, as the spec asks of bodies.
            known = {k: v for k, v in raw.items() if k in _CONFIG_KEYS}
            config = StreamConfig.from_dict({**known, "channel": channel})
        except (TypeError, ValueError) as exc:
            raise _bad(f"stream config: {exc}") from None
        existing = self.store.stream(config.name)
        if existing is not None:
            if existing.config == config:
                return existing  # idempotent
            raise ProtocolError(
                ErrorCode.CONFLICT, f"stream {config.name!r} exists with another config"
            )
        for other in self.by_channel.get(channel, ()):
            for a in other.config.subjects:
                for b in config.subjects:
                    if overlaps(a, b):
                        raise ProtocolError(
                            ErrorCode.CONFLICT,
                            f"subjects {b!r} overlap {a!r} of stream {other.config.name!r}",
                        )
        if sum(len(v) for v in self.by_channel.values()) >= self.limits.max_streams:
            raise ProtocolError(
                ErrorCode.LIMIT_REACHED, f"max_streams is {self.limits.max_streams}"
            )
        try:
            stream = self.store.create_stream(config)
        except StoreError as exc:
            raise ProtocolError(ErrorCode.STORE_FAILED, str(exc)) from None
        except ValueError as exc:
            raise ProtocolError(ErrorCode.CONFLICT, str(exc)) from None
        self.dirty = True
        self._index(stream)
        log.info("stream %s added: %s", config.name, ", ".join(config.subjects))
        return stream

    def _index(self, stream: StoredStream) -> None:
        channel = stream.config.channel
        self.by_channel.setdefault(channel, []).append(stream)
        self._cache[channel] = {}
        self._ages()

    def _ages(self) -> None:
        self.expiring = any(s.config.max_age for v in self.by_channel.values() for s in v)

    def _delete(self, stream: StoredStream) -> None:
        for consumer in self._of(stream):
            self._drop_consumer(consumer)
        channel = stream.config.channel
        streams = self.by_channel[channel]
        streams.remove(stream)
        if streams:
            self._cache[channel] = {}
        else:
            del self.by_channel[channel]
            del self._cache[channel]
        self._write(lambda: self.store.delete_stream(stream.config.name))
        self._ages()
        log.info("stream %s deleted", stream.config.name)

    def _write(self, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except StoreError as exc:
            raise self._failed(exc) from None
        self.dirty = True
        return result

    def _of(self, stream: StoredStream) -> list[_Consumer]:
        return [c for c in self.consumers.values() if c.stream is stream]

    def _info(self, stream: StoredStream) -> dict[str, Any]:
        config = stream.config.to_dict()
        config.pop("channel", None)
        return {
            "name": stream.config.name,
            "config": config,
            "messages": stream.messages,
            "bytes": stream.bytes,
            "first_seq": stream.first_seq,
            "last_seq": stream.last_seq,
            "consumers": len(self._of(stream)),
        }

    # --- consumers -----------------------------------------------------------

    def consume(
        self, channel: bytes, ident: bytes, sid: bytes, body: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        """Bind the consumer CONSUME asks for to (``ident``, ``sid``); its info."""
        self._save_now = True
        if (ident, sid) in self._bindings:
            raise ProtocolError(ErrorCode.SID_IN_USE, f"sid {sid.hex()} is bound already")
        config = ConsumerConfig.from_body(body, self.limits)
        consumer = self._consumer(channel, config, now)
        consumer.members.append((ident, sid))
        self.bound[ident] += 1
        self.awake[consumer] = None
        self._bindings[(ident, sid)] = consumer
        return consumer.info()

    def _consumer(self, channel: bytes, config: ConsumerConfig, now: float) -> _Consumer:
        stream = self._stream(channel, config.stream)
        if config.durable is not None:
            found = self._durables.get((config.stream, config.durable))
            if found is not None:
                if not found.config.same_binding(config):
                    raise ProtocolError(
                        ErrorCode.CONFLICT,
                        f"consumer {config.durable!r} exists with another config",
                    )
                return found
        if stream.config.retention == "work_queue":
            for other in self._of(stream):
                if overlaps(other.config.filter or ">", config.filter or ">"):
                    raise ProtocolError(
                        ErrorCode.CONFLICT,
                        "a work_queue stream takes one consumer per filter, and "
                        f"{other.config.filter or '>'!r} overlaps {config.filter or '>'!r}",
                    )
        if len(self._of(stream)) >= self.limits.max_consumers:
            raise ProtocolError(
                ErrorCode.LIMIT_REACHED, f"max_consumers is {self.limits.max_consumers}"
            )
        start = self._start(stream, config)
        state = ConsumerState(
            name=config.durable or "", config=config.to_dict(), delivered_seq=start - 1
        )
        state.ack_floor = start - 1
        consumer = self._new(stream, config, state)
        if config.durable is not None:
            self._write(lambda: stream.save_consumer(state))
        return consumer

    def _start(self, stream: StoredStream, config: ConsumerConfig) -> int:
        if config.deliver == "new":
            return stream.last_seq + 1
        if config.deliver == "last":
            last = stream.last_for([config.filter] if config.filter else None)
            return last.seq if last is not None else stream.last_seq + 1
        if config.deliver == "seq":
            return config.start_seq
        if config.deliver == "time":
            return stream.seq_at_time(config.start_time)
        return max(stream.first_seq, 1)

    def _new(self, stream: StoredStream, config: ConsumerConfig, state: ConsumerState) -> _Consumer:
        self._next_cid += 1
        consumer = _Consumer(self._next_cid, stream, config, state)
        self.consumers[consumer.cid] = consumer
        self._readers.setdefault(stream.config.name, []).append(consumer)
        if config.durable is not None:
            self._durables[(config.stream, config.durable)] = consumer
        return consumer

    def _load(self, stream: StoredStream, state: ConsumerState) -> None:
        try:
            config = ConsumerConfig.from_body(state.config, self.limits)
        except ProtocolError as exc:
            log.error("consumer %s of %s not loaded: %s", state.name, stream.config.name, exc)
            return
        self._new(stream, config, state)

    def _forget(self, consumer: _Consumer) -> None:
        del self.consumers[consumer.cid]
        readers = self._readers[consumer.stream.config.name]
        readers.remove(consumer)
        if not readers:
            del self._readers[consumer.stream.config.name]
        self.awake.pop(consumer, None)

    def _drop_consumer(self, consumer: _Consumer) -> None:
        self._forget(consumer)
        for binding in consumer.members:
            self._bindings.pop(binding, None)
            self.bound[binding[0]] -= 1
            if self.bound[binding[0]] <= 0:
                del self.bound[binding[0]]
        if consumer.name is not None:
            self._durables.pop((consumer.config.stream, consumer.name), None)
            name = consumer.name
            self._write(lambda: consumer.stream.delete_consumer(name))

    def unbind(self, ident: bytes, sid: bytes) -> bool:
        """UNSUBSCRIBE of a consumer's sid: the member leaves; what it held is
        delivered again at once. False if the sid is no consumer's."""
        consumer = self._bindings.pop((ident, sid), None)
        if consumer is None:
            return False
        self._leave(consumer, ident, sid)
        return True

    def peer_gone(self, ident: bytes) -> None:
        """A peer left: every consumer it was a member of loses it."""
        for binding in [b for b in self._bindings if b[0] == ident]:
            self._leave(self._bindings.pop(binding), *binding)

    def _leave(self, consumer: _Consumer, ident: bytes, sid: bytes) -> None:
        consumer.members.remove((ident, sid))
        self.bound[ident] -= 1
        if self.bound[ident] <= 0:
            del self.bound[ident]
        held = sorted(seq for seq, entry in consumer.outstanding.items() if entry[0] == ident)
        for seq in held:
            del consumer.outstanding[seq]
        consumer.ready.extendleft(reversed(held))  # first in line, without waiting
        self.awake[consumer] = None
        if not consumer.members and consumer.name is None:
            self._forget(consumer)  # an ephemeral consumer ends with its bus

    # --- deliveries ----------------------------------------------------------

    def pump(
        self, now: float, out: list[tuple[bytes, list[bytes]]], peers: Mapping[bytes, Peer]
    ) -> None:
        """Deliver what each bound consumer may take now into ``out``; each
        token is bound to its member's session (``peers``)."""
        awake, self.awake = self.awake, {}
        for consumer in awake:
            live = consumer.members and consumer.cid in self.consumers
            if live and self._deliver(consumer, now, out, peers):
                self.awake[consumer] = None
        self.more = bool(self.awake)

    def _deliver(
        self,
        consumer: _Consumer,
        now: float,
        out: list[tuple[bytes, list[bytes]]],
        peers: Mapping[bytes, Peer],
    ) -> bool:
        # What it may take now; True if it has room and more to read next pass.
        room = consumer.config.max_ack_pending - len(consumer.outstanding)
        if room <= 0:
            return False
        due = consumer.due
        while due and due[0][0] <= now:
            consumer.ready.append(heapq.heappop(due)[1])
        stream = consumer.stream
        sent = 0
        while consumer.ready and sent < room:
            seq = consumer.ready.popleft()
            if seq in consumer.outstanding or seq not in consumer.state.pending:
                continue  # settled meanwhile
            msg = stream.get(seq)
            if msg is None:  # removed by a limit: nothing to deliver
                self._settle(consumer, seq)
                continue
            max_deliver = consumer.config.max_deliver
            if max_deliver != -1 and consumer.state.pending[seq] >= max_deliver:
                self._dead(consumer, seq)  # held by a member that left: no more tries
                continue
            consumer.redelivered += 1
            self._send(consumer, msg.seq, msg.topic, msg.body, now, out, peers)
            sent += 1
        last = stream.last_seq
        if sent >= room or consumer.cursor > last:
            return False
        flt = consumer.config.filter
        if flt is None:
            want = min(room - sent, READ_SLICE)
            got = stream.read(consumer.cursor, want, None)
            for msg in got:
                consumer.cursor = msg.seq + 1
                self._send(consumer, msg.seq, msg.topic, msg.body, now, out, peers)
            if len(got) < want:
                consumer.cursor = last + 1  # nothing more stored
                return False
            return want < room - sent  # room for more than one pass reads
        # Filtered: at most READ_SLICE stored messages looked at per pass, so a
        # filter that matches little of a long stream never stalls the loop.
        scanned = stream.read(consumer.cursor, READ_SLICE, None)
        for msg in scanned:
            if sent >= room:
                return False
            consumer.cursor = msg.seq + 1
            if matches(flt, msg.topic.decode("utf-8", "replace")):
                self._send(consumer, msg.seq, msg.topic, msg.body, now, out, peers)
                sent += 1
        if len(scanned) < READ_SLICE:
            consumer.cursor = last + 1
            return False
        return consumer.cursor <= last  # the next pass goes on scanning

    def _send(
        self,
        consumer: _Consumer,
        seq: int,
        topic: bytes,
        body: bytes,
        now: float,
        out: list[tuple[bytes, list[bytes]]],
        peers: Mapping[bytes, Peer],
    ) -> None:
        members = consumer.members
        consumer.next_member = (consumer.next_member + 1) % len(members)
        ident, sid = members[consumer.next_member]
        state = consumer.state
        deliveries = state.pending.get(seq, 0) + 1
        state.pending[seq] = deliveries
        if seq > state.delivered_seq:
            state.delivered_seq = seq
        deadline = now + consumer.config.ack_wait
        if self.next_due is None or deadline < self.next_due:
            self.next_due = deadline
        peer = peers[ident]
        peer.msgs_out += 1  # STATS' per-peer traffic counts stream deliveries too
        session = peer.session
        token = self._token(consumer.cid, seq, session)
        consumer.outstanding[seq] = (ident, deadline, token, session)
        meta = p.pack_meta(seq, deliveries)
        out.append(
            (ident, [p.H_STREAM_MSG, consumer.stream.config.channel, token, topic, body, sid, meta])
        )
        self.counters["stream_deliveries"] += 1
        if consumer.name is not None:
            self.changed.add(consumer)

    def _token(self, cid: int, seq: int, session: bytes) -> bytes:
        head = cid.to_bytes(4, "big") + seq.to_bytes(8, "big")
        return head + self._tag(session, head)

    def _tag(self, session: bytes, head: bytes) -> bytes:
        # Keyed over the session it was sent to: no other peer can settle it.
        # The keyed hash of the session is made once and copied per token
        # (half the cost of keying a new one twice a message).
        base = self._sessions.get(session)
        if base is None:
            if len(self._sessions) >= _SESSIONS_CACHED:
                self._sessions.clear()
            base = self._sessions[session] = hashlib.blake2b(session, key=self._key, digest_size=16)
        h = base.copy()
        h.update(head)
        return h.digest()

    # --- acks ----------------------------------------------------------------

    def ack(
        self, session: bytes, token: bytes, kind: int, delay: int | None, text: str, now: float
    ) -> None:
        """Settle one delivery by its token. 401 for a token the broker did
        not make for this peer; a late or repeated ack is counted and ignored."""
        consumer = self.consumers.get(int.from_bytes(token[:4], "big"))
        seq = int.from_bytes(token[4:12], "big")
        held = consumer.outstanding.get(seq) if consumer is not None else None
        # The very token this session was sent for a delivery it holds: the tag
        # was checked when it was made. Any other is checked as it comes.
        if consumer is None or held is None or held[3] != session or held[2] != token:
            if len(token) != TOKEN_BYTES or not hmac.compare_digest(
                self._tag(session, token[:_TAG_AT]), token[_TAG_AT:]
            ):
                self.counters["forged_stream_acks"] += 1
                raise ProtocolError(
                    ErrorCode.PERMISSION_DENIED, "STREAM_ACK token was not sent to this peer"
                )
            if consumer is None or seq not in consumer.state.pending:
                self.counters["late_stream_acks"] += 1
                return
        self.awake[consumer] = None  # room for one more, or one to deliver again
        if kind == p.AckKind.PROGRESS:
            if held is not None:
                consumer.outstanding[seq] = (held[0], now + consumer.config.ack_wait, *held[2:])
            return
        consumer.outstanding.pop(seq, None)
        if text:
            consumer.errors[seq] = text
        if kind == p.AckKind.NAK:
            self.counters["naks"] += 1
            wait = delay / 1000 if delay is not None else self._backoff(consumer, seq)
            self._again(consumer, seq, now, wait)
            return
        if kind == p.AckKind.TERM:
            self.counters["terminated"] += 1
        else:
            self.counters["stream_acks"] += 1
        self._settle(consumer, seq, acked=kind == p.AckKind.ACK)

    def _backoff(self, consumer: _Consumer, seq: int) -> float:
        backoff = consumer.config.backoff
        if not backoff:
            return 0.0
        deliveries = consumer.state.pending.get(seq, 1)
        return backoff[min(deliveries, len(backoff)) - 1]

    def _again(self, consumer: _Consumer, seq: int, now: float, delay: float) -> None:
        # Delivered too often: a dead letter instead of one more delivery.
        max_deliver = consumer.config.max_deliver
        if max_deliver != -1 and consumer.state.pending.get(seq, 0) >= max_deliver:
            self._dead(consumer, seq)
            return
        if delay > 0:
            heapq.heappush(consumer.due, (now + delay, seq))
            if self.next_due is None or now + delay < self.next_due:
                self.next_due = now + delay
        else:
            consumer.ready.append(seq)

    def _dead(self, consumer: _Consumer, seq: int) -> None:
        config = consumer.config
        msg = consumer.stream.get(seq)
        deliveries = consumer.state.pending.get(seq, 0)
        if config.dead_letter is not None and msg is not None:
            try:
                _, _, headers, payload = msgpack.unpackb(msg.body, raw=False, timestamp=3)[:4]
                headers = dict(headers) if isinstance(headers, dict) else {}
            except Exception:  # a body the broker cannot read still goes, as the payload
                headers, payload = {}, msg.body
            headers.update(
                {
                    "zmqbus-stream": consumer.stream.config.name,
                    "zmqbus-seq": str(seq),
                    "zmqbus-topic": msg.topic.decode("utf-8", "replace"),
                    "zmqbus-deliveries": str(deliveries),
                    "zmqbus-consumer": config.durable or "",
                    "zmqbus-error": consumer.errors.get(seq, ""),
                }
            )
            body = p.pack_message(os.urandom(16), int(self.clock() * 1e9), headers, payload)
            self.dead_letters.append(
                (consumer.stream.config.channel, config.dead_letter.encode(), body)
            )
            self.counters["dead_letters"] += 1
        else:
            self.counters["max_deliver_terminated"] += 1
        self._settle(consumer, seq, acked=False)

    def _settle(self, consumer: _Consumer, seq: int, *, acked: bool = True) -> None:
        state = consumer.state
        state.pending.pop(seq, None)
        consumer.errors.pop(seq, None)
        # Delivered in order, so everything under the oldest unsettled is
        # settled, or was never this consumer's (a filter skipped it); pending
        # keeps its keys in sequence order (first deliveries go in ascending).
        pending = state.pending
        state.ack_floor = next(iter(pending)) - 1 if pending else state.delivered_seq
        retention = consumer.stream.config.retention
        if retention == "work_queue" or (
            retention == "interest" and self._all_acked(consumer, seq)
        ):
            self._write(lambda: consumer.stream.remove(seq))
        if consumer.name is not None:
            self.changed.add(consumer)

    def _all_acked(self, consumer: _Consumer, seq: int) -> bool:
        # Interest: every other consumer that takes this message has settled it.
        msg = consumer.stream.get(seq)
        topic = msg.topic.decode("utf-8", "replace") if msg is not None else ""
        for other in self._of(consumer.stream):
            if other is consumer:
                continue
            if other.config.filter is not None and not matches(other.config.filter, topic):
                continue
            state = other.state
            if seq > state.delivered_seq or seq in state.pending:
                return False  # not delivered to it yet, or not settled
        return True

    def _forget_pending(self, consumer: _Consumer) -> None:
        consumer.outstanding.clear()
        consumer.ready.clear()
        consumer.due.clear()
        consumer.state.pending.clear()
        consumer.state.ack_floor = consumer.state.delivered_seq = consumer.stream.last_seq
        consumer.cursor = consumer.stream.last_seq + 1

    # --- time ----------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Ack waits that ran out (delivered again, after the backoff), expiry
        by max_age; when the next is due (None: nothing waits)."""
        nxt: float | None = None
        if self.expiring:
            if now >= self._expire_at:
                self._expire_at = now + 1.0
                self.expire()
            nxt = self._expire_at
        for consumer in list(self.consumers.values()):
            late = [seq for seq, entry in consumer.outstanding.items() if entry[1] <= now]
            for seq in late:
                del consumer.outstanding[seq]
                self.counters["ack_timeouts"] += 1
                self._again(consumer, seq, now, self._backoff(consumer, seq))
            for entry in consumer.outstanding.values():
                if nxt is None or entry[1] < nxt:
                    nxt = entry[1]
            if late or (consumer.due and consumer.due[0][0] <= now):
                self.awake[consumer] = None
            if consumer.due and (nxt is None or consumer.due[0][0] < nxt):
                nxt = consumer.due[0][0]
        self.next_due = nxt
        if self.save_at is not None and (nxt is None or self.save_at < nxt):
            nxt = self.save_at
        return nxt

    def expire(self) -> int:
        """Remove what ``max_age`` no longer keeps; how many went."""
        wall = self.clock()
        gone = 0
        for streams in self.by_channel.values():
            for stream in streams:
                if stream.config.max_age:
                    gone += int(self._write(lambda s=stream: s.expire(wall)))  # type: ignore[misc]
        return gone

    def commit(self, now: float | None = None) -> None:
        """Make every staged write durable, in one transaction. Durable
        consumers that changed are saved once each, however many deliveries
        and acks they took, at most every ``SAVE_EVERY`` seconds of ``now``
        (the broker's monotonic time), and at once after a STREAM or CONSUME
        request or with ``now`` None (the broker stopping)."""
        changed = self.changed
        if changed:
            save_at = self.save_at
            if now is None or self._save_now or (save_at is not None and now >= save_at):
                self.changed = set()
                self.save_at = None
                self._save_now = False
                self.dirty = True
                for consumer in changed:
                    if consumer.cid in self.consumers:
                        try:
                            consumer.stream.save_consumer(consumer.state)
                        except StoreError as exc:
                            self._failed(exc)
            elif save_at is None:
                self.save_at = now + SAVE_EVERY
        if not self.dirty:
            return
        self.dirty = False
        try:
            self.store.commit()
        except StoreError as exc:
            self._failed(exc)

    def stats(self) -> dict[str, Any]:
        """What STATS says of the streams."""
        streams = [s for v in self.by_channel.values() for s in v]
        return {
            "streams": len(streams),
            "stored_messages": sum(s.messages for s in streams),
            "stored_bytes": sum(s.bytes for s in streams),
            "consumers": len(self.consumers),
            "counters": dict(self.counters),
        }

    def members(self) -> Iterable[tuple[bytes, bytes]]:
        """Every (ident, sid) bound to a consumer."""
        return self._bindings.keys()
