"""The stream logic both backends share: argument checks, limits, dedup, expiry.

A backend supplies a few primitives over its messages, dedup ids and
consumer states; ``StreamBase`` keeps the running numbers (first/last seq,
messages, bytes) and decides what to store, drop and refuse, so the two
backends cannot differ in behaviour.
"""

from __future__ import annotations

import builtins
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Concatenate, Generic, ParamSpec, TypeVar

from .base import (
    MAX_MSG_ID_BYTES,
    ConsumerState,
    StoreCorrupt,
    StoredMessage,
    StoreError,
    StreamConfig,
    StreamFull,
    SubjectFilter,
    decode_consumer,
    encode_consumer,
)

__all__ = ["StoreBase", "StreamBase", "guarded"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="StreamBase")

# Dedup ids are pruned at most this often (in the caller's seconds), not on every append.
_PRUNE_EVERY = 1.0


def guarded(fn: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Refuse calls on a deleted or closed stream and turn the backend's own
    errors into ``StoreError``s (after the backend has recovered from them)."""
    what = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._dead is not None:
            raise StoreError(self._dead)
        try:
            return fn(self, *args, **kwargs)
        except self._db_errors as exc:
            raise self._failed(exc, what) from exc

    return wrapper


def _blob(name: str, value: object) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def _seq(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be unix seconds (a number), not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


class StreamBase(ABC):
    """A stream's behaviour over a backend's primitives (see the module docstring)."""

    config: StreamConfig
    #: Errors of the backend that ``guarded`` hands to ``_failed``.
    _db_errors: tuple[type[Exception], ...] = ()

    def __init__(
        self, config: StreamConfig, *, first_seq: int, last_seq: int, messages: int, nbytes: int
    ) -> None:
        self.config = config
        self._first = first_seq
        self._last = last_seq
        self._messages = messages
        self._bytes = nbytes
        self._head_time: float | None = None  # time of the message at _first, once looked up
        self._prune_at = -math.inf
        self._dead: str | None = None  # why the stream is unusable, once it is
        self._limited = config.max_msg_size >= 0 or config.max_bytes >= 0 or config.max_msgs >= 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.config.name!r} seq {self._first}..{self._last} "
            f"{self._messages} msgs {self._bytes} bytes>"
        )

    # -- the backend's primitives --------------------------------------------

    @abstractmethod
    def _insert(
        self,
        seq: int,
        topic: builtins.bytes,
        body: builtins.bytes,
        msg_id: builtins.bytes,
        now: float,
        size: int,
    ) -> None:
        """Store one message at a new highest seq."""

    @abstractmethod
    def _fetch(self, seq: int) -> StoredMessage | None:
        """The message at ``seq``, or None."""

    @abstractmethod
    def _iter_head(self) -> Iterator[tuple[int, int, float]]:
        """``(seq, size, time)`` of stored messages, oldest first. The caller
        may stop early and then change the stream."""

    @abstractmethod
    def _next_entry(self, seq: int) -> tuple[int, float] | None:
        """``(seq, time)`` of the first stored message at or after ``seq``."""

    @abstractmethod
    def _delete_below(self, seq: int) -> None:
        """Delete every message below ``seq``."""

    @abstractmethod
    def _delete_one(self, seq: int) -> int | None:
        """Delete the message at ``seq``; its size, or None if there was none."""

    @abstractmethod
    def _delete_all(self) -> None:
        """Delete every message."""

    @abstractmethod
    def _scan(self, start: int, limit: int, match: SubjectFilter) -> list[StoredMessage]:
        """Up to ``limit`` matching messages from ``start`` on, in seq order."""

    @abstractmethod
    def _newest(self, match: SubjectFilter) -> StoredMessage | None:
        """The newest matching message."""

    @abstractmethod
    def _lookup_id(self, msg_id: builtins.bytes) -> tuple[int, float] | None:
        """``(seq, time)`` remembered for ``msg_id``."""

    @abstractmethod
    def _claim_id(self, msg_id: builtins.bytes, seq: int, now: float, cutoff: float) -> int | None:
        """Remember ``msg_id`` as stored at ``seq`` at ``now`` and return None,
        unless it is remembered from after ``cutoff``: then return its seq."""

    @abstractmethod
    def _forget_ids(self, cutoff: float) -> None:
        """Forget ids remembered at or before ``cutoff``, oldest first (stopping
        at the first younger one is enough)."""

    @abstractmethod
    def _consumer_blobs(self) -> list[builtins.bytes]:
        """Every saved consumer state, encoded, by name."""

    @abstractmethod
    def _put_consumer(self, name: str, blob: builtins.bytes) -> None:
        """Insert or replace an encoded consumer state."""

    @abstractmethod
    def _drop_consumer(self, name: str) -> bool:
        """Delete a consumer state; False if there was none."""

    def _changed(self) -> None:  # noqa: B027 - a hook; the memory backend needs nothing
        """Called after each change to the running numbers."""

    def _failed(self, exc: Exception, what: str) -> StoreError:
        """Recover from a backend error in ``what``; the error to raise."""
        raise NotImplementedError

    def _where(self) -> str:
        """Where this stream lives, for error messages."""
        return f"stream {self.config.name!r}"

    # -- the Stream interface -------------------------------------------------

    @property
    def first_seq(self) -> int:
        """Seq of the oldest stored message; ``last_seq + 1`` when empty."""
        return self._first

    @property
    def last_seq(self) -> int:
        """Highest seq ever assigned (0 for a new stream)."""
        return self._last

    @property
    def messages(self) -> int:
        """Number of stored messages."""
        return self._messages

    @guarded
    def append(
        self, topic: builtins.bytes, body: builtins.bytes, msg_id: builtins.bytes, now: float
    ) -> tuple[int, bool]:
        """See ``Stream.append``."""
        # The broker's hot path: exact types pass with one test each.
        if type(topic) is not builtins.bytes:
            topic = _blob("topic", topic)
        if type(body) is not builtins.bytes:
            body = _blob("body", body)
        if type(msg_id) is not builtins.bytes:
            msg_id = _blob("msg_id", msg_id)
        if not 0 < len(msg_id) <= MAX_MSG_ID_BYTES:
            raise ValueError(f"msg_id must be 1 to {MAX_MSG_ID_BYTES} bytes, got {len(msg_id)}")
        if not (type(now) is float and -math.inf < now < math.inf):
            now = _time("now", now)
        cfg = self.config
        if cfg.max_age and self._messages:
            head_time = self._head_time
            if head_time is None:
                entry = self._next_entry(self._first)
                head_time = self._head_time = entry[1] if entry else math.inf
            if head_time <= now - cfg.max_age:
                self._expire(now)
        size = len(topic) + len(body)
        over_msgs = self._messages + 1 - cfg.max_msgs if cfg.max_msgs >= 0 else 0
        over_bytes = self._bytes + size - cfg.max_bytes if cfg.max_bytes >= 0 else 0
        refusal = self._refusal(len(body), size, over_msgs, over_bytes) if self._limited else None
        seq = self._last + 1
        window = cfg.duplicate_window
        if window:
            if now >= self._prune_at:
                self._forget_ids(now - window)
                self._prune_at = now + _PRUNE_EVERY
            if refusal is None:
                # The common case: one statement both checks the id and takes it for seq.
                first = self._claim_id(msg_id, seq, now, now - window)
                if first is not None:
                    return first, True
            else:
                # A duplicate is reported as such even when the stream would refuse it.
                seen = self._lookup_id(msg_id)
                if seen is not None and seen[1] > now - window:
                    return seen[0], True
        if refusal is not None:
            raise StreamFull(refusal)
        if over_msgs > 0 or over_bytes > 0:
            self._drop_head(max(over_msgs, 0), max(over_bytes, 0))
        self._insert(seq, topic, body, msg_id, now, size)
        if not self._messages:
            self._first = seq
            self._head_time = now
        self._last = seq
        self._messages += 1
        self._bytes += size
        self._changed()
        return seq, False

    def _refusal(self, body_size: int, size: int, over_msgs: int, over_bytes: int) -> str | None:
        """Why an append of this size must be refused, or None."""
        cfg = self.config
        if 0 <= cfg.max_msg_size < body_size:
            return (
                f"{self._where()}: body of {body_size} bytes is over max_msg_size "
                f"({cfg.max_msg_size})"
            )
        if 0 <= cfg.max_bytes < size:
            return (
                f"{self._where()}: message of {size} bytes (topic and body) is over max_bytes "
                f"({cfg.max_bytes})"
            )
        if cfg.discard == "new" and (over_msgs > 0 or over_bytes > 0):
            which = (
                f"max_msgs ({cfg.max_msgs})" if over_msgs > 0 else f"max_bytes ({cfg.max_bytes})"
            )
            return f"{self._where()} is full: {which} reached, discard='new'"
        return None

    @guarded
    def get(self, seq: int) -> StoredMessage | None:
        """See ``Stream.get``."""
        seq = _seq("seq", seq)
        if not self._first <= seq <= self._last:
            return None
        return self._fetch(seq)

    @guarded
    def read(
        self, start_seq: int, limit: int, subjects: Sequence[str] | None = None
    ) -> list[StoredMessage]:
        """See ``Stream.read``."""
        start = max(_seq("start_seq", start_seq), self._first)
        if _seq("limit", limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        match = SubjectFilter(subjects)
        if not limit or start > self._last:
            return []
        return self._scan(start, min(limit, self._messages), match)

    @guarded
    def last_for(self, subjects: Sequence[str] | None = None) -> StoredMessage | None:
        """See ``Stream.last_for``."""
        match = SubjectFilter(subjects)
        if not self._messages:
            return None
        return self._newest(match)

    @guarded
    def seq_at_time(self, t: float) -> int:
        """See ``Stream.seq_at_time``; a binary search that assumes times do not
        decrease with seq."""
        t = _time("t", t)
        # The smallest s in [lo, hi] whose first stored message at or after s
        # was stored at or after t (or that has none); hi qualifies.
        lo, hi = self._first, self._last + 1
        while lo < hi:
            mid = (lo + hi) // 2
            entry = self._next_entry(mid)
            if entry is None or entry[1] >= t:
                hi = mid
            else:
                lo = entry[0] + 1
        entry = self._next_entry(lo)
        return entry[0] if entry is not None else self._last + 1

    @guarded
    def remove(self, seq: int) -> bool:
        """See ``Stream.remove``."""
        seq = _seq("seq", seq)
        if not self._first <= seq <= self._last:
            return False
        size = self._delete_one(seq)
        if size is None:
            return False
        self._messages -= 1
        self._bytes -= size
        if seq == self._first:
            entry = self._next_entry(seq + 1) if self._messages else None
            self._first = entry[0] if entry is not None else self._last + 1
            self._head_time = entry[1] if entry is not None else None
        self._changed()
        return True

    @guarded
    def purge(self) -> int:
        """See ``Stream.purge``."""
        n = self._messages
        if n:
            self._delete_all()
            self._messages = self._bytes = 0
            self._first = self._last + 1
            self._head_time = None
            self._changed()
        return n

    @guarded
    def expire(self, now: float) -> int:
        """See ``Stream.expire``."""
        return self._expire(_time("now", now))

    @guarded
    def consumers(self) -> list[ConsumerState]:
        """See ``Stream.consumers``."""
        out = []
        for blob in self._consumer_blobs():
            try:
                out.append(decode_consumer(blob))
            except ValueError as exc:
                raise StoreCorrupt(f"{self._where()}: unreadable consumer state: {exc}") from None
        return out

    @guarded
    def save_consumer(self, state: ConsumerState) -> None:
        """See ``Stream.save_consumer``."""
        blob = encode_consumer(state)
        self._put_consumer(state.name, blob)

    @guarded
    def delete_consumer(self, name: str) -> bool:
        """See ``Stream.delete_consumer``."""
        if not isinstance(name, str):
            raise TypeError(f"consumer name must be a str, not {type(name).__name__}")
        return self._drop_consumer(name)

    # -- shared steps ---------------------------------------------------------

    def _expire(self, now: float) -> int:
        max_age = self.config.max_age
        if not max_age or not self._messages:
            return 0
        cutoff = now - max_age
        n = freed = 0
        keep = self._last + 1
        for seq, size, t in self._iter_head():
            if t > cutoff:
                keep = seq
                self._head_time = t
                break
            n += 1
            freed += size
        if n:
            self._cut(keep, n, freed)
        return n

    def _drop_head(self, count: int, nbytes: int) -> None:
        """Drop the fewest oldest messages that free ``count`` messages and ``nbytes`` bytes."""
        n = freed = 0
        keep = self._last + 1
        for seq, size, t in self._iter_head():
            if n >= count and freed >= nbytes:
                keep = seq
                self._head_time = t
                break
            n += 1
            freed += size
        self._cut(keep, n, freed)

    def _cut(self, keep: int, n: int, freed: int) -> None:
        self._delete_below(keep)
        self._messages -= n
        self._bytes -= freed
        self._first = keep
        if not self._messages:
            self._head_time = None
        self._changed()

    # Last in the class: below it, ``bytes`` in an annotation would name this property.
    @property
    def bytes(self) -> int:
        """Sum of ``len(topic) + len(body)`` over stored messages."""
        return self._bytes


_S = TypeVar("_S", bound=StreamBase)


class StoreBase(Generic[_S]):
    """What both stores do alike: their streams by name, and the checks of
    ``create_stream`` before a backend makes one. ``_live`` raises once the
    store is closed (a backend may refuse for more reasons)."""

    _streams: dict[str, _S]
    _closed: bool

    def _live(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _existing(self, config: StreamConfig, storage: str, kind: str) -> _S | None:
        """The stream ``config`` names if it exists with this very config;
        None if it is new. ValueError for another config or another storage."""
        self._live()
        if not isinstance(config, StreamConfig):
            raise TypeError(f"expected a StreamConfig, not {type(config).__name__}")
        if config.storage != storage:
            raise ValueError(f"stream {config.name!r}: {kind} holds storage={storage!r} only")
        existing = self._streams.get(config.name)
        if existing is not None and existing.config != config:
            raise ValueError(f"stream {config.name!r} exists with another config")
        return existing

    def stream(self, name: str) -> _S | None:
        """See ``Store.stream``."""
        self._live()
        return self._streams.get(name)

    def streams(self) -> list[_S]:
        """See ``Store.streams``."""
        self._live()
        return [self._streams[k] for k in sorted(self._streams)]
