#!/usr/bin/env python3
"""Generate the zmqbus wire protocol v1 test vectors in this directory.

Run ``python tests/vectors/generate.py`` from anywhere. The output is fully
deterministic (fixed channel IDs, refs, message IDs and timestamps; no
randomness, no clock), so re-running it rewrites byte-identical files.

Frames are built by hand from ``docs/protocol.md`` with bytes literals and the
``msgpack`` package, on purpose without ``zmqbus.protocol``: the vectors are
an independent statement of the spec that the implementation is tested
against. The file formats are described in ``README.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent

FORMAT = 1
PROTOCOL = "zmqbus/1"

# --- wire constants (docs/protocol.md, "Header frame" and "Commands") -------

SIGNATURE = b"ZB"
VERSION = 1
CMD = {
    "HELLO": 0x01,
    "SUBSCRIBE": 0x02,
    "UNSUBSCRIBE": 0x03,
    "PUBLISH": 0x04,
    "ACK": 0x05,
    "DISCONNECT": 0x06,
    "REQUEST": 0x07,
    "REPLY": 0x08,
    "HEARTBEAT": 0x09,
    "STATS": 0x0A,
    "PUBLISH_BATCH": 0x0B,
    "BATCH": 0x0C,
    "STREAM": 0x0D,
    "CONSUME": 0x0E,
    "STREAM_ACK": 0x0F,
    "WELCOME": 0x81,
    "OK": 0x82,
    "DELIVER": 0x83,
    "ROUTED": 0x84,
    "ACKED": 0x85,
    "ASK": 0x86,
    "ANSWER": 0x87,
    "BROKER_HEARTBEAT": 0x88,
    "BYE": 0x89,
    "STATS_REPLY": 0x8A,
    "DROPPED": 0x8B,
    "DELIVER_BATCH": 0x8C,
    "BROKER_BATCH": 0x8D,
    "ERROR": 0x8F,
    "STREAM_REPLY": 0x90,
    "STORED": 0x91,
    "STREAM_MSG": 0x92,
}
CMD_NAME = {byte: name for name, byte in CMD.items()}
# Commands whose frame 2 is a ref that an ERROR reply echoes. STREAM and
# CONSUME are answered by STREAM_REPLY "or ERROR" with their ref: a client can
# only match that ERROR to its request by the ref, so it is echoed too.
REF_COMMANDS = {
    CMD["SUBSCRIBE"],
    CMD["UNSUBSCRIBE"],
    CMD["PUBLISH"],
    CMD["DISCONNECT"],
    CMD["REQUEST"],
    CMD["STATS"],
    CMD["STREAM"],
    CMD["CONSUME"],
}
# The optional durable streams ("Durable streams"): their commands, the codes
# only they give, and the mark of every vector about them.
STREAM_COMMANDS = {"STREAM", "CONSUME", "STREAM_ACK", "STREAM_REPLY", "STORED", "STREAM_MSG"}
STREAMS = "streams"

BAD_FRAMES = 400
PERMISSION_DENIED = 401
NOT_JOINED = 403
NOT_FOUND = 404
UNKNOWN_COMMAND = 405
BAD_TOPIC = 406
CHANNEL_MISMATCH = 409
CONFLICT = 410
SID_IN_USE = 412
TOO_LARGE = 413
BAD_BODY = 422
LIMIT_REACHED = 429
INTERNAL = 500
CAPACITY = 503
VERSION_NOT_SUPPORTED = 505
STORE_FAILED = 507
STREAM_CODES = {NOT_FOUND, CONFLICT, STORE_FAILED}
# STREAM_ACK kinds.
ACK, NAK, PROGRESS, TERM = 1, 2, 3, 4


def h(name: str) -> bytes:
    """The 4-byte header frame of command ``name`` at version 1."""
    return SIGNATURE + bytes((VERSION, CMD[name]))


def raw_header(sig: bytes, version: int, cmd: int) -> bytes:
    return sig + bytes((version, cmd))


# --- fixed values -------------------------------------------------------------

CHANNEL = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_CHANNEL = bytes.fromhex("ffeeddccbbaa99887766554433221100")
MSG_ID = bytes.fromhex("6f1c4a2e3b5d4e8f9a0b1c2d3e4f5a6b")
TS_NS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
TOKEN = bytes.fromhex("0000000000000001")  # the reference broker's first token
BROKER_NAME = "zmqbus/0.1.0"
CLIENT_NAME = "zmqbus-vectors/1"
DEFAULT_MAX = 1 << 20
SMALL_MAX = 1024


def ref(n: int) -> bytes:
    """An 8-byte big-endian counter, as the reference client makes refs."""
    return n.to_bytes(8, "big")


def sid(*ns: int) -> bytes:
    """Subscription IDs packed into one frame: 4 bytes big-endian each, as the
    reference client numbers them (1, 2, ...)."""
    return b"".join(n.to_bytes(4, "big") for n in ns)


def session(n: int) -> bytes:
    """The reference broker's 8-byte session number of the n-th peer to join."""
    return n.to_bytes(8, "big")


# A reply token: the requester's broker session (the second peer to join)
# followed by the ref of its REQUEST.
REQUEST_REF = ref(9)
# The key of the reply tokens' tags: random in a broker, fixed for the vectors.
REPLY_KEY = bytes(range(32))


def tag(requester: int, responder: int, r: bytes) -> bytes:
    """The tag of the reply token of requester session ``requester``'s ref
    ``r`` in the ASK to session ``responder``, under REPLY_KEY."""
    data = session(requester) + session(responder) + r
    return hashlib.blake2b(data, key=REPLY_KEY, digest_size=16).digest()


TAG = tag(2, 1, REQUEST_REF)
REPLY_TOKEN = session(2) + TAG + REQUEST_REF


