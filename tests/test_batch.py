"""Batches: PUBLISH_BATCH and DELIVER_BATCH, negotiated with ``batch`` in HELLO
and WELCOME. A batch must mean exactly the sequence of unconfirmed PUBLISHes
(and DELIVERs) it carries: same routing, same order, same refusals."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from typing import Any

import pytest
import zmq
from frames import (
    A,
    hello,
    joined,
    publish,
    publish_batch,
    publish_entries,
    subscribe,
    welcome_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sinks import ListSink

from zmqbus import Broker, Bus, Limits
from zmqbus import protocol as p
from zmqbus._client import BATCH_BYTES, ClientCore, batch_front
from zmqbus._routing import BrokerState
from zmqbus.protocol import ErrorCode

T = 5.0


# --- negotiation -----------------------------------------------------------------


@pytest.mark.parametrize("heartbeat", [0, 500])
def test_welcome_offers_batches_only_when_asked(heartbeat: int) -> None:
    state = BrokerState()
    beat = heartbeat or None  # 0: no heartbeat field
    state.handle(b"p", hello(heartbeat=beat))
    assert "batch" not in welcome_of(state)
    state.handle(b"q", hello(batch=False, heartbeat=beat))
    assert "batch" not in welcome_of(state)
    state.handle(b"r", hello(batch=True, heartbeat=beat))
    assert welcome_of(state)["batch"] is True
    # A later HELLO negotiates again.
    state.handle(b"r", hello(heartbeat=beat))
    assert "batch" not in welcome_of(state)
    assert not state.peers[b"r"].batch


def test_hello_batch_must_be_boolean() -> None:
    state = BrokerState()
    state.handle(b"p", hello(batch=1))
    (_, frames) = state.outbox[-1]
    err = p.parse_broker(frames)
    assert isinstance(err, p.Error) and err.code == ErrorCode.BAD_BODY
    assert b"p" not in state.peers


# --- the broker ------------------------------------------------------------------


def test_batch_routes_as_its_publishes_in_order() -> None:
    state = BrokerState()
    joined(state, b"batcher", ("orders.>", 1), ("orders.eu.*", 2), batch=True)
    joined(state, b"plain", ("orders.>", 7))
    joined(state, b"other", ("audit.>", 3), batch=True)
    joined(state, b"pub", batch=True)
    state.handle(
        b"pub", publish_batch(("orders.eu.a", b"1"), ("audit.x", b"2"), ("orders.us.b", b"3"))
    )
    out = state.outbox
    by_peer: dict[bytes, list[list[bytes]]] = {}
    for ident, frames in out:
        by_peer.setdefault(ident, []).append(frames)
    assert set(by_peer) == {b"batcher", b"plain", b"other"}
    # A peer that asked: one DELIVER_BATCH with its entries, in order.
    (frames,) = by_peer[b"batcher"]
    assert frames[:2] == [p.H_DELIVER_BATCH, A]
    got = p.unpack_deliver_entries(frames[2])
    assert got == [
        (b"\0\0\0\1\0\0\0\2", b"orders.eu.a", b"1"),
        (b"\0\0\0\1", b"orders.us.b", b"3"),
    ]
    assert p.unpack_deliver_entries(by_peer[b"other"][0][2]) == [(b"\0\0\0\3", b"audit.x", b"2")]
    # A peer that did not ask: plain unconfirmed DELIVERs, in order.
    assert by_peer[b"plain"] == [
        [p.H_DELIVER, A, b"", b"orders.eu.a", b"1", b"\0\0\0\7"],
        [p.H_DELIVER, A, b"", b"orders.us.b", b"3", b"\0\0\0\7"],
    ]
    assert state.counters["published"] == 3
    assert state.counters["delivered"] == 5


def test_queue_groups_pick_per_entry() -> None:
    state = BrokerState()
    for n in range(3):
        joined(state, b"w%d" % n, ("jobs.>", 1, "workers"), batch=True)
    joined(state, b"pub", batch=True)
    state.handle(b"pub", publish_batch(*[("jobs.email", b"%d" % i) for i in range(9)]))
    counts = {ident: len(p.unpack_deliver_entries(frames[2])) for ident, frames in state.outbox}
    assert sum(counts.values()) == 9
    assert len(counts) == 3  # spread, one member per entry


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (publish_batch(("a.b", b"x"), ("orders.*", b"y")), ErrorCode.BAD_TOPIC),
        ([p.H_PUBLISH_BATCH, A, publish_entries(("a.b", b"x"))[:-1]], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH_BATCH, A, b""], ErrorCode.BAD_FRAMES),
        (publish_batch(("a.b", b"x"), ("a.c", b"y" * 101)), ErrorCode.TOO_LARGE),
        ([p.H_PUBLISH_BATCH, A], ErrorCode.BAD_FRAMES),
    ],
)
def test_a_bad_entry_refuses_the_whole_batch(frames: list[bytes], code: int) -> None:
    state = BrokerState(max_message_size=100)
    joined(state, b"sub", (">", 1), batch=True)
    joined(state, b"pub", batch=True)
    state.handle(b"pub", frames)
    assert len(state.outbox) == 1  # no DELIVER_BATCH, only the ERROR
    (ident, reply) = state.outbox[0]
    err = p.parse_broker(reply)
    assert ident == b"pub" and isinstance(err, p.Error)
    assert err.code == code and err.ref == b""
    assert state.counters["published"] == 0


def test_batch_before_hello_is_not_joined() -> None:
    state = BrokerState()
    state.handle(b"pub", publish_batch(("a.b", b"x")))
    err = p.parse_broker(state.outbox[0][1])
    assert isinstance(err, p.Error) and err.code == ErrorCode.NOT_JOINED


def test_a_dropped_deliver_batch_counts_each_entry_per_sid() -> None:
    state = BrokerState()
    joined(state, b"slow", ("a.>", 1), ("a.b", 2), batch=True)
    joined(state, b"pub", batch=True)
    state.handle(b"pub", publish_batch(("a.b", b"1"), ("a.c", b"2"), ("a.b", b"3")))
    ((ident, frames),) = state.take_outgoing()
    state.send_failed(ident, frames, gone=False)  # the socket could not take it
    assert state.peers[ident].dropped_total == 3
    # The notice goes just before the next message to the peer.
    state.handle(b"pub", publish_batch(("a.b", b"4")))
    (to, notice), (again, _) = state.take_outgoing()
    assert to == again == ident and notice[0] == p.H_DROPPED
    assert p.unpack_dropped(notice[2]) == {b"\0\0\0\1": 3, b"\0\0\0\2": 2}


# --- the client core: one scheme, BATCH and BROKER_BATCH -------------------------


def ready_core() -> ClientCore:
    core = ClientCore(A, heartbeat=0)
    fut: Future[Any] = Future()
    core.connect(fut, T, T)
    # This client offers batches of commands only, never batches of messages.
    assert p.unpack_hello(core.outbox[0][2]) == {
        "client": "zmqbus-py",
        "batch_commands": True,
        "streams": True,
    }
    core.outbox.clear()
    core.receive([p.H_WELCOME, A, p.pack_welcome("b", 1 << 20, batch=True, batch_commands=True)])
    assert fut.result(0)
    return core


def body(payload: bytes) -> bytes:
    return p.pack_message(uuid.uuid4().bytes, time.time_ns(), {"k": "v"}, payload)


def test_core_stops_batching_when_the_broker_is_lost() -> None:
    core = ready_core()
    assert core.batching_commands
    core.receive([p.H_BYE, A])
    assert core.state == "reconnecting" and not core.batching_commands


def deliver(topic: bytes, payload: bytes, sids: bytes, token: bytes = b"") -> list[bytes]:
    return [p.H_DELIVER, A, token, topic, body(payload), sids]


def test_core_delivers_each_entry_of_a_broker_batch_in_order() -> None:
    core = ready_core()
    sinks = {}
    for n, pattern in [(1, "a.>"), (2, "a.b")]:
        sinks[n] = ListSink(pattern)
        core.subscribe(sinks[n], Future(), T, T)
    sid1, sid2 = (f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE)
    core.outbox.clear()
    entries = [
        deliver(b"a.b", b"one", sid1 + sid2),
        deliver(b"a.c", b"two", sid1),
        deliver(b"a.c", b"three", sid1, token=b"\0" * 8),  # confirmed, between unconfirmed ones
        deliver(b"a.b", b"four", sid2),
    ]
    core.receive([p.H_BROKER_BATCH, A, b"".join(p.pack_command_entry(e) for e in entries)])
    assert [(m.topic, m.payload, a) for m, a in sinks[1].offers] == [
        ("a.b", b"one", None),
        ("a.c", b"two", None),
        ("a.c", b"three", 1),
    ]
    assert [(m.topic, m.payload) for m, _ in sinks[2].offers] == [("a.b", b"one"), ("a.b", b"four")]
    assert sinks[1].offers[0][0] is sinks[2].offers[0][0]
    # One ACK, for the one confirmed entry.
    assert [f[0] for f in core.outbox] == [p.H_ACK]


def test_core_refuses_a_malformed_broker_batch_whole_and_a_bad_entry_alone() -> None:
    core = ready_core()
    sink = ListSink(">")
    core.subscribe(sink, Future(), T, T)
    (sid,) = [f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE]
    good = p.pack_command_entry(deliver(b"a.b", b"x", sid))
    core.receive([p.H_BROKER_BATCH, A, good + good[:-1]])  # truncated: none of it
    assert sink.offers == [] and core.counters["protocol_errors"] == 1
    bad_topic = p.pack_command_entry(deliver(b"a.*", b"y", sid))
    bad_sids = p.pack_command_entry(deliver(b"a.b", b"z", sid + b"\1"))
    bad_body = p.pack_command_entry([p.H_DELIVER, A, b"", b"a.b", b"\xc1", sid])
    core.receive([p.H_BROKER_BATCH, A, bad_topic + good + bad_sids + bad_body + good])
    assert [m.payload for m, _ in sink.offers] == [b"x", b"x"]
    assert core.counters["protocol_errors"] == 3 and core.counters["bad_bodies"] == 1


def test_core_ignores_a_deliver_batch_it_never_asked_for() -> None:
    core = ready_core()
    sink = ListSink(">")
    core.subscribe(sink, Future(), T, T)
    (sid,) = [f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE]
    entry = p.pack_deliver_entry(sid, p.pack_publish_entry(b"a.b", body(b"x")))
    core.receive([p.H_DELIVER_BATCH, A, entry])
    assert sink.offers == [] and core.counters["protocol_errors"] == 1


# --- joining the send queue ------------------------------------------------------


@pytest.mark.parametrize(
    "queue",
    [
        [publish("a", b"1")],
        [publish("a", b"1"), subscribe("b", 1)],
        [subscribe("b", 1), publish("a", b"1"), publish("c", b"3")],
        [publish("a", b"x" * BATCH_BYTES), publish("b", b"2")],
    ],
)
def test_batch_front_leaves_what_it_cannot_join(queue: list[list[bytes]]) -> None:
    out = deque(queue)
    batch_front(out)
    assert list(out) == queue


def test_batch_front_stops_at_the_byte_limit() -> None:
    out = deque(publish("t", b"x" * 1000) for _ in range(200))
    batch_front(out)
    first = out[0]
    assert first[0] == p.H_BATCH and len(first[2]) <= BATCH_BYTES
    n = len(p.unpack_command_entries(first[2], A, p.CLIENT_ENTRY_FRAMES))
    entry = len(p.pack_command_entry(publish("t", b"x" * 1000)))
    assert n == BATCH_BYTES // entry and len(out) == 200 - n + 1


def _seen(frames: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    """What one message to a subscriber delivers: (sids, topic, body) each."""
    if frames[0] == p.H_DELIVER:
        return [(frames[5], frames[3], frames[4])]
    if frames[0] == p.H_DELIVER_BATCH:
        return p.unpack_deliver_entries(frames[2])
    if frames[0] == p.H_BROKER_BATCH:
        out = []
        for entry in p.unpack_command_entries(frames[2], A, p.BROKER_ENTRY_FRAMES):
            out.extend(_seen(entry))
        return out
    return []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a.b", "a.c", "x.y", "a.b.c", "a.*"]),
            st.binary(max_size=64),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_batched_queue_routes_as_the_plain_queue(items: list[tuple[str, bytes, bool]]) -> None:
    """Whatever the queue holds, joining it into BATCHes changes no delivery and
    no reply: each subscriber (batches of commands, of messages, or none) gets
    the same messages in the same order, and the publisher the same answers."""

    def deliveries(join: bool) -> tuple[dict[bytes, list[tuple[bytes, bytes, bytes]]], list]:
        state = BrokerState()
        joined(state, b"s1", ("a.>", 1), batch=True)
        joined(state, b"s2", ("a.b", 2), (">", 3), batch=False)
        joined(state, b"s3", ("a.*", 4), ("a.b", 5), batch_commands=True)
        joined(state, b"pub", batch_commands=True)
        out = deque(
            publish(t, b, ref=b"r%d" % i if confirm else b"")
            for i, (t, b, confirm) in enumerate(items)
        )
        seen: dict[bytes, list[tuple[bytes, bytes, bytes]]] = {b"s1": [], b"s2": [], b"s3": []}
        answers: list[Any] = []
        while out:
            if join:
                batch_front(out)
            state.handle(b"pub", out.popleft())
            for ident, frames in state.take_outgoing():
                if ident == b"pub":
                    for msg in _pub_messages(frames):
                        answers.append(p.parse_broker(msg))
                else:
                    seen[ident].extend(_seen(frames))
        return seen, answers

    assert deliveries(True) == deliveries(False)


def _pub_messages(frames: list[bytes]) -> list[list[bytes]]:
    if frames[0] == p.H_BROKER_BATCH:
        return p.unpack_command_entries(frames[2], A, p.BROKER_ENTRY_FRAMES)
    return [frames]


# --- on sockets ------------------------------------------------------------------


def test_buses_batch_end_to_end_and_plain_peers_still_get_every_message() -> None:
    """A burst from a bus reaches a bus (batched) and a raw DEALER that never
    asked for batches (plain DELIVERs), complete and in order."""
    n = 5000
    # The raw peer reads nothing until the burst is over: with the default
    # max_queued_bytes its queue holds 963 messages (frames may be 1 MiB), and
    # it would lose the rest, told by DROPPED. Room for the burst, as an
    # operator whose plain peers read in bursts would give.
    limits = Limits(max_queued_bytes=(n + 100) * ((1 << 20) + 65536))
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        ch = uuid.uuid4()
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        try:
            raw.connect(broker.address)
            raw.send_multipart(hello(ch.bytes, "raw"))
            assert raw.poll(5000)
            assert raw.recv_multipart()[0] == p.H_WELCOME
            raw.send_multipart(subscribe("burst.>", 1, ch=ch.bytes))
            assert raw.poll(5000)
            assert raw.recv_multipart()[0] == p.H_OK
            with Bus(broker.address, ch) as pub, Bus(broker.address, ch) as sub:
                s = sub.subscribe("burst.>", maxsize=n)
                for i in range(n):
                    pub.publish("burst.x", b"%d" % i, confirm=False)
                pub.publish("burst.end", b"", confirm=False)
                got = [s.get(timeout=10).payload for _ in range(n)]
                assert got == [b"%d" % i for i in range(n)]
                assert s.get(timeout=10).topic == "burst.end"
                assert broker.stats()["counters"]["published"] == n + 1
            plain = []
            while len(plain) < n + 1:
                assert raw.poll(10000)
                frames = raw.recv_multipart()
                assert frames[0] == p.H_DELIVER, frames[0]
                plain.append(p.unpack_message(frames[4]).payload)
            assert plain[:n] == [b"%d" % i for i in range(n)]
        finally:
            raw.close(0)
            ctx.term()


def test_a_thread_blocked_in_get_wakes_for_a_batch() -> None:
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as pub, Bus(broker.address, ch) as sub:
            s = sub.subscribe("w.>", maxsize=1000)
            got: list[bytes] = []
            done = threading.Event()

            def reader() -> None:
                for _ in range(300):
                    got.append(s.get(timeout=10).payload)
                done.set()

            t = threading.Thread(target=reader)
            t.start()
            for i in range(300):
                pub.publish("w.x", b"%d" % i, confirm=False)
            assert done.wait(10)
            t.join(5)
            assert got == [b"%d" % i for i in range(300)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_publishes_made_in_one_turn_go_out_as_batches(loop: str) -> None:
    """Unconfirmed publishes made without yielding are sent on the loop's next
    turn, together: complete, in order, and in far fewer messages than publishes."""
    import asyncio

    from zmqbus.aio import Bus as AsyncBus

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    n = 5000
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as sub:
            s = sub.subscribe("burst.>", maxsize=n + 1)

            async def main() -> int:
                async with AsyncBus(broker.address, ch) as pub:
                    before = broker.stats()["counters"]["messages_in"]
                    for i in range(n):
                        await pub.publish("burst.x", b"%d" % i, confirm=False)
                    await pub.publish("burst.end", b"")  # confirmed: all before it routed
                    after: int = broker.stats()["counters"]["messages_in"]
                    return after - before

            messages = runner(main())
            got = [s.get(timeout=10).payload for _ in range(n)]
            assert got == [b"%d" % i for i in range(n)]
            assert s.get(timeout=10).topic == "burst.end"
            # 5,000 small publishes and one confirmation fit in a handful of batches.
            assert messages < n // 50, messages


def test_several_readers_share_a_subscription_without_loss_or_error() -> None:
    """Readers pop without the lock: four threads draining one subscription get
    every message exactly once, and none sees an error from a lost race."""
    n = 20_000
    with Broker("tcp://127.0.0.1:0") as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as pub, Bus(broker.address, ch) as sub:
            s = sub.subscribe("r.>", maxsize=n + 10)
            got: list[list[bytes]] = [[] for _ in range(4)]
            errors: list[BaseException] = []

            def reader(k: int) -> None:
                try:
                    while True:
                        msg = s.get(timeout=10)
                        if msg.topic == "r.end":
                            return
                        got[k].append(msg.payload)
                except BaseException as exc:  # the test fails on any of them
                    errors.append(exc)

            threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for i in range(n):
                pub.publish("r.x", b"%d" % i, confirm=False)
            for _ in threads:
                pub.publish("r.end", b"", confirm=False)
            for t in threads:
                t.join(30)
            assert not errors
            assert sorted(b for part in got for b in part) == sorted(b"%d" % i for i in range(n))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_lone_publish_leaves_at_once_and_the_rest_of_a_turn_joins_the_next(
    loop: str, broker: Broker, channel: uuid.UUID, raw_dealer: Any
) -> None:
    import asyncio

    from zmqbus.aio import Bus as AsyncBus

    runner: Any = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run
    ch = channel.bytes
    sub = raw_dealer()  # a plain peer: one DELIVER per message, whatever the publisher sent
    sub.send_multipart(hello(ch))
    assert sub.recv_multipart()[0] == p.H_WELCOME
    sub.send_multipart(subscribe("t", 1, ch=ch))
    assert sub.recv_multipart()[0] == p.H_OK

    def payload() -> bytes:
        frames = sub.recv_multipart()
        assert frames[0] == p.H_DELIVER
        return p.unpack_message(frames[4]).payload

    async def main() -> None:
        async with AsyncBus(broker.address, channel) as pub:
            await asyncio.sleep(0)  # let any send the connection scheduled go first
            await pub.publish("t", b"1", confirm=False)
            # The loop has not turned since (publish does not yield), so only a send
            # made inside publish() can reach the subscriber; poll blocks the loop.
            assert sub.poll(5000)
            assert payload() == b"1"
            await pub.publish("t", b"2", confirm=False)
            await pub.publish("t", b"3", confirm=False)
            assert not sub.poll(100)  # the rest of this turn waits for the next one
            before = broker.stats()["counters"]["messages_in"]
            await asyncio.sleep(0)
            assert [payload(), payload()] == [b"2", b"3"]
            assert broker.stats()["counters"]["messages_in"] == before + 1  # one message: a batch

    runner(main())
