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

import os
import random
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, NamedTuple, TypeAlias

import msgpack  # type: ignore[import-untyped]

from .errors import ProtocolError
from .topics import MAX_TOPIC_BYTES, validate_pattern, validate_topic

__all__ = [
    "MAX_ENTRY_SIDS_BYTES",
    "MAX_REF_BYTES",
    "SIGNATURE",
    "VERSION",
    "Ack",
    "AckResult",
    "Acked",
    "Answer",
    "Ask",
    "Batch",
    "BrokerBatch",
    "BrokerCommand",
    "BrokerHeartbeat",
    "Bye",
    "ClientCommand",
    "Command",
    "Deliver",
    "DeliverBatch",
    "Disconnect",
    "Dropped",
    "Error",
    "ErrorCode",
    "Heartbeat",
    "Hello",
    "MessageBody",
    "Ok",
    "Publish",
    "PublishBatch",
    "Reply",
    "Request",
    "Routed",
    "Stats",
    "StatsReply",
    "Subscribe",
    "Unsubscribe",
    "Welcome",
    "encode",
    "header",
    "message_fields",
    "new_message_id",
    "pack_ack",
    "pack_command_entry",
    "pack_deliver_entry",
    "pack_dropped",
    "pack_hello",
    "pack_message",
    "pack_publish_entry",
    "pack_reply",
    "pack_welcome",
    "parse_broker",
    "parse_client",
    "unpack_ack",
    "unpack_command_entries",
    "unpack_deliver_entries",
    "unpack_dropped",
    "unpack_hello",
    "unpack_message",
    "unpack_publish_entries",
    "unpack_reply",
    "unpack_welcome",
    "uuid_from_bytes",
]

SIGNATURE = b"ZB"
VERSION = 1
CHANNEL_BYTES = 16
MAX_REF_BYTES = 32
SID_BYTES = 4
MAX_QUEUE_BYTES = 64
# A reply token is the broker's 8-byte session number followed by the requester's ref.
SESSION_BYTES = 8
MAX_REQUEST_REF_BYTES = MAX_REF_BYTES - SESSION_BYTES


class Cmd(IntEnum):
    """Command bytes. Client-to-broker commands are below 0x80, replies above."""

    HELLO = 0x01
    SUBSCRIBE = 0x02
    UNSUBSCRIBE = 0x03
    PUBLISH = 0x04
    ACK = 0x05
    DISCONNECT = 0x06
    REQUEST = 0x07
    REPLY = 0x08
    HEARTBEAT = 0x09
    STATS = 0x0A
    PUBLISH_BATCH = 0x0B
    BATCH = 0x0C
    WELCOME = 0x81
    OK = 0x82
    DELIVER = 0x83
    ROUTED = 0x84
    ACKED = 0x85
    ASK = 0x86
    ANSWER = 0x87
    BROKER_HEARTBEAT = 0x88
    BYE = 0x89
    STATS_REPLY = 0x8A
    DROPPED = 0x8B
    DELIVER_BATCH = 0x8C
    BROKER_BATCH = 0x8D
    ERROR = 0x8F


