"""The client core: protocol state of one bus, with no sockets and no threads.

Its parts, each in a module of its own: the connection's states and legal
moves (``_connection``), local subscriptions (``_subscriptions``), work
waiting on the broker (``_pending``) and its deadlines (``_deadlines``). This
module holds the commands and the handling of what the broker sends.

The driver protocol: what a face (the threaded ``Bus`` with its I/O thread,
the asyncio ``Bus`` on its loop) does with a core, and all it does. Every call
comes from that one thread or loop.

1. Calls the commands (``connect``, ``subscribe``, ``unsubscribe``, ``remove``,
   ``publish``, ``request``, ``handler_done``, ``close``; ``send_unconfirmed``
   for frames nobody waits on), each completing a ``Waiter`` it passes in.
2. Hands every message from the broker to ``receive(frames)``.
3. Sends, in order, what ``take_outgoing()`` returns, through a queue of its
   own; before each send from that queue it calls ``join_front(queue)``, which
   may join the front of it into one BATCH. To bound its backlog it may count
   ``queued`` (messages ``take_outgoing()`` would return) unless ``holding``
   (no session: the core caps what it holds itself).
4. Calls ``expire(now)`` once ``next_deadline()`` has passed; with no deadline
   (None) it may block until the socket or a user wakes it.
5. Makes every socket refuse frames over ``max_frame`` octets (libzmq's
   ``ZMQ_MAXMSGSIZE``, set before it connects). When ``want_socket`` is set,
   replaces its socket with a fresh one (nothing of the lost session may
   linger in its queues) and calls ``rejoin(now)``.
6. Reports what ``take_events()`` returns ("disconnected", "reconnected") to
   the user's callbacks.

The core calls back only through ``Waiter`` (a future) and ``Sink`` (a local
subscription), both supplied by the face.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from . import message as _message
from . import protocol as p
from ._connection import Conn, Connection
from ._deadlines import Deadlines
from ._fastpath import compiled, twin
from ._pending import (
    PendingCommand,
    PendingPublish,
    PendingRequest,
    Waiter,
    settle,
    timeout_error,
)
from ._subscriptions import Subscriptions
from .errors import (
    AuthenticationError,
    BusClosed,
    ConnectTimeout,
    HandlerError,
    NoResponders,
    ProtocolError,
    remote_error,
    stream_error,
)
from .message import (
    Message,
    PublishResult,
    ReplyContext,
    StreamContext,
    attach_reply,
    attach_stream,
    make_message,
)

# Headers and frame indices as module globals: the fast paths read them for every message.
from .protocol import (
    ACKED_BODY,
    ACKED_REF,
    ANSWER_BODY,
    ANSWER_REF,
    ASK_BODY,
    ASK_SIDS,
    ASK_TOKEN,
    ASK_TOPIC,
    DELIVER_BODY,
    DELIVER_SIDS,
    DELIVER_TOKEN,
    DELIVER_TOPIC,
    ENTRIES_FRAME,
    H_ACKED,
    H_ANSWER,
    H_ASK,
    H_BROKER_BATCH,
    H_DELIVER,
    H_ROUTED,
    MAX_REF_BYTES,
    REF_FRAME,
    ROUTED_COUNT,
    ROUTED_REF,
)

__all__ = ["DELIVERED", "DROPPED", "PENDING", "ClientCore", "Sink", "Waiter"]

log = logging.getLogger("zmqbus.client")

# Results of Sink.offer.
DELIVERED = 0  # taken, nothing more to report
DROPPED = 1  # buffer full
PENDING = 2  # a handler will run; the face calls handler_done(ack_id, error) afterwards


# The broker is dead after this many silent heartbeat intervals (as in 7/MDP).
LIVENESS = 3
# Reconnect backoff: first attempt after about RECONNECT_MIN, doubling up to RECONNECT_MAX,
# each with +-50% jitter so that many buses do not reconnect in lockstep.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
# The stream ops whose 404 means a consumer (or its stream) is unknown.
_CONSUMER_OP = "consumer"
# Frames held while reconnecting before the oldest are dropped (at-most-once anyway).
MAX_HELD_FRAMES = 100_000

# A bus's socket refuses a frame longer than the broker's max_message_size plus
# this (the envelope of a body in a batch, as the reference broker allows its
# peers); libzmq drops the connection of a broker that sends one. Before the
# first WELCOME the bus assumes the reference broker's default limit; a WELCOME
# with a larger one gets a fresh socket and a second HELLO (see _welcome).
FRAME_ALLOWANCE = 64 * 1024
FIRST_MAX_MESSAGE_SIZE = 1 << 20

# Frames worth sending to a new session; the rest (HELLO, SUBSCRIBE, ACK,
# REPLY, HEARTBEAT...) belong to the lost one and are rebuilt or moot.
_KEEP_ON_LOSS = frozenset((p.H_PUBLISH, p.H_REQUEST))

# Commands waiting together in the driver's queue go out as one BATCH of at
# most this many bytes of entries, small enough to add no latency. The broker
# passes a batch of unconfirmed publishes on as one BROKER_BATCH per
# subscriber, a few bytes longer per entry (sids): this leaves that under the
# broker's BROKER_BATCH_BYTES, so it is not split in two.
BATCH_BYTES = 56 * 1024

# Handler error texts are cut to this many characters so that an ACK stays
# far below any sane max_message_size even with many failing handlers.
MAX_ERROR_TEXT = 1024

# The frame counts of the messages receive()'s fast paths take.
_N_DELIVER, _N_ASK = p.BROKER_FRAMES[p.Cmd.DELIVER], p.BROKER_FRAMES[p.Cmd.ASK]
_N_ANSWER, _N_ACKED = p.BROKER_FRAMES[p.Cmd.ANSWER], p.BROKER_FRAMES[p.Cmd.ACKED]
_N_ROUTED = p.BROKER_FRAMES[p.Cmd.ROUTED]
_N_STREAM_MSG = p.BROKER_FRAMES[p.Cmd.STREAM_MSG]
_N_STORED = p.BROKER_FRAMES[p.Cmd.STORED]
STORED_REF, STORED_STREAM, STORED_SEQ, STORED_DUPLICATE = p.LAYOUT[p.Cmd.STORED].at(
    "ref", "stream", "seq", "duplicate"
)
_FLAGS = {b"\x00": False, b"\x01": True}
# The fixed sizes of STREAM_MSG's sid and meta frames: a message with both so
# (the broker's every one) skips parse_broker; the rest get its precise error.
_SID_BYTES = p.LAYOUT[p.Cmd.STREAM_MSG].frames[p.STREAM_MSG_SID].size.min
_META_BYTES = p.LAYOUT[p.Cmd.STREAM_MSG].frames[p.STREAM_MSG_META].size.min
_N_WELCOME = p.BROKER_FRAMES[p.Cmd.WELCOME]
_N_BROKER_BATCH = p.BROKER_FRAMES[p.Cmd.BROKER_BATCH]
_COUNT_BYTES = p.LAYOUT[p.Cmd.ROUTED].frames[ROUTED_COUNT].size.min


class Sink(Protocol):
    """A local subscription as the core sees it."""

    @property
    def pattern(self) -> str: ...

    def offer(self, message: Message, ack_id: int | None) -> int:
        """Take a message without blocking; return DELIVERED, DROPPED or PENDING.
        PENDING is allowed only when ``ack_id`` is not None."""
        ...

    def end(self) -> None:
        """The subscription has ended: no more offers will come."""
        ...

    def missed(self, count: int) -> None:
        """``count`` messages for this subscription were dropped at the broker."""
        ...


class _AckState:
    __slots__ = ("delivered", "dropped", "errors", "remaining", "token")

    def __init__(self, token: bytes, remaining: int, delivered: int, dropped: int) -> None:
        self.token = token
        self.remaining = remaining
        self.delivered = delivered
        self.dropped = dropped
        self.errors: list[str] = []


class ClientCore:
    """Protocol state of one bus on one channel."""

    def __init__(
        self,
        channel: bytes,
        *,
        client_name: str = "zmqbus-py",
        heartbeat: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        batch_commands: bool = True,
    ) -> None:
        p.check_channel(channel)
        self.channel = channel
        self.client_name = client_name
        self.outbox: list[list[bytes]] = []
        self._conn = Connection()
        self.heartbeat = heartbeat  # asked of the broker, seconds; 0: none
        # Asked of the broker in HELLO. The one batching scheme this client offers
        # (BATCH/BROKER_BATCH, spec section "Batches"); it never asks for the
        # older PUBLISH_BATCH/DELIVER_BATCH, which brokers still accept.
        self.batch_commands = batch_commands
        # The broker offered batches (WELCOME): the driver may send BATCH.
        self.batching_commands = False
        self.clock = clock
        # Set when the driver must replace its socket and then call rejoin().
        self.want_socket = False
        # "disconnected" / "reconnected", for the face to report; the face clears it.
        self.events: list[str] = []
        self._beat = 0.0  # agreed interval, from WELCOME
        self._last_heard = 0.0
        self._next_beat = 0.0
        self._backoff = 0.0
        self._rejoin_at: float | None = None
        self._welcome_by: float | None = None
        self._internal: set[bytes] = set()  # refs of our own re-subscribes
        self.max_message_size: int | None = None
        # The longest frame the driver's next socket takes (its ZMQ_MAXMSGSIZE).
        self.max_frame = FIRST_MAX_MESSAGE_SIZE + FRAME_ALLOWANCE
        self.broker_info: dict[str, Any] = {}
        self.counters: Counter[str] = Counter()
        self._hello: tuple[Waiter, float] | None = None
        # Why a handshake failed before connect() was called (None: it did not).
        self._refused: str | None = None
        # Set when the broker's ZAP refused this bus after it had joined (its
        # key was revoked): the driver closes the bus with it.
        self.revoked: AuthenticationError | None = None
        self._pending: dict[bytes, PendingPublish | PendingRequest | PendingCommand] = {}
        # By ref; b"" is the handshake, live while its waiter is.
        self._deadlines = Deadlines(self._pending, lambda: self._hello is not None)
        self._acks: dict[int, _AckState] = {}
        self._subs = Subscriptions()
        self._topic_text: dict[bytes, str] = {}
        # Stream names parse_broker has checked in a STORED: later ones skip it.
        self._stream_names: dict[bytes, str] = {}
        self._seq = 0
        self._ack_seq = 0
        self._closed_exc: BaseException | None = None
        # Set by the face: how a REPLY body for a reply token gets sent, and
        # how a stream message's STREAM_ACK does (both from any thread).
        self.send_reply: Callable[[bytes, bytes], None] | None = None
        self.send_frames: Callable[[list[bytes]], None] | None = None

    @property
    def state(self) -> Conn:
        """Where the connection is (see ``_connection``)."""
        return self._conn.state

    # --- commands -----------------------------------------------------------

    def connect(self, waiter: Waiter, deadline: float, timeout: float) -> None:
        """Queue HELLO; ``waiter`` gets the WELCOME body as a dict.
        ``IllegalMove`` (a ``RuntimeError``) if called twice."""
        self._conn.move(Conn.JOINING)
        if self._refused is not None:
            # The handshake failed before the connect was asked for (the
            # socket connects as soon as it is made).
            settle(waiter, exc=AuthenticationError("broker", self._refused))
            return
        self._hello = (waiter, timeout)
        self._deadlines.add(deadline, b"")
        self.outbox.append(self._hello_frames())

    def _hello_frames(self) -> list[bytes]:
        extra: dict[str, Any] = {}
        if self.heartbeat > 0:
            extra["heartbeat"] = int(self.heartbeat * 1000)
        if self.batch_commands:
            extra["batch_commands"] = True
        extra["streams"] = True  # confirmed publishes into a stream learn where
        return [p.H_HELLO, self.channel, p.pack_hello(self.client_name, **extra)]

    def subscribe(
        self, sink: Sink, waiter: Waiter, deadline: float, timeout: float, queue: str = ""
    ) -> None:
        """Open a subscription (a new sid) for ``sink`` and queue SUBSCRIBE;
        ``waiter`` gets None on OK. A non-empty ``queue`` joins that queue group."""
        if self._refuse_closed(waiter):
            return
        sub = self._subs.add(sink, queue)
        sub.ref = self._command(waiter, deadline, timeout, "subscribe")
        self.outbox.append(sub.subscribe_frames(self.channel))

    def consume(
        self, sink: Sink, stream: str, body: bytes, waiter: Waiter, deadline: float, timeout: float
    ) -> None:
        """Bind a stream consumer (CONSUME ``body``) to a new sid for ``sink``;
        ``waiter`` gets the consumer's info map. Rebound after a reconnect, as
        subscriptions are resubscribed."""
        if self._refuse_closed(waiter):
            return
        sub = self._subs.add(sink, "", body)
        sub.stream = stream
        sub.ref = self._command(waiter, deadline, timeout, "consume")
        self.outbox.append(sub.subscribe_frames(self.channel))

    def stream_request(
        self, op: str, args: dict[str, Any], waiter: Waiter, deadline: float, timeout: float
    ) -> None:
        """Queue STREAM ``op``; ``waiter`` gets the STREAM_REPLY map, or a
        ``StreamError``."""
        if self._refuse_closed(waiter):
            return
        ref = self._command(waiter, deadline, timeout, "stream " + op)
        self.outbox.append([p.H_STREAM, self.channel, ref, p.pack_stream_request(op, **args)])

    def unsubscribe(self, pattern: str, waiter: Waiter, deadline: float, timeout: float) -> int:
        """End every local subscription to ``pattern`` now and queue UNSUBSCRIBE;
        ``waiter`` gets the number ended once the broker confirms."""
        if self._refuse_closed(waiter):
            return 0
        subs = self._subs.remove_pattern(pattern)
        if not subs:
            settle(waiter, 0)
            return 0
        sids = b"".join(sub.sid for sub in subs)
        ref = self._command(waiter, deadline, timeout, "unsubscribe", result=len(subs))
        self.outbox.append([p.H_UNSUBSCRIBE, self.channel, ref, sids])
        return len(subs)

    def remove(self, sink: Sink, waiter: Waiter, deadline: float, timeout: float) -> None:
        """End one local subscription and queue UNSUBSCRIBE for its sid."""
        if self._refuse_closed(waiter):
            return
        sub = self._subs.remove(sink)
        if sub is None:
            settle(waiter, None)
            return
        ref = self._command(waiter, deadline, timeout, "unsubscribe")
        self.outbox.append([p.H_UNSUBSCRIBE, self.channel, ref, sub.sid])

    def publish(
        self, topic: bytes, body: bytes, waiter: Waiter | None, deadline: float, timeout: float
    ) -> None:
        """Queue PUBLISH. With a waiter, it gets a ``PublishResult`` once every bus
        the broker routed to has confirmed, or ``HandlerError``/``PublishTimeout``."""
        if waiter is None:
            if self._conn.state is Conn.CLOSED:
                raise BusClosed("bus is closed")
            self.send_unconfirmed([p.H_PUBLISH, self.channel, b"", topic, body])
            return
        if self._refuse_closed(waiter):
            return
        ref = self._next_ref()
        self._pending[ref] = PendingPublish(waiter, timeout)
        self._deadlines.add(deadline, ref)
        self.outbox.append([p.H_PUBLISH, self.channel, ref, topic, body])

    def request(
        self, topic: bytes, body: bytes, waiter: Waiter, deadline: float, timeout: float
    ) -> None:
        """Queue REQUEST; ``waiter`` gets the first answer as a ``Message``, or
        ``NoResponders``, ``HandlerError`` (the responder failed) or ``RequestTimeout``."""
        if self._refuse_closed(waiter):
            return
        ref = self._next_ref()
        self._pending[ref] = PendingRequest(waiter, timeout, topic.decode())
        self._deadlines.add(deadline, ref)
        self.outbox.append([p.H_REQUEST, self.channel, ref, topic, body])

    def handler_done(self, ack_id: int, error: str | None) -> None:
        """A handler that was offered ``ack_id`` has returned (``error`` None) or raised.
        Error texts longer than ``MAX_ERROR_TEXT`` characters are cut."""
        state = self._acks.get(ack_id)
        if state is None:
            return
        if error is None:
            state.delivered += 1
        else:
            if len(error) > MAX_ERROR_TEXT:
                error = error[: MAX_ERROR_TEXT - 3] + "..."
            state.errors.append(error)
        state.remaining -= 1
        if state.remaining <= 0:
            del self._acks[ack_id]
            self._send_ack(state.token, state.delivered, state.dropped, state.errors)

    def close(
        self,
        exc: BaseException | None = None,
        waiter: Waiter | None = None,
        deadline: float = 0.0,
        timeout: float = 0.0,
    ) -> None:
        """Fail everything pending with ``exc`` (default ``BusClosed``), end all
        sinks, and confirm deliveries still waiting on handlers with an error.

        With a ``waiter``, also queue DISCONNECT: the waiter completes when the
        broker has answered, which proves all earlier frames reached it.
        """
        if self._conn.state is Conn.CLOSED:
            if waiter is not None:
                settle(waiter, None)
            return
        was_ready = self._conn.move(Conn.CLOSED) is Conn.READY
        self.want_socket = False
        exc = exc or BusClosed("bus is closed")
        self._closed_exc = exc
        if self._hello is not None:
            settle(self._hello[0], exc=exc)
            self._hello = None
        pending = list(self._pending.values())
        self._pending.clear()
        for item in pending:
            settle(item.waiter, exc=exc)
        self._deadlines.clear()
        for state in self._acks.values():
            state.errors.append("subscribing bus closed before its handler finished")
            self._send_ack(state.token, state.delivered, state.dropped, state.errors)
        self._acks.clear()
        self._subs.close_all()
        if waiter is not None:
            if was_ready:
                ref = self._command(waiter, deadline, timeout, "disconnect")
                self.outbox.append([p.H_DISCONNECT, self.channel, ref])
            else:
                settle(waiter, None)

    # --- connection loss ----------------------------------------------------

    def _lost(self, now: float, reason: str) -> None:
        if self._conn.state not in (Conn.READY, Conn.REJOINING):
            return
        if self._conn.move(Conn.RECONNECTING) is Conn.READY:
            self.events.append("disconnected")
            log.warning("lost the broker (%s); reconnecting", reason)
        # Until the next broker's WELCOME says otherwise.
        self.batching_commands = False
        self.counters["disconnects"] += 1
        self._welcome_by = None
        self._backoff = min(RECONNECT_MAX, max(RECONNECT_MIN, self._backoff * 2))
        self._rejoin_at = now + self._backoff * random.uniform(0.5, 1.5)
        # Confirmations of the old session's deliveries cannot reach anyone now.
        self._acks.clear()
        # Hold what the user queued meanwhile (sent after the new HELLO), dropping
        # our own frames for the old session.
        held = [f for f in self.outbox if f[0] in _KEEP_ON_LOSS]
        self.outbox.clear()
        self.outbox.extend(held[-MAX_HELD_FRAMES:])

    def send_unconfirmed(self, frames: list[bytes]) -> None:
        """Queue frames nobody waits on (an unconfirmed publish, a reply). While
        reconnecting, at most MAX_HELD_FRAMES wait; beyond that the newest are
        dropped and counted, so a long outage cannot exhaust memory."""
        if self._conn.state is Conn.RECONNECTING and len(self.outbox) >= MAX_HELD_FRAMES:
            self.counters["held_dropped"] += 1
            return
        self.outbox.append(frames)

    @property
    def holding(self) -> bool:
        """True while frames must stay in ``outbox`` (no session to send them to)."""
        return self._conn.state is Conn.RECONNECTING

    @property
    def queued(self) -> int:
        """How many messages wait for ``take_outgoing()`` (held ones included)."""
        return len(self.outbox)

    def take_outgoing(self) -> list[list[bytes]]:
        """The messages to send now, in order (none while holding)."""
        outbox = self.outbox
        if not outbox or self._conn.state is Conn.RECONNECTING:
            return []
        self.outbox = []
        return outbox

    def take_events(self) -> list[str]:
        """Connection events since the last call, oldest first."""
        events = self.events
        if not events:
            return events
        self.events = []
        return events

    def rejoin(self, now: float) -> None:
        """The driver has a fresh socket: queue HELLO, re-SUBSCRIBE every open
        subscription, then what was held. Subscribes still awaiting their OK
        reuse their ref, so their callers complete. While the first handshake
        waits for a socket that takes the broker's larger frames (see
        ``max_frame``), just HELLO again."""
        if self._conn.state is Conn.JOINING and self.want_socket:
            self.want_socket = False
            self.outbox.insert(0, self._hello_frames())
            return
        if self._conn.state is not Conn.RECONNECTING:
            return
        self._conn.move(Conn.REJOINING)
        self.want_socket = False
        self._welcome_by = now + max(1.0, 2 * self._backoff)
        frames = [self._hello_frames()]
        for sub in self._subs:
            if sub.ref not in self._pending:
                # Confirmed on the old session: our own re-subscribe, answered to nobody.
                sub.ref = self._next_ref()
                self._internal.add(sub.ref)
            frames.append(sub.subscribe_frames(self.channel))
        # Unsubscribes and disconnects pending on the old session are moot: done.
        for ref, item in list(self._pending.items()):
            if isinstance(item, PendingCommand) and item.action in ("unsubscribe", "disconnect"):
                del self._pending[ref]
                settle(item.waiter, item.result)
        held = list(self.outbox)
        self.outbox.clear()
        self.outbox.extend(frames)
        self.outbox.extend(held)

    # --- timers -------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest deadline of anything pending or due (heartbeat, liveness,
        reconnect), or None: then the driver may block indefinitely."""
        best = self._deadlines.earliest()
        for t in self._duties():
            if best is None or t < best:
                best = t
        return best

    def _duties(self) -> list[float]:
        state = self._conn.state
        if state is Conn.READY and self._beat:
            return [self._next_beat, self._last_heard + LIVENESS * self._beat]
        if state is Conn.RECONNECTING and self._rejoin_at is not None:
            return [self._rejoin_at]
        if state is Conn.REJOINING and self._welcome_by is not None:
            return [self._welcome_by]
        return []

    def expire(self, now: float) -> None:
        """Fail everything whose deadline is at or before ``now``; send a due
        heartbeat; notice a silent broker; schedule and time reconnects."""
        state = self._conn.state
        if state is Conn.READY and self._beat:
            if now - self._last_heard > LIVENESS * self._beat:
                self._lost(now, f"broker silent for {now - self._last_heard:.1f}s")
            elif now >= self._next_beat:
                self.outbox.append([p.H_HEARTBEAT, self.channel])
                self._next_beat = now + self._beat
        elif state is Conn.RECONNECTING:
            if self._rejoin_at is not None and now >= self._rejoin_at:
                self._rejoin_at = None
                self.want_socket = True
        elif state is Conn.REJOINING and self._welcome_by is not None and now >= self._welcome_by:
            self._lost(now, "no WELCOME from the broker")
        for ref in self._deadlines.due(now):
            if not ref:
                if self._hello is not None and self._conn.state is Conn.JOINING:
                    waiter, timeout = self._hello
                    self._hello = None
                    settle(waiter, exc=ConnectTimeout("broker", timeout))
                continue
            item = self._pending.pop(ref, None)
            if item is None:
                continue
            if isinstance(item, PendingPublish):
                self.counters["publish_timeouts"] += 1
            elif isinstance(item, PendingRequest):
                self.counters["request_timeouts"] += 1
            settle(item.waiter, exc=timeout_error(item))

    def handshake_failed(self, reason: str, refused: bool = False) -> None:
        """The socket's handshake with the broker failed (its monitor said so,
        with ``reason``): a connect in progress fails with AuthenticationError.
        Later, a broker's ZAP refusal (``refused``: this bus's key was revoked)
        sets ``revoked``, for the driver to close the bus with; other failures
        are retried (libzmq retries by itself)."""
        self.counters["handshake_failures"] += 1
        if self._hello is not None and self._conn.state is Conn.JOINING:
            waiter, _ = self._hello
            self._hello = None
            settle(waiter, exc=AuthenticationError("broker", reason))
        elif self._conn.state is Conn.NEW:
            self._refused = reason  # connect() fails with it when it comes
        elif refused and self._conn.state is not Conn.CLOSED:
            log.error("the broker no longer accepts this bus's key: closing (%s)", reason)
            self.revoked = AuthenticationError("broker", reason)
        else:
            log.warning("handshake with the broker failed: %s", reason)

    def join_front(self, out: deque[list[bytes]]) -> None:
        """``batch_front`` if this session's broker offered ``batch_commands``:
        drivers call it before each send from their queue."""
        if self.batching_commands:
            batch_front(out)

    # --- input --------------------------------------------------------------

    def receive(self, frames: list[bytes]) -> None:
        """Handle one message from the broker."""
        self._last_heard = self.clock()
        if frames and frames[0] == H_BROKER_BATCH and len(frames) == _N_BROKER_BATCH:
            try:
                if frames[1] != self.channel:
                    p.check_channel(frames[1])
                    raise ProtocolError(p.ErrorCode.CHANNEL_MISMATCH, "batch for another channel")
                entries = p.unpack_broker_batch(frames[ENTRIES_FRAME], frames[1])
            except ProtocolError as exc:
                self.counters["protocol_errors"] += 1
                log.warning("bad message from broker ignored: %s", exc)
                return
            # Unconfirmed DELIVERs, the bulk of a busy subscriber's traffic, are
            # handed over a run at a time; the rest one by one, in order.
            run: list[tuple[bytes, ...]] = []
            for entry in entries:
                if isinstance(entry, tuple):  # an unconfirmed DELIVER: (topic, body, sids)
                    run.append(entry)
                    continue
                if run:
                    self._deliver_run(run)
                    run = []
                self._receive(entry)
            if run:
                self._deliver_run(run)
        else:
            self._receive(frames)

    def _receive(self, frames: list[bytes]) -> None:
        head = frames[0] if frames else b""
        n = len(frames)
        try:
            if n > REF_FRAME and (
                frames[1] != self.channel or len(frames[REF_FRAME]) > MAX_REF_BYTES
            ):
                # Full validation (and its precise error) for anything off the happy path.
                self._control(p.parse_broker(frames))
            elif head == H_DELIVER and n == _N_DELIVER:
                self._deliver(
                    frames[DELIVER_TOKEN],
                    frames[DELIVER_TOPIC],
                    frames[DELIVER_BODY],
                    frames[DELIVER_SIDS],
                )
            elif head == H_ASK and n == _N_ASK and frames[ASK_TOKEN]:
                self._ask(frames[ASK_TOKEN], frames[ASK_TOPIC], frames[ASK_BODY], frames[ASK_SIDS])
            elif head == H_ANSWER and n == _N_ANSWER:
                self._answer(frames[ANSWER_REF], frames[ANSWER_BODY])
            elif head == H_ACKED and n == _N_ACKED:
                self._acked(frames[ACKED_REF], frames[ACKED_BODY])
            elif head == H_ROUTED and n == _N_ROUTED and len(frames[ROUTED_COUNT]) == _COUNT_BYTES:
                self._routed(frames[ROUTED_REF], int.from_bytes(frames[ROUTED_COUNT], "big"))
            elif (
                head == p.H_STORED
                and n == _N_STORED
                and frames[STORED_STREAM] in self._stream_names
                and len(frames[STORED_SEQ]) == 8
                and frames[STORED_DUPLICATE] in _FLAGS
            ):
                # A stream name parse_broker checked before; the seq and flag by size.
                self._stored(
                    frames[STORED_REF],
                    self._stream_names[frames[STORED_STREAM]],
                    int.from_bytes(frames[STORED_SEQ], "big"),
                    _FLAGS[frames[STORED_DUPLICATE]],
                )
            elif (
                head == p.H_STREAM_MSG
                and n == _N_STREAM_MSG
                and frames[p.STREAM_MSG_TOKEN]
                and len(frames[p.STREAM_MSG_SID]) == _SID_BYTES
                and len(frames[p.STREAM_MSG_META]) == _META_BYTES
            ):
                self._stream_msg(
                    frames[p.STREAM_MSG_TOKEN],
                    frames[p.STREAM_MSG_TOPIC],
                    frames[p.STREAM_MSG_BODY],
                    frames[p.STREAM_MSG_SID],
                    frames[p.STREAM_MSG_META],
                )
            else:
                self._control(p.parse_broker(frames))
        except ProtocolError as exc:
            if (
                head == p.H_WELCOME
                and n == _N_WELCOME
                and frames[1] == self.channel
                and (self._hello is not None or self._conn.state is Conn.REJOINING)
            ):
                # The WELCOME we wait for, its body refused by parse_broker.
                self._bad_welcome(exc)
                return
            # A broker that breaks the protocol is a bug over there; keep the bus alive.
            self.counters["protocol_errors"] += 1
            log.warning("bad message from broker ignored: %s", exc)

    def _control(self, cmd: p.BrokerCommand) -> None:
        if not isinstance(cmd, p.Error) and cmd.channel != self.channel:
            raise ProtocolError(p.ErrorCode.CHANNEL_MISMATCH, "message for another channel")
        if isinstance(cmd, p.Ok):
            if cmd.ref in self._internal:
                self._internal.discard(cmd.ref)
                return
            item = self._pending.get(cmd.ref)
            if isinstance(item, PendingCommand):
                del self._pending[cmd.ref]
                settle(item.waiter, item.result)
        elif isinstance(cmd, p.BrokerHeartbeat):
            pass  # being heard is all it is for
        elif isinstance(cmd, p.StreamMsg):
            self._stream_msg(cmd.token, cmd.topic, cmd.body, cmd.sid, cmd.meta)
        elif isinstance(cmd, p.StreamReply):
            if cmd.ref in self._internal:  # a consumer rebound after a reconnect
                self._internal.discard(cmd.ref)
                return
            item = self._pending.get(cmd.ref)
            if isinstance(item, PendingCommand):
                del self._pending[cmd.ref]
                settle(item.waiter, p.unpack_stream_reply(cmd.body))
        elif isinstance(cmd, p.Stored):
            if len(self._stream_names) >= 256:
                self._stream_names.clear()
            self._stream_names[cmd.stream.encode()] = cmd.stream
            self._stored(cmd.ref, cmd.stream, cmd.seq, cmd.duplicate)
        elif isinstance(cmd, p.Dropped):
            # Messages the broker could not queue for us (we were too slow).
            for sid, count in p.unpack_dropped(cmd.counts).items():
                self.counters["dropped_at_broker"] += count
                sink = self._subs.sinks.get(sid)
                if sink is not None:
                    sink.missed(count)
            if cmd.throttled:
                self.counters["throttled"] += cmd.throttled
                log.warning(
                    "broker dropped %d unconfirmed publishes: over the user's rate limit",
                    cmd.throttled,
                )
        elif isinstance(cmd, p.Bye):
            self._lost(self.clock(), "broker is shutting down")
        elif isinstance(cmd, p.Welcome):
            if self._hello is None and self._conn.state is not Conn.REJOINING:
                return
            self._welcome(cmd.body)
        elif isinstance(cmd, p.Error):
            self._error(cmd)
        elif isinstance(cmd, p.DeliverBatch):
            raise ProtocolError(
                p.ErrorCode.BAD_FRAMES, "DELIVER_BATCH, which this client never asks for"
            )
        else:  # DELIVER/ACKED/ROUTED that failed the fast path's shape check
            raise ProtocolError(p.ErrorCode.BAD_FRAMES, f"malformed {type(cmd).__name__}")

    def _bad_welcome(self, exc: ProtocolError) -> None:
        # A broker must not set our timers or buffers to absurd values: give up
        # this connection. connect() raises the error; a rejoin is retried
        # later, with backoff, as after a broker that did not answer.
        self.counters["protocol_errors"] += 1
        log.warning("broker sent an invalid WELCOME: %s", exc)
        if self._conn.state is Conn.JOINING:
            self.close(exc)
        else:
            self._lost(self.clock(), f"invalid WELCOME ({exc.detail})")

    def _welcome(self, body: bytes) -> None:
        now = self.clock()
        try:
            info = p.unpack_welcome(body)
        except ProtocolError as exc:
            self._bad_welcome(exc)
            return
        size = int(info["max_message_size"])
        frame = size + FRAME_ALLOWANCE
        if frame > self.max_frame:
            # This socket would drop the connection on the broker's largest
            # messages: start again on a fresh one that takes them. (The broker
            # forgets the session left behind as any silent peer.)
            self.max_frame = frame
            if self._conn.state is Conn.JOINING:
                self.want_socket = True
            else:
                self._lost(now, "broker takes larger messages than this socket")
            return
        # Tighter than this socket: the next one gets it.
        self.max_frame = frame
        self.broker_info = info
        self.max_message_size = size
        self._beat = info.get("heartbeat", 0) / 1000.0
        self.batching_commands = self.batch_commands and info.get("batch_commands", False)
        self._next_beat = now + self._beat
        if self._conn.move(Conn.READY) is Conn.REJOINING:
            self._backoff = 0.0
            self._welcome_by = None
            self.counters["reconnects"] += 1
            self.events.append("reconnected")
            log.info("rejoined channel %s", self.channel.hex())
            return
        assert self._hello is not None
        waiter, _ = self._hello
        self._hello = None
        settle(waiter, info)

    def _error(self, cmd: p.Error) -> None:
        exc = remote_error(cmd.code, cmd.text, cmd.retry_after)
        if cmd.code == p.ErrorCode.NOT_JOINED and self._conn.state in (Conn.READY, Conn.REJOINING):
            # The broker does not know this connection (it restarted, or expired us):
            # join again. What it refused stays pending until its own timeout.
            self._lost(self.clock(), "broker does not know this session")
            return
        if cmd.ref:
            item = self._pending.pop(cmd.ref, None)
            if item is not None:
                if isinstance(item, PendingCommand) and item.action.startswith(
                    ("stream", "consume")
                ):
                    exc = stream_error(cmd.code, cmd.text, consumer=_CONSUMER_OP in item.action)
                    if item.action == "consume":
                        self._unbind(cmd.ref)
                settle(item.waiter, exc=exc)
                return
            if cmd.ref in self._internal:
                # A consumer's rebinding after a reconnect was refused (its
                # stream was deleted meanwhile, say): it ends.
                self._internal.discard(cmd.ref)
                log.warning("stream consumer not rebound: %s", exc)
                self._unbind(cmd.ref)
                return
        if self._hello is not None:
            waiter, _ = self._hello
            self._hello = None
            settle(waiter, exc=exc)
            return
        self.counters["broker_errors"] += 1
        log.warning("broker reported an error: %s", exc)

    def _routed(self, ref: bytes, count: int) -> None:
        item = self._pending.get(ref)
        if isinstance(item, PendingRequest):
            if count == 0:
                del self._pending[ref]
                settle(
                    item.waiter, exc=NoResponders(f"no subscription for request on {item.topic!r}")
                )
            return
        if not isinstance(item, PendingPublish):
            return
        item.expected = count
        self._maybe_finish(ref, item)

    def _acked(self, ref: bytes, body: bytes) -> None:
        item = self._pending.get(ref)
        if not isinstance(item, PendingPublish):
            self.counters["late_acks"] += 1
            return
        try:
            ack = p.unpack_ack(body)
        except ProtocolError as exc:
            # Count the bus as confirmed with an error rather than wait for a timeout.
            ack = p.AckResult(0, 0, (f"undecodable confirmation: {exc.detail}",))
        item.buses += 1
        item.delivered += ack.delivered
        item.dropped += ack.dropped
        item.errors.extend(ack.errors)
        self._maybe_finish(ref, item)

    def _maybe_finish(self, ref: bytes, item: PendingPublish) -> None:
        if not item.complete:
            return
        del self._pending[ref]
        result = item.result()
        if item.errors:
            settle(item.waiter, exc=HandlerError(list(item.errors), result))
        else:
            settle(item.waiter, result)

    def _topic(self, topic: bytes) -> str:
        text = self._topic_text.get(topic)
        if text is None:
            text = p.decode_name(topic, "topic")
            if len(self._topic_text) >= 4096:
                self._topic_text.clear()
            self._topic_text[topic] = text
        return text

    def _deliver(self, token: bytes, topic: bytes, body: bytes, sids: bytes) -> None:
        try:
            text = self._topic(topic)
            sinks = self._subs.targets(sids)
        except ProtocolError as exc:
            # Only a broken broker sends this; confirm so its publisher is not left waiting.
            if token:
                self._send_ack(token, 0, 0, [f"subscriber refused delivery: {exc.detail}"])
            raise
        self.counters["received"] += 1
        if not sinks:
            # Unsubscribed locally while the broker was still routing to us.
            if token:
                self._send_ack(token, 0, 0, ())
            return
        try:
            msg_id, ts, headers, payload = p.message_fields(body)
        except ProtocolError as exc:
            self.counters["bad_bodies"] += 1
            log.warning("undecodable message on %r dropped: %s", text, exc)
            if token:
                self._send_ack(token, 0, 0, [f"subscriber could not decode message: {exc.detail}"])
            return
        msg = make_message(msg_id, text, payload, headers, ts)
        if not token:
            for sink in sinks:
                sink.offer(msg, None)
            return
        self._ack_seq += 1
        ack_id = self._ack_seq
        delivered = dropped = waiting = 0
        for sink in sinks:
            r = sink.offer(msg, ack_id)
            if r == DELIVERED:
                delivered += 1
            elif r == DROPPED:
                dropped += 1
            else:
                waiting += 1
        if waiting:
            self._acks[ack_id] = _AckState(token, waiting, delivered, dropped)
        else:
            self._send_ack(token, delivered, dropped, ())

    def _deliver_run(self, run: list[tuple[bytes, ...]]) -> None:
        # _deliver for (topic, body, sids) entries with an empty token.
        subs = self._subs
        deliver_run(run, self._topic, subs.sinks.get, subs.targets, self.counters)

    def _ask(self, token: bytes, topic: bytes, body: bytes, sids: bytes) -> None:
        text = self._topic(topic)
        sinks = self._subs.targets(sids)
        self.counters["requests_received"] += 1
        if not sinks:
            return
        try:
            mb = p.unpack_message(body)
        except ProtocolError as exc:
            self.counters["bad_bodies"] += 1
            log.warning("undecodable request on %r dropped: %s", text, exc)
            return
        send = self.send_reply
        for sink in sinks:
            # Each subscription gets its own answerable copy: each may reply once.
            msg = make_message(mb.id, text, mb.payload, mb.headers, mb.timestamp)
            if send is not None:
                attach_reply(msg, ReplyContext(token, send))
            sink.offer(msg, None)

    def _unbind(self, ref: bytes) -> None:
        # The consumer whose CONSUME (by ref) was refused: ended locally.
        for sub in self._subs:
            if sub.consume is not None and sub.ref == ref:
                self._subs.remove(sub.sink)
                return

    def _stored(self, ref: bytes, stream: str, seq: int, duplicate: bool) -> None:
        item = self._pending.get(ref)
        if isinstance(item, PendingPublish):
            item.stored = (stream, seq, duplicate)

    def _stream_msg(self, token: bytes, topic: bytes, body: bytes, sid: bytes, meta: bytes) -> None:
        sub = self._subs.by_sid(sid)
        self.counters["stream_received"] += 1
        if sub is None or sub.consume is None:
            return  # unbound meanwhile: the broker delivers it again elsewhere
        text = self._topic(topic)
        try:
            msg_id, ts, headers, payload = p.message_fields(body)
        except ProtocolError as exc:
            self.counters["bad_bodies"] += 1
            log.warning("undecodable stream message on %r terminated: %s", text, exc)
            send = self.send_frames
            if send is not None:
                send([p.H_STREAM_ACK, self.channel, token, bytes((p.AckKind.TERM,)), b"",
                      f"undecodable: {exc.detail}".encode()])  # fmt: skip
            return
        seq, deliveries = p.unpack_meta(meta)
        msg = make_message(msg_id, text, payload, headers, ts)
        if self.send_frames is not None:
            ctx = StreamContext(sub.stream, seq, deliveries, token, self.channel, self.send_frames)
            attach_stream(msg, ctx)
        # Not taken (a full buffer): not settled, so delivered again after ack_wait.
        sub.sink.offer(msg, None)

    def _answer(self, ref: bytes, body: bytes) -> None:
        item = self._pending.get(ref)
        if not isinstance(item, PendingRequest):
            self.counters["late_replies"] += 1
            return
        del self._pending[ref]
        try:
            mb, error = p.unpack_reply(body)
        except ProtocolError as exc:
            settle(item.waiter, exc=exc)
            return
        if error is not None:
            settle(item.waiter, exc=HandlerError([error], PublishResult(0, 0, 1, 1)))
            return
        settle(item.waiter, make_message(mb.id, item.topic, mb.payload, mb.headers, mb.timestamp))

    # --- helpers ------------------------------------------------------------

    def _send_ack(self, token: bytes, delivered: int, dropped: int, errors: Any) -> None:
        self.outbox.append([p.H_ACK, self.channel, token, p.pack_ack(delivered, dropped, errors)])

    def _next_ref(self) -> bytes:
        self._seq += 1
        return self._seq.to_bytes(8, "big")

    def _command(
        self, waiter: Waiter, deadline: float, timeout: float, action: str, result: Any = None
    ) -> bytes:
        ref = self._next_ref()
        self._pending[ref] = PendingCommand(waiter, timeout, action, result)
        self._deadlines.add(deadline, ref)
        return ref

    def _refuse_closed(self, waiter: Waiter) -> bool:
        if self._conn.state is Conn.CLOSED:
            settle(waiter, exc=self._closed_exc or BusClosed("bus is closed"))
            return True
        return False

    @property
    def pending_count(self) -> int:
        """Publishes and requests waiting for the broker."""
        return len(self._pending)

    def sinks(self) -> list[Sink]:
        """Every live local subscription."""
        return [sub.sink for sub in self._subs]


