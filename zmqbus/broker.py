"""The broker: one ROUTER socket and a receive loop that drives ``BrokerState``."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import zmq

from . import protocol as p
from ._edge import (
    ACCEPTED,
    ZAP_DOMAIN,
    Edge,
    Registry,
    decode_event,
    shut_down,
    still_open,
)
from ._endpoints import bind_endpoint
from ._routing import BrokerState
from ._streams import Streams
from ._version import __version__
from ._wire import get_option as _get
from ._wire import recv_routed, send_routed
from .keys import load_keypair
from .limits import FD_RESERVE, Limits, queue_messages, raise_fd_limit
from .store import open_store
from .users import User

if TYPE_CHECKING:
    from .metrics import MetricsServer

__all__ = ["DEFAULT_BIND", "Broker"]

log = logging.getLogger("zmqbus.broker")

DEFAULT_BIND = "tcp://127.0.0.1:9090"

_BYE_LINGER_MS = 200
# What set_users sends the loop on its control socket to wake it (any other
# message there stops it).
_WAKE = b"wake"
# Messages libzmq queues from one peer before the broker reads them.
INBOUND_HWM = 1000
# The listen queue (libzmq's default is 100; the kernel caps it at
# net.core.somaxconn): a burst of connects past it has SYNs dropped, and each
# such client waits out TCP's retransmit (1 s, then 3, 7, 15).
LISTEN_BACKLOG = 4096
# Messages handled, and replies made, per pass before the replies go out.
_DRAIN = 256
_DRAIN_OUT = 128
# ... and for at most this long (seconds): a pass of big batches must not hold
# back heartbeats and liveness (ticks happen between passes), and a peer whose
# messages are dear (a SUBSCRIBE flood) must not hold back others' replies long
# (5 ms: the honest pair's p50 under such floods was 12-20 ms; 2 ms: 8-15 ms).
_DRAIN_SECONDS = 0.002
# glibc keeps freed heap memory for reuse (departed peers' ~40 KB each, what
# libzmq held of a big message); malloc_trim gives it back to the system:
# TRIM_EVERY seconds after traffic, so at most that often, and never when idle.
TRIM_EVERY = 1.0
# libzmq reports a connection's end just before it closes the descriptor: a
# reported end whose descriptor still goes, open, to the same address is looked
# at again this much later (seconds). Still open then, the report was another
# connection's, on a descriptor the kernel handed on.
RECHECK_CLOSE = 0.2


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: the allocator keeps its own policy
    return trim


def _seed_routing_ids() -> None:
    # libzmq numbers a ROUTER's anonymous peers from libc's rand(), which it
    # never seeds: the first is always 00 6b8b4567. A peer that claims the
    # next numbers as its own routing id makes libzmq abort when an anonymous
    # peer is given one of them; seeded, they cannot be predicted.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").srand(int.from_bytes(os.urandom(4), "big") >> 1)


# Commands whose last frame is a body the broker only measures and passes on:
# a big one is forwarded without a copy.
_FORWARDED = frozenset((p.H_PUBLISH, p.H_REQUEST, p.H_REPLY, p.H_ACK))
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _reachable(address: str) -> bool:
    # A tcp:// endpoint bound beyond the loopback interface.
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


class Broker:
    """A zmqbus broker on a background thread.

    ``bind`` is a zmq endpoint (``tcp://host:port`` with port 0 for a free
    port, ``ipc://path``, ``inproc://name``), a bare port (``"9090"`` binds
    ``tcp://127.0.0.1:9090``) or ``host:port``. For ``inproc://`` pass the
    buses' ``zmq.Context`` as ``context``; otherwise the broker uses a context
    of its own, terminated by ``stop()`` so the port is free once it returns.
    ``stop()`` first sends BYE to every connected bus. Messages whose body
    exceeds ``max_message_size`` bytes are refused with a TOO_LARGE error;
    the transport drops a connection that sends a frame over 64 KiB beyond it.
    ``limits`` bounds what peers may make the broker hold and do (see
    ``Limits``); ``start()`` raises the process's file descriptor limit where
    allowed and keeps ``max_peers`` under it. ``metrics="host:port"`` serves
    Prometheus metrics at ``http://host:port/metrics`` while the broker runs
    (needs ``zmqbus[metrics]``; see docs/metrics.md); ``metrics_per_channel``
    adds gauges per channel.
    """

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        *,
        context: zmq.Context[Any] | None = None,
        max_message_size: int = 1 << 20,
        hwm: int = 100_000,
        limits: Limits | None = None,
        secret_key: bytes | str | os.PathLike[str] | None = None,
        users: Iterable[User] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        sync: Literal["normal", "full"] = "normal",
        metrics: str | None = None,
        metrics_per_channel: bool = False,
    ) -> None:
        self._endpoint = bind_endpoint(bind)
        # Made first: without prometheus_client it fails before anything opens.
        self._metrics: MetricsServer | None = None
        if metrics is not None:
            from .metrics import MetricsServer

            self._metrics = MetricsServer(metrics, per_channel=metrics_per_channel)
        elif metrics_per_channel:
            raise ValueError("metrics_per_channel needs metrics='host:port'")
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        # Durable streams: "file" ones in SQLite under data_dir, "memory" ones
        # always. A bad data_dir fails here (StoreError), before any socket.
        self._data_dir = data_dir
        self._sync: Literal["normal", "full"] = sync
        store = open_store(data_dir, sync=sync)
        self._store_closed = False
        # CURVE: (public, secret); the secret never leaves this object or a log.
        self._curve = None if secret_key is None else load_keypair(secret_key, "secret_key")
        if self._curve is not None and users is None:
            raise ValueError(
                "a Broker with a secret_key needs users=[zmqbus.User(name, public_key), ...]: "
                "without them it would admit no one"
            )
        self._registry = Registry(users, secure=self._curve is not None)
        if not isinstance(max_message_size, int) or max_message_size <= 0:
            raise ValueError("max_message_size must be a positive int")
        if limits is None:
            limits = Limits()
        elif not isinstance(limits, Limits):
            raise TypeError(f"limits must be a zmqbus.Limits, not {type(limits).__name__}")
        # Without a given context the broker owns one, so that stop() can terminate
        # it: only then is the port released by the time stop() returns.
        self._given_ctx = context
        self._ctx: zmq.Context[Any] | None = None
        self._max = max_message_size
        self._hwm = hwm
        self._state = BrokerState(
            max_message_size=max_message_size,
            name=f"zmqbus/{__version__}",
            limits=limits,
            users=self._registry.by_name,
            anonymous=self._registry.anonymous,
            store=store,
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._router: zmq.Socket[bytes] | None = None
        # stop() speaks to the loop through the ROUTER itself (see start()).
        self._control: zmq.Socket[bytes] | None = None
        self._edge: Edge | None = None
        self._edge_id = b""
        self._control_id = b""
        # Reported ends to look at again: key -> when (in report order).
        self._doubtful: dict[tuple[int, str], float] = {}
        self._address: str | None = None
        self._stopped = threading.Event()

    # --- lifecycle ----------------------------------------------------------

    @property
    def address(self) -> str:
        """The bound endpoint with its real port, e.g. ``tcp://127.0.0.1:40123``."""
        if self._address is None:
            raise RuntimeError("broker is not started")
        return self._address

    @property
    def endpoint(self) -> str:
        """The endpoint as given to bind (port 0 before ``start()``)."""
        return self._endpoint

    @property
    def metrics_address(self) -> str | None:
        """Where ``/metrics`` is served, ``host:port`` with the real port (the
        last one after ``stop()``); None without ``metrics``. RuntimeError
        before ``start()``."""
        return None if self._metrics is None else self._metrics.address

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Broker:
        """Bind and start the routing thread; returns once the socket is bound.

        Raises ``zmq.ZMQError`` if the address cannot be bound (e.g. in use),
        ``OSError`` if the ``metrics`` address cannot (the broker is then stopped).
        """
        if self._thread is not None:
            raise RuntimeError("broker already started")
        fds = raise_fd_limit()
        limits = self._state.limits
        # Each connection is a descriptor: past the limit libzmq stops accepting
        # connections at all, honest ones included. A tenth is kept for those
        # that arrive faster than the broker closes the unjoined (a flood
        # overshot max_connections by 4% before the closes took effect).
        room = (fds - FD_RESERVE) * 9 // 10
        if fds and limits.max_connections > room:
            conns = max(1, room)
            log.warning(
                "max_connections lowered from %d to %d: the file descriptor limit is %d",
                limits.max_connections,
                conns,
                fds,
            )
            limits = limits.replace(max_connections=conns)
        if limits.max_peers > limits.max_connections:
            log.warning(
                "max_peers lowered from %d to max_connections, %d",
                limits.max_peers,
                limits.max_connections,
            )
            limits = limits.replace(max_peers=limits.max_connections)
        self._state.limits = limits
        self._state.connections.capacity = limits.max_connections
        if self._store_closed:
            # Started again after stop(): the store is opened afresh.
            self._state.streams = Streams(
                open_store(self._data_dir, sync=self._sync), self._state.limits
            )
            self._store_closed = False
        ctx = self._ctx = self._given_ctx if self._given_ctx is not None else zmq.Context()
        _seed_routing_ids()
        # Before the ROUTER: libzmq asks ZAP of every connection from the start.
        edge = self._edge = Edge(ctx, self._registry, self._auth_refused)
        if self._curve is not None and not edge.tags:
            edge.close()
            self._edge = None
            if self._given_ctx is None:
                ctx.term()
            self._ctx = None
            raise RuntimeError(
                "another ZAP handler serves this zmq context: a broker with a secret_key "
                "needs a context of its own (pass none)"
            )
        router = ctx.socket(zmq.ROUTER)
        if edge.tags:
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        if self._curve is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self._curve[1])
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Each queue's bytes stay under max_queued_bytes however big its frames.
        queue = queue_messages(limits, self._max, self._hwm)
        if queue < self._hwm:
            log.info(
                "high-water mark %d messages (max_queued_bytes %d / frames of up to %d bytes)",
                queue,
                limits.max_queued_bytes,
                self._max + 65536,
            )
        router.setsockopt(zmq.SNDHWM, queue)
        # Inbound, libzmq holds up to this many messages per peer before TCP
        # pushes back on it: kept small, as one peer's share of memory is this
        # many times the largest frame (the broker reads fairly, so an honest
        # peer never needs a deep queue here).
        router.setsockopt(zmq.RCVHWM, min(queue, INBOUND_HWM))
        router.setsockopt(zmq.MAXMSGSIZE, self._max + 65536)
        router.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        try:
            router.bind(self._endpoint)
        except zmq.ZMQError:
            router.close(0)
            edge.close()
            self._edge = None
            if self._given_ctx is None:
                ctx.term()
            self._ctx = None
            raise
        self._address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        # The loop blocks in recv() on the ROUTER alone: a poll over it and a second
        # wake-up socket costs a lone message ~25 us per broker pass here. So stop()
        # arrives as a message on the ROUTER, from an inproc DEALER whose routing id
        # is 16 random bytes no remote peer can guess.
        self._control_id = os.urandom(16)
        control_ep = f"inproc://zmqbus-broker-control-{self._control_id.hex()}"
        router.bind(control_ep)
        control = self._control = ctx.socket(zmq.DEALER)
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.ROUTING_ID, self._control_id)
        control.connect(control_ep)
        # Connection events and ZAP come from the edge's thread the same way.
        self._edge_id = os.urandom(16)
        edge.start(router, control_ep, self._edge_id)
        self._router = router
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="zmqbus-broker", daemon=True)
        self._thread.start()
        log.info("broker listening on %s", self._address)
        if self._metrics is not None:
            try:
                self._metrics.start(self._state, self._lock)
            except OSError:
                self.stop()
                raise
        if self._curve is None and _reachable(self._address):
            log.warning(
                "broker on %s takes any peer that can reach it: no authentication "
                "(give it a secret_key and users)",
                self._address,
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop routing, close the sockets and join the thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        if self._metrics is not None:
            self._metrics.stop()
        with self._lock:
            if self._control is not None:
                # NOBLOCK: if the loop already died its ROUTER is closed, and a
                # DEALER with no peer would wait forever to send.
                with contextlib.suppress(zmq.Again):
                    self._control.send(b"stop", zmq.NOBLOCK)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("broker thread did not stop in time")
        if self._control is not None:
            self._control.close(0)
            self._control = None
        if self._edge is not None:
            self._edge.join(timeout)  # it ends with the ROUTER's monitor
            self._edge = None
        if self._given_ctx is None and self._ctx is not None:
            self._ctx.term()  # waits for the BYE linger, then releases the port
        self._ctx = None
        self._thread = None
        streams = self._state.streams
        streams.commit()
        streams.store.close()
        self._store_closed = True
        log.info("broker on %s stopped", self._address)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the broker has stopped; False on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Broker:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- introspection ------------------------------------------------------

    @property
    def public_key(self) -> bytes | None:
        """The broker's CURVE public key (Z85), for buses' ``server_key``;
        None without a ``secret_key``."""
        return None if self._curve is None else self._curve[0]

    @property
    def limits(self) -> Limits:
        """The bounds in force (``max_peers`` as lowered to fit the descriptors)."""
        return self._state.limits

    def set_users(self, users: Iterable[User]) -> int:
        """Replace the broker's users (what a config reload does; SIGHUP in
        ``zmqbus broker --config``). New connections are checked against them
        at once. The peers of a user that is gone, or whose key or rights
        (channels, topics, patterns, admin) changed, are disconnected: a
        removed key cannot connect again, the others rejoin under the new
        rules. Other peers keep their sessions and take their user's new
        limits and rate at once. Returns how many peers were disconnected.
        Raises ``ValueError`` or ``TypeError`` for bad users, changing nothing."""
        new = Registry(users, secure=self._curve is not None)
        with self._lock:
            revoked = self._registry.revoked(new)
            self._registry = new
            if self._edge is not None:
                self._edge.registry = new
            dropped = self._state.set_users(new.by_name, new.anonymous, revoked)
            if dropped and self._control is not None:
                # The loop closes their connections on its next pass: wake it.
                with contextlib.suppress(zmq.Again):
                    self._control.send(_WAKE, zmq.NOBLOCK)
        log.info(
            "users replaced: %d, %d peer(s) of %d changed or removed user(s) disconnected",
            len(new.by_name),
            dropped,
            len(revoked),
        )
        return dropped

    def stats(self) -> dict[str, Any]:
        """A snapshot: peers, channels, subscriptions, message counters, errors by code."""
        with self._lock:
            return self._state.stats()

    # --- the loop -----------------------------------------------------------

    def _run(self) -> None:
        # The loop only moves frames: handle() what arrives, send what
        # take_outgoing() gives, report what the socket refuses, tick() for time.
        router = self._router
        assert router is not None
        control_id = self._control_id
        edge_id = self._edge_id
        state = self._state
        sources = state.sources
        watched = state.watched
        handle = state.handle
        tick = state.tick
        due = state.due
        flush = self._flush
        lock = self._lock
        monotonic = time.monotonic
        doubtful = self._doubtful
        deadline: float | None = None  # the next heartbeat duty, as tick() said
        timeout = -1  # the ROUTER's RCVTIMEO as last set
        trim = _malloc_trim()
        trim_due: float | None = None  # set by traffic, cleared by the trim
        try:
            while True:
                # Block until traffic, a stop, or the next heartbeat duty: never spin.
                wait = -1 if deadline is None else max(0, int((deadline - monotonic()) * 1000) + 1)
                if wait != timeout:
                    router.setsockopt(zmq.RCVTIMEO, wait)
                    timeout = wait
                try:
                    frames = recv_routed(router, _FORWARDED, sources, watched)
                except zmq.Again:
                    frames = None  # the heartbeat duty is due
                with lock:
                    now = monotonic()
                    stopping = False
                    handled = 0
                    while frames is not None:
                        ident = frames[0]
                        if ident == control_id:
                            if frames[1:] != [_WAKE]:
                                stopping = True
                                break
                            waiting = 0  # set_users: the pass closes connections
                        elif ident == edge_id:
                            self._edge_event(frames[1:], now)
                            waiting = 0
                        else:
                            waiting = handle(ident, frames[1:], now)
                        handled += 1
                        # Small messages that already wait are handled before sending:
                        # their replies then share sends (and the wake-ups of libzmq's
                        # I/O thread, ~70 us of CPU each when messages come one at a
                        # time). Once the replies are many, they go: holding a batch's
                        # deliveries back while handling the next slows the pipeline.
                        if (
                            handled == _DRAIN
                            or waiting >= _DRAIN_OUT
                            or monotonic() - now > _DRAIN_SECONDS
                            or not cast(int, _get(router, _EVENTS)) & _POLLIN
                        ):
                            break
                        frames = recv_routed(router, _FORWARDED, sources, watched)
                    # Between passes, so a pass of big batches bounds how late it is.
                    tick(now)
                    if state.closing:
                        self._close_connections(now)
                    flush(router)
                    # After the sends: a refused reply schedules its retry.
                    recheck = self._recheck_closes(now) if doubtful else None
                    deadline = due()
                    if recheck is not None and (deadline is None or recheck < deadline):
                        deadline = recheck
                    if trim is not None:
                        if trim_due is None:
                            if handled:
                                trim_due = now + TRIM_EVERY
                        elif now >= trim_due:
                            trim(0)
                            trim_due = None
                        if trim_due is not None and (deadline is None or trim_due < deadline):
                            deadline = trim_due  # trimmed then, even if all is quiet
                    if stopping:
                        state.bye_all()
                        flush(router)
                        break
        except Exception:
            log.exception("broker loop failed")
        finally:
            # Its MONITOR_STOPPED event ends the edge's thread.
            router.disable_monitor()
            # A short linger lets the BYEs reach connected buses.
            router.close(_BYE_LINGER_MS)
            self._router = None
            self._stopped.set()

    def _auth_refused(self) -> None:
        # From the edge's thread, before its ZAP reply: counted by the time the
        # refused client raises.
        with self._lock:
            self._state.counters["auth_refused"] += 1

    def _edge_event(self, frames: list[bytes], now: float) -> None:
        try:
            kind, fd, address = decode_event(frames)
        except ValueError:
            log.error("malformed event from the broker's edge: %r", frames)
            return
        if kind == ACCEPTED:
            self._state.connection_opened((fd, address), now)
        else:
            key = (fd, address)
            self._doubtful.pop(key, None)
            if still_open(fd, address):
                self._doubtful[key] = now + RECHECK_CLOSE
            else:
                self._state.connection_closed(key, now)

    def _recheck_closes(self, now: float) -> float | None:
        # The reported ends due a second look; returns when the next is due.
        doubtful = self._doubtful
        state = self._state
        while doubtful:
            key, when = next(iter(doubtful.items()))
            if when > now:
                return when
            del doubtful[key]
            if still_open(*key):
                state.counters["stale_closes"] += 1
            else:
                state.connection_closed(key, now)
        return None

    def _close_connections(self, now: float) -> None:
        state = self._state
        closing = state.closing
        state.closing = []
        for fd, address in closing:
            # libzmq has no call to close one connection of a ROUTER: shut the
            # socket down under it, and it sees the connection end.
            if not shut_down(fd, address):
                state.connection_closed((fd, address), now)  # ended already

    def _flush(self, router: zmq.Socket[bytes]) -> None:
        take = self._state.take_outgoing
        failed = self._state.send_failed
        out = take()
        while out:
            refused = False
            for ident, frames in out:
                try:
                    send_routed(router, ident, frames)
                except zmq.Again:
                    # The peer's queue is full: drop for it alone, never block the others.
                    failed(ident, frames, gone=False)
                    refused = True
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EHOSTUNREACH:
                        raise
                    failed(ident, frames, gone=True)
                    refused = True
            # A refused confirmed delivery owes its publisher an ACKED now, not
            # on the next pass (which may be long in coming).
            out = take() if refused else []
