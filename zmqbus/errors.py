"""The exception family of zmqbus: one root, typed leaves, errors that carry fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import PublishResult

__all__ = [
    "AuthenticationError",
    "BusClosed",
    "ConnectTimeout",
    "ConsumerNotFound",
    "HandlerError",
    "LimitReached",
    "MessageTooLarge",
    "NoResponders",
    "PermissionDenied",
    "ProtocolError",
    "PublishTimeout",
    "RateLimited",
    "ReentrantPublish",
    "RequestTimeout",
    "StreamError",
    "StreamExists",
    "StreamNotFound",
    "SubscriptionClosed",
    "WrongEventLoop",
    "ZmqbusError",
    "remote_error",
]


class ZmqbusError(Exception):
    """Root of every error zmqbus raises on its own account."""


class BusClosed(ZmqbusError):
    """The bus is closed: the call cannot run, or was pending when the bus closed."""

    @classmethod
    def after(cls, failure: BaseException | None) -> BusClosed:
        """The error a call on a closed bus raises: caused by ``failure``, the
        error that closed the bus by itself, if one did."""
        if failure is None:
            return cls("bus is closed")
        exc = cls(f"bus closed: its I/O failed: {failure!r}")
        exc.__cause__ = failure
        return exc


class ConnectTimeout(ZmqbusError, ConnectionError):
    """The broker did not answer the handshake within ``connect_timeout``."""

    def __init__(self, address: str, timeout: float) -> None:
        super().__init__(f"no answer from broker at {address} within {timeout:g}s")
        self.address = address
        self.timeout = timeout


class AuthenticationError(ZmqbusError, ConnectionError):
    """The broker refused this client's credentials (its CURVE key, or a
    handshake without the broker's key): ``address`` and ZAP's ``reason``."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"broker at {address} refused the connection: {reason}")
        self.address = address
        self.reason = reason


class RequestTimeout(ZmqbusError, TimeoutError):
    """No answer in time: no reply to a request, or the broker did not confirm
    a subscribe or unsubscribe."""


class NoResponders(ZmqbusError):
    """A request reached no subscription at all (known at once, not a timeout)."""


