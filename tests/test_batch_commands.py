"""Batches of commands: BATCH and BROKER_BATCH, negotiated with ``batch_commands``
in HELLO and WELCOME. A batch must mean exactly the messages it carries, handled
one after the other: same routing, same replies, same errors, same order."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from typing import Any

import pytest
import zmq
from frames import (
    S1,
    S2,
    A,
    B,
    ack,
    batch,
    broker_batch,
    disconnect,
    hello,
    joined,
    publish,
    reply,
    request,
    subscribe,
    take,
    welcome_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sinks import ListSink

from zmqbus import Broker, Bus, HandlerError
from zmqbus import protocol as p
from zmqbus._batching import BROKER_BATCH_BYTES
from zmqbus._client import BATCH_BYTES, ClientCore, batch_front
from zmqbus._routing import BrokerState
from zmqbus.errors import ProtocolError
from zmqbus.message import Message
from zmqbus.protocol import ErrorCode

T = 5.0
NESTED = batch(publish(b"a.b", b"b"))


def error_of(frames: list[bytes]) -> p.Error:
    cmd = p.parse_broker(frames)
    assert isinstance(cmd, p.Error)
    return cmd


def expand(out: list[tuple[bytes, list[bytes]]]) -> list[tuple[bytes, list[bytes]]]:
    """The outbox with every BROKER_BATCH replaced by the messages it carries."""
    flat = []
    for ident, frames in out:
        if frames[0] == p.H_BROKER_BATCH:
            for entry in p.unpack_command_entries(frames[2], frames[1], p.BROKER_ENTRY_FRAMES):
                flat.append((ident, entry))
        else:
            flat.append((ident, frames))
    return flat


def per_peer(out: list[tuple[bytes, list[bytes]]]) -> dict[bytes, list[list[bytes]]]:
    by: dict[bytes, list[list[bytes]]] = {}
    for ident, frames in out:
        by.setdefault(ident, []).append(frames)
    return by


# --- codec -----------------------------------------------------------------------


def test_entries_round_trip_and_stand_for_whole_messages() -> None:
    client = [
        publish(b"a.b", b"x", ref=b"r1"),
        ack(b"token"),
        request(b"a.c", b"", ref=b"q"),
        reply(b"s" * 9, b"answer"),
    ]
    frame = b"".join(p.pack_command_entry(m) for m in client)
    assert p.unpack_command_entries(frame, A, p.CLIENT_ENTRY_FRAMES) == client
    assert p.parse_client([p.H_BATCH, A, frame]) == p.Batch(A, frame)
    broker = [
        [p.H_DELIVER, A, b"t", b"a.b", b"x", S1 + S2],
        [p.H_ROUTED, A, b"r", b"\0\0\0\2"],
        [p.H_ACKED, A, b"r", p.pack_ack(1, 0)],
        [p.H_ASK, A, b"t" * 9, b"a.c", b"", S2],
        [p.H_ANSWER, A, b"q", b""],
    ]
    frame = b"".join(p.pack_command_entry(m) for m in broker)
    assert p.unpack_command_entries(frame, A, p.BROKER_ENTRY_FRAMES) == broker
    assert p.parse_broker([p.H_BROKER_BATCH, A, frame]) == p.BrokerBatch(A, frame)
    # The layout is the spec's: command byte, then length-prefixed frames.
    assert p.pack_command_entry([p.H_ROUTED, A, b"r", b"\0\0\0\2"]) == bytes.fromhex(
        "8400000001720000000400000002"
    )


def test_every_cut_of_an_entries_frame_is_refused_unless_it_ends_an_entry() -> None:
    messages = [publish(b"a.b", b"xyz", ref=b"r"), ack(b"tok", b"ab")]
    parts = [p.pack_command_entry(m) for m in messages]
    frame = b"".join(parts)
    ends = {len(parts[0]), len(frame)}
    for cut in range(len(frame)):
        if cut in ends:
            assert p.unpack_command_entries(frame[:cut], A, p.CLIENT_ENTRY_FRAMES)
            continue
        with pytest.raises(ProtocolError) as info:
            p.unpack_command_entries(frame[:cut], A, p.CLIENT_ENTRY_FRAMES)
        assert info.value.code == ErrorCode.BAD_FRAMES


@pytest.mark.parametrize("cmd", [0x01, 0x0B, 0x0C, 0x02, 0x83, 0x7F])
def test_only_hot_path_commands_may_be_entries(cmd: int) -> None:
    entry = bytes((cmd,)) + b"\0\0\0\1x" * 4
    with pytest.raises(ProtocolError, match="cannot be batched"):
        p.unpack_command_entries(entry, A, p.CLIENT_ENTRY_FRAMES)
    # A client's commands are as foreign in a BROKER_BATCH.
    with pytest.raises(ProtocolError, match="cannot be batched"):
        p.unpack_command_entries(b"\x04" + b"\0\0\0\1x" * 3, A, p.BROKER_ENTRY_FRAMES)


# --- negotiation -----------------------------------------------------------------


def test_welcome_offers_batch_commands_only_when_asked() -> None:
    state = BrokerState()
    state.handle(b"p", hello())
    assert "batch_commands" not in welcome_of(state)
    state.handle(b"q", hello(batch_commands=False, batch=True))
    assert "batch_commands" not in welcome_of(state) and welcome_of(state)["batch"]
    state.handle(b"r", hello(batch_commands=True))
    assert welcome_of(state)["batch_commands"] is True and "batch" not in welcome_of(state)
    state.handle(b"r", hello())  # each HELLO negotiates again
    assert "batch_commands" not in welcome_of(state)


def test_hello_batch_commands_must_be_boolean() -> None:
    state = BrokerState()
    state.handle(b"p", hello(batch_commands="yes"))
    (_, frames) = state.outbox[-1]
    assert error_of(frames).code == ErrorCode.BAD_BODY
    assert b"p" not in state.peers


# --- the broker: a BATCH is its messages ------------------------------------------

# Messages a publisher might send: confirmed and unconfirmed publishes, bad topics,
# oversized refs and bodies, requests, and ACKs (valid tokens are filled in later).
_message = st.one_of(
    st.tuples(
        st.just("publish"),
        st.sampled_from([b"a.b", b"a.c", b"x.y", b"a.*", b"a..b"]),
        st.sampled_from([b"", b"r1", b"r2", b"r" * 33]),
        st.sampled_from([b"", b"body", b"z" * 200]),
    ),
    st.tuples(st.just("request"), st.sampled_from([b"a.b", b"q.q"]), st.sampled_from([b"", b"q"])),
    st.tuples(st.just("ack"), st.integers(0, 5)),
)


def _frames(item: tuple[Any, ...], tokens: list[bytes]) -> list[bytes]:
    if item[0] == "publish":
        return publish(item[1], item[3], ref=item[2])
    if item[0] == "request":
        return request(item[1], b"", ref=item[2])
    token = tokens[item[1] % len(tokens)] if tokens else b"\0" * 8
    return ack(token)


def _world() -> BrokerState:
    # One key for every world: the two worlds compared must tag reply tokens alike.
    state = BrokerState(max_message_size=100, reply_key=bytes(32))
    joined(state, b"sub", ("a.>", S1), ("a.b", S2), batch_commands=True)
    joined(state, b"plain", ("a.*", S1))
    joined(state, b"pub", ("q.>", S1), batch_commands=True)
    # Confirmed deliveries outstanding at "sub", for its ACKs to settle.
    state.handle(b"pub", publish(b"a.b", b"0", ref=b"c1"))
    state.handle(b"pub", publish(b"a.c", b"0", ref=b"c2"))
    state.outbox.clear()
    return state


@settings(max_examples=150, deadline=None)
@given(st.lists(_message, min_size=1, max_size=12))
def test_a_batch_means_its_messages_one_after_the_other(items: list[tuple[Any, ...]]) -> None:
    alone, batched = _world(), _world()
    tokens = sorted(alone.peers[b"sub"].outstanding)
    messages = [_frames(item, tokens) for item in items]
    # ACKs come from the subscriber, the rest from the publisher: the publisher's
    # messages first, then the subscriber's, alone or as one batch each.
    for sender in (b"pub", b"sub"):
        mine = [m for m in messages if (m[0] == p.H_ACK) == (sender == b"sub")]
        for frames in mine:
            alone.handle(sender, frames)
        if mine:
            batched.handle(sender, batch(*mine))
    # Runs of unconfirmed PUBLISHes reach a peer that asked for batches of
    # commands as BROKER_BATCHes at once: the same messages, one after the other.
    assert per_peer(expand(batched.outbox)) == per_peer(alone.outbox)
    assert batched.peers[b"sub"].outstanding == alone.peers[b"sub"].outstanding
    # Joining the replies into BROKER_BATCHes changes nothing a peer can see.
    want = per_peer(expand(batched.outbox))
    sent = batched.take_outgoing()
    assert per_peer(expand(sent)) == want
    assert not any(f[0] == p.H_BROKER_BATCH for i, f in sent if i == b"plain"), (
        "a peer that did not ask got a BROKER_BATCH"
    )


def test_a_bad_entry_gets_its_own_error_and_the_others_go_on() -> None:
    state = _world()
    state.handle(
        b"pub",
        batch(
            publish(b"a.b", b"1", ref=b"r1"),
            publish(b"a.*", b"2", ref=b"r2"),
            publish(b"a.c", b"3", ref=b"r3"),
        ),
    )
    mine = per_peer(state.outbox)[b"pub"]
    assert [f[0] for f in mine] == [p.H_ROUTED, p.H_ERROR, p.H_ROUTED]
    assert mine[0][2] == b"r1" and mine[2][2] == b"r3"
    err = error_of(mine[1])
    assert (err.code, err.ref) == (ErrorCode.BAD_TOPIC, b"r2")
    assert [f[3] for f in per_peer(state.outbox)[b"sub"]] == [b"a.b", b"a.c"]


@pytest.mark.parametrize(
    ("ident", "frames", "code"),
    [
        (b"stranger", batch(publish(b"a.b", b"b")), ErrorCode.NOT_JOINED),
        (b"pub", batch(publish(b"a.b", b"b"), ch=B), ErrorCode.CHANNEL_MISMATCH),
        (b"pub", [p.H_BATCH, A], ErrorCode.BAD_FRAMES),
        (b"pub", [*batch(publish(b"a.b", b"b")), b""], ErrorCode.BAD_FRAMES),
        (b"pub", [p.H_BATCH, A, b""], ErrorCode.BAD_FRAMES),
        (
            b"pub",
            [p.H_BATCH, A, p.pack_command_entry(publish(b"a.b", b"b"))[:-1]],
            ErrorCode.BAD_FRAMES,
        ),
        (
            b"pub",
            [p.H_BATCH, A, p.pack_command_entry(hello(batch_commands=True))],
            ErrorCode.BAD_FRAMES,
        ),
        (
            b"pub",
            [p.H_BATCH, A, p.pack_command_entry(NESTED)],
            ErrorCode.BAD_FRAMES,
        ),
        (
            b"pub",
            [p.H_BATCH, A, p.pack_command_entry(publish(b"a.b", b"b")) + b"\x83"],
            ErrorCode.BAD_FRAMES,
        ),
    ],
)
def test_a_bad_envelope_refuses_the_whole_batch(
    ident: bytes, frames: list[bytes], code: int
) -> None:
    state = _world()
    state.handle(ident, frames)
    ((to, reply),) = state.outbox  # one ERROR, nothing routed
    err = error_of(reply)
    assert (to, err.code, err.ref) == (ident, code, b"")


# --- the broker: joining replies into BROKER_BATCHes ------------------------------


def test_coalesce_joins_runs_per_peer_in_order() -> None:
    state = BrokerState()
    joined(state, b"x", batch_commands=True)
    joined(state, b"y")
    d = [[p.H_DELIVER, A, b"", b"t", b"%d" % i, S1] for i in range(4)]
    ok = [p.H_OK, A, b"s"]
    state.outbox[:] = [(b"x", d[0]), (b"y", d[0]), (b"x", d[1]), (b"x", ok), (b"x", d[2])]
    state.outbox.append((b"y", d[1]))
    sent = state.take_outgoing()
    x = per_peer(sent)[b"x"]
    assert x[0][0] == p.H_BROKER_BATCH
    assert p.unpack_command_entries(x[0][2], A, p.BROKER_ENTRY_FRAMES) == [d[0], d[1]]
    assert x[1:] == [ok, d[2]]  # the OK ends the run; a run of one stays plain
    assert per_peer(sent)[b"y"] == [d[0], d[1]]  # did not ask
    assert state.counters["broker_batches"] == 1


def test_coalesce_splits_at_the_byte_limit() -> None:
    state = BrokerState()
    joined(state, b"x", batch_commands=True)
    body = b"z" * 1000
    msgs = [[p.H_DELIVER, A, b"", b"t", body, S1] for _ in range(200)]
    state.outbox[:] = [(b"x", m) for m in msgs]
    sent = state.take_outgoing()
    assert len(sent) > 1
    for _, frames in sent:
        assert frames[0] == p.H_BROKER_BATCH and len(frames[2]) <= BROKER_BATCH_BYTES
    assert [f for _, f in expand(sent)] == msgs
    assert state.counters["broker_batches"] == len(sent)


def test_coalesce_stops_once_the_peers_that_asked_leave() -> None:
    state = BrokerState()
    joined(state, b"x", batch_commands=True)
    state.handle(b"x", disconnect())
    assert take(state) == [(b"x", p.Ok(A, b"d"))]
    joined(state, b"x")
    d = [p.H_DELIVER, A, b"", b"t", b"b", S1]
    state.outbox[:] = [(b"x", d), (b"x", d)]
    assert state.take_outgoing() == [(b"x", d), (b"x", d)]


def test_a_lost_broker_batch_is_lost_entry_by_entry() -> None:
    state = _world()
    token = sorted(state.peers[b"sub"].outstanding)[0]
    lost = [
        [p.H_DELIVER, A, token, b"a.b", b"0", S1 + S2],
        [p.H_DELIVER, A, b"", b"a.c", b"1", S1],
    ]
    state.send_failed(b"sub", broker_batch(*lost), gone=False)
    # The confirmed entry is reported to its publisher as dropped at the broker...
    ((to, frames),) = state.outbox
    assert to == b"pub" and frames[0] == p.H_ACKED
    assert p.unpack_ack(frames[3]) == p.AckResult(0, 1, ())
    # ...and every entry is owed to the subscriber as a drop per sid.
    owed = state.peers[b"sub"].dropped  # per sid set, as the DROPPED notice will count them
    assert p.unpack_dropped(p.pack_dropped_sets(owed)) == {S1: 2, S2: 1}
    assert state.counters["dropped_out"] == 2


# --- the client core -------------------------------------------------------------


def ready_core(offer: bool = True, ask: bool = True) -> ClientCore:
    core = ClientCore(A, heartbeat=0, batch_commands=ask)
    fut: Future[Any] = Future()
    core.connect(fut, T, T)
    assert p.unpack_hello(core.outbox[0][2]).get("batch_commands", False) is ask
    core.outbox.clear()
    extra = {"batch_commands": True} if offer else {}
    core.receive([p.H_WELCOME, A, p.pack_welcome("b", 1 << 20, **extra)])
    assert fut.result(0)
    return core


def body(payload: bytes) -> bytes:
    return p.pack_message(uuid.uuid4().bytes, time.time_ns(), {}, payload)


def test_core_uses_batch_commands_only_when_asked_and_offered() -> None:
    assert ready_core().batching_commands
    assert not ready_core(offer=False).batching_commands
    assert not ready_core(offer=True, ask=False).batching_commands
    core = ready_core()
    core.receive([p.H_BYE, A])
    assert core.state == "reconnecting" and not core.batching_commands


def test_core_handles_each_entry_as_the_message_alone() -> None:
    core = ready_core()
    sink = ListSink("a.>")
    core.subscribe(sink, Future(), T, T)
    (sid,) = [f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE]
    fut: Future[Any] = Future()
    core.publish(b"a.b", body(b"mine"), fut, T, T)
    ref = core.outbox[-1][2]
    core.outbox.clear()
    core.receive(
        broker_batch(
            [p.H_DELIVER, A, b"tok1", b"a.b", body(b"one"), sid],
            [p.H_ROUTED, A, ref, b"\0\0\0\1"],
            [p.H_DELIVER, A, b"", b"a.c", body(b"two"), sid],
            [p.H_ACKED, A, ref, p.pack_ack(3, 0)],
        )
    )
    assert [(m.payload, a is not None) for m, a in sink.offers] == [(b"one", True), (b"two", False)]
    assert fut.result(0).delivered == 3
    # The confirmed delivery is ACKed, exactly as if it had come alone.
    assert core.outbox == [[p.H_ACK, A, b"tok1", p.pack_ack(1, 0, [])]]


def test_core_refuses_a_malformed_broker_batch_whole() -> None:
    core = ready_core()
    sink = ListSink(">")
    core.subscribe(sink, Future(), T, T)
    (sid,) = [f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE]
    good = p.pack_command_entry([p.H_DELIVER, A, b"tok", b"a.b", body(b"x"), sid])
    core.receive([p.H_BROKER_BATCH, A, good + good[:-1]])
    core.receive([p.H_BROKER_BATCH, A, good + p.pack_command_entry(publish(b"a.b", b"b"))])
    core.receive([p.H_BROKER_BATCH, B, good + good])  # another channel: one refusal
    core.receive([p.H_BROKER_BATCH, A[:15], good + good])
    assert sink.offers == [] and core.counters["protocol_errors"] == 4


def test_core_acks_a_bad_entry_alone_and_hands_on_the_rest() -> None:
    core = ready_core()
    sink = ListSink(">")
    core.subscribe(sink, Future(), T, T)
    (sid,) = [f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE]
    core.outbox.clear()
    core.receive(
        broker_batch(
            [p.H_DELIVER, A, b"bad", b"a.*", body(b"x"), sid],
            [p.H_DELIVER, A, b"good", b"a.b", body(b"y"), sid],
        )
    )
    assert [m.payload for m, _ in sink.offers] == [b"y"]
    (refusal, ack) = core.outbox
    assert refusal[2] == b"bad" and "refused delivery" in p.unpack_ack(refusal[3]).errors[0]
    assert ack == [p.H_ACK, A, b"good", p.pack_ack(1, 0, [])]


def cmd_frames() -> list[list[bytes]]:
    return [
        publish(b"a", b"1", ref=b"r1"),
        ack(b"t", b"k"),
        request(b"b", b""),
        reply(b"s" * 9, b""),
        publish(b"c", b"2"),
    ]


def test_batch_front_joins_hot_path_commands_into_a_batch() -> None:
    queue = [*cmd_frames(), subscribe("x", S1), publish(b"d", b"3", ref=b"r")]
    out = deque(queue)
    batch_front(out)
    assert out[0][:2] == [p.H_BATCH, A]
    assert p.unpack_command_entries(out[0][2], A, p.CLIENT_ENTRY_FRAMES) == cmd_frames()
    assert list(out)[1:] == queue[5:]  # SUBSCRIBE is never batched: the run ends there


def test_batch_front_joins_unconfirmed_publishes_into_a_batch_too() -> None:
    # One scheme: a client never sends PUBLISH_BATCH (brokers still take it).
    unconfirmed = [publish(b"a", b"1"), publish(b"b", b"2")]
    out = deque([*unconfirmed, ack(b"t", b"k")])
    batch_front(out)
    assert out[0][0] == p.H_BATCH and len(out) == 1
    assert p.unpack_command_entries(out[0][2], A, p.CLIENT_ENTRY_FRAMES) == [
        *unconfirmed,
        ack(b"t", b"k"),
    ]
    batch_front(out)
    assert out[0][0] == p.H_BATCH and len(out) == 1  # a batch at the front is not joined again


def test_core_joins_only_when_the_broker_offered_batch_commands() -> None:
    for offered in (True, False):
        core = ClientCore(A, heartbeat=0)
        core.connect(Future(), T, T)
        [hello_frames] = core.take_outgoing()
        assert p.unpack_hello(hello_frames[2]) == {
            "client": "zmqbus-py",
            "batch_commands": True,
            "streams": True,
        }
        extra = {"batch_commands": True} if offered else {}
        core.receive([p.H_WELCOME, A, p.pack_welcome("b", 1 << 20, **extra)])
        out = deque(cmd_frames())
        core.join_front(out)
        assert (out[0][0] == p.H_BATCH) is offered and len(out) == (1 if offered else 5)


def test_batch_front_keeps_batches_under_the_byte_limit() -> None:
    out = deque(publish(b"t", b"x" * 1000, ref=b"r") for _ in range(200))
    sizes = []
    while out:
        batch_front(out)
        sizes.append(len(out.popleft()[2]))
    assert len(sizes) > 1 and max(sizes) <= BATCH_BYTES


# --- on sockets ------------------------------------------------------------------


def test_pipelined_confirmed_publishes_travel_in_batches() -> None:
    """A window of confirmed publishes from one thread: every one confirmed by the
    subscriber, and far fewer zmq messages through the broker than commands."""
    n, window = 3000, 200
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as pub, Bus(broker.address, ch) as sub:
            s = sub.subscribe("pipe.>", maxsize=n)
            before = broker.stats()["counters"]
            outstanding: deque[Future[Any]] = deque()
            results = []
            for i in range(n):
                if len(outstanding) >= window:
                    results.append(outstanding.popleft().result(10))
                outstanding.append(pub.publish_nowait("pipe.x", b"%d" % i))
            results.extend(f.result(10) for f in outstanding)
            assert all((r.delivered, r.buses) == (1, 1) for r in results)
            assert [s.get(timeout=10).payload for _ in range(n)] == [b"%d" % i for i in range(n)]
            after = broker.stats()["counters"]
    # 3,000 PUBLISHes and 3,000 ACKs in; 9,000 DELIVER, ROUTED and ACKED out.
    assert after["messages_in"] - before["messages_in"] < n
    assert after["messages_out"] - before.get("messages_out", 0) < 2 * n
    assert after["batches_in"] > 0 and after["broker_batches"] > 0


def test_plain_peers_keep_the_plain_protocol_beside_batching_buses() -> None:
    """A raw DEALER that never asked gets plain confirmed DELIVERs and its plain
    ACKs confirm a batching publisher's messages."""
    n = 300
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        try:
            raw.connect(broker.address)
            raw.send_multipart(hello(ch.bytes, "raw"))
            assert raw.poll(5000) and raw.recv_multipart()[0] == p.H_WELCOME
            raw.send_multipart(subscribe("raw.>", S1, ch=ch.bytes))
            assert raw.poll(5000) and raw.recv_multipart()[0] == p.H_OK
            stop = threading.Event()

            def acker() -> None:
                while not stop.is_set():
                    if raw.poll(50):
                        frames = raw.recv_multipart()
                        assert frames[0] == p.H_DELIVER and frames[2]
                        raw.send_multipart(ack(frames[2], ch=ch.bytes))

            t = threading.Thread(target=acker)
            t.start()
            try:
                with Bus(broker.address, ch) as pub:
                    futs = [pub.publish_nowait("raw.x", b"%d" % i) for i in range(n)]
                    assert all(f.result(10).delivered == 1 for f in futs)
            finally:
                stop.set()
                t.join(5)
        finally:
            raw.close(0)
            ctx.term()


