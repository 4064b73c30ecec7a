"""The storage interface of durable streams: configs, stored messages, consumer states.

The store never decodes a message body: it keeps the topic, the body frame
verbatim, the message id (the dedup key) and the time it was stored.

Sequence numbers start at 1 and are never reused. ``first_seq`` is the seq of
the oldest stored message and ``last_seq`` the highest seq ever assigned; an
empty stream (new, purged, expired or emptied by removals) has
``first_seq == last_seq + 1``, so a new stream has ``first_seq == 1`` and
``last_seq == 0``, and ``messages == 0`` exactly when ``first_seq > last_seq``.

A message's size, for ``bytes`` and ``max_bytes``, is ``len(topic) + len(body)``;
``max_msg_size`` bounds ``len(body)`` alone.

Dedup ids are remembered apart from the messages: a message removed, purged,
expired or dropped is still a duplicate until ``duplicate_window`` has passed.

Times are the ``now`` the caller passes (unix seconds). Expiry and
``seq_at_time`` assume times do not decrease with seq, which holds while the
caller's clock does not step back; if it does, they stay safe but coarse (a
message is expired only once every message before it is).
"""

from __future__ import annotations

import builtins
import math
import re
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple, Protocol, get_args

import msgpack  # type: ignore[import-untyped]

from ..errors import ZmqbusError
from ..topics import TopicTrie, validate_pattern

__all__ = [
    "MAX_MSG_ID_BYTES",
    "ConsumerState",
    "Discard",
    "Retention",
    "Storage",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoredMessage",
    "Stream",
    "StreamConfig",
    "StreamFull",
    "SubjectFilter",
    "decode_consumer",
    "encode_consumer",
]

Retention = Literal["limits", "work_queue", "interest"]
Discard = Literal["old", "new"]
Storage = Literal["file", "memory"]

#: The longest message id ``append`` takes (zmqbus ids are 16 bytes).
MAX_MSG_ID_BYTES = 255

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INT_MAX = (1 << 63) - 1  # SQLite's INTEGER range
_BIG_ENDIAN = sys.byteorder == "big"
_CHANNEL_BYTES = 16


class StoreError(ZmqbusError):
    """Root of the store's own errors."""


class StreamFull(StoreError):
    """An append was refused: a limit is reached with ``discard="new"``, or the
    message is larger than ``max_msg_size`` or ``max_bytes``."""


class StoreCorrupt(StoreError):
    """The data_dir or its database cannot be used: unreadable, read-only,
    not a directory, corrupt or not a zmqbus store. The message names the path."""


def _limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value != -1 and not 1 <= value <= _INT_MAX:
        raise ValueError(f"{name} must be -1 (unlimited) or between 1 and 2**63-1, got {value}")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