class ErrorCode(IntEnum):
    """Error codes carried by ERROR. 4xx: the peer's fault; 5xx: the broker's."""

    BAD_FRAMES = 400  # wrong frame count, or a frame of the wrong size or encoding
    NOT_JOINED = 403  # a command other than HELLO before HELLO
    UNKNOWN_COMMAND = 405  # the command byte is not one this side accepts
    BAD_TOPIC = 406  # a topic or pattern that breaks the topic rules
    CHANNEL_MISMATCH = 409  # channel frame differs from the channel joined by HELLO
    SID_IN_USE = 412  # SUBSCRIBE reuses an open sid with another pattern or queue
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
H_PUBLISH_BATCH = header(Cmd.PUBLISH_BATCH)
H_DELIVER_BATCH = header(Cmd.DELIVER_BATCH)
H_BATCH = header(Cmd.BATCH)
H_BROKER_BATCH = header(Cmd.BROKER_BATCH)
H_ACK = header(Cmd.ACK)
H_DISCONNECT = header(Cmd.DISCONNECT)
H_REQUEST = header(Cmd.REQUEST)
H_REPLY = header(Cmd.REPLY)
H_ASK = header(Cmd.ASK)
H_ANSWER = header(Cmd.ANSWER)
H_HEARTBEAT = header(Cmd.HEARTBEAT)
H_STATS = header(Cmd.STATS)
H_BROKER_HEARTBEAT = header(Cmd.BROKER_HEARTBEAT)
H_BYE = header(Cmd.BYE)
H_STATS_REPLY = header(Cmd.STATS_REPLY)
H_DROPPED = header(Cmd.DROPPED)
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
    """Client opens subscription ``sid`` (4 bytes, chosen by the client) for
    topics matching ``pattern``; a non-empty ``queue`` joins the queue group of
    that name and pattern. Answered by OK."""

    channel: bytes
    ref: bytes
    sid: bytes
    pattern: bytes
    queue: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Client closes the subscriptions in ``sids`` (4 bytes each); answered by OK."""

    channel: bytes
    ref: bytes
    sids: bytes


@dataclass(frozen=True, slots=True)
class Publish:
    """Client publishes; non-empty ``ref`` asks for ROUTED and ACKED replies."""

    channel: bytes
    ref: bytes
    topic: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """Client asks the subscribers of ``topic`` for a reply; ``ref`` is required.
    Answered by ROUTED (how many subscribers were asked), then ANSWERs."""

    channel: bytes
    ref: bytes
    topic: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """Subscriber answers an ASK that carried ``token``; body from ``pack_reply``."""

    channel: bytes
    token: bytes
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
    """Broker hands a message to a subscriber for the subscriptions in ``sids``
    (4 bytes each). Non-empty ``token`` asks for one ACK covering them all."""

    channel: bytes
    token: bytes
    topic: bytes
    body: bytes
    sids: bytes


@dataclass(frozen=True, slots=True)
class Ask:
    """Broker hands a request to a subscriber for the subscriptions in ``sids``;
    a REPLY must carry ``token``."""

    channel: bytes
    token: bytes
    topic: bytes
    body: bytes
    sids: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """Broker forwards one REPLY body to the requester of ``ref``."""

    channel: bytes
    ref: bytes
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


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Client tells the broker it is alive (only if it asked for heartbeats in HELLO)."""

    channel: bytes


@dataclass(frozen=True, slots=True)
class PublishBatch:
    """Client publishes several messages unconfirmed, as the PUBLISHes with an
    empty ref in order; ``entries`` holds them back to back (see
    ``pack_publish_entry``). Only to a broker whose WELCOME offered ``batch``."""

    channel: bytes
    entries: bytes


@dataclass(frozen=True, slots=True)
class DeliverBatch:
    """Broker delivers several unconfirmed messages, as the DELIVERs with an
    empty token in order (see ``pack_deliver_entry``). Only to a client whose
    HELLO asked for ``batch``."""

    channel: bytes
    entries: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Client sends several PUBLISH, ACK, REQUEST or REPLY commands in one
    message, each meaning exactly what it would alone (see
    ``pack_command_entry``). Only to a broker whose WELCOME offered
    ``batch_commands``."""

    channel: bytes
    entries: bytes


@dataclass(frozen=True, slots=True)
class BrokerBatch:
    """Broker sends several DELIVER, ROUTED, ACKED, ASK or ANSWER commands in
    one message. Only to a client whose HELLO asked for ``batch_commands``."""

    channel: bytes
    entries: bytes


@dataclass(frozen=True, slots=True)
class Stats:
    """Anyone asks for the broker's counters; no HELLO needed. ``channel`` may be empty."""

    channel: bytes
    ref: bytes


@dataclass(frozen=True, slots=True)
class BrokerHeartbeat:
    """Broker tells a client that asked for heartbeats that it is alive."""

    channel: bytes


@dataclass(frozen=True, slots=True)
class Bye:
    """Broker is shutting down: the client should reconnect later."""

    channel: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """Broker tells a slow client how many messages it could not queue for it,
    per subscription: ``counts`` packs (sid, uint32 count) pairs, 8 bytes each."""

    channel: bytes
    counts: bytes


def pack_dropped(counts: Mapping[bytes, int]) -> bytes:
    """The counts frame of DROPPED from {sid: count}."""
    return b"".join(sid + min(n, 0xFFFFFFFF).to_bytes(4, "big") for sid, n in counts.items())


def unpack_dropped(frame: bytes) -> dict[bytes, int]:
    """{sid: count} from the counts frame of DROPPED; BAD_FRAMES if malformed."""
    if not frame or len(frame) % 8:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "DROPPED counts frame must be 8-byte pairs")
    return {
        frame[i : i + 4]: int.from_bytes(frame[i + 4 : i + 8], "big")
        for i in range(0, len(frame), 8)
    }


@dataclass(frozen=True, slots=True)
class StatsReply:
    """Broker answers STATS; ``body`` is a msgpack map of counters."""

    channel: bytes
    ref: bytes
    body: bytes


