"""One test per example and use case of the seed document (the Go MessageBus README).

Every test runs against a real ``Broker`` and real ``Bus`` objects. Nothing
sleeps to synchronise: a confirmed ``publish`` returns only once every
subscription it reached has taken the message (or its handler has returned),
and ``Subscription.get(timeout=...)`` and ``threading.Event`` do the rest.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from zmqbus import (
    Broker,
    Bus,
    HandlerError,
    Message,
    PublishResult,
    PublishTimeout,
    Subscription,
    SubscriptionClosed,
)

MakeBus = Callable[..., Bus]

# Generous bound for anything that should happen in about a millisecond.
WAIT = 5.0
# How long to wait to be sure that something did NOT arrive; the later arrival
# of a sentinel is what actually proves absence, this is only a backstop.
QUIET = 0.05


def drain(sub: Subscription) -> list[Message]:
    """Everything buffered in ``sub`` right now (no waiting)."""
    out: list[Message] = []
    while len(sub):
        out.append(sub.get(timeout=0))
    return out


def assert_empty(sub: Subscription) -> None:
    with pytest.raises(TimeoutError):
        sub.get(timeout=QUIET)


# --- Quick Start ---------------------------------------------------------------


def test_quick_start_server_bus_subscribe_publish() -> None:
    # 1. Start server (a free port instead of the seed's fixed 9090).
    server = Broker("127.0.0.1:0")
    server.start()
    try:
        assert server.running
        # 2. Create bus
        channel_id = uuid.uuid4()
        bus = Bus(server.address, channel_id)
        try:
            assert bus.channel_id == channel_id
            # 3. Subscribe; a consumer thread ranges over the subscription.
            ch = bus.subscribe("orders.created")
            got: list[Message] = []
            first = threading.Event()

            def consume() -> None:
                for msg in ch:
                    got.append(msg)
                    first.set()

            consumer = threading.Thread(target=consume, name="quickstart-consumer")
            consumer.start()
            # 4. Publish
            before = datetime.now(UTC)
            result = bus.publish("orders.created", b'{"id": 123}', None)
            assert result == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
            assert first.wait(WAIT), "consumer never got the order"
        finally:
            bus.close()
        # Closing the bus ends the subscription, so the consumer's loop ends.
        consumer.join(WAIT)
        assert not consumer.is_alive(), "iteration did not end when the bus closed"
    finally:
        server.stop()
    assert not server.running
    assert len(got) == 1
    msg = got[0]
    assert msg.topic == "orders.created"
    assert msg.payload == b'{"id": 123}'
    assert msg.headers == {}
    assert isinstance(msg.id, uuid.UUID)
    assert msg.timestamp.tzinfo is not None
    assert msg.timestamp.utcoffset() == timedelta(0)
    assert (
        before - timedelta(seconds=1) <= msg.timestamp <= datetime.now(UTC) + timedelta(seconds=1)
    )


def test_message_is_frozen(make_bus: MakeBus) -> None:
    bus = make_bus()
    sub = bus.subscribe("t")
    bus.publish("t", b"x")
    msg = sub.get(timeout=WAIT)
    with pytest.raises(AttributeError):
        msg.payload = b"y"  # type: ignore[misc]


# --- Usage examples -----------------------------------------------------------------


def test_basic_pub_sub(make_bus: MakeBus) -> None:
    pub_bus = make_bus()
    sub_bus = make_bus()
    ch = sub_bus.subscribe("events")
    received: list[bytes] = []
    got = threading.Event()

    def consume() -> None:
        for msg in ch:
            received.append(msg.payload)
            got.set()

    t = threading.Thread(target=consume, name="basic-consumer")
    t.start()
    try:
        result = pub_bus.publish("events", b"Hello World", None)
        assert result.delivered == 1
        assert result.buses == 1
        assert result.confirmed
        assert got.wait(WAIT)
    finally:
        ch.unsubscribe()
        t.join(WAIT)
    assert not t.is_alive()
    assert received == [b"Hello World"]


def test_multiple_subscribers_receive_the_same_message(make_bus: MakeBus) -> None:
    pub_bus = make_bus()
    sub1 = make_bus()
    sub2 = make_bus()
    ch1 = sub1.subscribe("orders")
    ch2 = sub2.subscribe("orders")

    result = pub_bus.publish("orders", b"data", None)
    assert result.delivered == 2
    assert result.buses == 2
    assert result.dropped == 0 and result.failed == 0

    m1 = ch1.get(timeout=WAIT)
    m2 = ch2.get(timeout=WAIT)
    assert m1.id == m2.id
    assert m1.topic == m2.topic == "orders"
    assert m1.payload == m2.payload == b"data"
    assert m1.timestamp == m2.timestamp
    assert_empty(ch1)
    assert_empty(ch2)


def test_with_headers(make_bus: MakeBus) -> None:
    bus = make_bus()
    ch = bus.subscribe("orders.created")
    headers = {
        "user_id": "123",
        "source": "api",
        "priority": "high",
        "request_id": "abc-def",
    }
    bus.publish("orders.created", b"orderData", headers)
    msg = ch.get(timeout=WAIT)
    assert msg.headers == headers
    assert msg.headers["user_id"] == "123"
    assert msg.headers["priority"] == "high"
    assert msg.payload == b"orderData"


def test_with_headers_across_buses_and_unicode(make_bus: MakeBus) -> None:
    pub, sub_bus = make_bus(), make_bus()
    ch = sub_bus.subscribe("events")
    headers = {"trace_id": str(uuid.uuid4()), "user_id": "ü-42", "source": "api", "empty": ""}
    pub.publish("events", b"data", headers)
    assert ch.get(timeout=WAIT).headers == headers


def test_error_handling_handler_error_reaches_publisher(make_bus: MakeBus) -> None:
    publisher = make_bus()
    service = make_bus()
    calls: list[bytes] = []

    def process_order(msg: Message) -> None:
        calls.append(msg.payload)
        if msg.payload == b"bad":
            raise ValueError("cannot process order 42")

    service.subscribe("orders", process_order)

    with pytest.raises(HandlerError) as info:
        publisher.publish("orders", b"bad", None)
    err = info.value
    assert len(err.errors) == 1
    assert "cannot process order 42" in err.errors[0]
    assert "cannot process order 42" in str(err)
    assert err.result.failed == 1
    assert err.result.delivered == 0
    assert err.result.buses == 1

    # A handler that succeeds: no error, delivered counted.
    ok = publisher.publish("orders", b"good", None)
    assert ok == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
    assert calls == [b"bad", b"good"]


def test_error_handling_mixed_failing_and_succeeding_subscriptions(make_bus: MakeBus) -> None:
    publisher = make_bus()
    a, b = make_bus(), make_bus()

    def boom(msg: Message) -> None:
        raise RuntimeError("inventory unavailable")

    ran = threading.Event()
    a.subscribe("orders", boom)
    b.subscribe("orders", lambda msg: ran.set())
    queue = b.subscribe("orders")

    with pytest.raises(HandlerError) as info:
        publisher.publish("orders", b"x")
    assert ran.is_set(), "the succeeding handler had not run when publish returned"
    assert info.value.result.failed == 1
    assert info.value.result.delivered == 2
    assert info.value.result.buses == 2
    assert ["inventory unavailable" in e for e in info.value.errors] == [True]
    assert queue.get(timeout=WAIT).payload == b"x"


def test_context_timeout_slow_handler_then_bus_still_usable(make_bus: MakeBus) -> None:
    publisher = make_bus()
    worker = make_bus()
    release = threading.Event()
    started = threading.Event()
    slow_seen: list[bytes] = []

    def slow(msg: Message) -> None:
        started.set()
        release.wait(WAIT)
        slow_seen.append(msg.payload)

    worker.subscribe("slow.topic", slow)
    fast = worker.subscribe("fast.topic")
    try:
        t0 = time.monotonic()
        with pytest.raises(PublishTimeout) as info:
            publisher.publish("slow.topic", b"data", None, timeout=0.2)
        elapsed = time.monotonic() - t0
        assert isinstance(info.value, TimeoutError)
        assert info.value.expected == 1
        assert info.value.result.buses == 0
        assert 0.15 <= elapsed < 1.1, elapsed
        assert started.is_set()

        # The same publisher keeps working while the slow handler is still held.
        r = publisher.publish("fast.topic", b"after-timeout")
        assert r == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
        assert fast.get(timeout=WAIT).payload == b"after-timeout"
        # New subscriptions still work too.
        late = publisher.subscribe("fast.topic")
        assert publisher.publish("fast.topic", b"again").delivered == 2
        assert late.get(timeout=WAIT).payload == b"again"
        assert fast.get(timeout=WAIT).payload == b"again"
    finally:
        release.set()

    # Once the handler is free, the slow topic confirms again; the late
    # confirmation of the timed-out publish is not counted into this one.
    r = publisher.publish("slow.topic", b"data2")
    assert r == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
    assert slow_seen == [b"data", b"data2"]


def test_unsubscribe_ends_iteration_and_stops_delivery(make_bus: MakeBus) -> None:
    publisher = make_bus()
    bus = make_bus()
    temp = bus.subscribe("temp.topic")
    keeper = make_bus().subscribe("temp.topic")
    seen: list[bytes] = []
    ended = threading.Event()

    def consume() -> None:
        for msg in temp:
            seen.append(msg.payload)
        ended.set()

    t = threading.Thread(target=consume, name="unsub-consumer")
    t.start()
    try:
        assert publisher.publish("temp.topic", b"one").delivered == 2
        assert publisher.publish("temp.topic", b"two").delivered == 2
        assert bus.unsubscribe("temp.topic") == 1
        assert ended.wait(WAIT), "iteration did not end after unsubscribe"
    finally:
        t.join(WAIT)
    assert seen == [b"one", b"two"]
    assert temp.closed

    r = publisher.publish("temp.topic", b"after")
    sentinel = publisher.publish("temp.topic", b"sentinel")
    assert r.delivered == 1 and sentinel.delivered == 1
    assert [m.payload for m in (keeper.get(timeout=WAIT) for _ in range(4))] == [
        b"one",
        b"two",
        b"after",
        b"sentinel",
    ]
    with pytest.raises(SubscriptionClosed):
        temp.get(timeout=QUIET)
    assert temp.received == 2
    assert temp.dropped == 0
    assert list(temp) == []


def test_unsubscribe_removes_all_handlers(make_bus: MakeBus) -> None:
    publisher = make_bus()
    bus = make_bus()
    calls: Counter[str] = Counter()
    bus.subscribe("temp.topic", lambda m: calls.update(["h1"]))
    bus.subscribe("temp.topic", lambda m: calls.update(["h2"]))
    other = bus.subscribe("other.topic")

    assert publisher.publish("temp.topic", b"1").delivered == 2
    assert calls == Counter({"h1": 1, "h2": 1})

    assert bus.unsubscribe("temp.topic") == 2
    r = publisher.publish("temp.topic", b"2")
    assert r.delivered == 0 and r.buses == 0
    # The bus's other subscriptions are untouched.
    assert publisher.publish("other.topic", b"sentinel").delivered == 1
    assert other.get(timeout=WAIT).payload == b"sentinel"
    assert calls == Counter({"h1": 1, "h2": 1})
    assert bus.unsubscribe("temp.topic") == 0


def test_different_channels_are_isolated(make_bus: MakeBus) -> None:
    order_channel, user_channel = uuid.uuid4(), uuid.uuid4()
    order_bus = make_bus(order_channel)
    order_peer = make_bus(order_channel)
    user_bus = make_bus(user_channel)
    order_sub = order_peer.subscribe("events")
    user_sub = user_bus.subscribe("events")
    user_all = user_bus.subscribe(">")

    r = order_bus.publish("events", b"order-event")
    assert r.delivered == 1 and r.buses == 1
    r = user_bus.publish("events", b"user-sentinel")
    assert r.delivered == 2 and r.buses == 1

    # The user channel's first (and only) messages are its own sentinel.
    assert user_sub.get(timeout=WAIT).payload == b"user-sentinel"
    assert user_all.get(timeout=WAIT).payload == b"user-sentinel"
    assert_empty(user_sub)
    assert_empty(user_all)
    assert order_sub.get(timeout=WAIT).payload == b"order-event"
    assert_empty(order_sub)


def test_channel_id_as_string_is_the_same_channel(make_bus: MakeBus, channel: uuid.UUID) -> None:
    a = make_bus(channel)
    b = make_bus(str(channel))
    sub = b.subscribe("x")
    assert a.publish("x", b"1").delivered == 1
    assert sub.get(timeout=WAIT).payload == b"1"


# --- Use cases ----------------------------------------------------------------------


def test_use_case_event_driven_microservices(make_bus: MakeBus) -> None:
    api = make_bus()
    order_svc, inventory_svc, email_svc = make_bus(), make_bus(), make_bus()
    log: dict[str, list[bytes]] = {"order": [], "inventory": [], "email": []}
    lock = threading.Lock()

    def service(name: str) -> Callable[[Message], None]:
        def handle(msg: Message) -> None:
            with lock:
                log[name].append(msg.payload)

        return handle

    order_svc.subscribe("orders.created", service("order"))
    inventory_svc.subscribe("orders.created", service("inventory"))
    email_svc.subscribe("orders.created", service("email"))

    r = api.publish("orders.created", b'{"id": 1}')
    assert r == PublishResult(delivered=3, dropped=0, failed=0, buses=3)
    # Confirmation means every handler has already run, exactly once.
    assert log == {"order": [b'{"id": 1}'], "inventory": [b'{"id": 1}'], "email": [b'{"id": 1}']}

    r = api.publish("orders.created", b'{"id": 2}')
    assert r.delivered == 3
    for payloads in log.values():
        assert payloads == [b'{"id": 1}', b'{"id": 2}']


def test_use_case_real_time_notifications(make_bus: MakeBus) -> None:
    notifier = make_bus()
    anywhere = make_bus()
    pushed: list[tuple[str, bytes]] = []

    def push_notification(msg: Message) -> None:
        user_id = msg.headers["user_id"]
        pushed.append((user_id, msg.payload))

    notifier.subscribe("user.activity", push_notification)

    anywhere.publish("user.activity", b"New message", {"user_id": "123"})
    assert pushed == [("123", b"New message")]

    # A message without the header makes the handler raise: the publisher hears of it.
    with pytest.raises(HandlerError) as info:
        anywhere.publish("user.activity", b"anonymous")
    assert "user_id" in info.value.errors[0]
    assert pushed == [("123", b"New message")]


def test_use_case_audit_logging(make_bus: MakeBus) -> None:
    audit_bus = make_bus()
    users, orders = make_bus(), make_bus()
    logged: list[tuple[str, bytes, datetime]] = []

    audit_bus.subscribe("audit.>", lambda m: logged.append((m.topic, m.payload, m.timestamp)))

    before = datetime.now(UTC)
    assert users.publish("audit.user.login", b"userData").delivered == 1
    assert orders.publish("audit.order.created", b"orderData").delivered == 1
    assert orders.publish("audit.x", b"one-token").delivered == 1
    # Not below "audit": neither matches "audit.>".
    assert orders.publish("audit", b"bare").delivered == 0
    assert orders.publish("auditing.x", b"other").delivered == 0
    after = datetime.now(UTC)

    assert [(t, p) for t, p, _ in logged] == [
        ("audit.user.login", b"userData"),
        ("audit.order.created", b"orderData"),
        ("audit.x", b"one-token"),
    ]
    slack = timedelta(milliseconds=5)
    for _, _, ts in logged:
        assert ts.utcoffset() == timedelta(0)
        assert before - slack <= ts <= after + slack


def test_use_case_audit_single_token_wildcard(make_bus: MakeBus) -> None:
    audit_bus = make_bus()
    pub = make_bus()
    star = audit_bus.subscribe("audit.*")

    assert pub.publish("audit.user.login", b"deep").delivered == 0
    assert pub.publish("audit.login", b"flat").delivered == 1

    msg = star.get(timeout=WAIT)
    assert (msg.topic, msg.payload) == ("audit.login", b"flat")
    assert_empty(star)


def _clean(data: bytes) -> bytes:
    return data.strip()


def _transform(data: bytes) -> bytes:
    return data.upper()


def test_use_case_data_pipeline_on_one_bus(make_bus: MakeBus) -> None:
    bus = make_bus()
    stored: list[tuple[bytes, dict[str, str]]] = []
    results: list[PublishResult] = []

    def ingest(msg: Message) -> None:
        results.append(bus.publish("data.cleaned", _clean(msg.payload), msg.headers))

    def transform(msg: Message) -> None:
        results.append(bus.publish("data.transformed", _transform(msg.payload), msg.headers))

    def store(msg: Message) -> None:
        stored.append((msg.payload, dict(msg.headers)))

    bus.subscribe("data.raw", ingest)
    bus.subscribe("data.cleaned", transform)
    bus.subscribe("data.transformed", store)

    for i in range(20):
        r = bus.publish("data.raw", f"  record {i}  ".encode(), {"batch": str(i)}, timeout=3.0)
        assert r == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
        # The whole chain ran before the first publish returned.
        assert stored[-1] == (f"RECORD {i}".encode(), {"batch": str(i)})
    assert len(stored) == 20
    assert len(results) == 40
    assert all(r.delivered == 1 and r.failed == 0 for r in results)


def test_use_case_data_pipeline_across_three_buses(make_bus: MakeBus) -> None:
    source = make_bus()
    ingest_bus, transform_bus, store_bus = make_bus(), make_bus(), make_bus()
    stored: list[bytes] = []

    ingest_bus.subscribe(
        "data.raw",
        lambda m: ingest_bus.publish("data.cleaned", _clean(m.payload), m.headers),
    )
    transform_bus.subscribe(
        "data.cleaned",
        lambda m: transform_bus.publish("data.transformed", _transform(m.payload), m.headers),
    )
    store_bus.subscribe("data.transformed", lambda m: stored.append(m.payload))

    for i in range(20):
        r = source.publish("data.raw", f" item {i} ".encode(), timeout=3.0)
        assert r.delivered == 1 and r.failed == 0
        assert stored[-1] == f"ITEM {i}".encode()
    assert len(stored) == 20


def test_use_case_data_pipeline_error_propagates_to_first_publisher(make_bus: MakeBus) -> None:
    bus = make_bus()

    def ingest(msg: Message) -> None:
        bus.publish("data.cleaned", _clean(msg.payload), msg.headers)

    def save_to_database(msg: Message) -> None:
        raise OSError("database is down")

    bus.subscribe("data.raw", ingest)
    bus.subscribe("data.cleaned", save_to_database)

    with pytest.raises(HandlerError) as info:
        bus.publish("data.raw", b" x ", timeout=3.0)
    assert "database is down" in info.value.errors[0]
    assert info.value.result.failed == 1


def test_use_case_background_jobs(make_bus: MakeBus) -> None:
    worker = make_bus()
    producer = make_bus()
    emails: list[bytes] = []
    reports: list[bytes] = []
    worker.subscribe("jobs.email", lambda m: emails.append(m.payload))
    worker.subscribe("jobs.report", lambda m: reports.append(m.payload))

    for i in range(10):
        assert producer.publish("jobs.email", f"email {i}".encode()).delivered == 1
        assert producer.publish("jobs.report", f"report {i}".encode()).delivered == 1

    assert emails == [f"email {i}".encode() for i in range(10)]
    assert reports == [f"report {i}".encode() for i in range(10)]


def test_use_case_background_jobs_two_workers_each_get_every_job(make_bus: MakeBus) -> None:
    # Queue groups (work sharing) are a later feature: today every subscription gets every job.
    producer = make_bus()
    done: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(name: str) -> Callable[[Message], None]:
        def run(msg: Message) -> None:
            with lock:
                done[name] += 1

        return run

    make_bus().subscribe("jobs.email", worker("w1"))
    make_bus().subscribe("jobs.email", worker("w2"))
    for _ in range(5):
        assert producer.publish("jobs.email", b"job").delivered == 2
    assert done == Counter({"w1": 5, "w2": 5})


# --- Best practices and channel semantics -------------------------------------------


def test_reused_bus_publishes_1000_in_order(make_bus: MakeBus) -> None:
    bus = make_bus()
    sub = make_bus().subscribe("orders.created", maxsize=1000)
    for i in range(1000):
        r = bus.publish("orders.created", str(i).encode())
        assert r.delivered == 1 and r.dropped == 0, (i, r)
    got = [int(sub.get(timeout=WAIT).payload) for _ in range(1000)]
    assert got == list(range(1000))
    assert sub.dropped == 0
    assert_empty(sub)


def test_buffer_of_100_drops_overflow_without_blocking(make_bus: MakeBus) -> None:
    publisher = make_bus()
    sub_bus = make_bus()
    idle = sub_bus.subscribe("events")  # default maxsize=100, nobody reads it
    roomy = sub_bus.subscribe("events", maxsize=1000)

    results = [publisher.publish("events", str(i).encode(), timeout=2.0) for i in range(150)]

    for i, r in enumerate(results):
        if i < 100:
            assert (r.delivered, r.dropped, r.buses) == (2, 0, 1), (i, r)
        else:
            assert (r.delivered, r.dropped, r.buses) == (1, 1, 1), (i, r)
    assert idle.dropped == 50
    assert idle.received == 100
    assert len(idle) == 100
    assert roomy.dropped == 0
    assert [int(m.payload) for m in drain(idle)] == list(range(100))
    assert [int(m.payload) for m in drain(roomy)] == list(range(150))

    # Room again once read: the next message is taken.
    r = publisher.publish("events", b"next")
    assert (r.delivered, r.dropped) == (2, 0)
    assert idle.get(timeout=WAIT).payload == b"next"
    assert idle.dropped == 50


def test_full_buffer_fire_and_forget_counts_drops(make_bus: MakeBus) -> None:
    publisher = make_bus()
    small = make_bus().subscribe("events", maxsize=3)
    for i in range(10):
        r = publisher.publish("events", str(i).encode(), confirm=False)
        assert r.confirmed is False
    # A confirmed sentinel after the unconfirmed ones: same sender, same order.
    assert publisher.publish("events", b"sentinel").dropped == 1
    assert small.dropped == 8
    assert [m.payload for m in drain(small)] == [b"0", b"1", b"2"]


def test_bus_receives_its_own_messages(make_bus: MakeBus) -> None:
    bus = make_bus()
    sub = bus.subscribe("self.topic")
    handled: list[bytes] = []
    bus.subscribe("self.topic", lambda m: handled.append(m.payload))

    r = bus.publish("self.topic", b"echo")
    assert r == PublishResult(delivered=2, dropped=0, failed=0, buses=1)
    assert sub.get(timeout=WAIT).payload == b"echo"
    assert handled == [b"echo"]


def test_publish_immediately_after_constructor(broker: Broker, make_bus: MakeBus) -> None:
    channel = make_bus().channel_id
    sub = make_bus().subscribe("hello", maxsize=1000)
    for i in range(50):
        with Bus(broker.address, channel) as bus:
            r = bus.publish("hello", str(i).encode())
            assert r.delivered == 1 and r.buses == 1, (i, r)
    assert [int(sub.get(timeout=WAIT).payload) for _ in range(50)] == list(range(50))
    assert_empty(sub)


def test_publish_unconfirmed_immediately_after_constructor_then_close(
    broker: Broker, make_bus: MakeBus
) -> None:
    # The seed's "bad" pattern: a new bus per message, publish, close. It must still deliver.
    channel = make_bus().channel_id
    sub = make_bus().subscribe("hello", maxsize=1000)
    for i in range(50):
        bus = Bus(broker.address, channel)
        bus.publish("hello", str(i).encode(), confirm=False)
        bus.close()
    assert [int(sub.get(timeout=WAIT).payload) for _ in range(50)] == list(range(50))


# --- Regressions of the original ----------------------------------------------------


def test_every_subscribing_bus_gets_every_message(make_bus: MakeBus) -> None:
    publisher = make_bus()
    subs = [make_bus().subscribe("fanout") for _ in range(10)]
    for i in range(100):
        r = publisher.publish("fanout", str(i).encode())
        assert (r.delivered, r.dropped, r.buses) == (10, 0, 10), (i, r)
    for n, sub in enumerate(subs):
        got = [int(m.payload) for m in drain(sub)]
        assert got == list(range(100)), f"subscriber {n} got {len(got)}"
        assert sub.dropped == 0


def test_one_timed_out_publish_does_not_break_later_publishes(make_bus: MakeBus) -> None:
    publisher = make_bus()
    slow_bus = make_bus()
    other = make_bus().subscribe("fanout", maxsize=1000)
    release = threading.Event()
    slow_bus.subscribe("fanout", lambda m: release.wait(WAIT) if m.payload == b"stuck" else None)
    try:
        with pytest.raises(PublishTimeout) as info:
            publisher.publish("fanout", b"stuck", timeout=0.1)
        # The fast subscriber confirmed, the held handler did not.
        assert info.value.result.buses == 1
        assert info.value.result.delivered == 1
        assert info.value.expected == 2
        # Topics the held handler does not touch work at once.
        side = publisher.subscribe("side")
        assert publisher.publish("side", b"ok").delivered == 1
        assert side.get(timeout=WAIT).payload == b"ok"
    finally:
        release.set()
    for i in range(20):
        r = publisher.publish("fanout", str(i).encode())
        assert (r.delivered, r.failed, r.buses) == (2, 0, 2), (i, r)
    assert [m.payload for m in drain(other)] == [b"stuck"] + [str(i).encode() for i in range(20)]