def packb(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def ts(ns: int) -> msgpack.Timestamp:
    return msgpack.Timestamp.from_unix_nano(ns)


def message_body(
    msg_id: bytes = MSG_ID,
    ts_ns: int = TS_NS,
    headers: dict[str, str] | None = None,
    payload: bytes = b'{"order":42}',
    extra: tuple[Any, ...] = (),
) -> bytes:
    return packb([msg_id, ts(ts_ns), headers or {}, payload, *extra])


def rfc3339(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    day = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{day}.{frac:09d}Z"


def message_decoded(
    msg_id: bytes = MSG_ID,
    ts_ns: int = TS_NS,
    headers: dict[str, str] | None = None,
    payload: bytes = b'{"order":42}',
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": msg_id.hex(),
        "timestamp_ns": ts_ns,
        "timestamp": rfc3339(ts_ns),
        "headers": headers or {},
        "payload": payload.hex(),
    }


def publish_entry(topic: bytes, body: bytes) -> bytes:
    """topic-length (2, big-endian) topic body-length (4, big-endian) body."""
    return len(topic).to_bytes(2, "big") + topic + len(body).to_bytes(4, "big") + body


def deliver_entry(sids: bytes, topic: bytes, body: bytes) -> bytes:
    """sids-length (2, big-endian) sids, then a publish entry."""
    return len(sids).to_bytes(2, "big") + sids + publish_entry(topic, body)


def ack_body(delivered: int, dropped: int, errors: list[str]) -> bytes:
    return packb([delivered, dropped, errors])


def ack_decoded(delivered: int, dropped: int, errors: list[str]) -> dict[str, Any]:
    return {"type": "ack", "delivered": delivered, "dropped": dropped, "errors": errors}


def reply_body(
    msg_id: bytes = MSG_ID,
    ts_ns: int = TS_NS,
    headers: dict[str, str] | None = None,
    payload: bytes = b'{"total":42}',
    error: str | None = None,
    extra: tuple[Any, ...] = (),
) -> bytes:
    return packb([msg_id, ts(ts_ns), headers or {}, payload, error, *extra])


def reply_decoded(
    msg_id: bytes = MSG_ID,
    ts_ns: int = TS_NS,
    headers: dict[str, str] | None = None,
    payload: bytes = b'{"total":42}',
    error: str | None = None,
) -> dict[str, Any]:
    out = message_decoded(msg_id, ts_ns, headers, payload)
    out["type"] = "reply"
    out["error"] = error
    return out


HELLO_MAP = {"client": CLIENT_NAME}
HELLO_BODY = packb(HELLO_MAP)
WELCOME_MAP = {"broker": BROKER_NAME, "max_message_size": DEFAULT_MAX}
WELCOME_BODY = packb(WELCOME_MAP)
BODY = message_body()
BODY_DECODED = message_decoded()
HEADERS = {"content-type": "application/json", "trace": "ünïcødé"}
LEFT_TEXT = "subscribing bus left before confirming"
REPLY_BODY = reply_body()
REPLY_DECODED = reply_decoded()
# Heartbeats: the interval a client asks for in HELLO and the broker agrees to
# in WELCOME, in milliseconds (the reference client asks for 2000).
HEARTBEAT_MS = 2000
HELLO_HB_MAP = {"client": CLIENT_NAME, "heartbeat": HEARTBEAT_MS}
HELLO_HB_BODY = packb(HELLO_HB_MAP)
WELCOME_HB_MAP = {"broker": BROKER_NAME, "max_message_size": DEFAULT_MAX, "heartbeat": HEARTBEAT_MS}
WELCOME_HB_BODY = packb(WELCOME_HB_MAP)
# A STATS_REPLY body with the keys of the reference broker, in its order. The
# keys of "errors" are error codes as decimal text (msgpack map keys are str).
STATS_MAP: dict[str, Any] = {
    "broker": BROKER_NAME,
    "peers": 3,
    "channels": 2,
    "subscriptions": 5,
    "queue_groups": 1,
    "pending_confirmations": 0,
    "counters": {
        "messages_in": 1234,
        "connects": 4,
        "subscribes": 5,
        "published": 1000,
        "delivered": 2000,
        "heartbeats_in": 42,
        "heartbeats_out": 40,
        "expired": 1,
        "errors": 3,
        "messages_out": 3100,
    },
    "errors": {"403": 1, "406": 2},
}
STATS_BODY = packb(STATS_MAP)


def sized_body(size: int, make: Any = None) -> bytes:
    """A valid message (or, with ``make=reply_body``, reply) body of exactly
    ``size`` bytes, its payload padded with b"x"."""
    make = make or message_body
    n = max(0, size - len(make(payload=b"")) - 3)
    while True:
        body: bytes = make(payload=b"x" * n)
        if len(body) == size:
            return body
        if len(body) > size:
            raise ValueError(f"cannot build a body of exactly {size} bytes")
        n += 1


def hexes(frames: list[bytes]) -> list[str]:
    return [f.hex() for f in frames]


# --- batches of commands (BATCH, BROKER_BATCH) -----------------------------------
# Negotiated with "batch_commands" in HELLO and WELCOME, independently of "batch".

HELLO_BC_MAP = {"client": CLIENT_NAME, "batch_commands": True}
HELLO_BC_BODY = packb(HELLO_BC_MAP)
WELCOME_BC_MAP = {**WELCOME_MAP, "batch_commands": True}
WELCOME_BC_BODY = packb(WELCOME_BC_MAP)
EU = b"orders.eu.created"
US = b"orders.us.created"
RT = b"billing.total"
SECOND = message_body(msg_id=bytes(range(16, 32)), payload=b'{"order":43}')
SECOND_DECODED = message_decoded(msg_id=bytes(range(16, 32)), payload=b'{"order":43}')
ACK_BODY = ack_body(1, 0, [])
ACK_DECODED = ack_decoded(1, 0, [])
REPLY_ERROR_BODY = reply_body(payload=b"", error="ValueError: no such account")
REPLY_ERROR_DECODED = reply_decoded(payload=b"", error="ValueError: no such account")
# Commands an entry may hold, with the frames it has after the channel frame.
CLIENT_ENTRY_FRAMES = {"PUBLISH": 3, "ACK": 2, "REQUEST": 3, "REPLY": 2}
BROKER_ENTRY_FRAMES = {"DELIVER": 4, "ROUTED": 2, "ACKED": 2, "ASK": 4, "ANSWER": 2}


def tok(n: int) -> bytes:
    """The reference broker's n-th delivery token: 8 bytes, big-endian."""
    return n.to_bytes(8, "big")


def command_entry(frames: list[bytes]) -> bytes:
    """One entry of BATCH or BROKER_BATCH for the whole message ``frames``: its
    command byte, then each frame after the channel frame as frame-length (4,
    big-endian) and the frame."""
    return frames[0][3:4] + b"".join(len(f).to_bytes(4, "big") + f for f in frames[2:])


def batch_of(name: str, messages: list[list[bytes]], channel: bytes = CHANNEL) -> list[bytes]:
    """The BATCH or BROKER_BATCH (``name``) carrying ``messages`` in order."""
    return [h(name), channel, b"".join(command_entry(m) for m in messages)]


def entry_of(
    frames: list[bytes], body: dict[str, Any] | None = None, code: int | None = None
) -> dict[str, Any]:
    """How valid.json lists one entry: the message it stands for, its decoded
    body (if the command has one) and, for an entry refused alone, the code."""
    out: dict[str, Any] = {"command": CMD_NAME[frames[0][3]], "frames": hexes(frames)}
    if body is not None:
        out["body"] = body
    if code is not None:
        out["code"] = code
    return out


def publish(r: bytes, topic: bytes = EU, body: bytes = BODY) -> list[bytes]:
    return [h("PUBLISH"), CHANNEL, r, topic, body]


def deliver(t: bytes, topic: bytes = EU, body: bytes = BODY, sids: bytes = b"") -> list[bytes]:
    return [h("DELIVER"), CHANNEL, t, topic, body, sids or sid(1)]


def ack(t: bytes, body: bytes = ACK_BODY) -> list[bytes]:
    return [h("ACK"), CHANNEL, t, body]


def acked(r: bytes, body: bytes = ACK_BODY) -> list[bytes]:
    return [h("ACKED"), CHANNEL, r, body]


def routed(r: bytes, n: int) -> list[bytes]:
    return [h("ROUTED"), CHANNEL, r, n.to_bytes(4, "big")]


# The story of "batch-commands-self" (exchanges.json): peer A (session 1) asked
# for batch_commands, subscribed sid 1 to "orders.>", and published ref 2 to
# orders.eu.created (token 1). It then sends BATCH_SELF, answered by
# BROKER_BATCH_SELF.
BATCH_SELF = batch_of("BATCH", [publish(ref(3), US, SECOND), ack(tok(1))])
BROKER_BATCH_SELF = batch_of(
    "BROKER_BATCH", [deliver(tok(2), US, SECOND), routed(ref(3), 1), acked(ref(2))]
)
# The story of "batch-commands-request": the requester (session 2) sends refs 9
# and 10 in one BATCH; the responder (session 1, sid 4) answers both in one.
REQUEST_REF_2 = ref(10)
REPLY_TOKEN_2 = session(2) + tag(2, 1, REQUEST_REF_2) + REQUEST_REF_2
BATCH_REQUESTS = batch_of(
    "BATCH",
    [
        [h("REQUEST"), CHANNEL, REQUEST_REF, RT, BODY],
        [h("REQUEST"), CHANNEL, REQUEST_REF_2, RT, SECOND],
    ],
)
BROKER_BATCH_ASKS = batch_of(
    "BROKER_BATCH",
    [
        [h("ASK"), CHANNEL, REPLY_TOKEN, RT, BODY, sid(4)],
        [h("ASK"), CHANNEL, REPLY_TOKEN_2, RT, SECOND, sid(4)],
    ],
)
BATCH_REPLIES = batch_of(
    "BATCH",
    [
        [h("REPLY"), CHANNEL, REPLY_TOKEN, REPLY_BODY],
        [h("REPLY"), CHANNEL, REPLY_TOKEN_2, REPLY_ERROR_BODY],
    ],
)
BROKER_BATCH_ANSWERS = batch_of(
    "BROKER_BATCH",
    [
        [h("ANSWER"), CHANNEL, REQUEST_REF, REPLY_BODY],
        [h("ANSWER"), CHANNEL, REQUEST_REF_2, REPLY_ERROR_BODY],
    ],
)


# --- durable streams (optional: "Durable streams") ---------------------------------
# One story: consumer C is the first peer to join (session 1), publisher P the
# second, asking for "streams". P adds stream ORDERS (orders.>) with ref 11,
# publishes 16 messages on orders.us.created, then the confirmed PUBLISH of
# "publish-confirmed" (ref 6): the 17th message, answered by STORED seq 17 and
# ROUTED 0; the same PUBLISH again is a duplicate of seq 17. C binds sid 1 to
# the durable consumer "billing" (the broker's first consumer) with ref 13 and
# gets the 17 messages; it NAKs seq 17 for 5 s, gets it again (delivery 2)
# and ACKs it.

STREAM_NAME = "ORDERS"
ORDERS_CONFIG = {"name": STREAM_NAME, "subjects": ["orders.>"]}
CONSUME_MAP = {"stream": STREAM_NAME, "durable": "billing", "ack_wait": 30000}
STREAM_SEQ = 17
REF_ADD, REF_LIST, REF_CONSUME = ref(11), ref(12), ref(13)
# The key of STREAM_MSG tokens' tags: random in a broker, fixed for the vectors.
STREAM_KEY = bytes(range(32, 64))


def stream_token(consumer: int, seq: int, receiver: int) -> bytes:
    """A STREAM_MSG token as the reference broker makes it, under STREAM_KEY:
    the consumer's number (4 octets) and the sequence (8), then a 16-octet tag,
    BLAKE2b of the receiving session and those 12 octets. The spec makes it
    opaque to clients; the reference's form lets a test hand the vectors' tokens
    to a broker keyed like them."""
    head = consumer.to_bytes(4, "big") + seq.to_bytes(8, "big")
    tag = hashlib.blake2b(session(receiver) + head, key=STREAM_KEY, digest_size=16).digest()
    return head + tag


STREAM_TOKEN = stream_token(1, STREAM_SEQ, 1)


def meta(seq: int, deliveries: int) -> bytes:
    """STREAM_MSG's meta frame: the sequence (8 octets), then the deliveries (4)."""
    return seq.to_bytes(8, "big") + deliveries.to_bytes(4, "big")


def stream_ack(
    kind: int, delay: int | None = None, text: str = "", channel: bytes = CHANNEL
) -> list[bytes]:
    """STREAM_ACK of STREAM_TOKEN; ``delay`` None is the empty frame."""
    wait = b"" if delay is None else delay.to_bytes(4, "big")
    return [h("STREAM_ACK"), channel, STREAM_TOKEN, bytes((kind,)), wait, text.encode()]


# What the reference broker answers: ORDERS's info just after "add" (the config
# filled with its defaults, an empty stream numbering from 1), and the info of
# "billing" as CONSUME binds it.
ORDERS_INFO: dict[str, Any] = {
    "name": STREAM_NAME,
    "config": {
        **ORDERS_CONFIG,
        "retention": "limits",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0.0,
        "max_msg_size": -1,
        "discard": "old",
        "storage": "file",
        "duplicate_window": 120.0,
    },
    "messages": 0,
    "bytes": 0,
    "first_seq": 1,
    "last_seq": 0,
    "consumers": 0,
}
BILLING_INFO: dict[str, Any] = {
    "stream": STREAM_NAME,
    "name": "billing",
    "config": {
        "stream": STREAM_NAME,
        "durable": "billing",
        "filter": None,
        "deliver": "all",
        "start_seq": 0,
        "start_time": 0.0,
        "ack_wait": CONSUME_MAP["ack_wait"],
        "max_deliver": -1,
        "backoff": [],
        "dead_letter": None,
        "max_ack_pending": 1000,
    },
    "delivered": 0,
    "ack_floor": 0,
    "pending": 0,
    "waiting": 1,
    "redelivered": 0,
}


# --- valid.json -----------------------------------------------------------------


def valid_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        direction: str,
        command: str,
        frames: list[bytes],
        fields: dict[str, Any],
        body: dict[str, Any] | None,
        description: str,
        entries: list[dict[str, Any]] | None = None,
        feature: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        vec: dict[str, Any] = {
            "name": name,
            "description": description,
            "direction": direction,
            "command": command,
            "frames": hexes(frames),
            "fields": fields,
        }
        if body is not None:
            vec["body"] = body
        if entries is not None:
            vec["entries"] = entries
        if feature is not None:
            vec["feature"] = feature
        vec.update(extra or {})
        out.append(vec)

    ch = CHANNEL.hex()
    hello = {"type": "hello", "map": HELLO_MAP}
    # -- client -> broker
    add(
        "hello",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, HELLO_BODY],
        {"channel": ch},
        hello,
        "Join channel 00112233-4455-6677-8899-aabbccddeeff.",
    )
    extra_hello = {"client": "zmqbus-go/0.3", "lang": "go", "pid": 4242}
    add(
        "hello-extra-keys",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, packb(extra_hello)],
        {"channel": ch},
        {"type": "hello", "map": extra_hello},
        "A HELLO map may carry keys beyond 'client'; the broker ignores them.",
    )
    add(
        "hello-empty-map",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, packb({})],
        {"channel": ch},
        {"type": "hello", "map": {}},
        "The broker accepts any map with str keys, even without 'client'.",
    )
    for name, n, pattern, what in [
        ("subscribe", 1, "orders.eu.created", "a literal pattern"),
        ("subscribe-star", 2, "orders.*.created", "'*' matches exactly one token"),
        ("subscribe-tail", 3, "orders.>", "'>' matches one or more trailing tokens"),
        ("subscribe-everything", 4, ">", "'>' alone matches every topic"),
    ]:
        add(
            name,
            "client",
            "SUBSCRIBE",
            [h("SUBSCRIBE"), CHANNEL, ref(n), sid(n), pattern.encode(), b""],
            {
                "channel": ch,
                "ref": ref(n).hex(),
                "sid": sid(n).hex(),
                "pattern": pattern,
                "queue": "",
            },
            None,
            f"Open subscription {n} on {pattern!r} ({what}); an empty queue frame: "
            "a plain subscription.",
        )
    add(
        "subscribe-empty-ref",
        "client",
        "SUBSCRIBE",
        [h("SUBSCRIBE"), CHANNEL, b"", sid(5), b"orders.>", b""],
        {"channel": ch, "ref": "", "sid": sid(5).hex(), "pattern": "orders.>", "queue": ""},
        None,
        "A ref may be empty (0 bytes); the OK then carries an empty ref.",
    )
    add(
        "subscribe-sid-any-bytes",
        "client",
        "SUBSCRIBE",
        [h("SUBSCRIBE"), CHANNEL, ref(1), b"\xff\x00\x00\x00", b"orders.>", b""],
        {"channel": ch, "ref": ref(1).hex(), "sid": "ff000000", "pattern": "orders.>", "queue": ""},
        None,
        "A sid is any 4 bytes the client chooses; the broker treats it as opaque.",
    )
    for name, n, queue, what in [
        ("subscribe-queue", 6, "workers", "a one-token queue name"),
        ("subscribe-queue-dotted", 7, "billing.eu-west", "queue names may have several tokens"),
        ("subscribe-queue-64-bytes", 8, "q" * 64, "the longest queue name: 64 bytes"),
        ("subscribe-queue-utf8", 9, "трудяги", "queue names are UTF-8"),
    ]:
        add(
            name,
            "client",
            "SUBSCRIBE",
            [h("SUBSCRIBE"), CHANNEL, ref(n), sid(n), b"orders.>", queue.encode()],
            {
                "channel": ch,
                "ref": ref(n).hex(),
                "sid": sid(n).hex(),
                "pattern": "orders.>",
                "queue": queue,
            },
            None,
            f"Join the queue group ('orders.>', {queue!r}) with subscription {n} ({what}): "
            "each message goes to one member of the group.",
        )
    add(
        "unsubscribe",
        "client",
        "UNSUBSCRIBE",
        [h("UNSUBSCRIBE"), CHANNEL, ref(5), sid(3)],
        {"channel": ch, "ref": ref(5).hex(), "sids": sid(3).hex()},
        None,
        "Close subscription 3.",
    )
    add(
        "unsubscribe-several-sids",
        "client",
        "UNSUBSCRIBE",
        [h("UNSUBSCRIBE"), CHANNEL, ref(5), sid(1, 2, 7)],
        {"channel": ch, "ref": ref(5).hex(), "sids": sid(1, 2, 7).hex()},
        None,
        "Close subscriptions 1, 2 and 7 with one command: sids packed 4 bytes each.",
    )
    add(
        "unsubscribe-empty-ref",
        "client",
        "UNSUBSCRIBE",
        [h("UNSUBSCRIBE"), CHANNEL, b"", sid(99)],
        {"channel": ch, "ref": "", "sids": sid(99).hex()},
        None,
        "An empty ref; a sid that is not open is ignored (the broker answers OK all the same).",
    )
    add(
        "publish-unconfirmed",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, b"", b"orders.eu.created", BODY],
        {"channel": ch, "ref": "", "topic": "orders.eu.created"},
        BODY_DECODED,
        "Fire-and-forget publish: empty ref, no ROUTED/ACKED replies.",
    )
    add(
        "publish-confirmed",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, ref(6), b"orders.eu.created", BODY],
        {"channel": ch, "ref": ref(6).hex(), "topic": "orders.eu.created"},
        BODY_DECODED,
        "Confirmed publish: a non-empty ref asks for ROUTED and one ACKED per subscriber.",
    )
    body_h = message_body(headers=HEADERS, payload=b"")
    add(
        "publish-headers-empty-payload",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, b"", b"orders.eu.created", body_h],
        {"channel": ch, "ref": "", "topic": "orders.eu.created"},
        message_decoded(headers=HEADERS, payload=b""),
        "Headers are a map of str to str; the payload may be empty.",
    )
    ref32 = bytes(range(1, 33))
    add(
        "publish-ref-32-bytes",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, ref32, b"orders.eu.created", BODY],
        {"channel": ch, "ref": ref32.hex(), "topic": "orders.eu.created"},
        BODY_DECODED,
        "The longest ref allowed: 32 bytes.",
    )
    topic256 = ".".join(["abcdefg"] * 32)  # 32 * 7 + 31 dots = 255
    topic256 += "h"
    assert len(topic256.encode()) == 256
    add(
        "publish-topic-256-bytes",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, b"", topic256.encode(), BODY],
        {"channel": ch, "ref": "", "topic": topic256},
        BODY_DECODED,
        "The longest topic allowed: 256 bytes of UTF-8.",
    )
    utopic = "café.événement.日本"
    add(
        "publish-topic-utf8",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, b"", utopic.encode(), BODY],
        {"channel": ch, "ref": "", "topic": utopic},
        BODY_DECODED,
        "Topics are UTF-8; tokens may hold any non-whitespace, non-control character.",
    )
    edge = "x\u00a1.\u200b.\u2010"
    add(
        "publish-topic-edge-characters",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, b"", edge.encode(), BODY],
        {"channel": ch, "ref": "", "topic": edge},
        BODY_DECODED,
        "U+00A1 (first character after the forbidden U+007F..U+00A0), U+200B ZERO WIDTH "
        "SPACE and U+2010 HYPHEN are allowed in tokens.",
    )
    add(
        "publish-topic-punctuation",
        "client",
        "PUBLISH",
        [h("PUBLISH"), CHANNEL, b"", b"a-b_c.$sys.#1.x/y:z", BODY],
        {"channel": ch, "ref": "", "topic": "a-b_c.$sys.#1.x/y:z"},
        BODY_DECODED,
        "Punctuation other than '.', '*' and '>' is ordinary token text.",
    )
    add(
        "ack",
        "client",
        "ACK",
        [h("ACK"), CHANNEL, TOKEN, ack_body(1, 0, [])],
        {"channel": ch, "token": TOKEN.hex()},
        ack_decoded(1, 0, []),
        "Confirm a DELIVER: one local subscription took the message.",
    )
    errs = ["ValueError: boom"]
    add(
        "ack-with-errors",
        "client",
        "ACK",
        [h("ACK"), CHANNEL, TOKEN, ack_body(1, 1, errs)],
        {"channel": ch, "token": TOKEN.hex()},
        ack_decoded(1, 1, errs),
        "One subscription took it, one dropped it (buffer full), one handler raised.",
    )
    add(
        "disconnect",
        "client",
        "DISCONNECT",
        [h("DISCONNECT"), CHANNEL, ref(7)],
        {"channel": ch, "ref": ref(7).hex()},
        None,
        "Leave; answered by OK once everything sent before has been processed.",
    )
    add(
        "disconnect-empty-ref",
        "client",
        "DISCONNECT",
        [h("DISCONNECT"), CHANNEL, b""],
        {"channel": ch, "ref": ""},
        None,
        "DISCONNECT with an empty ref is valid.",
    )
    add(
        "request",
        "client",
        "REQUEST",
        [h("REQUEST"), CHANNEL, REQUEST_REF, b"billing.total", BODY],
        {"channel": ch, "ref": REQUEST_REF.hex(), "topic": "billing.total"},
        BODY_DECODED,
        "Ask the subscribers of 'billing.total' for a reply; answered by ROUTED, then ANSWERs.",
    )
    for name, r, what in [
        ("request-ref-1-byte", b"\x01", "the shortest ref: 1 byte"),
        ("request-ref-8-bytes", bytes(range(1, 9)), "the longest ref: 8 bytes (32 - 8 - 16)"),
    ]:
        add(
            name,
            "client",
            "REQUEST",
            [h("REQUEST"), CHANNEL, r, b"billing.total", BODY],
            {"channel": ch, "ref": r.hex(), "topic": "billing.total"},
            BODY_DECODED,
            f"A REQUEST ref must not be empty; {what}.",
        )
    add(
        "reply",
        "client",
        "REPLY",
        [h("REPLY"), CHANNEL, REPLY_TOKEN, REPLY_BODY],
        {"channel": ch, "token": REPLY_TOKEN.hex()},
        REPLY_DECODED,
        "Answer the ASK that carried this token (session 2, tag, ref 9); error nil: a reply.",
    )
    err_body = reply_body(payload=b"", error="ValueError: no such account")
    add(
        "reply-error",
        "client",
        "REPLY",
        [h("REPLY"), CHANNEL, REPLY_TOKEN, err_body],
        {"channel": ch, "token": REPLY_TOKEN.hex()},
        reply_decoded(payload=b"", error="ValueError: no such account"),
        "A responder that failed: the error text makes the requester raise.",
    )
    for name, token, what in [
        (
            "reply-token-25-bytes",
            session(2) + tag(2, 1, b"\x01") + b"\x01",
            "the shortest: session + tag + a 1-byte ref",
        ),
        (
            "reply-token-32-bytes",
            session(2) + tag(2, 1, bytes(range(1, 9))) + bytes(range(1, 9)),
            "the longest: session + tag + an 8-byte ref",
        ),
    ]:
        add(
            name,
            "client",
            "REPLY",
            [h("REPLY"), CHANNEL, token, REPLY_BODY],
            {"channel": ch, "token": token.hex()},
            REPLY_DECODED,
            f"A reply token is 9 to 32 bytes; {what}.",
        )
    add(
        "hello-heartbeat",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, HELLO_HB_BODY],
        {"channel": ch},
        {"type": "hello", "map": HELLO_HB_MAP},
        f"Join and ask for heartbeats every {HEARTBEAT_MS} ms (what the reference client asks).",
    )
    for name, ms, what in [
        ("hello-heartbeat-zero", 0, "0 means no heartbeats, as if the key were absent"),
        ("hello-heartbeat-below-minimum", 50, "the broker clamps 50 ms up to 100 ms"),
        ("hello-heartbeat-above-maximum", 3_600_000, "the broker clamps an hour to 60000 ms"),
    ]:
        hb_map = {"client": CLIENT_NAME, "heartbeat": ms}
        add(
            name,
            "client",
            "HELLO",
            [h("HELLO"), CHANNEL, packb(hb_map)],
            {"channel": ch},
            {"type": "hello", "map": hb_map},
            f"A heartbeat of {ms} ms is valid: {what}.",
        )
    add(
        "heartbeat",
        "client",
        "HEARTBEAT",
        [h("HEARTBEAT"), CHANNEL],
        {"channel": ch},
        None,
        "A joined client is alive; the broker answers nothing.",
    )
    add(
        "stats",
        "client",
        "STATS",
        [h("STATS"), CHANNEL, ref(10)],
        {"channel": ch, "ref": ref(10).hex()},
        None,
        "Ask for the broker's counters; allowed with or without HELLO, answered by STATS_REPLY.",
    )
    add(
        "stats-no-channel",
        "client",
        "STATS",
        [h("STATS"), b"", ref(10)],
        {"channel": "", "ref": ref(10).hex()},
        None,
        "STATS with an empty channel frame (a monitor that belongs to no channel).",
    )
    add(
        "stats-other-channel-empty-ref",
        "client",
        "STATS",
        [h("STATS"), OTHER_CHANNEL, b""],
        {"channel": OTHER_CHANNEL.hex(), "ref": ""},
        None,
        "The STATS channel is informative only: a peer joined to another channel gets no 409; "
        "the ref may be empty.",
    )
    # -- broker -> client
    add(
        "welcome",
        "broker",
        "WELCOME",
        [h("WELCOME"), CHANNEL, WELCOME_BODY],
        {"channel": ch},
        {"type": "welcome", "map": WELCOME_MAP},
        "Accept a HELLO; the body tells the client the broker's max_message_size.",
    )
    small = {"broker": BROKER_NAME, "max_message_size": SMALL_MAX}
    add(
        "welcome-small-limit",
        "broker",
        "WELCOME",
        [h("WELCOME"), CHANNEL, packb(small)],
        {"channel": ch},
        {"type": "welcome", "map": small},
        "WELCOME of a broker started with max_message_size=1024.",
    )
    add(
        "ok",
        "broker",
        "OK",
        [h("OK"), CHANNEL, ref(1)],
        {"channel": ch, "ref": ref(1).hex()},
        None,
        "Completes the SUBSCRIBE, UNSUBSCRIBE or DISCONNECT that carried ref 1.",
    )
    add(
        "ok-empty-ref",
        "broker",
        "OK",
        [h("OK"), CHANNEL, b""],
        {"channel": ch, "ref": ""},
        None,
        "OK echoing an empty ref.",
    )
    add(
        "deliver-unconfirmed",
        "broker",
        "DELIVER",
        [h("DELIVER"), CHANNEL, b"", b"orders.eu.created", BODY, sid(1)],
        {"channel": ch, "token": "", "topic": "orders.eu.created", "sids": sid(1).hex()},
        BODY_DECODED,
        "A message from an unconfirmed publish for subscription 1: empty token, must not be ACKed.",
    )
    add(
        "deliver-confirmed",
        "broker",
        "DELIVER",
        [h("DELIVER"), CHANNEL, TOKEN, b"orders.eu.created", BODY, sid(1)],
        {"channel": ch, "token": TOKEN.hex(), "topic": "orders.eu.created", "sids": sid(1).hex()},
        BODY_DECODED,
        "A message from a confirmed publish: the subscriber must ACK this token once.",
    )
    add(
        "deliver-several-sids",
        "broker",
        "DELIVER",
        [h("DELIVER"), CHANNEL, TOKEN, b"orders.eu.created", BODY, sid(1, 3, 6)],
        {
            "channel": ch,
            "token": TOKEN.hex(),
            "topic": "orders.eu.created",
            "sids": sid(1, 3, 6).hex(),
        },
        BODY_DECODED,
        "One DELIVER for three subscriptions of one peer (here plain 1 and 3, and 6 picked "
        "from its queue group); one ACK covers them all.",
    )
    add(
        "ask",
        "broker",
        "ASK",
        [h("ASK"), CHANNEL, REPLY_TOKEN, b"billing.total", BODY, sid(4)],
        {"channel": ch, "token": REPLY_TOKEN.hex(), "topic": "billing.total", "sids": sid(4).hex()},
        BODY_DECODED,
        "A request for subscription 4; the token is the requester's session (2) followed by "
        "the ref of its REQUEST (9). A REPLY must carry it.",
    )
    add(
        "ask-several-sids",
        "broker",
        "ASK",
        [h("ASK"), CHANNEL, REPLY_TOKEN, b"billing.total", BODY, sid(4, 5)],
        {
            "channel": ch,
            "token": REPLY_TOKEN.hex(),
            "topic": "billing.total",
            "sids": sid(4, 5).hex(),
        },
        BODY_DECODED,
        "A request for two subscriptions of one peer in one ASK.",
    )
    add(
        "answer",
        "broker",
        "ANSWER",
        [h("ANSWER"), CHANNEL, REQUEST_REF, REPLY_BODY],
        {"channel": ch, "ref": REQUEST_REF.hex()},
        REPLY_DECODED,
        "A responder's REPLY body, forwarded unchanged to the requester of ref 9.",
    )
    add(
        "answer-error",
        "broker",
        "ANSWER",
        [h("ANSWER"), CHANNEL, REQUEST_REF, err_body],
        {"channel": ch, "ref": REQUEST_REF.hex()},
        reply_decoded(payload=b"", error="ValueError: no such account"),
        "A responder's failure, forwarded to the requester, which raises it.",
    )
    for n in (0, 1, 2, 70000):
        add(
            f"routed-{n}",
            "broker",
            "ROUTED",
            [h("ROUTED"), CHANNEL, ref(6), n.to_bytes(4, "big")],
            {"channel": ch, "ref": ref(6).hex(), "count": n},
            None,
            f"The confirmed publish with ref 6 went to {n} subscribing peer(s).",
        )
    add(
        "routed-request-no-responders",
        "broker",
        "ROUTED",
        [h("ROUTED"), CHANNEL, REQUEST_REF, (0).to_bytes(4, "big")],
        {"channel": ch, "ref": REQUEST_REF.hex(), "count": 0},
        None,
        "The REQUEST with ref 9 reached no subscription: no ANSWER will come.",
    )
    add(
        "routed-request",
        "broker",
        "ROUTED",
        [h("ROUTED"), CHANNEL, REQUEST_REF, (2).to_bytes(4, "big")],
        {"channel": ch, "ref": REQUEST_REF.hex(), "count": 2},
        None,
        "The REQUEST with ref 9 was sent as ASK to 2 peers; the first ANSWER wins.",
    )
    add(
        "acked",
        "broker",
        "ACKED",
        [h("ACKED"), CHANNEL, ref(6), ack_body(1, 0, [])],
        {"channel": ch, "ref": ref(6).hex()},
        ack_decoded(1, 0, []),
        "One subscriber's ACK body, forwarded unchanged to the publisher of ref 6.",
    )
    add(
        "acked-subscriber-left",
        "broker",
        "ACKED",
        [h("ACKED"), CHANNEL, ref(6), ack_body(0, 0, [LEFT_TEXT])],
        {"channel": ch, "ref": ref(6).hex()},
        ack_decoded(0, 0, [LEFT_TEXT]),
        "Synthetic ACKED the broker makes when a subscriber leaves with the token unACKed.",
    )
    add(
        "acked-dropped-at-broker",
        "broker",
        "ACKED",
        [h("ACKED"), CHANNEL, ref(6), ack_body(0, 1, [])],
        {"channel": ch, "ref": ref(6).hex()},
        ack_decoded(0, 1, []),
        "Synthetic ACKED the broker makes when it cannot queue a confirmed DELIVER for a "
        "subscriber (its queue is full or its connection is gone): one drop.",
    )
    for code, text, with_ref in [
        (BAD_FRAMES, "SUBSCRIBE takes 6 frames, got 3", True),
        (NOT_JOINED, "send HELLO before any other command", True),
        (PERMISSION_DENIED, "user 'billing' may not publish or request on 'orders.x'", True),
        (UNKNOWN_COMMAND, "unknown command 0x7f", False),
        (BAD_TOPIC, "cannot publish to a pattern: 'orders.*'", True),
        (CHANNEL_MISMATCH, "channel frame differs from the channel joined", True),
        (SID_IN_USE, "sid 00000001 is open with another pattern or queue", True),
        (TOO_LARGE, "message body of 2000 bytes exceeds max_message_size 1024", True),
        (BAD_BODY, "HELLO body must be a map with str keys", False),
        (LIMIT_REACHED, "too many subscriptions: max_subscriptions_per_peer is 10000", True),
        (INTERNAL, "internal error", False),
        (CAPACITY, "broker has no room for a peer: max_peers is 10000", False),
        (VERSION_NOT_SUPPORTED, "protocol version 2 not supported (this side speaks 1)", False),
        (NOT_FOUND, "no stream 'ORDERS' on this channel", True),
        (CONFLICT, "stream 'ORDERS' exists with another config", True),
        (STORE_FAILED, "the broker's store failed: disk full", True),
    ]:
        r = ref(8) if with_ref else b""
        add(
            f"error-{code}",
            "broker",
            "ERROR",
            [h("ERROR"), CHANNEL, r, code.to_bytes(2, "big"), text.encode(), b""],
            {"channel": ch, "ref": r.hex(), "code": code, "text": text, "retry_after": None},
            None,
            f"ERROR {code}" + (" echoing the request's ref." if with_ref else " with no ref."),
            feature=STREAMS if code in STREAM_CODES else None,
        )
    add(
        "error-no-channel",
        "broker",
        "ERROR",
        [h("ERROR"), b"", b"", (400).to_bytes(2, "big"), b"empty message", b""],
        {"channel": "", "ref": "", "code": 400, "text": "empty message", "retry_after": None},
        None,
        "ERROR's channel frame is empty when the request had no 16-byte channel frame.",
    )
    add(
        "error-utf8-text",
        "broker",
        "ERROR",
        [h("ERROR"), CHANNEL, ref(9), (406).to_bytes(2, "big"), "bad topic «ä b»".encode(), b""],
        {
            "channel": ch,
            "ref": ref(9).hex(),
            "code": 406,
            "text": "bad topic «ä b»",
            "retry_after": None,
        },
        None,
        "ERROR text is UTF-8.",
    )
    add(
        "welcome-heartbeat",
        "broker",
        "WELCOME",
        [h("WELCOME"), CHANNEL, WELCOME_HB_BODY],
        {"channel": ch},
        {"type": "welcome", "map": WELCOME_HB_MAP},
        f"Accept a HELLO that asked for heartbeats: the agreed interval is {HEARTBEAT_MS} ms.",
    )
    add(
        "broker-heartbeat",
        "broker",
        "BROKER_HEARTBEAT",
        [h("BROKER_HEARTBEAT"), CHANNEL],
        {"channel": ch},
        None,
        "The broker is alive; sent every agreed interval to a peer that asked for heartbeats.",
    )
    add(
        "bye",
        "broker",
        "BYE",
        [h("BYE"), CHANNEL],
        {"channel": ch},
        None,
        "The broker is shutting down: the session is over; reconnect later.",
    )
    counts = sid(1) + (3).to_bytes(4, "big") + sid(2) + (1).to_bytes(4, "big")
    add(
        "dropped",
        "broker",
        "DROPPED",
        [h("DROPPED"), CHANNEL, counts, bytes(4)],
        {"channel": ch, "counts": counts.hex(), "throttled": 0},
        None,
        "The broker could not queue 3 messages for sid 1 and 1 for sid 2 (a slow consumer); "
        "sent before the next message it does queue for the peer.",
    )
    add(
        "dropped-throttled",
        "broker",
        "DROPPED",
        [h("DROPPED"), CHANNEL, b"", (7).to_bytes(4, "big")],
        {"channel": ch, "counts": "", "throttled": 7},
        None,
        "The peer's user's rate limit dropped 7 of its unconfirmed publishes; no delivery "
        "to it was dropped (the counts frame is empty).",
    )
    add(
        "error-429-retry-after",
        "broker",
        "ERROR",
        [
            h("ERROR"),
            CHANNEL,
            ref(8),
            (429).to_bytes(2, "big"),
            RATE_TEXT.encode(),
            (250).to_bytes(4, "big"),
        ],
        {"channel": ch, "ref": ref(8).hex(), "code": 429, "text": RATE_TEXT, "retry_after": 250},
        None,
        "ERROR 429 refusing a confirmed PUBLISH over its user's rate limit: it may pass in 250 ms.",
    )
    add(
        "stats-reply",
        "broker",
        "STATS_REPLY",
        [h("STATS_REPLY"), CHANNEL, ref(10), STATS_BODY],
        {"channel": ch, "ref": ref(10).hex()},
        {"type": "stats", "map": STATS_MAP},
        "Answer to STATS ref 10: counts, counters and refusals by error code (decimal str keys).",
    )
    minimal = {"peers": 0}
    add(
        "stats-reply-no-channel",
        "broker",
        "STATS_REPLY",
        [h("STATS_REPLY"), b"", b"", packb(minimal)],
        {"channel": "", "ref": ""},
        {"type": "stats", "map": minimal},
        "Answer to a STATS with empty channel and ref frames, which it echoes; any map with "
        "str keys is a valid body.",
    )
    # -- batches (optional, negotiated with "batch" in HELLO and WELCOME)
    hello_batch = {"client": CLIENT_NAME, "batch": True}
    add(
        "hello-batch",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, packb(hello_batch)],
        {"channel": ch},
        {"type": "hello", "map": hello_batch},
        "Join and ask for batches: the client takes DELIVER_BATCH and would send PUBLISH_BATCH.",
    )
    welcome_batch = {**WELCOME_MAP, "batch": True}
    add(
        "welcome-batch",
        "broker",
        "WELCOME",
        [h("WELCOME"), CHANNEL, packb(welcome_batch)],
        {"channel": ch},
        {"type": "welcome", "map": welcome_batch},
        "Accept a HELLO that asked for batches: the client may send PUBLISH_BATCH.",
    )
    second = message_body(msg_id=bytes(range(16, 32)), payload=b'{"order":43}')
    us = b"orders.us.created"
    batch = publish_entry(b"orders.eu.created", BODY) + publish_entry(us, second)
    add(
        "publish-batch",
        "client",
        "PUBLISH_BATCH",
        [h("PUBLISH_BATCH"), CHANNEL, batch],
        {"channel": ch, "entries": batch.hex()},
        None,
        "Two unconfirmed publishes in one message, routed as the two PUBLISHes in order.",
        [
            {"topic": "orders.eu.created", "body": BODY.hex()},
            {"topic": "orders.us.created", "body": second.hex()},
        ],
    )
    delivered = deliver_entry(sid(1), b"orders.eu.created", BODY) + deliver_entry(
        sid(1) + sid(2), us, second
    )
    add(
        "deliver-batch",
        "broker",
        "DELIVER_BATCH",
        [h("DELIVER_BATCH"), CHANNEL, delivered],
        {"channel": ch, "entries": delivered.hex()},
        None,
        "Two unconfirmed deliveries: the first for sid 1, the second for sids 1 and 2.",
        [
            {"sids": sid(1).hex(), "topic": "orders.eu.created", "body": BODY.hex()},
            {"sids": (sid(1) + sid(2)).hex(), "topic": "orders.us.created", "body": second.hex()},
        ],
    )
    # -- batches of commands (optional, negotiated with "batch_commands")
    add(
        "hello-batch-commands",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, HELLO_BC_BODY],
        {"channel": ch},
        {"type": "hello", "map": HELLO_BC_MAP},
        "Join and ask for batches of commands: the client takes BROKER_BATCH and would send BATCH.",
    )
    add(
        "welcome-batch-commands",
        "broker",
        "WELCOME",
        [h("WELCOME"), CHANNEL, WELCOME_BC_BODY],
        {"channel": ch},
        {"type": "welcome", "map": WELCOME_BC_MAP},
        "Accept a HELLO that asked for batches of commands: the client may send BATCH, and "
        "may receive BROKER_BATCH.",
    )
    hello_both = {"client": CLIENT_NAME, "batch": True, "batch_commands": True}
    add(
        "hello-batch-both",
        "client",
        "HELLO",
        [h("HELLO"), CHANNEL, packb(hello_both)],
        {"channel": ch},
        {"type": "hello", "map": hello_both},
        "Ask for both kinds of batches: 'batch' and 'batch_commands' are independent.",
    )
    welcome_both = {**WELCOME_MAP, "batch": True, "batch_commands": True}
    add(
        "welcome-batch-both",
        "broker",
        "WELCOME",
        [h("WELCOME"), CHANNEL, packb(welcome_both)],
        {"channel": ch},
        {"type": "welcome", "map": welcome_both},
        "Accept a HELLO that asked for both kinds of batches.",
    )

    def batch_vector(
        name: str,
        frames: list[bytes],
        entries: list[dict[str, Any]],
        description: str,
    ) -> None:
        command = CMD_NAME[frames[0][3]]
        direction = "client" if command == "BATCH" else "broker"
        fields = {"channel": frames[1].hex(), "entries": frames[2].hex()}
        add(name, direction, command, frames, fields, None, description, entries)

    batch_vector(
        "batch",
        BATCH_SELF,
        [
            entry_of(publish(ref(3), US, SECOND), SECOND_DECODED),
            entry_of(ack(tok(1)), ACK_DECODED),
        ],
        "A confirmed PUBLISH (ref 3) and the ACK of token 1 in one message, handled as the "
        "PUBLISH and then the ACK: entries 04 (3 frames) and 05 (2 frames), each frame "
        "after its 4-octet length.",
    )
    batch_vector(
        "batch-one-entry",
        batch_of("BATCH", [publish(ref(1))]),
        [entry_of(publish(ref(1)), BODY_DECODED)],
        "A BATCH of one entry: it means exactly the confirmed PUBLISH it holds.",
    )
    unconfirmed = [publish(b""), publish(b"", US, SECOND)]
    batch_vector(
        "batch-unconfirmed",
        batch_of("BATCH", unconfirmed),
        [entry_of(unconfirmed[0], BODY_DECODED), entry_of(unconfirmed[1], SECOND_DECODED)],
        "Two unconfirmed publishes (each ref an empty frame: length 00000000), as a client "
        "offered batch_commands but not batch sends them.",
    )
    batch_vector(
        "batch-requests",
        BATCH_REQUESTS,
        [
            entry_of([h("REQUEST"), CHANNEL, REQUEST_REF, RT, BODY], BODY_DECODED),
            entry_of([h("REQUEST"), CHANNEL, REQUEST_REF_2, RT, SECOND], SECOND_DECODED),
        ],
        "Two REQUESTs (refs 9 and 10) from the second peer to join (session 2).",
    )
    batch_vector(
        "batch-replies",
        BATCH_REPLIES,
        [
            entry_of([h("REPLY"), CHANNEL, REPLY_TOKEN, REPLY_BODY], REPLY_DECODED),
            entry_of([h("REPLY"), CHANNEL, REPLY_TOKEN_2, REPLY_ERROR_BODY], REPLY_ERROR_DECODED),
        ],
        "A reply to the ASK of token session 2 + ref 9 and a failure for session 2 + ref 10.",
    )
    batch_vector(
        "broker-batch",
        BROKER_BATCH_SELF,
        [
            entry_of(deliver(tok(2), US, SECOND), SECOND_DECODED),
            entry_of(routed(ref(3), 1)),
            entry_of(acked(ref(2)), ACK_DECODED),
        ],
        "To a peer that asked for batch_commands and subscribes sid 1 to what it publishes: "
        "the DELIVER of its ref 3 (token 2, to be ACKed), its ROUTED, and the ACKED of its "
        "ref 2, in one message.",
    )
    batch_vector(
        "broker-batch-asks",
        BROKER_BATCH_ASKS,
        [
            entry_of([h("ASK"), CHANNEL, REPLY_TOKEN, RT, BODY, sid(4)], BODY_DECODED),
            entry_of([h("ASK"), CHANNEL, REPLY_TOKEN_2, RT, SECOND, sid(4)], SECOND_DECODED),
        ],
        "The requests refs 9 and 10 of session 2, for subscription 4: each needs a REPLY.",
    )
    batch_vector(
        "broker-batch-answers",
        BROKER_BATCH_ANSWERS,
        [
            entry_of([h("ANSWER"), CHANNEL, REQUEST_REF, REPLY_BODY], REPLY_DECODED),
            entry_of([h("ANSWER"), CHANNEL, REQUEST_REF_2, REPLY_ERROR_BODY], REPLY_ERROR_DECODED),
        ],
        "The answers to refs 9 and 10: a reply and a responder's failure.",
    )
    lone = deliver(b"")
    batch_vector(
        "broker-batch-one-entry",
        batch_of("BROKER_BATCH", [lone]),
        [entry_of(lone, BODY_DECODED)],
        "A BROKER_BATCH of one entry, an unconfirmed DELIVER: valid, though the reference "
        "broker sends a single message as itself.",
    )
    bad_entry = deliver(tok(2), b"orders.*")
    batch_vector(
        "broker-batch-bad-entry",
        batch_of("BROKER_BATCH", [deliver(tok(1)), bad_entry, routed(ref(1), 2)]),
        [
            entry_of(deliver(tok(1)), BODY_DECODED),
            entry_of(bad_entry, BODY_DECODED, BAD_TOPIC),
            entry_of(routed(ref(1), 2)),
        ],
        "A well-formed BROKER_BATCH whose second entry, a DELIVER to a wildcard topic, is "
        "refused alone (406), as that DELIVER alone would be: the client ACKs token 2 with "
        "an error and handles the other two entries.",
    )
    valid_stream_vectors(add)
    return out


