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

import functools
import os
import random
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import IntEnum, StrEnum
from operator import attrgetter
from typing import Any, NamedTuple, TypeAlias, cast

import msgpack  # type: ignore[import-untyped]

from ._fastpath import twin, uuid_from_bytes
from .errors import ProtocolError
from .topics import MAX_TOPIC_BYTES, validate_pattern, validate_topic

__all__ = [
    "HEARTBEAT_MAX_MS",
    "HEARTBEAT_MIN_MS",
    "LAYOUTS",
    "MAX_BATCH_ENTRIES",
    "MAX_ENTRY_SIDS_BYTES",
    "MAX_FRAMES",
    "MAX_MESSAGE_SIZE",
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
    "Direction",
    "Disconnect",
    "Dropped",
    "Error",
    "ErrorCode",
    "Field",
    "Frame",
    "Heartbeat",
    "Hello",
    "Layout",
    "Length",
    "MessageBody",
    "Ok",
    "Publish",
    "PublishBatch",
    "Reply",
    "Request",
    "Routed",
    "Size",
    "Stats",
    "StatsReply",
    "Subscribe",
    "Unsubscribe",
    "Welcome",
    "encode",
    "field_check",
    "header",
    "message_fields",
    "new_message_id",
    "pack_ack",
    "pack_command_entry",
    "pack_deliver_entry",
    "pack_dropped",
    "pack_dropped_sets",
    "pack_hello",
    "pack_message",
    "pack_publish_entry",
    "pack_reply",
    "pack_unconfirmed_deliver_entry",
    "pack_welcome",
    "parse_broker",
    "parse_client",
    "unpack_ack",
    "unpack_batch",
    "unpack_broker_batch",
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
# A reply token is the requester's 8-byte session number, a 16-byte tag that the
# broker alone can make (it binds the token to the peer it was sent to), and
# the requester's ref: 32 octets at most, as every ref.
SESSION_BYTES = 8
# A stream's name: 1 to this many octets of ASCII letters, digits, "_" and "-".
MAX_STREAM_NAME_BYTES = 64
REPLY_TAG_BYTES = 16
MAX_REQUEST_REF_BYTES = MAX_REF_BYTES - SESSION_BYTES - REPLY_TAG_BYTES


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
    STREAM = 0x0D
    CONSUME = 0x0E
    STREAM_ACK = 0x0F
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
    STREAM_REPLY = 0x90
    STORED = 0x91
    STREAM_MSG = 0x92


class ErrorCode(IntEnum):
    """Error codes carried by ERROR. 4xx: the peer's fault; 5xx: the broker's."""

    BAD_FRAMES = 400  # wrong frame count, or a frame of the wrong size or encoding
    PERMISSION_DENIED = 401  # the connection's user may not do this
    NOT_FOUND = 404  # no such stream, consumer or stored message
    NOT_JOINED = 403  # a command other than HELLO before HELLO
    UNKNOWN_COMMAND = 405  # the command byte is not one this side accepts
    BAD_TOPIC = 406  # a topic or pattern that breaks the topic rules
    CHANNEL_MISMATCH = 409  # channel frame differs from the channel joined by HELLO
    CONFLICT = 410  # a stream or consumer of that name exists otherwise, or subjects overlap
    SID_IN_USE = 412  # SUBSCRIBE reuses an open sid with another pattern or queue
    TOO_LARGE = 413  # the message exceeds the broker's max_message_size
    BAD_BODY = 422  # a msgpack body the receiver must decode is invalid
    LIMIT_REACHED = 429  # the peer's (or its channel's) share of a broker limit is used up
    INTERNAL = 500  # the broker failed; the request may be retried
    CAPACITY = 503  # the broker is full (peers or channels); retry later
    VERSION_NOT_SUPPORTED = 505  # unknown signature or protocol version
    STORE_FAILED = 507  # the broker's store failed (disk full, corrupt); retry later


class AckKind(IntEnum):
    """What STREAM_ACK says of a stream message."""

    ACK = 1  # done: never deliver it again
    NAK = 2  # failed: deliver it again (after the delay, if given)
    PROGRESS = 3  # still working on it: its ack_wait starts again
    TERM = 4  # never deliver it again, and do not count it done


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
H_STREAM = header(Cmd.STREAM)
H_CONSUME = header(Cmd.CONSUME)
H_STREAM_ACK = header(Cmd.STREAM_ACK)
H_STREAM_REPLY = header(Cmd.STREAM_REPLY)
H_STORED = header(Cmd.STORED)
H_STREAM_MSG = header(Cmd.STREAM_MSG)


# --- layouts ----------------------------------------------------------------
# One declarative layout per command: its byte, its direction, and its frames
# in order, each with a field type and a size rule. The frame counts, the
# batch-entry tables, the named frame indices, encode() and the checks of
# parse_client/parse_broker all come from LAYOUTS; tests/test_layouts.py checks
# it against the command tables of docs/protocol.md. A new command is one more
# layout (and its dataclass, named after it) plus its handler.


class Direction(StrEnum):
    """Who sends a command, worded as in the headings of docs/protocol.md."""

    CLIENT = "client → broker"
    BROKER = "broker → client"


class Field(StrEnum):
    """Field types: what a frame holds, and so which content check applies."""

    HEADER = "header"
    CHANNEL = "channel"
    REF = "ref"
    TOKEN = "token"
    REPLY_TOKEN = "reply token"
    SID = "sid"
    SIDS = "sids"
    TOPIC = "topic"
    PATTERN = "pattern"
    QUEUE = "queue"
    COUNT = "count"  # unsigned, big endian
    CODE = "code"  # unsigned, big endian
    RETRY = "retry-after"  # milliseconds, unsigned, big endian; empty: none
    TEXT = "text"  # UTF-8
    MESSAGE_BODY = "message body"
    REPLY_BODY = "reply body"
    ACK_BODY = "ACK body"
    HELLO_BODY = "HELLO body"
    WELCOME_BODY = "WELCOME body"
    STATS_BODY = "STATS_REPLY body"
    STREAM_BODY = "stream request body"  # msgpack map, str keys
    STREAM_REPLY_BODY = "stream reply body"  # msgpack map, str keys
    STREAM_NAME = "stream name"  # UTF-8, [A-Za-z0-9_-]
    SEQ = "sequence"  # unsigned, big endian
    FLAG = "flag"  # 0 or 1
    ACK_KIND = "ack kind"  # one octet, see AckKind
    META = "delivery meta"  # sequence then deliveries, unsigned, big endian
    DROPPED_COUNTS = "dropped counts"
    PUBLISH_ENTRIES = "publish entries"
    DELIVER_ENTRIES = "deliver entries"
    COMMAND_ENTRIES = "command entries"


@dataclass(frozen=True, slots=True)
class Size:
    """A frame's size rule in octets: ``min`` to ``max`` (None: no limit of its
    own), a multiple of ``step``; ``or_empty`` allows 0 octets too. ``message``:
    at most the broker's max_message_size, which only the broker checks (413)."""

    min: int = 0
    max: int | None = None
    step: int = 1
    or_empty: bool = False
    message: bool = False

    def __str__(self) -> str:
        if self.message:
            return "0 to max_message_size bytes"
        if self.step > 1:
            some = "a non-empty" if self.min else "a"
            return f"{some} multiple of {self.step} bytes"
        if self.max is None:
            return f"at least {self.min} bytes"
        if self.min == self.max:
            return f"0 or {self.min} bytes" if self.or_empty else f"{self.min} bytes"
        return f"{self.min} to {self.max} bytes"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a layout; ``name`` is also the field of the command's dataclass."""

    name: str
    type: Field
    size: Size


@dataclass(frozen=True, slots=True)
class Layout:
    """One command on the wire. ``frames``: all of them in order, the header
    first; ``batch``: the batch command whose entries may carry this one."""

    cmd: Cmd
    direction: Direction
    frames: tuple[Frame, ...]
    batch: Cmd | None = None

    @property
    def name(self) -> str:
        return self.cmd.name

    @property
    def count(self) -> int:
        """The number of frames of a message of this command, header included."""
        return len(self.frames)

    def at(self, *names: str) -> tuple[int, ...]:
        """The indices of the frames called ``names``; ``ValueError`` for a name it lacks."""
        order = [frame.name for frame in self.frames]
        return tuple(order.index(name) for name in names)


@dataclass(frozen=True, slots=True)
class Length:
    """A length field inside an entries frame: ``octets`` wide, unsigned, big
    endian, giving the size of the part called ``of`` that follows it."""

    name: str
    of: str
    octets: int

    @property
    def max(self) -> int:
        """The largest length the field can hold."""
        return (1 << 8 * self.octets) - 1


# publish-entry = topic-length topic body-length body
# deliver-entry = sids-length sids publish-entry
# command-entry = command 1*(frame-length frame), one frame-length and frame for
#                 each frame of the command after its channel frame
TOPIC_LENGTH = Length("topic-length", "topic", 2)
BODY_LENGTH = Length("body-length", "body", 4)
SIDS_LENGTH = Length("sids-length", "sids", 2)
FRAME_LENGTH = Length("frame-length", "frame", 4)
PUBLISH_ENTRY = (TOPIC_LENGTH, BODY_LENGTH)
DELIVER_ENTRY = (SIDS_LENGTH, *PUBLISH_ENTRY)
COMMAND_BYTES = 1  # the command field that starts a command entry

# The most sids one deliver entry can name (its sids-length is 16 bits): a
# delivery to more subscriptions of one peer goes as DELIVER instead.
MAX_ENTRY_SIDS_BYTES = SIDS_LENGTH.max // SID_BYTES * SID_BYTES
# The largest max_message_size a broker may set: any body must fit the 32-bit
# body-length and frame-length of the entries that carry bodies.
MAX_MESSAGE_SIZE = min(BODY_LENGTH.max, FRAME_LENGTH.max)
# The heartbeat intervals a broker may agree to, in milliseconds: it clamps a
# HELLO's request into them, and a client refuses a WELCOME outside them.
HEARTBEAT_MIN_MS = 100
HEARTBEAT_MAX_MS = 60_000
# No command has more frames than this; a receiver may discard the frames of a
# message past it (the message is refused for its frame count all the same).
MAX_FRAMES = 8
# Entries of one batch (PUBLISH_BATCH, BATCH, DELIVER_BATCH, BROKER_BATCH): a
# sender never puts more in one; a receiver refuses more (413), so one message
# never costs it more than this many entries' work.
MAX_BATCH_ENTRIES = 1024


class _F:
    """The frames the layouts share."""

    HEADER = Frame("header", Field.HEADER, Size(4, 4))
    CHANNEL = Frame("channel", Field.CHANNEL, Size(CHANNEL_BYTES, CHANNEL_BYTES))
    # ERROR, STATS and STATS_REPLY: a channel frame that may be empty.
    ANY_CHANNEL = Frame("channel", Field.CHANNEL, Size(CHANNEL_BYTES, CHANNEL_BYTES, or_empty=True))
    REF = Frame("ref", Field.REF, Size(0, MAX_REF_BYTES))
    # The ref of a confirmed PUBLISH or of a REQUEST, echoed by ROUTED and ACKED.
    GIVEN_REF = Frame("ref", Field.REF, Size(1, MAX_REF_BYTES))
    REQUEST_REF = Frame("ref", Field.REF, Size(1, MAX_REQUEST_REF_BYTES))
    TOKEN = Frame("token", Field.TOKEN, Size(0, MAX_REF_BYTES))  # empty: do not ACK
    ACK_TOKEN = Frame("token", Field.TOKEN, Size(1, MAX_REF_BYTES))
    REPLY_TOKEN = Frame(
        "token", Field.REPLY_TOKEN, Size(SESSION_BYTES + REPLY_TAG_BYTES + 1, MAX_REF_BYTES)
    )
    SID = Frame("sid", Field.SID, Size(SID_BYTES, SID_BYTES))
    SIDS = Frame("sids", Field.SIDS, Size(SID_BYTES, step=SID_BYTES))
    TOPIC = Frame("topic", Field.TOPIC, Size(1, MAX_TOPIC_BYTES))
    PATTERN = Frame("pattern", Field.PATTERN, Size(1, MAX_TOPIC_BYTES))
    QUEUE = Frame("queue", Field.QUEUE, Size(0, MAX_QUEUE_BYTES))
    COUNT = Frame("count", Field.COUNT, Size(4, 4))
    CODE = Frame("code", Field.CODE, Size(2, 2))
    RETRY = Frame("retry_after", Field.RETRY, Size(4, 4, or_empty=True))
    # DROPPED: the peer's own unconfirmed publishes its user's rate limit dropped.
    THROTTLED = Frame("throttled", Field.COUNT, Size(4, 4))
    TEXT = Frame("text", Field.TEXT, Size())
    # Bodies a client sends: the broker refuses one over its max_message_size.
    MESSAGE = Frame("body", Field.MESSAGE_BODY, Size(message=True))
    ACK = Frame("body", Field.ACK_BODY, Size(message=True))
    REPLY = Frame("body", Field.REPLY_BODY, Size(message=True))
    # Bodies the broker sends: what a client sent, or the broker's own.
    MESSAGE_OUT = Frame("body", Field.MESSAGE_BODY, Size())
    ACK_OUT = Frame("body", Field.ACK_BODY, Size())
    REPLY_OUT = Frame("body", Field.REPLY_BODY, Size())
    HELLO = Frame("body", Field.HELLO_BODY, Size())
    WELCOME = Frame("body", Field.WELCOME_BODY, Size())
    STATS = Frame("body", Field.STATS_BODY, Size())
    STREAM_BODY = Frame("body", Field.STREAM_BODY, Size())
    STREAM_REPLY_BODY = Frame("body", Field.STREAM_REPLY_BODY, Size())
    STREAM_NAME = Frame("stream", Field.STREAM_NAME, Size(1, MAX_STREAM_NAME_BYTES))
    SEQ = Frame("seq", Field.SEQ, Size(8, 8))
    DUPLICATE = Frame("duplicate", Field.FLAG, Size(1, 1))
    ACK_KIND = Frame("kind", Field.ACK_KIND, Size(1, 1))
    DELAY = Frame("delay", Field.RETRY, Size(4, 4, or_empty=True))
    META = Frame("meta", Field.META, Size(12, 12))
    DROPPED = Frame("counts", Field.DROPPED_COUNTS, Size(0, step=2 * SID_BYTES))
    # The shortest entries frames: one entry with a 1-octet topic, an empty body,
    # one sid; a command entry of two empty frames.
    PUBLISH_ENTRIES = Frame(
        "entries", Field.PUBLISH_ENTRIES, Size(TOPIC_LENGTH.octets + 1 + BODY_LENGTH.octets)
    )
    DELIVER_ENTRIES = Frame(
        "entries",
        Field.DELIVER_ENTRIES,
        Size(SIDS_LENGTH.octets + SID_BYTES + PUBLISH_ENTRIES.size.min),
    )
    COMMAND_ENTRIES = Frame(
        "entries", Field.COMMAND_ENTRIES, Size(COMMAND_BYTES + 2 * FRAME_LENGTH.octets)
    )


def _layout(cmd: Cmd, direction: Direction, *frames: Frame, batch: Cmd | None = None) -> Layout:
    return Layout(cmd, direction, (_F.HEADER, *frames), batch)


_C, _B = Direction.CLIENT, Direction.BROKER
# fmt: off
LAYOUTS: tuple[Layout, ...] = (
    _layout(Cmd.HELLO, _C, _F.CHANNEL, _F.HELLO),
    _layout(Cmd.SUBSCRIBE, _C, _F.CHANNEL, _F.REF, _F.SID, _F.PATTERN, _F.QUEUE),
    _layout(Cmd.UNSUBSCRIBE, _C, _F.CHANNEL, _F.REF, _F.SIDS),
    _layout(Cmd.PUBLISH, _C, _F.CHANNEL, _F.REF, _F.TOPIC, _F.MESSAGE, batch=Cmd.BATCH),
    _layout(Cmd.ACK, _C, _F.CHANNEL, _F.ACK_TOKEN, _F.ACK, batch=Cmd.BATCH),
    _layout(Cmd.DISCONNECT, _C, _F.CHANNEL, _F.REF),
    _layout(Cmd.REQUEST, _C, _F.CHANNEL, _F.REQUEST_REF, _F.TOPIC, _F.MESSAGE, batch=Cmd.BATCH),
    _layout(Cmd.REPLY, _C, _F.CHANNEL, _F.REPLY_TOKEN, _F.REPLY, batch=Cmd.BATCH),
    _layout(Cmd.HEARTBEAT, _C, _F.CHANNEL),
    _layout(Cmd.STATS, _C, _F.ANY_CHANNEL, _F.REF),
    _layout(Cmd.PUBLISH_BATCH, _C, _F.CHANNEL, _F.PUBLISH_ENTRIES),
    _layout(Cmd.BATCH, _C, _F.CHANNEL, _F.COMMAND_ENTRIES),
    _layout(Cmd.STREAM, _C, _F.CHANNEL, _F.GIVEN_REF, _F.STREAM_BODY),
    _layout(Cmd.CONSUME, _C, _F.CHANNEL, _F.GIVEN_REF, _F.SID, _F.STREAM_BODY),
    _layout(Cmd.STREAM_ACK, _C, _F.CHANNEL, _F.ACK_TOKEN, _F.ACK_KIND, _F.DELAY, _F.TEXT,
            batch=Cmd.BATCH),
    _layout(Cmd.WELCOME, _B, _F.CHANNEL, _F.WELCOME),
    _layout(Cmd.OK, _B, _F.CHANNEL, _F.REF),
    _layout(Cmd.DELIVER, _B, _F.CHANNEL, _F.TOKEN, _F.TOPIC, _F.MESSAGE_OUT, _F.SIDS,
            batch=Cmd.BROKER_BATCH),
    _layout(Cmd.ROUTED, _B, _F.CHANNEL, _F.GIVEN_REF, _F.COUNT, batch=Cmd.BROKER_BATCH),
    _layout(Cmd.ACKED, _B, _F.CHANNEL, _F.GIVEN_REF, _F.ACK_OUT, batch=Cmd.BROKER_BATCH),
    _layout(Cmd.ASK, _B, _F.CHANNEL, _F.REPLY_TOKEN, _F.TOPIC, _F.MESSAGE_OUT, _F.SIDS,
            batch=Cmd.BROKER_BATCH),
    _layout(Cmd.ANSWER, _B, _F.CHANNEL, _F.REQUEST_REF, _F.REPLY_OUT, batch=Cmd.BROKER_BATCH),
    _layout(Cmd.BROKER_HEARTBEAT, _B, _F.CHANNEL),
    _layout(Cmd.BYE, _B, _F.CHANNEL),
    _layout(Cmd.STATS_REPLY, _B, _F.ANY_CHANNEL, _F.REF, _F.STATS),
    _layout(Cmd.DROPPED, _B, _F.CHANNEL, _F.DROPPED, _F.THROTTLED),
    _layout(Cmd.DELIVER_BATCH, _B, _F.CHANNEL, _F.DELIVER_ENTRIES),
    _layout(Cmd.BROKER_BATCH, _B, _F.CHANNEL, _F.COMMAND_ENTRIES),
    _layout(Cmd.ERROR, _B, _F.ANY_CHANNEL, _F.REF, _F.CODE, _F.TEXT, _F.RETRY),
    _layout(Cmd.STREAM_REPLY, _B, _F.CHANNEL, _F.GIVEN_REF, _F.STREAM_REPLY_BODY),
    _layout(Cmd.STORED, _B, _F.CHANNEL, _F.GIVEN_REF, _F.STREAM_NAME, _F.SEQ, _F.DUPLICATE,
            batch=Cmd.BROKER_BATCH),
    _layout(Cmd.STREAM_MSG, _B, _F.CHANNEL, _F.ACK_TOKEN, _F.TOPIC, _F.MESSAGE_OUT, _F.SID,
            _F.META, batch=Cmd.BROKER_BATCH),
)
# fmt: on

LAYOUT: dict[int, Layout] = {layout.cmd: layout for layout in LAYOUTS}
CLIENT_LAYOUTS = {c: layout for c, layout in LAYOUT.items() if layout.direction is _C}
BROKER_LAYOUTS = {c: layout for c, layout in LAYOUT.items() if layout.direction is _B}


def _index_of(*types: Field) -> int:
    # The one index at which frames of ``types`` sit in every layout that has one.
    found = {i for lay in LAYOUTS for i, f in enumerate(lay.frames) if f.type in types}
    if len(found) != 1:
        raise AssertionError(f"{'/'.join(types)} frames sit at indices {sorted(found)}")
    return found.pop()


# The framing every command shares: header, channel, then the command's own frames.
HEADER_FRAME = _index_of(Field.HEADER)
CHANNEL_FRAME = _index_of(Field.CHANNEL)
ENTRY_START = CHANNEL_FRAME + 1  # a batch entry carries the frames from here on
# Where a ref or token sits, in every command that has one; and the entries of a batch.
REF_FRAME = _index_of(Field.REF, Field.TOKEN, Field.REPLY_TOKEN)
ENTRIES_FRAME = _index_of(Field.PUBLISH_ENTRIES, Field.DELIVER_ENTRIES, Field.COMMAND_ENTRIES)

# Named indices of the frames the hot paths read.
PUBLISH_REF, PUBLISH_TOPIC, PUBLISH_BODY = LAYOUT[Cmd.PUBLISH].at("ref", "topic", "body")
REQUEST_REF, REQUEST_TOPIC, REQUEST_BODY = LAYOUT[Cmd.REQUEST].at("ref", "topic", "body")
ACK_TOKEN, ACK_BODY = LAYOUT[Cmd.ACK].at("token", "body")
REPLY_TOKEN, REPLY_BODY = LAYOUT[Cmd.REPLY].at("token", "body")
DELIVER_TOKEN, DELIVER_TOPIC, DELIVER_BODY, DELIVER_SIDS = LAYOUT[Cmd.DELIVER].at(
    "token", "topic", "body", "sids"
)
ASK_TOKEN, ASK_TOPIC, ASK_BODY, ASK_SIDS = LAYOUT[Cmd.ASK].at("token", "topic", "body", "sids")
ROUTED_REF, ROUTED_COUNT = LAYOUT[Cmd.ROUTED].at("ref", "count")
ACKED_REF, ACKED_BODY = LAYOUT[Cmd.ACKED].at("ref", "body")
ANSWER_REF, ANSWER_BODY = LAYOUT[Cmd.ANSWER].at("ref", "body")
STREAM_ACK_TOKEN, STREAM_ACK_KIND, STREAM_ACK_DELAY, STREAM_ACK_TEXT = LAYOUT[Cmd.STREAM_ACK].at(
    "token", "kind", "delay", "text"
)
STREAM_MSG_TOKEN, STREAM_MSG_TOPIC, STREAM_MSG_BODY, STREAM_MSG_SID, STREAM_MSG_META = LAYOUT[
    Cmd.STREAM_MSG
].at("token", "topic", "body", "sid", "meta")

# Frame counts including the header frame, by command byte.
CLIENT_FRAMES: dict[int, int] = {c: layout.count for c, layout in CLIENT_LAYOUTS.items()}
BROKER_FRAMES: dict[int, int] = {c: layout.count for c, layout in BROKER_LAYOUTS.items()}
# Frame counts by header frame, for a receiver that reads a known command's
# frames without checking each one's more-flag (see _wire.recv_counted).
BROKER_FRAME_COUNTS: dict[bytes, int] = {header(c): n for c, n in BROKER_FRAMES.items()}


def _entry_frames(batch: Cmd) -> dict[int, int]:
    return {lay.cmd: lay.count - ENTRY_START for lay in LAYOUTS if lay.batch is batch}


# Commands a BATCH (client) / BROKER_BATCH (broker) may carry, with the number
# of frames each entry holds (the command's frames after its channel frame).
CLIENT_ENTRY_FRAMES = _entry_frames(Cmd.BATCH)
BROKER_ENTRY_FRAMES = _entry_frames(Cmd.BROKER_BATCH)
ENTRY_FRAMES: dict[int, dict[int, int]] = {
    Cmd.BATCH: CLIENT_ENTRY_FRAMES,
    Cmd.BROKER_BATCH: BROKER_ENTRY_FRAMES,
}
# The client commands whose frame REF_FRAME is a ref: an ERROR refusing one echoes it.
ECHOES_REF = frozenset(
    c
    for c, lay in CLIENT_LAYOUTS.items()
    if lay.count > REF_FRAME and lay.frames[REF_FRAME].type is Field.REF
)


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
    """Broker refuses a command. ``ref`` echoes the request's ref, if it had
    one; ``retry_after``: milliseconds until the same request may pass (a rate
    limit), or None."""

    channel: bytes
    ref: bytes
    code: int
    text: str
    retry_after: int | None = None


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
    """Broker tells a client what it dropped since the last DROPPED: ``counts``
    packs (sid, uint32 count) pairs, 8 bytes each, of messages it could not
    queue for the client (too slow); ``throttled``, how many of the client's
    own unconfirmed publishes its user's rate limit dropped."""

    channel: bytes
    counts: bytes
    throttled: int = 0


def pack_dropped(counts: Mapping[bytes, int]) -> bytes:
    """The counts frame of DROPPED from {sid: count}."""
    return b"".join(sid + min(n, 0xFFFFFFFF).to_bytes(4, "big") for sid, n in counts.items())


def pack_dropped_sets(counts: Mapping[bytes, int]) -> bytes:
    """The counts frame of DROPPED from {packed sids: count}: each sid of a key
    missed that many messages, summed over the keys it is in."""
    if len(counts) == 1:
        # One set (a peer whose every delivery names the same sids): its pairs
        # are laid out by strided copies, not one Python step per sid.
        [(sids, n)] = counts.items()
        k = len(sids) // SID_BYTES
        count = min(n, 0xFFFFFFFF).to_bytes(4, "big")
        out = bytearray(8 * k)
        for j in range(SID_BYTES):
            out[j::8] = sids[j::SID_BYTES]
            out[SID_BYTES + j :: 8] = count[j : j + 1] * k
        return bytes(out)
    per_sid: dict[bytes, int] = {}
    for sids, n in counts.items():
        for i in range(0, len(sids), SID_BYTES):
            sid = sids[i : i + SID_BYTES]
            per_sid[sid] = per_sid.get(sid, 0) + n
    return pack_dropped(per_sid)


def unpack_dropped(frame: bytes) -> dict[bytes, int]:
    """{sid: count} from the counts frame of DROPPED; BAD_FRAMES if malformed."""
    if len(frame) % 8:
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


@dataclass(frozen=True, slots=True)
class Stream:
    """Client asks for stream management (add, info, list, delete, purge, get,
    consumer_*); ``body`` is a msgpack map with ``op`` (see ``pack_stream_request``)."""

    channel: bytes
    ref: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Consume:
    """Client binds a stream consumer to subscription ``sid`` (4 bytes, in the
    sid space of SUBSCRIBE); ``body`` is a msgpack map (see ``pack_consume``).
    UNSUBSCRIBE of the sid unbinds it."""

    channel: bytes
    ref: bytes
    sid: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamAck:
    """Client settles one STREAM_MSG by its ``token``: ``kind`` (AckKind);
    ``delay``, for NAK, milliseconds before it is delivered again (None: the
    consumer's backoff); ``text``, for NAK and TERM, why (may be empty)."""

    channel: bytes
    token: bytes
    kind: int
    delay: int | None
    text: str


@dataclass(frozen=True, slots=True)
class StreamReply:
    """Broker answers STREAM or CONSUME; ``body`` is a msgpack map."""

    channel: bytes
    ref: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    """Broker says the confirmed publish ``ref`` is stored in ``stream`` at
    ``seq`` (committed), or was a ``duplicate`` of the message stored there;
    ROUTED follows."""

    channel: bytes
    ref: bytes
    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StreamMsg:
    """Broker delivers a stored message to the consumer bound to ``sid``;
    ``meta`` packs its stream sequence and how many times it has been
    delivered (see ``unpack_meta``); settle it with STREAM_ACK and ``token``."""

    channel: bytes
    token: bytes
    topic: bytes
    body: bytes
    sid: bytes
    meta: bytes


_META = struct.Struct(">QI")


def pack_meta(seq: int, deliveries: int) -> bytes:
    """The meta frame of STREAM_MSG."""
    return _META.pack(seq, min(deliveries, 0xFFFFFFFF))


def unpack_meta(frame: bytes) -> tuple[int, int]:
    """(stream sequence, deliveries) from STREAM_MSG's meta frame."""
    seq, deliveries = _META.unpack(frame)
    return int(seq), int(deliveries)


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
    | Stream
    | Consume
    | StreamAck
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
    | StreamReply
    | Stored
    | StreamMsg
)
Command: TypeAlias = ClientCommand | BrokerCommand