def test_publish_nowait_reports_handler_errors_and_validates_at_once() -> None:
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as pub, Bus(broker.address, ch) as sub:

            def handler(msg: Message) -> None:
                raise ValueError("no " + msg.payload.decode())

            sub.subscribe("h.>", handler=handler)
            fut = pub.publish_nowait("h.x", b"thanks")
            with pytest.raises(HandlerError, match="no thanks"):
                fut.result(10)
            assert pub.publish_nowait("nobody.here", b"").result(10).buses == 0
            with pytest.raises(ValueError):
                pub.publish_nowait("bad.*", b"")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_publish_nowait_pipelines_in_batches(loop: str) -> None:
    from zmqbus.aio import Bus as AsyncBus

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    n = 2000
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as sub:
            s = sub.subscribe("aio.>", maxsize=n + 1)

            async def main() -> list[Any]:
                async with AsyncBus(broker.address, ch) as pub:
                    futs = [pub.publish_nowait("aio.x", b"%d" % i) for i in range(n)]
                    # The awaiting form too, interleaved with the futures.
                    extra = await pub.publish("aio.y", b"last")
                    return [*(await asyncio.gather(*futs)), extra]

            results = runner(main())
            assert all(r.delivered == 1 for r in results)
            got = [s.get(timeout=10).payload for _ in range(n + 1)]
            assert got == [b"%d" % i for i in range(n)] + [b"last"]
            assert broker.stats()["counters"]["batches_in"] > 0


