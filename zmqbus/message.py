"""The values users hold: a delivered ``Message`` and a ``PublishResult``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["Message", "PublishResult"]


@dataclass(frozen=True, slots=True)
class Message:
    """One published message as a subscriber sees it.

    ``timestamp`` is the publisher's clock at publish time, timezone-aware UTC.
    The ``headers`` dict is shared by every subscription of one bus that
    received the message: treat it as read-only.
    """

    id: uuid.UUID
    topic: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a confirmed publish reached.

    ``delivered``: subscriptions that took the message (queued, or handled
    without error). ``dropped``: subscriptions whose buffer was full.
    ``failed``: handler subscriptions that raised. ``buses``: subscribing buses
    that confirmed. A fire-and-forget publish returns all zeros and
    ``confirmed=False``.
    """

    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    buses: int = 0
    confirmed: bool = True