# --- checks -----------------------------------------------------------------
# Each frame's check comes from its layout: the size rule, then what its field
# type asks of the content. A size refused is BAD_FRAMES, or BAD_TOPIC for the
# text names (topic, pattern, queue).

Check: TypeAlias = Callable[[bytes], object]

_NAMES = frozenset((Field.TOPIC, Field.PATTERN, Field.QUEUE))


def _size_check(label: str, size: Size, code: ErrorCode) -> Check | None:
    """A check refusing a frame that breaks ``size`` with ``code``, or None if
    there is nothing to check here (no limit, or the broker's max_message_size)."""
    lo, hi, step = size.min, size.max, size.step
    if size.message or (hi is None and lo == 0):
        return None
    text = f"{label} must be {size}, got "

    def refuse(frame: bytes) -> None:
        raise ProtocolError(code, f"{text}{len(frame)}")

    if step > 1:

        def check_multiple(frame: bytes) -> None:
            n = len(frame)
            if n % step or n < lo or (hi is not None and n > hi):
                refuse(frame)

        return check_multiple
    if hi is None:

        def check_least(frame: bytes) -> None:
            if len(frame) < lo:
                refuse(frame)

        return check_least
    if lo == hi and size.or_empty:

        def check_exact_or_empty(frame: bytes) -> None:
            if frame and len(frame) != lo:
                refuse(frame)

        return check_exact_or_empty

    def check_range(frame: bytes) -> None:
        if not lo <= len(frame) <= hi:
            refuse(frame)

    return check_range


