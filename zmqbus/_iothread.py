"""The I/O thread of the threaded face: sole owner of a bus's DEALER socket.

Other threads never touch the socket. They ``submit()`` either ready frames
(fire-and-forget publishes) or a callable that runs a ``ClientCore`` command
on this thread. The thread blocks in ``zmq.Poller.poll`` on the DEALER and an
inproc wake-up socket, with a timeout only when the core has a deadline, so
an idle bus costs nothing. A submitter rings the wake-up socket only when the
thread is about to sleep, so a burst of submits costs one signal.

Submitting takes no lock while there is room and the thread runs: the queue
is a deque (atomic append and popleft), and the thread arms itself before it
looks at the queue a last time, so an item is either seen or rung for. The
lock serialises ringing, waiting for room, and the last drain at stop.

Bounds: senders of frames wait while ``hwm`` messages are unsent, and the
thread reads from the broker only while fewer than ``hwm`` wait (ACKs and
other commands the core makes included): a socket that cannot send makes the
broker's queue to this bus fill instead (the broker drops for it and says so),
never this process's memory.

If the loop itself fails (a bug, or the socket library refusing), the thread
closes the core with ``BusClosed`` caused by that error, says so through
``on_failure``, refuses every later submit the same way, and ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq

from . import protocol as p
from ._client import ClientCore
from ._handshake import HandshakeWatch
from ._wire import DealerOwner, drain, send_queue
from ._wire import get_option as _get
from .errors import AuthenticationError, BusClosed

__all__ = ["IOThread"]

log = logging.getLogger("zmqbus.client")

# Plain ints: zmq's flags are enums, and every use of one costs an enum operation.
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
# While submits keep the thread from ever blocking in poll, it still reads the
# socket at least this often (seconds): heartbeats and replies must not wait for
# a lull in sending, or a busy publisher would take a live broker for dead.
_READ_EVERY = 0.001
# Submitted items taken per pass of the loop.
_TAKE = 4096
# The longest poll (ms): deadlines further off (a huge timeout) are polled for
# again, never handed to zmq.poll, which overflows past a C long.
_MAX_WAIT_MS = 3_600_000
_COUNTS = p.BROKER_FRAME_COUNTS

Item = Callable[[], object] | list[bytes]


class IOThread(DealerOwner):
    """Runs ``core`` against a DEALER connected to ``endpoint``."""

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        core: ClientCore,
        *,
        hwm: int = 100_000,
        name: str = "zmqbus-io",
        on_event: Callable[[str], None] | None = None,
        after_receive: Callable[[], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        curve: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self._core = core
        self._curve = curve
        self._watch: HandshakeWatch | None = None
        self._on_failure = on_failure
        # The error that ended the loop, if one did.
        self.failure: BaseException | None = None
        self._after_receive = after_receive
        self._ctx = context
        self._endpoint = endpoint
        self._hwm = hwm
        self._on_event = on_event
        self._poller = zmq.Poller()
        self._sock = self._dealer()
        wake = f"inproc://zmqbus-wake-{id(self):x}-{time.monotonic_ns():x}"
        self._wake_rx: zmq.Socket[bytes] = context.socket(zmq.PAIR)
        self._wake_rx.setsockopt(zmq.LINGER, 0)
        self._wake_rx.bind(wake)
        self._wake_tx: zmq.Socket[bytes] = context.socket(zmq.PAIR)
        self._wake_tx.setsockopt(zmq.LINGER, 0)
        self._wake_tx.connect(wake)
        self._lock = threading.Lock()
        # Backpressure: a sender of frames waits while this many are queued
        # (submitted, or refused by a full socket); signalled as the backlog drains.
        self._limit = hwm
        self._backlog = 0  # frames the I/O thread holds unsent, as of its last send
        self._room = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._armed = False  # the thread is (about to be) blocked in poll
        self._stopping = False
        self._drained = False  # the thread took the queue for the last time
        self._stopped = False
        self._out: deque[list[bytes]] = deque()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _watch_handshakes(self, sock: zmq.Socket[bytes]) -> None:
        old = self._watch
        if old is not None:
            with contextlib.suppress(KeyError):
                self._poller.unregister(old.socket)
            old.close()
        watch = self._watch = HandshakeWatch(self._ctx, sock, curve=self._curve is not None)
        self._poller.register(watch.socket, zmq.POLLIN)

    def _handshakes(self) -> None:
        assert self._watch is not None
        for failure in self._watch.failures():
            self._core.handshake_failed(*failure)
        if self._core.revoked is not None:
            self._fail(AuthenticationError(self._endpoint, self._core.revoked.reason))

    def _swap(self) -> None:
        # A fresh socket per attempt: nothing of the lost session lingers in its queues.
        old = self._sock
        with contextlib.suppress(KeyError):  # not polled while reading was paused
            self._poller.unregister(old)
        old.close(0)
        self._out.clear()
        self._sock = self._dealer()
        self._poller.register(self._sock, zmq.POLLIN)
        self._core.rejoin(time.monotonic())

    def _report(self) -> None:
        events = self._core.take_events()
        if events and self._on_event is not None:
            for event in events:
                self._call(lambda e=event: self._on_event(e))  # type: ignore[misc]

    @property
    def thread(self) -> threading.Thread:
        """The I/O thread."""
        return self._thread

    def submit(self, item: Item) -> None:
        """Queue frames to send or a callable to run on the I/O thread.

        Raises ``BusClosed`` once the thread is stopping.
        """
        queue = self._queue
        if not self._stopping and (
            type(item) is not list or len(queue) + self._backlog < self._limit
        ):
            # The common case, without the lock: contended by the thread's loop, it
            # cost the publishing thread ~10% of an unconfirmed publish.
            queue.append(item)
            if self._stopping:
                self._withdraw(item)
            elif self._armed:
                self._ring()
            return
        with self._lock:
            if type(item) is list:
                while len(self._queue) + self._backlog >= self._limit and not self._stopping:
                    self._room.wait(1.0)
            if self._stopping:
                raise self._closed_error()
            self._queue.append(item)
            if self._armed:
                self._armed = False
                self._wake_tx.send(b"", _NOBLOCK)

    def _ring(self) -> None:
        with self._lock:
            if self._armed:
                self._armed = False
                self._wake_tx.send(b"", _NOBLOCK)

    def _withdraw(self, item: Item) -> None:
        # Appended while stop() began: the thread's last drain takes it, unless
        # that drain already ran; then take it back and refuse it.
        with self._lock:
            if not self._drained:
                return
            queue = self._queue
            for i, queued in enumerate(queue):
                if queued is item:
                    del queue[i]
                    raise self._closed_error()

    def _closed_error(self) -> BusClosed:
        return BusClosed.after(self.failure)

    def stop(self, timeout: float = 2.0) -> None:
        """Send what can still be sent, close the sockets and join the thread."""
        with self._lock:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
                self._room.notify_all()
                if self._armed:
                    self._armed = False
                    self._wake_tx.send(b"", _NOBLOCK)
        # Joined also when the loop stopped itself (it failed): it may still be
        # closing its sockets.
        if (not already or self.failure is not None) and (
            threading.current_thread() is not self._thread
        ):
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("bus I/O thread did not stop within %gs", timeout)
        with self._lock:
            if not self._stopped and not self._thread.is_alive():
                self._wake_tx.close(0)
                self._stopped = True

    # --- the loop -----------------------------------------------------------

    def _run(self) -> None:
        core = self._core
        wake = self._wake_rx
        poller = self._poller
        poller.register(self._sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        polling = int(zmq.POLLIN)
        out = self._out
        lock = self._lock
        read_by = 0.0
        try:
            while True:
                queue = self._queue
                # A bounded share per pass, so that reading gets its turn (below).
                items = [queue.popleft() for _ in range(min(len(queue), _TAKE))]
                with lock:
                    if items and len(items) + self._backlog >= self._limit:
                        self._room.notify_all()
                    stopping = self._stopping
                self._take(items)
                if core.want_socket:
                    self._swap()
                    polling = _POLLIN
                self._report()
                self._drain_core()
                self._send()
                if stopping:
                    break
                now = time.monotonic()
                deadline = core.next_deadline()
                if deadline is not None and deadline <= now:
                    # Read what waits first: a heartbeat that arrived during a long
                    # pass of sending is no silence of the broker's.
                    if not self._full() and cast(int, _get(self._sock, _EVENTS)) & _POLLIN:
                        self._recv()
                    core.expire(time.monotonic())
                    continue
                sock = self._sock
                with lock:
                    # Armed first, then the last look: a submit that appends after
                    # this look sees the thread armed and rings.
                    self._armed = True
                    busy = bool(self._queue) or self._stopping
                    if busy:
                        self._armed = False
                if busy:
                    if now >= read_by:
                        read_by = now + _READ_EVERY
                        if cast(int, _get(sock, _EVENTS)) & _POLLIN:
                            self._recv()
                    continue
                read_by = 0.0
                # Backpressure: while hwm messages wait unsent, read nothing more
                # (each read may make ACKs) until the socket takes some.
                want = (_POLLOUT if out else 0) | (0 if self._full() else _POLLIN)
                if want != polling:
                    poller.modify(sock, want)
                    polling = want
                if deadline is None:
                    wait = None
                else:
                    # Round up: waking a hair early would just loop back into poll.
                    ms = (deadline - now) * 1000.0
                    wait = _MAX_WAIT_MS if ms >= _MAX_WAIT_MS else max(0, int(ms) + 1)
                events = dict(poller.poll(wait))
                with lock:
                    self._armed = False
                if wake in events:
                    # One ring per arming, so one read; a late second ring just
                    # wakes the next poll. (A read that fails costs ~8 us in zmq.Again.)
                    with contextlib.suppress(zmq.Again):
                        wake.recv(_NOBLOCK)
                if events.get(sock, 0) & _POLLIN:
                    self._recv()
                if self._watch is not None and self._watch.socket in events:
                    self._handshakes()
        except Exception as exc:
            log.exception("bus I/O loop failed; the bus is closed")
            self._fail(exc)
        finally:
            with lock:
                self._drained = True
                items = list(self._queue)
                self._queue.clear()
            try:
                self._take(items)
                if self.failure is None:
                    self._drain_core()
                    self._send()
            except Exception as exc:
                log.exception("bus I/O loop failed while stopping")
                self._fail(exc)
            finally:
                self._sock.close(0)
                if self._watch is not None:
                    self._watch.close()
                wake.close(0)

    def _fail(self, exc: BaseException) -> None:
        # Every later submit raises BusClosed from exc; every waiter gets it now.
        with self._lock:
            if self.failure is None:
                self.failure = exc
            self._stopping = True
            self._room.notify_all()
        error = self._closed_error()
        if self._on_failure is not None:
            self._call(lambda: self._on_failure(exc))  # type: ignore[misc]
        self._call(lambda: self._core.close(error))

    def _take(self, items: list[Item]) -> None:
        core = self._core
        for item in items:
            if type(item) is list:
                # Through the core, so frames wait while it is reconnecting.
                core.send_unconfirmed(item)
            else:
                self._call(item)  # type: ignore[arg-type]

    def _call(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            # A command's own errors reach its waiter; anything here is a bug, not fatal.
            log.exception("error running a bus command")

    def _drain_core(self) -> None:
        outgoing = self._core.take_outgoing()
        if outgoing:
            self._out.extend(outgoing)

    def _send(self) -> None:
        out = self._out
        send_queue(self._sock, out, self._core.join_front)
        backlog = len(out)
        if backlog != self._backlog:
            with self._lock:
                self._backlog = backlog
                if backlog < self._limit:
                    self._room.notify_all()

    def _full(self) -> bool:
        # Messages waiting unsent, the core's included: the read side's bound.
        return len(self._out) + len(self._core.outbox) >= self._limit

    def _recv(self) -> None:
        # Called once a message waits. What drain() leaves unread, a poll reports again.
        try:
            drain(self._sock, _COUNTS, self._core.receive, waiting=True, full=self._full)
        finally:
            if self._after_receive is not None:
                self._after_receive()
        self._drain_core()
        self._send()