def _map(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    """A decoded map body as valid.json states it."""
    return {"type": kind, "map": value}


def valid_stream_vectors(add: Any) -> None:
    """The durable-stream vectors of valid.json (``add`` as in valid_vectors)."""
    ch = CHANNEL.hex()

    def stream(
        name: str,
        direction: str,
        frames: list[bytes],
        fields: dict[str, Any],
        body: dict[str, Any] | None,
        description: str,
    ) -> None:
        command = CMD_NAME[frames[0][3]]
        add(name, direction, command, frames, fields, body, description, feature=STREAMS)

    def request(name: str, r: bytes, body: dict[str, Any], description: str) -> None:
        frames = [h("STREAM"), CHANNEL, r, packb(body)]
        stream(
            name,
            "client",
            frames,
            {"channel": ch, "ref": r.hex()},
            _map("stream", body),
            description,
        )

    hello_streams = {"client": CLIENT_NAME, "streams": True}
    stream(
        "hello-streams",
        "client",
        [h("HELLO"), CHANNEL, packb(hello_streams)],
        {"channel": ch},
        _map("hello", hello_streams),
        "Join and ask for STORED: confirmed publishes a stream captures are answered with "
        "STORED before ROUTED.",
    )
    welcome_streams = {**WELCOME_MAP, "streams": True}
    stream(
        "welcome-streams",
        "broker",
        [h("WELCOME"), CHANNEL, packb(welcome_streams)],
        {"channel": ch},
        _map("welcome", welcome_streams),
        "Accept a HELLO that asked for streams: the broker will send STORED.",
    )
    request(
        "stream-add",
        REF_ADD,
        {"op": "add", "config": ORDERS_CONFIG},
        "Add stream ORDERS storing every message on orders.> of the channel; the other "
        "settings are the broker's defaults (the reference broker's: a file stream).",
    )
    request(
        "stream-add-memory",
        ref(14),
        {
            "op": "add",
            "config": {
                "name": "AUDIT_log-2",
                "subjects": ["audit.>", "login.*"],
                "retention": "interest",
                "max_msgs": 1_000_000,
                "max_bytes": -1,
                "max_age": 86_400,
                "max_msg_size": 65_536,
                "discard": "new",
                "storage": "memory",
                "duplicate_window": 60,
            },
        },
        "Add a memory stream with every setting given: two subjects, kept until every "
        "interested consumer settled them, for a day at most; a full stream refuses more.",
    )
    request("stream-list", REF_LIST, {"op": "list"}, "List the channel's streams.")
    request("stream-info", ref(15), {"op": "info", "name": STREAM_NAME}, "ORDERS's info.")
    request(
        "stream-consumer-add",
        ref(16),
        {
            "op": "consumer_add",
            "name": STREAM_NAME,
            "config": {
                "stream": STREAM_NAME,
                "durable": "eu-audit",
                "filter": "orders.eu.>",
                "max_deliver": 5,
                "backoff": [1000, 5000],
                "dead_letter": "dead.orders",
            },
        },
        "Make the durable consumer eu-audit of ORDERS before anyone binds it: EU orders "
        "only, 5 deliveries at most (1 s, then 5 s, apart), then published on dead.orders.",
    )
    stream(
        "consume",
        "client",
        [h("CONSUME"), CHANNEL, REF_CONSUME, sid(1), packb(CONSUME_MAP)],
        {"channel": ch, "ref": REF_CONSUME.hex(), "sid": sid(1).hex()},
        _map("stream", CONSUME_MAP),
        "Bind sid 1 to the durable consumer billing of ORDERS (made now, from the oldest "
        "message): a message not settled within 30 s is delivered again.",
    )
    ephemeral = {"stream": STREAM_NAME, "filter": "orders.eu.>", "deliver": "new"}
    stream(
        "consume-ephemeral",
        "client",
        [h("CONSUME"), CHANNEL, ref(17), sid(2), packb(ephemeral)],
        {"channel": ch, "ref": ref(17).hex(), "sid": sid(2).hex()},
        _map("stream", ephemeral),
        "Bind sid 2 to a new ephemeral consumer of ORDERS: EU orders stored from now on; it "
        "ends when the sid is unbound.",
    )
    token = STREAM_TOKEN.hex()
    for name, kind, delay, text, what in [
        ("stream-ack", ACK, None, "", "ACK: done"),
        (
            "stream-ack-nak",
            NAK,
            5000,
            "ValueError: no such account",
            "NAK: deliver it again in 5000 ms (a 4-octet delay); the text says why",
        ),
        (
            "stream-ack-nak-backoff",
            NAK,
            None,
            "",
            "NAK with an empty delay: again after the consumer's backoff (at once without one)",
        ),
        ("stream-ack-progress", PROGRESS, None, "", "PROGRESS: still working, the wait restarts"),
        ("stream-ack-term", TERM, None, "poison: order 42 cannot be parsed", "TERM: never again"),
    ]:
        stream(
            name,
            "client",
            stream_ack(kind, delay, text),
            {"channel": ch, "token": token, "kind": kind, "delay": delay, "text": text},
            None,
            f"Settle the STREAM_MSG of seq 17 of consumer billing, sent to session 1. {what}.",
        )
    replies: list[tuple[str, bytes, dict[str, Any], str]] = [
        (
            "stream-reply-add",
            REF_ADD,
            {"stream": ORDERS_INFO},
            "the answer to 'stream-add': ORDERS's info, its config filled with the reference "
            "broker's defaults; an empty stream's first_seq is 1 and its last_seq 0",
        ),
        (
            "stream-reply-list-empty",
            REF_LIST,
            {"streams": []},
            "the answer to 'stream-list' on a channel without streams",
        ),
        (
            "stream-reply-consume",
            REF_CONSUME,
            BILLING_INFO,
            "the answer to 'consume': billing's info as it is bound, its config filled with "
            "the defaults; STREAM_MSGs follow",
        ),
        ("stream-reply-deleted", ref(18), {"deleted": True}, "the answer to a delete"),
    ]
    for name, r, result, what in replies:
        stream(
            name,
            "broker",
            [h("STREAM_REPLY"), CHANNEL, r, packb(result)],
            {"channel": ch, "ref": r.hex()},
            _map("stream_reply", result),
            f"STREAM_REPLY: {what}.",
        )
    for name, flag, what in [
        ("stored", False, "stored now as seq 17 of ORDERS; ROUTED follows"),
        (
            "stored-duplicate",
            True,
            "a duplicate of seq 17 (the same message id within the duplicate window): not "
            "stored or routed again; ROUTED 0 follows",
        ),
    ]:
        stream(
            name,
            "broker",
            [
                h("STORED"),
                CHANNEL,
                ref(6),
                STREAM_NAME.encode(),
                STREAM_SEQ.to_bytes(8, "big"),
                b"\x01" if flag else b"\x00",
            ],
            {
                "channel": ch,
                "ref": ref(6).hex(),
                "stream": STREAM_NAME,
                "seq": STREAM_SEQ,
                "duplicate": flag,
            },
            None,
            f"The confirmed PUBLISH of ref 6 is {what}.",
        )
    for name, deliveries, what in [
        ("stream-msg-first", 1, "first delivered"),
        ("stream-msg", 2, "delivered a second time, after a NAK"),
    ]:
        frames = [
            h("STREAM_MSG"),
            CHANNEL,
            STREAM_TOKEN,
            b"orders.eu.created",
            BODY,
            sid(1),
            meta(STREAM_SEQ, deliveries),
        ]
        fields = {
            "channel": ch,
            "token": token,
            "topic": "orders.eu.created",
            "sid": sid(1).hex(),
            "meta": frames[6].hex(),
        }
        add(
            name,
            "broker",
            "STREAM_MSG",
            frames,
            fields,
            BODY_DECODED,
            f"Seq 17 of ORDERS for sid 1 (consumer billing), {what}: the meta frame is the "
            f"sequence 17 and the deliveries, {deliveries}, this one included. STREAM_ACK "
            "settles it by the token.",
            feature=STREAMS,
            extra={"delivery": {"seq": STREAM_SEQ, "deliveries": deliveries}},
        )

    # Stream commands travel in batches like the rest: acks in a BATCH, a run of
    # STREAM_MSGs or STORED/ROUTED answers in a BROKER_BATCH.
    def stream_batch(
        name: str, messages: list[list[bytes]], entries: list[dict[str, Any]], description: str
    ) -> None:
        command = "BATCH" if messages[0][0][3] < 0x80 else "BROKER_BATCH"
        frames = batch_of(command, messages)
        fields = {"channel": ch, "entries": frames[2].hex()}
        direction = "client" if command == "BATCH" else "broker"
        add(name, direction, command, frames, fields, None, description, entries, STREAMS)

    acks = [stream_ack(ACK), stream_ack(NAK, 1500, "retry")]
    stream_batch(
        "batch-stream-acks",
        acks,
        [entry_of(a) for a in acks],
        "An ACK and a NAK (1.5 s, text 'retry') of stream tokens in one BATCH: entries 0f "
        "of 4 frames each, handled as the two STREAM_ACKs in order.",
    )
    msgs = [
        [h("STREAM_MSG"), CHANNEL, STREAM_TOKEN, US, BODY, sid(1), meta(STREAM_SEQ, 1)],
        [h("STREAM_MSG"), CHANNEL, STREAM_TOKEN, US, BODY, sid(1), meta(STREAM_SEQ, 2)],
    ]
    stream_batch(
        "broker-batch-stream-msgs",
        msgs,
        [entry_of(m, BODY_DECODED) for m in msgs],
        "Two STREAM_MSGs in one BROKER_BATCH (entries 92 of 5 frames): each handled as if "
        "it came alone.",
    )
    answers = [
        [h("STORED"), CHANNEL, ref(5), STREAM_NAME.encode(), STREAM_SEQ.to_bytes(8, "big"),
         b"\x00"],
        routed(ref(5), 1),
    ]  # fmt: skip
    stream_batch(
        "broker-batch-stored-routed",
        answers,
        [entry_of(a) for a in answers],
        "A confirmed publish a stream captured, answered in one BROKER_BATCH: STORED (entry "
        "91 of 4 frames: seq 17 of ORDERS, not a duplicate) and then ROUTED.",
    )


# --- malformed.json -----------------------------------------------------------


def echo(frames: list[bytes]) -> dict[str, str]:
    """The channel and ref an ERROR reply echoes (docs/protocol.md, "Errors")."""
    channel = frames[1] if len(frames) > 1 and len(frames[1]) == 16 else b""
    r = b""
    if len(frames) > 2 and len(frames[2]) <= 32:
        head = frames[0]
        if len(head) == 4 and head[:3] == SIGNATURE + bytes((VERSION,)) and head[3] in REF_COMMANDS:
            r = frames[2]
    return {"channel": channel.hex(), "ref": r.hex()}


def malformed_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def client(
        name: str,
        frames: list[bytes],
        code: int,
        description: str,
        joined: bool = False,
        feature: str | None = None,
    ) -> None:
        vec = {
            "name": name,
            "description": description,
            "direction": "client",
            "frames": hexes(frames),
            "code": code,
            "joined": joined,
            "reply": echo(frames),
        }
        out.append(vec if feature is None else {**vec, "feature": feature})

    def broker(
        name: str, frames: list[bytes], code: int, description: str, feature: str | None = None
    ) -> None:
        vec = {
            "name": name,
            "description": description,
            "direction": "broker",
            "frames": hexes(frames),
            "code": code,
        }
        out.append(vec if feature is None else {**vec, "feature": feature})

    C = CHANNEL
    T = b"orders.eu.created"
    RT = b"billing.total"
    HB = HELLO_BODY
    AB = ack_body(1, 0, [])
    RB = REPLY_BODY
    S1 = sid(1)
    c15, c17 = C[:15], C + b"\x00"
    r33 = bytes(range(1, 34))

    def sub(
        pattern: bytes = b"a", queue: bytes = b"", s: bytes = S1, r: bytes = ref(1)
    ) -> list[bytes]:
        return [h("SUBSCRIBE"), C, r, s, pattern, queue]

    # -- client, BAD_FRAMES
    client("client-empty-message", [], BAD_FRAMES, "A message with no frames at all.")
    client("header-only", [h("SUBSCRIBE")], BAD_FRAMES, "SUBSCRIBE with only its header frame.")
    counts = [
        ("hello", [h("HELLO"), C], [h("HELLO"), C, HB, b""]),
        ("subscribe", [h("SUBSCRIBE"), C, ref(1), S1, b"a"], [*sub(), b""]),
        ("unsubscribe", [h("UNSUBSCRIBE"), C, ref(1)], [h("UNSUBSCRIBE"), C, ref(1), S1, b""]),
        ("publish", [h("PUBLISH"), C, b"", T], [h("PUBLISH"), C, b"", T, BODY, b""]),
        ("ack", [h("ACK"), C, TOKEN], [h("ACK"), C, TOKEN, AB, b""]),
        ("disconnect", [h("DISCONNECT"), C], [h("DISCONNECT"), C, ref(1), b""]),
        ("request", [h("REQUEST"), C, ref(1), RT], [h("REQUEST"), C, ref(1), RT, BODY, b""]),
        ("reply", [h("REPLY"), C, REPLY_TOKEN], [h("REPLY"), C, REPLY_TOKEN, RB, b""]),
        ("heartbeat", [h("HEARTBEAT")], [h("HEARTBEAT"), C, b""]),
        ("stats", [h("STATS"), C], [h("STATS"), C, ref(1), b""]),
    ]
    for cmd, short, long in counts:
        client(f"{cmd}-too-few-frames", short, BAD_FRAMES, f"{cmd.upper()} missing its last frame.")
        client(f"{cmd}-too-many-frames", long, BAD_FRAMES, f"{cmd.upper()} with an extra frame.")
    client(
        "subscribe-without-sid-and-queue",
        [h("SUBSCRIBE"), C, ref(1), b"orders.>"],
        BAD_FRAMES,
        "A SUBSCRIBE of the draft before sids and queue groups: 4 frames instead of 6.",
    )
    for label, bad in [("15", c15), ("17", c17), ("0", b"")]:
        client(
            f"hello-channel-{label}-bytes",
            [h("HELLO"), bad, HB],
            BAD_FRAMES,
            f"HELLO with a {label}-byte channel frame.",
        )
    client(
        "subscribe-channel-15-bytes",
        [h("SUBSCRIBE"), c15, ref(1), S1, b"a", b""],
        BAD_FRAMES,
        "SUBSCRIBE with a 15-byte channel frame.",
    )
    client(
        "unsubscribe-channel-17-bytes",
        [h("UNSUBSCRIBE"), c17, ref(1), S1],
        BAD_FRAMES,
        "UNSUBSCRIBE with a 17-byte channel frame.",
    )
    client(
        "publish-channel-15-bytes",
        [h("PUBLISH"), c15, ref(1), T, BODY],
        BAD_FRAMES,
        "PUBLISH with a 15-byte channel frame from a peer that has not joined.",
    )
    client(
        "publish-channel-17-bytes-joined",
        [h("PUBLISH"), c17, ref(1), T, BODY],
        BAD_FRAMES,
        "PUBLISH with a 17-byte channel frame from a joined peer.",
        joined=True,
    )
    client(
        "request-channel-15-bytes-joined",
        [h("REQUEST"), c15, ref(1), RT, BODY],
        BAD_FRAMES,
        "REQUEST with a 15-byte channel frame from a joined peer.",
        joined=True,
    )
    client(
        "reply-channel-17-bytes-joined",
        [h("REPLY"), c17, REPLY_TOKEN, RB],
        BAD_FRAMES,
        "REPLY with a 17-byte channel frame from a joined peer.",
        joined=True,
    )
    client(
        "ack-channel-15-bytes",
        [h("ACK"), c15, TOKEN, AB],
        BAD_FRAMES,
        "ACK with a 15-byte channel frame.",
        joined=True,
    )
    client(
        "disconnect-channel-17-bytes",
        [h("DISCONNECT"), c17, ref(1)],
        BAD_FRAMES,
        "DISCONNECT with a 17-byte channel frame.",
    )
    client(
        "heartbeat-channel-15-bytes",
        [h("HEARTBEAT"), c15],
        BAD_FRAMES,
        "HEARTBEAT with a 15-byte channel frame from a peer that has not joined.",
    )
    client(
        "heartbeat-channel-17-bytes-joined",
        [h("HEARTBEAT"), c17],
        BAD_FRAMES,
        "HEARTBEAT with a 17-byte channel frame from a joined peer.",
        joined=True,
    )
    for label, bad in [("15", c15), ("17", c17)]:
        client(
            f"stats-channel-{label}-bytes",
            [h("STATS"), bad, ref(1)],
            BAD_FRAMES,
            f"STATS with a {label}-byte channel frame (it must be 16 bytes or empty).",
        )
    client(
        "subscribe-ref-33-bytes",
        sub(r=r33),
        BAD_FRAMES,
        "SUBSCRIBE whose ref is 33 bytes (at most 32 allowed); the ERROR echoes no ref.",
    )
    client(
        "unsubscribe-ref-33-bytes",
        [h("UNSUBSCRIBE"), C, r33, S1],
        BAD_FRAMES,
        "UNSUBSCRIBE whose ref is 33 bytes.",
    )
    client(
        "publish-ref-33-bytes",
        [h("PUBLISH"), C, r33, T, BODY],
        BAD_FRAMES,
        "PUBLISH whose ref is 33 bytes.",
        joined=True,
    )
    client(
        "disconnect-ref-33-bytes",
        [h("DISCONNECT"), C, r33],
        BAD_FRAMES,
        "DISCONNECT whose ref is 33 bytes.",
    )
    client(
        "stats-ref-33-bytes",
        [h("STATS"), C, r33],
        BAD_FRAMES,
        "STATS whose ref is 33 bytes.",
    )
    client(
        "ack-token-33-bytes",
        [h("ACK"), C, r33, AB],
        BAD_FRAMES,
        "ACK whose token is 33 bytes.",
        joined=True,
    )
    client(
        "ack-token-empty",
        [h("ACK"), C, b"", AB],
        BAD_FRAMES,
        "ACK with an empty token (tokens are 1 to 32 bytes).",
        joined=True,
    )
    for label, s, desc in [
        ("empty", b"", "an empty sid frame"),
        ("3-bytes", b"\x00\x00\x01", "a 3-byte sid"),
        ("5-bytes", b"\x00\x00\x00\x00\x01", "a 5-byte sid"),
        ("8-bytes", sid(1, 2), "two sids where one is expected"),
    ]:
        client(
            f"subscribe-sid-{label}",
            sub(s=s),
            BAD_FRAMES,
            f"SUBSCRIBE with {desc} (a sid is exactly 4 bytes).",
        )
    for label, sids, desc in [
        ("empty", b"", "an empty sids frame (at least one sid)"),
        ("3-bytes", b"\x00\x00\x01", "a 3-byte sids frame"),
        ("5-bytes", sid(1) + b"\x02", "a 5-byte sids frame"),
        ("7-bytes", sid(1) + b"\x00\x00\x02", "a 7-byte sids frame"),
        ("pattern", b"a.>", "a pattern (the draft before sids), 3 bytes"),
    ]:
        client(
            f"unsubscribe-sids-{label}",
            [h("UNSUBSCRIBE"), C, ref(1), sids],
            BAD_FRAMES,
            f"UNSUBSCRIBE with {desc}: the sids frame is a non-empty multiple of 4 bytes.",
        )
    client(
        "request-ref-empty",
        [h("REQUEST"), C, b"", RT, BODY],
        BAD_FRAMES,
        "REQUEST with an empty ref: a request always needs one (1 to 8 bytes).",
        joined=True,
    )
    client(
        "request-ref-9-bytes",
        [h("REQUEST"), C, bytes(range(1, 10)), RT, BODY],
        BAD_FRAMES,
        "REQUEST whose ref is 9 bytes (at most 8: the broker prefixes 24 bytes to make the "
        "reply token); the ERROR echoes the ref, which is not over 32 bytes.",
        joined=True,
    )
    client(
        "request-ref-33-bytes",
        [h("REQUEST"), C, r33, RT, BODY],
        BAD_FRAMES,
        "REQUEST whose ref is 33 bytes; the ERROR echoes no ref.",
        joined=True,
    )
    for label, token, desc in [
        ("empty", b"", "an empty token"),
        ("1-byte", b"\x01", "a 1-byte token"),
        ("8-bytes", session(2), "an 8-byte token: a session number alone"),
        ("24-bytes", session(2) + TAG, "a 24-byte token: session and tag without a ref"),
        ("33-bytes", session(2) + bytes(25), "a 33-byte token"),
    ]:
        client(
            f"reply-token-{label}",
            [h("REPLY"), C, token, RB],
            BAD_FRAMES,
            f"REPLY with {desc} (a reply token is 25 to 32 bytes).",
            joined=True,
        )
    # -- client, VERSION_NOT_SUPPORTED
    for name, head, desc in [
        ("bad-signature", raw_header(b"XY", 1, CMD["HELLO"]), "signature 'XY' instead of 'ZB'"),
        ("lowercase-signature", raw_header(b"zb", 1, CMD["HELLO"]), "signature 'zb'"),
        ("version-2", raw_header(SIGNATURE, 2, CMD["HELLO"]), "protocol version 2"),
        ("version-0", raw_header(SIGNATURE, 0, CMD["HELLO"]), "protocol version 0"),
        ("header-3-bytes", SIGNATURE + b"\x01", "a 3-byte header frame"),
        ("header-5-bytes", h("HELLO") + b"\x00", "a 5-byte header frame"),
        ("header-empty", b"", "an empty header frame"),
    ]:
        client(name, [head, C, HB], VERSION_NOT_SUPPORTED, f"HELLO with {desc}.")
    client(
        "version-2-publish",
        [raw_header(SIGNATURE, 2, CMD["PUBLISH"]), C, ref(1), T, BODY],
        VERSION_NOT_SUPPORTED,
        "PUBLISH at version 2; the ERROR echoes no ref since the header is not version 1.",
        joined=True,
    )
    client(
        "req-style-delimiter",
        [b"", h("HELLO"), C, HB],
        VERSION_NOT_SUPPORTED,
        "An empty delimiter frame first (as a REQ socket adds): frame 0 is not a header.",
    )
    # -- client, UNKNOWN_COMMAND
    for byte in (0x7F, 0x00, 0x3F, 0x80, 0xC0, 0xFF):
        client(
            f"unknown-command-0x{byte:02x}",
            [raw_header(SIGNATURE, 1, byte), C, b""],
            UNKNOWN_COMMAND,
            f"Command byte 0x{byte:02x} is not a command.",
        )
    for name, frames in [
        ("WELCOME", [h("WELCOME"), C, WELCOME_BODY]),
        ("OK", [h("OK"), C, ref(1)]),
        ("DELIVER", [h("DELIVER"), C, b"", T, BODY, S1]),
        ("ROUTED", [h("ROUTED"), C, ref(1), (1).to_bytes(4, "big")]),
        ("ACKED", [h("ACKED"), C, ref(1), AB]),
        ("ASK", [h("ASK"), C, REPLY_TOKEN, RT, BODY, S1]),
        ("ANSWER", [h("ANSWER"), C, REQUEST_REF, RB]),
        ("ERROR", [h("ERROR"), C, b"", (400).to_bytes(2, "big"), b"x", b""]),
        ("BROKER_HEARTBEAT", [h("BROKER_HEARTBEAT"), C]),
        ("BYE", [h("BYE"), C]),
        ("STATS_REPLY", [h("STATS_REPLY"), C, ref(1), packb({"peers": 0})]),
    ]:
        client(
            f"client-sends-{name.lower().replace('_', '-')}",
            frames,
            UNKNOWN_COMMAND,
            f"A client sends the broker-only command {name}.",
            joined=name in ("DELIVER", "ASK"),
        )
    # -- client, BAD_TOPIC
    topics = [
        ("empty", b"", "an empty topic"),
        ("star", b"orders.*", "a '*' wildcard token"),
        ("gt", b"orders.>", "a '>' wildcard token"),
        ("partial-star", b"orders.eu*", "'*' inside a token"),
        ("partial-gt", b"orders.e>u", "'>' inside a token"),
        ("space", b"orders. eu", "a space"),
        ("tab", b"orders.\teu", "a tab"),
        ("newline", b"orders.eu\n", "a trailing newline"),
        ("nbsp", "orders.\u00a0eu".encode(), "U+00A0 NO-BREAK SPACE"),
        ("ideographic-space", "orders.\u3000".encode(), "U+3000 IDEOGRAPHIC SPACE"),
        ("nel", "orders.\u0085eu".encode(), "U+0085 NEXT LINE"),
        ("c1-control-80", "orders.\u0080eu".encode(), "the C1 control character U+0080"),
        ("c1-control-9f", "orders.eu\u009f".encode(), "the C1 control character U+009F"),
        ("control", b"orders.\x01eu", "the control character U+0001"),
        ("nul", b"orders.\x00", "a NUL byte"),
        ("del", b"orders.\x7f", "U+007F DELETE"),
        ("empty-token", b"orders..eu", "an empty token between two dots"),
        ("leading-dot", b".orders", "an empty first token"),
        ("trailing-dot", b"orders.", "an empty last token"),
        ("dot-only", b".", "only a dot"),
        ("257-bytes", b"a" * 257, "257 bytes (limit 256)"),
        ("257-bytes-utf8", "é".encode() * 128 + b"a", "257 bytes of UTF-8 in 129 characters"),
        ("invalid-utf8", b"orders.\xff", "the byte 0xff, never valid UTF-8"),
        ("truncated-utf8", b"orders.\xc3", "a truncated 2-byte UTF-8 sequence"),
        ("overlong-utf8", b"\xc0\xae", "an overlong UTF-8 encoding of '.'"),
        ("surrogate-utf8", b"\xed\xa0\x80", "an encoded UTF-16 surrogate (CESU-8)"),
    ]
    for label, topic, desc in topics:
        client(
            f"publish-topic-{label}",
            [h("PUBLISH"), C, ref(1), topic, BODY],
            BAD_TOPIC,
            f"PUBLISH to a topic with {desc}.",
            joined=True,
        )
    for label, topic, desc in [
        ("star", b"billing.*", "a '*' wildcard token"),
        ("gt", b">", "only a '>' wildcard"),
        ("empty-token", b"billing..total", "an empty token"),
        ("invalid-utf8", b"billing.\xfe", "the byte 0xfe"),
    ]:
        client(
            f"request-topic-{label}",
            [h("REQUEST"), C, ref(1), topic, BODY],
            BAD_TOPIC,
            f"REQUEST to a topic with {desc}: requests follow the topic rules of PUBLISH.",
            joined=True,
        )
    patterns = [
        ("empty", b"", "an empty pattern"),
        ("gt-not-last", b"orders.>.created", "'>' before the last token"),
        ("gt-gt", b">.>", "two '>' tokens"),
        ("partial-star", b"ord*", "'*' inside a token"),
        ("partial-gt", b"orders.x>", "'>' inside a token"),
        ("double-star-token", b"orders.**", "a '**' token"),
        ("space", b"orders. *", "a space"),
        ("c1-control", "orders.\u009b.>".encode(), "the C1 control character U+009B"),
        ("empty-token", b"orders..*", "an empty token"),
        ("257-bytes", b"a." * 128 + b">", "257 bytes"),
        ("invalid-utf8", b"orders.\xfe.>", "the byte 0xfe"),
    ]
    for label, pattern, desc in patterns:
        client(
            f"subscribe-pattern-{label}",
            sub(pattern=pattern),
            BAD_TOPIC,
            f"SUBSCRIBE to a pattern with {desc}.",
        )
    queues = [
        ("star", b"*", "'*': queue names follow the topic rules, no wildcards"),
        ("gt", b">", "'>'"),
        ("partial-star", b"work*", "'*' inside a token"),
        ("space", b"my workers", "a space"),
        ("empty-token", b"workers..eu", "an empty token"),
        ("trailing-dot", b"workers.", "an empty last token"),
        ("control", b"workers\x01", "the control character U+0001"),
        ("65-bytes", b"q" * 65, "65 bytes (limit 64)"),
        ("invalid-utf8", b"workers\xff", "the byte 0xff"),
    ]
    for label, queue, desc in queues:
        client(
            f"subscribe-queue-{label}",
            sub(pattern=b"orders.>", queue=queue),
            BAD_TOPIC,
            f"SUBSCRIBE with a queue name with {desc}.",
        )
    # -- client, BAD_BODY (HELLO is the only body the broker decodes)
    for label, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1, a byte msgpack never uses"),
        ("empty", b"", "zero bytes"),
        ("truncated", b"\x81\xa6client", "a map whose only value is missing"),
        ("trailing-bytes", HB + b"\x00", "a valid map followed by another byte"),
        ("array", packb(["client", CLIENT_NAME]), "an array instead of a map"),
        ("string", packb("hello"), "a str instead of a map"),
        ("nil", packb(None), "nil instead of a map"),
        ("int-key", packb({1: "x"}), "an int map key"),
        ("bin-key", packb({b"client": "x"}), "a bin (not str) map key"),
        ("invalid-utf8-str", b"\x81\xa6client\xa2\xff\xfe", "a str value that is not UTF-8"),
        ("heartbeat-negative", packb({"heartbeat": -1}), "a map with heartbeat -1"),
        ("heartbeat-str", packb({"heartbeat": "2000"}), 'a map with heartbeat "2000" (a str)'),
        ("heartbeat-true", packb({"heartbeat": True}), "a map with heartbeat true (a bool)"),
        ("heartbeat-float", packb({"heartbeat": 2000.0}), "a map with heartbeat 2000.0"),
        ("heartbeat-nil", packb({"heartbeat": None}), "a map with heartbeat nil"),
    ]:
        client(
            f"hello-body-{label}",
            [h("HELLO"), C, body],
            BAD_BODY,
            f"HELLO whose body is {desc}.",
        )

    # -- broker -> client
    broker("broker-empty-message", [], BAD_FRAMES, "A message with no frames at all.")
    broker(
        "broker-bad-signature",
        [raw_header(b"XY", 1, CMD["WELCOME"]), C, WELCOME_BODY],
        VERSION_NOT_SUPPORTED,
        "WELCOME with signature 'XY'.",
    )
    broker(
        "broker-version-2",
        [raw_header(SIGNATURE, 2, CMD["WELCOME"]), C, WELCOME_BODY],
        VERSION_NOT_SUPPORTED,
        "WELCOME at protocol version 2.",
    )
    broker(
        "broker-header-3-bytes",
        [SIGNATURE + b"\x01", C, WELCOME_BODY],
        VERSION_NOT_SUPPORTED,
        "A 3-byte header frame.",
    )
    for name, frames in [
        ("hello", [h("HELLO"), C, HB]),
        ("publish", [h("PUBLISH"), C, b"", T, BODY]),
        ("request", [h("REQUEST"), C, ref(1), RT, BODY]),
        ("reply", [h("REPLY"), C, REPLY_TOKEN, RB]),
        ("heartbeat", [h("HEARTBEAT"), C]),
        ("stats", [h("STATS"), C, ref(1)]),
    ]:
        broker(
            f"broker-sends-{name}",
            frames,
            UNKNOWN_COMMAND,
            f"The client-only command {name.upper()} received from the broker.",
        )
    for byte in (0x93, 0xC0):
        broker(
            f"broker-unknown-0x{byte:02x}",
            [raw_header(SIGNATURE, 1, byte), C, b""],
            UNKNOWN_COMMAND,
            f"Command byte 0x{byte:02x} is not a command.",
        )
    for name, short, long in [
        ("welcome", [h("WELCOME"), C], [h("WELCOME"), C, WELCOME_BODY, b""]),
        ("ok", [h("OK"), C], [h("OK"), C, ref(1), b""]),
        ("deliver", [h("DELIVER"), C, b"", T, BODY], [h("DELIVER"), C, b"", T, BODY, S1, b""]),
        ("routed", [h("ROUTED"), C, ref(1)], [h("ROUTED"), C, ref(1), bytes(4), b""]),
        ("acked", [h("ACKED"), C, ref(1)], [h("ACKED"), C, ref(1), AB, b""]),
        (
            "ask",
            [h("ASK"), C, REPLY_TOKEN, RT, BODY],
            [h("ASK"), C, REPLY_TOKEN, RT, BODY, S1, b""],
        ),
        ("answer", [h("ANSWER"), C, REQUEST_REF], [h("ANSWER"), C, REQUEST_REF, RB, b""]),
        (
            "error",
            [h("ERROR"), C, b"", (400).to_bytes(2, "big"), b"x"],
            [h("ERROR"), C, b"", (400).to_bytes(2, "big"), b"x", b"", b""],
        ),
        ("broker-heartbeat", [h("BROKER_HEARTBEAT")], [h("BROKER_HEARTBEAT"), C, b""]),
        ("bye", [h("BYE")], [h("BYE"), C, b""]),
        (
            "dropped",
            [h("DROPPED"), C, sid(1) + bytes(4)],
            [h("DROPPED"), C, sid(1) + bytes(4), bytes(4), b""],
        ),
        (
            "stats-reply",
            [h("STATS_REPLY"), C, ref(1)],
            [h("STATS_REPLY"), C, ref(1), STATS_BODY, b""],
        ),
    ]:
        cmd = name.upper().replace("-", "_")
        broker(f"{name}-too-few-frames", short, BAD_FRAMES, f"{cmd} missing a frame.")
        broker(f"{name}-too-many-frames", long, BAD_FRAMES, f"{cmd} with an extra frame.")
    for name, frames in [
        ("welcome-channel-15-bytes", [h("WELCOME"), c15, WELCOME_BODY]),
        ("ok-channel-17-bytes", [h("OK"), c17, ref(1)]),
        ("ok-channel-empty", [h("OK"), b"", ref(1)]),
        ("deliver-channel-15-bytes", [h("DELIVER"), c15, b"", T, BODY, S1]),
        ("routed-channel-17-bytes", [h("ROUTED"), c17, ref(1), bytes(4)]),
        ("acked-channel-15-bytes", [h("ACKED"), c15, ref(1), AB]),
        ("ask-channel-15-bytes", [h("ASK"), c15, REPLY_TOKEN, RT, BODY, S1]),
        ("answer-channel-17-bytes", [h("ANSWER"), c17, REQUEST_REF, RB]),
        ("error-channel-15-bytes", [h("ERROR"), c15, b"", (400).to_bytes(2, "big"), b"x", b""]),
        ("ok-ref-33-bytes", [h("OK"), C, r33]),
        ("routed-ref-33-bytes", [h("ROUTED"), C, r33, bytes(4)]),
        ("acked-ref-33-bytes", [h("ACKED"), C, r33, AB]),
        ("answer-ref-33-bytes", [h("ANSWER"), C, r33, RB]),
        ("error-ref-33-bytes", [h("ERROR"), C, r33, (400).to_bytes(2, "big"), b"x", b""]),
        ("deliver-token-33-bytes", [h("DELIVER"), C, r33, T, BODY, S1]),
        ("ask-token-33-bytes", [h("ASK"), C, r33, RT, BODY, S1]),
        ("ask-token-empty", [h("ASK"), C, b"", RT, BODY, S1]),
        ("deliver-sids-empty", [h("DELIVER"), C, b"", T, BODY, b""]),
        ("deliver-sids-3-bytes", [h("DELIVER"), C, b"", T, BODY, b"\x00\x00\x01"]),
        ("deliver-sids-6-bytes", [h("DELIVER"), C, TOKEN, T, BODY, sid(1) + b"\x00\x02"]),
        ("ask-sids-empty", [h("ASK"), C, REPLY_TOKEN, RT, BODY, b""]),
        ("ask-sids-5-bytes", [h("ASK"), C, REPLY_TOKEN, RT, BODY, sid(4) + b"\x05"]),
        ("routed-count-3-bytes", [h("ROUTED"), C, ref(1), bytes(3)]),
        ("routed-count-8-bytes", [h("ROUTED"), C, ref(1), bytes(8)]),
        ("error-code-1-byte", [h("ERROR"), C, b"", b"\x01", b"x", b""]),
        ("error-code-3-bytes", [h("ERROR"), C, b"", b"\x00\x01\x90", b"x", b""]),
        ("error-text-invalid-utf8", [h("ERROR"), C, b"", (400).to_bytes(2, "big"), b"\xff", b""]),
        (
            "error-retry-after-2-bytes",
            [h("ERROR"), C, b"", (429).to_bytes(2, "big"), b"x", b"\0\1"],
        ),
        (
            "error-retry-after-5-bytes",
            [h("ERROR"), C, b"", (429).to_bytes(2, "big"), b"x", bytes(5)],
        ),
        ("dropped-throttled-empty", [h("DROPPED"), C, sid(1) + bytes(4), b""]),
        ("dropped-throttled-3-bytes", [h("DROPPED"), C, b"", bytes(3)]),
        ("broker-heartbeat-channel-15-bytes", [h("BROKER_HEARTBEAT"), c15]),
        ("broker-heartbeat-channel-empty", [h("BROKER_HEARTBEAT"), b""]),
        ("bye-channel-17-bytes", [h("BYE"), c17]),
        ("bye-channel-empty", [h("BYE"), b""]),
        ("stats-reply-channel-15-bytes", [h("STATS_REPLY"), c15, ref(1), STATS_BODY]),
        ("stats-reply-ref-33-bytes", [h("STATS_REPLY"), C, r33, STATS_BODY]),
    ]:
        broker(name, frames, BAD_FRAMES, name.replace("-", " ").capitalize() + ".")
    for label, topic in [("empty", b""), ("star", b"orders.*"), ("invalid-utf8", b"\xff")]:
        broker(
            f"deliver-topic-{label}",
            [h("DELIVER"), C, b"", topic, BODY, S1],
            BAD_TOPIC,
            f"DELIVER whose topic breaks the topic rules ({label}).",
        )
    broker(
        "ask-topic-gt",
        [h("ASK"), C, REPLY_TOKEN, b"billing.>", BODY, S1],
        BAD_TOPIC,
        "ASK whose topic is a pattern.",
    )
    for label, body in [
        ("not-msgpack", b"\xc1"),
        ("array", packb([BROKER_NAME, DEFAULT_MAX])),
        ("missing-max", packb({"broker": BROKER_NAME})),
        ("max-zero", packb({"broker": BROKER_NAME, "max_message_size": 0})),
        ("max-negative", packb({"broker": BROKER_NAME, "max_message_size": -1})),
        ("max-string", packb({"broker": BROKER_NAME, "max_message_size": "1048576"})),
        ("max-float", packb({"broker": BROKER_NAME, "max_message_size": 1048576.0})),
        ("max-nil", packb({"broker": BROKER_NAME, "max_message_size": None})),
        ("max-true", packb({"broker": BROKER_NAME, "max_message_size": True})),
        ("heartbeat-negative", packb({**WELCOME_MAP, "heartbeat": -1})),
        ("heartbeat-string", packb({**WELCOME_MAP, "heartbeat": "2000"})),
        ("heartbeat-true", packb({**WELCOME_MAP, "heartbeat": True})),
        ("heartbeat-float", packb({**WELCOME_MAP, "heartbeat": 2000.0})),
    ]:
        broker(
            f"welcome-body-{label}",
            [h("WELCOME"), C, body],
            BAD_BODY,
            f"WELCOME body is invalid: {label.replace('-', ' ')}.",
        )
    for label, body in [
        ("not-msgpack", b"\xc1"),
        ("array", packb([["peers", 3]])),
        ("string", packb("peers=3")),
        ("int-key", packb({403: 1})),
        ("bin-key", packb({b"peers": 3})),
        ("trailing-bytes", STATS_BODY + b"\xc0"),
    ]:
        broker(
            f"stats-reply-body-{label}",
            [h("STATS_REPLY"), C, ref(1), body],
            BAD_BODY,
            f"STATS_REPLY body is not a msgpack map with str keys: {label.replace('-', ' ')}.",
        )
    broker(
        "dropped-counts-7-bytes",
        [h("DROPPED"), C, sid(1) + bytes(3), bytes(4)],
        BAD_FRAMES,
        "DROPPED counts come in 8-byte pairs.",
    )
    # -- batches
    good = publish_entry(T, BODY)
    for label, frames, code, what in [
        ("frames-2", [h("PUBLISH_BATCH"), C], BAD_FRAMES, "PUBLISH_BATCH takes 3 frames"),
        ("frames-4", [h("PUBLISH_BATCH"), C, good, b""], BAD_FRAMES, "a fourth frame"),
        ("entries-empty", [h("PUBLISH_BATCH"), C, b""], BAD_FRAMES, "no entries at all"),
        ("length-truncated", [h("PUBLISH_BATCH"), C, b"\x00"], BAD_FRAMES, "half a length"),
        (
            "body-truncated",
            [h("PUBLISH_BATCH"), C, good[:-1]],
            BAD_FRAMES,
            "a body-length one past the end of the frame",
        ),
        (
            "trailing-bytes",
            [h("PUBLISH_BATCH"), C, good + b"\x00\x05order"],
            BAD_FRAMES,
            "a second entry cut off after its topic",
        ),
        (
            "empty-topic",
            [h("PUBLISH_BATCH"), C, publish_entry(b"", BODY)],
            BAD_FRAMES,
            "an entry with topic-length 0",
        ),
        (
            "topic-star",
            [h("PUBLISH_BATCH"), C, good + publish_entry(b"orders.*", BODY)],
            BAD_TOPIC,
            "a wildcard in the second entry's topic: nothing of the batch is routed",
        ),
        (
            "topic-invalid-utf8",
            [h("PUBLISH_BATCH"), C, publish_entry(b"orders.\xff", BODY)],
            BAD_TOPIC,
            "a topic that is not UTF-8",
        ),
    ]:
        client(f"publish-batch-{label}", frames, code, f"PUBLISH_BATCH with {what}.", joined=True)
    client(
        "hello-batch-not-boolean",
        [h("HELLO"), C, packb({**HELLO_MAP, "batch": 1})],
        BAD_BODY,
        "HELLO batch must be a boolean, not the integer 1.",
    )
    dgood = deliver_entry(S1, T, BODY)
    for label, frames, code, what in [
        ("frames-2", [h("DELIVER_BATCH"), C], BAD_FRAMES, "DELIVER_BATCH takes 3 frames"),
        ("entries-empty", [h("DELIVER_BATCH"), C, b""], BAD_FRAMES, "no entries at all"),
        (
            "sids-empty",
            [h("DELIVER_BATCH"), C, deliver_entry(b"", T, BODY)],
            BAD_FRAMES,
            "an entry naming no sid",
        ),
        (
            "sids-6-bytes",
            [h("DELIVER_BATCH"), C, deliver_entry(S1 + b"\x00\x00", T, BODY)],
            BAD_FRAMES,
            "an entry whose sids are not a multiple of 4 octets",
        ),
        (
            "body-truncated",
            [h("DELIVER_BATCH"), C, dgood[:-1]],
            BAD_FRAMES,
            "a body-length one past the end of the frame",
        ),
        (
            "topic-star",
            [h("DELIVER_BATCH"), C, dgood + deliver_entry(S1, b"orders.*", BODY)],
            BAD_TOPIC,
            "a wildcard in the second entry's topic",
        ),
    ]:
        broker(f"deliver-batch-{label}", frames, code, f"DELIVER_BATCH with {what}.")
    broker(
        "welcome-batch-not-boolean",
        [h("WELCOME"), C, packb({**WELCOME_MAP, "batch": "yes"})],
        BAD_BODY,
        "WELCOME batch must be a boolean, not a string.",
    )
    # -- batches of commands
    good = command_entry([h("PUBLISH"), C, ref(1), T, BODY])
    for label, frames, what in [
        ("frames-2", [h("BATCH"), C], "BATCH takes 3 frames"),
        ("frames-4", [h("BATCH"), C, good, b""], "a fourth frame"),
        ("entries-empty", [h("BATCH"), C, b""], "no entries at all"),
        ("command-only", [h("BATCH"), C, b"\x04"], "an entry that stops after its command"),
        ("length-truncated", [h("BATCH"), C, b"\x04\x00\x00"], "half a frame-length"),
        ("frame-truncated", [h("BATCH"), C, good[:-1]], "a frame one octet short"),
        (
            "frame-missing",
            [h("BATCH"), C, command_entry([h("PUBLISH"), C, ref(1), T])],
            "a PUBLISH entry of 2 frames (it has 3: ref, topic, body)",
        ),
        (
            "trailing-bytes",
            [h("BATCH"), C, good + b"\x05\x00"],
            "a second entry cut off in its first frame-length: the first entry is not "
            "handled either",
        ),
        (
            "second-entry-deliver",
            [h("BATCH"), C, good + command_entry([h("DELIVER"), C, b"", T, BODY, S1])],
            "a DELIVER (a broker command) as second entry: the first entry is not handled either",
        ),
        ("channel-15-bytes", [h("BATCH"), c15, good], "a 15-byte channel frame"),
    ]:
        client(f"batch-{label}", frames, BAD_FRAMES, f"BATCH with {what}.", joined=True)
    client(
        "batch-channel-17-bytes-not-joined",
        [h("BATCH"), c17, good],
        BAD_FRAMES,
        "BATCH with a 17-byte channel frame from a peer that has not joined: 400 before 403.",
    )
    for name, frames in [
        ("HELLO", [h("HELLO"), C, HB]),
        ("SUBSCRIBE", sub()),
        ("UNSUBSCRIBE", [h("UNSUBSCRIBE"), C, ref(1), S1]),
        ("DISCONNECT", [h("DISCONNECT"), C, ref(1)]),
        ("HEARTBEAT", [h("HEARTBEAT"), C]),
        ("STATS", [h("STATS"), C, ref(1)]),
        ("PUBLISH_BATCH", [h("PUBLISH_BATCH"), C, publish_entry(T, BODY)]),
        ("BATCH", [h("BATCH"), C, good]),
        ("DELIVER", [h("DELIVER"), C, b"", T, BODY, S1]),
        ("ROUTED", [h("ROUTED"), C, ref(1), (1).to_bytes(4, "big")]),
        ("ACKED", [h("ACKED"), C, ref(1), AB]),
        ("ANSWER", [h("ANSWER"), C, REQUEST_REF, RB]),
        ("STREAM", [h("STREAM"), C, ref(1), packb({"op": "list"})]),
        ("CONSUME", [h("CONSUME"), C, ref(1), S1, packb(CONSUME_MAP)]),
    ]:
        client(
            f"batch-entry-{name.lower().replace('_', '-')}",
            [h("BATCH"), C, command_entry(frames)],
            BAD_FRAMES,
            f"BATCH with a {name} entry (0x{CMD[name]:02x}), otherwise well-formed: a BATCH "
            "holds only PUBLISH, ACK, REQUEST, REPLY and STREAM_ACK.",
            joined=True,
        )
    for byte in (0x00, 0x7F, 0xFF):
        client(
            f"batch-entry-0x{byte:02x}",
            [h("BATCH"), C, bytes((byte,)) + (1).to_bytes(4, "big") + b"x"],
            BAD_FRAMES,
            f"BATCH with an entry of command byte 0x{byte:02x}, not a command.",
            joined=True,
        )
    client(
        "client-sends-broker-batch",
        [h("BROKER_BATCH"), C, command_entry([h("ROUTED"), C, ref(1), bytes(4)])],
        UNKNOWN_COMMAND,
        "A client sends the broker-only command BROKER_BATCH.",
        joined=True,
    )
    for label, value in [("int", 1), ("nil", None), ("str", "true")]:
        client(
            f"hello-batch-commands-{label}",
            [h("HELLO"), C, packb({**HELLO_MAP, "batch_commands": value})],
            BAD_BODY,
            f"HELLO batch_commands must be a boolean, not {value!r} ({label}).",
        )
    bgood = command_entry([h("ROUTED"), C, ref(1), (1).to_bytes(4, "big")])
    for label, frames, what in [
        ("frames-2", [h("BROKER_BATCH"), C], "BROKER_BATCH takes 3 frames"),
        ("frames-4", [h("BROKER_BATCH"), C, bgood, b""], "a fourth frame"),
        ("entries-empty", [h("BROKER_BATCH"), C, b""], "no entries at all"),
        ("command-only", [h("BROKER_BATCH"), C, b"\x84"], "an entry that stops after its command"),
        ("length-truncated", [h("BROKER_BATCH"), C, b"\x84\x00"], "half a frame-length"),
        ("frame-truncated", [h("BROKER_BATCH"), C, bgood[:-1]], "a frame one octet short"),
        (
            "frame-missing",
            [h("BROKER_BATCH"), C, command_entry([h("DELIVER"), C, TOKEN, T, BODY])],
            "a DELIVER entry of 3 frames (it has 4: token, topic, body, sids)",
        ),
        ("trailing-bytes", [h("BROKER_BATCH"), C, bgood + b"\x83"], "a second entry cut off"),
        ("channel-15-bytes", [h("BROKER_BATCH"), c15, bgood], "a 15-byte channel frame"),
        ("channel-empty", [h("BROKER_BATCH"), b"", bgood], "an empty channel frame"),
    ]:
        broker(f"broker-batch-{label}", frames, BAD_FRAMES, f"BROKER_BATCH with {what}.")
    for name, frames in [
        ("PUBLISH", [h("PUBLISH"), C, ref(1), T, BODY]),
        ("ACK", [h("ACK"), C, TOKEN, AB]),
        ("WELCOME", [h("WELCOME"), C, WELCOME_BODY]),
        ("OK", [h("OK"), C, ref(1)]),
        ("ERROR", [h("ERROR"), C, ref(1), (406).to_bytes(2, "big"), b"x", b""]),
        ("BROKER_HEARTBEAT", [h("BROKER_HEARTBEAT"), C]),
        ("DROPPED", [h("DROPPED"), C, sid(1) + bytes(4), bytes(4)]),
        ("STATS_REPLY", [h("STATS_REPLY"), C, ref(1), STATS_BODY]),
        ("DELIVER_BATCH", [h("DELIVER_BATCH"), C, deliver_entry(S1, T, BODY)]),
        ("BROKER_BATCH", [h("BROKER_BATCH"), C, bgood]),
        ("STREAM_REPLY", [h("STREAM_REPLY"), C, ref(1), packb({"streams": []})]),
    ]:
        broker(
            f"broker-batch-entry-{name.lower().replace('_', '-')}",
            [h("BROKER_BATCH"), C, bgood + command_entry(frames)],
            BAD_FRAMES,
            f"BROKER_BATCH whose second entry is a {name} (0x{CMD[name]:02x}): a "
            "BROKER_BATCH holds only DELIVER, ROUTED, ACKED, ASK, ANSWER, STORED and "
            "STREAM_MSG.",
        )
    broker(
        "broker-batch-entry-0x93",
        [h("BROKER_BATCH"), C, b"\x93" + (1).to_bytes(4, "big") + b"x"],
        BAD_FRAMES,
        "BROKER_BATCH with an entry of command byte 0x93, not a command.",
    )
    broker(
        "broker-sends-batch",
        [h("BATCH"), C, good],
        UNKNOWN_COMMAND,
        "The client-only command BATCH received from the broker.",
    )
    broker(
        "welcome-batch-commands-not-boolean",
        [h("WELCOME"), C, packb({**WELCOME_MAP, "batch_commands": "yes"})],
        BAD_BODY,
        "WELCOME batch_commands must be a boolean, not a string.",
    )
    malformed_stream_vectors(client, broker)
    return out