def _bad_delivery(counters: Counter[str], exc: ProtocolError) -> None:
    counters["protocol_errors"] += 1
    log.warning("bad message from broker ignored: %s", exc)


def _bad_body(counters: Counter[str], text: str, exc: ProtocolError) -> None:
    counters["bad_bodies"] += 1
    log.warning("undecodable message on %r dropped: %s", text, exc)


def deliver_run(
    run: list[tuple[bytes, ...]],
    topic_of: Callable[[bytes], str],
    sinks_of: Callable[[bytes], Sink | None],
    targets: Callable[[bytes], list[Sink]],
    counters: Counter[str],
) -> None:
    """Hand each unconfirmed (topic, body, sids) delivery of ``run`` to its
    sinks as if it had come alone, with the per-message lookups hoisted:
    ``topic_of`` decodes a topic, ``sinks_of`` finds one sid's sink,
    ``targets`` the sinks of several sids; a bad one is counted and logged."""
    fields = p.message_fields
    counters["received"] += len(run)
    for topic, body, sids in run:
        sink: Sink | None = None
        sinks: list[Sink] | None = None
        try:
            text = topic_of(topic)
            # One sid is the common case: no list of sinks to build for it.
            if len(sids) == p.SID_BYTES:
                sink = sinks_of(sids)
                if sink is None:
                    continue  # unsubscribed locally while the broker was still routing
            else:
                sinks = targets(sids)
                if not sinks:
                    continue
        except ProtocolError as exc:
            _bad_delivery(counters, exc)
            continue
        try:
            msg_id, ts, headers, payload = fields(body)
        except ProtocolError as exc:
            _bad_body(counters, text, exc)
            continue
        msg = make_message(msg_id, text, payload, headers, ts)
        if sink is not None:
            sink.offer(msg, None)
        elif sinks is not None:
            for one in sinks:
                one.offer(msg, None)