ClientCommand: TypeAlias = (
    Hello
    | Subscribe
    | Unsubscribe
    | Publish
    | Ack
    | Disconnect
    | Request
    | Reply
    | Heartbeat
    | Stats
    | PublishBatch
    | Batch
)
BrokerCommand: TypeAlias = (
    Welcome
    | Ok
    | Deliver
    | Routed
    | Acked
    | Ask
    | Answer
    | Error
    | BrokerHeartbeat
    | Bye
    | StatsReply
    | Dropped
    | DeliverBatch
    | BrokerBatch
)
Command: TypeAlias = ClientCommand | BrokerCommand


def encode(cmd: Command) -> list[bytes]:
    """The frames of ``cmd``, header first. No validation: build commands from
    valid values, or let the receiving side's ``parse_*`` refuse them."""
    match cmd:
        case Publish(channel, ref, topic, body):
            return [H_PUBLISH, channel, ref, topic, body]
        case PublishBatch(channel, entries):
            return [H_PUBLISH_BATCH, channel, entries]
        case DeliverBatch(channel, entries):
            return [H_DELIVER_BATCH, channel, entries]
        case Batch(channel, entries):
            return [H_BATCH, channel, entries]
        case BrokerBatch(channel, entries):
            return [H_BROKER_BATCH, channel, entries]
        case Deliver(channel, token, topic, body, sids):
            return [H_DELIVER, channel, token, topic, body, sids]
        case Request(channel, ref, topic, body):
            return [H_REQUEST, channel, ref, topic, body]
        case Reply(channel, token, body):
            return [H_REPLY, channel, token, body]
        case Ask(channel, token, topic, body, sids):
            return [H_ASK, channel, token, topic, body, sids]
        case Answer(channel, ref, body):
            return [H_ANSWER, channel, ref, body]
        case Ack(channel, token, body):
            return [H_ACK, channel, token, body]
        case Acked(channel, ref, body):
            return [H_ACKED, channel, ref, body]
        case Routed(channel, ref, count):
            return [H_ROUTED, channel, ref, count.to_bytes(4, "big")]
        case Subscribe(channel, ref, sid, pattern, queue):
            return [H_SUBSCRIBE, channel, ref, sid, pattern, queue]
        case Unsubscribe(channel, ref, sids):
            return [H_UNSUBSCRIBE, channel, ref, sids]
        case Ok(channel, ref):
            return [H_OK, channel, ref]
        case Hello(channel, body):
            return [H_HELLO, channel, body]
        case Welcome(channel, body):
            return [H_WELCOME, channel, body]
        case Disconnect(channel, ref):
            return [H_DISCONNECT, channel, ref]
        case Heartbeat(channel):
            return [H_HEARTBEAT, channel]
        case Stats(channel, ref):
            return [H_STATS, channel, ref]
        case BrokerHeartbeat(channel):
            return [H_BROKER_HEARTBEAT, channel]
        case Bye(channel):
            return [H_BYE, channel]
        case StatsReply(channel, ref, body):
            return [H_STATS_REPLY, channel, ref, body]
        case Dropped(channel, counts):
            return [H_DROPPED, channel, counts]
        case Error(channel, ref, code, text):
            return [H_ERROR, channel, ref, code.to_bytes(2, "big"), text.encode("utf-8")]
    raise TypeError(f"not a zmqbus command: {cmd!r}")


# --- parsing ----------------------------------------------------------------

# Frame counts including the header frame.
_CLIENT_FRAMES = {
    Cmd.HELLO: 3,
    Cmd.SUBSCRIBE: 6,
    Cmd.UNSUBSCRIBE: 4,
    Cmd.PUBLISH: 5,
    Cmd.ACK: 4,
    Cmd.DISCONNECT: 3,
    Cmd.REQUEST: 5,
    Cmd.REPLY: 4,
    Cmd.HEARTBEAT: 2,
    Cmd.STATS: 3,
    Cmd.PUBLISH_BATCH: 3,
    Cmd.BATCH: 3,
}
_BROKER_FRAMES = {
    Cmd.WELCOME: 3,
    Cmd.OK: 3,
    Cmd.DELIVER: 6,
    Cmd.ROUTED: 4,
    Cmd.ACKED: 4,
    Cmd.ASK: 6,
    Cmd.ANSWER: 4,
    Cmd.ERROR: 5,
    Cmd.BROKER_HEARTBEAT: 2,
    Cmd.BYE: 2,
    Cmd.STATS_REPLY: 4,
    Cmd.DROPPED: 3,
    Cmd.DELIVER_BATCH: 3,
    Cmd.BROKER_BATCH: 3,
}

# Frame counts by header frame, for a receiver that reads a known command's
# frames without checking each one's more-flag (see _wire.recv_counted).
BROKER_FRAME_COUNTS: dict[bytes, int] = {header(c): n for c, n in _BROKER_FRAMES.items()}


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


