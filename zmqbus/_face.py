"""What the threaded and the asyncio faces share: the subscription's public
attributes, and the bus's arguments, their checks, encoding and properties.

Every public call of a face first runs its ``_prepare_*`` here, which checks
the arguments in the order of the call's signature (the same types, errors and
texts on both faces) and prepares what the core takes; the face then adds only
its own way of running the core and of waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from functools import partial
from typing import Any, ClassVar

import zmq

from . import _validate
from . import protocol as p
from ._client import ClientCore
from ._endpoints import connect_endpoint
from ._version import __version__
from .errors import (
    AuthenticationError,
    BusClosed,
    ConnectTimeout,
    MessageTooLarge,
    PublishTimeout,
    ReentrantPublish,
    RequestTimeout,
    ZmqbusError,
)
from .keys import load_keypair, load_public_key
from .message import (
    Message,
    PublishResult,
    StreamContext,
    answer_after_handler,
    attach_stream,
    error_text,
    make_message,
)
from .streams import check_name, consume_body, message_id
from .topics import matches, validate_pattern, validate_topic

__all__ = ["BusBase", "Headers", "Payload", "SubscriptionBase", "overdue", "parse_channel"]

Payload = bytes | bytearray | memoryview
Headers = Mapping[str, str] | None

# Grace beyond a call's own timeout before the caller stops waiting regardless;
# the core's deadline normally fires first.
GRACE = 1.0


def _nowhere(frames: list[bytes]) -> None:
    raise AssertionError("a stored message read by get_message is never settled")


_pack = p.pack_message
_new_id = p.new_message_id
_now_ns = time.time_ns

# (bus, subscription) whose handlers this thread or task runs: each dispatcher, a
# thread or a task of its own, sets it once. A task a handler starts inherits it,
# and waiting on it from the handler would stall just the same.
_dispatching: ContextVar[tuple[object, SubscriptionBase] | None] = ContextVar(
    "zmqbus_dispatching", default=None
)


def overdue(exc: TimeoutError, what: str, timeout: float) -> BaseException:
    """What a caller raises when its wait for a call (``"publish"``,
    ``"request"``, ``"subscribe"``...) ended in ``exc``: ``exc`` itself if the
    core's deadline settled the call, else (its caller stopped waiting ``GRACE``
    after ``timeout``) the error that deadline would have given."""
    if isinstance(exc, ZmqbusError):
        return exc
    if what == "publish":
        return PublishTimeout(timeout, PublishResult(), None)
    if what == "request":
        return RequestTimeout(f"no reply within {timeout:g}s")
    return RequestTimeout(f"{what} not confirmed within {timeout:g}s")


def parse_channel(channel_id: object) -> uuid.UUID:
    """A ``uuid.UUID`` from a UUID or its string form; ``ValueError`` otherwise."""
    if isinstance(channel_id, uuid.UUID):
        return channel_id
    if isinstance(channel_id, str):
        try:
            return uuid.UUID(channel_id)
        except ValueError:
            raise ValueError(f"channel_id is not a UUID string: {channel_id!r}") from None
    raise ValueError(
        f"channel_id must be a uuid.UUID or UUID string, not {type(channel_id).__name__}"
    )


class SubscriptionBase:
    """State and read-only attributes of a subscription, on either face."""

    _bus: Any  # the face's bus, set by the face

    def __init__(self, pattern: str, maxsize: int, handler: Any, queue: str) -> None:
        self._pattern = pattern
        self._queue = queue
        self._maxsize = maxsize
        self._handler = handler
        # A handler subscription buffers (message, ack id) pairs, for the ACK after
        # its handler; a queue subscription, ACKed on arrival, just the messages:
        # one object fewer per buffered message for the cyclic GC to count and scan.
        self._buf: deque[Any] = deque()
        self._ended = False
        self._abort = False
        self._dropped = 0
        self._received = 0
        self._in_handler = False  # set by the dispatcher around each handler call

    def _dispatching_for(self, bus: object) -> None:
        """Mark this thread or task as the dispatcher of this subscription."""
        _dispatching.set((bus, self))

    @property
    def pattern(self) -> str:
        """The subscribed topic pattern."""
        return self._pattern

    @property
    def queue(self) -> str | None:
        """The queue group this subscription belongs to, or None."""
        return self._queue or None

    @property
    def dropped(self) -> int:
        """Messages dropped: because the buffer was full, or at the broker because
        this bus read too slowly (reported by the broker once it can)."""
        return self._dropped

    @property
    def received(self) -> int:
        """Messages taken into the buffer (not counting drops)."""
        return self._received

    @property
    def closed(self) -> bool:
        """True once the subscription has ended (buffered messages may remain)."""
        return self._ended

    def __len__(self) -> int:
        """Messages buffered now."""
        return len(self._buf)

    def __repr__(self) -> str:
        kind = "handler" if self._handler else "queue"
        state = "ended" if self._ended else "active"
        name = type(self).__module__.removeprefix("zmqbus.") + "." + type(self).__name__
        return f"<{name} {self._pattern!r} {kind} {state} dropped={self._dropped}>"

    def _handled(
        self, msg: Message, ack_id: int | None, result: object, exc: Exception | None
    ) -> None:
        """The handler has returned ``result`` for ``msg`` or raised ``exc``:
        confirm the delivery (``ack_id``), or answer the request."""
        self._in_handler = False
        error = None
        if exc is not None:
            error = error_text(exc)
            if msg.stream is not None:
                # The nak carries it, and a dead letter's headers keep the last one.
                logging.getLogger(type(self).__module__).info(
                    "handler for stream %s raised on %r (seq %s, delivery %d): %s",
                    msg.stream, msg.topic, msg.seq, msg.deliveries, error,
                )  # fmt: skip
            elif ack_id is None and not msg.is_request:
                # Nobody waits for this outcome: only the log can tell.
                logging.getLogger(type(self).__module__).warning(
                    "handler for %r raised on %r", self._pattern, msg.topic, exc_info=exc
                )
        if ack_id is not None:
            self._bus._handler_done(ack_id, error)
        else:
            answer_after_handler(msg, result, error)

    def _get_timeout(self, timeout: object) -> float | None:
        """``get()``'s checks: a queue subscription, and a timeout that is None
        (wait for ever) or a number of seconds, 0 or more."""
        if self._handler is None and type(timeout) is float and timeout >= 0.0:
            return timeout  # the common case, checked on every get
        if self._handler is not None:
            raise TypeError("a handler subscription has no queue to get() from")
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds or None")
        if not timeout >= 0:
            raise ValueError(f"timeout must not be negative, got {timeout!r}")
        return float(timeout)

    def _stop(self) -> None:
        """The bus is closing or the subscribe failed: end, drop a handler's backlog."""
        raise NotImplementedError

    def _discard(self) -> None:
        """End a subscription whose subscribe failed."""
        self._stop()


