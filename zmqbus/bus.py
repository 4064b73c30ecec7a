"""The thread-safe ``Bus``: a thin face over ``ClientCore`` and its I/O thread."""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, cast

import zmq

from . import _validate
from . import protocol as p
from ._client import DELIVERED, DROPPED, PENDING
from ._face import BusBase, SubscriptionBase, parse_channel
from ._iothread import IOThread
from ._version import __version__
from .errors import (
    BusClosed,
    ConnectTimeout,
    MessageTooLarge,
    PublishTimeout,
    RequestTimeout,
    SubscriptionClosed,
    ZmqbusError,
)
from .message import Message, PublishResult, answer_after_handler, error_text
from .topics import validate_pattern

__all__ = ["Bus", "Handler", "Subscription", "parse_channel"]

log = logging.getLogger("zmqbus.bus")

Handler = Callable[[Message], Any]

# Grace beyond a call's own timeout before the caller stops waiting on the
# I/O thread regardless; the core's deadline normally fires first.
_GRACE = 1.0

_UNCONFIRMED = PublishResult(0, 0, 0, 0, confirmed=False)


T = TypeVar("T")

# Buses not yet closed, closed at interpreter exit: their I/O threads are daemons
# and their sockets do not linger, so without it a script that ends without
# close() loses whatever it had queued.
_open: weakref.WeakSet[Bus] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    # atexit runs before daemon threads are frozen, so each close() can still flush.
    for bus in list(_open):
        with contextlib.suppress(Exception):
            bus.close()


def _wait(fut: Future[T], timeout: float, on_timeout: Callable[[], ZmqbusError]) -> T:
    # concurrent.futures.TimeoutError is the builtin TimeoutError, which our own
    # PublishTimeout/RequestTimeout subclass: let those through untouched.
    try:
        return fut.result(timeout + _GRACE)
    except ZmqbusError:
        raise
    except FutureTimeout:
        raise on_timeout() from None