def _topic_rules(frame: bytes) -> str:
    try:
        text = frame.decode("utf-8")
        validate_topic(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_TOPIC, str(exc)) from None
    return text


def _pattern_rules(frame: bytes) -> str:
    try:
        text = frame.decode("utf-8")
        validate_pattern(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_TOPIC, str(exc)) from None
    return text


def _queue_rules(frame: bytes) -> None:
    if frame:
        try:
            validate_topic(frame.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(ErrorCode.BAD_TOPIC, f"bad queue name: {exc}") from None


def _utf8(frame: bytes) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "ERROR text is not UTF-8") from None


def _entry_topics(entries: list[tuple[bytes, bytes, bytes]], at: int) -> None:
    for entry in entries:
        decode_name(entry[at], "topic")


def _content_check(layout: Layout, frame: Frame) -> Check | None:
    """What ``frame``'s field type asks of its content, beyond its size."""
    kind = frame.type
    if kind is Field.TOPIC:
        return _topic_rules
    if kind is Field.PATTERN:
        return _pattern_rules
    if kind is Field.QUEUE:
        return _queue_rules
    if kind is Field.TEXT:
        return _utf8
    if kind is Field.HELLO_BODY:
        return unpack_hello
    if kind is Field.WELCOME_BODY:
        return unpack_welcome
    if kind is Field.STATS_BODY:
        return unpack_stats
    if kind is Field.STREAM_BODY:
        return unpack_stream_request
    if kind is Field.STREAM_REPLY_BODY:
        return unpack_stream_reply
    if kind is Field.STREAM_NAME:
        return check_stream_name
    if kind is Field.FLAG:
        return _flag_rules
    if kind is Field.ACK_KIND:
        return _ack_kind_rules
    if kind is Field.DROPPED_COUNTS:
        return unpack_dropped
    if kind is Field.PUBLISH_ENTRIES:
        return lambda f: _entry_topics(unpack_publish_entries(f), 0)
    if kind is Field.DELIVER_ENTRIES:
        return lambda f: _entry_topics(unpack_deliver_entries(f), 1)
    if kind is Field.COMMAND_ENTRIES:
        # The envelope only: each entry is checked when it is handled, as alone.
        allowed = ENTRY_FRAMES[layout.cmd]
        return lambda f: unpack_command_entries(f, b"", allowed)
    # Sizes say all there is to say of the rest; bodies a broker forwards are
    # not decoded (the receiver of a message body decodes it).
    return None


