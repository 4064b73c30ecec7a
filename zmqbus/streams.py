"""What a bus says of durable streams: ``StreamInfo`` and ``ConsumerInfo``,
and the checked request bodies both faces send (``stream_config``,
``consume_body``)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import protocol as p
from .errors import ProtocolError
from .topics import validate_pattern, validate_topic

__all__ = ["ConsumerInfo", "StreamInfo", "consume_body", "message_id", "stream_config"]

_RETENTION = ("limits", "work_queue", "interest")
_DISCARD = ("old", "new")
_STORAGE = ("file", "memory")
_DELIVER = ("all", "new", "last")


@dataclass(frozen=True)
class StreamInfo:
    """A stream as the broker reports it."""

    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_reply(cls, d: Mapping[str, Any]) -> StreamInfo:
        """From a STREAM_REPLY's stream map."""
        config = dict(d.get("config") or {})
        return cls(
            name=str(d["name"]),
            subjects=tuple(config.get("subjects") or ()),
            messages=int(d.get("messages", 0)),
            bytes=int(d.get("bytes", 0)),
            first_seq=int(d.get("first_seq", 0)),
            last_seq=int(d.get("last_seq", 0)),
            consumers=int(d.get("consumers", 0)),
            config=config,
        )


@dataclass(frozen=True)
class ConsumerInfo:
    """A consumer as the broker reports it: ``delivered``, the highest
    sequence delivered; ``ack_floor``, every sequence up to it settled;
    ``pending``, delivered and not settled; ``waiting``, sids bound to it."""

    stream: str
    name: str | None
    delivered: int
    ack_floor: int
    pending: int
    waiting: int
    redelivered: int
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_reply(cls, d: Mapping[str, Any]) -> ConsumerInfo:
        """From a STREAM_REPLY's consumer map (or CONSUME's reply)."""
        return cls(
            stream=str(d["stream"]),
            name=d.get("name"),
            delivered=int(d.get("delivered", 0)),
            ack_floor=int(d.get("ack_floor", 0)),
            pending=int(d.get("pending", 0)),
            waiting=int(d.get("waiting", 0)),
            redelivered=int(d.get("redelivered", 0)),
            config=_seconds_config(d.get("config") or {}),
        )


def _seconds_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # The wire has milliseconds; the API (consume, add_consumer) takes seconds.
    out = dict(config)
    if isinstance(out.get("ack_wait"), int | float):
        out["ack_wait"] = out["ack_wait"] / 1000
    if isinstance(out.get("backoff"), list):
        out["backoff"] = [b / 1000 for b in out["backoff"] if isinstance(b, int | float)]
    return out


def check_name(name: object, what: str = "stream name") -> str:
    """``name`` if it is a valid stream or consumer name."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    try:
        p.check_stream_name(name.encode("utf-8"))
    except ProtocolError:
        raise ValueError(f"{what} must be 1 to 64 of A-Z a-z 0-9 _ -, not {name!r}") from None
    return name


# Names a str msg_id that is not a UUID: the same text is always the same id.
_ID_NAMESPACE = uuid.UUID("6f0c3a52-51f4-4c1e-9a0e-7a6d2b7f5e11")


def message_id(value: object) -> bytes:
    """The 16-byte id a ``msg_id`` gives a message: a UUID, 16 bytes, or a str
    (a UUID's text, or any other text, made a UUID deterministically)."""
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, bytes | bytearray):
        if len(value) != 16:
            raise ValueError("msg_id bytes must be 16 long")
        return bytes(value)
    if isinstance(value, str):
        if not value:
            raise ValueError("msg_id must not be empty")
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            return uuid.uuid5(_ID_NAMESPACE, value).bytes
    raise TypeError(f"msg_id must be a uuid.UUID, 16 bytes or a str, not {type(value).__name__}")


def _seconds(value: object, what: str, *, zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value < 0 or (not zero and value == 0):
        raise ValueError(f"{what} must be a {'non-negative' if zero else 'positive'} number")
    return float(value)


def _count(value: object, what: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{what} must be an int")
    if value < 1 and value != -1:
        raise ValueError(f"{what} must be positive, or -1 for no limit")
    return value


def _choice(value: object, what: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return str(value)


def stream_config(
    name: object,
    subjects: object,
    *,
    max_msgs: object = -1,
    max_bytes: object = -1,
    max_age: object = 0.0,
    max_msg_size: object = -1,
    discard: object = "old",
    retention: object = "limits",
    storage: object = "file",
    duplicate_window: object = 120.0,
) -> dict[str, Any]:
    """The checked ``config`` map of a STREAM ``add``."""
    check_name(name)
    if isinstance(subjects, str) or not isinstance(subjects, Iterable):
        raise TypeError("subjects must be a list of patterns")
    patterns = [validate_pattern(s) for s in subjects]
    if not patterns:
        raise ValueError("a stream needs at least one subject")
    return {
        "name": name,
        "subjects": patterns,
        "max_msgs": _count(max_msgs, "max_msgs"),
        "max_bytes": _count(max_bytes, "max_bytes"),
        "max_age": _seconds(max_age, "max_age"),
        "max_msg_size": _count(max_msg_size, "max_msg_size"),
        "discard": _choice(discard, "discard", _DISCARD),
        "retention": _choice(retention, "retention", _RETENTION),
        "storage": _choice(storage, "storage", _STORAGE),
        "duplicate_window": _seconds(duplicate_window, "duplicate_window"),
    }


def consume_body(
    stream: object,
    *,
    durable: object = None,
    filter: object = None,
    deliver: object = "all",
    start_seq: object = None,
    start_time: object = None,
    ack_wait: object = 30.0,
    max_deliver: object = -1,
    backoff: object = None,
    dead_letter: object = None,
    max_ack_pending: object = 1000,
) -> dict[str, Any]:
    """The checked CONSUME body (times in milliseconds, as the wire has them)."""
    body: dict[str, Any] = {"stream": check_name(stream)}
    if durable is not None:
        body["durable"] = check_name(durable, "durable")
    if filter is not None:
        body["filter"] = validate_pattern(filter)
    body["deliver"] = _choice(deliver, "deliver", _DELIVER)
    if start_seq is not None:
        if type(start_seq) is not int or start_seq < 1:
            raise ValueError("start_seq must be a positive int")
        body["start_seq"] = start_seq
    if start_time is not None:
        if isinstance(start_time, datetime):
            if start_time.tzinfo is None:
                raise ValueError("start_time must be timezone-aware")
            body["start_time"] = start_time.timestamp()
        else:
            body["start_time"] = _seconds(start_time, "start_time")
    body["ack_wait"] = round(_seconds(ack_wait, "ack_wait", zero=False) * 1000)
    body["max_deliver"] = _count(max_deliver, "max_deliver")
    if backoff is not None:
        if isinstance(backoff, str) or not isinstance(backoff, Iterable):
            raise TypeError("backoff must be a list of delays in seconds")
        body["backoff"] = [round(_seconds(b, "backoff delay") * 1000) for b in backoff]
    if dead_letter is not None:
        body["dead_letter"] = validate_topic(dead_letter)
    pending = _count(max_ack_pending, "max_ack_pending")
    body["max_ack_pending"] = pending
    return body
