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
from ._wire import dealer, drain, send_queue
from ._wire import get_option as _get
from .errors import BusClosed

__all__ = ["IOThread"]

log = logging.getLogger("zmqbus.client")

# Plain ints: zmq's flags are enums, and every use of one costs an enum operation.
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
# While submits keep the thread from ever blocking in poll, it still reads the
# socket at least this often (seconds): heartbeats and replies must not wait for
# a lull in sending, or a busy publisher would take a live broker for dead.
_READ_EVERY = 0.001
# Submitted items taken per pass of the loop.
_TAKE = 4096
_COUNTS = p.BROKER_FRAME_COUNTS

Item = Callable[[], object] | list[bytes]


class IOThread:
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
    ) -> None:
        self._core = core
        self._after_receive = after_receive
        self._ctx = context
        self._endpoint = endpoint
        self._hwm = hwm
        self._on_event = on_event
        self._sock = self._dealer()
        self._poller = zmq.Poller()
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

    def _dealer(self) -> zmq.Socket[bytes]:
        return dealer(self._ctx, self._endpoint, self._hwm)

    def _swap(self) -> None:
        # A fresh socket per attempt: nothing of the lost session lingers in its queues.
        old = self._sock
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
                raise BusClosed("bus is closed")
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
                    raise BusClosed("bus is closed")

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
        if not already and threading.current_thread() is not self._thread:
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
        polling_out = False
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
                    polling_out = False
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
                    if cast(int, _get(self._sock, _EVENTS)) & _POLLIN:
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
                want_out = bool(out)
                if want_out != polling_out:
                    poller.modify(sock, zmq.POLLIN | zmq.POLLOUT if want_out else zmq.POLLIN)
                    polling_out = want_out
                # Round up: waking a hair early would just loop back into poll.
                wait = None if deadline is None else max(0, int((deadline - now) * 1000.0) + 1)
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
        except Exception:
            log.exception("bus I/O loop failed")
            self._call(lambda: core.close())
        finally:
            with lock:
                self._drained = True
                items = list(self._queue)
                self._queue.clear()
            self._take(items)
            self._drain_core()
            self._send()
            self._sock.close(0)
            wake.close(0)

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

    def _recv(self) -> None:
        # Called once a message waits. What drain() leaves unread, a poll reports again.
        try:
            drain(self._sock, _COUNTS, self._core.receive, waiting=True)
        finally:
            if self._after_receive is not None:
                self._after_receive()
        self._drain_core()
        self._send()