def _frame_check(layout: Layout, frame: Frame) -> Check | None:
    code = ErrorCode.BAD_TOPIC if frame.type in _NAMES else ErrorCode.BAD_FRAMES
    size = _size_check(f"{layout.name} {frame.name}", frame.size, code)
    content = _content_check(layout, frame)
    if size is None or content is None:
        return size or content

    def both(f: bytes) -> None:
        size(f)
        content(f)

    return both


def field_check(cmd: int, name: str) -> Check:
    """The check ``parse_client``/``parse_broker`` make of frame ``name`` of
    command ``cmd``: raises ``ProtocolError`` with the code the broker replies with."""
    layout = LAYOUT[cmd]
    return _frame_check(layout, layout.frames[layout.at(name)[0]]) or (lambda f: None)


def _must(check: Check | None) -> Check:
    if check is None:
        raise AssertionError("no check for a frame that needs one")
    return check


# The checks of the shared frames, for the helpers below.
_check_channel = _must(_size_check("channel frame", _F.CHANNEL.size, ErrorCode.BAD_FRAMES))
_check_request_ref = field_check(Cmd.REQUEST, "ref")
_check_sids = _must(_size_check("sids frame", _F.SIDS.size, ErrorCode.BAD_FRAMES))
_topic_size = _must(_size_check("topic", _F.TOPIC.size, ErrorCode.BAD_TOPIC))
_pattern_size = _must(_size_check("pattern", _F.PATTERN.size, ErrorCode.BAD_TOPIC))
_queue_size = _must(_size_check("queue name", _F.QUEUE.size, ErrorCode.BAD_TOPIC))


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