class MessageTooLarge(ZmqbusError, ValueError):
    """The encoded message exceeds the broker's ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the broker's limit of {limit} bytes")
        self.size = size
        self.limit = limit


class SubscriptionClosed(ZmqbusError):
    """The subscription has ended and its buffer is empty."""


class ProtocolError(ZmqbusError):
    """A frame broke the wire protocol.

    ``code`` is the protocol error code (see ``zmqbus.protocol.ErrorCode``);
    ``remote`` is True when the other side sent the bad frames or reported the
    error, False when this side was about to break the protocol.
    """

    def __init__(self, code: int, message: str, *, remote: bool = True) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.detail = message
        self.remote = remote


class LimitReached(ProtocolError):
    """The broker refused a request at one of its limits: ``code`` 429 (this
    bus's or its channel's share is used up: subscriptions, pattern size,
    STATS rate) or 503 (the broker is full: peers, channels). Retrying the
    same request helps only once the limit has room again."""


class RateLimited(LimitReached):
    """The broker refused a confirmed publish or a request because this bus's
    user is over its rate limit (ERROR 429 with a retry-after): the same call
    may pass after ``retry_after`` seconds."""

    def __init__(self, code: int, message: str, *, retry_after: float, remote: bool = True):
        super().__init__(code, message, remote=remote)
        self.retry_after = retry_after


class PermissionDenied(ProtocolError):
    """The broker refused a request this bus's user may not make (ERROR 401):
    joining the channel, publishing or requesting on the topic, subscribing
    with the pattern, or a command for admins only."""


class StreamError(ProtocolError):
    """The broker refused a stream request: a bad config or argument (422),
    a full stream (429), a failed store (507), or one of the subclasses."""


class StreamNotFound(StreamError):
    """No stream of that name on this bus's channel (or no message of that
    sequence in it): ERROR 404."""


class ConsumerNotFound(StreamError):
    """No durable consumer of that name on the stream (or no such stream): 404."""


class StreamExists(StreamError):
    """A stream (or durable consumer) of that name exists with another config,
    or the new stream's subjects overlap another's: ERROR 410."""


def stream_error(code: int, text: str, *, consumer: bool = False) -> ProtocolError:
    """The exception for an ERROR refusing a stream request (``consumer``: a
    consumer op, where 404 means the consumer, or its stream, is unknown)."""
    if code == 404:
        return (ConsumerNotFound if consumer else StreamNotFound)(code, text, remote=True)
    if code == 410:
        return StreamExists(code, text, remote=True)
    if code in (401, 429, 503):
        return remote_error(code, text)
    return StreamError(code, text, remote=True)


def remote_error(code: int, text: str, retry_after: int | None = None) -> ProtocolError:
    """The exception for an ERROR with ``code`` from the broker, and its
    retry-after in milliseconds (None: it gave none)."""
    if code == 429 and retry_after is not None:
        return RateLimited(code, text, retry_after=retry_after / 1000, remote=True)
    if code in (429, 503):
        return LimitReached(code, text, remote=True)
    if code == 401:
        return PermissionDenied(code, text, remote=True)
    return ProtocolError(code, text, remote=True)


class HandlerError(ZmqbusError):
    """One or more handler subscriptions raised while handling a confirmed publish.

    ``errors`` lists each failing handler's error text; ``result`` is the
    publish result as counted when the last confirmation arrived.
    """

    def __init__(self, errors: list[str], result: PublishResult) -> None:
        joined = "; ".join(errors)
        noun = "handler" if len(errors) == 1 else "handlers"
        super().__init__(f"{len(errors)} {noun} failed: {joined}")
        self.errors = errors
        self.result = result


class PublishTimeout(ZmqbusError, TimeoutError):
    """Not every subscription reached confirmed the publish within the timeout.

    ``result`` holds what had been confirmed by then; ``expected`` is the number
    of subscribing buses the broker routed to, or None if the broker had not
    answered at all.
    """

    def __init__(self, timeout: float, result: PublishResult, expected: int | None) -> None:
        if expected is None:
            detail = "the broker did not acknowledge the publish"
        else:
            detail = f"{result.buses} of {expected} subscribing buses confirmed"
        super().__init__(f"publish not confirmed within {timeout:g}s: {detail}")
        self.timeout = timeout
        self.result = result
        self.expected = expected


class ReentrantPublish(ZmqbusError, RuntimeError):
    """A handler made a confirmed publish that its own subscription receives:
    the confirmation would wait for the very handler that is waiting for it.
    Raised at once; nothing is sent."""

    def __init__(self, pattern: str, topic: str) -> None:
        super().__init__(
            f"a handler of {pattern!r} cannot make a confirmed publish to {topic!r}: "
            "its own subscription receives that message, so the confirmation would wait "
            "for this handler to return; publish it with confirm=False, or from outside "
            "the handler"
        )
        self.pattern = pattern
        self.topic = topic


class WrongEventLoop(ZmqbusError, RuntimeError):
    """An asyncio ``Bus`` (or one of its subscriptions) was called outside the
    event loop it connected on. Nothing was done.

    ``owner_loop`` is that loop, ``owner_thread`` the ident of the thread it
    connected on; ``caller`` says where the call came from.
    """

    def __init__(self, owner_loop: object, owner_thread: int, owner_name: str, caller: str) -> None:
        super().__init__(
            f"this zmqbus.aio.Bus belongs to event loop {owner_loop!r} on thread "
            f"{owner_name!r} (ident {owner_thread}), but was called from {caller}; call "
            "it on its own loop (from another thread: asyncio.run_coroutine_threadsafe), "
            "or use the thread-safe zmqbus.Bus"
        )
        self.owner_loop = owner_loop
        self.owner_thread = owner_thread
        self.caller = caller
