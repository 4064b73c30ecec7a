"""The zmqbus wire protocol, version 1: frames <-> commands, and the msgpack bodies.

Sans-IO: this module turns commands into lists of frames and frames into
commands, and validates both ways. It never touches a socket, so every rule
is testable in memory. ``docs/protocol.md`` is the normative text; the two
change together.

Every message is a zmq multipart message whose first frame is a 4-byte
header: the signature ``b"ZB"``, the version byte, and a command byte. The
second frame is always the 16-byte channel ID. Routing data stays in frames
of its own so that a broker routes without decoding a msgpack body.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, TypeAlias

import msgpack  # type: ignore[import-untyped]

from .errors import ProtocolError
from .topics import MAX_TOPIC_BYTES, validate_pattern, validate_topic

__all__ = [
    "MAX_REF_BYTES",
    "SIGNATURE",
    "VERSION",
    "Ack",
    "AckResult",
    "Acked",
    "BrokerCommand",
    "ClientCommand",
    "Command",
    "Deliver",
    "Disconnect",
    "Error",
    "ErrorCode",
    "Hello",
    "MessageBody",
    "Ok",
    "Publish",
    "Routed",
    "Subscribe",
    "Unsubscribe",
    "Welcome",
    "encode",
    "header",
    "pack_ack",
    "pack_hello",
    "pack_message",
    "pack_welcome",
    "parse_broker",
    "parse_client",
    "unpack_ack",
    "unpack_hello",
    "unpack_message",
    "unpack_welcome",
]

SIGNATURE = b"ZB"
VERSION = 1
CHANNEL_BYTES = 16
MAX_REF_BYTES = 32


class Cmd(IntEnum):
    """Command bytes. Client-to-broker commands are below 0x80, replies above."""

    HELLO = 0x01
    SUBSCRIBE = 0x02
    UNSUBSCRIBE = 0x03
    PUBLISH = 0x04
    ACK = 0x05
    DISCONNECT = 0x06
    WELCOME = 0x81
    OK = 0x82
    DELIVER = 0x83
    ROUTED = 0x84
    ACKED = 0x85
    ERROR = 0x8F


class ErrorCode(IntEnum):
    """Error codes carried by ERROR. 4xx: the peer's fault; 5xx: the broker's."""

    BAD_FRAMES = 400  # wrong frame count, or a frame of the wrong size or encoding
    NOT_JOINED = 403  # a command other than HELLO before HELLO
    UNKNOWN_COMMAND = 405  # the command byte is not one this side accepts
    BAD_TOPIC = 406  # a topic or pattern that breaks the topic rules
    CHANNEL_MISMATCH = 409  # channel frame differs from the channel joined by HELLO
    TOO_LARGE = 413  # the message exceeds the broker's max_message_size
    BAD_BODY = 422  # a msgpack body the receiver must decode is invalid
    INTERNAL = 500  # the broker failed; the request may be retried
    VERSION_NOT_SUPPORTED = 505  # unknown signature or protocol version


def header(cmd: int) -> bytes:
    """The 4-byte first frame for ``cmd`` at this protocol version."""
    return SIGNATURE + bytes((VERSION, cmd))


H_HELLO = header(Cmd.HELLO)
H_SUBSCRIBE = header(Cmd.SUBSCRIBE)
H_UNSUBSCRIBE = header(Cmd.UNSUBSCRIBE)
H_PUBLISH = header(Cmd.PUBLISH)
H_ACK = header(Cmd.ACK)
H_DISCONNECT = header(Cmd.DISCONNECT)
H_WELCOME = header(Cmd.WELCOME)
H_OK = header(Cmd.OK)
H_DELIVER = header(Cmd.DELIVER)
H_ROUTED = header(Cmd.ROUTED)
H_ACKED = header(Cmd.ACKED)
H_ERROR = header(Cmd.ERROR)


# --- commands ---------------------------------------------------------------
# Frame fields are bytes as on the wire (channel: 16 raw bytes, topic: UTF-8),
# so encode/parse are exact inverses and the broker never converts.


@dataclass(frozen=True, slots=True)
class Hello:
    """Client joins ``channel``; ``body`` is a msgpack map (see ``pack_hello``)."""

    channel: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Client asks for messages whose topic matches ``pattern``; answered by OK."""

    channel: bytes
    ref: bytes
    pattern: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Client drops its subscription to ``pattern``; answered by OK."""

    channel: bytes
    ref: bytes
    pattern: bytes


@dataclass(frozen=True, slots=True)
class Publish:
    """Client publishes; non-empty ``ref`` asks for ROUTED and ACKED replies."""

    channel: bytes
    ref: bytes
    topic: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Subscriber confirms a DELIVER that carried ``token``; body from ``pack_ack``."""

    channel: bytes
    token: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Client leaves; the broker forgets it and its subscriptions, then answers OK.

    Because the broker handles one peer's messages in order, the OK tells a
    closing client that everything it sent before has reached the broker.
    """

    channel: bytes
    ref: bytes


@dataclass(frozen=True, slots=True)
class Welcome:
    """Broker accepts HELLO; ``body`` is a msgpack map (see ``pack_welcome``)."""

    channel: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Ok:
    """Broker completed the SUBSCRIBE, UNSUBSCRIBE or DISCONNECT that carried ``ref``."""

    channel: bytes
    ref: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Broker hands a message to a subscriber. Non-empty ``token`` asks for an ACK."""

    channel: bytes
    token: bytes
    topic: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Routed:
    """Broker tells a confirming publisher how many buses the message went to."""

    channel: bytes
    ref: bytes
    count: int