def count_error(frames: Sequence[bytes]) -> ProtocolError:
    """The BAD_FRAMES error for ``frames``, a message of a known command with
    the wrong number of frames."""
    layout = LAYOUT[frames[HEADER_FRAME][3]]
    return ProtocolError(
        ErrorCode.BAD_FRAMES, f"{layout.name} takes {layout.count} frames, got {len(frames)}"
    )


def check_channel(frame: bytes) -> None:
    """Raise BAD_FRAMES unless ``frame`` is a 16-byte channel ID."""
    _check_channel(frame)


def check_request_ref(frame: bytes) -> None:
    """Raise BAD_FRAMES unless ``frame`` is a valid REQUEST ref: 1 to
    MAX_REQUEST_REF_BYTES (the broker prefixes it with its session number and
    a tag to make the reply token)."""
    _check_request_ref(frame)


@functools.cache
def _ref_check(name: str) -> Check:
    return _must(_size_check(name, _F.REF.size, ErrorCode.BAD_FRAMES))


def check_ref(frame: bytes, name: str = "ref") -> None:
    """Raise BAD_FRAMES unless ``frame`` is at most MAX_REF_BYTES long; ``name``
    words the error."""
    _ref_check(name)(frame)


def check_sids(frame: bytes, *, allow_empty: bool = False) -> None:
    """Raise BAD_FRAMES unless ``frame`` is a whole number of 4-byte sids
    (at least one, unless ``allow_empty``)."""
    if frame or not allow_empty:
        _check_sids(frame)


def split_sids(frame: bytes) -> list[bytes]:
    """The 4-byte sids packed in ``frame``."""
    return [frame[i : i + SID_BYTES] for i in range(0, len(frame), SID_BYTES)]


def check_queue(frame: bytes) -> None:
    """Raise BAD_TOPIC unless ``frame`` is empty or a valid queue group name:
    1 to 64 bytes of UTF-8 following the token rules of a topic (dots allowed)."""
    _queue_size(frame)
    _queue_rules(frame)


def decode_name(frame: bytes, kind: str) -> str:
    """Decode a topic or pattern frame as UTF-8 and check it against the topic
    rules (``kind`` is "topic" or "pattern"); raise BAD_TOPIC if it breaks them."""
    if kind == "pattern":
        _pattern_size(frame)
        return _pattern_rules(frame)
    _topic_size(frame)
    return _topic_rules(frame)


# --- encoding and parsing ---------------------------------------------------
# The dataclass of a command is named after it (STATS_REPLY: StatsReply) and
# has the fields of its frames after the header, in frame order.

_TO_WIRE: dict[Field, Callable[[Any, Frame], bytes]] = {
    Field.COUNT: lambda n, f: n.to_bytes(f.size.min, "big"),
    Field.CODE: lambda n, f: n.to_bytes(f.size.min, "big"),
    Field.TEXT: lambda s, f: s.encode("utf-8"),
    Field.RETRY: lambda n, f: b"" if n is None else min(n, 0xFFFFFFFF).to_bytes(4, "big"),
    Field.STREAM_NAME: lambda s, f: s.encode("ascii"),
    Field.SEQ: lambda n, f: n.to_bytes(8, "big"),
    Field.FLAG: lambda b, f: b"\x01" if b else b"\x00",
    Field.ACK_KIND: lambda n, f: bytes((n,)),
}
_FROM_WIRE: dict[Field, Callable[[bytes], object]] = {
    Field.COUNT: lambda b: int.from_bytes(b, "big"),
    Field.CODE: lambda b: int.from_bytes(b, "big"),
    Field.TEXT: _utf8,
    Field.RETRY: lambda b: int.from_bytes(b, "big") if b else None,
    Field.STREAM_NAME: lambda b: b.decode("ascii"),
    Field.SEQ: lambda b: int.from_bytes(b, "big"),
    Field.FLAG: lambda b: b == b"\x01",
    Field.ACK_KIND: lambda b: b[0],
}


