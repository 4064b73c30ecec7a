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

from zmqbus import protocol as p
from zmqbus._client import DELIVERED, DROPPED, PENDING, ClientCore
from zmqbus._routing import BrokerState
from zmqbus.errors import (
    BusClosed,
    ConnectTimeout,
    HandlerError,
    ProtocolError,
    PublishTimeout,
    RequestTimeout,
    ZmqbusError,
)
from zmqbus.message import Message, PublishResult
from zmqbus.protocol import ErrorCode

A = b"A" * 16
B = b"B" * 16
T = 5.0  # timeout used throughout; the clock is a plain float that starts at 0


class ListSink:
    """A local subscription that records offers and answers with a fixed result."""

    def __init__(self, pattern: str, result: int = DELIVERED) -> None:
        self.pattern = pattern
        self.result = result
        self.offers: list[tuple[Message, int | None]] = []
        self.ended = 0

    def offer(self, message: Message, ack_id: int | None) -> int:
        self.offers.append((message, ack_id))
        return self.result

    def end(self) -> None:
        self.ended += 1

    @property
    def topics(self) -> list[str]:
        return [m.topic for m, _ in self.offers]


class Pair:
    """Cores and a broker, connected by lists."""

    def __init__(self, **broker_kwargs: Any) -> None:
        self.broker = BrokerState(**broker_kwargs)
        self.cores: dict[bytes, ClientCore] = {}

    def add(self, ident: bytes, channel: bytes = A, *, connect: bool = True) -> ClientCore:
        core = ClientCore(channel)
        self.cores[ident] = core
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
            out = list(self.broker.outbox)
            self.broker.outbox.clear()
            for ident, frames in out:
                moved = True
                core = self.cores.get(ident)
                if core is not None:
                    core.receive(list(frames))
            if not moved:
                return
        raise AssertionError("the pair never went quiet")

    def subscribe(self, core: ClientCore, sink: ListSink) -> None:
        fut: Future[Any] = Future()
        core.subscribe(sink, fut, T, T)
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


def test_connect_welcome_sets_ready_and_max_message_size() -> None:
    pair = Pair(max_message_size=4321, name="test-broker")
    core = ClientCore(A, client_name="unit/1")
    pair.cores[b"c"] = core
    assert core.state == "new"
    fut: Future[Any] = Future()
    core.connect(fut, 10.0, 10.0)
    assert core.state == "joining"
    assert sent_commands(core) == [p.H_HELLO]
    assert p.unpack_hello(core.outbox[0][2]) == {"client": "unit/1"}
    assert core.next_deadline() == 10.0
    pair.pump()
    assert core.state == "ready"
    assert core.max_message_size == 4321
    assert fut.result(0) == {"broker": "test-broker", "max_message_size": 4321}
    assert core.broker_info == fut.result(0)
    assert core.next_deadline() is None
    with pytest.raises(RuntimeError):
        core.connect(Future(), 1.0, 1.0)


def test_connect_timeout() -> None:
    core = ClientCore(A)
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
    core.receive(p.encode(p.Deliver(A, b"tok", b"x.y", body())))
    assert core.outbox == [[p.H_ACK, A, b"tok", p.pack_ack(0, 0)]]
    assert core.counters["received"] == 1


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
    # Unsubscribing a pattern with no local sinks still asks the broker, and counts 0.
    fut0: Future[Any] = Future()
    assert sub.unsubscribe("nothing", fut0, T, T) == 0
    pair.pump()
    assert fut0.result(0) == 0


def test_remove_one_of_two_sinks_sends_no_unsubscribe() -> None:
    pair = Pair()
    pub = pair.add(b"pub")
    sub = pair.add(b"sub")
    s1, s2 = ListSink("t"), ListSink("t")
    pair.subscribe(sub, s1)
    pair.subscribe(sub, s2)
    fut: Future[Any] = Future()
    sub.remove(s1, fut, T, T)
    assert fut.result(0) is None  # done at once
    assert sub.outbox == []
    assert s1.ended == 1
    assert sub.sinks() == [s2]
    pub.publish(b"t", body(), None, 0.0, 0.0)
    pair.pump()
    assert (len(s1.offers), len(s2.offers)) == (0, 1)

    # Removing it again, or a sink never added, changes nothing.
    again: Future[Any] = Future()
    sub.remove(s1, again, T, T)
    assert again.result(0) is None
    assert sub.outbox == []
    assert s1.ended == 1

    # The last one goes: now UNSUBSCRIBE is sent and the waiter waits for OK.
    last: Future[Any] = Future()
    sub.remove(s2, last, T, T)
    assert sent_commands(sub) == [p.H_UNSUBSCRIBE]
    assert not last.done()
    pair.pump()
    assert last.result(0) is None
    assert pair.broker.subscription_count() == 0


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
    core = ClientCore(A)
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
    [p.H_DELIVER, A, b"", b"a..b", b"x"],  # bad topic
    [p.H_DELIVER, A, b"", b"\xff", b"x"],
    [p.H_DELIVER, A, b"", b"t"],  # too few frames
    [p.H_ROUTED, A, b"r", b"\x00\x01"],  # count frame not 4 bytes
    [p.H_ACKED, A],
    [p.H_ERROR, A, b"", b"\x01", b"x"],
    [p.H_ERROR, A, b"", b"\x01\x90", b"\xff"],
    [p.H_WELCOME, A, b"\xc1"],
]


def test_bad_frames_from_broker_are_counted_and_never_raise() -> None:
    core, fut, ref = _ready_core_with_publish()
    for frames in BAD_FROM_BROKER:
        core.receive(list(frames))
    # An ACKED for the pending publish whose body is not a valid ack.
    core.receive([p.H_ACKED, A, ref, b"\xc1"])
    assert core.counters["protocol_errors"] == len(BAD_FROM_BROKER) + 1
    assert core.state == "ready"
    assert core.outbox == []
    assert not fut.done()
    # The core still works: a proper ROUTED completes the publish.
    core.receive(p.encode(p.Routed(A, ref, 0)))
    assert fut.result(0) == PublishResult(0, 0, 0, 0)


def test_unexpected_welcome_is_ignored() -> None:
    core = Pair(max_message_size=500).add(b"c")
    core.receive(p.encode(p.Welcome(A, p.pack_welcome("evil", 7))))
    assert core.max_message_size == 500
    assert core.state == "ready"


_broker_frame = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([A, b"", b"\x00" * 8, b"\x00\x00\x00\x01", b"t", b"\xc1", p.pack_ack(1, 0)]),
    st.just(body()),
)
_broker_frames = st.builds(
    lambda h, rest: [h, *rest],
    st.one_of(st.sampled_from([p.header(c) for c in p.Cmd]), st.binary(max_size=5)),
    st.lists(_broker_frame, max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_broker_frames, max_size=6))
def test_random_broker_frames_never_raise(msgs: list[list[bytes]]) -> None:
    core, fut, _ = _ready_core_with_publish()
    for frames in msgs:
        core.receive(frames)
    for frames in core.outbox:  # anything the core answers is valid protocol
        p.parse_client(frames)
    assert core.state == "ready"
    core.expire(10.0)
    assert fut.done()