def malformed_stream_vectors(client: Any, broker: Any) -> None:
    """The durable-stream vectors of malformed.json (``client`` and ``broker``
    as in malformed_vectors)."""
    C = CHANNEL
    T = b"orders.eu.created"
    S1 = sid(1)
    r33 = bytes(range(1, 34))
    LIST = packb({"op": "list"})
    CM = packb(CONSUME_MAP)
    REPLY = packb({"streams": []})
    SEQ = STREAM_SEQ.to_bytes(8, "big")
    MSG = [h("STREAM_MSG"), C, STREAM_TOKEN, T, BODY, S1, meta(STREAM_SEQ, 1)]

    def stream_client(name: str, frames: list[bytes], code: int, what: str, joined: bool) -> None:
        client(name, frames, code, what, joined=joined, feature=STREAMS)

    def stream_broker(name: str, frames: list[bytes], code: int, what: str) -> None:
        broker(name, frames, code, what, feature=STREAMS)

    # STREAM_ACK vectors come from a joined peer, as ACK's do; the others not:
    # the broker checks their frames before the session.
    for name, short, long, joined in [
        ("stream", [h("STREAM"), C, ref(1)], [h("STREAM"), C, ref(1), LIST, b""], False),
        ("consume", [h("CONSUME"), C, ref(1), S1], [h("CONSUME"), C, ref(1), S1, CM, b""], False),
        ("stream-ack", stream_ack(ACK)[:-1], [*stream_ack(ACK), b""], True),
    ]:
        cmd = name.upper().replace("-", "_")
        stream_client(
            f"{name}-too-few-frames", short, BAD_FRAMES, f"{cmd} missing its last frame.", joined
        )
        stream_client(
            f"{name}-too-many-frames", long, BAD_FRAMES, f"{cmd} with an extra frame.", joined
        )
    for name, frames, code, what, joined in [
        (
            "stream-ref-empty",
            [h("STREAM"), C, b"", LIST],
            BAD_FRAMES,
            "STREAM with an empty ref (1 to 32 octets)",
            False,
        ),
        (
            "stream-ref-33-bytes",
            [h("STREAM"), C, r33, LIST],
            BAD_FRAMES,
            "STREAM whose ref is 33 bytes; the ERROR echoes no ref",
            False,
        ),
        (
            "stream-channel-15-bytes",
            [h("STREAM"), C[:15], ref(1), LIST],
            BAD_FRAMES,
            "STREAM with a 15-byte channel frame",
            False,
        ),
        (
            "stream-body-not-msgpack",
            [h("STREAM"), C, ref(1), b"\xc1"],
            BAD_BODY,
            "STREAM whose body is 0xc1, never msgpack",
            False,
        ),
        (
            "stream-body-array",
            [h("STREAM"), C, ref(1), packb(["list"])],
            BAD_BODY,
            "STREAM whose body is an array, not a map",
            False,
        ),
        (
            "stream-body-op-int",
            [h("STREAM"), C, ref(1), packb({"op": 1})],
            BAD_BODY,
            "STREAM whose op is an int, not a str",
            False,
        ),
        (
            "consume-sid-3-bytes",
            [h("CONSUME"), C, ref(1), S1[:3], CM],
            BAD_FRAMES,
            "CONSUME with a 3-byte sid (a sid is exactly 4 bytes)",
            False,
        ),
        (
            "consume-sid-8-bytes",
            [h("CONSUME"), C, ref(1), sid(1, 2), CM],
            BAD_FRAMES,
            "CONSUME with two sids where one is expected",
            False,
        ),
        (
            "consume-ref-empty",
            [h("CONSUME"), C, b"", S1, CM],
            BAD_FRAMES,
            "CONSUME with an empty ref (1 to 32 octets)",
            False,
        ),
        (
            "consume-body-bin-key",
            [h("CONSUME"), C, ref(1), S1, packb({b"stream": STREAM_NAME})],
            BAD_BODY,
            "CONSUME whose body's key is a bin, not a str",
            False,
        ),
        (
            "stream-ack-kind-0x00",
            stream_ack(0),
            BAD_FRAMES,
            "STREAM_ACK of kind 0x00 (kinds are 01 to 04)",
            True,
        ),
        (
            "stream-ack-kind-0x05",
            stream_ack(5),
            BAD_FRAMES,
            "STREAM_ACK of kind 0x05 (kinds are 01 to 04)",
            True,
        ),
        (
            "stream-ack-kind-empty",
            [*stream_ack(ACK)[:3], b"", b"", b""],
            BAD_FRAMES,
            "STREAM_ACK with an empty kind frame",
            True,
        ),
        (
            "stream-ack-kind-2-bytes",
            [*stream_ack(ACK)[:3], b"\x01\x01", b"", b""],
            BAD_FRAMES,
            "STREAM_ACK with a 2-byte kind frame",
            True,
        ),
        (
            "stream-ack-delay-2-bytes",
            [*stream_ack(NAK)[:4], b"\x13\x88", b""],
            BAD_FRAMES,
            "STREAM_ACK NAK with a 2-byte delay (0 or 4 bytes)",
            True,
        ),
        (
            "stream-ack-delay-5-bytes",
            [*stream_ack(NAK)[:4], bytes(5), b""],
            BAD_FRAMES,
            "STREAM_ACK NAK with a 5-byte delay (0 or 4 bytes)",
            True,
        ),
        (
            "stream-ack-token-empty",
            [h("STREAM_ACK"), C, b"", bytes((ACK,)), b"", b""],
            BAD_FRAMES,
            "STREAM_ACK with an empty token (tokens are 1 to 32 bytes)",
            True,
        ),
        (
            "stream-ack-token-33-bytes",
            [h("STREAM_ACK"), C, r33, bytes((ACK,)), b"", b""],
            BAD_FRAMES,
            "STREAM_ACK whose token is 33 bytes",
            True,
        ),
        (
            "stream-ack-text-invalid-utf8",
            [*stream_ack(TERM)[:5], b"\xff"],
            BAD_FRAMES,
            "STREAM_ACK TERM whose text is not UTF-8",
            True,
        ),
    ]:
        stream_client(name, frames, code, what + ".", joined)
    for name, frames in [
        ("STREAM_REPLY", [h("STREAM_REPLY"), C, ref(1), REPLY]),
        ("STORED", [h("STORED"), C, ref(1), STREAM_NAME.encode(), SEQ, b"\x00"]),
        ("STREAM_MSG", MSG),
    ]:
        stream_client(
            f"client-sends-{name.lower().replace('_', '-')}",
            frames,
            UNKNOWN_COMMAND,
            f"A client sends the broker-only command {name}.",
            True,
        )
    # -- broker -> client
    for name, frames in [
        ("stream", [h("STREAM"), C, ref(1), LIST]),
        ("consume", [h("CONSUME"), C, ref(1), S1, CM]),
        ("stream-ack", stream_ack(ACK)),
    ]:
        stream_broker(
            f"broker-sends-{name}",
            frames,
            UNKNOWN_COMMAND,
            f"The client-only command {name.upper().replace('-', '_')} received from the broker.",
        )
    for name, short, long in [
        (
            "stream-reply",
            [h("STREAM_REPLY"), C, ref(1)],
            [h("STREAM_REPLY"), C, ref(1), REPLY, b""],
        ),
        (
            "stored",
            [h("STORED"), C, ref(1), b"ORDERS", SEQ],
            [h("STORED"), C, ref(1), b"ORDERS", SEQ, b"\x00", b""],
        ),
        ("stream-msg", MSG[:-1], [*MSG, b""]),
    ]:
        cmd = name.upper().replace("-", "_")
        stream_broker(f"{name}-too-few-frames", short, BAD_FRAMES, f"{cmd} missing a frame.")
        stream_broker(f"{name}-too-many-frames", long, BAD_FRAMES, f"{cmd} with an extra frame.")
    stored = [h("STORED"), C, ref(6), STREAM_NAME.encode(), SEQ, b"\x00"]
    for name, frames, code, what in [
        (
            "stream-reply-ref-empty",
            [h("STREAM_REPLY"), C, b"", REPLY],
            BAD_FRAMES,
            "STREAM_REPLY echoing an empty ref (a STREAM's ref is never empty)",
        ),
        (
            "stream-reply-channel-empty",
            [h("STREAM_REPLY"), b"", ref(1), REPLY],
            BAD_FRAMES,
            "STREAM_REPLY with an empty channel frame",
        ),
        (
            "stream-reply-body-not-msgpack",
            [h("STREAM_REPLY"), C, ref(1), b"\xc1"],
            BAD_BODY,
            "STREAM_REPLY whose body is 0xc1",
        ),
        (
            "stream-reply-body-array",
            [h("STREAM_REPLY"), C, ref(1), packb([])],
            BAD_BODY,
            "STREAM_REPLY whose body is an array, not a map",
        ),
        (
            "stream-reply-body-int-key",
            [h("STREAM_REPLY"), C, ref(1), packb({1: True})],
            BAD_BODY,
            "STREAM_REPLY whose body has an int key",
        ),
        (
            "stored-stream-65-bytes",
            [*stored[:3], b"S" * 65, *stored[4:]],
            BAD_FRAMES,
            "STORED naming a stream of 65 bytes (1 to 64)",
        ),
        (
            "stored-stream-empty",
            [*stored[:3], b"", *stored[4:]],
            BAD_FRAMES,
            "STORED naming a stream of 0 bytes",
        ),
        (
            "stored-stream-dot",
            [*stored[:3], b"ORDERS.EU", *stored[4:]],
            BAD_FRAMES,
            "STORED naming a stream with a '.' (only A-Z a-z 0-9 _ -)",
        ),
        (
            "stored-stream-non-ascii",
            [*stored[:3], "ÖRDERS".encode(), *stored[4:]],
            BAD_FRAMES,
            "STORED naming a stream with a non-ASCII letter",
        ),
        (
            "stored-seq-7-bytes",
            [*stored[:4], SEQ[1:], stored[5]],
            BAD_FRAMES,
            "STORED with a 7-byte sequence (exactly 8)",
        ),
        (
            "stored-seq-9-bytes",
            [*stored[:4], b"\x00" + SEQ, stored[5]],
            BAD_FRAMES,
            "STORED with a 9-byte sequence (exactly 8)",
        ),
        (
            "stored-flag-0x02",
            [*stored[:5], b"\x02"],
            BAD_FRAMES,
            "STORED whose flag is 0x02 (00 or 01)",
        ),
        ("stored-flag-empty", [*stored[:5], b""], BAD_FRAMES, "STORED with an empty flag frame"),
        (
            "stored-ref-empty",
            [h("STORED"), C, b"", *stored[3:]],
            BAD_FRAMES,
            "STORED echoing an empty ref (a confirmed PUBLISH's ref is never empty)",
        ),
        (
            "stream-msg-meta-11-bytes",
            [*MSG[:6], MSG[6][:11]],
            BAD_FRAMES,
            "STREAM_MSG with an 11-byte meta frame (exactly 12)",
        ),
        (
            "stream-msg-meta-13-bytes",
            [*MSG[:6], MSG[6] + b"\x00"],
            BAD_FRAMES,
            "STREAM_MSG with a 13-byte meta frame (exactly 12)",
        ),
        (
            "stream-msg-token-empty",
            [*MSG[:2], b"", *MSG[3:]],
            BAD_FRAMES,
            "STREAM_MSG with an empty token (it is always settled by it)",
        ),
        (
            "stream-msg-token-33-bytes",
            [*MSG[:2], r33, *MSG[3:]],
            BAD_FRAMES,
            "STREAM_MSG whose token is 33 bytes",
        ),
        (
            "stream-msg-sid-5-bytes",
            [*MSG[:5], S1 + b"\x00", MSG[6]],
            BAD_FRAMES,
            "STREAM_MSG with a 5-byte sid (exactly one sid)",
        ),
        (
            "stream-msg-sids-8-bytes",
            [*MSG[:5], sid(1, 2), MSG[6]],
            BAD_FRAMES,
            "STREAM_MSG naming two sids (a consumer's sid is one)",
        ),
        (
            "stream-msg-topic-star",
            [*MSG[:3], b"orders.*", *MSG[4:]],
            BAD_TOPIC,
            "STREAM_MSG whose topic is a pattern",
        ),
    ]:
        stream_broker(name, frames, code, what + ".")