def _class_of(layout: Layout) -> type[Command]:
    klass: type[Command] = globals()["".join(w.capitalize() for w in layout.name.split("_"))]
    names = tuple(f.name for f in fields(klass))
    if names != tuple(f.name for f in layout.frames[CHANNEL_FRAME:]):
        raise AssertionError(f"{klass.__name__} fields {names} differ from {layout.name}'s frames")
    return klass


def _encoder(layout: Layout) -> Callable[[Any], list[bytes]]:
    head = header(layout.cmd)
    frames = layout.frames[CHANNEL_FRAME:]
    get: Callable[[Any], Any] = attrgetter(*(f.name for f in frames))
    if len(frames) == 1:
        return lambda cmd: [head, get(cmd)]
    if not any(f.type in _TO_WIRE for f in frames):
        return lambda cmd: [head, *get(cmd)]
    convert = [(_TO_WIRE.get(f.type), f) for f in frames]
    return lambda cmd: [
        head,
        *(v if to is None else to(v, f) for (to, f), v in zip(convert, get(cmd), strict=True)),
    ]


def _plain_builder(klass: Callable[..., Command], n: int) -> Callable[[Sequence[bytes]], Any]:
    # The dataclass from a message's frames after its header, all bytes. Spelt
    # out for the counts that exist: a third cheaper than klass(*fs[1:]).
    if n == 1:
        return lambda fs: klass(fs[1])
    if n == 2:
        return lambda fs: klass(fs[1], fs[2])
    if n == 3:
        return lambda fs: klass(fs[1], fs[2], fs[3])
    if n == 4:
        return lambda fs: klass(fs[1], fs[2], fs[3], fs[4])
    if n == 5:
        return lambda fs: klass(fs[1], fs[2], fs[3], fs[4], fs[5])
    return lambda fs: klass(*fs[1:])


class _Parser(NamedTuple):
    frames: int
    checks: tuple[tuple[int, Check], ...]
    build: Callable[[Sequence[bytes]], Any]


def _parser(layout: Layout) -> _Parser:
    klass: Callable[..., Command] = _class_of(layout)
    checks = tuple(
        (i, check)
        for i, frame in enumerate(layout.frames)
        if i != HEADER_FRAME and (check := _frame_check(layout, frame)) is not None
    )
    frames = layout.frames[CHANNEL_FRAME:]
    if not any(f.type in _FROM_WIRE for f in frames):
        return _Parser(layout.count, checks, _plain_builder(klass, len(frames)))
    convert = [_FROM_WIRE.get(f.type) for f in frames]

    def build(fs: Sequence[bytes]) -> Any:
        values = (
            v if c is None else c(v) for c, v in zip(convert, fs[CHANNEL_FRAME:], strict=True)
        )
        return klass(*values)

    return _Parser(layout.count, checks, build)


def encode(cmd: Command) -> list[bytes]:
    """The frames of ``cmd``, header first. No validation: build commands from
    valid values, or let the receiving side's ``parse_*`` refuse them."""
    enc = _ENCODERS.get(type(cmd))
    if enc is None:
        raise TypeError(f"not a zmqbus command: {cmd!r}")
    return enc(cmd)


def _parse(frames: Sequence[bytes], parsers: Mapping[bytes, _Parser]) -> Any:
    # Keyed by the whole header frame: a known one needs no check_header.
    if not frames:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "empty message")
    parser = parsers.get(frames[HEADER_FRAME])
    if parser is None:
        cmd = check_header(frames[HEADER_FRAME])
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command 0x{cmd:02x}")
    count, checks, build = parser
    if len(frames) != count:
        raise count_error(frames)
    for i, check in checks:
        check(frames[i])
    return build(frames)


def parse_client(frames: Sequence[bytes]) -> ClientCommand:
    """Parse and validate a message a client sent (without the ROUTER identity).

    Raises ``ProtocolError`` with the code the broker replies with.
    """
    cmd: ClientCommand = _parse(frames, _CLIENT_PARSERS)
    return cmd


def parse_broker(frames: Sequence[bytes]) -> BrokerCommand:
    """Parse and validate a message the broker sent. Raises ``ProtocolError``."""
    cmd: BrokerCommand = _parse(frames, _BROKER_PARSERS)
    return cmd


# --- batch entries ----------------------------------------------------------
# Laid out as PUBLISH_ENTRY, DELIVER_ENTRY and the command entry above say.
# Framing only: topic rules and body size are the receiver's checks, as for
# the single commands.


def _length_struct(length: Length) -> struct.Struct:
    return struct.Struct(">" + {1: "B", 2: "H", 4: "I"}[length.octets])


_TOPIC_LEN = _length_struct(TOPIC_LENGTH)
_BODY_LEN = _length_struct(BODY_LENGTH)
_SIDS_LEN = _length_struct(SIDS_LENGTH)
_FRAME_LEN = _length_struct(FRAME_LENGTH)


def _too_long(length: Length, n: int) -> ValueError:
    return ValueError(
        f"a {length.of} of {n} bytes does not fit the {8 * length.octets}-bit "
        f"{length.name} of a batch entry (at most {length.max})"
    )


def pack_publish_entry(topic: bytes, body: bytes) -> bytes:
    """One entry of a PUBLISH_BATCH frame: a message as PUBLISH would carry it.
    ``ValueError`` if the topic or body is too long for its length field."""
    try:
        return _TOPIC_LEN.pack(len(topic)) + topic + _BODY_LEN.pack(len(body)) + body
    except struct.error:
        # No check on the way in: struct refuses what its field cannot hold.
        if len(topic) > TOPIC_LENGTH.max:
            raise _too_long(TOPIC_LENGTH, len(topic)) from None
        raise _too_long(BODY_LENGTH, len(body)) from None


def pack_deliver_entry(sids: bytes, entry: bytes) -> bytes:
    """One entry of a DELIVER_BATCH frame: ``sids`` before a publish entry.
    ``ValueError`` if ``sids`` is over ``MAX_ENTRY_SIDS_BYTES``."""
    if len(sids) > MAX_ENTRY_SIDS_BYTES:
        raise ValueError(
            f"a deliver entry names at most {MAX_ENTRY_SIDS_BYTES // SID_BYTES} sids, "
            f"got {len(sids) // SID_BYTES}"
        )
    return _SIDS_LEN.pack(len(sids)) + sids + entry


def _bad_batch(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAMES, f"malformed batch: {what}")