def check_request_ref(frame: bytes) -> None:
    """Raise BAD_FRAMES unless a REQUEST ref is 1 to MAX_REQUEST_REF_BYTES long
    (the broker prefixes it with its session number to make the reply token)."""
    if not frame or len(frame) > MAX_REQUEST_REF_BYTES:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES, f"REQUEST ref must be 1 to {MAX_REQUEST_REF_BYTES} bytes"
        )


def check_ref(frame: bytes, name: str = "ref") -> None:
    """Raise BAD_FRAMES unless ``frame`` is at most MAX_REF_BYTES long."""
    if len(frame) > MAX_REF_BYTES:
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"{name} frame longer than {MAX_REF_BYTES} bytes")


def check_sids(frame: bytes, *, allow_empty: bool = False) -> None:
    """Raise BAD_FRAMES unless ``frame`` is a whole number of 4-byte sids
    (at least one, unless ``allow_empty``)."""
    if len(frame) % SID_BYTES or (not frame and not allow_empty):
        raise ProtocolError(
            ErrorCode.BAD_FRAMES, f"sids frame must be a non-empty multiple of {SID_BYTES} bytes"
        )


def split_sids(frame: bytes) -> list[bytes]:
    """The 4-byte sids packed in ``frame``."""
    return [frame[i : i + SID_BYTES] for i in range(0, len(frame), SID_BYTES)]


def check_queue(frame: bytes) -> None:
    """Raise BAD_TOPIC unless ``frame`` is empty or a valid queue group name:
    1 to 64 bytes of UTF-8 following the token rules of a topic (dots allowed)."""
    if not frame:
        return
    if len(frame) > MAX_QUEUE_BYTES:
        raise ProtocolError(ErrorCode.BAD_TOPIC, f"queue name longer than {MAX_QUEUE_BYTES} bytes")
    try:
        validate_topic(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_TOPIC, f"bad queue name: {exc}") from None


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
    if cmd == Cmd.STATS:
        if channel:
            check_channel(channel)
        check_ref(frames[2])
        return Stats(channel, frames[2])
    check_channel(channel)
    if cmd == Cmd.PUBLISH:
        check_ref(frames[2])
        decode_name(frames[3], "topic")
        return Publish(channel, frames[2], frames[3], frames[4])
    if cmd == Cmd.PUBLISH_BATCH:
        for topic, _, _ in unpack_publish_entries(frames[2]):
            decode_name(topic, "topic")
        return PublishBatch(channel, frames[2])
    if cmd == Cmd.BATCH:
        # The envelope only: each entry is checked when it is handled, as alone.
        unpack_command_entries(frames[2], channel, CLIENT_ENTRY_FRAMES)
        return Batch(channel, frames[2])
    if cmd == Cmd.REQUEST:
        check_request_ref(frames[2])
        decode_name(frames[3], "topic")
        return Request(channel, frames[2], frames[3], frames[4])
    if cmd == Cmd.ACK:
        check_ref(frames[2], "token")
        if not frames[2]:
            raise ProtocolError(ErrorCode.BAD_FRAMES, "ACK needs a non-empty token")
        return Ack(channel, frames[2], frames[3])
    if cmd == Cmd.REPLY:
        if not SESSION_BYTES < len(frames[2]) <= MAX_REF_BYTES:
            raise ProtocolError(
                ErrorCode.BAD_FRAMES,
                f"REPLY token must be {SESSION_BYTES + 1} to {MAX_REF_BYTES} bytes",
            )
        return Reply(channel, frames[2], frames[3])
    if cmd == Cmd.SUBSCRIBE:
        check_ref(frames[2])
        if len(frames[3]) != SID_BYTES:
            raise ProtocolError(ErrorCode.BAD_FRAMES, f"sid frame must be {SID_BYTES} bytes")
        decode_name(frames[4], "pattern")
        check_queue(frames[5])
        return Subscribe(channel, frames[2], frames[3], frames[4], frames[5])
    if cmd == Cmd.UNSUBSCRIBE:
        check_ref(frames[2])
        check_sids(frames[3])
        return Unsubscribe(channel, frames[2], frames[3])
    if cmd == Cmd.HELLO:
        unpack_hello(frames[2])
        return Hello(channel, frames[2])
    if cmd == Cmd.HEARTBEAT:
        return Heartbeat(channel)
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
    if cmd == Cmd.STATS_REPLY:
        if channel:
            check_channel(channel)
        check_ref(frames[2])
        _unpack_map(frames[3], "STATS_REPLY")
        return StatsReply(channel, frames[2], frames[3])
    check_channel(channel)
    if cmd == Cmd.BROKER_HEARTBEAT:
        return BrokerHeartbeat(channel)
    if cmd == Cmd.BYE:
        return Bye(channel)
    if cmd == Cmd.DROPPED:
        unpack_dropped(frames[2])
        return Dropped(channel, frames[2])
    if cmd == Cmd.DELIVER_BATCH:
        for _, topic, _ in unpack_deliver_entries(frames[2]):
            decode_name(topic, "topic")
        return DeliverBatch(channel, frames[2])
    if cmd == Cmd.BROKER_BATCH:
        unpack_command_entries(frames[2], channel, BROKER_ENTRY_FRAMES)
        return BrokerBatch(channel, frames[2])
    if cmd in (Cmd.DELIVER, Cmd.ASK):
        check_ref(frames[2], "token")
        decode_name(frames[3], "topic")
        check_sids(frames[5])
        if cmd == Cmd.ASK:
            if not frames[2]:
                raise ProtocolError(ErrorCode.BAD_FRAMES, "ASK needs a non-empty token")
            return Ask(channel, frames[2], frames[3], frames[4], frames[5])
        return Deliver(channel, frames[2], frames[3], frames[4], frames[5])
    if cmd in (Cmd.ACKED, Cmd.ANSWER):
        check_ref(frames[2])
        klass = Acked if cmd == Cmd.ACKED else Answer
        return klass(channel, frames[2], frames[3])
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


