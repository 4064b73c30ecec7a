"""Round trips and refusals of the sans-IO wire codec (zmqbus.protocol)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqbus import protocol as p
from zmqbus.errors import ProtocolError
from zmqbus.protocol import Cmd, ErrorCode
from zmqbus.topics import MAX_TOPIC_BYTES

SETTINGS = settings(max_examples=100, deadline=None)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The msgpack Timestamp unpacks to a datetime, so the range is datetime's: years 1 to 9999.
MIN_NS = int((datetime(1, 1, 1, tzinfo=UTC) - EPOCH).total_seconds()) * 10**9
MAX_NS = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - EPOCH).total_seconds()) * 10**9 + (
    10**9 - 1
)

# --- strategies ---------------------------------------------------------------

channels = st.binary(min_size=16, max_size=16)
refs = st.binary(max_size=p.MAX_REF_BYTES)
# The ref of a confirmed PUBLISH or a REQUEST, as ROUTED and ACKED echo it: never empty.
given_refs = st.binary(min_size=1, max_size=p.MAX_REF_BYTES)
tokens = st.binary(min_size=1, max_size=p.MAX_REF_BYTES)
request_refs = st.binary(min_size=1, max_size=p.MAX_REQUEST_REF_BYTES)
# A reply token: an 8-byte session number and a request ref.
reply_tokens = st.builds(
    lambda n, tag, ref: n.to_bytes(p.SESSION_BYTES, "big") + tag + ref,
    st.integers(0, 2**64 - 1),
    st.binary(min_size=p.REPLY_TAG_BYTES, max_size=p.REPLY_TAG_BYTES),
    request_refs,
)
bodies = st.binary(max_size=200)
sid_frames = st.binary(min_size=p.SID_BYTES, max_size=p.SID_BYTES)
sids_frames = st.lists(sid_frames, min_size=1, max_size=5).map(b"".join)

_name_char = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    exclude_characters="*>.",
).filter(lambda c: not c.isspace())
_name_token = st.one_of(
    st.sampled_from(["a", "b", "orders", "é", "日本"]), st.text(_name_char, min_size=1, max_size=8)
)


def _fits(name: str) -> bool:
    return len(name.encode()) <= MAX_TOPIC_BYTES


topic_text = st.lists(_name_token, min_size=1, max_size=6).map(".".join).filter(_fits)


@st.composite
def _pattern_text(draw: st.DrawFn) -> str:
    toks = draw(st.lists(st.one_of(_name_token, st.just("*")), max_size=5))
    if not toks or draw(st.booleans()):
        toks.append(">")
    return ".".join(toks)


pattern_text = _pattern_text().filter(_fits)
topic_frames = topic_text.map(str.encode)
pattern_frames = pattern_text.map(str.encode)
queue_frames = st.one_of(
    st.just(b""),
    topic_text.filter(lambda t: len(t.encode()) <= p.MAX_QUEUE_BYTES).map(str.encode),
)

_simple = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=10)
)
# A heartbeat interval in ms: any non-negative int is valid in HELLO (the broker clamps it).
heartbeats = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 100, 2000, 60_000]))
# ... and in WELCOME, 0 or the range a broker may agree to.
agreed_heartbeats = st.one_of(
    st.just(0), st.integers(p.HEARTBEAT_MIN_MS, p.HEARTBEAT_MAX_MS), st.sampled_from([100, 60_000])
)
_beat = st.one_of(st.just({}), st.builds(lambda ms: {"heartbeat": ms}, heartbeats))
hello_bodies = st.builds(
    lambda client, extra, beat: p.pack_hello(client, **extra, **beat),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k != "client"), _simple, max_size=3),
    _beat,
)
welcome_bodies = st.builds(
    lambda broker, size, extra: p.pack_welcome(broker, size, **extra),
    st.text(max_size=20),
    st.integers(1, p.MAX_MESSAGE_SIZE),
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("broker", "max_message_size")),
        _simple,
        max_size=3,
    ),
).flatmap(
    # Some with the agreed heartbeat appended (a WELCOME answering a HELLO that asked).
    lambda body: st.one_of(
        st.just(body),
        agreed_heartbeats.map(
            lambda ms: p.pack_welcome(**{**p.unpack_welcome(body), "heartbeat": ms})
        ),
    )
)
_stats_values = st.one_of(
    st.integers(0, 2**63 - 1),
    st.text(max_size=10),
    st.dictionaries(st.text(max_size=12), st.integers(0, 2**63 - 1), max_size=4),
)
# STATS_REPLY bodies as the broker packs them: "errors" keyed by int codes.
stats_maps = st.fixed_dictionaries(
    {
        "peers": st.integers(0, 2**32),
        "counters": st.dictionaries(st.text(max_size=12), st.integers(0, 2**63 - 1), max_size=5),
        "errors": st.dictionaries(st.sampled_from(list(ErrorCode)), st.integers(1, 2**32)),
    },
    optional={"broker": st.text(max_size=12)},
).flatmap(
    lambda m: st.dictionaries(st.text(max_size=8), _stats_values, max_size=3).map(
        lambda extra: {**extra, **m}
    )
)
stats_bodies = stats_maps.map(p.pack_stats)
# Durable streams: names, STREAM and CONSUME bodies, STREAM_REPLY bodies, STREAM_ACK fields.
stream_names = st.text(
    st.sampled_from("ABCXYZabcxyz0189_-"), min_size=1, max_size=p.MAX_STREAM_NAME_BYTES
)
_stream_values = st.one_of(
    _simple,
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=8), _simple),
)
stream_bodies = st.one_of(
    st.builds(
        lambda op, args: p.pack_stream_request(op, **args),
        st.sampled_from(["add", "info", "list", "delete", "purge", "get", "consumer_add"]),
        st.dictionaries(
            st.text(max_size=8).filter(lambda k: k != "op"), _stream_values, max_size=3
        ),
    ),
    st.builds(
        lambda name, config: p.pack_consume(name, **config),
        stream_names,
        st.dictionaries(
            st.text(max_size=8).filter(lambda k: k != "stream"), _stream_values, max_size=3
        ),
    ),
)
stream_reply_bodies = st.dictionaries(st.text(max_size=8), _stream_values, max_size=4).map(
    p.pack_stream_reply
)
ack_kinds = st.sampled_from(list(p.AckKind))
delays = st.one_of(st.none(), st.integers(0, 2**32 - 1))
metas = st.builds(p.pack_meta, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))

client_commands = st.one_of(
    st.builds(p.Hello, channels, hello_bodies),
    st.builds(p.Subscribe, channels, refs, sid_frames, pattern_frames, queue_frames),
    st.builds(p.Unsubscribe, channels, refs, sids_frames),
    st.builds(p.Publish, channels, refs, topic_frames, bodies),
    st.builds(p.Ack, channels, tokens, bodies),
    st.builds(p.Disconnect, channels, refs),
    st.builds(p.Request, channels, request_refs, topic_frames, bodies),
    st.builds(p.Reply, channels, reply_tokens, bodies),
    st.builds(p.Heartbeat, channels),
    st.builds(p.Stats, st.one_of(st.just(b""), channels), refs),
    st.builds(p.Stream, channels, given_refs, stream_bodies),
    st.builds(p.Consume, channels, given_refs, sid_frames, stream_bodies),
    st.builds(p.StreamAck, channels, tokens, ack_kinds, delays, st.text(max_size=40)),
)
broker_commands = st.one_of(
    st.builds(p.Welcome, channels, welcome_bodies),
    st.builds(p.Ok, channels, refs),
    st.builds(p.Deliver, channels, refs, topic_frames, bodies, sids_frames),
    st.builds(p.Routed, channels, given_refs, st.integers(0, 2**32 - 1)),
    st.builds(p.Acked, channels, given_refs, bodies),
    st.builds(p.Ask, channels, reply_tokens, topic_frames, bodies, sids_frames),
    st.builds(p.Answer, channels, request_refs, bodies),
    st.builds(
        p.Error,
        st.one_of(st.just(b""), channels),
        refs,
        st.integers(0, 2**16 - 1),
        st.text(max_size=40),
    ),
    st.builds(p.BrokerHeartbeat, channels),
    st.builds(p.Bye, channels),
    st.builds(p.StatsReply, st.one_of(st.just(b""), channels), refs, stats_bodies),
    st.builds(p.StreamReply, channels, given_refs, stream_reply_bodies),
    st.builds(
        p.Stored, channels, given_refs, stream_names, st.integers(0, 2**64 - 1), st.booleans()
    ),
    st.builds(p.StreamMsg, channels, tokens, topic_frames, bodies, sid_frames, metas),
)

# Frames biased towards almost-valid messages so parsing goes deep.
_headers = st.one_of(
    st.sampled_from([p.header(c) for c in Cmd]),
    st.builds(lambda v, c: p.SIGNATURE + bytes((v, c)), st.integers(0, 255), st.integers(0, 255)),
    st.binary(max_size=6),
)
_any_frame = st.one_of(
    st.binary(max_size=40),
    channels,
    topic_frames,
    pattern_frames,
    st.sampled_from([b"", b"\xff\xfe", b"a..b", b"*", b">", b"x" * 300, b"\x00\x01"]),
    hello_bodies,
    welcome_bodies,
    stats_bodies,
    st.just(p.pack_ack(1, 0)),
    sid_frames,
    sids_frames,
    reply_tokens,
    queue_frames,
    stream_bodies,
    stream_reply_bodies,
    stream_names.map(str.encode),
    metas,
    st.sampled_from([bytes((k,)) for k in range(6)]),
    st.integers(0, 2**64 - 1).map(lambda n: n.to_bytes(8, "big")),
)
frame_lists = st.one_of(
    st.lists(st.binary(max_size=20), max_size=7),
    st.builds(lambda h, rest: [h, *rest], _headers, st.lists(_any_frame, max_size=6)),
)


# --- command round trips ---------------------------------------------------------


@SETTINGS
@given(client_commands)
def test_client_command_round_trip(cmd: p.ClientCommand) -> None:
    frames = p.encode(cmd)
    assert all(isinstance(f, bytes) for f in frames)
    assert p.check_header(frames[0]) == frames[0][3]
    assert p.parse_client(frames) == cmd


@SETTINGS
@given(broker_commands)
def test_broker_command_round_trip(cmd: p.BrokerCommand) -> None:
    frames = p.encode(cmd)
    assert all(isinstance(f, bytes) for f in frames)
    assert p.parse_broker(frames) == cmd


@SETTINGS
@given(client_commands)
def test_client_commands_are_unknown_to_parse_broker(cmd: p.ClientCommand) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_broker(p.encode(cmd))
    assert info.value.code == ErrorCode.UNKNOWN_COMMAND


@SETTINGS
@given(broker_commands)
def test_broker_commands_are_unknown_to_parse_client(cmd: p.BrokerCommand) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_client(p.encode(cmd))
    assert info.value.code == ErrorCode.UNKNOWN_COMMAND


def test_liveness_and_stats_commands_on_the_wire() -> None:
    """The frames of HEARTBEAT, STATS, BROKER_HEARTBEAT, BYE and STATS_REPLY, both ways."""
    ch = b"\x07" * 16
    body = p.pack_stats({"peers": 1})
    cases: list[tuple[p.Command, list[bytes]]] = [
        (p.Heartbeat(ch), [b"ZB\x01\x09", ch]),
        (p.Stats(ch, b"r"), [b"ZB\x01\x0a", ch, b"r"]),
        (p.Stats(b"", b""), [b"ZB\x01\x0a", b"", b""]),
        (p.Stats(b"", b"r" * 32), [b"ZB\x01\x0a", b"", b"r" * 32]),
        (p.BrokerHeartbeat(ch), [b"ZB\x01\x88", ch]),
        (p.Bye(ch), [b"ZB\x01\x89", ch]),
        (p.StatsReply(ch, b"r", body), [b"ZB\x01\x8a", ch, b"r", body]),
        (p.StatsReply(b"", b"", body), [b"ZB\x01\x8a", b"", b"", body]),
    ]
    for cmd, frames in cases:
        assert p.encode(cmd) == frames
        parse = p.parse_client if frames[0][3] < 0x80 else p.parse_broker
        assert parse(frames) == cmd
    assert (p.Cmd.HEARTBEAT, p.Cmd.STATS) == (0x09, 0x0A)
    assert (p.Cmd.BROKER_HEARTBEAT, p.Cmd.BYE, p.Cmd.STATS_REPLY) == (0x88, 0x89, 0x8A)
    assert p.header(p.Cmd.HEARTBEAT) == p.H_HEARTBEAT


def test_stream_commands_on_the_wire() -> None:
    """The frames of the six stream commands, both ways, and the values their
    fields take in Python (a kind, a delay, a name, a sequence, a flag)."""
    ch = b"\x07" * 16
    token = b"\x00\x00\x00\x01" + (17).to_bytes(8, "big") + b"\xaa" * 16
    body = p.pack_stream_request("add", config={"name": "ORDERS", "subjects": ["orders.>"]})
    consume = p.pack_consume("ORDERS", durable="billing", ack_wait=30_000)
    reply = p.pack_stream_reply({"deleted": True})
    msg = p.pack_message(b"\1" * 16, 0, {}, b"x")
    meta = (17).to_bytes(8, "big") + (2).to_bytes(4, "big")
    cases: list[tuple[p.Command, list[bytes]]] = [
        (p.Stream(ch, b"r", body), [b"ZB\x01\x0d", ch, b"r", body]),
        (p.Consume(ch, b"r", S1, consume), [b"ZB\x01\x0e", ch, b"r", S1, consume]),
        (
            p.StreamAck(ch, token, p.AckKind.ACK, None, ""),
            [b"ZB\x01\x0f", ch, token, b"\x01", b"", b""],
        ),
        (
            p.StreamAck(ch, token, p.AckKind.NAK, 5000, "é"),
            [b"ZB\x01\x0f", ch, token, b"\x02", b"\x00\x00\x13\x88", "é".encode()],
        ),
        (
            p.StreamAck(ch, token, p.AckKind.PROGRESS, None, ""),
            [b"ZB\x01\x0f", ch, token, b"\x03", b"", b""],
        ),
        (
            p.StreamAck(ch, token, p.AckKind.TERM, None, "x"),
            [b"ZB\x01\x0f", ch, token, b"\x04", b"", b"x"],
        ),
        (p.StreamReply(ch, b"r", reply), [b"ZB\x01\x90", ch, b"r", reply]),
        (
            p.Stored(ch, b"r", "ORDERS", 17, False),
            [b"ZB\x01\x91", ch, b"r", b"ORDERS", (17).to_bytes(8, "big"), b"\x00"],
        ),
        (
            p.Stored(ch, b"r", "a_B-9", 2**64 - 1, True),
            [b"ZB\x01\x91", ch, b"r", b"a_B-9", b"\xff" * 8, b"\x01"],
        ),
        (
            p.StreamMsg(ch, token, b"orders.eu", msg, S1, meta),
            [b"ZB\x01\x92", ch, token, b"orders.eu", msg, S1, meta],
        ),
    ]
    for cmd, frames in cases:
        assert p.encode(cmd) == frames
        parse = p.parse_client if frames[0][3] < 0x80 else p.parse_broker
        assert parse(frames) == cmd
    assert [int(k) for k in p.AckKind] == [1, 2, 3, 4]
    assert (p.Cmd.STREAM, p.Cmd.CONSUME, p.Cmd.STREAM_ACK) == (0x0D, 0x0E, 0x0F)
    assert (p.Cmd.STREAM_REPLY, p.Cmd.STORED, p.Cmd.STREAM_MSG) == (0x90, 0x91, 0x92)
    assert (p.ErrorCode.NOT_FOUND, p.ErrorCode.CONFLICT, p.ErrorCode.STORE_FAILED) == (
        404,
        410,
        507,
    )
    for byte in (p.Cmd.STREAM, p.Cmd.CONSUME, p.Cmd.STREAM_ACK):
        assert p.header(byte) == getattr(p, f"H_{byte.name}")
    for byte in (p.Cmd.STREAM_REPLY, p.Cmd.STORED, p.Cmd.STREAM_MSG):
        assert p.header(byte) == getattr(p, f"H_{byte.name}")


def test_stream_delay_is_absent_or_four_octets() -> None:
    # None travels as the empty frame: "the consumer's backoff", not a delay of 0 ms.
    frames = p.encode(p.StreamAck(CH, b"t", p.AckKind.NAK, 0, ""))
    assert frames[4] == b"\x00" * 4
    assert p.parse_client(frames).delay == 0  # type: ignore[union-attr]
    frames = p.encode(p.StreamAck(CH, b"t", p.AckKind.NAK, None, ""))
    assert frames[4] == b""
    assert p.parse_client(frames).delay is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("seq", "deliveries", "wire"),
    [
        (0, 0, bytes(12)),
        (17, 2, (17).to_bytes(8, "big") + (2).to_bytes(4, "big")),
        (2**64 - 1, 2**32 - 1, b"\xff" * 12),
    ],
)
def test_meta_packs_sequence_then_deliveries(seq: int, deliveries: int, wire: bytes) -> None:
    assert p.pack_meta(seq, deliveries) == wire
    assert p.unpack_meta(wire) == (seq, deliveries)


def test_meta_deliveries_saturate_at_32_bits() -> None:
    # A message delivered more often than 4 octets count still says "that many, at least".
    assert p.unpack_meta(p.pack_meta(5, 2**40)) == (5, 2**32 - 1)


def test_stream_bodies() -> None:
    body = p.pack_stream_request("add", config={"name": "ORDERS", "subjects": ["orders.>"]})
    assert p.unpack_stream_request(body) == {
        "op": "add",
        "config": {"name": "ORDERS", "subjects": ["orders.>"]},
    }
    assert msgpack.unpackb(p.pack_stream_request("list")) == {"op": "list"}
    consume = p.pack_consume("ORDERS", durable="billing", ack_wait=30_000)
    assert p.unpack_stream_request(consume) == {
        "stream": "ORDERS",
        "durable": "billing",
        "ack_wait": 30_000,
    }
    assert p.unpack_stream_reply(p.pack_stream_reply({"purged": 3})) == {"purged": 3}
    assert p.unpack_stream_reply(p.pack_stream_reply({})) == {}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        msgpack.packb([]),
        msgpack.packb("list"),
        msgpack.packb(None),
        msgpack.packb({1: 2}),
        msgpack.packb({b"op": "list"}, use_bin_type=True),
        msgpack.packb({"op": 1}),
        msgpack.packb({"op": b"list"}, use_bin_type=True),
        msgpack.packb({"op": ["list"]}),
        p.pack_stream_request("list") + b"\x00",
    ],
)
def test_unpack_stream_request_refuses_bad_shapes(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        p.unpack_stream_request(body)
    assert info.value.code == ErrorCode.BAD_BODY


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", msgpack.packb([]), msgpack.packb({404: "x"}), p.pack_stream_reply({}) + b"\0"],
)
def test_unpack_stream_reply_refuses_bad_shapes(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        p.unpack_stream_reply(body)
    assert info.value.code == ErrorCode.BAD_BODY


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        (b"O", True),
        (b"ORDERS", True),
        (b"orders_eu-2", True),
        (b"S" * p.MAX_STREAM_NAME_BYTES, True),
        (b"S" * (p.MAX_STREAM_NAME_BYTES + 1), False),
        (b"", False),
        (b"ORDERS.EU", False),
        (b"orders.>", False),
        (b"ORD ERS", False),
        (b"ORDERS\n", False),
        ("ÖRDERS".encode(), False),
        (b"\xff", False),
        (b"*", False),
    ],
)
def test_check_stream_name(name: bytes, ok: bool) -> None:
    if ok:
        p.check_stream_name(name)
    else:
        with pytest.raises(ProtocolError) as info:
            p.check_stream_name(name)
        assert info.value.code == ErrorCode.BAD_FRAMES


def test_encode_refuses_non_commands() -> None:
    with pytest.raises(TypeError):
        p.encode("HELLO")  # type: ignore[arg-type]


def test_header_layout() -> None:
    assert p.header(Cmd.PUBLISH) == b"ZB\x01\x04"
    assert p.encode(p.Ok(b"c" * 16, b"r")) == [b"ZB\x01\x82", b"c" * 16, b"r"]
    assert p.encode(p.Routed(b"c" * 16, b"r", 258))[3] == b"\x00\x00\x01\x02"
    assert p.encode(p.Error(b"", b"", 413, "é"))[3:] == [b"\x01\x9d", "é".encode(), b""]
    assert p.encode(p.Error(b"", b"", 429, "x", 250))[5] == b"\x00\x00\x00\xfa"
    assert p.encode(p.Dropped(b"c" * 16, b"", 7))[2:] == [b"", b"\x00\x00\x00\x07"]


# --- specific refusals -------------------------------------------------------------

CH = b"\x07" * 16
S1 = b"\x00\x00\x00\x01"
_LIST = p.pack_stream_request("list")
_CONSUME = p.pack_consume("ORDERS")
_REPLY = p.pack_stream_reply({"streams": []})


def _code(parse: Any, frames: list[bytes]) -> int:
    with pytest.raises(ProtocolError) as info:
        parse(frames)
    assert info.value.remote is True
    return info.value.code


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], ErrorCode.BAD_FRAMES),
        ([b"ZB\x02\x04", CH, b"", b"a", b""], ErrorCode.VERSION_NOT_SUPPORTED),
        ([b"XX\x01\x04", CH, b"", b"a", b""], ErrorCode.VERSION_NOT_SUPPORTED),
        ([b"ZB\x01", CH], ErrorCode.VERSION_NOT_SUPPORTED),
        ([b"ZB\x01\x7f", CH], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_PUBLISH, CH, b"", b"a"], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, CH, b"", b"a", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, b"short", b"", b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, CH, b"r" * 33, b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, CH, b"", b"a.*", b""], ErrorCode.BAD_TOPIC),
        ([p.H_PUBLISH, CH, b"", b"", b""], ErrorCode.BAD_TOPIC),
        ([p.H_PUBLISH, CH, b"", b"\xff", b""], ErrorCode.BAD_TOPIC),
        ([p.H_PUBLISH, CH, b"", b"a" * 257, b""], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", b"a"], ErrorCode.BAD_FRAMES),  # the draft without sids
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a"], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, CH, b"r" * 33, S1, b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, CH, b"", b"", b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, CH, b"", S1[:3], b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, CH, b"", S1 + b"\0", b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, CH, b"", S1[:3], b"a..b", b""], ErrorCode.BAD_FRAMES),  # sid first
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a..b", b""], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b">.a", b""], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a", b"*"], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a", b">"], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a", b"a..b"], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a", b"a b"], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a", b"q" * 65], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a", b"\xff"], ErrorCode.BAD_TOPIC),
        ([p.H_SUBSCRIBE, CH, b"", S1, b"a..b", b"*"], ErrorCode.BAD_TOPIC),
        ([p.H_UNSUBSCRIBE, CH, b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_UNSUBSCRIBE, CH, b"", b"a b"], ErrorCode.BAD_FRAMES),
        ([p.H_UNSUBSCRIBE, CH, b"", S1 + b"\0"], ErrorCode.BAD_FRAMES),
        ([p.H_UNSUBSCRIBE, CH, b"r" * 33, S1], ErrorCode.BAD_FRAMES),
        ([p.H_UNSUBSCRIBE, CH, b"", S1, b""], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, CH, b"", b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, CH, b"q" * 25, b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, CH, b"q" * 33, b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, CH, b"q", b"a.*", b""], ErrorCode.BAD_TOPIC),
        ([p.H_REQUEST, CH, b"", b"a.*", b""], ErrorCode.BAD_FRAMES),  # the ref first
        ([p.H_REQUEST, CH, b"q", b"a"], ErrorCode.BAD_FRAMES),
        ([p.H_REPLY, CH, b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_REPLY, CH, b"t" * 33, b""], ErrorCode.BAD_FRAMES),
        ([p.H_REPLY, CH, b"t" * 25], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 25, b"a", b"", S1], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_ANSWER, CH, b"q", b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_ACK, CH, b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ACK, CH, b"t" * 33, b""], ErrorCode.BAD_FRAMES),
        ([p.H_HELLO, CH, b"\xc1"], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, msgpack.packb([1, 2])], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, msgpack.packb({1: 2}, use_bin_type=True)], ErrorCode.BAD_BODY),
        ([p.H_DISCONNECT, CH, b"r" * 33], ErrorCode.BAD_FRAMES),
        ([p.H_HEARTBEAT], ErrorCode.BAD_FRAMES),
        ([p.H_HEARTBEAT, CH, b""], ErrorCode.BAD_FRAMES),
        ([p.H_HEARTBEAT, CH[:15]], ErrorCode.BAD_FRAMES),
        ([p.H_HEARTBEAT, b""], ErrorCode.BAD_FRAMES),  # only STATS may omit the channel
        ([p.H_STATS, CH], ErrorCode.BAD_FRAMES),
        ([p.H_STATS, CH, b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STATS, CH[:15], b""], ErrorCode.BAD_FRAMES),
        ([p.H_STATS, CH + b"\0", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STATS, CH, b"r" * 33], ErrorCode.BAD_FRAMES),
        ([p.H_STATS, b"", b"r" * 33], ErrorCode.BAD_FRAMES),
        ([p.H_HELLO, CH, p.pack_hello("c", heartbeat=-1)], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, p.pack_hello("c", heartbeat="2000")], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, p.pack_hello("c", heartbeat=True)], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, p.pack_hello("c", heartbeat=False)], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, p.pack_hello("c", heartbeat=2000.0)], ErrorCode.BAD_BODY),
        ([p.H_HELLO, CH, p.pack_hello("c", heartbeat=None)], ErrorCode.BAD_BODY),
        ([p.H_BROKER_HEARTBEAT, CH], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_BYE, CH], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STATS_REPLY, CH, b"", p.pack_stats({})], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STREAM_REPLY, CH, b"r", _LIST], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STORED, CH, b"r", b"S", bytes(8), b"\x00"], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1, bytes(12)], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STREAM, CH, b"r"], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM, CH, b"r", _LIST, b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM, CH, b"", _LIST], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM, CH, b"r" * 33, _LIST], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM, CH[:15], b"r", _LIST], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM, b"", b"r", _LIST], ErrorCode.BAD_FRAMES),  # only STATS may omit it
        ([p.H_STREAM, CH, b"r", b""], ErrorCode.BAD_BODY),
        ([p.H_STREAM, CH, b"r", msgpack.packb(["list"])], ErrorCode.BAD_BODY),
        ([p.H_STREAM, CH, b"r", msgpack.packb({"op": 1})], ErrorCode.BAD_BODY),
        ([p.H_STREAM, CH, b"", b"\xc1"], ErrorCode.BAD_FRAMES),  # the ref first
        ([p.H_CONSUME, CH, b"r", S1], ErrorCode.BAD_FRAMES),
        ([p.H_CONSUME, CH, b"r", S1, _CONSUME, b""], ErrorCode.BAD_FRAMES),
        ([p.H_CONSUME, CH, b"", S1, _CONSUME], ErrorCode.BAD_FRAMES),
        ([p.H_CONSUME, CH, b"r", S1[:3], _CONSUME], ErrorCode.BAD_FRAMES),
        ([p.H_CONSUME, CH, b"r", S1 * 2, _CONSUME], ErrorCode.BAD_FRAMES),
        ([p.H_CONSUME, CH, b"r", S1, msgpack.packb({1: "ORDERS"})], ErrorCode.BAD_BODY),
        ([p.H_CONSUME, CH, b"r", S1[:3], b"\xc1"], ErrorCode.BAD_FRAMES),  # the sid first
        ([p.H_STREAM_ACK, CH, b"t", b"\x01", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x01", b"", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"", b"\x01", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t" * 33, b"\x01", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x01\x01", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x00", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x05", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\xff", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x02", b"\x13\x88", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x02", bytes(5), b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH, b"t", b"\x04", b"", b"\xff"], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_ACK, CH[:15], b"t", b"\x01", b"", b""], ErrorCode.BAD_FRAMES),
    ],
)
def test_parse_client_refusals(frames: list[bytes], code: int) -> None:
    assert _code(p.parse_client, frames) == code


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], ErrorCode.BAD_FRAMES),
        ([p.H_OK, b"short", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ROUTED, CH, b"", b"\x00\x01"], ErrorCode.BAD_FRAMES),
        # ROUTED and ACKED echo a non-empty ref, ANSWER a REQUEST's, ASK a reply token.
        ([p.H_ROUTED, CH, b"", b"\x00\x00\x00\x01"], ErrorCode.BAD_FRAMES),
        ([p.H_ACKED, CH, b"", p.pack_ack(1, 0)], ErrorCode.BAD_FRAMES),
        ([p.H_ANSWER, CH, b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ANSWER, CH, b"q" * 25, b""], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 8, b"a", b"", S1], ErrorCode.BAD_FRAMES),
        ([p.H_ERROR, CH, b"", b"\x01", b"x", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ERROR, CH, b"", b"\x01\x90", b"\xff", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ERROR, b"short", b"", b"\x01\x90", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ERROR, CH, b"", b"\x01\xad", b"", b"\x01"], ErrorCode.BAD_FRAMES),
        ([p.H_DROPPED, CH, b"", b"\x01"], ErrorCode.BAD_FRAMES),
        ([p.H_DELIVER, CH, b"", b"a.>", b"", S1], ErrorCode.BAD_TOPIC),
        ([p.H_DELIVER, CH, b"t" * 33, b"a", b"", S1], ErrorCode.BAD_FRAMES),
        ([p.H_DELIVER, CH, b"", b"a", b""], ErrorCode.BAD_FRAMES),  # the draft without sids
        ([p.H_DELIVER, CH, b"", b"a", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_DELIVER, CH, b"", b"a", b"", S1 + b"\0\0"], ErrorCode.BAD_FRAMES),
        ([p.H_DELIVER, CH, b"", b"a.>", b"", b"\0"], ErrorCode.BAD_TOPIC),  # the topic first
        ([p.H_ASK, CH, b"", b"a", b"", S1], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 33, b"a", b"", S1], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 25, b"a", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 25, b"a", b"", b"\0" * 5], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 25, b"*", b"", S1], ErrorCode.BAD_TOPIC),
        ([p.H_ASK, b"short", b"t" * 25, b"a", b"", S1], ErrorCode.BAD_FRAMES),
        ([p.H_ASK, CH, b"t" * 25, b"a", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ANSWER, CH, b"q" * 33, b""], ErrorCode.BAD_FRAMES),
        ([p.H_ANSWER, b"short", b"q", b""], ErrorCode.BAD_FRAMES),
        ([p.H_ANSWER, CH, b"q"], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, CH, b"q", b"a", b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_REPLY, CH, b"t" * 25, b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_WELCOME, CH, p.pack_welcome("b", 0)], ErrorCode.BAD_BODY),
        ([p.H_WELCOME, CH, p.pack_welcome("b", -5)], ErrorCode.BAD_BODY),
        ([p.H_WELCOME, CH, msgpack.packb({"broker": "b"})], ErrorCode.BAD_BODY),
        ([p.H_WELCOME, CH, p.pack_welcome("b", 1.5)], ErrorCode.BAD_BODY),  # type: ignore[arg-type]
        ([p.H_WELCOME, CH, p.pack_welcome("b", True)], ErrorCode.BAD_BODY),  # bool is not an int
        ([p.H_WELCOME, CH, p.pack_welcome("b", 1024, heartbeat=-1)], ErrorCode.BAD_BODY),
        ([p.H_WELCOME, CH, p.pack_welcome("b", 1024, heartbeat="100")], ErrorCode.BAD_BODY),
        ([p.H_WELCOME, CH, p.pack_welcome("b", 1024, heartbeat=True)], ErrorCode.BAD_BODY),
        ([p.H_WELCOME, CH, p.pack_welcome("b", 1024, heartbeat=0.5)], ErrorCode.BAD_BODY),
        ([p.H_BROKER_HEARTBEAT], ErrorCode.BAD_FRAMES),
        ([p.H_BROKER_HEARTBEAT, CH, b""], ErrorCode.BAD_FRAMES),
        ([p.H_BROKER_HEARTBEAT, CH[:15]], ErrorCode.BAD_FRAMES),
        ([p.H_BROKER_HEARTBEAT, b""], ErrorCode.BAD_FRAMES),
        ([p.H_BYE, CH, b""], ErrorCode.BAD_FRAMES),
        ([p.H_BYE, CH + b"\0"], ErrorCode.BAD_FRAMES),
        ([p.H_BYE, b""], ErrorCode.BAD_FRAMES),
        ([p.H_STATS_REPLY, CH, b""], ErrorCode.BAD_FRAMES),
        ([p.H_STATS_REPLY, CH, b"", p.pack_stats({}), b""], ErrorCode.BAD_FRAMES),
        ([p.H_STATS_REPLY, CH[:15], b"", p.pack_stats({})], ErrorCode.BAD_FRAMES),
        ([p.H_STATS_REPLY, CH, b"r" * 33, p.pack_stats({})], ErrorCode.BAD_FRAMES),
        ([p.H_STATS_REPLY, CH, b"", b"\xc1"], ErrorCode.BAD_BODY),
        ([p.H_STATS_REPLY, CH, b"", b""], ErrorCode.BAD_BODY),
        ([p.H_STATS_REPLY, CH, b"", msgpack.packb([1, 2])], ErrorCode.BAD_BODY),
        ([p.H_STATS_REPLY, CH, b"", msgpack.packb({403: 1})], ErrorCode.BAD_BODY),
        ([p.H_STATS_REPLY, CH, b"", p.pack_stats({}) + b"\0"], ErrorCode.BAD_BODY),
        ([p.H_HEARTBEAT, CH], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STATS, b"", b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STREAM, CH, b"r", _LIST], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_CONSUME, CH, b"r", S1, _CONSUME], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STREAM_ACK, CH, b"t", b"\x01", b"", b""], ErrorCode.UNKNOWN_COMMAND),
        ([b"ZB\x01\x93", CH, b"r"], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_STREAM_REPLY, CH, b"r"], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_REPLY, CH, b"r", _REPLY, b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_REPLY, CH, b"", _REPLY], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_REPLY, b"", b"r", _REPLY], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_REPLY, CH, b"r" * 33, _REPLY], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_REPLY, CH, b"r", b"\xc1"], ErrorCode.BAD_BODY),
        ([p.H_STREAM_REPLY, CH, b"r", msgpack.packb([])], ErrorCode.BAD_BODY),
        ([p.H_STORED, CH, b"r", b"S", bytes(8)], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(8), b"\x00", b""], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"", b"S", bytes(8), b"\x00"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"", bytes(8), b"\x00"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S" * 65, bytes(8), b"\x00"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"OR.DERS", bytes(8), b"\x00"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(7), b"\x00"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(9), b"\x00"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(8), b"\x02"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(8), b"\xff"], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(8), b""], ErrorCode.BAD_FRAMES),
        ([p.H_STORED, CH, b"r", b"S", bytes(8), b"\x00\x01"], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1, bytes(12), b""], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"", b"a", b"", S1, bytes(12)], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t" * 33, b"a", b"", S1, bytes(12)], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t", b"a.*", b"", S1, bytes(12)], ErrorCode.BAD_TOPIC),
        ([p.H_STREAM_MSG, CH, b"t", b"", b"", S1, bytes(12)], ErrorCode.BAD_TOPIC),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1 * 2, bytes(12)], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1[:3], bytes(12)], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1, bytes(11)], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH, b"t", b"a", b"", S1, bytes(13)], ErrorCode.BAD_FRAMES),
        ([p.H_STREAM_MSG, CH[:15], b"t", b"a", b"", S1, bytes(12)], ErrorCode.BAD_FRAMES),
    ],
)
def test_parse_broker_refusals(frames: list[bytes], code: int) -> None:
    assert _code(p.parse_broker, frames) == code


def test_ref_and_token_limits_are_inclusive() -> None:
    ref = b"r" * p.MAX_REF_BYTES
    assert p.parse_client([p.H_PUBLISH, CH, ref, b"a", b""]).ref == ref  # type: ignore[union-attr]
    assert p.parse_client([p.H_ACK, CH, ref, b""]).token == ref  # type: ignore[union-attr]
    topic = b"a" * MAX_TOPIC_BYTES
    assert p.parse_client([p.H_PUBLISH, CH, b"", topic, b""]).topic == topic  # type: ignore[union-attr]
    assert p.MAX_REQUEST_REF_BYTES == 8 == p.MAX_REF_BYTES - p.SESSION_BYTES - p.REPLY_TAG_BYTES
    for req_ref in (b"q", b"q" * 8):
        cmd = p.parse_client([p.H_REQUEST, CH, req_ref, b"a", b""])
        assert cmd == p.Request(CH, req_ref, b"a", b"")
    for token in (b"t" * 25, ref):
        assert p.parse_client([p.H_REPLY, CH, token, b""]) == p.Reply(CH, token, b"")
        frames = [p.H_ASK, CH, token, b"a", b"", S1]
        assert p.parse_broker(frames) == p.Ask(CH, token, b"a", b"", S1)
    queue = b"q" * p.MAX_QUEUE_BYTES
    assert p.parse_client([p.H_SUBSCRIBE, CH, b"", S1, b"a", queue]).queue == queue  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [1, 8, 24])
def test_reply_token_without_a_ref_is_refused(size: int) -> None:
    # A reply token is an 8-byte session number, a 16-byte tag and a 1 to 8-byte ref:
    # the broker refuses a shorter one with 400, and parse_client raises "the
    # code the broker replies with".
    assert _code(p.parse_client, [p.H_REPLY, CH, b"t" * size, b""]) == ErrorCode.BAD_FRAMES


def test_sids_helpers() -> None:
    assert p.SID_BYTES == 4
    assert p.split_sids(b"") == []
    assert p.split_sids(S1 + b"\0\0\0\2") == [S1, b"\0\0\0\2"]
    p.check_sids(S1 * 3)
    p.check_sids(b"", allow_empty=True)
    for bad in (b"", b"\0", S1 + b"\0"):
        with pytest.raises(ProtocolError) as info:
            p.check_sids(bad)
        assert info.value.code == ErrorCode.BAD_FRAMES


@pytest.mark.parametrize(
    ("queue", "ok"),
    [
        (b"", True),
        (b"workers", True),
        (b"billing.eu-west", True),
        ("трудяги".encode(), True),
        (b"q" * 64, True),
        (b"q" * 65, False),
        ("é".encode() * 32, True),
        ("é".encode() * 32 + b"x", False),
        (b"*", False),
        (b">", False),
        (b"a.*", False),
        (b"work*", False),
        (b"a..b", False),
        (b".a", False),
        (b"a b", False),
        (b"a\x00", False),
        (b"\xff", False),
    ],
)
def test_check_queue(queue: bytes, ok: bool) -> None:
    if ok:
        p.check_queue(queue)
    else:
        with pytest.raises(ProtocolError) as info:
            p.check_queue(queue)
        assert info.value.code == ErrorCode.BAD_TOPIC


@SETTINGS
@given(frame_lists)
def test_parse_client_random_frames_only_protocol_error(frames: list[bytes]) -> None:
    try:
        cmd = p.parse_client(frames)
    except ProtocolError as exc:
        assert isinstance(exc.code, int)
        assert exc.code in set(ErrorCode)
    else:
        # Whatever parses re-encodes to exactly the same frames.
        assert p.encode(cmd) == frames


@SETTINGS
@given(frame_lists)
def test_parse_broker_random_frames_only_protocol_error(frames: list[bytes]) -> None:
    try:
        cmd = p.parse_broker(frames)
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode)
    else:
        assert p.encode(cmd) == frames


# --- message bodies -----------------------------------------------------------------

ids = st.binary(min_size=16, max_size=16)
timestamps_ns = st.one_of(
    st.integers(MIN_NS, MAX_NS),
    st.integers(-(10**12), 10**12),  # around the epoch, sub-microsecond parts included
    st.sampled_from([MIN_NS, MAX_NS, -1, 0, 1, 999, 1000, -999, -1000, -1001, 2**63 - 1]),
)
header_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=6)
payloads = st.one_of(st.binary(max_size=300), st.just(bytes(range(256))))


def _expected_datetime(ts_ns: int) -> datetime:
    # Microsecond precision, rounded towards minus infinity.
    return EPOCH + timedelta(microseconds=ts_ns // 1000)


@SETTINGS
@given(ids, timestamps_ns, header_maps, payloads)
def test_message_round_trip(
    msg_id: bytes, ts_ns: int, headers: dict[str, str], payload: bytes
) -> None:
    body = p.pack_message(msg_id, ts_ns, headers, payload)
    mb = p.unpack_message(body)
    assert mb.id == uuid.UUID(bytes=msg_id)
    assert mb.id.bytes == msg_id
    assert mb.headers == headers
    assert mb.payload == payload
    assert type(mb.payload) is bytes
    assert mb.timestamp.tzinfo is not None
    assert mb.timestamp.utcoffset() == timedelta(0)
    assert mb.timestamp == _expected_datetime(ts_ns)
    # The receive path's form checks the common body inline: the same fields.
    assert p.message_fields(body) == (msg_id, mb.timestamp, mb.headers, mb.payload)


@SETTINGS
@given(
    st.one_of(ids, st.binary(max_size=40)),
    st.one_of(timestamps_ns, st.integers(0, (1 << 34) * 10**9 - 1)),
    header_maps,
    st.one_of(payloads, st.sampled_from([b"x" * 255, b"x" * 256, b"x" * 65535, b"x" * 65536])),
)
def test_message_body_is_what_msgpack_packs(
    msg_id: bytes, ts_ns: int, headers: dict[str, str], payload: bytes
) -> None:
    # pack_message lays the common body out by hand: it must stay byte-identical.
    expected = msgpack.packb(
        [msg_id, msgpack.Timestamp.from_unix_nano(ts_ns), headers, payload], use_bin_type=True
    )
    assert p.pack_message(msg_id, ts_ns, headers, payload) == expected


@pytest.mark.parametrize(
    "obj",
    [
        [b"\1" * 15, msgpack.Timestamp(5, 0), {}, b""],
        [b"\1" * 16, 5, {}, b""],
        [b"\1" * 16, msgpack.Timestamp(5, 0), [], b""],
        [b"\1" * 16, msgpack.Timestamp(5, 0), {"k": 1}, b""],
        [b"\1" * 16, msgpack.Timestamp(5, 0), {}, "text"],
        [b"\1" * 16, msgpack.Timestamp(5, 0), {}],
        {"id": b"\1" * 16},
    ],
)
def test_message_fields_refuse_what_unpack_message_refuses(obj: Any) -> None:
    body = msgpack.packb(obj, use_bin_type=True)
    with pytest.raises(ProtocolError) as expected:
        p.unpack_message(body)
    with pytest.raises(ProtocolError) as got:
        p.message_fields(body)
    assert (got.value.code, got.value.detail) == (expected.value.code, expected.value.detail)


def test_message_timestamp_examples() -> None:
    def ts(ns: int) -> datetime:
        return p.unpack_message(p.pack_message(b"\0" * 16, ns, {}, b"")).timestamp

    assert ts(0) == EPOCH
    assert ts(1_500) == EPOCH + timedelta(microseconds=1)
    assert ts(-1) == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert ts(MIN_NS) == datetime(1, 1, 1, tzinfo=UTC)
    assert ts(MAX_NS) == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_message_all_byte_values_and_unicode_headers() -> None:
    payload = bytes(range(256)) * 3
    headers = {"ключ": "значение", "emoji\U0001f600": "", "": "\x00", "k": "日本語"}
    mb = p.unpack_message(p.pack_message(bytes(range(16)), 123, headers, payload))
    assert mb.payload == payload
    assert mb.headers == headers


@pytest.mark.parametrize("ts_ns", [MAX_NS + 1, MIN_NS - 10**9, 2**62 * 10**9])
def test_message_timestamp_outside_datetime_range_is_protocol_error(ts_ns: int) -> None:
    body = p.pack_message(b"\0" * 16, ts_ns, {}, b"")
    with pytest.raises(ProtocolError) as info:
        p.unpack_message(body)
    assert info.value.code == ErrorCode.BAD_BODY


def test_message_extra_trailing_fields_are_ignored() -> None:
    body = msgpack.packb(
        [b"\1" * 16, msgpack.Timestamp(5, 0), {"a": "b"}, b"pl", "future", 42], use_bin_type=True
    )
    mb = p.unpack_message(body)
    assert (mb.headers, mb.payload, mb.timestamp) == ({"a": "b"}, b"pl", EPOCH + timedelta(0, 5))


_TS = msgpack.Timestamp(0, 0)


@pytest.mark.parametrize(
    "obj",
    [
        [b"\1" * 16, _TS, {}],  # too short
        {"id": b"\1" * 16},  # not an array
        [b"\1" * 15, _TS, {}, b""],  # short id
        ["x" * 16, _TS, {}, b""],  # id as str, not bin
        [b"\1" * 16, 0, {}, b""],  # timestamp as int
        [b"\1" * 16, _TS, {"a": 1}, b""],  # header value not str
        [b"\1" * 16, _TS, {b"a": "b"}, b""],  # header key bin
        [b"\1" * 16, _TS, ["a"], b""],  # headers not a map
        [b"\1" * 16, _TS, {}, "payload"],  # payload str, not bin
        [b"\1" * 16, _TS, {1: "a"}, b""],  # int key: strict_map_key
    ],
)
def test_unpack_message_refuses_bad_shapes(obj: object) -> None:
    body = msgpack.packb(obj, use_bin_type=True, strict_types=False)
    with pytest.raises(ProtocolError) as info:
        p.unpack_message(body)
    assert info.value.code == ErrorCode.BAD_BODY


# --- reply bodies -------------------------------------------------------------------

errors_or_none = st.one_of(st.none(), st.text(max_size=40))


@SETTINGS
@given(ids, timestamps_ns, header_maps, payloads, errors_or_none)
def test_reply_round_trip(
    msg_id: bytes, ts_ns: int, headers: dict[str, str], payload: bytes, error: str | None
) -> None:
    body = p.pack_reply(msg_id, ts_ns, headers, payload, error)
    mb, got_error = p.unpack_reply(body)
    assert got_error == error
    assert (mb.id.bytes, mb.headers, mb.payload) == (msg_id, headers, payload)
    assert mb.timestamp == _expected_datetime(ts_ns)
    # A reply body is a message body with one more element: message decoders read it too.
    assert p.unpack_message(body) == mb


def test_reply_body_layout() -> None:
    body = p.pack_reply(b"\1" * 16, 0, {}, b"pl")
    assert msgpack.unpackb(body, timestamp=3)[3:] == [b"pl", None]
    assert p.pack_reply(b"\1" * 16, 0, {}, b"", "boom")[-5:] == b"\xa4boom"
    # A 4-element body (a message body) is a reply without error; more elements are ignored.
    assert p.unpack_reply(p.pack_message(b"\1" * 16, 0, {}, b"x"))[1] is None
    extra = msgpack.packb([b"\1" * 16, _TS, {}, b"", "err", 1, 2], use_bin_type=True)
    assert p.unpack_reply(extra)[1] == "err"
    # An empty error text is an error, not a reply.
    assert p.unpack_reply(p.pack_reply(b"\1" * 16, 0, {}, b"", ""))[1] == ""


@pytest.mark.parametrize(
    "obj",
    [
        [b"\1" * 16, _TS, {}],  # too short
        [b"\1" * 15, _TS, {}, b"", None],
        [b"\1" * 16, _TS, {}, "payload", None],
        [b"\1" * 16, _TS, {}, b"", 1],  # error not nil or str
        [b"\1" * 16, _TS, {}, b"", b"boom"],
        [b"\1" * 16, _TS, {}, b"", ["boom"]],
        [b"\1" * 16, _TS, {}, b"", False],
        {"error": None},
        None,
    ],
)
def test_unpack_reply_refuses_bad_shapes(obj: object) -> None:
    with pytest.raises(ProtocolError) as info:
        p.unpack_reply(msgpack.packb(obj, use_bin_type=True))
    assert info.value.code == ErrorCode.BAD_BODY


# --- acks -------------------------------------------------------------------------


@SETTINGS
@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.lists(st.text(max_size=40), max_size=5),
)
def test_ack_round_trip(delivered: int, dropped: int, errors: list[str]) -> None:
    result = p.unpack_ack(p.pack_ack(delivered, dropped, errors))
    assert result == p.AckResult(delivered, dropped, tuple(errors))


def test_ack_default_errors_and_tuple_errors() -> None:
    assert p.unpack_ack(p.pack_ack(3, 1)) == p.AckResult(3, 1, ())
    assert p.unpack_ack(p.pack_ack(0, 0, ("x", "y"))).errors == ("x", "y")


@pytest.mark.parametrize(
    "obj",
    [
        [1, 0],
        [-1, 0, []],
        [0, -1, []],
        [1.0, 0, []],
        [True, 0, []],  # bools are not counts
        [0, False, []],
        ["1", 0, []],
        [1, 0, "error"],
        [1, 0, [1]],
        [1, 0, [b"bytes"]],
        {"delivered": 1},
        None,
    ],
)
def test_unpack_ack_refuses_bad_shapes(obj: object) -> None:
    with pytest.raises(ProtocolError) as info:
        p.unpack_ack(msgpack.packb(obj, use_bin_type=True))
    assert info.value.code == ErrorCode.BAD_BODY


def test_hello_and_welcome_bodies() -> None:
    assert p.unpack_hello(p.pack_hello("py/1", pid=7)) == {"client": "py/1", "pid": 7}
    info = p.unpack_welcome(p.pack_welcome("zmqbus", 1024, region="eu"))
    assert info == {"broker": "zmqbus", "max_message_size": 1024, "region": "eu"}


@pytest.mark.parametrize("ms", [0, 1, 100, 2000, 60_000, 2**32, 2**64 - 1])
def test_heartbeat_in_hello(ms: int) -> None:
    """Any non-negative int is a valid heartbeat to ask for (0: none); the broker clamps it."""
    assert p.unpack_hello(p.pack_hello("py/1", heartbeat=ms))["heartbeat"] == ms


@pytest.mark.parametrize("ms", [0, 100, 2000, 60_000])
def test_agreed_heartbeat_in_welcome(ms: int) -> None:
    assert p.unpack_welcome(p.pack_welcome("b", 1024, heartbeat=ms))["heartbeat"] == ms


@pytest.mark.parametrize("ms", [1, 99, 60_001, 2**32, 2**63, 2**64 - 1])
def test_welcome_heartbeat_out_of_range_is_bad_body(ms: int) -> None:
    """A broker cannot make a client beat every millisecond, or overflow its poll timeout."""
    with pytest.raises(ProtocolError, match=r"outside 100\.\.60000") as info:
        p.unpack_welcome(p.pack_welcome("b", 1024, heartbeat=ms))
    assert info.value.code == ErrorCode.BAD_BODY


@pytest.mark.parametrize("size", [0, -1, p.MAX_MESSAGE_SIZE + 1, 2**63, 2**64 - 1])
def test_welcome_max_message_size_out_of_range_is_bad_body(size: int) -> None:
    with pytest.raises(ProtocolError, match="max_message_size") as info:
        p.unpack_welcome(p.pack_welcome("b", size))
    assert info.value.code == ErrorCode.BAD_BODY


def test_welcome_max_message_size_at_its_limit() -> None:
    info = p.unpack_welcome(p.pack_welcome("b", p.MAX_MESSAGE_SIZE))
    assert info["max_message_size"] == p.MAX_MESSAGE_SIZE


@pytest.mark.parametrize("bad", [-1, -(2**63), "2000", True, False, 2000.0, None, [2000], b"\x07"])
def test_invalid_heartbeat_is_bad_body(bad: object) -> None:
    for unpack, body in [
        (p.unpack_hello, p.pack_hello("py/1", heartbeat=bad)),
        (p.unpack_welcome, p.pack_welcome("b", 1024, heartbeat=bad)),
    ]:
        with pytest.raises(ProtocolError) as info:
            unpack(body)
        assert info.value.code == ErrorCode.BAD_BODY


def test_stats_body_error_codes_travel_as_decimal_text() -> None:
    stats = {
        "broker": "zmqbus/0.1.0",
        "peers": 2,
        "counters": {"messages_in": 9, "expired": 1},
        "errors": {ErrorCode.NOT_JOINED: 2, 406: 1},
    }
    body = p.pack_stats(stats)
    raw = msgpack.unpackb(body, raw=False, strict_map_key=False)
    assert raw["errors"] == {"403": 2, "406": 1}
    assert p.unpack_stats(body) == {**stats, "errors": {"403": 2, "406": 1}}
    assert stats["errors"] == {403: 2, 406: 1}  # the caller's map is not changed
    # Without an errors map, or with one already in text, it is packed as is.
    assert p.unpack_stats(p.pack_stats({"peers": 0})) == {"peers": 0}
    assert p.unpack_stats(p.pack_stats({"errors": {"422": 3}})) == {"errors": {"422": 3}}


@SETTINGS
@given(stats_maps)
def test_stats_body_round_trip(stats: dict[str, Any]) -> None:
    got = p.unpack_stats(p.pack_stats(stats))
    assert got == {**stats, "errors": {str(int(k)): n for k, n in stats["errors"].items()}}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        msgpack.packb([]),
        msgpack.packb("peers"),
        msgpack.packb(None),
        msgpack.packb({1: 2}),
        msgpack.packb({b"peers": 1}, use_bin_type=True),
        p.pack_stats({"peers": 1}) + b"\x00",
    ],
)
def test_unpack_stats_refuses_bad_shapes(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        p.unpack_stats(body)
    assert info.value.code == ErrorCode.BAD_BODY


# --- garbage never escapes as anything but ProtocolError ----------------------------

UNPACKERS = [
    p.unpack_message,
    p.unpack_reply,
    p.unpack_ack,
    p.unpack_hello,
    p.unpack_welcome,
    p.unpack_stats,
    p.unpack_stream_request,
    p.unpack_stream_reply,
]

_msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=10),
        st.binary(max_size=20),
        st.builds(msgpack.Timestamp, st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**9 - 1)),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=5), st.binary(max_size=5)), inner, max_size=4),
    ),
    max_leaves=12,
)
_structured = st.one_of(
    _msgpack_values,
    st.tuples(ids, _msgpack_values, _msgpack_values, _msgpack_values).map(list),
    st.tuples(ids, _msgpack_values, _msgpack_values, st.binary(max_size=4), _msgpack_values).map(
        list
    ),
    st.tuples(_msgpack_values, _msgpack_values, _msgpack_values).map(list),
)
garbage = st.one_of(
    st.binary(max_size=60),
    _structured.map(lambda o: msgpack.packb(o, use_bin_type=True)),
    # Valid msgpack cut short or with junk appended.
    st.builds(
        lambda o, cut: msgpack.packb(o, use_bin_type=True)[:cut],
        _structured,
        st.integers(0, 30),
    ),
    st.builds(
        lambda o, junk: msgpack.packb(o, use_bin_type=True) + junk,
        _structured,
        st.binary(min_size=1, max_size=4),
    ),
    st.sampled_from(
        [
            b"",
            b"\xc1",  # never used
            b"\xd4\xff\x00",  # Timestamp ext with a bad length
            b"\xd6\xff\xff\xff\xff\xff",  # 32-bit timestamp, fine by itself
            b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
            b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
            b"\x91" * 5000 + b"\x90",  # deep nesting
            b"\x81\x90\x00",  # map with an array key
        ]
    ),
)


@settings(max_examples=75, deadline=None)
@given(garbage)
def test_unpackers_raise_only_protocol_error(body: bytes) -> None:
    for unpack in UNPACKERS:
        try:
            unpack(body)
        except ProtocolError as exc:
            assert exc.code == ErrorCode.BAD_BODY


def test_ack_result_is_immutable() -> None:
    # unpack_ack shares one AckResult per common body: no caller may change it.
    shared = p.unpack_ack(p.pack_ack(1, 0))
    assert p.unpack_ack(p.pack_ack(1, 0)) is shared
    assert isinstance(shared.errors, tuple)
    with pytest.raises(AttributeError):
        shared.errors.append("x")  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.delivered = 2  # type: ignore[misc]
    assert isinstance(p.unpack_ack(p.pack_ack(0, 0, ["e"])).errors, tuple)


def test_protocol_uuid_from_bytes_is_the_fast_path_module_s() -> None:
    # ZMQBUS_PURE=1 must reach the protocol's decoding too: one function, in _fastpath.
    from zmqbus import _fastpath

    assert p.uuid_from_bytes is _fastpath.uuid_from_bytes


@pytest.mark.parametrize(
    "counts",
    [
        {b"\x00\x00\x00\x01": 3},
        {b"".join(i.to_bytes(4, "big") for i in range(1, 1001)): 7},
        {b"\x00\x00\x00\x01\x00\x00\x00\x02": 2, b"\x00\x00\x00\x02\x00\x00\x00\x03": 5},
        {b"\x00\x00\x00\x09": 1 << 40},  # past uint32: saturates, as pack_dropped does
    ],
)
def test_pack_dropped_sets_counts_each_sid_of_each_set(counts: dict[bytes, int]) -> None:
    per_sid: dict[bytes, int] = {}
    for sids, n in counts.items():
        for sid in p.split_sids(sids):
            per_sid[sid] = per_sid.get(sid, 0) + n
    assert p.pack_dropped_sets(counts) == p.pack_dropped(per_sid)
    assert p.unpack_dropped(p.pack_dropped_sets(counts)) == {
        sid: min(n, 0xFFFFFFFF) for sid, n in per_sid.items()
    }