def unpack_publish_entries(frame: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The entries of a PUBLISH_BATCH frame as (topic, body, the whole entry);
    BAD_FRAMES if the frame is empty or not exactly a run of entries."""
    out: list[tuple[bytes, bytes, bytes]] = []
    end = len(frame)
    if not end:
        raise _bad_batch("no entries")
    topic_len, body_len = _TOPIC_LEN.unpack_from, _BODY_LEN.unpack_from
    tw, bw = TOPIC_LENGTH.octets, BODY_LENGTH.octets
    i = 0
    try:
        while i < end:
            start = i
            (tlen,) = topic_len(frame, i)
            i += tw
            topic = frame[i : i + tlen]
            i += tlen
            (blen,) = body_len(frame, i)
            i += bw
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
    sids_len, topic_len, body_len = (
        _SIDS_LEN.unpack_from,
        _TOPIC_LEN.unpack_from,
        _BODY_LEN.unpack_from,
    )
    sw, tw, bw = SIDS_LENGTH.octets, TOPIC_LENGTH.octets, BODY_LENGTH.octets
    odd = SID_BYTES - 1  # the bits a whole number of sids leaves clear (SID_BYTES is 4)
    i = 0
    try:
        while i < end:
            slen = sids_len(frame, i)[0]
            j = i + sw + slen
            tlen = topic_len(frame, j)[0]
            k = j + tw + tlen
            blen = body_len(frame, k)[0]
            i = k + bw + blen
            if i > end or not tlen or not slen or slen & odd:
                raise _bad_batch("an entry is truncated, names no sid or has an empty topic")
            append((frame[j - slen : j], frame[j + tw : k], frame[k + bw : i]))
    except struct.error:
        raise _bad_batch("an entry is truncated") from None
    return out


_HEADERS = {int(c): header(c) for c in Cmd}
_COMMAND_OF = {header(c): bytes((c,)) for c in Cmd}
# The start of an entry whose first frame is empty, per header.
_EMPTY_FIRST = {header(c): bytes((c,)) + _FRAME_LEN.pack(0) for c in Cmd}
# A whole message whose entry carries two frames, three frames (the sizes that exist).
_WITH_TWO = ENTRY_START + 2
_WITH_THREE = ENTRY_START + 3
_WITH_FIVE = ENTRY_START + 5


def pack_command_entry(frames: Sequence[bytes]) -> bytes:
    """One entry of a BATCH or BROKER_BATCH frame: the command of ``frames`` (a
    whole message, header and channel first) and its frames after the channel.
    ``ValueError`` if a frame is too long for its frame-length."""
    # Unrolled for the entry sizes that exist: this runs once per batched message.
    # A message is its header, its channel, then the frames its entry carries.
    pack = _FRAME_LEN.pack
    n = len(frames)
    try:
        if n == _WITH_TWO:
            head, _, a, b = frames
            return b"".join((_COMMAND_OF[head], pack(len(a)), a, pack(len(b)), b))
        if n == _WITH_THREE:
            head, _, a, b, c = frames
            if not a:
                # An unconfirmed PUBLISH, the bulk of a busy publisher's BATCHes.
                return b"".join((_EMPTY_FIRST[head], pack(len(b)), b, pack(len(c)), c))
            return b"".join(
                (
                    _COMMAND_OF[head],
                    pack(len(a)),
                    a,
                    pack(len(b)),
                    b,
                    pack(len(c)),
                    c,
                )
            )
        if n == _WITH_FIVE:
            # A STREAM_MSG: a consumer's deliveries come hundreds at a time.
            head, _, a, b, c, d, e = frames
            return b"".join(
                (
                    _COMMAND_OF[head],
                    pack(len(a)),
                    a,
                    pack(len(b)),
                    b,
                    pack(len(c)),
                    c,
                    pack(len(d)),
                    d,
                    pack(len(e)),
                    e,
                )
            )
        parts = [_COMMAND_OF[frames[HEADER_FRAME]]]
        for f in frames[ENTRY_START:]:
            parts.append(pack(len(f)))
            parts.append(f)
    except struct.error:
        longest = max(len(f) for f in frames[ENTRY_START:])
        raise _too_long(FRAME_LENGTH, longest) from None
    return b"".join(parts)


_DELIVER_NO_TOKEN = bytes((Cmd.DELIVER,)) + _FRAME_LEN.pack(0)


def pack_unconfirmed_deliver_entry(topic: bytes, body: bytes, sids: bytes) -> bytes:
    """``pack_command_entry([H_DELIVER, channel, b"", topic, body, sids])``, in
    one join: a broker makes one per subscriber of each unconfirmed message.
    ``ValueError`` if a frame is too long for its frame-length."""
    pack = _FRAME_LEN.pack
    try:
        return b"".join(
            (
                _DELIVER_NO_TOKEN,
                pack(len(topic)),
                topic,
                pack(len(body)),
                body,
                pack(len(sids)),
                sids,
            )
        )
    except struct.error:
        raise _too_long(FRAME_LENGTH, max(len(topic), len(body), len(sids))) from None


def unpack_command_entries(
    frame: bytes, channel: bytes, allowed: Mapping[int, int]
) -> list[list[bytes]]:
    """The entries of a BATCH or BROKER_BATCH frame as whole messages (header,
    ``channel``, frames), each to be handled as if it had arrived alone.
    BAD_FRAMES if the frame is empty, not exactly a run of entries, or holds a
    command not in ``allowed`` (command byte -> frames per entry)."""
    # No command is -1: every entry comes as a whole message.
    return cast("list[list[bytes]]", _unpack_entries(frame, channel, allowed, -1))


_AFTER_EMPTY = COMMAND_BYTES + 2 * FRAME_LENGTH.octets  # the second frame of an entry


def _unpack_entries(
    frame: bytes, channel: bytes, allowed: Mapping[int, int], hot: int
) -> list[list[bytes] | tuple[bytes, ...]]:
    # unpack_command_entries, except that each entry of command ``hot`` whose
    # first frame is empty comes as a tuple of its other frames.
    out: list[list[bytes] | tuple[bytes, ...]] = []
    end = len(frame)
    if not end:
        raise _bad_batch("no entries")
    u32 = _FRAME_LEN.unpack_from
    fw = FRAME_LENGTH.octets
    first = COMMAND_BYTES + fw  # from the command byte to its first frame
    append = out.append
    headers = _HEADERS
    at = _AFTER_EMPTY
    two = hot in allowed and allowed[hot] == 3  # PUBLISH: ref, topic, body; DELIVER: 4
    i = 0
    try:
        while i < end:
            cmd = frame[i]
            if cmd == hot and not u32(frame, i + COMMAND_BYTES)[0]:
                j = i + at + u32(frame, i + at - fw)[0]
                k = j + fw + u32(frame, j)[0]
                if two:
                    append((frame[i + at : j], frame[j + fw : k]))
                else:
                    m = k + fw + u32(frame, k)[0]
                    append((frame[i + at : j], frame[j + fw : k], frame[k + fw : m]))
                    k = m
                if k > end:
                    raise _bad_batch("an entry is truncated")
                i = k
                continue
            n = allowed.get(cmd)
            if n is None:
                raise _bad_batch(f"command 0x{cmd:02x} cannot be batched")
            i += first
            j = i + u32(frame, i - fw)[0]
            a = frame[i:j]
            i = j + fw
            j = i + u32(frame, j)[0]
            if n == 2:
                append([headers[cmd], channel, a, frame[i:j]])
                i = j
            elif n == 3:
                # PUBLISH and REQUEST: the bulk of a BATCH, unrolled.
                b = frame[i:j]
                i = j + fw
                j = i + u32(frame, j)[0]
                append([headers[cmd], channel, a, b, frame[i:j]])
                i = j
            elif n == 4:
                # DELIVER and ASK: the bulk of a BROKER_BATCH, unrolled.
                b = frame[i:j]
                i = j + fw
                j = i + u32(frame, j)[0]
                c = frame[i:j]
                i = j + fw
                j = i + u32(frame, j)[0]
                append([headers[cmd], channel, a, b, c, frame[i:j]])
                i = j
            else:
                msg = [headers[cmd], channel, a, frame[i:j]]
                for _ in range(n - 2):
                    i = j + fw
                    j = i + u32(frame, j)[0]
                    msg.append(frame[i:j])
                i = j
                append(msg)
            if i > end:
                raise _bad_batch("an entry is truncated")
    except struct.error:
        raise _bad_batch("an entry is truncated") from None
    return out


def unpack_batch(frame: bytes, channel: bytes) -> list[list[bytes] | tuple[bytes, ...]]:
    """The entries of a BATCH frame as ``unpack_command_entries`` gives them,
    except that each unconfirmed PUBLISH (empty ref) comes as (topic, body):
    all a broker routes it by, without building its whole message."""
    return _unpack_entries(frame, channel, CLIENT_ENTRY_FRAMES, Cmd.PUBLISH)


def unpack_broker_batch(frame: bytes, channel: bytes) -> list[list[bytes] | tuple[bytes, ...]]:
    """The entries of a BROKER_BATCH frame as ``unpack_command_entries`` gives
    them, except that each unconfirmed DELIVER (empty token) comes as (topic,
    body, sids): all a client hands on, without building its whole message."""
    return _unpack_entries(frame, channel, BROKER_ENTRY_FRAMES, Cmd.DELIVER)


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

# A message, reply or ACK body decodes into two or three arrays and maps; a
# hostile one of 1 MiB can decode into a million (over a second of CPU, most of
# it the cyclic GC's). A body longer than BODY_UNGUARDED octets, unless it has
# the common shape (no headers: at most one array and one empty map), is
# decoded with a budget: at most MAX_BODY_CONTAINERS arrays and maps in all,
# each of at most MAX_BODY_ITEMS elements or entries (so at most that many
# headers). A shorter body cannot hold enough to matter.
BODY_UNGUARDED = 512
MAX_BODY_CONTAINERS = 16
MAX_BODY_ITEMS = 4096


class _OverBudget(Exception):
    pass


def _plain_body(body: bytes) -> bool:
    # [bin 16, Timestamp ext 8, {}, bin]: pack_message's layout without headers.
    return (
        body[:3] == b"\x94\xc4\x10"
        and body[19:21] == b"\xd7\xff"
        and body[29:30] == b"\x80"
        and body[30:31] in (b"\xc4", b"\xc5", b"\xc6")
    )


def _unpack_body(body: bytes, what: str) -> Any:
    """``_unpack`` for a message, reply or ACK body, within the budget above."""
    if len(body) <= BODY_UNGUARDED or _plain_body(body):
        return _unpack(body, what)
    left = MAX_BODY_CONTAINERS

    def count(obj: Any) -> Any:
        nonlocal left
        left -= 1
        if left < 0:
            raise _OverBudget
        return obj

    try:
        return _unpackb(
            body,
            raw=False,
            timestamp=3,
            strict_map_key=True,
            list_hook=count,
            object_hook=count,
            max_array_len=MAX_BODY_ITEMS,
            max_map_len=MAX_BODY_ITEMS,
        )
    except _OverBudget:
        raise ProtocolError(
            ErrorCode.BAD_BODY,
            f"{what} body holds more than {MAX_BODY_CONTAINERS} arrays and maps",
        ) from None
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(
            ErrorCode.BAD_BODY, f"{what} body is not valid msgpack: {exc}"
        ) from None


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
    return _message_fields(_unpack_body(body, "message"))


def message_fields(body: bytes) -> tuple[bytes, datetime, dict[str, str], bytes]:
    """``unpack_message`` as a plain tuple (id as its 16 raw bytes, timestamp,
    headers, payload): the receive path's form, which leaves building the
    ``uuid.UUID`` to whoever reads the id."""
    # One call per delivered message: the common body (no headers) is checked
    # inline, anything else by _fields, which also words the errors. Decoding here
    # rather than through _unpack saves ~0.15 us of its 1.4 us.
    if len(body) > BODY_UNGUARDED and not _plain_body(body):
        return _fields(_unpack_body(body, "message"))
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
    obj = _unpack_body(body, "reply")
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
    errors: tuple[str, ...]


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
# Their AckResults are shared, which is why AckResult is frozen and its errors a tuple.
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
    obj = _unpack_body(body, "ack")
    if not isinstance(obj, list) or len(obj) < 3:
        raise ProtocolError(ErrorCode.BAD_BODY, "ack body must be an array of at least 3")
    delivered, dropped, errors = obj[0], obj[1], obj[2]
    if type(delivered) is not int or type(dropped) is not int or min(delivered, dropped) < 0:
        raise ProtocolError(ErrorCode.BAD_BODY, "ack counts must be non-negative integers")
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise ProtocolError(ErrorCode.BAD_BODY, "ack errors must be an array of str")
    return AckResult(delivered, dropped, tuple(errors))


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
    """Decode a WELCOME body. A hostile or broken broker must not set a client's
    timers or buffers: ``max_message_size`` must be in 1..``MAX_MESSAGE_SIZE``
    and ``heartbeat``, if not 0, in ``HEARTBEAT_MIN_MS``..``HEARTBEAT_MAX_MS``."""
    obj = _unpack_map(body, "WELCOME")
    _check_heartbeat(obj, "WELCOME")
    beat = obj.get("heartbeat", 0)
    if beat and not HEARTBEAT_MIN_MS <= beat <= HEARTBEAT_MAX_MS:
        raise ProtocolError(
            ErrorCode.BAD_BODY,
            f"WELCOME heartbeat {beat} ms is outside {HEARTBEAT_MIN_MS}..{HEARTBEAT_MAX_MS}",
        )
    _check_batch(obj, "WELCOME")
    size = obj.get("max_message_size")
    if type(size) is not int or not 0 < size <= MAX_MESSAGE_SIZE:
        raise ProtocolError(
            ErrorCode.BAD_BODY,
            f"WELCOME max_message_size must be an int in 1..{MAX_MESSAGE_SIZE}",
        )
    return obj


_STREAM_NAME = re.compile(rb"[A-Za-z0-9_-]{1,%d}" % MAX_STREAM_NAME_BYTES)


def check_stream_name(frame: bytes) -> None:
    """BAD_FRAMES unless ``frame`` is a stream name: 1 to 64 of A-Z a-z 0-9 _ -."""
    if _STREAM_NAME.fullmatch(frame) is None:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"stream name must be 1 to {MAX_STREAM_NAME_BYTES} of A-Z a-z 0-9 _ -",
        )


def _flag_rules(frame: bytes) -> None:
    if frame not in (b"\x00", b"\x01"):
        raise ProtocolError(ErrorCode.BAD_FRAMES, "a flag frame is 0x00 or 0x01")


def _ack_kind_rules(frame: bytes) -> None:
    if frame[0] not in _ACK_KINDS:
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"unknown STREAM_ACK kind 0x{frame[0]:02x}")


_ACK_KINDS = frozenset(AckKind)


def pack_stream_request(op: str, **args: Any) -> bytes:
    """Body of STREAM: a msgpack map with ``op`` and its arguments."""
    return _packb({"op": op, **args})


def unpack_stream_request(body: bytes) -> dict[str, Any]:
    """Decode a STREAM or CONSUME body: a map with str keys (STREAM's with a
    str ``op``; the broker checks the rest per op)."""
    obj = _unpack_map(body, "stream request")
    op = obj.get("op")
    if op is not None and not isinstance(op, str):
        raise ProtocolError(ErrorCode.BAD_BODY, "stream request op must be a str")
    return obj


def pack_consume(stream: str, **config: Any) -> bytes:
    """Body of CONSUME: a msgpack map with ``stream`` and the consumer's config."""
    return _packb({"stream": stream, **config})


def pack_stream_reply(result: Mapping[str, Any]) -> bytes:
    """Body of STREAM_REPLY."""
    return _packb(dict(result))


def unpack_stream_reply(body: bytes) -> dict[str, Any]:
    """Decode a STREAM_REPLY body."""
    return _unpack_map(body, "STREAM_REPLY")


def _unpack_map(body: bytes, what: str) -> dict[str, Any]:
    obj = _unpack_body(body, what)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ProtocolError(ErrorCode.BAD_BODY, f"{what} body must be a map with str keys")
    return obj


_CLIENT_PARSERS = {header(c): _parser(layout) for c, layout in CLIENT_LAYOUTS.items()}
_BROKER_PARSERS = {header(c): _parser(layout) for c, layout in BROKER_LAYOUTS.items()}
_ENCODERS: dict[type, Callable[[Any], list[bytes]]] = {
    _class_of(layout): _encoder(layout) for layout in LAYOUTS
}


# The compiled twins of the hot functions above, where built (zmqbus._fastpath);
# the pure ones stay the reference (tests/test_speedups.py holds each pair equal).
unpack_publish_entries = twin(unpack_publish_entries)
pack_unconfirmed_deliver_entry = twin(pack_unconfirmed_deliver_entry)
_unpack_entries = twin(_unpack_entries)
message_fields = twin(message_fields)
pack_message = twin(pack_message)