@dataclass(frozen=True)
class StreamConfig:
    """What a stream keeps and for how long. Every field is validated on
    construction (``TypeError`` for a wrong type, ``ValueError`` for a bad value);
    ``subjects`` may be given as any sequence of str and is kept as a tuple."""

    #: 1 to 64 characters of ``[A-Za-z0-9_-]``; unique in a store.
    name: str
    #: The 16 bytes of the channel's UUID.
    channel: bytes
    #: The zmqbus patterns whose messages the stream captures; at least one.
    subjects: tuple[str, ...]
    retention: Retention = "limits"
    #: Most messages kept; -1: unlimited.
    max_msgs: int = -1
    #: Most bytes kept, counting ``len(topic) + len(body)`` per message; -1: unlimited.
    max_bytes: int = -1
    #: Seconds a message is kept; 0: forever.
    max_age: float = 0.0
    #: Largest body accepted, in bytes; -1: unlimited.
    max_msg_size: int = -1
    #: At a limit, drop the oldest messages ("old") or refuse the append ("new").
    discard: Discard = "old"
    storage: Storage = "file"
    #: Seconds a message id is remembered for deduplication; 0: no dedup.
    duplicate_window: float = 120.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"stream name must be a str, not {type(self.name).__name__}")
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"bad stream name {self.name!r}: 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
            )
        if type(self.channel) is not bytes:
            raise TypeError(
                f"channel must be bytes (a UUID's .bytes), not {type(self.channel).__name__}"
            )
        if len(self.channel) != _CHANNEL_BYTES:
            raise ValueError(f"channel must be 16 bytes, got {len(self.channel)}")
        subjects = self.subjects
        if isinstance(subjects, str | bytes) or not isinstance(subjects, Sequence):
            raise TypeError("subjects must be a sequence of patterns (a tuple or list of str)")
        if not subjects:
            raise ValueError("a stream needs at least one subject")
        for s in subjects:
            try:
                validate_pattern(s)
            except ValueError as exc:
                raise ValueError(f"bad subject {s!r} in stream {self.name!r}: {exc}") from None
        if len(set(subjects)) != len(subjects):
            raise ValueError(f"duplicate subject in stream {self.name!r}: {list(subjects)}")
        object.__setattr__(self, "subjects", tuple(subjects))
        _choice("retention", self.retention, get_args(Retention))
        _choice("discard", self.discard, get_args(Discard))
        _choice("storage", self.storage, get_args(Storage))
        _limit("max_msgs", self.max_msgs)
        _limit("max_bytes", self.max_bytes)
        _limit("max_msg_size", self.max_msg_size)
        object.__setattr__(self, "max_age", _seconds("max_age", self.max_age))
        object.__setattr__(
            self, "duplicate_window", _seconds("duplicate_window", self.duplicate_window)
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field by name; ``subjects`` as a list, ``channel`` as bytes (msgpack-able)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["subjects"] = list(self.subjects)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamConfig:
        """The inverse of ``to_dict``; ``ValueError`` for an unknown or missing key."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a stream config must be a mapping, not {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - names))
        if unknown:
            raise ValueError(f"unknown stream config key(s): {', '.join(unknown)}")
        missing = [n for n in ("name", "channel", "subjects") if n not in d]
        if missing:
            raise ValueError(f"stream config lacks {', '.join(missing)}")
        return cls(**d)


class StoredMessage(NamedTuple):
    """One stored message, as appended. A named tuple: a consumer reads
    hundreds per loop pass, and a frozen dataclass costs a setattr per field."""

    seq: int
    #: UTF-8 topic bytes as published.
    topic: bytes
    #: The message body frame, verbatim.
    body: bytes
    #: The message id: the dedup key.
    msg_id: bytes
    #: The ``now`` given to ``append``, unix seconds.
    time: float


@dataclass
class ConsumerState:
    """What the broker persists for a durable consumer. The store keeps a
    snapshot taken at ``save_consumer``; acks contiguous with ``ack_floor`` come
    back folded into it (``compacted``)."""

    name: str
    #: The broker's consumer config: opaque to the store, msgpack-able.
    config: dict[str, Any]
    #: Highest stream seq handed out so far.
    delivered_seq: int = 0
    #: Every seq <= ack_floor is acked (or terminated).
    ack_floor: int = 0
    #: seq -> deliveries so far, for unacked seqs above ack_floor.
    pending: dict[int, int] = field(default_factory=dict)
    #: Acked seqs above ack_floor (sparse acks).
    acked: set[int] = field(default_factory=set)

    def compacted(self) -> ConsumerState:
        """An equal state with acks contiguous from ``ack_floor`` folded into it
        and entries at or below the floor dropped (a new object)."""
        floor = self.ack_floor
        above = sorted(s for s in self.acked if s > floor)
        i = 0
        while i < len(above) and above[i] == floor + 1:
            floor += 1
            i += 1
        return ConsumerState(
            name=self.name,
            config=self.config,
            delivered_seq=self.delivered_seq,
            ack_floor=floor,
            pending={s: n for s, n in self.pending.items() if s > floor},
            acked=set(above[i:]),
        )


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"consumer {name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= _INT_MAX:
        raise ValueError(f"consumer {name} must be between 0 and 2**63-1, got {value}")
    return value


def _ints(name: str, values: Iterable[int]) -> array[int]:
    # One pass in C, however many: array refuses what is not an int (TypeError)
    # and what is past 2**63-1 (OverflowError). ``values`` come from a caller's
    # ConsumerState, so typed as ints but checked.
    try:
        checked = array("q", values)
    except TypeError:
        raise TypeError(f"consumer {name} must be ints") from None
    except OverflowError:
        raise ValueError(f"consumer {name} must be between 0 and 2**63-1") from None
    if checked and min(checked) < 0:
        raise ValueError(f"consumer {name} must be between 0 and 2**63-1, got {min(checked)}")
    return checked


def _le(values: array[int]) -> builtins.bytes:
    if _BIG_ENDIAN:
        values = array("q", values)
        values.byteswap()
    return values.tobytes()


def _from_le(data: builtins.bytes) -> array[int]:
    values = array("q")
    values.frombytes(data)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def encode_consumer(state: ConsumerState) -> bytes:
    """``state``, checked and compacted, as msgpack; ``TypeError``/``ValueError``
    for a field of the wrong kind or a config msgpack cannot pack. Each field
    is checked and packed in C passes (array), not a Python step per pending
    entry: the broker saves consumers of up to ``max_ack_pending`` entries
    again and again."""
    if not isinstance(state, ConsumerState):
        raise TypeError(f"expected a ConsumerState, not {type(state).__name__}")
    if not isinstance(state.name, str) or not state.name:
        raise ValueError(f"consumer name must be a non-empty str, got {state.name!r}")
    if not isinstance(state.config, dict):
        raise TypeError(f"consumer config must be a dict, not {type(state.config).__name__}")
    _count("delivered_seq", state.delivered_seq)
    _count("ack_floor", state.ack_floor)
    if not isinstance(state.pending, dict) or not isinstance(state.acked, set | frozenset):
        raise TypeError("consumer pending must be a dict of seq -> deliveries and acked a set")
    seqs = _ints("pending seq", state.pending.keys())
    counts = _ints("pending deliveries", state.pending.values())
    _ints("acked seq", state.acked)
    floor, acked = state.ack_floor, state.acked
    if acked or (seqs and min(seqs) <= floor):
        c = state.compacted()
        floor, acked = c.ack_floor, c.acked
        seqs, counts = array("q", c.pending.keys()), array("q", c.pending.values())
    order = sorted(seqs)
    if order != seqs.tolist():  # a caller's dict out of order (the broker's never is)
        by_seq = dict(zip(seqs, counts, strict=True))
        seqs, counts = array("q", order), array("q", [by_seq[seq] for seq in order])
    doc = {
        "name": state.name,
        "config": state.config,
        "delivered_seq": state.delivered_seq,
        "ack_floor": floor,
        # Two little-endian int64 arrays, not a list of pairs: packed without
        # a Python step per entry.
        "pending_seqs": _le(seqs),
        "pending_counts": _le(counts),
        "acked": sorted(acked),
    }
    try:
        packed: bytes = msgpack.packb(doc, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"consumer {state.name!r}: config is not msgpack-able: {exc}") from None
    return packed


def decode_consumer(data: bytes) -> ConsumerState:
    """The inverse of ``encode_consumer``; ``ValueError`` if ``data`` is not one."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return ConsumerState(
            name=doc["name"],
            config=doc["config"],
            delivered_seq=doc["delivered_seq"],
            ack_floor=doc["ack_floor"],
            pending=(
                dict(
                    zip(_from_le(doc["pending_seqs"]), _from_le(doc["pending_counts"]), strict=True)
                )
                if "pending_seqs" in doc
                else {int(s): int(n) for s, n in doc["pending"]}  # pairs: stores before 43713f3
            ),
            acked={int(s) for s in doc["acked"]},
        )
    except Exception as exc:
        raise ValueError(f"not an encoded consumer state: {exc!r}") from None