# --- session.json -------------------------------------------------------------


def command_of(label: str) -> str:
    """The command a session label names: "publish-confirmed" is a PUBLISH."""
    if label in ("publish-batch", "stream-ack"):
        return label.upper().replace("-", "_")
    return label.split("-")[0].upper()


def session_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    hello = [h("HELLO"), CHANNEL, HELLO_BODY]

    def add(
        name: str,
        setup: list[list[bytes]],
        frames: list[bytes],
        code: int,
        description: str,
        max_message_size: int = DEFAULT_MAX,
        entry_ref: bytes | None = None,
        feature: str | None = None,
    ) -> None:
        reply = echo(frames)
        if entry_ref is not None:
            # A BATCH entry's own ERROR echoes that entry's ref, as if it came alone.
            reply["ref"] = entry_ref.hex()
        vec = {
            "name": name,
            "description": description,
            "max_message_size": max_message_size,
            "setup": [hexes(f) for f in setup],
            "frames": hexes(frames),
            "code": code,
            "reply": reply,
        }
        out.append(vec if feature is None else {**vec, "feature": feature})

    C, OTHER = CHANNEL, OTHER_CHANNEL
    T = b"orders.eu.created"
    AB = ack_body(1, 0, [])
    RT = b"billing.total"
    cmds: dict[str, Callable[[bytes], list[bytes]]] = {
        "subscribe": lambda ch: [h("SUBSCRIBE"), ch, ref(1), sid(1), b"orders.>", b""],
        "unsubscribe": lambda ch: [h("UNSUBSCRIBE"), ch, ref(2), sid(1)],
        "publish-unconfirmed": lambda ch: [h("PUBLISH"), ch, b"", T, BODY],
        "publish-confirmed": lambda ch: [h("PUBLISH"), ch, ref(3), T, BODY],
        "ack": lambda ch: [h("ACK"), ch, TOKEN, AB],
        "disconnect": lambda ch: [h("DISCONNECT"), ch, ref(4)],
        "request": lambda ch: [h("REQUEST"), ch, REQUEST_REF, RT, BODY],
        "reply": lambda ch: [h("REPLY"), ch, REPLY_TOKEN, REPLY_BODY],
        "heartbeat": lambda ch: [h("HEARTBEAT"), ch],
        "publish-batch": lambda ch: [h("PUBLISH_BATCH"), ch, publish_entry(T, BODY)],
        "batch": lambda ch: [h("BATCH"), ch, command_entry(publish(ref(3)))],
        "stream": lambda ch: [h("STREAM"), ch, REF_LIST, packb({"op": "list"})],
        "consume": lambda ch: [h("CONSUME"), ch, REF_CONSUME, sid(1), packb(CONSUME_MAP)],
        "stream-ack": lambda ch: stream_ack(ACK, channel=ch),
    }
    hello_bc = [h("HELLO"), CHANNEL, HELLO_BC_BODY]

    def feature_of(label: str) -> str | None:
        return STREAMS if command_of(label) in STREAM_COMMANDS else None

    for label, make in cmds.items():
        add(
            f"not-joined-{label}",
            [],
            make(C),
            NOT_JOINED,
            f"{command_of(label)} before HELLO.",
            feature=feature_of(label),
        )
    add(
        "not-joined-after-disconnect",
        [hello, [h("DISCONNECT"), C, ref(9)]],
        [h("SUBSCRIBE"), C, ref(1), sid(1), b"orders.>", b""],
        NOT_JOINED,
        "After DISCONNECT the peer is forgotten: SUBSCRIBE needs a new HELLO.",
    )
    add(
        "channel-mismatch-hello",
        [hello],
        [h("HELLO"), OTHER, HELLO_BODY],
        CHANNEL_MISMATCH,
        "A second HELLO naming another channel (the same channel would be re-WELCOMEd).",
    )
    for label, make in cmds.items():
        add(
            f"channel-mismatch-{label}",
            [hello_bc if label == "batch" else hello],
            make(OTHER),
            CHANNEL_MISMATCH,
            f"{command_of(label)} naming a channel other than the one joined; "
            "the ERROR echoes the channel sent.",
            feature=feature_of(label),
        )
    big = sized_body(SMALL_MAX + 1)
    exact = sized_body(SMALL_MAX)
    assert len(big) == SMALL_MAX + 1 and len(exact) == SMALL_MAX
    add(
        "too-large-publish-confirmed",
        [hello],
        [h("PUBLISH"), C, ref(3), T, big],
        TOO_LARGE,
        "A 1025-byte PUBLISH body to a broker with max_message_size 1024.",
        SMALL_MAX,
    )
    add(
        "too-large-publish-unconfirmed",
        [hello],
        [h("PUBLISH"), C, b"", T, big],
        TOO_LARGE,
        "Unconfirmed publishes are refused too (the ERROR then has an empty ref).",
        SMALL_MAX,
    )
    add(
        "too-large-publish-batch",
        [hello],
        [h("PUBLISH_BATCH"), C, publish_entry(T, exact) + publish_entry(T, big)],
        TOO_LARGE,
        "A PUBLISH_BATCH whose second entry has a 1025-byte body (max_message_size 1024): "
        "nothing of the batch is routed, the first entry neither.",
        SMALL_MAX,
    )
    add(
        "too-large-ack",
        [hello],
        [h("ACK"), C, TOKEN, b"\x93\x01\x00\x91\xda\x03\xfc" + b"e" * 1020],
        TOO_LARGE,
        "A 1027-byte ACK body to a broker with max_message_size 1024.",
        SMALL_MAX,
    )
    add(
        "too-large-request",
        [hello],
        [h("REQUEST"), C, REQUEST_REF, RT, big],
        TOO_LARGE,
        "A 1025-byte REQUEST body to a broker with max_message_size 1024.",
        SMALL_MAX,
    )
    add(
        "too-large-reply",
        [hello],
        [h("REPLY"), C, REPLY_TOKEN, sized_body(SMALL_MAX + 1, reply_body)],
        TOO_LARGE,
        "A 1025-byte REPLY body to a broker with max_message_size 1024.",
        SMALL_MAX,
    )
    subscribed = [h("SUBSCRIBE"), C, ref(1), sid(1), b"orders.>", b""]
    grouped = [h("SUBSCRIBE"), C, ref(1), sid(1), b"orders.>", b"workers"]
    for name, setup, frames, what in [
        (
            "sid-in-use-other-pattern",
            subscribed,
            [h("SUBSCRIBE"), C, ref(2), sid(1), b"orders.*", b""],
            "another pattern",
        ),
        (
            "sid-in-use-join-queue",
            subscribed,
            [h("SUBSCRIBE"), C, ref(2), sid(1), b"orders.>", b"workers"],
            "the same pattern but a queue group",
        ),
        (
            "sid-in-use-leave-queue",
            grouped,
            [h("SUBSCRIBE"), C, ref(2), sid(1), b"orders.>", b""],
            "the same pattern but no queue group",
        ),
        (
            "sid-in-use-other-queue",
            grouped,
            [h("SUBSCRIBE"), C, ref(2), sid(1), b"orders.>", b"auditors"],
            "another queue group",
        ),
    ]:
        add(
            name,
            [hello, setup],
            frames,
            SID_IN_USE,
            f"SUBSCRIBE reusing open sid 1 with {what}; the subscription stays as it was "
            "(the same pattern and queue again would be answered OK).",
        )
    deep = b".".join(b"t%d" % i for i in range(17))
    add(
        "limit-pattern-tokens",
        [hello],
        [h("SUBSCRIBE"), C, ref(3), sid(3), deep, b""],
        LIMIT_REACHED,
        "SUBSCRIBE to a valid pattern of 17 tokens, past the reference broker's default "
        "max_pattern_tokens of 16: refused with 429; nothing is subscribed.",
    )
    # -- BATCH entries: each is handled as if it came alone, with its own ERROR; the
    # other entries here are unconfirmed publishes to nobody, which draw no reply.
    add(
        "too-large-batch",
        [hello_bc],
        batch_of("BATCH", [publish(b"", T, exact), publish(ref(5), T, big)]),
        TOO_LARGE,
        "A BATCH whose second entry, PUBLISH ref 5, has a 1025-byte body (max_message_size "
        "1024): that entry is refused with its own ref; unlike PUBLISH_BATCH, the first "
        "entry is routed.",
        SMALL_MAX,
        entry_ref=ref(5),
    )
    unconfirmed = publish(b"")
    for label, entry, code, r, what in [
        (
            "publish-topic-star",
            publish(ref(2), b"orders.*"),
            BAD_TOPIC,
            ref(2),
            "PUBLISH ref 2 to a wildcard topic; the ERROR echoes ref 2",
        ),
        (
            "publish-ref-33-bytes",
            publish(bytes(range(1, 34))),
            BAD_FRAMES,
            b"",
            "PUBLISH with a 33-byte ref, which the ERROR does not echo",
        ),
        (
            "ack-token-empty",
            [h("ACK"), C, b"", AB],
            BAD_FRAMES,
            b"",
            "ACK with an empty token",
        ),
        (
            "request-ref-25-bytes",
            [h("REQUEST"), C, bytes(range(1, 26)), RT, BODY],
            BAD_FRAMES,
            bytes(range(1, 26)),
            "REQUEST with a 25-byte ref (at most 24), which the ERROR echoes",
        ),
        (
            "reply-token-8-bytes",
            [h("REPLY"), C, session(2), REPLY_BODY],
            BAD_FRAMES,
            b"",
            "REPLY with an 8-byte token (a session number without a ref)",
        ),
        (
            "request-topic-gt",
            [h("REQUEST"), C, REQUEST_REF, b"billing.>", BODY],
            BAD_TOPIC,
            REQUEST_REF,
            "REQUEST ref 9 to a pattern instead of a topic",
        ),
    ]:
        add(
            f"batch-entry-{label}",
            [hello_bc],
            batch_of("BATCH", [unconfirmed, entry, unconfirmed]),
            code,
            f"A well-formed BATCH whose second of three entries is {what}: only that entry "
            "is refused, the first and third are routed.",
            entry_ref=r,
        )
    # -- durable streams, on a broker with no streams and no store directory
    # (the reference broker as the tests start it): what they refuse does not
    # depend on anything stored.
    add(
        "not-found-consume",
        [hello],
        [h("CONSUME"), C, REF_CONSUME, sid(1), packb(CONSUME_MAP)],
        NOT_FOUND,
        "CONSUME of stream ORDERS, which the channel does not have: nothing is bound.",
        feature=STREAMS,
    )
    add(
        "not-found-stream-info",
        [hello],
        [h("STREAM"), C, ref(15), packb({"op": "info", "name": STREAM_NAME})],
        NOT_FOUND,
        "STREAM info of stream ORDERS, which the channel does not have.",
        feature=STREAMS,
    )
    add(
        "store-failed-file-stream",
        [hello],
        [
            h("STREAM"),
            C,
            REF_ADD,
            packb({"op": "add", "config": {**ORDERS_CONFIG, "storage": "file"}}),
        ],
        STORE_FAILED,
        "STREAM add of a file stream on a broker without a store directory: nothing is added.",
        feature=STREAMS,
    )
    add(
        "sid-in-use-consume",
        [hello, [h("SUBSCRIBE"), C, ref(1), sid(1), b"orders.>", b""]],
        [h("CONSUME"), C, REF_CONSUME, sid(1), packb(CONSUME_MAP)],
        SID_IN_USE,
        "CONSUME binding sid 1, open as a subscription: refused before the stream is looked "
        "for; the subscription stays.",
        feature=STREAMS,
    )
    add(
        "permission-denied-stream-ack",
        [hello],
        [*stream_ack(ACK)[:2], stream_token(1, STREAM_SEQ, 2), *stream_ack(ACK)[3:]],
        PERMISSION_DENIED,
        "STREAM_ACK of a token the broker did not send to this peer (the reference broker's "
        "form, made for another session): a fresh session was sent no STREAM_MSG at all.",
        feature=STREAMS,
    )
    return out


