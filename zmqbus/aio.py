"""The asyncio ``Bus``: a thin face over ``ClientCore``, driven by the event loop.

The core runs on the loop's thread, driven as ``_client`` documents. The
DEALER socket is a plain zmq socket whose file descriptor is watched with
``loop.add_reader``; because that descriptor is edge-triggered, every send is
followed by a look at ``zmq.EVENTS`` and every read goes on until the socket
is empty (or resumes on the next turn), so no arrival is missed. Core
deadlines become one ``loop.call_later`` timer. No extra thread, no polling:
an idle bus costs nothing. Works with the default loop and with uvloop.

While ``hwm`` messages wait unsent (ACKs and other commands the core makes
included), the bus reads nothing more from the broker until the socket takes
some. If driving the core ever fails (a bug, or the socket library refusing),
the bus closes itself: every waiter and every later call gets ``BusClosed``
caused by that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import zmq

from . import protocol as p
from ._client import DELIVERED, DROPPED, PENDING
from ._face import GRACE, BusBase, Headers, Payload, SubscriptionBase, overdue
from ._handshake import HandshakeWatch
from ._wire import DealerOwner, drain, get_option, send_queue
from .errors import AuthenticationError, BusClosed, SubscriptionClosed, WrongEventLoop
from .message import Message, PublishResult
from .streams import ConsumerInfo, StreamInfo, consume_body, stream_config

__all__ = ["AsyncHandler", "Bus", "Consumer", "Subscription"]

log = logging.getLogger("zmqbus.aio")

AsyncHandler = Callable[[Message], Awaitable[Any] | Any]

# Plain ints: zmq.POLLIN is an enum flag, and ``int & flag`` goes through enum
# machinery (~1 us) on every event check.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_COUNTS = p.BROKER_FRAME_COUNTS
_UNCONFIRMED = PublishResult(0, 0, 0, 0, confirmed=False)
# The longest timer (seconds) for a core deadline; a later one is re-armed then.
_MAX_DELAY = 3600.0

T = TypeVar("T")


def _events(sock: zmq.Socket[bytes]) -> int:
    # getsockopt(zmq.EVENTS) converts the option through an enum on every call,
    # and this runs after every send.
    return cast(int, get_option(sock, _EVENTS))


def _fd(sock: zmq.Socket[bytes]) -> int:
    return cast(int, sock.getsockopt(zmq.FD))


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("connection callback failed")


async def _wait(fut: asyncio.Future[T], timeout: float, what: str) -> T:
    # Shield the core's future: cancelling the caller must not cancel shared state,
    # and the core's own deadline settles it.
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout + GRACE)
    except TimeoutError as exc:
        raise overdue(exc, what, timeout) from None


class Subscription(SubscriptionBase):
    """A subscription of an asyncio ``Bus``: a bounded buffer read with
    ``await get()`` or ``async for``, or a handler run by its own task."""

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        maxsize: int,
        handler: AsyncHandler | None,
        queue: str = "",
    ) -> None:
        super().__init__(pattern, maxsize, handler, queue)
        self._bus = bus
        self._handler: AsyncHandler | None = handler
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if handler is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._dispatch(), name=f"zmqbus-handler[{pattern}]"
            )

    @property
    def handler(self) -> AsyncHandler | None:
        """The handler, or None for a queue subscription."""
        return self._handler

    # --- Sink interface (loop thread) ---------------------------------------

    def offer(self, message: Message, ack_id: int | None) -> int:
        """Called by the core; never blocks."""
        if self._ended or len(self._buf) >= self._maxsize:
            self._dropped += 1
            return DROPPED
        self._buf.append(message if self._handler is None else (message, ack_id))
        self._received += 1
        self._event.set()
        if self._handler is not None and ack_id is not None:
            return PENDING
        return DELIVERED

    def missed(self, count: int) -> None:
        """Called by the core: the broker dropped ``count`` messages for us."""
        self._dropped += count

    def end(self) -> None:
        """Called by the core: no more messages will come."""
        self._ended = True
        self._event.set()

    # --- consumer API -------------------------------------------------------

    async def get(self, timeout: float | None = None) -> Message:
        """Next message. Raises ``TimeoutError`` if none arrives in ``timeout``
        seconds, ``SubscriptionClosed`` once ended with the buffer empty."""
        self._bus._on_own_loop()
        timeout = self._get_timeout(timeout)
        if not self._buf and not self._ended:
            if timeout is None:
                # No asyncio.timeout scope: it costs a lone message a few us.
                await self._arrival()
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await self._arrival()
                except TimeoutError:
                    raise TimeoutError(
                        f"no message on {self._pattern!r} within {timeout:g}s"
                    ) from None
        if self._buf:
            return cast(Message, self._buf.popleft())
        raise SubscriptionClosed(f"subscription {self._pattern!r} has ended")

    async def _arrival(self) -> None:
        while not self._buf and not self._ended:
            self._event.clear()
            await self._event.wait()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                return

    async def unsubscribe(self, timeout: float = 5.0) -> None:
        """End this subscription alone (others on the same pattern stay)."""
        await self._bus._remove(self, timeout)

    # --- handler dispatch ---------------------------------------------------

    async def _dispatch(self) -> None:
        handler = self._handler
        assert handler is not None
        self._dispatching_for(self._bus)
        buf = self._buf
        while True:
            while not buf and not self._ended:
                self._event.clear()
                await self._event.wait()
            if self._abort or not buf:
                return
            msg, ack_id = buf.popleft()
            self._in_handler = True
            try:
                result = handler(msg)
                if inspect.isawaitable(result):
                    result = await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._handled(msg, ack_id, None, exc)
            else:
                self._handled(msg, ack_id, result, None)

    def _stop(self) -> None:
        # The bus is closing: discard the backlog; a running handler finishes.
        self._abort = True
        self._ended = True
        if self._handler is not None:
            self._buf.clear()
        self._event.set()


class Consumer(Subscription):
    """A stream consumer bound to a ``zmqbus.aio.Bus``; see ``zmqbus.Consumer``."""

    def __init__(self, bus: Bus, stream: str, maxsize: int, handler: AsyncHandler | None) -> None:
        super().__init__(bus, f"stream {stream}", maxsize, handler)
        self.stream = stream
        self.info: ConsumerInfo | None = None  # as the broker bound it


class Bus(BusBase, DealerOwner):
    """An asyncio connection to a broker on one channel.

    Same arguments, semantics, errors and defaults as ``zmqbus.Bus``; create it
    with ``async with Bus(address, channel_id) as bus`` (or ``await
    bus.connect()``). Methods must be called from the event loop the bus
    connected on (elsewhere they raise ``WrongEventLoop``); ``Message.respond``
    may be called from any thread. A bus still open when ``asyncio.run()``
    shuts its loop down is closed then, as by ``close()``.
    """

    _CLIENT = "zmqbus-py-aio"

    def _open(self) -> None:
        self._sock: zmq.Socket[bytes] | None = None
        self._watch: HandshakeWatch | None = None  # the socket's failed handshakes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._loop_thread_name = ""
        self._finalizer: AsyncGenerator[None, None] | None = None
        self._out: deque[list[bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._room = asyncio.Event()  # set while the send backlog is below hwm
        self._pump_due = False  # a _pump is scheduled for unconfirmed publishes
        self._paused = False  # reading stopped while hwm messages wait unsent

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        return self._loop.create_future()

    def _run(self, command: Callable[[], object]) -> None:
        command()
        self._pump()

    # --- lifecycle ----------------------------------------------------------

    async def connect(self) -> Bus:
        """Connect and handshake; raises ``ConnectTimeout`` after ``connect_timeout``."""
        if self._sock is not None or self._closed:
            raise RuntimeError("connect() may be called once, before close()")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._loop_thread_name = threading.current_thread().name
        self._attach(self._dealer())
        timeout = self._connect_timeout
        with self._connecting(self._teardown):
            info = await _wait(self._issue(self._core.connect, timeout=timeout), timeout, "connect")
        self._max_size = int(info["max_message_size"])
        # The socket does not linger, so a bus left open when the loop ends would
        # lose what it queued. asyncio.run() (and Runner, uvloop.run) close open
        # async generators before closing the loop: this one closes the bus then.
        self._finalizer = self._close_at_loop_shutdown()
        await anext(self._finalizer)
        return self

    async def _close_at_loop_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self._finalizer = None  # close() must not close this generator again
            await self.close()

    async def __aenter__(self) -> Bus:
        if self._sock is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the bus. Idempotent; the same guarantees as ``zmqbus.Bus.close``:
        what was published before is flushed, bounded by ``close_timeout``."""
        if self._closed:
            return
        loop = self._loop
        if self._sock is None or loop is None or loop.is_closed():
            # Never connected, or its loop is gone: nothing can be sent any more.
            self._finalizer = None
            self._teardown()
            return
        self._on_own_loop()
        self._closed = True
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            await finalizer.aclose()
        subs = self._forget()
        for sub in subs:
            if sub.handler is not None:
                sub._stop()
        timeout = self._close_timeout
        fut = self._issue(self._core.close, BusClosed("bus is closed"), timeout=timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(fut), timeout + GRACE)
        tasks = [s._task for s in subs if s._task is not None and not s._task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        self._teardown()

    def _watch_handshakes(self, sock: zmq.Socket[bytes]) -> None:
        self._unwatch()
        watch = self._watch = HandshakeWatch(self._ctx, sock, curve=self._curve is not None)
        if self._loop is not None:
            self._loop.add_reader(watch.fd, self._on_handshakes)

    def _unwatch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(watch.fd)
            watch.close()

    def _on_handshakes(self) -> None:
        # Edge-triggered, like the socket's own descriptor: read every event.
        watch = self._watch
        if watch is None:
            return
        for failure in watch.failures():
            self._core.handshake_failed(*failure)
        if self._core.revoked is not None:
            self._fail(AuthenticationError(self._endpoint, self._core.revoked.reason))
            return
        self._pump()

    def _attach(self, sock: zmq.Socket[bytes]) -> None:
        assert self._loop is not None
        self._sock = sock
        self._loop.add_reader(_fd(sock), self._on_events)

    def _swap(self) -> None:
        # A fresh socket per attempt: nothing of the lost session lingers in its queues.
        old = self._sock
        if old is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(_fd(old))
            old.close(0)
        self._out.clear()
        self._attach(self._dealer())
        self._core.rejoin(time.monotonic())

    def _report(self) -> None:
        # Called after receive() and expire(), the only core calls that make events.
        for event in self._core.take_events():
            callback = self._callbacks.get(event)
            if callback is None or self._loop is None:
                continue
            try:
                result = callback()
                if inspect.isawaitable(result):
                    self._loop.create_task(_quietly(result))
            except Exception:
                log.exception("%s callback failed", event)

    def _teardown(self) -> None:
        self._room.set()  # publishers waiting for room see the bus closed
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(_fd(sock))
            sock.close(0)
        self._unwatch()
        self._closed = True

    def _check(self) -> None:
        # BusBase's check, inlined: this runs on every publish.
        if self._closed:
            raise self._closed_error()
        if self._sock is None:
            raise RuntimeError("bus is not connected: use 'async with' or await connect()")
        self._on_own_loop()

    def _on_own_loop(self) -> None:
        """Raise ``WrongEventLoop`` unless called on the loop the bus connected on:
        elsewhere its futures, events and socket are not this caller's to use."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is self._loop:
            return
        here = threading.current_thread()
        caller = f"thread {here.name!r} (ident {here.ident}) " + (
            "with no running event loop" if loop is None else f"on event loop {loop!r}"
        )
        raise WrongEventLoop(self._loop, self._loop_thread, self._loop_thread_name, caller)

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is None or self._closed:
            return
        # Only reachable once the loop no longer holds the bus (it was closed without
        # asyncio.run's shutdown), so nothing can flush it now: say so, as asyncio's
        # own transports do.
        warnings.warn(
            f"unclosed {self!r}: what it had not sent is lost; "
            "use 'async with' or 'await bus.close()'",
            ResourceWarning,
            stacklevel=1,  # raised by the collector: no caller's line to point at
            source=self,
        )
        with contextlib.suppress(Exception):
            self._teardown()

    # --- publish / request --------------------------------------------------

    async def publish(
        self, topic: str, payload: Payload, headers: Headers = None,
        *, timeout: float = 5.0, confirm: bool = True, msg_id: Any = None,
    ) -> PublishResult:  # fmt: skip
        """Publish ``payload`` on ``topic``; same semantics as ``zmqbus.Bus.publish``."""
        topic_b, body, timeout = self._prepare_message(
            topic, payload, headers, timeout, confirm, msg_id
        )
        if confirm:
            # The core's deadline settles the future (PublishTimeout). A cancelled
            # caller cancels only its own future, which the core then skips.
            return await self._publish_confirmed(topic_b, body, timeout)
        # Backpressure: wait while the socket refuses a full backlog (broker not
        # reading). The sum of both queues bounds the backlog, cheaply checked first.
        if len(self._out) + self._core.queued >= self._hwm:
            while self._backlog() >= self._hwm and not self._closed:
                self._room.clear()
                self._pump_soon()
                await self._room.wait()
            self._check()
        self._core.send_unconfirmed([p.H_PUBLISH, self._core.channel, b"", topic_b, body])
        self._send_soon()
        return _UNCONFIRMED

    def publish_nowait(
        self, topic: str, payload: Payload, headers: Headers = None, *, timeout: float = 5.0
    ) -> asyncio.Future[PublishResult]:
        """Publish with confirmation without waiting for it: return a future of
        the ``PublishResult`` (or ``HandlerError``, ``PublishTimeout``), settled
        within ``timeout``. Keeping several outstanding pipelines confirmed
        publishing; bound how many yourself. Call it on the bus's event loop."""
        topic_b, body, timeout = self._prepare_message(topic, payload, headers, timeout, False)
        return self._publish_confirmed(topic_b, body, timeout)

    def _publish_confirmed(
        self, topic: bytes, body: bytes, timeout: float
    ) -> asyncio.Future[PublishResult]:
        fut: asyncio.Future[PublishResult] = self._future()
        self._core.publish(topic, body, fut, time.monotonic() + timeout, timeout)
        # Sent on the loop's next turn, not at once like a lone unconfirmed one:
        # a window of confirmed publishes then goes out as one BATCH (window 16:
        # ~11k msgs/s against ~9.5k when the first of each turn leaves alone).
        self._pump_soon()
        return fut

    async def request(
        self, topic: str, payload: Payload, headers: Headers = None, *, timeout: float = 5.0
    ) -> Message:
        """Send a request and return the first reply; same semantics as ``zmqbus.Bus.request``."""
        topic_b, body, timeout = self._prepare_message(topic, payload, headers, timeout, False)
        fut: asyncio.Future[Message] = self._issue(
            self._core.request, topic_b, body, timeout=timeout
        )
        return await _wait(fut, timeout, "request")

    def _send_frames(self, frames: list[bytes]) -> None:
        if self._closed:
            raise BusClosed("bus is closed")
        if threading.get_ident() == self._loop_thread:
            self._reply(frames)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._reply, frames)

    # --- streams (see zmqbus.Bus for what each does) -----------------------------

    async def add_stream(
        self, name: str, subjects: list[str], *, timeout: float = 5.0, **config: Any
    ) -> StreamInfo:
        """Make a durable stream on this bus's channel; see ``zmqbus.Bus.add_stream``."""
        args = {"config": stream_config(name, subjects, **config)}
        return StreamInfo.from_reply((await self._stream("add", args, timeout))["stream"])

    async def stream_info(self, name: str, *, timeout: float = 5.0) -> StreamInfo:
        """The stream ``name``; ``StreamNotFound`` if the channel has none."""
        reply = await self._stream("info", self._stream_args("info", name), timeout)
        return StreamInfo.from_reply(reply["stream"])

    async def streams(self, *, timeout: float = 5.0) -> list[StreamInfo]:
        """Every stream of this bus's channel."""
        reply = await self._stream("list", {}, timeout)
        return [StreamInfo.from_reply(s) for s in reply["streams"]]

    async def delete_stream(self, name: str, *, timeout: float = 5.0) -> None:
        """Delete the stream, its messages and its consumers."""
        await self._stream("delete", self._stream_args("delete", name), timeout)

    async def purge_stream(self, name: str, *, timeout: float = 5.0) -> int:
        """Remove every message of the stream; how many went."""
        reply = await self._stream("purge", self._stream_args("purge", name), timeout)
        return int(reply["purged"])

    async def get_message(self, name: str, seq: int, *, timeout: float = 5.0) -> Message:
        """The message stored at ``seq``; ``StreamNotFound`` if there is none."""
        reply = await self._stream("get", self._stream_args("get", name, seq=seq), timeout)
        return self._stored_message(name, reply)

    async def add_consumer(
        self, stream: str, durable: str, *, timeout: float = 5.0, **config: Any
    ) -> ConsumerInfo:
        """Make a durable consumer without binding it (``consume`` binds it)."""
        body = consume_body(stream, durable=durable, **config)
        args = {"name": body["stream"], "config": body}
        reply = await self._stream("consumer_add", args, timeout)
        return ConsumerInfo.from_reply(reply["consumer"])

    async def consumer_info(
        self, stream: str, durable: str, *, timeout: float = 5.0
    ) -> ConsumerInfo:
        """The durable consumer; ``ConsumerNotFound`` if there is none."""
        args = self._stream_args("consumer_info", stream, consumer=durable)
        return ConsumerInfo.from_reply(
            (await self._stream("consumer_info", args, timeout))["consumer"]
        )

    async def consumers(self, stream: str, *, timeout: float = 5.0) -> list[ConsumerInfo]:
        """Every consumer of the stream."""
        args = self._stream_args("consumer_list", stream)
        reply = await self._stream("consumer_list", args, timeout)
        return [ConsumerInfo.from_reply(c) for c in reply["consumers"]]

    async def delete_consumer(self, stream: str, durable: str, *, timeout: float = 5.0) -> None:
        """Delete the durable consumer and its position."""
        args = self._stream_args("consumer_delete", stream, consumer=durable)
        await self._stream("consumer_delete", args, timeout)

    async def consume(
        self, stream: str, handler: AsyncHandler | None = None, maxsize: int = 1000,
        *, timeout: float = 5.0, **config: Any,
    ) -> Consumer:  # fmt: skip
        """Bind a consumer of ``stream``; see ``zmqbus.Bus.consume``. A handler
        may be a coroutine function or a plain callable."""
        body, size, seconds = self._prepare_consume(stream, handler, maxsize, timeout, config)
        sub = Consumer(self, stream, size, handler)
        with self._subscribing(sub, seconds):
            waiter = self._issue(self._core.consume, sub, stream, body, timeout=seconds)
            sub.info = ConsumerInfo.from_reply(await _wait(waiter, seconds, "consume"))
        return sub

    async def _stream(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        seconds = self._stream_op(timeout)
        waiter = self._issue(self._core.stream_request, op, args, timeout=seconds)
        return cast("dict[str, Any]", await _wait(waiter, seconds, op.replace("_", " ")))

    def _send_reply(self, token: bytes, body: bytes) -> None:
        self._send_frames(self._reply_frames(token, body))

    def _reply(self, frames: list[bytes]) -> None:
        if not self._closed:
            self._core.send_unconfirmed(frames)
            self._pump()

    # --- subscribe ----------------------------------------------------------

    async def subscribe(
        self, pattern: str, handler: AsyncHandler | None = None, maxsize: int = 100,
        *, queue: str | None = None, timeout: float = 5.0,
    ) -> Subscription:  # fmt: skip
        """Subscribe to ``pattern``; returns once the broker holds it. A handler
        may be a coroutine function or a plain callable (run on the loop: keep
        it short). Same semantics as ``zmqbus.Bus.subscribe``."""
        size, group, timeout = self._prepare_subscribe(pattern, handler, maxsize, queue, timeout)
        sub = Subscription(self, pattern, size, handler, group)
        with self._subscribing(sub, timeout):
            waiter = self._issue(self._core.subscribe, sub, timeout=timeout, queue=group)
            await _wait(waiter, timeout, "subscribe")
        return sub

    async def unsubscribe(self, pattern: str, *, timeout: float = 5.0) -> int:
        """End every subscription of this bus to exactly ``pattern``; returns how
        many ended, once the broker has confirmed."""
        timeout = self._prepare_unsubscribe(pattern, timeout)
        waiter = self._issue(self._core.unsubscribe, pattern, timeout=timeout)
        count: int = await _wait(waiter, timeout, "unsubscribe")
        self._forget(pattern)
        return count

    async def _remove(self, sub: Subscription, timeout: float) -> None:
        seconds = self._prepare_remove(timeout)
        if seconds is None:
            return
        waiter = self._issue(self._core.remove, sub, timeout=seconds)
        with contextlib.suppress(BusClosed):  # closing ended it anyway
            await _wait(waiter, seconds, "unsubscribe")
            self._forget(sub=sub)

    def _handler_done(self, ack_id: int, error: str | None) -> None:
        if self._closed:
            return  # the core already confirmed this delivery when it closed
        self._core.handler_done(ack_id, error)
        self._pump()

    # --- the socket: this face's driver of the core (see _client) -------------

    def _backlog(self) -> int:
        # Frames not yet taken by the socket. Frames the core holds while
        # reconnecting do not count: it caps those itself (dropping the newest).
        core = self._core
        return len(self._out) + (0 if core.holding else core.queued)

    def _send_soon(self) -> None:
        # The first publish of a loop turn leaves at once (a lone message waits for
        # nothing); the ones after it join one send on the next turn, batched, as
        # nats.py's flusher does.
        if self._pump_due:
            return
        self._pump()
        self._pump_soon()

    def _pump_soon(self) -> None:
        if not self._pump_due and self._loop is not None:
            self._pump_due = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Send what the core queued, then look for arrivals and re-arm the timer."""
        self._pump_due = False
        if self._sock is None:
            return
        try:
            self._send_out()
        except Exception as exc:
            self._fail(exc)

    def _send_out(self) -> None:
        core = self._core
        if core.want_socket:
            self._swap()
        sock = self._sock
        assert sock is not None
        out = self._out
        outgoing = core.take_outgoing()
        if outgoing:
            out.extend(outgoing)
        if out:
            # What the socket refuses now waits for its descriptor to say writable.
            send_queue(sock, out, core.join_front)
            # The descriptor is edge-triggered and a send may consume its signal:
            # whatever EVENTS now reports must be acted on here, or it is never seen.
            # With nothing sent the socket was not touched, so its signal still stands.
            events = _events(sock)
            if self._loop is not None:
                if events & _POLLIN:
                    self._loop.call_soon(self._on_events)
                if out and events & _POLLOUT:
                    self._pump_soon()
        if len(out) < self._hwm:
            self._room.set()  # also when a new session emptied the queue
        if self._paused and not self._full() and self._loop is not None:
            self._paused = False
            self._loop.call_soon(self._on_events)
        self._arm_timer()

    def _full(self) -> bool:
        # Messages waiting unsent, the core's included: the read side's bound.
        return len(self._out) + len(self._core.outbox) >= self._hwm

    def _read(self, sock: zmq.Socket[bytes]) -> bool:
        # Drain, unless hwm messages wait unsent (then _send_out resumes it);
        # True if more may wait and reading may go on.
        if self._full():
            self._paused = True
            return False
        if drain(sock, _COUNTS, self._core.receive, full=self._full):
            if not self._full():
                return True
            self._paused = True
        return False

    def _fail(self, exc: BaseException) -> None:
        # Driving the core failed: close the bus with the error as the cause.
        if not isinstance(exc, AuthenticationError):  # the core logged the refusal
            log.exception("bus I/O failed; the bus is closed", exc_info=exc)
        self._failed(exc)
        error = self._closed_error()
        try:
            self._core.close(error)
        except Exception:
            log.exception("closing the bus's core failed")
        self._teardown()

    def _on_events(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            if self._read(sock) and self._loop is not None:
                # Budget used up: yield to other tasks, then go on draining.
                self._loop.call_soon(self._on_events)
            self._report()
        except Exception as exc:
            self._fail(exc)
            return
        self._pump()

    def _arm_timer(self) -> None:
        deadline = self._core.next_deadline()
        # A timer due no later stays: the liveness deadline moves with every message
        # received, and re-arming on each costs a lone message more than an early
        # wake-up (expire() handles only what is due, then the timer is re-armed).
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if self._loop is not None:
            # Capped: a deadline an absurd timeout away is looked at again later.
            delay = min(max(0.0, deadline - time.monotonic()), _MAX_DELAY)
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        # Read what waits first: a heartbeat still unread is no silence of the broker's.
        sock = self._sock
        if sock is None:
            return
        try:
            if self._read(sock) and self._loop:
                self._loop.call_soon(self._on_events)
            self._core.expire(time.monotonic())
            self._report()
        except Exception as exc:
            self._fail(exc)
            return
        self._pump()