class SubjectFilter:
    """Tells whether topic bytes match any of ``subjects`` (``None``: all; an
    empty sequence: none). Patterns are validated; matching uses
    ``zmqbus.topics.TopicTrie``. Topic bytes that are not UTF-8 match nothing."""

    __slots__ = ("_cache", "_trie", "everything")

    # Topics repeat: remembering verdicts avoids a trie walk per stored message.
    _CACHE_MAX = 4096

    def __init__(self, subjects: Sequence[str] | None) -> None:
        self.everything = subjects is None
        self._trie: TopicTrie[int] = TopicTrie()
        self._cache: dict[bytes, bool] = {}
        if subjects is None:
            return
        if isinstance(subjects, str | bytes) or not isinstance(subjects, Sequence):
            raise TypeError("subjects must be a sequence of patterns (a tuple or list of str)")
        for s in subjects:
            validate_pattern(s)
            if s == ">":
                self.everything = True
            self._trie.add(s, 0)

    def __call__(self, topic: bytes) -> bool:
        """True if ``topic`` matches."""
        if self.everything:
            return True
        hit = self._cache.get(topic)
        if hit is None:
            try:
                hit = bool(self._trie.match_sets(topic.decode("utf-8")))
            except UnicodeDecodeError:
                hit = False
            if len(self._cache) < self._CACHE_MAX:
                self._cache[topic] = hit
        return hit