class Subscription(SubscriptionBase):
    """A subscription of one ``Bus``: a bounded buffer of messages, or a handler.

    A queue subscription (no handler) is read with ``get()`` or by iterating;
    iteration ends once the subscription has ended and its buffer is drained.
    When the buffer holds ``maxsize`` messages, new ones are dropped and
    counted in ``dropped``. A handler subscription runs its handler on its
    own thread, one message at a time, in publish order.
    """

    def __init__(
        self, bus: Bus, pattern: str, maxsize: int, handler: Handler | None, queue: str = ""
    ) -> None:
        super().__init__(pattern, maxsize, handler, queue)
        self._bus = bus
        self._handler: Handler | None = handler
        self._cond = threading.Condition(threading.Lock())
        self._wake_due = False
        self._thread: threading.Thread | None = None
        if handler is not None:
            self._thread = threading.Thread(
                target=self._dispatch, name=f"zmqbus-handler[{pattern}]", daemon=True
            )
            self._thread.start()

    @property
    def handler(self) -> Handler | None:
        """The handler, or None for a queue subscription."""
        return self._handler

    # --- Sink interface (I/O thread) ----------------------------------------

    def offer(self, message: Message, ack_id: int | None) -> int:
        """Called by the core on the I/O thread; never blocks.

        No lock: the I/O thread is the only one that appends or counts, and a
        deque's append and popleft are atomic, so readers take messages without
        contending with it. Readers wait on the condition only when the buffer
        is empty, and are woken once per batch the I/O thread takes from the
        socket (see ``_wake``): a wake-up costs a thread switch, several times
        the cost of the rest of a delivery."""
        buf = self._buf
        if self._ended or len(buf) >= self._maxsize:
            self._dropped += 1
            return DROPPED
        buf.append(message if self._handler is None else (message, ack_id))
        self._received += 1
        if not self._wake_due:
            self._wake_due = True
            self._bus._touched.append(self)
        if self._handler is not None and ack_id is not None:
            return PENDING
        return DELIVERED

    def _wake(self) -> None:
        """I/O thread, after a receive batch: wake whoever waits for messages."""
        with self._cond:
            self._wake_due = False
            self._cond.notify_all()

    def missed(self, count: int) -> None:
        """Called by the core: the broker dropped ``count`` messages for us."""
        with self._cond:
            self._dropped += count

    def end(self) -> None:
        """Called by the core: no more messages will come."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # --- consumer API -------------------------------------------------------

    def get(self, timeout: float | None = None) -> Message:
        """Next message. Raises ``TimeoutError`` if none arrives in ``timeout``
        seconds, ``SubscriptionClosed`` once ended with the buffer empty."""
        if self._handler is not None:
            raise TypeError("a handler subscription has no queue to get() from")
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                raise ValueError("timeout must not be negative")
        buf = self._buf
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return cast(Message, buf.popleft())
            except IndexError:
                pass  # empty (or another reader took the last one): wait
            with self._cond:
                # Checked under the lock that _wake() takes to notify: no wake-up is lost.
                if buf:
                    continue
                if self._ended:
                    raise SubscriptionClosed(f"subscription {self._pattern!r} has ended")
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no message on {self._pattern!r} within {timeout:g}s")
                self._cond.wait(remaining)

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.get()
            except SubscriptionClosed:
                return

    def unsubscribe(self, timeout: float = 5.0) -> None:
        """End this subscription alone (others on the same pattern stay)."""
        self._bus._remove(self, timeout)

    # --- handler dispatch ---------------------------------------------------

    def _dispatch(self) -> None:
        handler = self._handler
        assert handler is not None
        self._dispatching_for(self._bus)
        cond = self._cond
        buf = self._buf
        while True:
            if self._abort:
                return
            try:
                msg, ack_id = buf.popleft()
            except IndexError:
                with cond:
                    while not buf and not self._ended:
                        cond.wait()
                    if self._abort or not buf:
                        return
                continue
            error: str | None = None
            result: Any = None
            self._in_handler = True
            try:
                result = handler(msg)
            except Exception as exc:
                error = error_text(exc)
                if ack_id is None and not msg.is_request:
                    log.warning(
                        "handler for %r raised on %r", self._pattern, msg.topic, exc_info=True
                    )
            self._in_handler = False
            if ack_id is not None:
                self._bus._handler_done(ack_id, error)
            else:
                answer_after_handler(msg, result, error)

    def _stop(self) -> None:
        # Bus is closing: discard the backlog, let a running handler finish.
        with self._cond:
            self._abort = True
            self._ended = True
            self._buf.clear() if self._handler is not None else None
            self._cond.notify_all()

    def _join(self, timeout: float) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)


class Bus(BusBase):
    """A connection to a broker on one channel; every method is thread-safe.

    ``address`` is a zmq endpoint (``tcp://host:port``, ``ipc://``,
    ``inproc://``) or ``host:port``. ``channel_id`` is a ``uuid.UUID`` or UUID
    string. The constructor returns once the broker has answered the
    handshake, or raises ``ConnectTimeout`` after ``connect_timeout`` seconds.
    ``close()`` waits up to ``close_timeout`` seconds for messages already
    queued to reach the broker; a bus still open at interpreter exit is closed
    then, the same way.

    Bus and broker exchange heartbeats every ``heartbeat`` seconds (0 turns
    them off); after three silent intervals, a BYE from a stopping broker, or
    a broker that no longer knows the session, the bus reconnects by itself
    with backoff and jitter (0.1 s doubling to 5 s) and restores its
    subscriptions. ``state`` tells where it is; ``on_disconnected`` and
    ``on_reconnected`` are called (on a thread of their own) as it changes.
    Publishes that cannot be confirmed meanwhile fail at their timeout.
    """

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
    ) -> None:
        super().__init__(
            address,
            channel_id,
            close_timeout=close_timeout,
            heartbeat=heartbeat,
            client_name=f"zmqbus-py/{__version__}",
            on_disconnected=on_disconnected,
            on_reconnected=on_reconnected,
        )
        connect_timeout = _validate.timeout(connect_timeout, "connect_timeout")
        self._ctx = context if context is not None else zmq.Context.instance()
        self._close_lock = threading.Lock()
        self._subs_lock = threading.Lock()
        self._subs: list[Subscription] = []
        # Subscriptions given messages in the current receive batch (I/O thread only).
        self._touched: list[Subscription] = []
        self._io = IOThread(
            self._ctx,
            self._endpoint,
            self._core,
            hwm=hwm,
            on_event=self._on_event,
            after_receive=self._wake_touched,
        )
        fut: Future[dict[str, Any]] = Future()
        now = time.monotonic()
        self._io.submit(partial(self._core.connect, fut, now + connect_timeout, connect_timeout))
        try:
            info = fut.result(connect_timeout + _GRACE)
        except (ConnectTimeout, FutureTimeout):
            self._shutdown()
            raise ConnectTimeout(self._endpoint, connect_timeout) from None
        except BaseException:
            self._shutdown()
            raise
        self._max_size = int(info["max_message_size"])
        _open.add(self)
        log.debug("bus joined channel %s at %s", self._channel, self._endpoint)

    def _wake_touched(self) -> None:
        # On the I/O thread, after each receive batch (see Subscription.offer).
        touched = self._touched
        if touched:
            self._touched = []
            for sub in touched:
                sub._wake()

    def _on_event(self, event: str) -> None:
        # On the I/O thread: hand user callbacks to a thread of their own, so a
        # callback that calls back into the bus cannot stall its I/O.
        callback = self._callbacks.get(event)
        if callback is not None:
            threading.Thread(target=callback, name=f"zmqbus-{event}", daemon=True).start()

    # --- publish ------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 5.0,
        confirm: bool = True,
    ) -> PublishResult:
        """Publish ``payload`` on ``topic``.

        With ``confirm`` (the default), return once every subscription the
        message reached has taken it (queued or dropped; handlers returned).
        Raises ``HandlerError`` if a handler raised, ``PublishTimeout`` if not
        all confirmed within ``timeout``, ``ReentrantPublish`` at once from a
        handler whose own subscription would receive it. Without ``confirm``,
        return as soon as the message is queued for sending.
        """
        if self._closed:
            raise BusClosed("bus is closed")
        topic_b = self._topic_bytes(topic)
        timeout = _validate.timeout(timeout)
        body = self._encode(payload, headers)
        if not confirm:
            self._io.submit([p.H_PUBLISH, self._core.channel, b"", topic_b, body])
            return _UNCONFIRMED
        self._refuse_own_wait(topic)
        fut = self._publish_confirmed(topic_b, body, timeout)
        return _wait(fut, timeout, lambda: PublishTimeout(timeout, PublishResult(), None))

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 5.0,
    ) -> Future[PublishResult]:
        """Publish with confirmation without waiting for it: return a
        ``concurrent.futures.Future`` of the ``PublishResult`` (or
        ``HandlerError``, ``PublishTimeout``), settled within ``timeout``.
        Keeping several outstanding pipelines confirmed publishing from one
        thread; bound how many yourself."""
        if self._closed:
            raise BusClosed("bus is closed")
        topic_b = self._topic_bytes(topic)
        timeout = _validate.timeout(timeout)
        body = self._encode(payload, headers)
        return self._publish_confirmed(topic_b, body, timeout)

    def _publish_confirmed(
        self, topic: bytes, body: bytes, timeout: float
    ) -> Future[PublishResult]:
        fut: Future[PublishResult] = Future()
        self._io.submit(
            partial(self._core.publish, topic, body, fut, time.monotonic() + timeout, timeout)
        )
        return fut

    # --- request ------------------------------------------------------------

    def request(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 5.0,
    ) -> Message:
        """Send a request to the subscribers of ``topic``; return the first reply.

        Every matching subscription receives it (one member per queue group).
        Raises ``NoResponders`` at once if none matches, ``HandlerError`` if the
        first answer is a responder's failure, ``RequestTimeout`` (a
        ``TimeoutError``) if no answer comes within ``timeout``.
        """
        if self._closed:
            raise BusClosed("bus is closed")
        topic_b = self._topic_bytes(topic)
        timeout = _validate.timeout(timeout)
        body = self._encode(payload, headers)
        fut: Future[Message] = Future()
        self._io.submit(
            partial(self._core.request, topic_b, body, fut, time.monotonic() + timeout, timeout)
        )
        return _wait(fut, timeout, lambda: RequestTimeout(f"no reply within {timeout:g}s"))

    def _send_reply(self, token: bytes, body: bytes) -> None:
        if len(body) > self._max_size:
            raise MessageTooLarge(len(body), self._max_size)
        self._io.submit([p.H_REPLY, self._core.channel, token, body])

    # --- subscribe ----------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Handler | None = None,
        maxsize: int = 100,
        *,
        queue: str | None = None,
        timeout: float = 5.0,
    ) -> Subscription:
        """Subscribe to topics matching ``pattern``; returns once the broker holds it.

        Without ``handler``, read the returned subscription with ``get()`` or by
        iterating. With ``handler``, it is called with each ``Message`` on the
        subscription's own thread; a raise is reported to a confirming publisher
        (or, for a request, to the requester), and bytes returned for a request
        are its reply. With ``queue``, the subscription joins that queue group:
        each message goes to one member of the group, not to all.
        """
        if self._closed:
            raise BusClosed("bus is closed")
        validate_pattern(pattern)
        if handler is not None and not callable(handler):
            raise TypeError("handler must be callable")
        maxsize = _validate.maxsize(maxsize)
        group = _validate.queue(queue)
        timeout = _validate.timeout(timeout)
        sub = Subscription(self, pattern, maxsize, handler, group)
        fut: Future[None] = Future()
        deadline = time.monotonic() + timeout
        try:
            self._io.submit(partial(self._core.subscribe, sub, fut, deadline, timeout, group))
            _wait(
                fut, timeout, lambda: RequestTimeout(f"subscribe not confirmed within {timeout:g}s")
            )
        except BaseException:
            sub._stop()
            sub._join(0.1)
            # Take back the sid so a late OK cannot leave a subscription behind.
            with contextlib.suppress(BusClosed):
                self._io.submit(partial(self._core.remove, sub, Future(), deadline, timeout))
            raise
        with self._subs_lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, pattern: str, *, timeout: float = 5.0) -> int:
        """End every subscription of this bus to exactly ``pattern``; returns how
        many ended, once the broker has confirmed."""
        if self._closed:
            raise BusClosed("bus is closed")
        validate_pattern(pattern)
        timeout = _validate.timeout(timeout)
        fut: Future[int] = Future()
        self._io.submit(
            partial(self._core.unsubscribe, pattern, fut, time.monotonic() + timeout, timeout)
        )
        count = _wait(
            fut, timeout, lambda: RequestTimeout(f"unsubscribe not confirmed within {timeout:g}s")
        )
        with self._subs_lock:
            self._subs = [s for s in self._subs if s.pattern != pattern]
        return count

    def _remove(self, sub: Subscription, timeout: float) -> None:
        if self._closed:
            return
        timeout = _validate.timeout(timeout)
        fut: Future[None] = Future()
        try:
            self._io.submit(
                partial(self._core.remove, sub, fut, time.monotonic() + timeout, timeout)
            )
        except BusClosed:
            return
        try:
            _wait(
                fut,
                timeout,
                lambda: RequestTimeout(f"unsubscribe not confirmed within {timeout:g}s"),
            )
        except BusClosed:
            return
        with self._subs_lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _handler_done(self, ack_id: int, error: str | None) -> None:
        # If the bus closed meanwhile, the core already confirmed this delivery.
        with contextlib.suppress(BusClosed):
            self._io.submit(partial(self._core.handler_done, ack_id, error))

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Close the bus. Idempotent.

        Messages published before (confirmed or not) are flushed: a DISCONNECT
        follows them, and its answer proves the broker has routed them all; after
        ``close_timeout`` seconds without it, what is unsent is dropped. Pending
        publishes and requests fail with ``BusClosed``; subscriptions end
        (buffered messages stay readable); a running handler gets up to
        ``close_timeout`` seconds more to return, its backlog is dropped."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _open.discard(self)
        with self._subs_lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            if sub.handler is not None:
                sub._stop()
        fut: Future[None] = Future()
        timeout = self._close_timeout
        try:
            self._io.submit(
                partial(
                    self._core.close,
                    BusClosed("bus is closed"),
                    fut,
                    time.monotonic() + timeout,
                    timeout,
                )
            )
            fut.result(timeout + _GRACE)
        except Exception:
            pass  # best effort: the broker may be gone
        self._shutdown()
        deadline = time.monotonic() + timeout
        for sub in subs:
            sub._join(max(0.0, deadline - time.monotonic()))

    def _shutdown(self) -> None:
        self._io.stop(self._close_timeout)

    def __enter__(self) -> Bus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A bus dropped without close() must not leave its I/O thread running.
        if not getattr(self, "_closed", True) and hasattr(self, "_io"):
            with contextlib.suppress(Exception):
                self._io.stop(0.5)