@pytest.mark.parametrize("sids", [b"\0\0\0\1", b"\0\0\0\1\0\0\0\2", b"\0\0\0\1" * 20_000])
@pytest.mark.parametrize("body", [b"", b"b", b"x" * 70_000])
def test_unconfirmed_deliver_entry_is_the_command_entry_of_its_deliver(
    sids: bytes, body: bytes
) -> None:
    # The broker's fan-out packs these directly; a client unpacks them as DELIVERs.
    entry = p.pack_unconfirmed_deliver_entry(b"a.b", body, sids)
    assert entry == p.pack_command_entry([p.H_DELIVER, A, b"", b"a.b", body, sids])
    assert p.unpack_command_entries(entry, A, p.BROKER_ENTRY_FRAMES) == [
        [p.H_DELIVER, A, b"", b"a.b", body, sids]
    ]


def test_command_entry_with_an_empty_first_frame_is_the_general_layout() -> None:
    # pack_command_entry's short cut for unconfirmed PUBLISHes lays out the same octets.
    for frames in (publish(b"a.b", b"body"), publish(b"a.b", b""), publish(b"a.b", b"x", ref=b"r")):
        entry = p.pack_command_entry(frames)
        want = bytes((frames[0][3],)) + b"".join(len(f).to_bytes(4, "big") + f for f in frames[2:])
        assert entry == want
        assert p.unpack_command_entries(entry, A, p.CLIENT_ENTRY_FRAMES) == [frames]


