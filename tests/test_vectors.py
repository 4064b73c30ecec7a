"""The golden vectors in ``tests/vectors/`` against ``zmqbus.protocol`` and the broker rules.

The vectors are data (JSON, documented in ``tests/vectors/README.md``) so that
implementations in other languages can run the same cases. Here they check
the Python implementation: parsing, encoding, body decoding, and the ERROR
replies of ``BrokerState`` (sans-IO, no sockets).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus._streams import Streams
from zmqbus.errors import ProtocolError
from zmqbus.store import open_store

VECTORS = Path(__file__).resolve().parent / "vectors"
SPEC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


VALID: list[dict[str, Any]] = _load("valid.json")["vectors"]
MALFORMED: list[dict[str, Any]] = _load("malformed.json")["vectors"]
SESSION: list[dict[str, Any]] = _load("session.json")["vectors"]
BODIES: dict[str, Any] = _load("bodies.json")
EXCHANGES: list[dict[str, Any]] = _load("exchanges.json")["vectors"]
CLIENT_MALFORMED = [v for v in MALFORMED if v["direction"] == "client"]
MESSAGE_BODIES = [v for v in BODIES["valid"] + BODIES["malformed"] if v["type"] == "message"]

CHANNEL = bytes.fromhex("00112233445566778899aabbccddeeff")
HELLO = [b"ZB\x01\x01", CHANNEL, msgpack.packb({"client": "test-vectors"})]
PEER = b"\x00peer-a"
# The key of reply tokens' tags in the vectors (tests/vectors/generate.py).
REPLY_KEY = bytes(range(32))
# ... and of STREAM_MSG tokens' tags.
STREAM_KEY = bytes(range(32, 64))
# Unix seconds the brokers of the stream vectors store messages at.
WALL = 1_700_000_000.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PARSE: dict[str, Callable[[list[bytes]], Any]] = {
    "client": p.parse_client,
    "broker": p.parse_broker,
}
UNPACK: dict[str, Callable[[bytes], Any]] = {
    "message": p.unpack_message,
    "reply": p.unpack_reply,
    "ack": p.unpack_ack,
    "hello": p.unpack_hello,
    "welcome": p.unpack_welcome,
    "stats": p.unpack_stats,
    "stream": p.unpack_stream_request,
    "stream_reply": p.unpack_stream_reply,
}
BYTES_FIELDS = {"channel", "ref", "token", "sid", "sids", "counts", "entries", "meta"}
TEXT_FIELDS = {"topic", "pattern", "queue"}
# The optional durable streams: every vector about them is marked with this
# feature, so that an implementation without them can skip exactly those.
STREAMS = "streams"
STREAM_COMMANDS = {
    p.Cmd.STREAM,
    p.Cmd.CONSUME,
    p.Cmd.STREAM_ACK,
    p.Cmd.STREAM_REPLY,
    p.Cmd.STORED,
    p.Cmd.STREAM_MSG,
}
STREAM_CODES = {p.ErrorCode.NOT_FOUND, p.ErrorCode.CONFLICT, p.ErrorCode.STORE_FAILED}


def command_name(cmd: object) -> str:
    """The spec's name of a parsed command: ``StatsReply`` -> ``STATS_REPLY``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", type(cmd).__name__).upper()


def frames_of(vec: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(f) for f in vec["frames"]]