# --- exchanges.json -------------------------------------------------------------


RATE_TEXT = "user 'billing' is over its rate of 100 messages/s"


def error_frames(r: bytes, code: int, text: str) -> list[bytes]:
    """An ERROR on the standard channel (its text is informative)."""
    return [h("ERROR"), CHANNEL, r, code.to_bytes(2, "big"), text.encode(), b""]


def exchange_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    hello = [h("HELLO"), CHANNEL, HELLO_BODY]
    welcome = [h("WELCOME"), CHANNEL, WELCOME_BODY]
    hello_bc = [h("HELLO"), CHANNEL, HELLO_BC_BODY]
    welcome_bc = [h("WELCOME"), CHANNEL, WELCOME_BC_BODY]

    def subscribe(r: bytes, s: bytes, pattern: bytes) -> list[bytes]:
        return [h("SUBSCRIBE"), CHANNEL, r, s, pattern, b""]

    def ok(r: bytes) -> list[bytes]:
        return [h("OK"), CHANNEL, r]

    def add(name: str, description: str, steps: list[tuple[str, str, list[bytes]]]) -> None:
        out.append(
            {
                "name": name,
                "description": description,
                "max_message_size": DEFAULT_MAX,
                "steps": [{"peer": peer, what: hexes(frames)} for peer, what, frames in steps],
            }
        )

    def join(peer: str, asks: bool = True) -> list[tuple[str, str, list[bytes]]]:
        if asks:
            return [(peer, "send", hello_bc), (peer, "receive", welcome_bc)]
        return [(peer, "send", hello), (peer, "receive", welcome)]

    s1 = sid(1)
    add(
        "batch-commands-self",
        "Peer A asks for batch_commands and subscribes sid 1 to what it publishes. Its "
        "confirmed PUBLISH is answered by one BROKER_BATCH (DELIVER, ROUTED); its BATCH "
        "(PUBLISH, ACK) by another (DELIVER, ROUTED, ACKED); a single reply stays a plain "
        "message. A HELLO without batch_commands turns them off again.",
        [
            *join("A"),
            ("A", "send", subscribe(ref(1), s1, b"orders.>")),
            ("A", "receive", ok(ref(1))),
            ("A", "send", publish(ref(2))),
            ("A", "receive", batch_of("BROKER_BATCH", [deliver(tok(1)), routed(ref(2), 1)])),
            ("A", "send", BATCH_SELF),
            ("A", "receive", BROKER_BATCH_SELF),
            ("A", "send", ack(tok(2))),
            ("A", "receive", acked(ref(3))),
            *join("A", asks=False),
            ("A", "send", publish(ref(4))),
            ("A", "receive", deliver(tok(3))),
            ("A", "receive", routed(ref(4), 1)),
        ],
    )
    add(
        "batch-commands-confirmed",
        "Subscriber S (sid 1) and publisher P both ask for batch_commands. A BATCH of one "
        "confirmed PUBLISH gives S a plain DELIVER and P a plain ROUTED; a BATCH of two gives "
        "each one BROKER_BATCH, and S's BATCH of two ACKs gives P one BROKER_BATCH of two "
        "ACKEDs.",
        [
            *join("S"),
            ("S", "send", subscribe(ref(1), s1, b"orders.>")),
            ("S", "receive", ok(ref(1))),
            *join("P"),
            ("P", "send", batch_of("BATCH", [publish(ref(1))])),
            ("S", "receive", deliver(tok(1))),
            ("P", "receive", routed(ref(1), 1)),
            ("S", "send", ack(tok(1))),
            ("P", "receive", acked(ref(1))),
            ("P", "send", batch_of("BATCH", [publish(ref(2)), publish(ref(3), US, SECOND)])),
            (
                "S",
                "receive",
                batch_of("BROKER_BATCH", [deliver(tok(2)), deliver(tok(3), US, SECOND)]),
            ),
            ("P", "receive", batch_of("BROKER_BATCH", [routed(ref(2), 1), routed(ref(3), 1)])),
            ("S", "send", batch_of("BATCH", [ack(tok(2)), ack(tok(3))])),
            ("P", "receive", batch_of("BROKER_BATCH", [acked(ref(2)), acked(ref(3))])),
        ],
    )
    add(
        "batch-commands-partial-refusal",
        "P sends a BATCH of three confirmed PUBLISHes whose second has a wildcard topic: "
        "refs 1 and 3 are routed to S (which asked for batch_commands) and T (which did "
        "not), and ref 2 alone draws ERROR 406 echoing ref 2. An ERROR is never batched, so "
        "P's ROUTEDs around it stay plain. S ACKs both deliveries in one BATCH, T one by one.",
        [
            *join("S"),
            ("S", "send", subscribe(ref(1), s1, b"orders.>")),
            ("S", "receive", ok(ref(1))),
            *join("T", asks=False),
            ("T", "send", subscribe(ref(1), s1, b"orders.>")),
            ("T", "receive", ok(ref(1))),
            *join("P"),
            (
                "P",
                "send",
                batch_of(
                    "BATCH",
                    [publish(ref(1)), publish(ref(2), b"orders.*"), publish(ref(3), US, SECOND)],
                ),
            ),
            ("T", "receive", deliver(tok(1))),
            ("P", "receive", routed(ref(1), 2)),
            ("P", "receive", error_frames(ref(2), BAD_TOPIC, "wildcards are not allowed")),
            ("T", "receive", deliver(tok(2), US, SECOND)),
            (
                "S",
                "receive",
                batch_of("BROKER_BATCH", [deliver(tok(1)), deliver(tok(2), US, SECOND)]),
            ),
            ("P", "receive", routed(ref(3), 2)),
            ("S", "send", batch_of("BATCH", [ack(tok(1)), ack(tok(2))])),
            ("P", "receive", batch_of("BROKER_BATCH", [acked(ref(1)), acked(ref(3))])),
            ("T", "send", ack(tok(1))),
            ("P", "receive", acked(ref(1))),
            ("T", "send", ack(tok(2))),
            ("P", "receive", acked(ref(3))),
        ],
    )
    add(
        "batch-commands-request",
        "Responder R (session 1, sid 4) and requester Q (session 2) ask for batch_commands. "
        "Q's BATCH of two REQUESTs gives R one BROKER_BATCH of two ASKs and Q one of two "
        "ROUTEDs; R's BATCH of two REPLYs gives Q one BROKER_BATCH of two ANSWERs.",
        [
            *join("R"),
            ("R", "send", subscribe(ref(1), sid(4), b"billing.>")),
            ("R", "receive", ok(ref(1))),
            *join("Q"),
            ("Q", "send", BATCH_REQUESTS),
            ("R", "receive", BROKER_BATCH_ASKS),
            (
                "Q",
                "receive",
                batch_of("BROKER_BATCH", [routed(REQUEST_REF, 1), routed(REQUEST_REF_2, 1)]),
            ),
            ("R", "send", BATCH_REPLIES),
            ("Q", "receive", BROKER_BATCH_ANSWERS),
        ],
    )
    return out


