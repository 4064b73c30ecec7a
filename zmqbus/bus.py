"""The thread-safe ``Bus``: a thin face over ``ClientCore`` and its I/O thread."""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar, cast

from . import protocol as p
from ._client import DELIVERED, DROPPED, PENDING
from ._face import GRACE, BusBase, Headers, Payload, SubscriptionBase, overdue, parse_channel
from ._iothread import IOThread
from .errors import BusClosed, SubscriptionClosed
from .message import Message, PublishResult
from .streams import ConsumerInfo, StreamInfo, consume_body, stream_config

__all__ = ["Bus", "Consumer", "Handler", "Subscription", "parse_channel"]

log = logging.getLogger("zmqbus.bus")

Handler = Callable[[Message], Any]

_UNCONFIRMED = PublishResult(0, 0, 0, 0, confirmed=False)


T = TypeVar("T")

# Buses not yet closed, closed at interpreter exit: their I/O threads are daemons
# and their sockets do not linger, so without it a script that ends without
# close() loses whatever it had queued.
_unclosed: weakref.WeakSet[Bus] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    # atexit runs before daemon threads are frozen, so each close() can still flush.
    for bus in list(_unclosed):
        with contextlib.suppress(Exception):
            bus.close()


def _wait(fut: Future[T], timeout: float, what: str) -> T:
    # concurrent.futures.TimeoutError is the builtin TimeoutError, which our own
    # PublishTimeout/RequestTimeout subclass: overdue() lets those through.
    try:
        # Capped: Condition.wait overflows past TIMEOUT_MAX (timeout=inf).
        return fut.result(min(timeout + GRACE, threading.TIMEOUT_MAX))
    except TimeoutError as exc:
        raise overdue(exc, what, timeout) from None


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
        buf = self._buf
        if (
            buf
            and self._handler is None
            and (timeout is None or (type(timeout) is float and timeout >= 0.0))
        ):
            # A message waiting, the common case of a busy reader: no clock and
            # no call for the checks _get_timeout makes of anything else.
            try:
                message: Message = buf.popleft()
                return message
            except IndexError:
                pass  # another reader took the last one
        timeout = self._get_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                message = buf.popleft()
                return message
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
            self._in_handler = True
            try:
                result = handler(msg)
            except Exception as exc:
                self._handled(msg, ack_id, None, exc)
            else:
                self._handled(msg, ack_id, result, None)

    def _discard(self) -> None:
        self._stop()
        self._join(0.1)

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


