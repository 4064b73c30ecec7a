"""ClientCore wired to BrokerState in memory, with no sockets and no threads.

``Pair`` plays the part of the sockets: it moves every core's ``outbox`` into
``BrokerState.handle`` and the broker's outbox back to ``core.receive`` by
identity, until nothing moves.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sinks import ListSink

from zmqbus import protocol as p
from zmqbus._client import DELIVERED, DROPPED, MAX_ERROR_TEXT, PENDING, ClientCore
from zmqbus._routing import BrokerState
from zmqbus.errors import (
    AuthenticationError,
    BusClosed,
    ConnectTimeout,
    HandlerError,
    NoResponders,
    ProtocolError,
    PublishTimeout,
    RequestTimeout,
    ZmqbusError,
)
from zmqbus.message import Message, PublishResult, answer_after_handler, reply_of
from zmqbus.protocol import ErrorCode

A = b"A" * 16
B = b"B" * 16
T = 5.0  # timeout used throughout; the clock is a plain float that starts at 0


def sid(n: int) -> bytes:
    return n.to_bytes(4, "big")


class Pair:
    """Cores and a broker, connected by lists.

    Each core's ``send_reply`` hook queues the REPLY in its outbox, as the faces
    do through their I/O thread. Messages for an identity in ``unreachable``
    are handed back to ``BrokerState.send_failed`` instead, as when the socket
    cannot take them (queue full)."""

    def __init__(self, **broker_kwargs: Any) -> None:
        self.broker = BrokerState(**broker_kwargs)
        self.cores: dict[bytes, ClientCore] = {}
        self.unreachable: set[bytes] = set()

    def add(self, ident: bytes, channel: bytes = A, *, connect: bool = True) -> ClientCore:
        core = ClientCore(channel, heartbeat=0)  # heartbeats: tests/test_reliability.py
        self.cores[ident] = core

        def send_reply(token: bytes, body: bytes) -> None:
            core.outbox.append([p.H_REPLY, core.channel, token, body])

        core.send_reply = send_reply
        if connect:
            fut: Future[Any] = Future()
            core.connect(fut, T, T)
            self.pump()
            assert fut.result(0)["max_message_size"] == self.broker.max_message_size
        return core

    def pump(self, limit: int = 100) -> None:
        for _ in range(limit):
            moved = False
            for ident, core in self.cores.items():
                while core.outbox:
                    self.broker.handle(ident, core.outbox.pop(0))
                    moved = True
            for ident, frames in self.broker.take_outgoing():
                moved = True
                core = self.cores.get(ident)
                if ident in self.unreachable:
                    self.broker.send_failed(ident, frames, gone=False)
                elif core is not None:
                    core.receive(list(frames))
            if not moved:
                return
        raise AssertionError("the pair never went quiet")

    def subscribe(self, core: ClientCore, sink: ListSink, queue: str = "") -> None:
        fut: Future[Any] = Future()
        core.subscribe(sink, fut, T, T, queue)
        self.pump()
        assert fut.result(0) is None


def body(payload: bytes = b"payload", headers: dict[str, str] | None = None, ts: int = 0) -> bytes:
    return p.pack_message(uuid.uuid4().bytes, ts, headers or {}, payload)


def publish(core: ClientCore, topic: str, data: bytes | None = None, deadline: float = T) -> Future:
    fut: Future[Any] = Future()
    core.publish(topic.encode(), body() if data is None else data, fut, deadline, T)
    return fut


def sent_commands(core: ClientCore) -> list[bytes]:
    """Header frames of everything the core has queued."""
    return [frames[0] for frames in core.outbox]


# --- connect --------------------------------------------------------------------------


@pytest.mark.parametrize("before", [True, False], ids=["before-connect", "while-joining"])
def test_a_failed_handshake_fails_the_connect_whenever_it_comes(before: bool) -> None:
    # The socket connects as it is made: its handshake can fail before the face
    # has asked the core to connect.
    core = ClientCore(A, client_name="unit/1", heartbeat=0)
    fut: Future[Any] = Future()
    if before:
        core.handshake_failed("the broker refused this client's key (ZAP 400)")
    core.connect(fut, 10.0, 10.0)
    if not before:
        assert not fut.done()
        core.handshake_failed("the broker refused this client's key (ZAP 400)")
    with pytest.raises(AuthenticationError, match="ZAP 400"):
        fut.result(0)
    assert core.counters["handshake_failures"] == 1


def test_connect_welcome_sets_ready_and_max_message_size() -> None:
    pair = Pair(max_message_size=4321, name="test-broker")
    core = ClientCore(A, client_name="unit/1", heartbeat=0)
    pair.cores[b"c"] = core
    assert core.state == "new"
    fut: Future[Any] = Future()
    core.connect(fut, 10.0, 10.0)
    assert core.state == "joining"
    assert sent_commands(core) == [p.H_HELLO]
    # One batching scheme: batches of commands, never batches of messages.
    assert p.unpack_hello(core.outbox[0][2]) == {
        "client": "unit/1",
        "batch_commands": True,
        "streams": True,
    }
    assert core.next_deadline() == 10.0
    pair.pump()
    assert core.state == "ready"
    assert core.max_message_size == 4321
    assert fut.result(0) == {
        "broker": "test-broker",
        "max_message_size": 4321,
        "batch_commands": True,
        "streams": True,
    }
    assert core.batching_commands
    assert core.broker_info == fut.result(0)
    assert core.next_deadline() is None
    with pytest.raises(RuntimeError):
        core.connect(Future(), 1.0, 1.0)


def test_connect_timeout() -> None:
    core = ClientCore(A, heartbeat=0)
    fut: Future[Any] = Future()
    core.connect(fut, 10.0, 10.0)
    core.expire(9.99)
    assert not fut.done()
    core.expire(10.0)
    with pytest.raises(ConnectTimeout) as info:
        fut.result(0)
    assert isinstance(info.value, ConnectionError)
    assert info.value.timeout == 10.0
    assert core.next_deadline() is None


def test_hello_refused_fails_connect() -> None:
    pair = Pair()
    core = pair.add(b"c", connect=False)
    fut: Future[Any] = Future()
    core.connect(fut, T, T)
    core.outbox[0][1] = b"short"  # a channel frame the broker refuses
    pair.pump()
    with pytest.raises(ProtocolError) as info:
        fut.result(0)
    assert info.value.code == ErrorCode.BAD_FRAMES


def test_channel_must_be_16_bytes() -> None:
    with pytest.raises(ProtocolError):
        ClientCore(b"short")


# --- subscribe -----------------------------------------------------------------------


def test_subscribe_completes_on_ok() -> None:
    pair = Pair()
    core = pair.add(b"c")
    sink = ListSink("a.*")
    fut: Future[Any] = Future()
    core.subscribe(sink, fut, T, T)
    assert core.sinks() == [sink]  # registered at once
    assert sent_commands(core) == [p.H_SUBSCRIBE]
    assert not fut.done()
    assert core.pending_count == 1
    assert core.next_deadline() == T
    pair.pump()
    assert fut.result(0) is None
    assert core.pending_count == 0
    assert core.next_deadline() is None
    assert pair.broker.subscription_count() == 1


def test_broker_error_with_ref_fails_that_waiter() -> None:
    pair = Pair()
    core = pair.add(b"c")
    bad: Future[Any] = Future()
    good: Future[Any] = Future()
    core.subscribe(ListSink("a..b"), bad, T, T)  # the core does not validate; the broker does
    core.subscribe(ListSink("a.b"), good, T, T)
    pair.pump()
    with pytest.raises(ProtocolError) as info:
        bad.result(0)
    assert info.value.code == ErrorCode.BAD_TOPIC
    assert info.value.remote is True
    assert good.result(0) is None
    assert core.pending_count == 0
    assert core.counters["broker_errors"] == 0


def test_too_large_publish_fails_with_protocol_error() -> None:
    pair = Pair(max_message_size=100)
    core = pair.add(b"c")
    assert core.max_message_size == 100
    fut = publish(core, "t", b"x" * 101)
    pair.pump()
    with pytest.raises(ProtocolError) as info:
        fut.result(0)
    assert info.value.code == ErrorCode.TOO_LARGE
    # The core keeps working.
    ok = publish(core, "t", body(b""))
    pair.pump()
    assert ok.result(0) == PublishResult(0, 0, 0, 0)


def test_broker_error_without_ref_is_counted() -> None:
    pair = Pair()
    core = pair.add(b"c")
    core.receive(p.encode(p.Error(A, b"", ErrorCode.INTERNAL, "oops")))
    core.receive(p.encode(p.Error(A, b"unknown-ref", ErrorCode.INTERNAL, "oops")))
    assert core.counters["broker_errors"] == 2
    assert core.state == "ready"


# --- publish ------------------------------------------------------------------------


def test_equal_publish_outcomes_give_equal_results_and_different_ones_do_not() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    pair.subscribe(sub, ListSink("a.*"))
    data = p.pack_message(b"\x01" * 16, 1, {}, b"")
    first, second = publish(pub, "a.b", data), publish(pub, "a.c", data)
    nobody = publish(pub, "x", data)
    pair.pump()
    assert first.result(0) == second.result(0) == PublishResult(1, 0, 0, 1)
    assert first.result(0) is second.result(0)  # immutable, so shared
    assert nobody.result(0) == PublishResult(0, 0, 0, 0)


def test_confirmed_publish_counts_across_two_subscriber_cores() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    s1 = pair.add(b"s1")
    s2 = pair.add(b"s2")
    s1_star = ListSink("a.*")
    s1_tail = ListSink("a.>", DROPPED)
    s1_miss = ListSink("b")
    s2_all = ListSink(">")
    s2_exact = ListSink("a.b")
    s2_drop = ListSink("*.b", DROPPED)
    for core, sink in [
        (s1, s1_star),
        (s1, s1_tail),
        (s1, s1_miss),
        (s2, s2_all),
        (s2, s2_exact),
        (s2, s2_drop),
    ]:
        pair.subscribe(core, sink)

    data = p.pack_message(b"\x01" * 16, 1_700_000_000_123_456_789, {"k": "v"}, b"\x00\xff")
    fut = publish(pub, "a.b", data)
    pair.pump()
    assert fut.result(0) == PublishResult(delivered=3, dropped=2, failed=0, buses=2)

    for sink in (s1_star, s1_tail, s2_all, s2_exact, s2_drop):
        assert len(sink.offers) == 1
        msg, ack_id = sink.offers[0]
        assert ack_id is not None
        assert msg.topic == "a.b"
        assert msg.payload == b"\x00\xff"
        assert msg.headers == {"k": "v"}
        assert msg.id == uuid.UUID(bytes=b"\x01" * 16)
        assert msg.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert s1_miss.offers == []
    assert pub.pending_count == 0
    assert pair.broker.pending_confirmations == 0


def test_unconfirmed_publish_sends_no_ack() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    sink = ListSink("t")
    pair.subscribe(sub, sink)
    pub.publish(b"t", body(), None, 0.0, 0.0)
    assert pub.pending_count == 0
    pair.pump()
    assert len(sink.offers) == 1
    assert sink.offers[0][1] is None
    assert pair.broker.counters["stale_acks"] == 0
    assert pair.broker.counters["messages_in"] == 4  # 2 HELLO, SUBSCRIBE, PUBLISH; no ACK


def test_publish_with_no_subscribers_delivers_zero() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    other = pair.add(b"other", B)
    pair.subscribe(other, ListSink(">"))  # another channel does not count
    fut = publish(pub, "a.b")
    pair.pump()
    assert fut.result(0) == PublishResult(0, 0, 0, 0, confirmed=True)
    assert pub.next_deadline() is None


def test_pending_sink_acks_only_after_handler_done() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    handler1 = ListSink("t", PENDING)
    handler2 = ListSink("*", PENDING)
    queue = ListSink(">", DELIVERED)
    for sink in (handler1, handler2, queue):
        pair.subscribe(sub, sink)
    fut = publish(pub, "t")
    pair.pump()
    assert not fut.done()
    assert sub.outbox == []  # no ACK while handlers run
    assert pair.broker.pending_confirmations == 1
    ack_id = handler1.offers[0][1]
    assert ack_id is not None
    assert handler2.offers[0][1] == ack_id == queue.offers[0][1]

    sub.handler_done(ack_id, "ValueError: boom")
    assert sub.outbox == []  # one handler still running
    sub.handler_done(ack_id + 1000, None)  # unknown ack id: ignored
    assert sub.outbox == []
    sub.handler_done(ack_id, None)
    assert sent_commands(sub) == [p.H_ACK]
    pair.pump()
    with pytest.raises(HandlerError) as info:
        fut.result(0)
    assert info.value.errors == ["ValueError: boom"]
    assert info.value.result == PublishResult(delivered=2, dropped=0, failed=1, buses=1)
    assert "boom" in str(info.value)
    # A repeated handler_done is ignored.
    sub.handler_done(ack_id, None)
    assert sub.outbox == []


def test_long_handler_error_text_is_cut() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    handler = ListSink("t", PENDING)
    pair.subscribe(sub, handler)
    fut = publish(pub, "t")
    pair.pump()
    sub.handler_done(handler.offers[0][1], "x" * (MAX_ERROR_TEXT * 10))  # type: ignore[arg-type]
    pair.pump()
    with pytest.raises(HandlerError) as info:
        fut.result(0)
    [text] = info.value.errors
    assert len(text) == MAX_ERROR_TEXT
    assert text.endswith("...")


def test_handler_success_gives_plain_result() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    handler = ListSink("t", PENDING)
    pair.subscribe(sub, handler)
    fut = publish(pub, "t")
    pair.pump()
    sub.handler_done(handler.offers[0][1], None)  # type: ignore[arg-type]
    pair.pump()
    assert fut.result(0) == PublishResult(delivered=1, dropped=0, failed=0, buses=1)


def test_undecodable_body_is_reported_to_the_publisher() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    sink = ListSink("t")
    pair.subscribe(sub, sink)
    fut = publish(pub, "t", b"\xc1 not msgpack")
    pair.pump()
    with pytest.raises(HandlerError) as info:
        fut.result(0)
    assert len(info.value.errors) == 1
    assert info.value.result.buses == 1
    assert sink.offers == []
    assert sub.counters["bad_bodies"] == 1


def test_deliver_without_local_sink_is_acked_empty() -> None:
    core = Pair().add(b"c")
    core.receive(p.encode(p.Deliver(A, b"tok", b"x.y", body(), sid(1) + sid(2))))
    assert core.outbox == [[p.H_ACK, A, b"tok", p.pack_ack(0, 0)]]
    assert core.counters["received"] == 1
    core.outbox.clear()
    core.receive(p.encode(p.Deliver(A, b"", b"x.y", body(), sid(1))))  # no token: no ACK
    assert core.outbox == []


# --- timeouts ------------------------------------------------------------------------


def test_publish_timeout_carries_partial_counts() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    fast = pair.add(b"fast")
    slow = pair.add(b"slow")
    pair.subscribe(fast, ListSink("t"))
    pair.subscribe(fast, ListSink(">", DROPPED))
    handler = ListSink("t", PENDING)
    pair.subscribe(slow, handler)
    fut = publish(pub, "t", deadline=7.0)
    pair.pump()
    assert not fut.done()
    assert pub.next_deadline() == 7.0
    pub.expire(6.999)
    assert not fut.done()
    pub.expire(7.0)
    with pytest.raises(PublishTimeout) as info:
        fut.result(0)
    exc = info.value
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, ZmqbusError)
    assert exc.expected == 2
    assert exc.result == PublishResult(delivered=1, dropped=1, failed=0, buses=1)
    assert exc.timeout == T
    assert pub.counters["publish_timeouts"] == 1
    assert pub.next_deadline() is None

    # The late ACKED is ignored and the core keeps working.
    slow.handler_done(handler.offers[0][1], None)  # type: ignore[arg-type]
    pair.pump()
    assert pub.counters["late_acks"] == 1
    assert pub.counters["protocol_errors"] == 0
    fut2 = publish(pub, "other")  # only fast's ">" (DROPPED) matches
    pair.pump()
    assert fut2.result(0) == PublishResult(delivered=0, dropped=1, failed=0, buses=1)


def test_publish_timeout_before_the_broker_answered() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    fut = publish(pub, "t", deadline=3.0)
    pub.expire(100.0)  # never pumped: no ROUTED
    with pytest.raises(PublishTimeout) as info:
        fut.result(0)
    assert info.value.expected is None
    assert info.value.result == PublishResult(0, 0, 0, 0)
    pair.pump()  # the ROUTED for a timed-out publish is ignored
    assert pub.counters["protocol_errors"] == 0
    assert pub.pending_count == 0


def test_request_timeout() -> None:
    core = Pair().add(b"c")
    fut: Future[Any] = Future()
    core.subscribe(ListSink("t"), fut, 2.0, 2.0)
    core.expire(2.0)
    with pytest.raises(RequestTimeout):
        fut.result(0)


def test_next_deadline() -> None:
    pair = Pair()
    core = pair.add(b"c")
    assert core.next_deadline() is None
    f1 = publish(core, "t", deadline=9.0)
    f2 = publish(core, "t", deadline=4.0)
    f3: Future[Any] = Future()
    core.subscribe(ListSink("t"), f3, 6.0, T)
    assert core.next_deadline() == 4.0
    pair.pump()
    assert f1.done() and f2.done() and f3.done()
    assert core.next_deadline() is None


def test_deadlines_given_out_of_order_expire_in_order() -> None:
    core = Pair().add(b"c")
    deadlines = [5.0, 3.0, 7.0, 3.5, 10.0, 1.0, 7.0]
    futs = [publish(core, "t", deadline=d) for d in deadlines]
    for now in (0.5, 1.0, 3.2, 3.5, 6.0, 7.0, 9.9, 10.0):
        core.expire(now)
        assert [f.done() for f in futs] == [d <= now for d in deadlines], now
        left = [d for d in deadlines if d > now]
        assert core.next_deadline() == (min(left) if left else None)


@pytest.mark.parametrize("first", [5.0, 1e9], ids=["in-order", "out-of-order"])
def test_finished_deadlines_do_not_pile_up_behind_a_pending_one(first: float) -> None:
    pair = Pair()
    core = pair.add(b"c")
    pair.subscribe(core, ListSink(">"))
    stuck = publish(core, "t", deadline=first)  # never sent: stays pending
    core.outbox.clear()
    for _ in range(20):
        futs = [publish(core, "t", deadline=5.0) for _ in range(500)]
        pair.pump()
        assert all(f.done() for f in futs)
    assert not stuck.done()
    assert core.pending_count == 1
    # That their deadline entries do not pile up is tests/test_client_parts.py's.


def test_ok_carrying_a_publish_ref_does_not_lose_the_publish() -> None:
    # A broker answering a confirmed publish's ref with OK is broken, but the
    # publish waiter must still end: at the latest when its deadline passes.
    core = Pair().add(b"c")
    fut = publish(core, "t", deadline=3.0)
    ref = core.outbox[-1][2]
    core.receive(p.encode(p.Ok(A, ref)))
    core.expire(100.0)
    assert fut.done()


# --- unsubscribe / remove --------------------------------------------------------------


def test_unsubscribe_ends_sinks_and_returns_count() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    s1, s2, keep = ListSink("a.*"), ListSink("a.*"), ListSink("a.>")
    for sink in (s1, s2, keep):
        pair.subscribe(sub, sink)
    fut: Future[Any] = Future()
    assert sub.unsubscribe("a.*", fut, T, T) == 2
    assert (s1.ended, s2.ended, keep.ended) == (1, 1, 0)
    assert sub.sinks() == [keep]
    assert sent_commands(sub) == [p.H_UNSUBSCRIBE]
    pair.pump()
    assert fut.result(0) == 2
    assert pair.broker.subscription_count() == 1
    pub.publish(b"a.b", body(), None, 0.0, 0.0)
    pair.pump()
    assert (s1.offers, s2.offers, keep.topics) == ([], [], ["a.b"])
    # Unsubscribing a pattern with no local sinks has nothing to close: 0 at once.
    fut0: Future[Any] = Future()
    assert sub.unsubscribe("nothing", fut0, T, T) == 0
    assert fut0.result(0) == 0
    assert sub.outbox == []


def test_unsubscribe_sends_the_sids_of_the_pattern() -> None:
    pair = Pair()
    sub = pair.add(b"sub")
    for pattern in ("a.*", "b", "a.*"):
        pair.subscribe(sub, ListSink(pattern))
    assert pair.broker.peers[b"sub"].subs == {
        sid(1): ("a.*", ""),
        sid(2): ("b", ""),
        sid(3): ("a.*", ""),
    }
    assert sub.unsubscribe("a.*", Future(), T, T) == 2
    [frames] = sub.outbox
    cmd = p.parse_client(frames)
    assert isinstance(cmd, p.Unsubscribe)
    assert sorted(p.split_sids(cmd.sids)) == [sid(1), sid(3)]
    pair.pump()
    assert pair.broker.peers[b"sub"].subs == {sid(2): ("b", "")}


def test_remove_closes_only_that_sinks_sid() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    s1, s2 = ListSink("t"), ListSink("t")
    pair.subscribe(sub, s1)
    pair.subscribe(sub, s2)
    fut: Future[Any] = Future()
    sub.remove(s1, fut, T, T)
    assert s1.ended == 1
    assert sub.sinks() == [s2]
    # Every subscription has its own sid on the broker: UNSUBSCRIBE closes s1's alone.
    assert sub.outbox == [[p.H_UNSUBSCRIBE, A, sub.outbox[0][2], sid(1)]]
    assert not fut.done()
    pair.pump()
    assert fut.result(0) is None
    assert pair.broker.peers[b"sub"].subs == {sid(2): ("t", "")}
    pub.publish(b"t", body(), None, 0.0, 0.0)
    pair.pump()
    assert (len(s1.offers), len(s2.offers)) == (0, 1)

    # Removing it again, or a sink never added, changes nothing.
    again: Future[Any] = Future()
    sub.remove(s1, again, T, T)
    assert again.result(0) is None
    never: Future[Any] = Future()
    sub.remove(ListSink("t"), never, T, T)
    assert never.result(0) is None
    assert sub.outbox == []
    assert s1.ended == 1

    last: Future[Any] = Future()
    sub.remove(s2, last, T, T)
    assert sub.outbox[0][3] == sid(2)
    pair.pump()
    assert last.result(0) is None
    assert pair.broker.subscription_count() == 0


def test_a_delivery_racing_an_unsubscribe_is_acked_empty() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    sink = ListSink("t")
    pair.subscribe(sub, sink)
    fut = publish(pub, "t")
    # The broker routes the publish before it sees the UNSUBSCRIBE.
    for frames in pub.outbox:
        pair.broker.handle(b"pub", frames)
    pub.outbox.clear()
    sub.remove(sink, Future(), T, T)
    pair.pump()
    assert sink.offers == []
    assert fut.result(0) == PublishResult(0, 0, 0, 1)


# --- close ---------------------------------------------------------------------------


def test_close_fails_pending_ends_sinks_and_answers_handlers() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    handler = ListSink("t", PENDING)
    queue = ListSink("t")
    pair.subscribe(sub, handler)
    pair.subscribe(sub, queue)
    confirmed = publish(pub, "t")
    pair.pump()
    assert not confirmed.done()

    pending_sub: Future[Any] = Future()
    sub.subscribe(ListSink("other"), pending_sub, T, T)  # not pumped: no OK yet
    pending_pub = publish(sub, "x")
    done: Future[Any] = Future()
    sub.close(waiter=done, deadline=T, timeout=T)
    assert sub.state == "closed"
    for fut in (pending_sub, pending_pub):
        with pytest.raises(BusClosed):
            fut.result(0)
    assert handler.ended == 1 and queue.ended == 1
    assert sub.sinks() == []
    # The handler delivery is answered with an error ACK, then DISCONNECT is queued.
    assert sent_commands(sub)[-2:] == [p.H_ACK, p.H_DISCONNECT]
    assert not done.done()
    pair.pump()
    assert done.result(0) is None
    assert b"sub" not in pair.broker.peers

    with pytest.raises(HandlerError) as info:
        confirmed.result(0)
    assert len(info.value.errors) == 1
    assert info.value.result == PublishResult(delivered=1, dropped=0, failed=1, buses=1)

    # A handler finishing after close changes nothing.
    sub.handler_done(handler.offers[0][1], None)  # type: ignore[arg-type]
    assert sub.outbox == []


def test_commands_after_close_are_refused() -> None:
    pair = Pair()
    core = pair.add(b"c")
    core.close()
    assert core.outbox == []  # no waiter: no DISCONNECT
    fut: Future[Any] = Future()
    core.subscribe(ListSink("t"), fut, T, T)
    with pytest.raises(BusClosed):
        fut.result(0)
    fut = Future()
    assert core.unsubscribe("t", fut, T, T) == 0
    with pytest.raises(BusClosed):
        fut.result(0)
    fut = publish(core, "t")
    with pytest.raises(BusClosed):
        fut.result(0)
    with pytest.raises(BusClosed):
        core.publish(b"t", body(), None, 0.0, 0.0)
    assert core.outbox == []
    # Closing again with a waiter just completes it.
    again: Future[Any] = Future()
    core.close(waiter=again)
    assert again.result(0) is None
    assert core.outbox == []


def test_close_with_custom_exception_and_before_welcome() -> None:
    core = ClientCore(A, heartbeat=0)
    hello: Future[Any] = Future()
    core.connect(hello, T, T)
    done: Future[Any] = Future()
    core.close(exc=ConnectionResetError("gone"), waiter=done)
    with pytest.raises(ConnectionResetError):
        hello.result(0)
    assert done.result(0) is None  # never joined: nothing to disconnect
    assert sent_commands(core) == [p.H_HELLO]
    fut: Future[Any] = Future()
    core.subscribe(ListSink("t"), fut, T, T)
    with pytest.raises(ConnectionResetError):
        fut.result(0)


def test_close_skips_waiters_already_done() -> None:
    core = Pair().add(b"c")
    fut = publish(core, "t")
    fut.cancel()
    core.close()  # must not raise InvalidStateError
    assert fut.cancelled()


# --- bad input from the broker -------------------------------------------------------------


def _ready_core_with_publish() -> tuple[ClientCore, Future, bytes]:
    pair = Pair()
    core = pair.add(b"c")
    pair.subscribe(core, ListSink(">"))
    fut = publish(core, "t", deadline=10.0)
    ref = core.outbox[-1][2]
    core.outbox.clear()
    return core, fut, ref


BAD_FROM_BROKER = [
    [],
    [b""],
    [b"junk"],
    [b"ZB\x02\x82", A, b"r"],  # wrong version
    [p.H_OK, A],  # too few frames
    [p.H_OK, b"short", b"r"],
    [p.H_HELLO, A, p.pack_hello("x")],  # a client command
    [p.H_DELIVER, A, b"", b"a..b", b"x", sid(1)],  # bad topic
    [p.H_DELIVER, A, b"", b"\xff", b"x", sid(1)],
    [p.H_DELIVER, A, b"", b"t", b"x"],  # too few frames: the draft without sids
    [p.H_DELIVER, A, b"", b"t", b"x", b""],  # no sids
    [p.H_DELIVER, A, b"", b"t", b"x", b"\0\0\1"],  # a sids frame not a multiple of 4
    [p.H_DELIVER, B, b"", b"t", body(), sid(1)],  # another channel
    [p.H_DELIVER, A, b"k" * 33, b"t", body(), sid(1)],  # token too long
    [p.H_ASK, A, b"k" * 9, b"t", body()],  # too few frames
    [p.H_ASK, A, b"k" * 33, b"t", body(), sid(1)],  # token too long
    [p.H_ASK, B, b"k" * 9, b"t", body(), sid(1)],  # another channel
    [p.H_ASK, A, b"k" * 9, b"a.*", body(), sid(1)],  # bad topic
    [p.H_ASK, A, b"k" * 9, b"t", body(), b"\0\0"],  # bad sids
    [p.H_ANSWER, A, b"r"],
    [p.H_ANSWER, B, b"r", b""],
    [p.H_ANSWER, A, b"r" * 33, b""],
    [p.H_REPLY, A, b"k" * 9, b""],  # a client command
    [p.H_ROUTED, A, b"r", b"\x00\x01"],  # count frame not 4 bytes
    [p.H_ACKED, A],
    [p.H_ERROR, A, b"", b"\x01", b"x", b""],
    [p.H_ERROR, A, b"", b"\x01\x90", b"\xff", b""],
    [p.H_WELCOME, A, b"\xc1"],
]


def test_bad_frames_from_broker_are_counted_and_never_raise() -> None:
    core, fut, ref = _ready_core_with_publish()
    for frames in BAD_FROM_BROKER:
        core.receive(list(frames))
    assert core.counters["protocol_errors"] == len(BAD_FROM_BROKER)
    assert core.state == "ready"
    assert core.outbox == []  # no ACK, no REPLY for anything malformed
    assert not fut.done()
    # The core still works: a proper ROUTED completes the publish.
    core.receive(p.encode(p.Routed(A, ref, 0)))
    assert fut.result(0) == PublishResult(0, 0, 0, 0)


def test_undecodable_acked_counts_as_a_confirmation_with_an_error() -> None:
    core, fut, ref = _ready_core_with_publish()
    core.receive([p.H_ACKED, A, ref, b"\xc1"])
    assert not fut.done()
    core.receive(p.encode(p.Routed(A, ref, 1)))
    with pytest.raises(HandlerError) as info:
        fut.result(0)
    [text] = info.value.errors
    assert text.startswith("undecodable confirmation")
    assert info.value.result == PublishResult(0, 0, 1, 1)
    assert core.counters["protocol_errors"] == 0


def test_ask_without_token_is_a_protocol_error() -> None:
    # parse_broker refuses an ASK with an empty token (400); the fast path must
    # not hand it to a sink as a request whose REPLY the broker would refuse.
    core = Pair().add(b"c")
    sink = ListSink(">")
    core.subscribe(sink, Future(), T, T)
    core.outbox.clear()
    frames = [p.H_ASK, A, b"", b"t", body(), sid(1)]
    with pytest.raises(ProtocolError):
        p.parse_broker(frames)
    core.receive(frames)
    assert sink.offers == []
    assert core.counters["protocol_errors"] == 1


@pytest.mark.parametrize("topic", [b"t", b"a..b"])
def test_deliver_with_overlong_token_is_never_echoed_in_an_ack(topic: bytes) -> None:
    # A DELIVER token longer than MAX_REF_BYTES breaks the protocol; whatever the
    # core does with it, it must not answer with an ACK that itself breaks it.
    core = Pair().add(b"c")
    core.subscribe(ListSink(">"), Future(), T, T)
    core.outbox.clear()
    core.receive([p.H_DELIVER, A, b"k" * (p.MAX_REF_BYTES + 1), topic, body(), sid(1)])
    assert core.counters["protocol_errors"] == 1
    for frames in core.outbox:
        p.parse_client(frames)


def test_unexpected_welcome_is_ignored() -> None:
    core = Pair(max_message_size=500).add(b"c")
    core.receive(p.encode(p.Welcome(A, p.pack_welcome("evil", 7))))
    assert core.max_message_size == 500
    assert core.state == "ready"


_broker_frame = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([A, b"", b"\x00" * 8, b"\x00\x00\x00\x01", b"t", b"\xc1", p.pack_ack(1, 0)]),
    st.sampled_from([sid(1), sid(1) + sid(2), b"\x00" * 9, (1).to_bytes(8, "big")]),
    st.just(body()),
    st.just(p.pack_reply(b"\x01" * 16, 0, {}, b"r")),
)
_broker_frames = st.builds(
    lambda h, rest: [h, *rest],
    st.one_of(st.sampled_from([p.header(c) for c in p.Cmd]), st.binary(max_size=5)),
    st.lists(_broker_frame, max_size=5),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_broker_frames, max_size=6))
def test_random_broker_frames_never_raise(msgs: list[list[bytes]]) -> None:
    core, fut, _ = _ready_core_with_publish()
    for frames in msgs:
        core.receive(frames)
    for frames in core.outbox:  # anything the core answers is valid protocol
        p.parse_client(frames)
    # A well-formed BYE (or ERROR 403) among them rightly starts a reconnect.
    assert core.state in ("ready", "reconnecting")
    core.expire(10.0)
    assert fut.done()


# --- subscription IDs --------------------------------------------------------------------


def test_each_subscribe_opens_a_fresh_sid_with_its_queue() -> None:
    core = Pair().add(b"c")
    core.subscribe(ListSink("a.*"), Future(), T, T)
    core.subscribe(ListSink("a.*"), Future(), T, T, "workers")
    core.subscribe(ListSink("b"), Future(), T, T, "")
    cmds = [p.parse_client(frames) for frames in core.outbox]
    assert [(c.sid, c.pattern, c.queue) for c in cmds] == [  # type: ignore[union-attr]
        (sid(1), b"a.*", b""),
        (sid(2), b"a.*", b"workers"),
        (sid(3), b"b", b""),
    ]
    assert len({c.ref for c in cmds}) == 3  # type: ignore[union-attr]


def test_deliver_goes_to_exactly_the_sids_it_names() -> None:
    # The core does no matching of its own: the broker's sids decide.
    core = Pair().add(b"c")
    s1, s2, s3 = ListSink("t"), ListSink("t"), ListSink(">")
    for sink in (s1, s2, s3):
        core.subscribe(sink, Future(), T, T)
    core.outbox.clear()
    core.receive(p.encode(p.Deliver(A, b"tok", b"t", body(), sid(2))))
    assert [len(s.offers) for s in (s1, s2, s3)] == [0, 1, 0]
    core.receive(p.encode(p.Deliver(A, b"", b"other.topic", body(), sid(1) + sid(3))))
    assert [len(s.offers) for s in (s1, s2, s3)] == [1, 1, 1]
    assert s1.topics == ["other.topic"]  # even if its pattern does not match
    # One ACK per DELIVER, counting every sink it reached; unknown sids are ignored.
    core.receive(p.encode(p.Deliver(A, b"tok2", b"t", body(), sid(3) + sid(9) + sid(1))))
    assert core.outbox == [
        [p.H_ACK, A, b"tok", p.pack_ack(1, 0)],
        [p.H_ACK, A, b"tok2", p.pack_ack(2, 0)],
    ]


@pytest.mark.parametrize("sids", [b"", b"\x00\x00\x01", sid(1) + b"\x00"])
def test_deliver_with_bad_sids_is_a_protocol_error_but_still_confirmed(sids: bytes) -> None:
    core = Pair().add(b"c")
    sink = ListSink("t")
    core.subscribe(sink, Future(), T, T)
    core.outbox.clear()
    core.receive([p.H_DELIVER, A, b"tok", b"t", body(), sids])
    assert sink.offers == []
    assert core.counters["protocol_errors"] == 1
    # The publisher is not left waiting: an ACK with the reason.
    [[head, _, token, ack_body]] = core.outbox
    assert (head, token) == (p.H_ACK, b"tok")
    assert p.unpack_ack(ack_body).errors[0].startswith("subscriber refused delivery")


@pytest.mark.parametrize("head", [p.H_DELIVER, p.H_ASK])
def test_deliver_or_ask_for_another_channel_is_refused_without_an_answer(head: bytes) -> None:
    core = Pair().add(b"c")
    sink = ListSink("t")
    core.subscribe(sink, Future(), T, T)
    core.outbox.clear()
    core.receive([head, B, b"k" * 9, b"t", body(), sid(1)])
    core.receive([head, A, b"k" * 33, b"t", body(), sid(1)])
    assert sink.offers == []
    assert core.outbox == []
    assert core.counters["protocol_errors"] == 2


# --- queue groups -----------------------------------------------------------------------


def _group(pair: Pair, n: int, pattern: str = "jobs.>", result: int = DELIVERED) -> list[ListSink]:
    sinks = []
    for i in range(n):
        core = pair.add(b"m%d" % i)
        sink = ListSink(pattern, result)
        pair.subscribe(core, sink, "workers")
        sinks.append(sink)
    return sinks


def test_queue_group_each_message_reaches_one_member_and_every_plain_subscriber() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    members = _group(pair, 3)
    plain = ListSink("jobs.>")
    pair.subscribe(pair.add(b"plain"), plain)
    results = []
    for i in range(12):
        fut = publish(pub, "jobs.run", body(b"%d" % i))
        pair.pump()
        results.append(fut.result(0))
    # Each publish reached two buses: the plain subscriber and one member.
    assert results == [PublishResult(2, 0, 0, 2)] * 12
    assert len(plain.offers) == 12
    payloads = [m.payload for sink in members for m, _ in sink.offers]
    assert sorted(payloads) == sorted(b"%d" % i for i in range(12))
    assert [len(sink.offers) for sink in members] == [4, 4, 4]


def test_queue_group_member_leaving_reports_its_unconfirmed_delivery() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    busy, other = _group(pair, 2, result=PENDING)
    fut = publish(pub, "jobs.run")
    pair.pump()
    assert len(busy.offers) == 1 and not fut.done()
    # The member's connection is lost before its handler finished.
    del pair.cores[b"m0"]
    pair.broker.drop_peer(b"m0")
    pair.pump()
    with pytest.raises(HandlerError) as info:
        fut.result(0)
    assert info.value.errors == ["subscribing bus left before confirming"]
    assert info.value.result == PublishResult(0, 0, 1, 1)
    # The rest of the group takes the next messages; nothing is redelivered.
    fut2 = publish(pub, "jobs.run")
    pair.pump()
    assert len(other.offers) == 1
    pair.cores[b"m1"].handler_done(other.offers[0][1], None)  # type: ignore[arg-type]
    pair.pump()
    assert fut2.result(0) == PublishResult(1, 0, 0, 1)


def test_queue_group_member_that_cannot_be_reached_counts_as_dropped() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    first, second = _group(pair, 2)
    pair.unreachable.add(b"m0")  # its queue on the broker is full
    fut = publish(pub, "jobs.run")
    pair.pump()
    assert fut.result(0) == PublishResult(delivered=0, dropped=1, failed=0, buses=1)
    assert first.offers == []
    assert pair.broker.pending_confirmations == 0
    # m0 is idle again (nothing outstanding), so rotation carries on normally.
    fut = publish(pub, "jobs.run")
    pair.pump()
    assert fut.result(0) == PublishResult(1, 0, 0, 1)
    assert len(second.offers) == 1


# --- request and reply ------------------------------------------------------------------


def request(core: ClientCore, topic: str, data: bytes | None = None, deadline: float = T) -> Future:
    fut: Future[Any] = Future()
    core.request(topic.encode(), body() if data is None else data, fut, deadline, T)
    return fut


def _responder(pair: Pair, ident: bytes, pattern: str = "svc.>", queue: str = "") -> ListSink:
    sink = ListSink(pattern)
    pair.subscribe(pair.add(ident), sink, queue)
    return sink


def test_request_gets_the_reply_as_a_message() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp")
    data = p.pack_message(b"\x02" * 16, 5, {"k": "v"}, b"ping")
    fut = request(req, "svc.echo", data)
    assert req.outbox[-1][0] == p.H_REQUEST
    assert req.pending_count == 1
    pair.pump()
    [(msg, ack_id)] = resp.offers
    assert ack_id is None  # requests are never ACKed
    assert (msg.topic, msg.payload, msg.headers) == ("svc.echo", b"ping", {"k": "v"})
    assert msg.is_request
    assert not fut.done()
    msg.respond(b"pong", {"h": "1"})
    pair.pump()
    answer = fut.result(0)
    assert isinstance(answer, Message)
    assert (answer.topic, answer.payload, answer.headers) == ("svc.echo", b"pong", {"h": "1"})
    assert not answer.is_request
    assert req.pending_count == 0
    assert req.next_deadline() is None
    assert pair.cores[b"resp"].counters["requests_received"] == 1
    assert pair.broker.counters["replies"] == 1


def test_request_without_responders_raises_no_responders_at_once() -> None:
    pair = Pair()
    req = pair.add(b"req")
    _responder(pair, b"other", "other.>")
    elsewhere = ListSink("svc.>")
    pair.subscribe(pair.add(b"elsewhere", B), elsewhere)  # another channel
    fut = request(req, "svc.x", deadline=100.0)
    pair.pump()
    with pytest.raises(NoResponders) as info:
        fut.result(0)
    assert "svc.x" in str(info.value)
    assert isinstance(info.value, ZmqbusError)
    assert req.pending_count == 0
    assert req.next_deadline() is None


def test_first_answer_wins_and_later_ones_are_counted() -> None:
    pair = Pair()
    req = pair.add(b"req")
    sinks = [_responder(pair, b"r%d" % i) for i in range(3)]
    fut = request(req, "svc.x")
    pair.pump()
    msgs = [sink.offers[0][0] for sink in sinks]
    msgs[2].respond(b"third")
    pair.pump()
    assert fut.result(0).payload == b"third"
    msgs[0].respond(b"first")
    msgs[1].respond(b"second")
    pair.pump()
    assert req.counters["late_replies"] == 2
    assert req.counters["protocol_errors"] == 0


def test_request_to_a_queue_group_asks_one_member() -> None:
    pair = Pair()
    req = pair.add(b"req")
    members = [_responder(pair, b"m%d" % i, "svc", "pool") for i in range(2)]
    plain = _responder(pair, b"plain", "svc")
    for i in range(4):
        fut = request(req, "svc")
        pair.pump()
        plain.offers[-1][0].respond(b"%d" % i)
        pair.pump()
        assert fut.result(0).payload == b"%d" % i
    assert [len(s.offers) for s in members] == [2, 2]
    assert len(plain.offers) == 4
    assert req.counters["late_replies"] == 0  # the members never answered


def test_responder_error_reply_raises_handler_error() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp")
    fut = request(req, "svc.x")
    pair.pump()
    msg = resp.offers[0][0]
    # What a face does when a handler raises on a request.
    answer_after_handler(msg, None, "ValueError: no such account")
    pair.pump()
    with pytest.raises(HandlerError) as info:
        fut.result(0)
    assert info.value.errors == ["ValueError: no such account"]
    assert info.value.result == PublishResult(0, 0, 1, 1)
    # The request is answered: it cannot be answered again.
    with pytest.raises(ZmqbusError):
        msg.respond(b"late")


def test_handler_results_answer_a_request() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp")
    futs = [request(req, "svc.x") for _ in range(3)]
    pair.pump()
    msgs = [m for m, _ in resp.offers]
    answer_after_handler(msgs[0], b"bytes", None)
    answer_after_handler(msgs[1], 42, None)  # not bytes: reported as an error
    answer_after_handler(msgs[2], None, None)  # None: no answer (the requester times out)
    pair.pump()
    assert futs[0].result(0).payload == b"bytes"
    with pytest.raises(HandlerError) as info:
        futs[1].result(0)
    assert info.value.errors[0].startswith("TypeError")
    assert not futs[2].done()
    assert not reply_of(msgs[2]).used  # type: ignore[union-attr]


def test_message_respond_only_once() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp")
    fut = request(req, "svc.x")
    pair.pump()
    msg = resp.offers[0][0]
    msg.respond(b"one")
    with pytest.raises(ZmqbusError, match="already answered"):
        msg.respond(b"two")
    pair.pump()
    assert fut.result(0).payload == b"one"
    assert pair.broker.counters["replies"] == 1
    assert req.counters["late_replies"] == 0


def test_each_subscription_of_a_bus_gets_its_own_answerable_copy() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = pair.add(b"resp")
    s1, s2 = ListSink("svc.>"), ListSink("svc.x")
    pair.subscribe(resp, s1)
    pair.subscribe(resp, s2)
    fut = request(req, "svc.x")
    pair.pump()
    m1, m2 = s1.offers[0][0], s2.offers[0][0]
    assert m1 is not m2 and m1 == m2
    m2.respond(b"2")
    m1.respond(b"1")  # each copy may answer once
    pair.pump()
    assert fut.result(0).payload == b"2"
    assert req.counters["late_replies"] == 1


def test_respond_on_a_message_that_is_not_a_request_raises() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = _responder(pair, b"sub")
    publish(pub, "svc.x")
    pub.publish(b"svc.y", body(), None, 0.0, 0.0)
    pair.pump()
    for msg, _ in sub.offers:
        assert not msg.is_request
        with pytest.raises(ZmqbusError, match="not a request"):
            msg.respond(b"x")
    plain = Message(uuid.uuid4(), "t", b"")
    with pytest.raises(ZmqbusError):
        plain.respond(b"x")
    assert sub.offers and pair.cores[b"sub"].outbox == []


def test_request_message_equality_and_repr_ignore_the_reply_context() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp")
    request(req, "svc.x", p.pack_message(b"\x03" * 16, 0, {"a": "b"}, b"pl"))
    pair.pump()
    msg = resp.offers[0][0]
    same = Message(msg.id, msg.topic, msg.payload, dict(msg.headers), msg.timestamp)
    assert msg.is_request and not same.is_request
    assert msg == same and same == msg
    assert repr(msg) == repr(same)
    assert "reply" not in repr(msg).lower()
    shown = repr(msg)
    # The reply token, as the REPLY that answers the request carries it.
    msg.respond(b"x")
    ((header, _, token, _),) = pair.cores[b"resp"].outbox
    assert header == p.H_REPLY
    assert token.hex() not in shown and repr(token) not in shown
    assert repr(msg) == shown


def test_ask_without_a_send_reply_hook_is_not_answerable() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp_core = pair.add(b"resp")
    resp_core.send_reply = None
    sink = ListSink("svc")
    pair.subscribe(resp_core, sink)
    request(req, "svc")
    pair.pump()
    assert not sink.offers[0][0].is_request


def test_ask_for_sids_closed_meanwhile_or_with_a_bad_body_is_not_answered() -> None:
    core = Pair().add(b"c")
    sink = ListSink("svc")
    core.subscribe(sink, Future(), T, T)
    core.outbox.clear()
    token = b"\x00" * 8 + b"q"
    core.receive(p.encode(p.Ask(A, token, b"svc", body(), sid(9))))
    core.receive(p.encode(p.Ask(A, token, b"svc", b"\xc1", sid(1))))
    assert sink.offers == []
    assert core.outbox == []  # no REPLY: another responder may still answer
    assert core.counters["requests_received"] == 2
    assert core.counters["bad_bodies"] == 1
    assert core.counters["protocol_errors"] == 0


def test_request_timeout_and_late_answer() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp")
    fut = request(req, "svc.x", deadline=7.0)
    pair.pump()
    assert req.next_deadline() == 7.0
    req.expire(6.9)
    assert not fut.done()
    req.expire(7.0)
    with pytest.raises(RequestTimeout) as info:
        fut.result(0)
    assert isinstance(info.value, TimeoutError)
    assert "svc.x" in str(info.value)
    assert req.counters["request_timeouts"] == 1
    resp.offers[0][0].respond(b"too late")
    pair.pump()
    assert req.counters["late_replies"] == 1
    assert req.counters["protocol_errors"] == 0


def test_refused_request_fails_its_waiter() -> None:
    pair = Pair(max_message_size=100)
    req = pair.add(b"req")
    _responder(pair, b"resp", "svc")
    fut = request(req, "svc", b"x" * 101)
    bad_topic = request(req, "a..b")
    pair.pump()
    with pytest.raises(ProtocolError) as info:
        fut.result(0)
    assert info.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        bad_topic.result(0)
    assert info.value.code == ErrorCode.BAD_TOPIC
    assert req.pending_count == 0


def test_answer_with_an_undecodable_body_fails_the_request() -> None:
    core = Pair().add(b"c")
    fut = request(core, "svc")
    ref = core.outbox[-1][2]
    core.receive(p.encode(p.Routed(A, ref, 1)))
    assert not fut.done()
    core.receive(p.encode(p.Answer(A, ref, p.pack_reply(b"\x01" * 16, 0, {}, b"", None)[:-1])))
    with pytest.raises(ProtocolError) as info:
        fut.result(0)
    assert info.value.code == ErrorCode.BAD_BODY
    assert core.pending_count == 0


def test_answer_for_a_publish_ref_is_counted_late_and_changes_nothing() -> None:
    core, fut, ref = _ready_core_with_publish()
    core.receive(p.encode(p.Answer(A, ref, p.pack_reply(b"\x01" * 16, 0, {}, b""))))
    core.receive(p.encode(p.Answer(A, b"never", p.pack_reply(b"\x01" * 16, 0, {}, b""))))
    assert core.counters["late_replies"] == 2
    assert not fut.done()


def test_close_fails_a_pending_request() -> None:
    pair = Pair()
    req = pair.add(b"req")
    _responder(pair, b"resp", "svc")
    fut = request(req, "svc")
    pair.pump()
    req.close()
    with pytest.raises(BusClosed):
        fut.result(0)
    after = request(req, "svc")
    with pytest.raises(BusClosed):
        after.result(0)
    assert req.outbox == []


def test_reply_to_a_requester_that_left_goes_nowhere() -> None:
    pair = Pair()
    req = pair.add(b"req")
    resp = _responder(pair, b"resp", "svc")
    request(req, "svc")
    pair.pump()
    done: Future[Any] = Future()
    req.close(waiter=done, deadline=T, timeout=T)
    pair.pump()
    assert done.result(0) is None
    resp.offers[0][0].respond(b"anyone?")
    pair.pump()
    assert pair.broker.counters["stale_replies"] == 1
    assert pair.cores[b"resp"].counters["broker_errors"] == 0


def test_dropped_notice_adds_to_the_subscriptions_dropped() -> None:
    from concurrent.futures import Future

    from zmqbus._client import ClientCore

    core = ClientCore(b"c" * 16, heartbeat=0)
    core.connect(Future(), 10.0, 10.0)
    core.receive([p.H_WELCOME, b"c" * 16, p.pack_welcome("b", 1 << 20)])

    class Counting(ListSink):
        missed_total = 0

        def missed(self, count: int) -> None:
            self.missed_total += count

    a, b = Counting("a"), Counting("b")
    for sink in (a, b):
        core.subscribe(sink, Future(), 10.0, 10.0)
    sids = [f[3] for f in core.outbox if f[0] == p.H_SUBSCRIBE]
    core.receive(
        [p.H_DROPPED, b"c" * 16, p.pack_dropped({sids[0]: 3, sids[1]: 1, b"zzzz": 9}), bytes(4)]
    )
    assert (a.missed_total, b.missed_total) == (3, 1)
    assert core.counters["dropped_at_broker"] == 13


def test_stored_answers_name_their_stream_and_a_malformed_one_is_refused() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    added: Future[Any] = Future()
    config = {"name": "S", "subjects": ["jobs.>"], "storage": "memory"}
    pub.stream_request("add", {"config": config}, added, T, T)
    pair.pump()
    assert added.result(0)["stream"]["name"] == "S"
    # The first STORED of a stream is parsed in full, later ones by position:
    # both give the stream and the sequence.
    results = []
    for _ in range(3):
        fut = publish(pub, "jobs.a")
        pair.pump()
        results.append(fut.result(0))
    assert [(r.stream, r.seq, r.duplicate) for r in results] == [
        ("S", 1, False),
        ("S", 2, False),
        ("S", 3, False),
    ]
    # A STORED whose duplicate flag is neither 0 nor 1 is a broker's bug: refused
    # and counted, and the publish it names learns nothing from it.
    fut = publish(pub, "jobs.a")
    ref = pub.outbox[-1][2]
    bad = [p.H_STORED, A, ref, b"S", (4).to_bytes(8, "big"), b"\x02"]
    errors = pub.counters["protocol_errors"]
    pub.receive(bad)
    assert pub.counters["protocol_errors"] == errors + 1
    pair.pump()
    assert (fut.result(0).stream, fut.result(0).seq) == ("S", 4)  # the broker's own STORED