class BusBase:
    """Arguments, encoding, subscriptions and properties of a bus, on either face.

    A face sets ``_CLIENT`` (its name in HELLO), implements ``_open()`` (set up
    its driver; the threaded face also connects there), ``_future()`` and
    ``_run(command)`` (run a core command its way), and may add to ``_check()``.
    """

    _CLIENT: ClassVar[str] = "zmqbus-py"

    def __init__(
        self,
        address: str,
        channel_id: uuid.UUID | str,
        *,
        connect_timeout: float = 5.0,
        close_timeout: float = 2.0,
        context: zmq.Context[Any] | None = None,
        hwm: int = 100_000,
        heartbeat: float = 2.0,
        on_disconnected: Callable[[], Any] | None = None,
        on_reconnected: Callable[[], Any] | None = None,
        server_key: bytes | str | os.PathLike[str] | None = None,
        key: tuple[bytes | str, bytes | str] | bytes | str | os.PathLike[str] | None = None,
    ) -> None:
        self._endpoint = connect_endpoint(address)
        # CURVE: (server public, own public, own secret), Z85.
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if server_key is not None or key is not None:
            if server_key is None or key is None:
                raise ValueError(
                    "CURVE needs both server_key (the broker's public key) and key "
                    "(this client's key pair, secret key, or secret key file)"
                )
            public, secret = load_keypair(key, "key")
            self._curve = (load_public_key(server_key, "server_key"), public, secret)
        self._channel = parse_channel(channel_id)
        self._connect_timeout = _validate.timeout(connect_timeout, "connect_timeout")
        self._close_timeout = _validate.timeout(close_timeout, "close_timeout")
        self._hwm = _validate.hwm(hwm)
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)) or heartbeat < 0:
            raise ValueError("heartbeat must be a non-negative number of seconds (0: off)")
        self._ctx: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._callbacks = {"disconnected": on_disconnected, "reconnected": on_reconnected}
        self._core = ClientCore(
            self._channel.bytes, client_name=f"{self._CLIENT}/{__version__}", heartbeat=heartbeat
        )
        self._core.send_reply = self._send_reply
        self._core.send_frames = self._send_frames
        self._closed = False
        # The error that closed the bus by itself (its driver failed), or None.
        self._failure: BaseException | None = None
        self._topics: dict[str, bytes] = {}
        self._max_size = 0
        self._subs_lock = threading.Lock()
        self._subs: list[Any] = []
        self._open()

    @property
    def channel_id(self) -> uuid.UUID:
        """The channel this bus publishes and subscribes on."""
        return self._channel

    @property
    def address(self) -> str:
        """The broker endpoint."""
        return self._endpoint

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called, or the bus closed by itself
        (see ``failure``)."""
        return self._closed

    @property
    def state(self) -> str:
        """``"connected"``, ``"reconnecting"`` (the broker was lost; the bus is
        rejoining by itself and will restore its subscriptions) or ``"closed"``
        (by ``close()``, or by itself: see ``failure``)."""
        if self._closed:
            return "closed"
        state = self._core.state
        if state == "ready":
            return "connected"
        return "closed" if state == "closed" else "reconnecting"

    @property
    def failure(self) -> BaseException | None:
        """The error that closed the bus by itself (its I/O failed), or None.
        Every call then raises ``BusClosed`` with this as its ``__cause__``."""
        return self._failure

    @property
    def throttled(self) -> int:
        """Unconfirmed publishes the broker dropped because this bus's user
        was over its rate limit (as the broker's DROPPED notices count them;
        a confirmed publish over it raises ``RateLimited`` instead)."""
        return self._core.counters["throttled"]

    @property
    def refused(self) -> int:
        """Messages the broker refused that no call waited for: unconfirmed
        publishes (a topic this bus's user may not publish on, say), ACKs and
        replies. Each is also logged as a warning."""
        return self._core.counters["broker_errors"]

    @property
    def max_message_size(self) -> int:
        """The broker's limit on an encoded message body, from the handshake."""
        return self._max_size

    def __repr__(self) -> str:
        name = type(self).__module__.removeprefix("zmqbus.") + "." + type(self).__name__
        return f"<{name} {self._endpoint} channel={self._channel} {self.state}>"

    # --- what each face supplies ---------------------------------------------

    def _open(self) -> None:
        """Set up this face's driver of the core, once the arguments are checked."""
        raise NotImplementedError

    def _future(self) -> Any:
        """A new waiter of this face's kind."""
        raise NotImplementedError

    def _run(self, command: Callable[[], object]) -> None:
        """Run ``command`` (a core call) where the core lives, and send what it queued."""
        raise NotImplementedError

    def _send_reply(self, token: bytes, body: bytes) -> None:
        """Send a handler's REPLY (the core's ``send_reply``), from any thread."""
        raise NotImplementedError

    def _send_frames(self, frames: list[bytes]) -> None:
        """Send one unconfirmed message (a STREAM_ACK), from any thread."""
        raise NotImplementedError

    # --- streams: checked arguments, and what replies become ------------------------

    def _stream_op(self, timeout: object) -> float:
        """The timeout of a stream request, once the bus is usable."""
        self._check()
        return _validate.timeout(timeout)

    @staticmethod
    def _stream_args(op: str, name: object, **more: Any) -> dict[str, Any]:
        """A STREAM request's arguments, the stream name checked."""
        args: dict[str, Any] = {"name": check_name(name)}
        if "consumer" in more:
            args["consumer"] = check_name(more.pop("consumer"), "consumer name")
        if op == "get":
            seq = more.pop("seq")
            if type(seq) is not int or seq < 1:
                raise ValueError("seq must be a positive int")
            args["seq"] = seq
        return args

    def _stored_message(self, name: str, reply: Mapping[str, Any]) -> Message:
        """A ``get_message`` reply as a Message (its ``stream`` and ``seq`` set;
        nothing to settle)."""
        got = reply["message"]
        msg_id, ts, headers, payload = p.message_fields(got["body"])
        msg = make_message(msg_id, got["topic"].decode("utf-8"), payload, headers, ts)
        ctx = StreamContext(name, int(got["seq"]), 0, b"", self._core.channel, _nowhere)
        ctx.settled = True
        attach_stream(msg, ctx)
        return msg

    def _prepare_consume(
        self, stream: object, handler: object, maxsize: object, timeout: object, config: Any
    ) -> tuple[bytes, int, float]:
        """(CONSUME body, maxsize, timeout) of a consume, each checked."""
        self._check()
        if handler is not None and not callable(handler):
            raise TypeError("handler must be callable")
        body = consume_body(stream, **config)
        return p.pack_consume(**body), _validate.maxsize(maxsize), _validate.timeout(timeout)

    def _check(self) -> None:
        """Raise unless the caller may use this bus now."""
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> BusClosed:
        """The ``BusClosed`` a call on this closed bus raises: caused by the
        failure that closed it, if one did."""
        return BusClosed.after(self._failure)

    def _failed(self, exc: BaseException) -> None:
        """The driver failed with ``exc`` and closed the core: the bus is closed."""
        if self._failure is None:
            self._failure = exc
        self._closed = True

    # --- shared steps ---------------------------------------------------------

    def _issue(self, command: Callable[..., object], *args: Any, timeout: float, **kw: Any) -> Any:
        """Run the core's ``command(*args, waiter, deadline, timeout, **kw)`` with
        a new waiter, due ``timeout`` seconds from now; return the waiter."""
        fut = self._future()
        self._run(partial(command, *args, fut, time.monotonic() + timeout, timeout, **kw))
        return fut

    def _prepare_message(
        self,
        topic: object,
        payload: object,
        headers: object,
        timeout: object,
        confirm: object,
        msg_id: object = None,
    ) -> tuple[bytes, bytes, float]:
        """``(topic, body, timeout)`` of a publish or request, once the bus is
        usable and every argument checked; then ``MessageTooLarge`` for a body
        over the broker's limit, and ``ReentrantPublish`` (when ``confirm``)."""
        self._check()
        topic_b = self._topics.get(topic) if type(topic) is str else None
        if topic_b is None:
            topic_b = validate_topic(topic).encode()
            if len(self._topics) < 4096:
                self._topics[topic] = topic_b  # type: ignore[index]
        # The common arguments pass inline; anything else goes to the checks.
        data = payload if type(payload) is bytes else _validate.payload(payload)
        hdrs = {} if headers is None else _validate.headers(headers)
        seconds = timeout if type(timeout) is float and timeout > 0 else _validate.timeout(timeout)
        if confirm is not True and confirm is not False:
            raise TypeError(f"confirm must be True or False, not {confirm!r}")
        body = _pack(_new_id() if msg_id is None else message_id(msg_id), _now_ns(), hdrs, data)
        if len(body) > self._max_size:
            raise MessageTooLarge(len(body), self._max_size)
        if confirm:
            self._refuse_own_wait(topic)  # type: ignore[arg-type]
        return topic_b, body, seconds

    def _prepare_subscribe(
        self, pattern: object, handler: object, maxsize: object, queue: object, timeout: object
    ) -> tuple[int, str, float]:
        """``(maxsize, queue group, timeout)`` of a subscribe, each checked."""
        self._check()
        validate_pattern(pattern)
        if handler is not None and not callable(handler):
            raise TypeError("handler must be callable")
        return _validate.maxsize(maxsize), _validate.queue(queue), _validate.timeout(timeout)

    def _prepare_unsubscribe(self, pattern: object, timeout: object) -> float:
        """The timeout of an unsubscribe, its arguments checked."""
        self._check()
        validate_pattern(pattern)
        return _validate.timeout(timeout)

    def _prepare_remove(self, timeout: object) -> float | None:
        """The timeout of a subscription's own unsubscribe, or None once the bus
        has closed (which ended the subscription already)."""
        if self._closed:
            return None
        self._check()
        return _validate.timeout(timeout)

    def _reply_frames(self, token: bytes, body: bytes) -> list[bytes]:
        """REPLY frames for a handler's answer; ``MessageTooLarge`` over the limit."""
        if len(body) > self._max_size:
            raise MessageTooLarge(len(body), self._max_size)
        return [p.H_REPLY, self._core.channel, token, body]

    @contextlib.contextmanager
    def _connecting(self, undo: Callable[[], None]) -> Iterator[None]:
        """Around the wait for the handshake: if it fails, ``undo()`` (the face
        drops its socket); a timeout, the core's or the caller's, is
        ``ConnectTimeout``."""
        try:
            yield
        except (ConnectTimeout, RequestTimeout):
            undo()
            raise ConnectTimeout(self._endpoint, self._connect_timeout) from None
        except AuthenticationError as exc:
            undo()
            raise AuthenticationError(self._endpoint, exc.reason) from None
        except BaseException:
            undo()
            raise

    @contextlib.contextmanager
    def _subscribing(self, sub: SubscriptionBase, timeout: float) -> Iterator[None]:
        """Around the wait for ``sub``'s subscribe: keep ``sub`` once it is
        confirmed; if not (an error, or the caller gave up), end it and take back
        its sid, so that a late OK cannot leave a subscription behind."""
        try:
            yield
        except BaseException:
            sub._discard()
            if not self._closed:
                with contextlib.suppress(BusClosed):
                    self._issue(self._core.remove, sub, timeout=timeout)
            raise
        with self._subs_lock:
            self._subs.append(sub)

    def _forget(self, pattern: str | None = None, sub: object = None) -> list[Any]:
        """Drop from the bus's list ``sub``, or the subscriptions to ``pattern``,
        or (neither given) all; return what was dropped."""
        with self._subs_lock:
            subs = self._subs
            if sub is None and pattern is None:
                self._subs = []
                return subs
            self._subs = [s for s in subs if s is not sub and s.pattern != pattern]
            return [s for s in subs if s is sub or s.pattern == pattern]

    def _refuse_own_wait(self, topic: str) -> None:
        """Raise ``ReentrantPublish`` when a handler of this bus makes a confirmed
        publish its own subscription would receive: it could not be confirmed
        before that handler returns, and the handler is waiting for it."""
        current = _dispatching.get()
        if current is None or current[0] is not self:
            return
        sub = current[1]
        if sub._in_handler and not sub._ended and matches(sub._pattern, topic):
            raise ReentrantPublish(sub._pattern, topic)