def _as_broker_reads(messages: list[list[bytes]]) -> list[Any]:
    return [
        (m[PUBLISH_TOPIC_AT], m[PUBLISH_BODY_AT]) if m[0] == p.H_PUBLISH and not m[2] else m
        for m in messages
    ]


PUBLISH_TOPIC_AT, PUBLISH_BODY_AT = p.PUBLISH_TOPIC, p.PUBLISH_BODY


@settings(max_examples=200, deadline=None)
@given(st.lists(_message, min_size=1, max_size=12), st.integers(0, 40))
def test_unpack_batch_reads_what_unpack_command_entries_reads(
    items: list[tuple[Any, ...]], cut: int
) -> None:
    """The broker's reader of BATCH agrees with the general one: the same
    entries (an unconfirmed PUBLISH as its topic and body), and the same
    refusal of a frame cut short anywhere."""
    messages = [_frames(item, [b"t" * 8]) for item in items]
    frame = b"".join(p.pack_command_entry(m) for m in messages)
    assert p.unpack_batch(frame, A) == _as_broker_reads(
        p.unpack_command_entries(frame, A, p.CLIENT_ENTRY_FRAMES)
    )
    short = frame[: max(0, len(frame) - 1 - cut)]
    outcomes = []
    for read in (
        lambda f: _as_broker_reads(p.unpack_command_entries(f, A, p.CLIENT_ENTRY_FRAMES)),
        lambda f: p.unpack_batch(f, A),
    ):
        try:
            outcomes.append(read(short))
        except ProtocolError as exc:
            outcomes.append((exc.code, exc.detail))
    assert outcomes[0] == outcomes[1]
    with pytest.raises(ProtocolError, match="cannot be batched"):
        p.unpack_batch(frame + p.pack_command_entry(subscribe("x", S1)), A)