def names(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def params(vectors: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("vec", vectors, ids=names(vectors))


def stream_broker(store_dir: Path | None = None, **kwargs: Any) -> BrokerState:
    """A broker whose STREAM_MSG tokens are tagged under the vectors' key (a
    broker's own is random), with file streams in ``store_dir`` if given."""
    store = open_store(store_dir)
    state = BrokerState(reply_key=REPLY_KEY, store=store, clock=lambda: WALL, **kwargs)
    state.streams = Streams(store, state.limits, key=STREAM_KEY, clock=lambda: WALL)
    return state


def about_streams(vec: dict[str, Any]) -> bool:
    """Whether a vector is about the durable streams: its message (a whole,
    well-headed one) is a stream command, its HELLO or WELCOME has the key
    "streams", its ERROR a code only streams give, or its body is a stream body."""
    if vec.get("type") in ("stream", "stream_reply"):
        return True
    frames = frames_of(vec) if "frames" in vec else []
    if not frames or len(frames[0]) != 4 or frames[0][:3] != b"ZB\x01":
        return False
    cmd = frames[0][3]
    if cmd in STREAM_COMMANDS:
        return True
    if cmd in (p.Cmd.BATCH, p.Cmd.BROKER_BATCH) and len(frames) == 3:
        try:  # a batch carrying a stream command is about streams too
            entries = p.unpack_command_entries(frames[2], frames[1], p.ENTRY_FRAMES[cmd])
        except p.ProtocolError:
            return False
        return any(entry[0][3] in STREAM_COMMANDS for entry in entries)
    if cmd in (p.Cmd.HELLO, p.Cmd.WELCOME) and len(frames) == 3:
        try:
            return "streams" in msgpack.unpackb(frames[2])
        except (ValueError, TypeError, msgpack.ExtraData):
            return False
    if cmd == p.Cmd.ERROR and len(frames) == 6 and len(frames[3]) == 2:
        return int.from_bytes(frames[3], "big") in STREAM_CODES
    return False


def check_body(kind: str, body: bytes, want: dict[str, Any]) -> None:
    """``body`` decodes with the ``kind`` decoder to the values in ``want``."""
    if kind in ("message", "reply"):
        if kind == "reply":
            mb, error = p.unpack_reply(body)
            assert error == want["error"]
        else:
            mb = p.unpack_message(body)
        assert mb.id == uuid.UUID(hex=want["id"])
        assert mb.id.bytes.hex() == want["id"]
        # The Python decoder keeps microseconds (datetime); the wire carries nanoseconds.
        assert mb.timestamp == EPOCH + timedelta(microseconds=want["timestamp_ns"] // 1000)
        assert want["timestamp"].startswith(mb.timestamp.strftime("%Y-%m-%dT%H:%M:%S."))
        assert mb.headers == want["headers"]
        assert mb.payload.hex() == want["payload"]
        raw = msgpack.unpackb(body, raw=False, timestamp=0)
        assert raw[1].to_unix_nano() == want["timestamp_ns"]
    elif kind == "ack":
        ack = p.unpack_ack(body)
        assert (ack.delivered, ack.dropped, list(ack.errors)) == (
            want["delivered"],
            want["dropped"],
            want["errors"],
        )
    else:
        decoded = UNPACK[kind](body)
        assert decoded == want["map"]
        if kind == "stats" and "errors" in decoded:
            # Refusals by error code: the keys are the codes in decimal text.
            for code, n in decoded["errors"].items():
                assert re.fullmatch(r"[1-9][0-9]{2}", code), code
                assert type(n) is int and n > 0
        if kind in ("hello", "welcome") and "heartbeat" in decoded:
            assert type(decoded["heartbeat"]) is int and decoded["heartbeat"] >= 0


# --- the files themselves ---------------------------------------------------------


def test_vector_files_have_unique_names_and_known_values() -> None:
    for doc, vectors in [
        ("valid", VALID),
        ("malformed", MALFORMED),
        ("session", SESSION),
        ("bodies", BODIES["valid"] + BODIES["malformed"]),
        ("exchanges", EXCHANGES),
    ]:
        seen = names(vectors)
        assert len(seen) == len(set(seen)), f"duplicate names in {doc}.json"
        for vec in vectors:
            assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", vec["name"]), vec["name"]
            assert vec["description"]
    assert {v["direction"] for v in VALID + MALFORMED} == {"client", "broker"}
    for doc in ("valid.json", "malformed.json", "session.json", "bodies.json", "exchanges.json"):
        head = _load(doc)
        assert (head["format"], head["protocol"]) == (1, "zmqbus/1")


def test_the_stream_vectors_and_only_they_are_marked() -> None:
    everything = VALID + MALFORMED + SESSION + BODIES["valid"] + BODIES["malformed"]
    marked = [v["name"] for v in everything if "feature" in v]
    assert {v["feature"] for v in everything if "feature" in v} == {STREAMS}
    assert marked == [v["name"] for v in everything if about_streams(v)]
    # The exchanges show no streams: none is marked, so none may hold a stream command.
    for vec in EXCHANGES:
        assert "feature" not in vec
        for step in vec["steps"]:
            frames = step.get("send") or step.get("receive")
            assert not about_streams({"frames": frames}), vec["name"]
    # Every stream command has its valid vector, all of them marked.
    assert {v["command"] for v in VALID if v.get("feature")} >= {c.name for c in STREAM_COMMANDS}


def test_vectors_are_what_generate_py_writes() -> None:
    spec = importlib.util.spec_from_file_location("zmqbus_vector_gen", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    built = gen.build()
    assert sorted(built) == [
        "bodies.json",
        "exchanges.json",
        "malformed.json",
        "session.json",
        "valid.json",
    ]
    for name, doc in built.items():
        on_disk = (VECTORS / name).read_text(encoding="utf-8")
        assert gen.render(doc) == on_disk, f"{name} is stale: run tests/vectors/generate.py"
        # A second build is identical: no randomness, no clock.
        assert gen.render(gen.build()[name]) == on_disk


def test_every_command_and_error_code_is_covered() -> None:
    assert {v["command"] for v in VALID} == {c.name for c in p.Cmd}
    for direction, cmds in [
        ("client", {c for c in p.Cmd if c < 0x80}),
        ("broker", {c for c in p.Cmd if c > 0x80}),
    ]:
        got = {v["command"] for v in VALID if v["direction"] == direction}
        assert got == {c.name for c in cmds}
    assert {v["fields"]["code"] for v in VALID if v["command"] == "ERROR"} == set(p.ErrorCode)
    client_codes = {v["code"] for v in CLIENT_MALFORMED} | {v["code"] for v in SESSION}
    # Every code one client session can provoke; INTERNAL (500) is the broker's own
    # failure, CAPACITY (503) needs it full of other peers (tests/test_limits.py),
    # CONFLICT (410) a stream or consumer made first, which a session vector's
    # setup (each answered by WELCOME or OK) cannot make. PERMISSION_DENIED (401)
    # is a STREAM_ACK of a token the session was never sent (other 401s need a
    # user with less than every permission: tests/test_permissions.py).
    assert client_codes == set(p.ErrorCode) - {
        p.ErrorCode.INTERNAL,
        p.ErrorCode.CAPACITY,
        p.ErrorCode.CONFLICT,
    }


# --- valid frames ---------------------------------------------------------------


@params(VALID)
def test_valid_vector_parses_to_stated_fields(vec: dict[str, Any]) -> None:
    frames = frames_of(vec)
    cmd = PARSE[vec["direction"]](frames)
    assert command_name(cmd) == vec["command"]
    assert frames[0] == b"ZB\x01" + bytes((p.Cmd[vec["command"]],))
    attrs = {f.name for f in dataclasses.fields(cmd)}
    assert set(vec["fields"]) == attrs - {"body"}
    for name, want in vec["fields"].items():
        got = getattr(cmd, name)
        if name in BYTES_FIELDS:
            assert got.hex() == want, name
        elif name in TEXT_FIELDS:
            assert got.decode("utf-8") == want, name
        else:
            assert got == want, name
    if "body" in attrs:
        # The body is the last frame, except in DELIVER, ASK and STREAM_MSG, where
        # the sids (and STREAM_MSG's meta) follow it.
        assert cmd.body == frames[4 if vec["command"] in BODY_AT_4 else -1]
        check_body(vec["body"]["type"], cmd.body, vec["body"])
    else:
        assert "body" not in vec
    if vec["command"] == "STREAM_MSG":
        delivery = vec["delivery"]
        assert p.unpack_meta(cmd.meta) == (delivery["seq"], delivery["deliveries"])
        assert delivery["deliveries"] >= 1  # this delivery included
    else:
        assert "delivery" not in vec
    if "entries" in attrs:
        check_entries(vec["command"], cmd.channel, cmd.entries, vec["entries"])
    else:
        assert "entries" not in vec


BODY_AT_4 = ("DELIVER", "ASK", "STREAM_MSG")


# Commands a BATCH / BROKER_BATCH entry may hold, and the parser of those messages.
ENTRY_RULES: dict[str, tuple[dict[int, int], Callable[[list[bytes]], Any]]] = {
    "BATCH": (p.CLIENT_ENTRY_FRAMES, p.parse_client),
    "BROKER_BATCH": (p.BROKER_ENTRY_FRAMES, p.parse_broker),
}


def check_command_entries(command: str, channel: bytes, frame: bytes, want: list[Any]) -> None:
    """A BATCH or BROKER_BATCH entries frame holds the stated entries, in order:
    each is the whole message it stands for, which parses alone (or, with
    ``code``, is refused alone with that code) and whose body decodes."""
    allowed, parse = ENTRY_RULES[command]
    messages = p.unpack_command_entries(frame, channel, allowed)
    assert messages == [frames_of(e) for e in want]
    assert b"".join(p.pack_command_entry(m) for m in messages) == frame
    for entry, frames in zip(want, messages, strict=True):
        assert set(entry) <= {"command", "frames", "body", "code"}
        assert frames[0] == b"ZB\x01" + bytes((p.Cmd[entry["command"]],))
        assert p.Cmd[entry["command"]] in allowed
        assert frames[1] == channel
        if "code" in entry:
            with pytest.raises(ProtocolError) as info:
                parse(frames)
            assert info.value.code == entry["code"]
        else:
            assert command_name(parse(frames)) == entry["command"]
        if "body" in entry:
            at_4 = ("PUBLISH", "REQUEST", "DELIVER", "ASK", "STREAM_MSG")
            where = 4 if entry["command"] in at_4 else -1
            check_body(entry["body"]["type"], frames[where], entry["body"])
        else:
            assert entry["command"] in ("ROUTED", "STORED", "STREAM_ACK")  # no body frame


def check_entries(command: str, channel: bytes, frame: bytes, want: list[dict[str, Any]]) -> None:
    """A batch's entries frame holds the stated entries, in order, and their
    bodies decode as message bodies."""
    if command in ENTRY_RULES:
        check_command_entries(command, channel, frame, want)
        return
    if command == "PUBLISH_BATCH":
        got = [
            {"topic": t.decode(), "body": b.hex()} for t, b, _ in p.unpack_publish_entries(frame)
        ]
        assert (
            b"".join(
                p.pack_publish_entry(e["topic"].encode(), bytes.fromhex(e["body"])) for e in want
            )
            == frame
        )
    else:
        got = [
            {"sids": s.hex(), "topic": t.decode(), "body": b.hex()}
            for s, t, b in p.unpack_deliver_entries(frame)
        ]
        assert (
            b"".join(
                p.pack_deliver_entry(
                    bytes.fromhex(e["sids"]),
                    p.pack_publish_entry(e["topic"].encode(), bytes.fromhex(e["body"])),
                )
                for e in want
            )
            == frame
        )
    assert got == want
    for entry in want:
        p.unpack_message(bytes.fromhex(entry["body"]))


@params(VALID)
def test_valid_vector_encodes_back_to_the_same_frames(vec: dict[str, Any]) -> None:
    frames = frames_of(vec)
    assert p.encode(PARSE[vec["direction"]](frames)) == frames


@params(VALID)
def test_valid_vector_is_refused_from_the_wrong_side(vec: dict[str, Any]) -> None:
    other = "broker" if vec["direction"] == "client" else "client"
    with pytest.raises(ProtocolError) as info:
        PARSE[other](frames_of(vec))
    assert info.value.code == p.ErrorCode.UNKNOWN_COMMAND


@params([v for v in VALID if v["direction"] == "client"])
def test_valid_client_vector_draws_no_error_from_the_broker(
    vec: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    if vec.get("feature") == STREAMS:
        # File streams ("stream-add" is one, by default) need a store directory.
        state = stream_broker(request.getfixturevalue("tmp_path"))
    else:
        state = BrokerState(reply_key=REPLY_KEY)
    if vec["command"] != "HELLO":
        state.handle(PEER, HELLO)
        state.outbox.clear()
    if vec["command"] in ("STREAM", "CONSUME"):
        # They name ORDERS: add it first (adding it again is no error).
        state.handle(PEER, frames_of(VALID_BY_NAME["stream-add"]))
        assert [type(p.parse_broker(f)) for _, f in state.take_outgoing()] == [p.StreamReply]
    state.handle(PEER, frames_of(vec))
    replies = [p.parse_broker(frames) for _, frames in state.take_outgoing()]
    if vec["command"] == "REPLY" or "5a420108" in json.dumps(vec):
        # The vectors' reply tokens carry a stand-in tag: a broker that made
        # none refuses them (401), and nothing else.
        replies = [
            r
            for r in replies
            if not (isinstance(r, p.Error) and r.code == p.ErrorCode.PERMISSION_DENIED)
        ]
    assert not [r for r in replies if isinstance(r, p.Error)]
    expected = {
        "HELLO": [p.Welcome],
        "SUBSCRIBE": [p.Ok],
        "UNSUBSCRIBE": [p.Ok],  # sids that are not open are ignored
        "DISCONNECT": [p.Ok],
        "ACK": [],  # the token is not outstanding: a stale ACK is ignored
        "PUBLISH": [p.Routed] if vec["fields"].get("ref") else [],
        "REQUEST": [p.Routed],  # count 0: nobody subscribed
        "REPLY": [],  # the requester's session (2) does not exist: dropped, no error
        "HEARTBEAT": [],  # never answered
        "STATS": [p.StatsReply],
        "PUBLISH_BATCH": [],  # unconfirmed, and nobody subscribed
        # Each entry as alone: a confirmed PUBLISH and a REQUEST draw a ROUTED (count 0).
        "BATCH": [
            p.Routed
            for e in (vec["entries"] if vec["command"] == "BATCH" else [])
            if e["command"] == "REQUEST" or (e["command"] == "PUBLISH" and e["frames"][2])
        ],
        "STREAM": [p.StreamReply],
        "CONSUME": [p.StreamReply],  # ORDERS is empty: no STREAM_MSG follows
        # The token verifies (session 1, the vectors' key), but consumer 1 does
        # not exist here: a late ack, ignored.
        "STREAM_ACK": [],
    }[vec["command"]]
    assert [type(r) for r in replies] == expected
    if vec["command"] in ("STREAM", "CONSUME"):
        assert replies[0].ref == frames_of(vec)[2]  # type: ignore[union-attr]
        p.unpack_stream_reply(replies[0].body)  # type: ignore[union-attr]
    if vec["command"] == "STREAM_ACK":
        assert state.streams.counters["late_stream_acks"] == 1
    if vec["command"] == "HELLO":
        asked = msgpack.unpackb(frames_of(vec)[2]).get("heartbeat", 0)
        info = p.unpack_welcome(replies[0].body)  # type: ignore[union-attr]
        if asked:
            assert info["heartbeat"] == min(max(asked, 100), 60_000)
        else:
            assert "heartbeat" not in info
        # Offered only when asked: a client that does not know batches sees no new key.
        for key in ("batch", "batch_commands", "streams"):
            assert info.get(key, False) == msgpack.unpackb(frames_of(vec)[2]).get(key, False)
    if vec["command"] == "HEARTBEAT":
        assert state.counters["heartbeats_in"] == 1
    if vec["command"] == "STATS":
        check_stats_reply(replies[0], frames_of(vec), peers=1)
    if vec["command"] == "REQUEST":
        assert replies == [p.Routed(CHANNEL, frames_of(vec)[2], 0)]
    if vec["command"] == "REPLY":
        assert state.counters["stale_replies"] == 1
    if vec["command"] == "BATCH":
        assert state.counters["batches_in"] == 1


def check_stats_reply(reply: object, stats: list[bytes], peers: int) -> dict[str, Any]:
    """``reply`` answers the STATS ``stats``: it echoes its channel and ref, and its
    body is the broker's map."""
    assert isinstance(reply, p.StatsReply)
    assert (reply.channel, reply.ref) == (stats[1], stats[2])
    info = p.unpack_stats(reply.body)
    assert info["peers"] == peers
    for key in ("channels", "subscriptions", "queue_groups", "pending_confirmations"):
        assert type(info[key]) is int and info[key] >= 0, key
    assert isinstance(info["broker"], str)
    assert all(type(v) is int for v in info["counters"].values())
    assert all(isinstance(k, str) and k.isdigit() for k in info["errors"])
    return info


@params([v for v in VALID if v["command"] == "STATS"])
def test_stats_vector_is_answered_without_hello(vec: dict[str, Any]) -> None:
    state = BrokerState(reply_key=REPLY_KEY)
    state.handle(PEER, frames_of(vec))
    [(ident, frames)] = state.outbox
    assert ident == PEER
    check_stats_reply(p.parse_broker(frames), frames_of(vec), peers=0)
    # STATS does not join the peer.
    assert PEER not in state.peers


# --- malformed frames -------------------------------------------------------------


@params(MALFORMED)
def test_malformed_vector_raises_stated_code(vec: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        PARSE[vec["direction"]](frames_of(vec))
    assert info.value.code == vec["code"]


@params(CLIENT_MALFORMED)
def test_malformed_client_vector_gets_one_error_from_the_broker(vec: dict[str, Any]) -> None:
    state = BrokerState(reply_key=REPLY_KEY)
    if vec["joined"]:
        state.handle(PEER, HELLO)
        state.outbox.clear()
    state.handle(PEER, frames_of(vec))
    assert len(state.outbox) == 1, f"expected one ERROR, got {state.outbox}"
    ident, frames = state.outbox[0]
    assert ident == PEER
    reply = p.parse_broker(frames)
    assert isinstance(reply, p.Error)
    assert reply.code == vec["code"], reply.text
    assert reply.channel.hex() == vec["reply"]["channel"]
    assert reply.ref.hex() == vec["reply"]["ref"]
    assert reply.text
    # The refusal changes nothing about the peer's session.
    if vec["joined"]:
        assert state.peers[PEER].channel.id == CHANNEL
    else:
        assert PEER not in state.peers


# --- stateful refusals ------------------------------------------------------------


@params(SESSION)
def test_session_vector_is_syntactically_valid(vec: dict[str, Any]) -> None:
    p.parse_client(frames_of(vec))
    for setup in vec["setup"]:
        p.parse_client([bytes.fromhex(f) for f in setup])


@params(SESSION)
def test_session_vector_gets_one_error_from_the_broker(vec: dict[str, Any]) -> None:
    state = BrokerState(max_message_size=vec["max_message_size"])
    for setup in vec["setup"]:
        state.handle(PEER, [bytes.fromhex(f) for f in setup])
        assert [type(p.parse_broker(f)) for _, f in state.outbox] in ([p.Welcome], [p.Ok])
        state.outbox.clear()
    state.handle(PEER, frames_of(vec))
    assert len(state.outbox) == 1, f"expected one ERROR, got {state.outbox}"
    ident, frames = state.outbox[0]
    reply = p.parse_broker(frames)
    assert ident == PEER
    assert isinstance(reply, p.Error)
    assert reply.code == vec["code"], reply.text
    assert reply.channel.hex() == vec["reply"]["channel"]
    assert reply.ref.hex() == vec["reply"]["ref"]


# --- bodies -------------------------------------------------------------------------


@params(BODIES["valid"])
def test_valid_body_decodes_to_stated_values(vec: dict[str, Any]) -> None:
    check_body(vec["type"], bytes.fromhex(vec["body"]), vec["decoded"])


@params(BODIES["malformed"])
def test_malformed_body_raises_bad_body(vec: dict[str, Any]) -> None:
    assert vec["code"] == p.ErrorCode.BAD_BODY
    with pytest.raises(ProtocolError) as info:
        UNPACK[vec["type"]](bytes.fromhex(vec["body"]))
    assert info.value.code == vec["code"]


_NOT_REPACKABLE = ("-extra-elements", "-without-error-element")


@params([v for v in BODIES["valid"] if not v["name"].endswith(_NOT_REPACKABLE)])
def test_valid_body_repacks_identically(vec: dict[str, Any]) -> None:
    """The reference packers produce exactly the vector bytes (minimal msgpack forms)."""
    body = bytes.fromhex(vec["body"])
    want = vec["decoded"]
    kind = vec["type"]
    if kind == "message":
        packed = p.pack_message(
            bytes.fromhex(want["id"]),
            want["timestamp_ns"],
            want["headers"],
            bytes.fromhex(want["payload"]),
        )
    elif kind == "reply":
        packed = p.pack_reply(
            bytes.fromhex(want["id"]),
            want["timestamp_ns"],
            want["headers"],
            bytes.fromhex(want["payload"]),
            want["error"],
        )
    elif kind == "ack":
        packed = p.pack_ack(want["delivered"], want["dropped"], want["errors"])
    elif kind == "stats" and "errors" in want["map"]:
        # The broker keeps error codes as ints; pack_stats writes them as decimal text.
        stats = {**want["map"], "errors": {int(k): n for k, n in want["map"]["errors"].items()}}
        packed = p.pack_stats(stats)
    else:
        packed = msgpack.packb(want["map"], use_bin_type=True)
    assert packed == body


@params(MESSAGE_BODIES)
def test_broker_forwards_message_bodies_without_decoding(vec: dict[str, Any]) -> None:
    state = BrokerState(reply_key=REPLY_KEY)
    sub, pub = b"\x00sub", b"\x00pub"
    for ident in (sub, pub):
        state.handle(ident, HELLO)
    sid = b"\x00\x00\x00\x07"
    state.handle(sub, [b"ZB\x01\x02", CHANNEL, b"r", sid, b"t.>", b""])
    state.outbox.clear()
    body = bytes.fromhex(vec["body"])
    state.handle(pub, [b"ZB\x01\x04", CHANNEL, b"", b"t.x", body])
    assert state.outbox == [(sub, [b"ZB\x01\x83", CHANNEL, b"", b"t.x", body, sid])]
    state.outbox.clear()
    # Request bodies are forwarded in ASK the same way.
    state.handle(pub, [b"ZB\x01\x07", CHANNEL, b"q", b"t.x", body])
    [(to, ask), routed] = state.outbox
    assert (to, ask[0], ask[3:]) == (sub, b"ZB\x01\x86", [b"t.x", body, sid])
    assert routed == (pub, [b"ZB\x01\x84", CHANNEL, b"q", b"\x00\x00\x00\x01"])


@params(BODIES["valid"] + BODIES["malformed"])
def test_broker_forwards_reply_and_ack_bodies_without_decoding(vec: dict[str, Any]) -> None:
    state = BrokerState(reply_key=REPLY_KEY)
    req, resp = b"\x00req", b"\x00resp"
    state.handle(resp, HELLO)
    state.handle(req, HELLO)  # the second peer to join: session 2
    state.handle(resp, [b"ZB\x01\x02", CHANNEL, b"", b"\x00\x00\x00\x01", b"t", b""])
    state.handle(req, [b"ZB\x01\x07", CHANNEL, b"ref", b"t", b"x"])
    (ask,) = [frames for to, frames in state.outbox if to == resp and frames[0] == p.H_ASK]
    state.outbox.clear()
    body = bytes.fromhex(vec["body"])
    token = ask[2]  # session 2, the tag made for resp, b"ref"
    state.handle(resp, [b"ZB\x01\x08", CHANNEL, token, body])
    assert state.outbox == [(req, [b"ZB\x01\x87", CHANNEL, b"ref", body])]


# --- the vectors tell one story ------------------------------------------------------

VALID_BY_NAME = {v["name"]: v for v in VALID}


def test_request_vectors_are_what_the_broker_sends() -> None:
    """The REQUEST, ASK, REPLY and ANSWER vectors are one exchange: a responder
    joins first (session 1) with subscription 4, the requester joins second
    (session 2) and sends ref 9."""
    state = BrokerState(reply_key=REPLY_KEY)
    resp, req = b"\x00responder", b"\x00requester"
    state.handle(resp, HELLO)
    state.handle(req, HELLO)
    state.handle(resp, [b"ZB\x01\x02", CHANNEL, b"", b"\x00\x00\x00\x04", b"billing.>", b""])
    state.outbox.clear()
    request = frames_of(VALID_BY_NAME["request"])
    state.handle(req, request)
    assert state.outbox == [
        (resp, frames_of(VALID_BY_NAME["ask"])),
        (req, [b"ZB\x01\x84", CHANNEL, request[2], b"\x00\x00\x00\x01"]),
    ]
    state.outbox.clear()
    state.handle(resp, frames_of(VALID_BY_NAME["reply"]))
    assert state.outbox == [(req, frames_of(VALID_BY_NAME["answer"]))]
    state.outbox.clear()
    state.handle(resp, frames_of(VALID_BY_NAME["reply-error"]))
    assert state.outbox == [(req, frames_of(VALID_BY_NAME["answer-error"]))]
    assert state.counters["replies"] == 2


def test_deliver_vectors_are_what_the_broker_sends() -> None:
    """'deliver-several-sids': plain subscriptions 1 and 3 and the group member 6
    of one peer, for the broker's first confirmed publish (token 1)."""
    state = BrokerState(reply_key=REPLY_KEY)
    sub, pub = b"\x00sub", b"\x00pub"
    state.handle(sub, HELLO)
    state.handle(pub, HELLO)
    for sid, pattern, queue in [
        (3, b"orders.>", b""),
        (1, b"orders.eu.created", b""),
        (6, b"orders.*.created", b"workers"),
        (2, b"other", b""),
    ]:
        state.handle(sub, [b"ZB\x01\x02", CHANNEL, b"", sid.to_bytes(4, "big"), pattern, queue])
    state.outbox.clear()
    vec = VALID_BY_NAME["publish-confirmed"]
    state.handle(pub, frames_of(vec))
    assert state.outbox[0] == (sub, frames_of(VALID_BY_NAME["deliver-several-sids"]))
    state.outbox.clear()
    state.handle(sub, [b"ZB\x01\x03", CHANNEL, b"", b"\x00\x00\x00\x03\x00\x00\x00\x06"])
    state.outbox.clear()
    state.handle(pub, frames_of(VALID_BY_NAME["publish-unconfirmed"]))
    assert state.outbox == [(sub, frames_of(VALID_BY_NAME["deliver-unconfirmed"]))]


def test_heartbeat_vectors_are_what_the_broker_sends() -> None:
    """'hello-heartbeat' is answered by 'welcome-heartbeat'; the broker then sends
    'broker-heartbeat' every 2 s, counts 'heartbeat', forgets the peer after three
    silent intervals (then 'heartbeat' gets 403), and says 'bye' on shutdown."""
    state = BrokerState(name="zmqbus/0.1.0", reply_key=REPLY_KEY)
    state.handle(PEER, frames_of(VALID_BY_NAME["hello-heartbeat"]), 100.0)
    assert state.outbox == [(PEER, frames_of(VALID_BY_NAME["welcome-heartbeat"]))]
    state.outbox.clear()
    assert state.tick(100.0) == 102.0
    beat = frames_of(VALID_BY_NAME["broker-heartbeat"])
    assert state.tick(101.9) == 102.0 and not state.outbox
    state.tick(102.0)
    assert state.outbox == [(PEER, beat)]
    state.outbox.clear()
    # The client's HEARTBEAT is never answered; it keeps the peer alive.
    state.handle(PEER, frames_of(VALID_BY_NAME["heartbeat"]), 105.0)
    assert not state.outbox and state.counters["heartbeats_in"] == 1
    state.tick(110.9)  # 5.9 s after the peer was last heard: alive, one beat due
    assert state.outbox == [(PEER, beat)] and PEER in state.peers
    state.outbox.clear()
    state.bye_all()
    assert state.outbox == [(PEER, frames_of(VALID_BY_NAME["bye"]))]
    state.outbox.clear()
    state.tick(111.01)  # more than 3 intervals since 105: forgotten
    assert PEER not in state.peers and state.counters["expired"] == 1
    assert state.tick(111.02) is None
    vec = next(v for v in SESSION if v["name"] == "not-joined-heartbeat")
    state.handle(PEER, frames_of(vec))
    [(_, frames)] = state.outbox
    err = p.parse_broker(frames)
    assert isinstance(err, p.Error)
    assert (err.channel, err.ref, err.code) == (CHANNEL, b"", p.ErrorCode.NOT_JOINED)


def _filler(n: int) -> list[bytes]:
    """The n-th of the unconfirmed PUBLISHes before the stream story's message:
    a body of its own id, so not a duplicate."""
    body = p.pack_message(bytes((n,)) * 16, 0, {}, b"filler")
    return [p.H_PUBLISH, CHANNEL, b"", b"orders.us.created", body]


def test_stream_vectors_are_what_the_broker_sends(tmp_path: Path) -> None:
    """The stream vectors tell one story (tests/vectors/generate.py): consumer C
    joins first (session 1), publisher P asks for streams, finds none, adds
    ORDERS, and publishes 16 messages and then 'publish-confirmed', seq 17 (twice:
    the second is a duplicate). C binds consumer billing and gets all 17; it
    NAKs seq 17 for 5 s, gets it again and ACKs it."""
    state = stream_broker(tmp_path, name="zmqbus/0.1.0")
    c, pub = b"\x00consumer", b"\x00publisher"
    vec = VALID_BY_NAME

    def send(ident: bytes, frames: list[bytes], now: float = 100.0) -> list[tuple[bytes, Any]]:
        state.handle(ident, frames, now)
        return state.take_outgoing()

    def same_reply(got: list[bytes], name: str) -> None:
        # The map's key order and number encodings are the broker's: its values are not.
        want = frames_of(vec[name])
        assert got[:3] == want[:3]
        assert p.unpack_stream_reply(got[3]) == vec[name]["body"]["map"]

    send(c, HELLO)
    assert send(pub, frames_of(vec["hello-streams"])) == [(pub, frames_of(vec["welcome-streams"]))]
    assert send(pub, frames_of(vec["stream-list"])) == [
        (pub, frames_of(vec["stream-reply-list-empty"]))
    ]
    [(to, reply)] = send(pub, frames_of(vec["stream-add"]))
    assert to == pub
    same_reply(reply, "stream-reply-add")
    for n in range(1, p.unpack_meta(frames_of(vec["stream-msg"])[6])[0]):
        assert send(pub, _filler(n)) == []
    confirmed = frames_of(vec["publish-confirmed"])
    routed = (pub, [p.H_ROUTED, CHANNEL, confirmed[2], bytes(4)])  # no subscriber
    assert send(pub, confirmed) == [(pub, frames_of(vec["stored"])), routed]
    assert send(pub, confirmed) == [(pub, frames_of(vec["stored-duplicate"])), routed]
    out = send(c, frames_of(vec["consume"]))
    assert [to for to, _ in out] == [c] * 18
    same_reply(out[0][1], "stream-reply-consume")
    msgs = [p.parse_broker(frames) for _, frames in out[1:]]
    assert [p.unpack_meta(m.meta) for m in msgs] == [(seq, 1) for seq in range(1, 18)]  # type: ignore[union-attr]
    assert out[-1][1] == frames_of(vec["stream-msg-first"])
    # Still working on it; then a NAK for 5000 ms: nothing until then.
    assert send(c, frames_of(vec["stream-ack-progress"]), 101.0) == []
    assert send(c, frames_of(vec["stream-ack-nak"]), 102.0) == []
    state.tick(106.9)
    assert state.take_outgoing() == []
    state.tick(107.0)
    assert state.take_outgoing() == [(c, frames_of(vec["stream-msg"]))]
    assert send(c, frames_of(vec["stream-ack"]), 108.0) == []
    assert state.streams.counters["stream_acks"] == 1
    # Settled: a TERM now is a late ack, ignored.
    assert send(c, frames_of(vec["stream-ack-term"]), 109.0) == []
    assert state.streams.counters["late_stream_acks"] == 1


# --- exchanges: several peers and the broker, in order ---------------------------

Step = tuple[bytes, str, list[bytes]]


def steps_of(vec: dict[str, Any]) -> list[Step]:
    """(peer identity, "send" or "receive", frames) for each step of an exchange."""
    out: list[Step] = []
    for step in vec["steps"]:
        assert set(step) in ({"peer", "send"}, {"peer", "receive"}), step
        what = "send" if "send" in step else "receive"
        out.append((step["peer"].encode(), what, [bytes.fromhex(f) for f in step[what]]))
    return out


def flatten(frames: list[bytes]) -> list[list[bytes]]:
    """A BROKER_BATCH as the messages of its entries; any other message as itself."""
    if frames[0] == p.H_BROKER_BATCH:
        return p.unpack_command_entries(frames[2], frames[1], p.BROKER_ENTRY_FRAMES)
    return [frames]


def assert_same_message(got: list[bytes], want: list[bytes]) -> None:
    if want[0] == p.H_ERROR:
        assert got[:4] == want[:4]  # the text is informative
        assert got[4]
    else:
        assert got == want


@params(EXCHANGES)
def test_exchange_is_what_the_broker_sends(vec: dict[str, Any]) -> None:
    """Each message sent is handled alone and its replies coalesced, as the
    reference broker does once per read of its socket: the broker sends exactly
    the messages received next, in that order."""
    state = BrokerState(
        max_message_size=vec["max_message_size"], name="zmqbus/0.1.0", reply_key=REPLY_KEY
    )
    sent: list[tuple[bytes, list[bytes]]] = []
    for ident, what, frames in steps_of(vec):
        if what == "send":
            assert not sent, f"the exchange omits replies: {sent}"
            state.handle(ident, frames)
            sent.extend(state.take_outgoing())
            continue
        assert sent, f"the broker sends nothing for {frames[0].hex()} to {ident!r}"
        got_ident, got = sent.pop(0)
        assert got_ident == ident
        assert_same_message(got, frames)
    assert not sent


@params(EXCHANGES)
def test_exchange_without_coalescing_is_the_same_messages_per_peer(vec: dict[str, Any]) -> None:
    """A broker that joins no replies into BROKER_BATCHes sends each peer the
    messages of the same entries, in the same order."""
    state = BrokerState(
        max_message_size=vec["max_message_size"], name="zmqbus/0.1.0", reply_key=REPLY_KEY
    )
    expected: dict[bytes, list[list[bytes]]] = {}

    def check() -> None:
        got: dict[bytes, list[list[bytes]]] = {}
        for ident, frames in state.outbox:
            got.setdefault(ident, []).append(frames)
        assert sorted(got) == sorted(expected)
        for ident, messages in expected.items():
            assert len(got[ident]) == len(messages)
            for one, want in zip(got[ident], messages, strict=True):
                assert_same_message(one, want)
        state.outbox.clear()
        expected.clear()

    for ident, what, frames in steps_of(vec):
        if what == "send":
            check()
            state.handle(ident, frames)
        else:
            expected.setdefault(ident, []).extend(flatten(frames))
    check()


@params(EXCHANGES)
def test_exchange_keeps_the_negotiation(vec: dict[str, Any]) -> None:
    """Every message parses on its side (every BROKER_BATCH entry too); a peer
    sends BATCH only after a WELCOME with batch_commands answered its latest
    HELLO, and receives BROKER_BATCH only while its latest HELLO asked."""
    asked: dict[bytes, bool] = {}
    offered: dict[bytes, bool] = {}
    for ident, what, frames in steps_of(vec):
        if what == "send":
            cmd = p.parse_client(frames)
            if isinstance(cmd, p.Hello):
                asked[ident] = p.unpack_hello(cmd.body).get("batch_commands", False)
                offered[ident] = False
            assert not isinstance(cmd, p.Batch) or offered[ident], "BATCH before it was offered"
            continue
        reply = p.parse_broker(frames)
        assert reply.channel == CHANNEL
        if isinstance(reply, p.Welcome):
            offered[ident] = p.unpack_welcome(reply.body).get("batch_commands", False)
            assert offered[ident] == asked[ident]
        if isinstance(reply, p.BrokerBatch):
            assert asked[ident], "BROKER_BATCH to a peer that did not ask"
            for entry in flatten(frames):
                p.parse_broker(entry)


def test_batch_command_vectors_are_messages_of_the_exchanges() -> None:
    """The valid BATCH and BROKER_BATCH vectors drawn from a story are messages
    the peers of exchanges.json send and receive."""
    sent = {tuple(s["send"]) for e in EXCHANGES for s in e["steps"] if "send" in s}
    received = {tuple(s["receive"]) for e in EXCHANGES for s in e["steps"] if "receive" in s}
    for name in ("hello-batch-commands", "batch", "batch-one-entry"):
        assert tuple(VALID_BY_NAME[name]["frames"]) in sent, name
    for name in ("batch-requests", "batch-replies"):
        assert tuple(VALID_BY_NAME[name]["frames"]) in sent, name
    for name in ("welcome-batch-commands", "broker-batch"):
        assert tuple(VALID_BY_NAME[name]["frames"]) in received, name
    for name in ("broker-batch-asks", "broker-batch-answers"):
        assert tuple(VALID_BY_NAME[name]["frames"]) in received, name


# --- the worked example in docs/protocol.md ---------------------------------------

_MSG_LINE = re.compile(r"^(?P<peer>[A-Z]) (?P<dir>->|<-) (?P<cmd>[A-Z]+)\s*$")
_FRAME_LINE = re.compile(r"^\s+\[(?P<index>\d+)\]\s+(?P<hex>[0-9a-f]*)\s*(?:#.*)?$")


def _worked_example() -> list[tuple[str, str, str, list[bytes]]]:
    text = SPEC.read_text(encoding="utf-8")
    match = re.search(r"<!-- worked-example -->(.*?)<!-- /worked-example -->", text, re.S)
    assert match, "docs/protocol.md lost its worked-example markers"
    messages: list[tuple[str, str, str, list[bytes]]] = []
    for line in match.group(1).splitlines():
        if not line.strip() or line.startswith("```"):
            continue
        head = _MSG_LINE.match(line)
        if head:
            messages.append((head["peer"], head["dir"], head["cmd"], []))
            continue
        frame = _FRAME_LINE.match(line)
        assert frame, f"unparsable worked-example line: {line!r}"
        assert messages, "frame line before any message line"
        assert int(frame["index"]) == len(messages[-1][3])
        messages[-1][3].append(bytes.fromhex(frame["hex"]))
    return messages


def test_worked_example_in_spec_is_what_the_broker_does() -> None:
    messages = _worked_example()
    assert len(messages) >= 10
    state = BrokerState(name="zmqbus/0.1.0", reply_key=REPLY_KEY)
    for peer, direction, name, frames in messages:
        ident = peer.encode()
        assert frames[0] == b"ZB\x01" + bytes((p.Cmd[name],))
        if direction == "->":
            assert not state.outbox, f"the example omits replies: {state.outbox}"
            state.handle(ident, frames)
            continue
        assert state.outbox, f"the broker sends nothing for {name} to {peer}"
        got_ident, got = state.outbox.pop(0)
        assert got_ident == ident
        cmd = p.parse_broker(frames)
        assert command_name(cmd) == name
        if isinstance(cmd, p.Error):
            assert got[:4] == frames[:4]  # the text is informative
        else:
            assert got == frames
    assert not state.outbox


def _spec_example(section: str) -> list[bytes]:
    """The frames of the first example block under ``### {section}`` in the spec."""
    text = SPEC.read_text(encoding="utf-8")
    start = text.index(f"### {section}")
    block = text[text.index("```", start) + 3 :]
    block = block[: block.index("```")]
    frames = []
    for line in block.splitlines():
        frame = re.match(r"^\[(?P<index>\d+)\]\s+(?P<hex>[0-9a-f]*)\s*(?:#.*)?$", line)
        if frame:
            assert int(frame["index"]) == len(frames)
            frames.append(bytes.fromhex(frame["hex"]))
    return frames


def test_batch_examples_in_spec_are_what_the_broker_does() -> None:
    """The spec's PUBLISH_BATCH example, routed by a broker to a subscriber that
    asked for batches (sid 1 on orders.>, sid 2 on orders.eu), gives exactly the
    spec's DELIVER_BATCH example."""
    publish = _spec_example("PUBLISH_BATCH (client → broker)")
    deliver = _spec_example("DELIVER_BATCH (broker → client)")
    assert isinstance(p.parse_client(publish), p.PublishBatch)
    assert isinstance(p.parse_broker(deliver), p.DeliverBatch)
    state = BrokerState(reply_key=REPLY_KEY)
    channel = publish[1]
    state.handle(b"S", [p.H_HELLO, channel, p.pack_hello("s", batch=True)])
    state.handle(b"S", [p.H_SUBSCRIBE, channel, b"1", b"\0\0\0\1", b"orders.>", b""])
    state.handle(b"S", [p.H_SUBSCRIBE, channel, b"2", b"\0\0\0\2", b"orders.eu", b""])
    state.handle(b"P", [p.H_HELLO, channel, p.pack_hello("p")])
    state.outbox.clear()
    state.handle(b"P", publish)
    assert state.outbox == [(b"S", deliver)]
