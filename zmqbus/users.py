"""Users of a broker and what each may do: channels, topics, patterns, admin.

A ``User`` names a CURVE public key (or ``"anonymous"``, every peer when
authentication is off) and its permissions, NATS-style: allow lists and deny
lists of topic patterns, deny winning. Sans-IO: the broker asks, this answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from .topics import matches, validate_pattern

__all__ = ["ANONYMOUS", "User", "covers", "overlaps"]

ANONYMOUS = "anonymous"
# Topics whose answer a user keeps: past this many the cache starts over.
_CACHE = 4096


def covers(outer: str, inner: str) -> bool:
    """True if every topic ``inner`` matches is matched by ``outer`` (both
    valid patterns; a topic is a pattern without wildcards)."""
    a, b = outer.split("."), inner.split(".")
    for i, tok in enumerate(a):
        if tok == ">":
            return len(b) > i
        if i >= len(b):
            return False
        if b[i] == ">":
            return False  # any number of tokens where ``outer`` takes one
        if tok != "*" and (b[i] == "*" or b[i] != tok):
            return False
    return len(a) == len(b)


def overlaps(x: str, y: str) -> bool:
    """True if some topic matches both patterns ``x`` and ``y``."""
    a, b = x.split("."), y.split(".")
    for i in range(min(len(a), len(b))):
        if a[i] == ">" or b[i] == ">":
            return True  # the rest of the other is one or more tokens it takes
        if a[i] != "*" and b[i] != "*" and a[i] != b[i]:
            return False
    return len(a) == len(b)


def _patterns(value: Iterable[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"User.{what} must be a list of patterns, not a str")
    out = tuple(value)
    for pattern in out:
        validate_pattern(pattern)
    return out


def _channels(value: Iterable[str] | str) -> frozenset[bytes] | None:
    # None: every channel ("*").
    if isinstance(value, str):
        raise TypeError("User.channels must be a list of channel UUIDs or '*'")
    out: set[bytes] = set()
    for item in value:
        if item == "*":
            return None
        try:
            out.add(uuid.UUID(str(item)).bytes)
        except ValueError:
            raise ValueError(f"User.channels: {item!r} is neither a UUID nor '*'") from None
    return frozenset(out)


@dataclass(frozen=True)
class User:
    """A broker's user: ``name``, its CURVE ``public_key`` (z85 text or bytes,
    32 raw bytes, or the path of a ``zmq.auth`` certificate file; None only
    for ``"anonymous"``), and its permissions.

    ``channels``: channel UUIDs it may join, or ``["*"]``. ``publish``:
    patterns of the topics it may publish and request on. ``subscribe``:
    patterns it may subscribe with; a pattern is allowed only if one of these
    covers every topic it can match. ``deny_publish`` and ``deny_subscribe``
    win over those (a pattern that can match a denied topic is denied).
    ``admin``: STATS shows it every channel (others see only theirs).
    ``streams``: it may manage durable streams and their consumers (add,
    delete, purge, read by sequence); consuming needs only ``subscribe``.
    ``max_connections``, ``max_subscriptions``, ``max_channels``: its share
    of the broker (None: only the broker's own limits). ``rate`` and
    ``byte_rate``: messages and body bytes it may publish per second
    (None: unlimited), with bursts of ``burst`` seconds' worth.
    """

    name: str
    public_key: bytes | str | os.PathLike[str] | None = None
    channels: Iterable[str] = ("*",)
    publish: Iterable[str] = (">",)
    subscribe: Iterable[str] = (">",)
    deny_publish: Iterable[str] = ()
    deny_subscribe: Iterable[str] = ()
    admin: bool = False
    streams: bool = False
    max_connections: int | None = None
    max_subscriptions: int | None = None
    max_channels: int | None = None
    rate: float | None = None
    byte_rate: float | None = None
    burst: float = 1.0
    _published: dict[bytes, bool] = field(default_factory=dict, repr=False, compare=False)
    _joins: frozenset[bytes] | None = field(init=False, repr=False, compare=False)
    _pub: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _sub: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _deny_pub: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _deny_sub: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _free: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise ValueError(f"User.name must be a non-empty str without ':', not {self.name!r}")
        if self.public_key is None and self.name != ANONYMOUS:
            raise ValueError(f"user {self.name!r} needs a public_key")
        set_ = object.__setattr__  # frozen: the checked forms are kept beside
        set_(self, "_joins", _channels(self.channels))
        set_(self, "_pub", _patterns(self.publish, "publish"))
        set_(self, "_sub", _patterns(self.subscribe, "subscribe"))
        set_(self, "_deny_pub", _patterns(self.deny_publish, "deny_publish"))
        set_(self, "_deny_sub", _patterns(self.deny_subscribe, "deny_subscribe"))
        if not isinstance(self.admin, bool):
            raise TypeError("User.admin must be a bool")
        if not isinstance(self.streams, bool):
            raise TypeError("User.streams must be a bool")
        for what in ("max_connections", "max_subscriptions", "max_channels"):
            value = getattr(self, what)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"User.{what} must be a positive int or None, not {value!r}")
        for what in ("rate", "byte_rate"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, int | float) or not value > 0):
                raise ValueError(f"User.{what} must be a positive number or None, not {value!r}")
        if not isinstance(self.burst, int | float) or not self.burst > 0:
            raise ValueError(f"User.burst must be a positive number, not {self.burst!r}")
        set_(
            self,
            "_free",
            self._joins is None
            and ">" in self._pub
            and ">" in self._sub
            and not self._deny_pub
            and not self._deny_sub
            and self.rate is None
            and self.byte_rate is None,
        )

    # --- what it may do ---------------------------------------------------------

    def may_join(self, channel: bytes) -> bool:
        """May it join the channel of these 16 octets?"""
        joins = self._joins
        return joins is None or channel in joins

    def may_publish(self, topic: bytes) -> bool:
        """May it publish (or request) on ``topic`` (valid UTF-8 topic bytes)?"""
        cache = self._published
        known = cache.get(topic)
        if known is not None:
            return known
        text = topic.decode("utf-8")
        allowed = any(matches(a, text) for a in self._pub) and not any(
            matches(d, text) for d in self._deny_pub
        )
        if len(cache) >= _CACHE:
            cache.clear()
        cache[topic] = allowed
        return allowed

    def may_subscribe(self, pattern: str) -> bool:
        """May it subscribe with ``pattern`` (a valid pattern)?"""
        return any(covers(a, pattern) for a in self._sub) and not any(
            overlaps(d, pattern) for d in self._deny_sub
        )

    def same_rights(self, other: User) -> bool:
        """True if ``other`` may do exactly what this user may (channels,
        topics, patterns, admin), whatever their keys and limits."""
        return (
            self._joins == other._joins
            and self._pub == other._pub
            and self._sub == other._sub
            and self._deny_pub == other._deny_pub
            and self._deny_sub == other._deny_sub
            and self.admin == other.admin
            and self.streams == other.streams
        )

    @property
    def limited(self) -> bool:
        """True if it has a rate limit (``rate`` or ``byte_rate``)."""
        return self.rate is not None or self.byte_rate is not None

    @property
    def free(self) -> bool:
        """True if it may do anything on any channel: no check is needed."""
        return self._free
