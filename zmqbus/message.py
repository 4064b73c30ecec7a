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
from .protocol import new_message_id, pack_reply

__all__ = ["Message", "PublishResult", "ReplyContext", "make_message"]

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
    Shared by both faces so that handlers mean the same thing on each."""
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


@dataclass(frozen=True, slots=True)
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