_broker_message = st.one_of(
    st.builds(
        lambda token, topic, body, sids: [p.H_DELIVER, A, token, topic, body, sids],
        st.sampled_from([b"", b"\0" * 8]),
        st.sampled_from([b"a.b", b"", b"a.*"]),
        st.binary(max_size=20),
        st.sampled_from([S1, S1 + S2, b"", b"\1"]),
    ),
    st.builds(lambda body: [p.H_ASK, A, b"s" * 9, b"a.b", body, S1], st.binary(max_size=8)),
    st.just([p.H_ROUTED, A, b"r", b"\0\0\0\1"]),
    st.just([p.H_ACKED, A, b"r", p.pack_ack(1, 0)]),
    st.just([p.H_ANSWER, A, b"q", b""]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_broker_message, min_size=1, max_size=12), st.integers(0, 40))
def test_unpack_broker_batch_reads_what_unpack_command_entries_reads(
    messages: list[list[bytes]], cut: int
) -> None:
    """The client's reader of BROKER_BATCH agrees with the general one: the same
    entries (an unconfirmed DELIVER as its topic, body and sids), and the same
    refusal of a frame cut short anywhere."""

    def general(f: bytes) -> list[Any]:
        return [
            tuple(m[3:]) if m[0] == p.H_DELIVER and not m[2] else m
            for m in p.unpack_command_entries(f, A, p.BROKER_ENTRY_FRAMES)
        ]

    frame = b"".join(p.pack_command_entry(m) for m in messages)
    assert p.unpack_broker_batch(frame, A) == general(frame)
    short = frame[: max(0, len(frame) - 1 - cut)]
    outcomes = []
    for read in (general, lambda f: p.unpack_broker_batch(f, A)):
        try:
            outcomes.append(read(short))
        except ProtocolError as exc:
            outcomes.append((exc.code, exc.detail))
    assert outcomes[0] == outcomes[1]
