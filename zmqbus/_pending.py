"""What a client core waits on the broker for, by ref: confirmed publishes,
requests, and the commands (subscribe, unsubscribe, disconnect) the broker
answers with OK. Each holds the waiter its caller blocks or awaits on."""

from __future__ import annotations

from typing import Any, Protocol

from .errors import PublishTimeout, RequestTimeout
from .message import PublishResult

__all__ = [
    "PendingCommand",
    "PendingPublish",
    "PendingRequest",
    "Waiter",
    "settle",
    "timeout_error",
]


class Waiter(Protocol):
    """What the core completes: ``concurrent.futures.Future`` and
    ``asyncio.Future`` both fit."""

    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: Any, /) -> None: ...
    def done(self) -> bool: ...


def settle(waiter: Waiter, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete ``waiter`` unless it is done already (its caller was cancelled):
    never raises into the I/O loop."""
    if waiter.done():
        return
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(result)


class PendingPublish:
    """A confirmed PUBLISH: ROUTED says how many buses to expect, each ACKED
    adds one bus's counts."""

    __slots__ = (
        "buses",
        "delivered",
        "dropped",
        "errors",
        "expected",
        "stored",
        "timeout",
        "waiter",
    )

    def __init__(self, waiter: Waiter, timeout: float) -> None:
        self.waiter = waiter
        self.timeout = timeout
        self.expected: int | None = None
        self.buses = 0
        self.delivered = 0
        self.dropped = 0
        self.errors: list[str] = []
        # STORED: (stream, seq, duplicate), when a stream captured it.
        self.stored: tuple[str, int, bool] | None = None

    @property
    def complete(self) -> bool:
        """Every bus the broker routed to has confirmed."""
        return self.expected is not None and self.buses >= self.expected

    def result(self) -> PublishResult:
        """The counts so far (one shared object per distinct result)."""
        if self.stored is not None:
            stream, seq, duplicate = self.stored
            return PublishResult(
                self.delivered,
                self.dropped,
                len(self.errors),
                self.buses,
                stream=stream,
                seq=seq,
                duplicate=duplicate,
            )
        key = (self.delivered, self.dropped, len(self.errors), self.buses)
        result = _RESULTS.get(key)
        if result is None:
            result = PublishResult(*key)
            if len(_RESULTS) < 1024:
                _RESULTS[key] = result
        return result


# PublishResult is frozen, so equal results can be one object: building one costs
# ~2 us (a frozen dataclass sets each field through object.__setattr__), and nearly
# every confirmed publish ends in one of a few results, such as (1, 0, 0, 1).
_RESULTS: dict[tuple[int, int, int, int], PublishResult] = {}


class PendingRequest:
    """A REQUEST waiting for its first ANSWER."""

    __slots__ = ("timeout", "topic", "waiter")

    def __init__(self, waiter: Waiter, timeout: float, topic: str) -> None:
        self.waiter = waiter
        self.timeout = timeout
        self.topic = topic


class PendingCommand:
    """A SUBSCRIBE, UNSUBSCRIBE or DISCONNECT waiting for its OK; the waiter
    then gets ``result``."""

    __slots__ = ("action", "result", "timeout", "waiter")

    def __init__(self, waiter: Waiter, timeout: float, action: str, result: Any) -> None:
        self.waiter = waiter
        self.timeout = timeout
        self.action = action
        self.result = result


Pending = PendingPublish | PendingRequest | PendingCommand


def timeout_error(item: Pending) -> BaseException:
    """What ``item``'s waiter gets when its deadline passes."""
    if isinstance(item, PendingPublish):
        return PublishTimeout(item.timeout, item.result(), item.expected)
    if isinstance(item, PendingRequest):
        return RequestTimeout(f"no reply to request on {item.topic!r} within {item.timeout:g}s")
    return RequestTimeout(f"{item.action} not confirmed within {item.timeout:g}s")