# --- batch entries ----------------------------------------------------------
# publish-entry = topic-length(2) topic body-length(4) body
# deliver-entry = sids-length(2) sids publish-entry
# Lengths are unsigned big-endian. Framing only: topic rules and body size are
# the receiver's checks, as for the single commands.

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def pack_publish_entry(topic: bytes, body: bytes) -> bytes:
    """One entry of a PUBLISH_BATCH frame: a message as PUBLISH would carry it."""
    return _U16.pack(len(topic)) + topic + _U32.pack(len(body)) + body


# The most sids one deliver entry can name (its sids-length is 16 bits): a
# delivery to more subscriptions of one peer goes as DELIVER instead.
MAX_ENTRY_SIDS_BYTES = 0xFFFF // SID_BYTES * SID_BYTES


def pack_deliver_entry(sids: bytes, entry: bytes) -> bytes:
    """One entry of a DELIVER_BATCH frame: ``sids`` before a publish entry.
    ``ValueError`` if ``sids`` is over ``MAX_ENTRY_SIDS_BYTES``."""
    if len(sids) > MAX_ENTRY_SIDS_BYTES:
        raise ValueError(
            f"a deliver entry names at most {MAX_ENTRY_SIDS_BYTES // SID_BYTES} sids, "
            f"got {len(sids) // SID_BYTES}"
        )
    return _U16.pack(len(sids)) + sids + entry


def _bad_batch(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAMES, f"malformed batch: {what}")