@dataclass(frozen=True, slots=True)
class Acked:
    """Broker forwards one subscriber's ACK body to the publisher of ``ref``."""

    channel: bytes
    ref: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Error:
    """Broker refuses a command. ``ref`` echoes the request's ref, if it had one."""

    channel: bytes
    ref: bytes
    code: int
    text: str


ClientCommand: TypeAlias = Hello | Subscribe | Unsubscribe | Publish | Ack | Disconnect
BrokerCommand: TypeAlias = Welcome | Ok | Deliver | Routed | Acked | Error
Command: TypeAlias = ClientCommand | BrokerCommand


def encode(cmd: Command) -> list[bytes]:
    """The frames of ``cmd``, header first. No validation: build commands from
    valid values, or let the receiving side's ``parse_*`` refuse them."""
    match cmd:
        case Publish(channel, ref, topic, body):
            return [H_PUBLISH, channel, ref, topic, body]
        case Deliver(channel, token, topic, body):
            return [H_DELIVER, channel, token, topic, body]
        case Ack(channel, token, body):
            return [H_ACK, channel, token, body]
        case Acked(channel, ref, body):
            return [H_ACKED, channel, ref, body]
        case Routed(channel, ref, count):
            return [H_ROUTED, channel, ref, count.to_bytes(4, "big")]
        case Subscribe(channel, ref, pattern):
            return [H_SUBSCRIBE, channel, ref, pattern]
        case Unsubscribe(channel, ref, pattern):
            return [H_UNSUBSCRIBE, channel, ref, pattern]
        case Ok(channel, ref):
            return [H_OK, channel, ref]
        case Hello(channel, body):
            return [H_HELLO, channel, body]
        case Welcome(channel, body):
            return [H_WELCOME, channel, body]
        case Disconnect(channel, ref):
            return [H_DISCONNECT, channel, ref]
        case Error(channel, ref, code, text):
            return [H_ERROR, channel, ref, code.to_bytes(2, "big"), text.encode("utf-8")]
    raise TypeError(f"not a zmqbus command: {cmd!r}")


# --- parsing ----------------------------------------------------------------

# Frame counts including the header frame.
_CLIENT_FRAMES = {
    Cmd.HELLO: 3,
    Cmd.SUBSCRIBE: 4,
    Cmd.UNSUBSCRIBE: 4,
    Cmd.PUBLISH: 5,
    Cmd.ACK: 4,
    Cmd.DISCONNECT: 3,
}
_BROKER_FRAMES = {
    Cmd.WELCOME: 3,
    Cmd.OK: 3,
    Cmd.DELIVER: 5,
    Cmd.ROUTED: 4,
    Cmd.ACKED: 4,
    Cmd.ERROR: 5,
}


def check_header(frame: bytes) -> int:
    """Return the command byte of a header frame, or raise ``ProtocolError``
    (VERSION_NOT_SUPPORTED for a foreign signature or version)."""
    if len(frame) != 4 or frame[:2] != SIGNATURE:
        raise ProtocolError(ErrorCode.VERSION_NOT_SUPPORTED, "not a zmqbus header frame")
    if frame[2] != VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_NOT_SUPPORTED,
            f"protocol version {frame[2]} not supported (this side speaks {VERSION})",
        )
    return frame[3]