_BATCHABLE = frozenset(p.header(c) for c in p.CLIENT_ENTRY_FRAMES)


def batch_front(out: deque[list[bytes]], limit: int = BATCH_BYTES) -> None:
    """Join the front of ``out``, two or more PUBLISH, ACK, REQUEST and REPLY
    messages in a row, into one BATCH of at most ``limit`` bytes of entries,
    in order. Only for a broker whose WELCOME offered ``batch_commands``."""
    if len(out) < 2:
        return
    pack = p.pack_command_entry
    entries: list[bytes] = []
    size = 0
    for frames in out:
        if frames[0] not in _BATCHABLE:
            break
        entry = pack(frames)
        size += len(entry)
        if size > limit or len(entries) == p.MAX_BATCH_ENTRIES:
            break
        entries.append(entry)
    if len(entries) < 2:
        return
    channel = out[0][1]
    for _ in entries:
        out.popleft()
    out.appendleft([p.H_BATCH, channel, b"".join(entries)])


_compiled = compiled()
if _compiled is not None:
    _compiled.configure_batch_front(_BATCHABLE, BATCH_BYTES)
    _compiled.configure_deliver_run(
        make_message, Message, _message._DICT_WRITES, _bad_delivery, _bad_body
    )
batch_front = twin(batch_front)
deliver_run = twin(deliver_run)
