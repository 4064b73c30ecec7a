"""Checks on user input shared by both faces: typed errors before anything is sent."""

from __future__ import annotations

from collections.abc import Mapping

from .topics import validate_topic

__all__ = ["headers", "hwm", "maxsize", "payload", "queue", "timeout"]


def payload(value: object) -> bytes:
    """``value`` as bytes; ``TypeError`` unless it is bytes-like."""
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"payload must be bytes-like, not {type(value).__name__}")


def headers(value: object) -> Mapping[str, str]:
    """``value`` if it maps str to str (None: empty); ``TypeError`` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, not {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"headers must map str to str; got {k!r}: {v!r}")
    return value


def timeout(value: object, name: str = "timeout") -> float:
    """A positive number of seconds; ``TypeError``/``ValueError`` otherwise."""
    if type(value) is float and value > 0:  # the common case, checked on every publish
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def maxsize(value: object) -> int:
    """A positive int buffer size; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("maxsize must be a positive int")
    return value


def queue(value: object) -> str:
    """A queue group name ('' for none): the token rules of a topic, at most 64 bytes."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"queue must be str, not {type(value).__name__}")
    if not value:
        return ""
    try:
        validate_topic(value)
    except ValueError as exc:
        raise ValueError(f"bad queue name {value!r}: {exc}") from None
    if len(value.encode()) > 64:
        raise ValueError("queue name longer than 64 bytes of UTF-8")
    return value


def hwm(value: object) -> int:
    """A positive int high-water mark (messages); ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("hwm must be a positive int")
    return value