def _check_count(cmd: int, frames: Sequence[bytes], table: Mapping[Cmd, int]) -> None:
    want = table.get(cmd)  # type: ignore[call-overload]
    if want is None:
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command 0x{cmd:02x}")
    if len(frames) != want:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"{Cmd(cmd).name} takes {want} frames, got {len(frames)}",
        )


def check_channel(frame: bytes) -> None:
    """Raise BAD_FRAMES unless ``frame`` is a 16-byte channel ID."""
    if len(frame) != CHANNEL_BYTES:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES, f"channel frame must be {CHANNEL_BYTES} bytes, got {len(frame)}"
        )


def check_ref(frame: bytes, name: str = "ref") -> None:
    """Raise BAD_FRAMES unless ``frame`` is at most MAX_REF_BYTES long."""
    if len(frame) > MAX_REF_BYTES:
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"{name} frame longer than {MAX_REF_BYTES} bytes")


def decode_name(frame: bytes, kind: str) -> str:
    """Decode a topic or pattern frame as UTF-8 and check it against the topic
    rules (``kind`` is "topic" or "pattern"); raise BAD_TOPIC if it breaks them."""
    if not frame or len(frame) > MAX_TOPIC_BYTES:
        raise ProtocolError(ErrorCode.BAD_TOPIC, f"{kind} must be 1 to {MAX_TOPIC_BYTES} bytes")
    try:
        text = frame.decode("utf-8")
        if kind == "topic":
            validate_topic(text)
        else:
            validate_pattern(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_TOPIC, str(exc)) from None
    return text


def parse_client(frames: Sequence[bytes]) -> ClientCommand:
    """Parse and validate a message a client sent (without the ROUTER identity).

    Raises ``ProtocolError`` with the code the broker replies with.
    """
    if not frames:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "empty message")
    cmd = check_header(frames[0])
    _check_count(cmd, frames, _CLIENT_FRAMES)
    channel = frames[1]
    check_channel(channel)
    if cmd == Cmd.PUBLISH:
        check_ref(frames[2])
        decode_name(frames[3], "topic")
        return Publish(channel, frames[2], frames[3], frames[4])
    if cmd == Cmd.ACK:
        check_ref(frames[2], "token")
        if not frames[2]:
            raise ProtocolError(ErrorCode.BAD_FRAMES, "ACK needs a non-empty token")
        return Ack(channel, frames[2], frames[3])
    if cmd in (Cmd.SUBSCRIBE, Cmd.UNSUBSCRIBE):
        check_ref(frames[2])
        decode_name(frames[3], "pattern")
        klass = Subscribe if cmd == Cmd.SUBSCRIBE else Unsubscribe
        return klass(channel, frames[2], frames[3])
    if cmd == Cmd.HELLO:
        unpack_hello(frames[2])
        return Hello(channel, frames[2])
    check_ref(frames[2])
    return Disconnect(channel, frames[2])