# --- bodies.json ----------------------------------------------------------------


def body_vectors() -> dict[str, list[dict[str, Any]]]:
    valid: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []

    def ok(
        name: str,
        kind: str,
        body: bytes,
        decoded: dict[str, Any],
        description: str,
        feature: str | None = None,
    ) -> None:
        decoded = {k: v for k, v in decoded.items() if k != "type"}
        vec = {
            "name": name,
            "description": description,
            "type": kind,
            "body": body.hex(),
            "decoded": decoded,
        }
        valid.append(vec if feature is None else {**vec, "feature": feature})

    def nok(
        name: str, kind: str, body: bytes, description: str, feature: str | None = None
    ) -> None:
        vec = {
            "name": name,
            "description": description,
            "type": kind,
            "body": body.hex(),
            "code": BAD_BODY,
        }
        bad.append(vec if feature is None else {**vec, "feature": feature})

    ok("message", "message", BODY, BODY_DECODED, "Timestamp 64-bit form (nanoseconds != 0).")
    t32 = 1_700_000_000_000_000_000
    ok(
        "message-timestamp32",
        "message",
        message_body(ts_ns=t32),
        message_decoded(ts_ns=t32),
        "Timestamp 32-bit form: whole seconds that fit 32 bits.",
    )
    t96 = -1_500_000_000
    ok(
        "message-timestamp96-before-epoch",
        "message",
        message_body(ts_ns=t96),
        message_decoded(ts_ns=t96),
        "Timestamp 96-bit form: 1969-12-31T23:59:58.5Z, before the epoch.",
    )
    t96b = (1 << 34) * 1_000_000_000 + 1
    ok(
        "message-timestamp96-after-2514",
        "message",
        message_body(ts_ns=t96b),
        message_decoded(ts_ns=t96b),
        "Timestamp 96-bit form: seconds beyond 34 bits (year 2514).",
    )
    ok(
        "message-headers",
        "message",
        message_body(headers=HEADERS),
        message_decoded(headers=HEADERS),
        "Headers with non-ASCII values.",
    )
    ok(
        "message-empty-payload",
        "message",
        message_body(payload=b""),
        message_decoded(payload=b""),
        "An empty payload (bin8 of length 0).",
    )
    big_payload = bytes(range(256)) * 2
    ok(
        "message-payload-bin16",
        "message",
        message_body(payload=big_payload),
        message_decoded(payload=big_payload),
        "A 512-byte payload, encoded as bin16.",
    )
    ok(
        "message-id-not-uuid",
        "message",
        message_body(msg_id=bytes(16)),
        message_decoded(msg_id=bytes(16)),
        "Any 16 bytes are a valid id; no UUID version is checked.",
    )
    ok(
        "message-extra-elements",
        "message",
        message_body(extra=(42, "future field")),
        BODY_DECODED,
        "Elements after the 4th are ignored (room for later versions).",
    )
    ok("ack", "ack", ack_body(1, 0, []), ack_decoded(1, 0, []), "One subscription took it.")
    ok(
        "ack-errors",
        "ack",
        ack_body(0, 2, ["RuntimeError: a", "KeyError: 'b'"]),
        ack_decoded(0, 2, ["RuntimeError: a", "KeyError: 'b'"]),
        "Two subscriptions dropped it, two handlers raised.",
    )
    ok(
        "ack-large-counts",
        "ack",
        ack_body(70000, 300, []),
        ack_decoded(70000, 300, []),
        "Counts encoded as uint32 and uint16.",
    )
    ok(
        "ack-extra-elements",
        "ack",
        packb([1, 0, [], {"future": True}]),
        ack_decoded(1, 0, []),
        "Elements after the 3rd are ignored.",
    )
    ok("reply", "reply", REPLY_BODY, REPLY_DECODED, "A reply: error nil.")
    ok(
        "reply-error",
        "reply",
        reply_body(payload=b"", error="ValueError: no such account"),
        reply_decoded(payload=b"", error="ValueError: no such account"),
        "A responder's failure: the error text is a str; the payload is then empty.",
    )
    ok(
        "reply-error-empty-text",
        "reply",
        reply_body(error=""),
        reply_decoded(error=""),
        "An empty error text is still an error (only nil means a reply).",
    )
    ok(
        "reply-headers",
        "reply",
        reply_body(headers=HEADERS, ts_ns=1_700_000_000_000_000_000),
        reply_decoded(headers=HEADERS, ts_ns=1_700_000_000_000_000_000),
        "A reply with headers and a 32-bit Timestamp.",
    )
    ok(
        "reply-without-error-element",
        "reply",
        message_body(payload=b'{"total":42}'),
        REPLY_DECODED,
        "A 4-element array (a message body) is a reply with error nil.",
    )
    ok(
        "reply-extra-elements",
        "reply",
        reply_body(extra=(7, "future field")),
        REPLY_DECODED,
        "Elements after the 5th are ignored.",
    )
    ok("hello", "hello", HELLO_BODY, {"map": HELLO_MAP}, "The minimal HELLO map.")
    ok("hello-empty", "hello", packb({}), {"map": {}}, "An empty map is accepted.")
    ok("welcome", "welcome", WELCOME_BODY, {"map": WELCOME_MAP}, "The reference broker's WELCOME.")
    wx = {"max_message_size": 1, "broker": "other/2", "features": ["x"]}
    ok("welcome-extra-keys", "welcome", packb(wx), {"map": wx}, "Unknown keys are ignored.")
    ok(
        "hello-heartbeat",
        "hello",
        HELLO_HB_BODY,
        {"map": HELLO_HB_MAP},
        f"A HELLO asking for heartbeats every {HEARTBEAT_MS} ms.",
    )
    big = {"heartbeat": 2**32}
    ok(
        "hello-heartbeat-uint64",
        "hello",
        packb(big),
        {"map": big},
        "A heartbeat above the broker's maximum is valid (the broker clamps it); uint64 here.",
    )
    ok(
        "welcome-heartbeat",
        "welcome",
        WELCOME_HB_BODY,
        {"map": WELCOME_HB_MAP},
        "The WELCOME of the reference broker to a HELLO that asked for heartbeats.",
    )
    ok("stats", "stats", STATS_BODY, {"map": STATS_MAP}, "The reference broker's STATS_REPLY.")
    ok(
        "stats-empty-map",
        "stats",
        packb({}),
        {"map": {}},
        "Any map with str keys, even an empty one.",
    )
    sx = {"peers": 1, "uptime_s": 12.5, "future": [1, "x"]}
    ok("stats-unknown-keys", "stats", packb(sx), {"map": sx}, "Keys clients do not know.")

    TSX = ts(TS_NS)
    for name, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1 is never valid msgpack"),
        ("empty", b"", "zero bytes"),
        ("truncated", BODY[:-1], "the standard body missing its last byte"),
        ("trailing-bytes", BODY + b"\xc0", "a valid body followed by nil"),
        ("map", packb({"id": MSG_ID}), "a map instead of an array"),
        ("array-3", packb([MSG_ID, TSX, {}]), "an array of 3 elements"),
        ("id-15-bytes", packb([MSG_ID[:15], TSX, {}, b""]), "a 15-byte id"),
        ("id-17-bytes", packb([MSG_ID + b"\x00", TSX, {}, b""]), "a 17-byte id"),
        ("id-str", packb(["6f1c4a2e3b5d4e8f", TSX, {}, b""]), "an id sent as str, not bin"),
        ("id-nil", packb([None, TSX, {}, b""]), "a nil id"),
        ("timestamp-int", packb([MSG_ID, TS_NS, {}, b""]), "a timestamp sent as an integer"),
        ("timestamp-float", packb([MSG_ID, 1.5, {}, b""]), "a timestamp sent as a float"),
        (
            "timestamp-wrong-ext-type",
            packb([MSG_ID, msgpack.ExtType(1, bytes(8)), {}, b""]),
            "ext type 1 instead of -1",
        ),
        (
            "timestamp-bad-length",
            b"\x94\xc4\x10" + MSG_ID + b"\xc7\x05\xff" + bytes(5) + b"\x80\xc4\x00",
            "a Timestamp ext of 5 bytes (only 4, 8 or 12 exist)",
        ),
        (
            "timestamp64-nanoseconds-overflow",
            b"\x94\xc4\x10"
            + MSG_ID
            + b"\xd7\xff"
            + ((1_000_000_000 << 34) | 5).to_bytes(8, "big")
            + b"\x80\xc4\x00",
            "a 64-bit Timestamp with nanoseconds = 1000000000",
        ),
        (
            "timestamp-after-year-9999",
            packb([MSG_ID, msgpack.Timestamp(1 << 40, 0), {}, b""]),
            "a Timestamp in year 36812, outside 0001..9999",
        ),
        ("headers-array", packb([MSG_ID, TSX, [], b""]), "headers sent as an array"),
        ("headers-nil", packb([MSG_ID, TSX, None, b""]), "nil headers"),
        ("header-value-int", packb([MSG_ID, TSX, {"a": 1}, b""]), "an int header value"),
        ("header-value-bin", packb([MSG_ID, TSX, {"a": b"b"}, b""]), "a bin header value"),
        ("header-key-bin", packb([MSG_ID, TSX, {b"a": "b"}, b""]), "a bin header key"),
        ("header-key-int", packb([MSG_ID, TSX, {1: "b"}, b""]), "an int header key"),
        (
            "header-value-invalid-utf8",
            b"\x94\xc4\x10" + MSG_ID + packb(TSX) + b"\x81\xa1a\xa1\xff" + b"\xc4\x00",
            "a str header value that is not UTF-8",
        ),
        ("payload-str", packb([MSG_ID, TSX, {}, "text"]), "a payload sent as str, not bin"),
        ("payload-nil", packb([MSG_ID, TSX, {}, None]), "a nil payload"),
    ]:
        nok(f"message-{name}", "message", body, f"Message body with {desc}.")
    for name, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1"),
        ("map", packb({"delivered": 1}), "a map instead of an array"),
        ("array-2", packb([1, 0]), "an array of 2"),
        ("negative-delivered", packb([-1, 0, []]), "delivered = -1"),
        ("negative-dropped", packb([0, -1, []]), "dropped = -1"),
        ("delivered-str", packb(["1", 0, []]), "delivered sent as str"),
        ("delivered-float", packb([1.0, 0, []]), "delivered sent as float"),
        ("errors-nil", packb([1, 0, None]), "errors sent as nil"),
        ("errors-str", packb([1, 0, "boom"]), "errors sent as a str, not an array"),
        ("errors-item-int", packb([1, 0, [1]]), "an int in errors"),
        ("errors-item-bin", packb([1, 0, [b"boom"]]), "a bin in errors"),
    ]:
        nok(f"ack-{name}", "ack", body, f"ACK body with {desc}.")
    for name, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1"),
        ("empty", b"", "zero bytes"),
        ("map", packb({"payload": b""}), "a map instead of an array"),
        ("array-3", packb([MSG_ID, TSX, {}]), "an array of 3 elements"),
        ("id-15-bytes", packb([MSG_ID[:15], TSX, {}, b"", None]), "a 15-byte id"),
        ("timestamp-int", packb([MSG_ID, TS_NS, {}, b"", None]), "a timestamp sent as an integer"),
        ("payload-str", packb([MSG_ID, TSX, {}, "total", None]), "a payload sent as str"),
        ("error-int", packb([MSG_ID, TSX, {}, b"", 500]), "an int error"),
        ("error-bin", packb([MSG_ID, TSX, {}, b"", b"boom"]), "a bin (not str) error"),
        ("error-array", packb([MSG_ID, TSX, {}, b"", ["boom"]]), "an array of error texts"),
        ("error-false", packb([MSG_ID, TSX, {}, b"", False]), "false instead of nil"),
        ("trailing-bytes", REPLY_BODY + b"\xc0", "a valid body followed by nil"),
    ]:
        nok(f"reply-{name}", "reply", body, f"Reply body with {desc}.")
    for name, body, desc in [
        ("array", packb([]), "an empty array"),
        ("int-key", packb({1: "x"}), "an int key"),
        ("bin-key", packb({b"client": "x"}), "a bin key"),
        ("trailing-bytes", HELLO_BODY + b"\x00", "a byte after the map"),
        ("heartbeat-negative", packb({"heartbeat": -1}), "heartbeat -1"),
        ("heartbeat-str", packb({"heartbeat": "2000"}), "heartbeat as str"),
        ("heartbeat-true", packb({"heartbeat": True}), "heartbeat true (a bool is not an int)"),
        ("heartbeat-float", packb({"heartbeat": 2000.0}), "heartbeat as float"),
        ("heartbeat-nil", packb({"heartbeat": None}), "heartbeat nil"),
    ]:
        nok(f"hello-{name}", "hello", body, f"HELLO body with {desc}.")
    for name, body, desc in [
        ("array", packb([]), "an empty array"),
        ("missing-max", packb({"broker": BROKER_NAME}), "no max_message_size"),
        ("max-zero", packb({"max_message_size": 0}), "max_message_size 0"),
        ("max-negative", packb({"max_message_size": -5}), "max_message_size -5"),
        ("max-str", packb({"max_message_size": "1024"}), "max_message_size as str"),
        ("max-float", packb({"max_message_size": 1024.0}), "max_message_size as float"),
        ("heartbeat-negative", packb({**WELCOME_MAP, "heartbeat": -1}), "heartbeat -1"),
        ("heartbeat-str", packb({**WELCOME_MAP, "heartbeat": "2000"}), "heartbeat as str"),
        ("heartbeat-true", packb({**WELCOME_MAP, "heartbeat": True}), "heartbeat true"),
    ]:
        nok(f"welcome-{name}", "welcome", body, f"WELCOME body with {desc}.")
    for name, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1"),
        ("empty", b"", "zero bytes"),
        ("array", packb([]), "an empty array"),
        ("int-key", packb({403: 1}), "an int key"),
        ("bin-key", packb({b"peers": 1}), "a bin key"),
        ("trailing-bytes", STATS_BODY + b"\x00", "a byte after the map"),
    ]:
        nok(f"stats-{name}", "stats", body, f"STATS_REPLY body with {desc}.")
    # -- batch_commands: a boolean in HELLO and WELCOME, like batch
    ok(
        "hello-batch-commands",
        "hello",
        HELLO_BC_BODY,
        {"map": HELLO_BC_MAP},
        "A HELLO asking for batches of commands.",
    )
    no = {"client": CLIENT_NAME, "batch_commands": False}
    ok("hello-batch-commands-false", "hello", packb(no), {"map": no}, "false asks for nothing.")
    ok(
        "welcome-batch-commands",
        "welcome",
        WELCOME_BC_BODY,
        {"map": WELCOME_BC_MAP},
        "A WELCOME offering batches of commands.",
    )
    not_bool: Any
    for name, not_bool, desc in [
        ("int", 1, "the integer 1"),
        ("nil", None, "nil"),
        ("str", "true", 'the str "true"'),
        ("array", [True], "an array"),
    ]:
        nok(
            f"hello-batch-commands-{name}",
            "hello",
            packb({"client": CLIENT_NAME, "batch_commands": not_bool}),
            f"HELLO body with batch_commands {desc} (it must be a boolean).",
        )
    for name, not_bool, desc in [("int", 0, "the integer 0"), ("str", "yes", 'the str "yes"')]:
        nok(
            f"welcome-batch-commands-{name}",
            "welcome",
            packb({**WELCOME_MAP, "batch_commands": not_bool}),
            f"WELCOME body with batch_commands {desc} (it must be a boolean).",
        )
    # -- durable streams: STREAM and CONSUME bodies ("stream"), STREAM_REPLY's
    # ("stream_reply"): maps with str keys; what their keys mean is the broker's
    # to check (422 for a bad op or config, in an ERROR).
    for name, kind, value, desc in [
        ("stream-add", "stream", {"op": "add", "config": ORDERS_CONFIG}, "STREAM add of ORDERS."),
        ("stream-list", "stream", {"op": "list"}, "STREAM list: an op without arguments."),
        (
            "stream-unknown-op",
            "stream",
            {"op": "compact", "name": STREAM_NAME},
            "An op the broker does not know is still a valid body (the broker answers 422).",
        ),
        ("stream-consume", "stream", CONSUME_MAP, "A CONSUME body: a consumer, no op."),
        ("stream-reply-list", "stream_reply", {"streams": [ORDERS_INFO]}, "STREAM_REPLY of list."),
        ("stream-reply-empty", "stream_reply", {}, "Any map with str keys, even an empty one."),
    ]:
        ok(name, kind, packb(value), {"map": value}, desc, STREAMS)
    for name, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1"),
        ("empty", b"", "zero bytes"),
        ("array", packb(["add"]), "an array"),
        ("bin-key", packb({b"op": "list"}), "a bin key"),
        ("op-int", packb({"op": 1}), "an int op"),
        ("op-bin", packb({"op": b"list"}), "a bin (not str) op"),
        ("trailing-bytes", packb({"op": "list"}) + b"\x00", "a byte after the map"),
    ]:
        nok(f"stream-{name}", "stream", body, f"STREAM body with {desc}.", STREAMS)
    for name, body, desc in [
        ("not-msgpack", b"\xc1", "0xc1"),
        ("array", packb([]), "an empty array"),
        ("int-key", packb({404: "no"}), "an int key"),
    ]:
        nok(
            f"stream-reply-{name}", "stream_reply", body, f"STREAM_REPLY body with {desc}.", STREAMS
        )
    return {"valid": valid, "malformed": bad}


# --- output -------------------------------------------------------------------


def build() -> dict[str, Any]:
    """Every vector file: file name -> JSON document."""
    common = {"format": FORMAT, "protocol": PROTOCOL}
    bodies = body_vectors()
    return {
        "valid.json": {**common, "vectors": valid_vectors()},
        "malformed.json": {**common, "vectors": malformed_vectors()},
        "session.json": {**common, "vectors": session_vectors()},
        "bodies.json": {**common, **bodies},
        "exchanges.json": {**common, "vectors": exchange_vectors()},
    }


def render(doc: Any) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, doc in build().items():
        (HERE / name).write_text(render(doc), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