def unpack_publish_entries(frame: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The entries of a PUBLISH_BATCH frame as (topic, body, the whole entry);
    BAD_FRAMES if the frame is empty or not exactly a run of entries."""
    out: list[tuple[bytes, bytes, bytes]] = []
    end = len(frame)
    if not end:
        raise _bad_batch("no entries")
    u16, u32 = _U16.unpack_from, _U32.unpack_from
    i = 0
    try:
        while i < end:
            start = i
            (tlen,) = u16(frame, i)
            i += 2
            topic = frame[i : i + tlen]
            i += tlen
            (blen,) = u32(frame, i)
            i += 4
            body = frame[i : i + blen]
            i += blen
            if len(body) != blen or not tlen:
                raise _bad_batch("an entry is truncated or has an empty topic")
            out.append((topic, body, frame[start:i]))
    except struct.error:
        raise _bad_batch("an entry is truncated") from None
    return out


def unpack_deliver_entries(frame: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The entries of a DELIVER_BATCH frame as (sids, topic, body); BAD_FRAMES
    if the frame is empty, not exactly a run of entries, or has bad sids."""
    out: list[tuple[bytes, bytes, bytes]] = []
    append = out.append
    end = len(frame)
    if not end:
        raise _bad_batch("no entries")
    u16, u32 = _U16.unpack_from, _U32.unpack_from
    i = 0
    try:
        while i < end:
            slen = u16(frame, i)[0]
            j = i + 2 + slen
            tlen = u16(frame, j)[0]
            k = j + 2 + tlen
            blen = u32(frame, k)[0]
            i = k + 4 + blen
            if i > end or not tlen or not slen or slen & 3:
                raise _bad_batch("an entry is truncated, names no sid or has an empty topic")
            append((frame[j - slen : j], frame[j + 2 : k], frame[k + 4 : i]))
    except struct.error:
        raise _bad_batch("an entry is truncated") from None
    return out


# command-entry = command(1) 1*(frame-length(4) frame)
# One entry of BATCH or BROKER_BATCH: a command's byte, then each of its frames
# after the channel frame, as many as the command has.

# Commands a BATCH (client) / BROKER_BATCH (broker) may carry, with the number
# of frames each entry holds (the command's frame count less header and channel).
CLIENT_ENTRY_FRAMES: dict[int, int] = {
    Cmd.PUBLISH: 3,
    Cmd.ACK: 2,
    Cmd.REQUEST: 3,
    Cmd.REPLY: 2,
}
BROKER_ENTRY_FRAMES: dict[int, int] = {
    Cmd.DELIVER: 4,
    Cmd.ROUTED: 2,
    Cmd.ACKED: 2,
    Cmd.ASK: 4,
    Cmd.ANSWER: 2,
}
_HEADERS = {int(c): header(c) for c in Cmd}
_COMMAND_OF = {header(c): bytes((c,)) for c in Cmd}


def pack_command_entry(frames: Sequence[bytes]) -> bytes:
    """One entry of a BATCH or BROKER_BATCH frame: the command of ``frames`` (a
    whole message, header and channel first) and its frames after the channel."""
    # Unrolled for the entry sizes that exist: this runs once per batched message.
    pack = _U32.pack
    n = len(frames)
    if n == 4:
        a, b = frames[2], frames[3]
        return b"".join((_COMMAND_OF[frames[0]], pack(len(a)), a, pack(len(b)), b))
    if n == 5:
        a, b, c = frames[2], frames[3], frames[4]
        return b"".join((_COMMAND_OF[frames[0]], pack(len(a)), a, pack(len(b)), b, pack(len(c)), c))
    parts = [frames[0][3:4]]
    for f in frames[2:]:
        parts.append(pack(len(f)))
        parts.append(f)
    return b"".join(parts)


def unpack_command_entries(
    frame: bytes, channel: bytes, allowed: Mapping[int, int]
) -> list[list[bytes]]:
    """The entries of a BATCH or BROKER_BATCH frame as whole messages (header,
    ``channel``, frames), each to be handled as if it had arrived alone.
    BAD_FRAMES if the frame is empty, not exactly a run of entries, or holds a
    command not in ``allowed`` (command byte -> frames per entry)."""
    out: list[list[bytes]] = []
    end = len(frame)
    if not end:
        raise _bad_batch("no entries")
    u32 = _U32.unpack_from
    append = out.append
    headers = _HEADERS
    i = 0
    try:
        while i < end:
            cmd = frame[i]
            n = allowed.get(cmd)
            if n is None:
                raise _bad_batch(f"command 0x{cmd:02x} cannot be batched")
            i += 5
            j = i + u32(frame, i - 4)[0]
            a = frame[i:j]
            i = j + 4
            j = i + u32(frame, j)[0]
            if n == 2:
                append([headers[cmd], channel, a, frame[i:j]])
                i = j
            else:
                msg = [headers[cmd], channel, a, frame[i:j]]
                for _ in range(n - 2):
                    i = j + 4
                    j = i + u32(frame, j)[0]
                    msg.append(frame[i:j])
                i = j
                append(msg)
            if i > end:
                raise _bad_batch("an entry is truncated")
    except struct.error:
        raise _bad_batch("an entry is truncated") from None
    return out


# --- bodies -----------------------------------------------------------------


class MessageBody(NamedTuple):
    """The decoded body of PUBLISH and DELIVER (a tuple: the cheapest to build)."""

    id: uuid.UUID
    timestamp: datetime
    headers: dict[str, str]
    payload: bytes


_packer_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _packb(obj: object) -> bytes:
    data: bytes = _packer_pack(obj)
    return data


# Message ids come from a PRNG seeded by the OS and reseeded in every forked
# child: as unique as uuid4() for ids (which need no secrecy) at a tenth of the
# cost of an os.urandom() call per message.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))
_id_bits = _ids.getrandbits
# Version 4 and the RFC 4122 variant, set on a random 128-bit number.
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_message_id() -> bytes:
    """16 random bytes laid out as a version-4 UUID (cheaper than ``uuid.uuid4()``)."""
    return ((_id_bits(128) & _V4_CLEAR) | _V4_SET).to_bytes(16, "big")


_new_uuid = object.__new__
_set_field = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def uuid_from_bytes(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` for 16 bytes, without its argument parsing
    (a third of the cost on the receive path); the same object state."""
    u = _new_uuid(uuid.UUID)
    _set_field(u, "int", int.from_bytes(raw, "big"))
    _set_field(u, "is_safe", _SAFE_UNKNOWN)
    return u


# The common body is laid out by hand, byte for byte what msgpack would pack:
# msgpack packs a Timestamp through its Python class (from_unix_nano, then
# to_bytes), a third of the cost of packing a body.
_BIN8 = [b"\xc4" + bytes([n]) for n in range(256)]
_NS = 1_000_000_000
_SEC64 = 1 << 34  # seconds that fit the timestamp 64 form


def _bin_head(n: int) -> bytes:
    if n < 256:
        return _BIN8[n]
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def pack_message(msg_id: bytes, ts_ns: int, headers: Mapping[str, str], payload: bytes) -> bytes:
    """Body of PUBLISH/DELIVER: msgpack array [id, timestamp, headers, payload].

    ``msg_id`` is 16 bytes; ``ts_ns`` is nanoseconds since the Unix epoch,
    sent as the msgpack Timestamp extension (type -1) in its shortest form.
    """
    sec, ns = divmod(ts_ns, _NS)
    if ns and 0 <= sec < _SEC64 and len(msg_id) == 16:
        return b"".join(
            (
                b"\x94\xc4\x10",
                msg_id,
                b"\xd7\xff",
                ((ns << 34) | sec).to_bytes(8, "big"),
                _packb(headers) if headers else b"\x80",
                _bin_head(len(payload)),
                payload,
            )
        )
    return _packb([msg_id, msgpack.Timestamp.from_unix_nano(ts_ns), headers, payload])


_unpackb = msgpack.unpackb


def _unpack(body: bytes, what: str) -> Any:
    try:
        return _unpackb(body, raw=False, timestamp=3, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(
            ErrorCode.BAD_BODY, f"{what} body is not valid msgpack: {exc}"
        ) from None


def unpack_message(body: bytes) -> MessageBody:
    """Decode and validate a PUBLISH/DELIVER body. Extra trailing array
    elements are ignored, so later versions may append fields."""
    return _message_fields(_unpack(body, "message"))


def message_fields(body: bytes) -> tuple[bytes, datetime, dict[str, str], bytes]:
    """``unpack_message`` as a plain tuple (id as its 16 raw bytes, timestamp,
    headers, payload): the receive path's form, which leaves building the
    ``uuid.UUID`` to whoever reads the id."""
    # One call per delivered message: the common body (no headers) is checked
    # inline, anything else by _fields, which also words the errors. Decoding here
    # rather than through _unpack saves ~0.15 us of its 1.4 us.
    try:
        obj = _unpackb(body, raw=False, timestamp=3, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(
            ErrorCode.BAD_BODY, f"message body is not valid msgpack: {exc}"
        ) from None
    if type(obj) is list and len(obj) >= 4:
        msg_id, ts, headers, payload = obj[0], obj[1], obj[2], obj[3]
        if (
            type(msg_id) is bytes
            and len(msg_id) == 16
            and type(ts) is datetime
            and type(headers) is dict
            and not headers
            and type(payload) is bytes
        ):
            return msg_id, ts, headers, payload
    return _fields(obj)


def _fields(obj: Any) -> tuple[bytes, datetime, dict[str, str], bytes]:
    if type(obj) is not list or len(obj) < 4:
        raise ProtocolError(ErrorCode.BAD_BODY, "message body must be an array of at least 4")
    msg_id, ts, headers, payload = obj[0], obj[1], obj[2], obj[3]
    if type(msg_id) is not bytes or len(msg_id) != 16:
        raise ProtocolError(ErrorCode.BAD_BODY, "message id must be 16 bytes of bin")
    if type(ts) is not datetime:
        raise ProtocolError(ErrorCode.BAD_BODY, "message timestamp must be a Timestamp ext")
    if type(headers) is not dict:
        raise ProtocolError(ErrorCode.BAD_BODY, "message headers must be a map of str to str")
    if headers:  # most have none: no items view to allocate (and to count towards a GC pass)
        for k, v in headers.items():
            if type(k) is not str or type(v) is not str:
                raise ProtocolError(
                    ErrorCode.BAD_BODY, "message headers must be a map of str to str"
                )
    if type(payload) is not bytes:
        raise ProtocolError(ErrorCode.BAD_BODY, "message payload must be bin")
    return msg_id, ts, headers, payload


def _message_fields(obj: Any) -> MessageBody:
    msg_id, ts, headers, payload = _fields(obj)
    return MessageBody(uuid_from_bytes(msg_id), ts, headers, payload)


def pack_reply(
    msg_id: bytes,
    ts_ns: int,
    headers: Mapping[str, str],
    payload: bytes,
    error: str | None = None,
) -> bytes:
    """Body of REPLY/ANSWER: the message body array with a fifth element,
    nil for a reply or the error text of a responder that failed."""
    return _packb([msg_id, msgpack.Timestamp.from_unix_nano(ts_ns), headers, payload, error])


def unpack_reply(body: bytes) -> tuple[MessageBody, str | None]:
    """Decode and validate a REPLY/ANSWER body: (message fields, error text or None)."""
    obj = _unpack(body, "reply")
    msg = _message_fields(obj)
    error = obj[4] if len(obj) > 4 else None
    if error is not None and not isinstance(error, str):
        raise ProtocolError(ErrorCode.BAD_BODY, "reply error must be nil or str")
    return msg, error


@dataclass(frozen=True, slots=True)
class AckResult:
    """One subscribing bus's confirmation: counts over its matching subscriptions."""

    delivered: int
    dropped: int
    errors: list[str]


def pack_ack(delivered: int, dropped: int, errors: Sequence[str] = ()) -> bytes:
    """Body of ACK/ACKED: msgpack array [delivered, dropped, [error text, ...]]."""
    if errors:
        return _packb([delivered, dropped, list(errors)])
    # Every confirmation of a queued message is the same few octets: encode each once.
    key = (delivered, dropped)
    body = _ACK_BODIES.get(key)
    if body is None:
        body = _packb([delivered, dropped, []])
        if len(_ACK_BODIES) < 256:
            _ACK_BODIES[key] = body
    return body


_ACK_BODIES: dict[tuple[int, int], bytes] = {}


# Confirmations without errors repeat ([1, 0, []] above all): decoded once each.
# Their AckResults are shared, so nobody may change one.
_ACK_CACHE: dict[bytes, AckResult] = {}


def unpack_ack(body: bytes) -> AckResult:
    """Decode and validate an ACK/ACKED body."""
    hit = _ACK_CACHE.get(body)
    if hit is not None:
        return hit
    ack = _unpack_ack(body)
    if not ack.errors and len(_ACK_CACHE) < 256:
        _ACK_CACHE[body] = ack
    return ack


def _unpack_ack(body: bytes) -> AckResult:
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
    """Decode a HELLO body; raise BAD_BODY unless it is a map with str keys, an
    optional ``heartbeat`` (milliseconds, a non-negative int), and optional
    ``batch`` and ``batch_commands`` (booleans: the client takes DELIVER_BATCH,
    BROKER_BATCH)."""
    obj = _unpack_map(body, "HELLO")
    _check_heartbeat(obj, "HELLO")
    _check_batch(obj, "HELLO")
    return obj


def _check_batch(obj: dict[str, Any], what: str) -> None:
    for key in ("batch", "batch_commands"):
        if type(obj.get(key, False)) is not bool:
            raise ProtocolError(ErrorCode.BAD_BODY, f"{what} {key} must be a boolean")


def _check_heartbeat(obj: dict[str, Any], what: str) -> None:
    beat = obj.get("heartbeat", 0)
    if type(beat) is not int or beat < 0:
        raise ProtocolError(ErrorCode.BAD_BODY, f"{what} heartbeat must be a non-negative int (ms)")


def pack_stats(stats: Mapping[str, Any]) -> bytes:
    """Body of STATS_REPLY: a msgpack map (str keys) of the broker's counters."""
    # msgpack map keys must be str on this wire: error codes become their decimal text.
    out = dict(stats)
    errors = out.get("errors")
    if isinstance(errors, Mapping):
        out["errors"] = {str(k): v for k, v in errors.items()}
    return _packb(out)


def unpack_stats(body: bytes) -> dict[str, Any]:
    """Decode a STATS_REPLY body."""
    return _unpack_map(body, "STATS_REPLY")


def pack_welcome(broker: str, max_message_size: int, **extra: Any) -> bytes:
    """Body of WELCOME: msgpack map with ``broker`` and ``max_message_size``."""
    return _packb({"broker": broker, "max_message_size": max_message_size, **extra})


def unpack_welcome(body: bytes) -> dict[str, Any]:
    """Decode a WELCOME body; ``max_message_size`` must be a positive int."""
    obj = _unpack_map(body, "WELCOME")
    _check_heartbeat(obj, "WELCOME")
    _check_batch(obj, "WELCOME")
    size = obj.get("max_message_size")
    if type(size) is not int or size <= 0:
        raise ProtocolError(ErrorCode.BAD_BODY, "WELCOME max_message_size must be a positive int")
    return obj


def _unpack_map(body: bytes, what: str) -> dict[str, Any]:
    obj = _unpack(body, what)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ProtocolError(ErrorCode.BAD_BODY, f"{what} body must be a map with str keys")
    return obj