def parse_broker(frames: Sequence[bytes]) -> BrokerCommand:
    """Parse and validate a message the broker sent. Raises ``ProtocolError``."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "empty message")
    cmd = check_header(frames[0])
    _check_count(cmd, frames, _BROKER_FRAMES)
    channel = frames[1]
    if cmd == Cmd.ERROR:
        if channel:
            check_channel(channel)
        check_ref(frames[2])
        if len(frames[3]) != 2:
            raise ProtocolError(ErrorCode.BAD_FRAMES, "ERROR code frame must be 2 bytes")
        try:
            text = frames[4].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_FRAMES, "ERROR text is not UTF-8") from None
        return Error(channel, frames[2], int.from_bytes(frames[3], "big"), text)
    check_channel(channel)
    if cmd == Cmd.DELIVER:
        check_ref(frames[2], "token")
        decode_name(frames[3], "topic")
        return Deliver(channel, frames[2], frames[3], frames[4])
    if cmd == Cmd.ACKED:
        check_ref(frames[2])
        return Acked(channel, frames[2], frames[3])
    if cmd == Cmd.ROUTED:
        check_ref(frames[2])
        if len(frames[3]) != 4:
            raise ProtocolError(ErrorCode.BAD_FRAMES, "ROUTED count frame must be 4 bytes")
        return Routed(channel, frames[2], int.from_bytes(frames[3], "big"))
    if cmd == Cmd.OK:
        check_ref(frames[2])
        return Ok(channel, frames[2])
    unpack_welcome(frames[2])
    return Welcome(channel, frames[2])


# --- bodies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageBody:
    """The decoded body of PUBLISH and DELIVER."""

    id: uuid.UUID
    timestamp: datetime
    headers: dict[str, str]
    payload: bytes


_packer_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _packb(obj: object) -> bytes:
    data: bytes = _packer_pack(obj)
    return data


def pack_message(msg_id: bytes, ts_ns: int, headers: Mapping[str, str], payload: bytes) -> bytes:
    """Body of PUBLISH/DELIVER: msgpack array [id, timestamp, headers, payload].

    ``msg_id`` is 16 bytes; ``ts_ns`` is nanoseconds since the Unix epoch,
    sent as the msgpack Timestamp extension (type -1).
    """
    return _packb([msg_id, msgpack.Timestamp.from_unix_nano(ts_ns), headers, payload])


def _unpack(body: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, timestamp=3, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(
            ErrorCode.BAD_BODY, f"{what} body is not valid msgpack: {exc}"
        ) from None


def unpack_message(body: bytes) -> MessageBody:
    """Decode and validate a PUBLISH/DELIVER body. Extra trailing array
    elements are ignored, so later versions may append fields."""
    obj = _unpack(body, "message")
    if not isinstance(obj, list) or len(obj) < 4:
        raise ProtocolError(ErrorCode.BAD_BODY, "message body must be an array of at least 4")
    msg_id, ts, headers, payload = obj[0], obj[1], obj[2], obj[3]
    if not isinstance(msg_id, bytes) or len(msg_id) != 16:
        raise ProtocolError(ErrorCode.BAD_BODY, "message id must be 16 bytes of bin")
    if not isinstance(ts, datetime):
        raise ProtocolError(ErrorCode.BAD_BODY, "message timestamp must be a Timestamp ext")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ProtocolError(ErrorCode.BAD_BODY, "message headers must be a map of str to str")
    if not isinstance(payload, bytes):
        raise ProtocolError(ErrorCode.BAD_BODY, "message payload must be bin")
    return MessageBody(uuid.UUID(bytes=msg_id), ts, headers, payload)


@dataclass(frozen=True, slots=True)
class AckResult:
    """One subscribing bus's confirmation: counts over its matching subscriptions."""

    delivered: int
    dropped: int
    errors: list[str]


def pack_ack(delivered: int, dropped: int, errors: Sequence[str] = ()) -> bytes:
    """Body of ACK/ACKED: msgpack array [delivered, dropped, [error text, ...]]."""
    return _packb([delivered, dropped, list(errors)])


def unpack_ack(body: bytes) -> AckResult:
    """Decode and validate an ACK/ACKED body."""
    obj = _unpack(body, "ack")
    if not isinstance(obj, list) or len(obj) < 3:
        raise ProtocolError(ErrorCode.BAD_BODY, "ack body must be an array of at least 3")
    delivered, dropped, errors = obj[0], obj[1], obj[2]
    if type(delivered) is not int or type(dropped) is not int or min(delivered, dropped) < 0:
        raise ProtocolError(ErrorCode.BAD_BODY, "ack counts must be non-negative integers")
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise ProtocolError(ErrorCode.BAD_BODY, "ack errors must be an array of str")
    return AckResult(delivered, dropped, errors)


def pack_hello(client: str, **extra: Any) -> bytes:
    """Body of HELLO: a msgpack map with at least ``client`` (name/version text)."""
    return _packb({"client": client, **extra})


def unpack_hello(body: bytes) -> dict[str, Any]:
    """Decode a HELLO body; raise BAD_BODY unless it is a map with str keys."""
    return _unpack_map(body, "HELLO")


def pack_welcome(broker: str, max_message_size: int, **extra: Any) -> bytes:
    """Body of WELCOME: msgpack map with ``broker`` and ``max_message_size``."""
    return _packb({"broker": broker, "max_message_size": max_message_size, **extra})


def unpack_welcome(body: bytes) -> dict[str, Any]:
    """Decode a WELCOME body; ``max_message_size`` must be a positive int."""
    obj = _unpack_map(body, "WELCOME")
    size = obj.get("max_message_size")
    if type(size) is not int or size <= 0:
        raise ProtocolError(ErrorCode.BAD_BODY, "WELCOME max_message_size must be a positive int")
    return obj


def _unpack_map(body: bytes, what: str) -> dict[str, Any]:
    obj = _unpack(body, what)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ProtocolError(ErrorCode.BAD_BODY, f"{what} body must be a map with str keys")
    return obj
