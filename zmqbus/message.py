"""The values users hold: a delivered ``Message`` and a ``PublishResult``."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import _validate
from ._fastpath import dict_writes_work, uuid_from_bytes
from .errors import ZmqbusError
from .protocol import H_STREAM_ACK, AckKind, new_message_id, pack_reply

__all__ = ["Message", "PublishResult", "ReplyContext", "StreamContext", "make_message"]

log = logging.getLogger("zmqbus.message")


class ReplyContext:
    """Where the answer to one request goes: the broker's reply token and the
    face's way of sending a REPLY body. Used once; thread-safe."""

    __slots__ = ("_lock", "_send", "_token", "_used")

    def __init__(self, token: bytes, send: Callable[[bytes, bytes], None]) -> None:
        self._token = token
        self._send = send
        self._used = False
        self._lock = threading.Lock()

    @property
    def used(self) -> bool:
        """True once a reply (or an error) was sent."""
        return self._used

    def send(
        self,
        payload: bytes | bytearray | memoryview,
        headers: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        """Send the reply (or, with ``error``, a failure the requester raises)."""
        data = _validate.payload(payload)
        hdrs = _validate.headers(headers)
        body = pack_reply(new_message_id(), time.time_ns(), hdrs, data, error)
        with self._lock:
            if self._used:
                raise ZmqbusError("this request was already answered")
            # Marked used only once sent: a refused send (e.g. too large) may be retried.
            self._send(self._token, body)
            self._used = True


@dataclass(frozen=True)
class Message:
    """One published message as a subscriber sees it.

    ``timestamp`` is the publisher's clock at publish time, timezone-aware UTC.
    The ``headers`` dict is shared by every subscription of one bus that
    received the message: treat it as read-only. A message that arrived as a
    request can be answered once with ``respond()``.
    """

    id: uuid.UUID
    topic: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __getattr__(self, name: str) -> uuid.UUID:
        # Only for a received message: its id arrives as 16 raw bytes and becomes
        # a UUID when first read (a fifth of the cost of a delivery otherwise).
        if name == "id":
            raw = self.__dict__.get("_raw_id")
            if raw is not None:
                value = self.__dict__["id"] = uuid_from_bytes(raw)
                return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def stream(self) -> str | None:
        """The stream a consumer read this message from (None: not from one)."""
        ctx: StreamContext | None = getattr(self, "_stream", None)
        return ctx.stream if ctx is not None else None

    @property
    def seq(self) -> int | None:
        """Its sequence in that stream (None: not from a stream)."""
        ctx: StreamContext | None = getattr(self, "_stream", None)
        return ctx.seq if ctx is not None else None

    @property
    def deliveries(self) -> int:
        """How many times the stream has delivered it, this time included (0:
        not from a stream)."""
        ctx: StreamContext | None = getattr(self, "_stream", None)
        return ctx.deliveries if ctx is not None else 0

    def ack(self) -> None:
        """Done with this stream message: it is never delivered again."""
        _stream_of(self).settle(AckKind.ACK)

    def nak(self, delay: float | None = None, error: str = "") -> None:
        """Failed: deliver it again after ``delay`` seconds (None: the
        consumer's backoff, or at once); ``error`` says why (it ends up in a
        dead letter's headers)."""
        if delay is not None:
            delay = _validate.timeout(delay)
        _stream_of(self).settle(AckKind.NAK, delay, error)

    def in_progress(self) -> None:
        """Still working on it: its ``ack_wait`` starts again."""
        _stream_of(self).settle(AckKind.PROGRESS, final=False)

    def term(self, error: str = "") -> None:
        """Never deliver it again, and do not count it done."""
        _stream_of(self).settle(AckKind.TERM, None, error)

    @property
    def is_request(self) -> bool:
        """True if the sender waits for a reply (see ``respond``)."""
        return getattr(self, "_reply", None) is not None

    def respond(
        self, payload: bytes | bytearray | memoryview, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer a request. Raises ``ZmqbusError`` if this message is not a
        request or was already answered; ``TypeError`` for a bad payload or headers."""
        reply: ReplyContext | None = getattr(self, "_reply", None)
        if reply is None:
            raise ZmqbusError("this message is not a request: nothing to respond to")
        reply.send(payload, headers)


_new = object.__new__
# The fast path below holds only while a frozen dataclass keeps its fields in
# the instance __dict__ (checked once, here).
_DICT_WRITES = dict_writes_work(
    Message, id=uuid.UUID(int=1), topic="t", payload=b"", headers={}, timestamp=datetime.now(UTC)
)


def make_message(
    id: uuid.UUID | bytes, topic: str, payload: bytes, headers: dict[str, str], timestamp: datetime
) -> Message:
    """``Message(id, topic, payload, headers, timestamp)`` for values already
    checked by the protocol layer: the frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, which costs more than the rest of the
    receive path's Python code together. ``id`` may be the 16 raw bytes, made a
    UUID when first read."""
    if not _DICT_WRITES:
        if type(id) is bytes:
            id = uuid_from_bytes(id)
        return Message(id, topic, payload, headers, timestamp)  # type: ignore[arg-type]
    msg: Message = _new(Message)
    fields = msg.__dict__
    if type(id) is bytes:
        fields["_raw_id"] = id
    else:
        fields["id"] = id
    fields["topic"] = topic
    fields["payload"] = payload
    fields["headers"] = headers
    fields["timestamp"] = timestamp
    return msg


class StreamContext:
    """Where a stream message came from, and how it is settled: its token
    and the face's thread-safe way of sending frames. Settled once (ACK, NAK
    or TERM); PROGRESS any number of times before."""

    __slots__ = ("_channel", "_lock", "_send", "_token", "deliveries", "seq", "settled", "stream")

    def __init__(
        self,
        stream: str,
        seq: int,
        deliveries: int,
        token: bytes,
        channel: bytes,
        send: Callable[[list[bytes]], None],
    ) -> None:
        self.stream = stream
        self.seq = seq
        self.deliveries = deliveries
        self._token = token
        self._channel = channel
        self._send = send
        self._lock = threading.Lock()
        self.settled = False

    def settle(
        self, kind: int, delay: float | None = None, error: str = "", *, final: bool = True
    ) -> None:
        """Send STREAM_ACK of ``kind``. ``ZmqbusError`` if already settled."""
        if not isinstance(error, str):
            raise TypeError("error must be a str")
        if len(error) > _MAX_ERROR:
            error = error[: _MAX_ERROR - 3] + "..."
        ms = b"" if delay is None else min(round(delay * 1000), 0xFFFFFFFF).to_bytes(4, "big")
        with self._lock:
            if self.settled:
                raise ZmqbusError(f"stream message {self.stream}:{self.seq} is already settled")
            self._send(
                [H_STREAM_ACK, self._channel, self._token, bytes((kind,)), ms, error.encode()]
            )
            if final:
                self.settled = True


_MAX_ERROR = 1024


def _stream_of(message: Message) -> StreamContext:
    ctx: StreamContext | None = getattr(message, "_stream", None)
    if ctx is None:
        raise ZmqbusError("this message is not from a stream consumer: nothing to settle")
    return ctx


def attach_stream(message: Message, ctx: StreamContext) -> None:
    """Make ``message`` a stream message, settled through ``ctx``."""
    object.__setattr__(message, "_stream", ctx)


def attach_reply(message: Message, reply: ReplyContext) -> None:
    """Make ``message`` answerable; kept outside the dataclass fields, so it
    takes no part in equality or repr."""
    object.__setattr__(message, "_reply", reply)


def reply_of(message: Message) -> ReplyContext | None:
    """The reply context of a request message, or None."""
    return getattr(message, "_reply", None)


def error_text(exc: BaseException) -> str:
    """How a handler's exception is reported to a publisher or requester."""
    return f"{type(exc).__name__}: {exc}"


def answer_after_handler(msg: Message, result: object, error: str | None) -> None:
    """After a handler ran on a request: a raise answers with the error, bytes
    with a reply, None with nothing (unless the handler responded itself).
    On a stream message: a return acks it, a raise naks it with the error
    (unless the handler settled it itself). Shared by both faces so that
    handlers mean the same thing on each."""
    ctx: StreamContext | None = getattr(msg, "_stream", None)
    if ctx is not None:
        if not ctx.settled:
            try:
                if error is None:
                    ctx.settle(AckKind.ACK)
                else:
                    ctx.settle(AckKind.NAK, None, error)
            except ZmqbusError as exc:  # the bus closed meanwhile: redelivered later
                log.debug("could not settle %s:%d: %s", ctx.stream, ctx.seq, exc)
        return
    reply = reply_of(msg)
    if reply is None or reply.used:
        return
    if error is None and result is None:
        return
    if error is None and not isinstance(result, (bytes, bytearray, memoryview)):
        error = f"TypeError: handler returned {type(result).__name__}, not bytes or None"
    try:
        if error is not None:
            reply.send(b"", None, error)
        else:
            reply.send(result)  # type: ignore[arg-type]
    except ZmqbusError as exc:  # the bus closed, or the handler answered meanwhile
        log.debug("could not answer request on %r: %s", msg.topic, exc)


@dataclass(frozen=True, slots=True, repr=False)
class PublishResult:
    """What a confirmed publish reached.

    ``delivered``: subscriptions that took the message (queued, or handled
    without error). ``dropped``: subscriptions whose buffer was full.
    ``failed``: handler subscriptions that raised. ``buses``: subscribing buses
    that confirmed. A fire-and-forget publish returns all zeros and
    ``confirmed=False``.
    """

    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    buses: int = 0
    confirmed: bool = True
    #: The stream that stored it, its sequence there, and whether it was a
    #: duplicate of a message stored before (then not stored or delivered
    #: again); None, None, False when no stream captured it.
    stream: str | None = None
    seq: int | None = None
    duplicate: bool = False

    def __repr__(self) -> str:
        # The stream fields only when a stream stored it: most results have none.
        text = (
            f"PublishResult(delivered={self.delivered}, dropped={self.dropped}, "
            f"failed={self.failed}, buses={self.buses}, confirmed={self.confirmed}"
        )
        if self.stream is not None:
            text += f", stream={self.stream!r}, seq={self.seq}, duplicate={self.duplicate}"
        return text + ")"
