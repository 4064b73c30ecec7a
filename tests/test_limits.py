"""The broker's limits: each bound holds, its refusal is the documented ERROR,
and it is counted in STATS ("refused"); the fast tier's small version of each
hostile probe (the slow tier is tests/test_hostile.py)."""

from __future__ import annotations

import resource
import time
import uuid

import pytest
import zmq
from brokers import BrokerProcess, free_port
from frames import A, B, ack, batch, hello, joined, publish, publish_batch, subscribe, take

from zmqbus import Broker, Bus, LimitReached, Limits, ProtocolError
from zmqbus import protocol as p
from zmqbus._routing import HELD_REPLIES, BrokerState
from zmqbus._wire import recv_routed
from zmqbus.admin import broker_stats

pytestmark = pytest.mark.timeout(60)


def _errors(state: BrokerState) -> list[p.Error]:
    return [cmd for _, cmd in take(state) if isinstance(cmd, p.Error)]


def test_limits_are_checked_when_made() -> None:
    assert Limits().max_peers == 10_000
    with pytest.raises(ValueError, match="max_peers must be at least 1"):
        Limits(max_peers=0)
    with pytest.raises(TypeError, match="max_channels must be an int"):
        Limits(max_channels=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must be a zmqbus\.Limits"):
        Broker("tcp://127.0.0.1:0", limits={"max_peers": 3})  # type: ignore[arg-type]
    assert Limits(max_peers=5).replace(max_channels=2).as_dict()["max_channels"] == 2


def test_peers_past_max_peers_get_503_and_leave_nothing() -> None:
    state = BrokerState(limits=Limits(max_peers=2))
    joined(state, b"a")
    joined(state, b"b", ch=B)
    state.handle(b"c", hello())
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.CAPACITY and "max_peers" in err.text
    assert set(state.peers) == {b"a", b"b"} and state.refused["max_peers"] == 1
    # A joined peer may say HELLO again (it takes no new room).
    state.handle(b"a", hello())
    assert isinstance(take(state)[0][1], p.Welcome)
    # Room again once a peer leaves.
    state.drop_peer(b"b")
    joined(state, b"c")


def test_a_new_channel_past_max_channels_gets_503() -> None:
    state = BrokerState(limits=Limits(max_channels=1))
    joined(state, b"a", ch=A)
    joined(state, b"b", ch=A)  # the same channel takes no new room
    state.handle(b"c", hello(B))
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.CAPACITY and "max_channels" in err.text
    assert set(state.channels) == {A} and b"c" not in state.peers


def test_subscriptions_per_peer_and_per_channel_are_bounded() -> None:
    state = BrokerState(
        limits=Limits(max_subscriptions_per_peer=3, max_subscriptions_per_channel=5)
    )
    joined(state, b"a", ("t.1", 1), ("t.2", 2), ("t.3", 3))
    state.handle(b"a", subscribe("t.4", 4, ref=b"r4"))
    (err,) = _errors(state)
    assert (err.code, err.ref) == (p.ErrorCode.LIMIT_REACHED, b"r4")
    assert "max_subscriptions_per_peer" in err.text
    # The same sid again is no new subscription: still answered OK.
    state.handle(b"a", subscribe("t.3", 3))
    assert take(state) == [(b"a", p.Ok(A, b"s"))]
    joined(state, b"b", ("t.1", 1), ("t.2", 2))
    state.handle(b"b", subscribe("t.3", 3, ref=b"r3"))
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.LIMIT_REACHED and "max_subscriptions_per_channel" in err.text
    assert state.subscription_count() == 5
    assert state.refused == {"max_subscriptions_per_peer": 1, "max_subscriptions_per_channel": 1}
    # A peer on another channel has its own channel's room.
    joined(state, b"c", ("t.1", 1), ch=B)


def test_pattern_tokens_are_bounded() -> None:
    state = BrokerState(limits=Limits(max_pattern_tokens=3))
    joined(state, b"a", ("a.*.>", 1))
    state.handle(b"a", subscribe("a.b.c.d", 2))
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.LIMIT_REACHED and "max_pattern_tokens" in err.text
    assert state.subscription_count() == 1


def test_pending_confirmations_past_the_bound_expire_oldest_first_into_the_result() -> None:
    state = BrokerState(limits=Limits(max_pending_per_peer=2))
    joined(state, b"sub", ("t", 1))
    joined(state, b"pub")
    tokens = []
    for i in range(3):
        state.handle(b"pub", publish("t", ref=b"r%d" % i))
        for to, cmd in take(state):
            if isinstance(cmd, p.Deliver):
                tokens.append(cmd.token)
            elif isinstance(cmd, p.Acked):
                # The third delivery expired the first: its publisher is told, as an error.
                assert (i, to, cmd.ref) == (2, b"pub", b"r0")
                result = p.unpack_ack(cmd.body)
                assert (result.delivered, result.dropped) == (0, 0) and result.errors
                assert "max_pending_per_peer" in result.errors[0]
    assert list(state.peers[b"sub"].outstanding) == tokens[1:]
    assert state.refused["max_pending_per_peer"] == 1
    assert state.counters["expired_confirmations"] == 1
    # Its late ACK is stale; the others still confirm.
    state.handle(b"sub", ack(tokens[0]))
    assert take(state) == [] and state.counters["stale_acks"] == 1
    state.handle(b"sub", ack(tokens[1]))
    ((to, cmd),) = take(state)
    assert to == b"pub" and isinstance(cmd, p.Acked) and cmd.ref == b"r1"
    assert state.pending_confirmations == 1


def test_batches_past_max_batch_entries_are_refused_whole() -> None:
    state = BrokerState()
    joined(state, b"sub", ("t", 1))
    joined(state, b"pub", batch_commands=True, batch=True)
    n = p.MAX_BATCH_ENTRIES
    state.handle(b"pub", publish_batch(*[(b"t", b"x")] * (n + 1)))
    state.handle(b"pub", batch(*[publish("t", b"x")] * (n + 1)))
    errors = _errors(state)
    assert [e.code for e in errors] == [p.ErrorCode.TOO_LARGE] * 2
    assert state.counters["delivered"] == 0 and state.refused["max_batch_entries"] == 2
    # At the bound, all of it is routed.
    state.handle(b"pub", batch(*[publish("t", b"x")] * n))
    assert state.counters["delivered"] == n


def test_the_broker_never_joins_more_than_max_batch_entries_into_one_batch() -> None:
    state = BrokerState()
    joined(state, b"pub", batch_commands=True, batch=True)
    # ROUTEDs for publishes to nobody: entries of a few bytes, so the count binds
    # before the bytes do.
    n = p.MAX_BATCH_ENTRIES + 10
    for _ in range(n):
        state.handle(b"pub", publish("t", b"", ref=b"r"))
    sizes = []
    for _, frames in state.take_outgoing():
        assert frames[0] == p.H_BROKER_BATCH
        entries = p.unpack_command_entries(frames[2], A, p.BROKER_ENTRY_FRAMES)
        sizes.append(len(entries))
    assert sum(sizes) == n and max(sizes) == p.MAX_BATCH_ENTRIES


def test_stats_are_limited_per_peer_and_per_second() -> None:
    state = BrokerState(limits=Limits(stats_per_second=2))
    stats = [p.H_STATS, b"", b"q"]
    for _ in range(5):
        state.handle(b"x", stats, 10.0)
    got = take(state)
    # Two answered, the third refused, the rest of that second dropped unanswered.
    assert [type(cmd) for _, cmd in got] == [p.StatsReply, p.StatsReply, p.Error]
    assert got[2][1].code == p.ErrorCode.LIMIT_REACHED  # type: ignore[union-attr]
    state.handle(b"y", stats, 10.5)  # another peer has its own share
    state.handle(b"x", stats, 11.0)  # a second later, so has this one
    assert [type(cmd) for _, cmd in take(state)] == [p.StatsReply, p.StatsReply]
    info = p.unpack_stats(p.pack_stats(state.stats()))  # as STATS_REPLY carries it
    assert info["refused"] == {"stats_per_second": 3}
    assert info["limits"]["stats_per_second"] == 2


def test_stats_reflect_peers_at_once_and_counters_within_stats_fresh() -> None:
    state = BrokerState()
    stats = [p.H_STATS, b"", b"q"]

    def ask(now: float) -> dict[str, object]:
        state.handle(b"op", stats, now)
        ((_, cmd),) = take(state)
        assert isinstance(cmd, p.StatsReply)
        return p.unpack_stats(cmd.body)

    assert ask(1.0)["peers"] == 0
    state.handle(b"a", hello(), 1.01)
    state.take_outgoing()
    assert ask(1.02)["peers"] == 1  # a peer came: a fresh snapshot
    state.handle(b"a", publish("t"), 1.03)
    assert "published" not in ask(1.04)["counters"]  # type: ignore[operator]
    assert ask(1.2)["counters"]["published"] == 1  # type: ignore[index]


def test_slow_peers_come_from_those_that_lost_messages() -> None:
    state = BrokerState()
    joined(state, b"slow", ("t", 1))
    joined(state, b"ok", ("t", 1))
    joined(state, b"pub")
    state.handle(b"pub", publish("t"))
    for ident, frames in state.take_outgoing():
        if ident == b"slow":
            state.send_failed(ident, frames, gone=False)
    assert state.stats()["slow_peers"] == {state.label(b"slow"): 1}
    # Named, not by its routing id: a reader must not learn the ids libzmq gives.
    assert state.label(b"slow") != b"slow".hex() and state.label(b"slow") != state.label(b"ok")
    assert BrokerState().label(b"slow") != state.label(b"slow")  # keyed per broker
    state.drop_peer(b"slow")
    assert state.stats()["slow_peers"] == {}


def test_topic_cache_stays_within_its_bytes() -> None:
    limit = 20_000
    state = BrokerState(limits=Limits(topic_cache_bytes=limit))
    joined(state, b"sub", *[(">", n) for n in range(1, 51)])
    joined(state, b"other", (">", 1), ch=B)
    joined(state, b"pub")
    joined(state, b"pub2", ch=B)
    for i in range(500):
        state.handle(b"pub", publish(f"t.{i}"))
        state.handle(b"pub2", publish(f"t.{i}", ch=B))
        used = state.stats()["topic_cache_bytes"]
        assert 0 < used <= limit  # type: ignore[operator]
    state.take_outgoing()
    # One entry bigger than the whole budget is routed, never cached.
    tiny = BrokerState(limits=Limits(topic_cache_bytes=100))
    joined(tiny, b"sub", ("t", 1))
    joined(tiny, b"pub")
    tiny.handle(b"pub", publish("t"))
    assert len(take(tiny)) == 1 and tiny.stats()["topic_cache_bytes"] == 0
    # A channel that empties gives its bytes back.
    state.drop_peer(b"other")
    state.drop_peer(b"pub2")
    assert all(ch.cache_bytes >= 0 for ch in state.channels.values())
    assert state.stats()["topic_cache_bytes"] == sum(
        ch.cache_bytes for ch in state.channels.values()
    )


def test_replies_a_full_queue_refuses_are_held_and_sent_in_order() -> None:
    state = BrokerState()
    joined(state, b"a")
    state.handle(b"a", subscribe("t.1", 1, ref=b"s1"), 1.0)
    ((ident, frames),) = state.take_outgoing()
    state.send_failed(ident, frames, gone=False)  # the OK met a full queue
    assert state.counters["dropped_hwm"] == 0 and state.counters["replies_held"] == 1
    assert state.due() == pytest.approx(1.05)
    # A later reply waits behind it; nothing goes before the retry is due.
    state.handle(b"a", subscribe("t.2", 2, ref=b"s2"), 1.01)
    assert state.take_outgoing() == []
    state.tick(1.06)
    got = take(state)
    assert got == [(b"a", p.Ok(A, b"s1")), (b"a", p.Ok(A, b"s2"))]


def test_a_peer_that_never_reads_its_replies_is_forgotten() -> None:
    state = BrokerState()
    joined(state, b"a")
    joined(state, b"pub")
    for _ in range(HELD_REPLIES + 1):
        state.handle(b"a", subscribe("t", 1, ref=b"r"), 1.0)
        for ident, frames in state.take_outgoing():
            state.send_failed(ident, frames, gone=False)
    assert b"a" not in state.peers and state.refused["held_replies"] == 1
    assert state.counters["replies_lost"] == HELD_REPLIES + 1


def test_idle_peers_without_heartbeats_are_probed_and_gone_ones_forgotten() -> None:
    state = BrokerState(limits=Limits(idle_probe_seconds=10))
    state.handle(b"gone", hello(), 0.0)
    state.handle(b"live", hello(), 0.0)
    state.take_outgoing()
    assert state.tick(5.0) == 10.0
    state.handle(b"live", publish("t"), 9.0)
    assert state.tick(10.0) == 20.0
    out = state.take_outgoing()
    # Only the peer silent for the whole interval is probed.
    assert out == [(b"gone", [p.H_BROKER_HEARTBEAT, A])]
    state.send_failed(*out[0], gone=True)  # EHOSTUNREACH: its connection is gone
    assert set(state.peers) == {b"live"} and state.counters["idle_probes"] == 1


@pytest.mark.timeout(60)
def test_a_vanished_peer_without_heartbeats_is_forgotten_by_the_running_broker() -> None:
    with Broker("tcp://127.0.0.1:0", limits=Limits(idle_probe_seconds=1)) as broker:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(broker.address)
        sock.send_multipart(hello(A))
        assert sock.recv_multipart()[0] == p.H_WELCOME
        assert broker.stats()["peers"] == 1
        sock.close(0)  # no DISCONNECT, no heartbeats
        # Nothing to wait on but the broker's own state: polled, with a deadline
        # well past the two probe intervals it may take.
        end = time.monotonic() + 10.0
        while broker.stats()["peers"]:
            assert time.monotonic() < end, "the vanished peer was never forgotten"
            time.sleep(0.05)
        counters = broker.stats()["counters"]
        assert counters["unroutable"] == 1 and counters["idle_probes"] >= 1


def test_the_running_broker_refuses_at_its_limits_with_typed_errors() -> None:
    limits = Limits(max_peers=2, max_subscriptions_per_peer=2)
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        ch = uuid.uuid4()
        with Bus(broker.address, ch) as one, Bus(broker.address, ch) as two:
            one.subscribe("a")
            one.subscribe("b")
            with pytest.raises(LimitReached) as info:
                one.subscribe("c")
            assert info.value.code == 429 and isinstance(info.value, ProtocolError)
            with pytest.raises(LimitReached) as full:
                Bus(broker.address, ch, connect_timeout=5.0)
            assert full.value.code == 503
            two.publish("a", b"x")
        stats = broker.stats()
        assert stats["refused"] == {"max_subscriptions_per_peer": 1, "max_peers": 1}
        assert stats["limits"]["max_peers"] == 2


def test_the_broker_command_takes_every_limit() -> None:
    proc = BrokerProcess(
        f"tcp://127.0.0.1:{free_port()}", "--max-subscriptions-per-peer", "1", "--max-peers", "5"
    )
    proc.start()
    try:
        with Bus(proc.address, uuid.uuid4()) as bus:
            bus.subscribe("a")
            with pytest.raises(LimitReached, match="max_subscriptions_per_peer is 1"):
                bus.subscribe("b")
            stats = broker_stats(proc.address)
            assert stats["limits"]["max_peers"] == 5
            assert stats["limits"]["max_pattern_tokens"] == Limits().max_pattern_tokens
    finally:
        proc.stop()


def test_frames_past_max_frames_are_dropped_while_reading() -> None:
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send_multipart([b"x" * 10] * 1000)
        dealer.send_multipart([b"ok"])
        frames = recv_routed(router)
        # The identity, MAX_FRAMES frames, and one empty marker: never a valid count.
        assert len(frames) == 1 + p.MAX_FRAMES + 1 and frames[-1] == b""
        assert recv_routed(router)[1:] == [b"ok"]  # the next message starts clean
    finally:
        router.close(0)
        dealer.close(0)


def test_broker_raises_its_descriptor_limit_and_keeps_its_connections_under_it() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite descriptor limit")
    try:
        limits = Limits(max_peers=hard + 1000, max_connections=hard + 1000)
        with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
            assert broker.limits.max_connections == (hard - 64) * 9 // 10
            assert broker.limits.max_peers <= broker.limits.max_connections
            assert broker.stats()["limits"]["max_peers"] == broker.limits.max_peers
            assert broker._state.connections.capacity == broker.limits.max_connections
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_hello_body_that_decodes_into_many_objects_is_refused_cheaply() -> None:
    import msgpack

    state = BrokerState()
    body = msgpack.packb({"client": "t", "junk": [[]] * 200_000})
    state.handle(b"a", [p.H_HELLO, A, body])
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.BAD_BODY and not state.peers


def test_a_new_topic_costs_its_patterns_not_their_sids() -> None:
    # 20,000 sids of one peer on ">": every topic shares one packed sids frame,
    # made once, instead of a sort and join of 20,000 sids per new topic.
    state = BrokerState(limits=Limits(max_subscriptions_per_peer=20_001))
    joined(state, b"sub")
    for n in range(1, 20_001):
        state.handle(b"sub", subscribe(">", n))
    state.take_outgoing()
    channel = state.channels[A]
    first = channel.targets(b"a.1")[0]
    second = channel.targets(b"b.2")[0]
    assert first[0][1] is second[0][1] and len(first[0][1]) == 20_000 * p.SID_BYTES
    # Two patterns matching: merged, each sid once.
    state.handle(b"sub", subscribe("a.*", 20_001))
    state.take_outgoing()
    ((ident, sids),) = channel.targets(b"a.1")[0]
    assert ident == b"sub" and len(sids) == 20_001 * p.SID_BYTES
    assert len(set(p.split_sids(sids))) == 20_001


def test_the_high_water_marks_keep_a_queue_within_max_queued_bytes() -> None:
    from zmqbus.limits import queue_messages

    assert queue_messages(Limits(), 1 << 20, 100_000) == (1 << 30) // ((1 << 20) + 65536)
    assert queue_messages(Limits(), 1000, 10_000) == 10_000  # small frames: hwm binds
    assert queue_messages(Limits(max_queued_bytes=1), 1 << 20, 100) == 1
    limits = Limits(max_queued_bytes=10 * ((1 << 20) + 65536))
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        # The broker's socket is its own: what a peer sees is the bound at work.
        ctx = zmq.Context.instance()
        ch = uuid.uuid4().bytes
        sub = ctx.socket(zmq.DEALER)
        pub = ctx.socket(zmq.DEALER)
        try:
            sub.setsockopt(zmq.RCVHWM, 1)
            for s in (sub, pub):
                s.setsockopt(zmq.LINGER, 0)
                s.connect(broker.address)
                s.send_multipart(hello(ch))
                assert s.recv_multipart()[0] == p.H_WELCOME
            sub.send_multipart(subscribe("t", 1, ch=ch))
            assert sub.recv_multipart()[0] == p.H_OK
            body = b"x" * 500_000
            for _ in range(200):  # 100 MB to a subscriber that reads nothing
                pub.send_multipart(publish("t", body, ch=ch))
            # The OK to DISCONNECT comes once the broker has handled all 200 (a
            # reply is held, never dropped, however small the queue).
            pub.send_multipart([p.H_DISCONNECT, ch, b"d"])
            while pub.recv_multipart()[0] != p.H_OK:
                pass
            dropped = broker.stats()["counters"]["dropped_hwm"]
            # At most 10 in its queue, a few in flight in the sockets: the rest dropped.
            assert dropped >= 150, dropped
        finally:
            sub.close(0)
            pub.close(0)