class Consumer(Subscription):
    """A stream consumer bound to a ``Bus``: read it as a subscription (its
    messages have ``stream``, ``seq``, ``deliveries`` and ``ack()``, ``nak()``,
    ``in_progress()``, ``term()``); a handler's return acks, a raise naks.
    ``unsubscribe()`` unbinds it (a durable keeps its place on the broker)."""

    def __init__(self, bus: Bus, stream: str, maxsize: int, handler: Handler | None) -> None:
        super().__init__(bus, f"stream {stream}", maxsize, handler)
        self.stream = stream
        self.info: ConsumerInfo | None = None  # as the broker bound it


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

    _CLIENT = "zmqbus-py"

    def _open(self) -> None:
        # Subscriptions given messages in the current receive batch (I/O thread only).
        self._touched: list[Subscription] = []
        self._close_lock = threading.Lock()
        self._closing = False  # close() has begun (``_closed`` is also set by a failure)
        self._io = IOThread(
            self._ctx,
            self._endpoint,
            self._core,
            hwm=self._hwm,
            on_event=self._on_event,
            after_receive=self._wake_touched,
            on_failure=self._failed,
            curve=self._curve,
        )
        timeout = self._connect_timeout
        with self._connecting(self._shutdown):
            info = _wait(self._issue(self._core.connect, timeout=timeout), timeout, "connect")
        self._max_size = int(info["max_message_size"])
        _unclosed.add(self)
        log.debug("bus joined channel %s at %s", self._channel, self._endpoint)

    def _future(self) -> Future[Any]:
        return Future()

    def _run(self, command: Callable[[], object]) -> None:
        self._io.submit(command)

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
        self, topic: str, payload: Payload, headers: Headers = None,
        *, timeout: float = 5.0, confirm: bool = True, msg_id: Any = None,
    ) -> PublishResult:  # fmt: skip
        """Publish ``payload`` on ``topic``.

        With ``confirm`` (the default), return once every subscription the
        message reached has taken it (queued or dropped; handlers returned).
        Raises ``HandlerError`` if a handler raised, ``PublishTimeout`` if not
        all confirmed within ``timeout``, ``ReentrantPublish`` at once from a
        handler whose own subscription would receive it. Without ``confirm``,
        return as soon as the message is queued for sending. Into a stream,
        a confirmed publish returns once the message is stored, its
        ``stream`` and ``seq`` in the result; ``msg_id`` (a UUID, 16 bytes or
        a str) makes a retry a ``duplicate`` the stream stores only once.
        """
        topic_b, body, timeout = self._prepare_message(
            topic, payload, headers, timeout, confirm, msg_id
        )
        if not confirm:
            self._io.submit([p.H_PUBLISH, self._core.channel, b"", topic_b, body])
            return _UNCONFIRMED
        fut: Future[PublishResult] = self._issue(self._core.publish, topic_b, body, timeout=timeout)
        return _wait(fut, timeout, "publish")

    def publish_nowait(
        self, topic: str, payload: Payload, headers: Headers = None, *, timeout: float = 5.0
    ) -> Future[PublishResult]:
        """Publish with confirmation without waiting for it: return a
        ``concurrent.futures.Future`` of the ``PublishResult`` (or
        ``HandlerError``, ``PublishTimeout``), settled within ``timeout``.
        Keeping several outstanding pipelines confirmed publishing from one
        thread; bound how many yourself."""
        topic_b, body, timeout = self._prepare_message(topic, payload, headers, timeout, False)
        return cast(
            "Future[PublishResult]", self._issue(self._core.publish, topic_b, body, timeout=timeout)
        )

    # --- request ------------------------------------------------------------

    def request(
        self, topic: str, payload: Payload, headers: Headers = None, *, timeout: float = 5.0
    ) -> Message:
        """Send a request to the subscribers of ``topic``; return the first reply.

        Every matching subscription receives it (one member per queue group).
        Raises ``NoResponders`` at once if none matches, ``HandlerError`` if the
        first answer is a responder's failure, ``RequestTimeout`` (a
        ``TimeoutError``) if no answer comes within ``timeout``.
        """
        topic_b, body, timeout = self._prepare_message(topic, payload, headers, timeout, False)
        fut: Future[Message] = self._issue(self._core.request, topic_b, body, timeout=timeout)
        return _wait(fut, timeout, "request")

    def _send_reply(self, token: bytes, body: bytes) -> None:
        self._send_frames(self._reply_frames(token, body))

    def _send_frames(self, frames: list[bytes]) -> None:
        self._io.submit(frames)

    # --- subscribe ----------------------------------------------------------

    def subscribe(
        self, pattern: str, handler: Handler | None = None, maxsize: int = 100,
        *, queue: str | None = None, timeout: float = 5.0,
    ) -> Subscription:  # fmt: skip
        """Subscribe to topics matching ``pattern``; returns once the broker holds it.

        Without ``handler``, read the returned subscription with ``get()`` or by
        iterating. With ``handler``, it is called with each ``Message`` on the
        subscription's own thread; a raise is reported to a confirming publisher
        (or, for a request, to the requester), and bytes returned for a request
        are its reply. With ``queue``, the subscription joins that queue group:
        each message goes to one member of the group, not to all.
        """
        size, group, timeout = self._prepare_subscribe(pattern, handler, maxsize, queue, timeout)
        sub = Subscription(self, pattern, size, handler, group)
        with self._subscribing(sub, timeout):
            fut = self._issue(self._core.subscribe, sub, timeout=timeout, queue=group)
            _wait(fut, timeout, "subscribe")
        return sub

    # --- streams ------------------------------------------------------------

    def add_stream(
        self, name: str, subjects: list[str], *, timeout: float = 5.0, **config: Any
    ) -> StreamInfo:
        """Make a durable stream on this bus's channel that stores every message
        published on ``subjects`` (see ``zmqbus.streams.stream_config`` for the
        options: ``max_msgs``, ``max_bytes``, ``max_age``, ``max_msg_size``,
        ``discard``, ``retention``, ``storage``, ``duplicate_window``). The same
        call again is no error; ``StreamExists`` for another config."""
        args = {"config": stream_config(name, subjects, **config)}
        return StreamInfo.from_reply(self._stream("add", args, timeout)["stream"])

    def stream_info(self, name: str, *, timeout: float = 5.0) -> StreamInfo:
        """The stream ``name``; ``StreamNotFound`` if the channel has none."""
        reply = self._stream("info", self._stream_args("info", name), timeout)
        return StreamInfo.from_reply(reply["stream"])

    def streams(self, *, timeout: float = 5.0) -> list[StreamInfo]:
        """Every stream of this bus's channel."""
        return [StreamInfo.from_reply(s) for s in self._stream("list", {}, timeout)["streams"]]

    def delete_stream(self, name: str, *, timeout: float = 5.0) -> None:
        """Delete the stream, its messages and its consumers."""
        self._stream("delete", self._stream_args("delete", name), timeout)

    def purge_stream(self, name: str, *, timeout: float = 5.0) -> int:
        """Remove every message of the stream (sequences go on); how many went."""
        return int(self._stream("purge", self._stream_args("purge", name), timeout)["purged"])

    def get_message(self, name: str, seq: int, *, timeout: float = 5.0) -> Message:
        """The message stored at ``seq``; ``StreamNotFound`` if there is none."""
        reply = self._stream("get", self._stream_args("get", name, seq=seq), timeout)
        return self._stored_message(name, reply)

    def add_consumer(
        self, stream: str, durable: str, *, timeout: float = 5.0, **config: Any
    ) -> ConsumerInfo:
        """Make a durable consumer without binding it (``consume`` binds it)."""
        body = consume_body(stream, durable=durable, **config)
        args = {"name": body["stream"], "config": body}
        return ConsumerInfo.from_reply(self._stream("consumer_add", args, timeout)["consumer"])

    def consumer_info(self, stream: str, durable: str, *, timeout: float = 5.0) -> ConsumerInfo:
        """The durable consumer; ``ConsumerNotFound`` if there is none."""
        args = self._stream_args("consumer_info", stream, consumer=durable)
        return ConsumerInfo.from_reply(self._stream("consumer_info", args, timeout)["consumer"])

    def consumers(self, stream: str, *, timeout: float = 5.0) -> list[ConsumerInfo]:
        """Every consumer of the stream."""
        reply = self._stream("consumer_list", self._stream_args("consumer_list", stream), timeout)
        return [ConsumerInfo.from_reply(c) for c in reply["consumers"]]

    def delete_consumer(self, stream: str, durable: str, *, timeout: float = 5.0) -> None:
        """Delete the durable consumer and its position."""
        args = self._stream_args("consumer_delete", stream, consumer=durable)
        self._stream("consumer_delete", args, timeout)

    def consume(
        self, stream: str, handler: Handler | None = None, maxsize: int = 1000,
        *, timeout: float = 5.0, **config: Any,
    ) -> Consumer:  # fmt: skip
        """Bind a consumer of ``stream``: the named ``durable`` (made if new), or
        a new ephemeral one. Options (see ``zmqbus.streams.consume_body``):
        ``durable``, ``filter``, ``deliver`` ("all", "new", "last"),
        ``start_seq``, ``start_time``, ``ack_wait``, ``max_deliver``,
        ``backoff``, ``dead_letter``, ``max_ack_pending``. Returns once bound."""
        body, size, seconds = self._prepare_consume(stream, handler, maxsize, timeout, config)
        sub = Consumer(self, stream, size, handler)
        with self._subscribing(sub, seconds):
            fut = self._issue(self._core.consume, sub, stream, body, timeout=seconds)
            sub.info = ConsumerInfo.from_reply(_wait(fut, seconds, "consume"))
        return sub

    def _stream(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        seconds = self._stream_op(timeout)
        fut = self._issue(self._core.stream_request, op, args, timeout=seconds)
        return cast("dict[str, Any]", _wait(fut, seconds, op.replace("_", " ")))

    def unsubscribe(self, pattern: str, *, timeout: float = 5.0) -> int:
        """End every subscription of this bus to exactly ``pattern``; returns how
        many ended, once the broker has confirmed."""
        timeout = self._prepare_unsubscribe(pattern, timeout)
        count = _wait(
            self._issue(self._core.unsubscribe, pattern, timeout=timeout), timeout, "unsubscribe"
        )
        self._forget(pattern)
        return cast(int, count)

    def _remove(self, sub: Subscription, timeout: float) -> None:
        seconds = self._prepare_remove(timeout)
        if seconds is not None:
            with contextlib.suppress(BusClosed):  # closing ended it anyway
                _wait(self._issue(self._core.remove, sub, timeout=seconds), seconds, "unsubscribe")
                self._forget(sub=sub)

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
            if self._closing:
                return
            self._closing = True
            self._closed = True
        _unclosed.discard(self)
        subs = self._forget()
        for sub in subs:
            if sub.handler is not None:
                sub._stop()
        timeout = self._close_timeout
        try:
            fut = self._issue(self._core.close, BusClosed("bus is closed"), timeout=timeout)
            fut.result(timeout + GRACE)
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

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A bus dropped without close() must not leave its I/O thread running.
        if not getattr(self, "_closing", True) and hasattr(self, "_io"):
            with contextlib.suppress(Exception):
                self._io.stop(0.5)