class Stream(Protocol):
    """One stream's messages and durable consumer states. Writes stage until
    the owning ``Store.commit()``; reads see staged writes."""

    config: StreamConfig

    @property
    def first_seq(self) -> int:
        """Seq of the oldest stored message; ``last_seq + 1`` when empty."""
        ...

    @property
    def last_seq(self) -> int:
        """Highest seq ever assigned (0 for a new stream); survives purge and restart."""
        ...

    @property
    def messages(self) -> int:
        """Number of stored messages."""
        ...

    @property
    def bytes(self) -> int:
        """Sum of ``len(topic) + len(body)`` over stored messages."""
        ...

    def append(
        self, topic: builtins.bytes, body: builtins.bytes, msg_id: builtins.bytes, now: float
    ) -> tuple[int, bool]:
        """Store one message: ``(seq, False)``; or ``(first seq of msg_id, True)``,
        storing nothing, if ``msg_id`` was stored less than ``duplicate_window``
        seconds before ``now``. Expires by ``max_age`` first; then makes room by
        ``discard``: "old" drops the oldest messages, "new" raises ``StreamFull``.
        A body over ``max_msg_size`` or a message over ``max_bytes`` raises
        ``StreamFull`` either way. A duplicate is reported as one even when the
        stream would refuse the message. Stages; ``Store.commit`` makes it durable."""
        ...

    def get(self, seq: int) -> StoredMessage | None:
        """The message stored at ``seq``, or None."""
        ...

    def read(
        self, start_seq: int, limit: int, subjects: Sequence[str] | None = None
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages with seq >= ``start_seq``, in seq order, whose
        topic matches one of ``subjects`` (None: all)."""
        ...

    def last_for(self, subjects: Sequence[str] | None = None) -> StoredMessage | None:
        """The newest message whose topic matches one of ``subjects`` (None: any)."""
        ...

    def seq_at_time(self, t: float) -> int:
        """Seq of the first message stored at or after ``t``; ``last_seq + 1`` if none."""
        ...

    def remove(self, seq: int) -> bool:
        """Delete the message at ``seq``; False if there is none."""
        ...

    def purge(self) -> int:
        """Delete every message, keeping ``last_seq``; returns how many."""
        ...

    def expire(self, now: float) -> int:
        """Delete messages stored ``max_age`` or more seconds before ``now``; returns how many."""
        ...

    def consumers(self) -> list[ConsumerState]:
        """Snapshots of the saved consumer states, by name."""
        ...

    def save_consumer(self, state: ConsumerState) -> None:
        """Insert or replace the state saved under ``state.name``."""
        ...

    def delete_consumer(self, name: str) -> bool:
        """Delete a saved consumer state; False if there is none."""
        ...


class Store(Protocol):
    """Streams by name. One thread at a time uses a store."""

    def create_stream(self, config: StreamConfig) -> Stream:
        """A new stream, or the existing one if its config is equal; ``ValueError``
        if a stream of that name has another config. Durable on return: it
        commits, so whatever else was staged is committed with it."""
        ...

    def stream(self, name: str) -> Stream | None:
        """The stream called ``name``, or None."""
        ...

    def streams(self) -> list[Stream]:
        """Every stream, by name."""
        ...

    def delete_stream(self, name: str) -> bool:
        """Delete a stream with its messages and consumers; False if there is
        none. Durable on return (it commits, as ``create_stream`` does)."""
        ...

    def commit(self) -> None:
        """Make every write since the last commit durable, as one transaction.
        A ``StoreError`` from it, or from any write, means every write since the
        last commit was rolled back."""
        ...

    def close(self) -> None:
        """Commit what is staged and release the store; idempotent."""
        ...
