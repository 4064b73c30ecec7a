"""The threaded Bus against a real broker: API contract, bad input, semantics."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import pytest
import zmq

from zmqbus import (
    Broker,
    Bus,
    BusClosed,
    HandlerError,
    Message,
    MessageTooLarge,
    PublishResult,
    PublishTimeout,
    SubscriptionClosed,
    ZmqbusError,
)
from zmqbus._client import ClientCore
from zmqbus._iothread import IOThread

MakeBus = Callable[..., Bus]


def test_publish_get_roundtrip_fields(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("orders.created")
    before = datetime.now(UTC)
    r = pub.publish("orders.created", b'{"id": 123}', {"user_id": "1"})
    assert r == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
    msg = s.get(timeout=5)
    assert isinstance(msg, Message)
    assert msg.topic == "orders.created"
    assert msg.payload == b'{"id": 123}'
    assert msg.headers == {"user_id": "1"}
    assert isinstance(msg.id, uuid.UUID)
    assert msg.timestamp.tzinfo is not None and msg.timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((msg.timestamp - before).total_seconds()) < 60


def test_get_checks_its_timeout_with_a_message_waiting_too(make_bus: MakeBus) -> None:
    # get() takes a waiting message without the clock: the checks still hold.
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("t")
    for n in range(3):
        pub.publish("t", b"%d" % n)  # confirmed: in s's buffer once this returns
    with pytest.raises(ValueError, match="must not be negative"):
        s.get(timeout=-1.0)
    with pytest.raises(TypeError, match="number of seconds"):
        s.get(timeout=True)  # type: ignore[arg-type]
    assert [s.get(timeout=0.0).payload, s.get().payload, s.get(2).payload] == [b"0", b"1", b"2"]
    with pytest.raises(TimeoutError):
        s.get(timeout=0.0)


def test_message_is_frozen() -> None:
    m = Message(uuid.uuid4(), "a", b"x", {}, datetime.now(UTC))
    with pytest.raises(AttributeError):
        m.topic = "b"  # type: ignore[misc]


def test_channel_id_as_string(make_bus: MakeBus, channel: uuid.UUID) -> None:
    pub = make_bus(str(channel))
    sub = make_bus(channel)
    s = sub.subscribe("x")
    assert pub.publish("x", b"1").delivered == 1
    assert s.get(timeout=5).payload == b"1"
    assert pub.channel_id == channel


@pytest.mark.parametrize("bad", ["not-a-uuid", 123, None, b"0123456789abcdef", ""])
def test_bad_channel_id_is_value_error(broker: Broker, bad: object) -> None:
    with pytest.raises(ValueError):
        Bus(broker.address, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload", ["text", 12, None, ["a"], {"a": 1}], ids=["str", "int", "None", "list", "dict"]
)
def test_payload_must_be_bytes_like(make_bus: MakeBus, payload: object) -> None:
    bus = make_bus()
    with pytest.raises(TypeError):
        bus.publish("a", payload)  # type: ignore[arg-type]


def test_bytes_like_payloads_accepted(make_bus: MakeBus) -> None:
    bus = make_bus()
    s = bus.subscribe("a")
    bus.publish("a", bytearray(b"ba"))
    bus.publish("a", memoryview(b"mv"))
    assert [s.get(timeout=5).payload for _ in range(2)] == [b"ba", b"mv"]


@pytest.mark.parametrize(
    "headers",
    [{"a": 1}, {1: "a"}, {"a": b"x"}, ["a", "b"], "a=b"],
    ids=["int-value", "int-key", "bytes-value", "list", "str"],
)
def test_headers_must_be_str_to_str(make_bus: MakeBus, headers: object) -> None:
    bus = make_bus()
    with pytest.raises(TypeError):
        bus.publish("a", b"", headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", ">", "a\tb", "x" * 257, "a\x00"]
)
def test_invalid_publish_topic_is_value_error(make_bus: MakeBus, topic: str) -> None:
    bus = make_bus()
    with pytest.raises(ValueError):
        bus.publish(topic, b"")


def test_non_str_topic_is_type_error(make_bus: MakeBus) -> None:
    bus = make_bus()
    with pytest.raises(TypeError):
        bus.publish(b"a", b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", "a*", "a b", "x" * 257])
def test_invalid_pattern_is_value_error(make_bus: MakeBus, pattern: str) -> None:
    bus = make_bus()
    with pytest.raises(ValueError):
        bus.subscribe(pattern)


@pytest.mark.parametrize("maxsize", [0, -1, 1.5, True])
def test_bad_maxsize(make_bus: MakeBus, maxsize: object) -> None:
    with pytest.raises(ValueError):
        make_bus().subscribe("a", maxsize=maxsize)  # type: ignore[arg-type]


def test_handler_must_be_callable(make_bus: MakeBus) -> None:
    with pytest.raises(TypeError):
        make_bus().subscribe("a", handler="nope")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_bad_timeout(make_bus: MakeBus, timeout: float) -> None:
    with pytest.raises(ValueError):
        make_bus().publish("a", b"", timeout=timeout)


def test_message_too_large_is_typed(broker: Broker, channel: uuid.UUID) -> None:
    with Bus(broker.address, channel) as bus:
        with pytest.raises(MessageTooLarge) as info:
            bus.publish("a", b"x" * (bus.max_message_size + 1))
        assert isinstance(info.value, ValueError)
        # the bus is still usable
        assert bus.publish("a", b"ok").delivered == 0


def test_wildcards(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    star = sub.subscribe("a.*")
    tail = sub.subscribe("a.>")
    everything = sub.subscribe(">")
    for topic in ["a", "a.b", "a.b.c"]:
        pub.publish(topic, topic.encode())
    assert [m.topic for m in _drain(star)] == ["a.b"]
    assert [m.topic for m in _drain(tail)] == ["a.b", "a.b.c"]
    assert [m.topic for m in _drain(everything)] == ["a", "a.b", "a.b.c"]


def _drain(s: object) -> list[Message]:
    out = []
    while True:
        try:
            out.append(s.get(timeout=0.0))  # type: ignore[attr-defined]
        except TimeoutError:
            return out


def test_topics_are_case_sensitive(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("Orders")
    assert pub.publish("orders", b"").delivered == 0
    assert pub.publish("Orders", b"").delivered == 1
    assert s.get(timeout=5).topic == "Orders"


def test_no_subscribers_delivered_zero(make_bus: MakeBus) -> None:
    r = make_bus().publish("nobody.listens", b"")
    assert r == PublishResult(0, 0, 0, 0)


def test_one_publish_counts_each_subscription(make_bus: MakeBus) -> None:
    pub, a, b = make_bus(), make_bus(), make_bus()
    a.subscribe("t")
    a.subscribe("t")
    a.subscribe(">")
    b.subscribe("*", handler=lambda m: None)
    r = pub.publish("t", b"")
    assert (r.delivered, r.buses) == (4, 2)


def test_handler_errors_collected(make_bus: MakeBus) -> None:
    pub, a, b = make_bus(), make_bus(), make_bus()

    def bad_value(m: Message) -> None:
        raise ValueError("bad order " + m.payload.decode())

    def bad_key(m: Message) -> None:
        raise KeyError("sku")

    a.subscribe("orders", handler=bad_value)
    b.subscribe("orders", handler=bad_key)
    ok = b.subscribe("orders")
    with pytest.raises(HandlerError) as info:
        pub.publish("orders", b"42")
    err = info.value
    assert sorted(err.errors) == ["KeyError: 'sku'", "ValueError: bad order 42"]
    assert "bad order 42" in str(err) and "sku" in str(err)
    assert (err.result.delivered, err.result.failed, err.result.buses) == (1, 2, 2)
    assert isinstance(err, ZmqbusError)
    assert ok.get(timeout=5).payload == b"42"


def test_handler_runs_off_io_thread_and_in_order(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    seen: list[tuple[str, bytes]] = []
    done = threading.Event()

    def handler(m: Message) -> None:
        seen.append((threading.current_thread().name, m.payload))
        if m.payload == b"99":
            done.set()

    sub.subscribe("seq", handler=handler)
    for i in range(100):
        pub.publish("seq", str(i).encode(), confirm=False)
    assert done.wait(10)
    assert [p for _, p in seen] == [str(i).encode() for i in range(100)]
    names = {n for n, _ in seen}
    assert len(names) == 1 and "io" not in next(iter(names))


def test_slow_handler_does_not_block_other_subscriptions(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    release = threading.Event()
    entered = threading.Event()

    def slow(m: Message) -> None:
        entered.set()
        release.wait(10)

    sub.subscribe("work", handler=slow)
    fast = sub.subscribe("work")
    try:
        pub.publish("work", b"1", confirm=False)
        assert entered.wait(5)
        # the slow handler holds its message; the queue subscription still gets the next ones
        pub.publish("work", b"2", confirm=False)
        assert [fast.get(timeout=5).payload for _ in range(2)] == [b"1", b"2"]
    finally:
        release.set()


def test_timed_out_publish_leaves_bus_usable(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    release = threading.Event()
    sub.subscribe("slow", handler=lambda m: release.wait(10))
    fast = sub.subscribe("fast")
    try:
        with pytest.raises(PublishTimeout) as info:
            pub.publish("slow", b"", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert info.value.expected == 1
        assert pub.publish("fast", b"after").delivered == 1
        assert fast.get(timeout=5).payload == b"after"
    finally:
        release.set()
    # the late confirmation of the timed-out publish is dropped, and the bus still works
    assert pub.publish("fast", b"again").delivered == 1


def test_buffer_full_drops_newest_and_counts(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("burst", maxsize=3)
    results = [pub.publish("burst", str(i).encode()) for i in range(5)]
    assert [r.delivered for r in results] == [1, 1, 1, 0, 0]
    assert [r.dropped for r in results] == [0, 0, 0, 1, 1]
    assert s.dropped == 2
    assert [s.get(timeout=1).payload for _ in range(3)] == [b"0", b"1", b"2"]


def test_handler_backlog_is_bounded(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    release = threading.Event()
    entered = threading.Event()

    def hold(m: Message) -> None:
        entered.set()
        release.wait(10)

    s = sub.subscribe("h", handler=hold, maxsize=2)
    try:
        pub.publish("h", b"running", confirm=False)
        assert entered.wait(5)
        pub.publish("h", b"q1", confirm=False)
        pub.publish("h", b"q2", confirm=False)
        r = pub.publish("h", b"over", timeout=5)
        assert (r.dropped, s.dropped) == (1, 1)
    finally:
        release.set()


def test_get_timeout_and_iteration_end(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("it")
    with pytest.raises(TimeoutError):
        s.get(timeout=0.05)
    for i in range(3):
        pub.publish("it", str(i).encode())
    assert sub.unsubscribe("it") == 1
    assert s.closed
    assert [m.payload for m in s] == [b"0", b"1", b"2"]
    with pytest.raises(SubscriptionClosed):
        s.get(timeout=1)
    assert pub.publish("it", b"late").delivered == 0


def test_iteration_in_thread_ends_on_close(broker: Broker, channel: uuid.UUID) -> None:
    bus = Bus(broker.address, channel)
    s = bus.subscribe("x")
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.extend(m.payload for m in s))
    t.start()
    bus.publish("x", b"1")
    bus.close()
    t.join(5)
    assert not t.is_alive()
    assert got == [b"1"]


def test_subscription_unsubscribe_keeps_siblings(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    a = sub.subscribe("t")
    b = sub.subscribe("t")
    a.unsubscribe()
    assert a.closed and not b.closed
    assert pub.publish("t", b"x").delivered == 1
    assert b.get(timeout=5).payload == b"x"
    b.unsubscribe()
    assert pub.publish("t", b"y").delivered == 0


def test_unsubscribe_unknown_pattern_returns_zero(make_bus: MakeBus) -> None:
    assert make_bus().unsubscribe("never.subscribed") == 0


def test_get_on_handler_subscription_is_type_error(make_bus: MakeBus) -> None:
    s = make_bus().subscribe("h", handler=lambda m: None)
    with pytest.raises(TypeError):
        s.get(timeout=0.1)


def test_bus_receives_own_messages(make_bus: MakeBus) -> None:
    bus = make_bus()
    s = bus.subscribe("self")
    assert bus.publish("self", b"me").delivered == 1
    assert s.get(timeout=5).payload == b"me"


def test_confirm_false_returns_unconfirmed_result(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("ff")
    r = pub.publish("ff", b"x", confirm=False)
    assert r.confirmed is False
    assert s.get(timeout=5).payload == b"x"


def test_publish_from_many_threads(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    s = sub.subscribe("mt.*", maxsize=10_000)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                assert pub.publish(f"mt.{n}", str(i).encode()).delivered == 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    got = _drain(s)
    assert len(got) == 400
    for n in range(8):
        assert [m.payload for m in got if m.topic == f"mt.{n}"] == [
            str(i).encode() for i in range(50)
        ]


def test_unconfirmed_publishes_from_many_threads_never_wait_for_a_wakeup(
    make_bus: MakeBus,
) -> None:
    # heartbeat=0: an idle I/O thread polls with no timeout, so a submit that it
    # failed to notice would wait forever, and the wait below would time out.
    pub, sub = make_bus(heartbeat=0), make_bus()
    s = sub.subscribe("wk.*", maxsize=10_000)
    seen = [0] * 4
    arrived = threading.Condition()
    errors: list[BaseException] = []

    def collect() -> None:
        for _ in range(4 * 150):
            m = s.get(timeout=10)
            with arrived:
                seen[int(m.topic[3:])] += 1
                arrived.notify_all()

    def worker(n: int) -> None:
        try:
            for i in range(150):
                # One in flight per thread, so the I/O thread keeps going idle
                # while the others submit.
                pub.publish(f"wk.{n}", b"", confirm=False)
                with arrived:
                    assert arrived.wait_for(lambda i=i: seen[n] > i, timeout=10), f"{n}: {i} stuck"
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    collector = threading.Thread(target=collect)
    collector.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    collector.join(30)
    assert not errors
    assert seen == [150] * 4


def test_io_thread_runs_every_item_it_accepted_while_stopping(broker: Broker) -> None:
    # Submitting takes no lock on the common path: a submit racing stop() must
    # either raise BusClosed or have its item run, never leave it behind.
    ctx = zmq.Context()
    io = IOThread(ctx, broker.address, ClientCore(uuid.uuid4().bytes, heartbeat=0))
    ran = [0] * 4
    accepted = [0] * 4
    going = [threading.Event() for _ in range(4)]
    outcomes: list[str] = []

    def bump(n: int) -> None:
        ran[n] += 1  # on the I/O thread only

    def worker(n: int) -> None:
        item = partial(bump, n)
        while True:
            try:
                io.submit(item)
            except BusClosed:
                outcomes.append("closed")
                return
            except BaseException as exc:
                outcomes.append(repr(exc))
                return
            accepted[n] += 1
            if accepted[n] == 500:
                going[n].set()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        for ev in going:
            assert ev.wait(10)
        io.stop()  # while all four are submitting
        for t in threads:
            t.join(10)
        assert outcomes == ["closed"] * 4
        assert ran == accepted
    finally:
        io.stop()
        ctx.term()


def test_closed_bus_raises(broker: Broker, channel: uuid.UUID) -> None:
    bus = Bus(broker.address, channel)
    bus.close()
    bus.close()  # idempotent
    assert bus.closed
    with pytest.raises(BusClosed):
        bus.publish("a", b"")
    with pytest.raises(BusClosed):
        bus.publish("a", b"", confirm=False)
    with pytest.raises(BusClosed):
        bus.subscribe("a")
    with pytest.raises(BusClosed):
        bus.unsubscribe("a")


def test_close_fails_pending_publish_with_busclosed(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    release = threading.Event()
    entered = threading.Event()

    def hold(m: Message) -> None:
        entered.set()
        release.wait(10)

    sub.subscribe("hold", handler=hold)
    outcome: list[BaseException | PublishResult] = []

    def publisher() -> None:
        try:
            outcome.append(pub.publish("hold", b"", timeout=10))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=publisher)
    t.start()
    try:
        assert entered.wait(5)
        pub.close()
        t.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], BusClosed)
    finally:
        release.set()


def test_close_ends_subscriptions_of_closing_bus(broker: Broker, channel: uuid.UUID) -> None:
    bus = Bus(broker.address, channel)
    s = bus.subscribe("a")
    bus.publish("a", b"kept")
    bus.close()
    assert s.closed
    assert s.get(timeout=1).payload == b"kept"
    with pytest.raises(SubscriptionClosed):
        s.get(timeout=1)


def test_subscriber_closing_resolves_waiting_publisher(make_bus: MakeBus) -> None:
    pub = make_bus()
    sub = make_bus()
    release = threading.Event()
    entered = threading.Event()

    def hold(m: Message) -> None:
        entered.set()
        release.wait(10)

    sub.subscribe("hold", handler=hold)
    outcome: list[BaseException | PublishResult] = []
    t = threading.Thread(target=lambda: _capture(outcome, lambda: pub.publish("hold", b"")))
    t.start()
    try:
        assert entered.wait(5)
        sub.close()
        t.join(5)
    finally:
        release.set()
    # the publisher learns the subscribing bus went away, rather than timing out
    assert len(outcome) == 1 and isinstance(outcome[0], HandlerError)
    assert "closed" in str(outcome[0])


def _capture(out: list[BaseException | PublishResult], fn: Callable[[], PublishResult]) -> None:
    try:
        out.append(fn())
    except BaseException as exc:
        out.append(exc)


def test_handler_may_close_its_own_bus(broker: Broker, channel: uuid.UUID) -> None:
    pub = Bus(broker.address, channel)
    sub = Bus(broker.address, channel)
    closed = threading.Event()

    def closer(m: Message) -> None:
        sub.close()
        closed.set()

    sub.subscribe("close.me", handler=closer)
    try:
        pub.publish("close.me", b"", confirm=False)
        assert closed.wait(5)
        assert sub.closed
    finally:
        pub.close()
        sub.close()
