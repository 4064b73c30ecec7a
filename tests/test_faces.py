"""One behavioural suite, run over both faces: threaded Bus and asyncio Bus
(on the default loop and on uvloop). Same scenarios, same expectations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from faces import Face, run

from zmqbus import (
    Broker,
    BusClosed,
    HandlerError,
    Message,
    NoResponders,
    PublishResult,
    PublishTimeout,
    ReentrantPublish,
    RequestTimeout,
    SubscriptionClosed,
    ZmqbusError,
)

FACES = ["threaded", "asyncio", "uvloop"]

Scenario = Callable[[Face, uuid.UUID], Awaitable[None]]


@pytest.fixture(params=FACES)
def scenario(request: pytest.FixtureRequest, broker: Broker) -> Callable[[Scenario], None]:
    name = request.param

    def go(body: Scenario) -> None:
        async def main() -> None:
            face = Face(name, broker.address)
            try:
                await body(face, uuid.uuid4())
            finally:
                await face.close_all()

        run(name, main())

    return go


# --- pub/sub basics ----------------------------------------------------------


def test_publish_subscribe_fields(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub = await face.bus(ch), await face.bus(ch)
        s = await sub.subscribe("orders.*")
        r = await pub.publish("orders.created", b'{"id": 1}', {"user_id": "7"})
        assert r == PublishResult(delivered=1, dropped=0, failed=0, buses=1)
        msg = await s.get()
        assert (msg.topic, msg.payload, msg.headers) == (
            "orders.created",
            b'{"id": 1}',
            {"user_id": "7"},
        )
        assert msg.timestamp.utcoffset() is not None and not msg.timestamp.utcoffset()  # UTC
        assert not msg.is_request

    scenario(body)


def test_handler_error_reaches_publisher(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub = await face.bus(ch), await face.bus(ch)

        def failing(msg: Message) -> None:
            raise ValueError(f"bad {msg.payload.decode()}")

        await sub.subscribe("pay", handler=failing)
        ok = await sub.subscribe("pay")
        with pytest.raises(HandlerError) as info:
            await pub.publish("pay", b"42")
        assert info.value.errors == ["ValueError: bad 42"]
        assert (info.value.result.delivered, info.value.result.failed) == (1, 1)
        assert (await ok.get()).payload == b"42"

    scenario(body)


def test_no_subscribers_and_channel_isolation(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub = await face.bus(ch)
        other = await face.bus(uuid.uuid4())
        s = await other.subscribe(">")
        assert await pub.publish("a.b", b"") == PublishResult(0, 0, 0, 0)
        await other.publish("sentinel", b"")
        assert (await s.get()).topic == "sentinel"

    scenario(body)


def test_timed_out_publish_leaves_bus_usable(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub = await face.bus(ch), await face.bus(ch)
        gate = face.gate()
        await sub.subscribe("slow", handler=gate.handler())
        fast = await sub.subscribe("fast")
        try:
            with pytest.raises(PublishTimeout) as info:
                await pub.publish("slow", b"", timeout=0.2)
            assert isinstance(info.value, TimeoutError) and info.value.expected == 1
            assert (await pub.publish("fast", b"next")).delivered == 1
            assert (await fast.get()).payload == b"next"
        finally:
            gate.open()
        assert (await pub.publish("fast", b"again")).delivered == 1

    scenario(body)


def test_buffer_full_drops_and_counts(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub = await face.bus(ch), await face.bus(ch)
        s = await sub.subscribe("burst", maxsize=2)
        results = [await pub.publish("burst", bytes([i])) for i in range(4)]
        assert [r.dropped for r in results] == [0, 0, 1, 1]
        assert s.dropped == 2
        assert [m.payload for m in await s.drain()] == [b"\x00", b"\x01"]

    scenario(body)


def test_unsubscribe_ends_iteration(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub = await face.bus(ch), await face.bus(ch)
        s = await sub.subscribe("it")
        for i in range(3):
            await pub.publish("it", bytes([i]))
        assert await sub.unsubscribe("it") == 1
        assert [m.payload for m in await s.rest()] == [b"\x00", b"\x01", b"\x02"]
        with pytest.raises(SubscriptionClosed):
            await s.get(0.1)
        assert (await pub.publish("it", b"")).delivered == 0

    scenario(body)


def test_bad_input_is_typed(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        bus = await face.bus(ch)
        with pytest.raises(TypeError):
            await bus.publish("a", "text")
        with pytest.raises(TypeError):
            await bus.publish("a", b"", {"k": 1})
        with pytest.raises(ValueError):
            await bus.publish("a.*", b"")
        with pytest.raises(ValueError):
            await bus.subscribe("a..b")
        with pytest.raises(ValueError):
            await bus.subscribe("a", maxsize=0)
        with pytest.raises(ValueError):
            await bus.subscribe("a", queue="bad queue")
        with pytest.raises(ValueError):
            await bus.request("a.>", b"")
        with pytest.raises(ValueError):
            await bus.publish("a", b"", timeout=0)

    scenario(body)


def test_close_fails_pending_and_later_calls(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub = await face.bus(ch), await face.bus(ch)
        gate = face.gate()
        await sub.subscribe("hold", handler=gate.handler())
        pending = asyncio.ensure_future(pub.publish("hold", b"", timeout=10))
        try:
            await asyncio.wait_for(gate.entered.wait(), 5)
            await pub.close()
            with pytest.raises(BusClosed):
                await asyncio.wait_for(pending, 5)
        finally:
            gate.open()
        with pytest.raises(BusClosed):
            await pub.publish("hold", b"")
        with pytest.raises(BusClosed):
            await pub.subscribe("x")

    scenario(body)


def test_handler_may_publish_confirmed_on_same_bus(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        bus = await face.bus(ch)
        done = await bus.subscribe("stage.done")
        raw = bus.bus
        if face.threaded:

            def stage(msg: Message) -> None:
                raw.publish("stage.done", msg.payload.upper())

            await bus.subscribe("stage.raw", handler=stage)
        else:

            async def astage(msg: Message) -> None:
                await raw.publish("stage.done", msg.payload.upper())

            await bus.subscribe("stage.raw", handler=astage)
        r = await bus.publish("stage.raw", b"data")
        assert r.delivered == 1
        assert (await done.get(0)).payload == b"DATA"

    scenario(body)


def test_handler_confirmed_publish_to_own_topic_fails_at_once(
    scenario: Callable[[Scenario], None],
) -> None:
    # The message would come back to this very handler, which is busy waiting for
    # its confirmation: it once stalled until the timeout, now it fails at once.
    async def body(face: Face, ch: uuid.UUID) -> None:
        bus = await face.bus(ch)
        again = await bus.subscribe("echo.again")
        raw = bus.bus
        errors: list[BaseException] = []
        # Unconfirmed, a handler may publish to its own subscription (it gets the
        # message after it returns).
        if face.threaded:

            def echo(msg: Message) -> None:
                if msg.topic == "echo.start":
                    try:
                        raw.publish("echo.again", b"confirmed", timeout=30)
                    except ZmqbusError as exc:
                        errors.append(exc)
                    raw.publish("echo.again", b"unconfirmed", confirm=False)

            await bus.subscribe("echo.*", handler=echo)
        else:

            async def aecho(msg: Message) -> None:
                if msg.topic == "echo.start":
                    try:
                        await raw.publish("echo.again", b"confirmed", timeout=30)
                    except ZmqbusError as exc:
                        errors.append(exc)
                    await raw.publish("echo.again", b"unconfirmed", confirm=False)

            await bus.subscribe("echo.*", handler=aecho)
        r = await bus.publish("echo.start", b"", timeout=10)
        assert r.delivered == 1
        assert [type(e) for e in errors] == [ReentrantPublish]
        assert (errors[0].pattern, errors[0].topic) == ("echo.*", "echo.again")  # type: ignore[attr-defined]
        assert "confirm=False" in str(errors[0])
        assert (await again.get()).payload == b"unconfirmed"

    scenario(body)


# --- queue groups ------------------------------------------------------------


def test_queue_group_each_message_once_spread(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub = await face.bus(ch)
        workers = [await face.bus(ch) for _ in range(3)]
        subs = [await w.subscribe("jobs.*", maxsize=1000, queue="workers") for w in workers]
        watcher = await (await face.bus(ch)).subscribe("jobs.>", maxsize=1000)
        for i in range(60):
            r = await pub.publish("jobs.email", str(i).encode())
            assert (r.delivered, r.buses) == (2, 2)
        got = [[m.payload for m in await s.drain()] for s in subs]
        every = sorted(p for g in got for p in g)
        assert every == sorted(str(i).encode() for i in range(60))  # each exactly once
        assert all(len(g) >= 10 for g in got), [len(g) for g in got]  # spread
        assert len(await watcher.drain()) == 60  # plain subscriptions see all

    scenario(body)


def test_queue_group_member_leaving_stops_at_once(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub = await face.bus(ch)
        a, b = await face.bus(ch), await face.bus(ch)
        sa = await a.subscribe("w", maxsize=1000, queue="q")
        sb = await b.subscribe("w", maxsize=1000, queue="q")
        await sa.unsubscribe()
        for i in range(10):
            assert (await pub.publish("w", bytes([i]))).delivered == 1
        assert len(await sb.drain()) == 10 and len(await sa.drain()) == 0

    scenario(body)


def test_queue_member_closing_reports_unconfirmed(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, worker = await face.bus(ch), await face.bus(ch)
        gate = face.gate()
        await worker.subscribe("job", handler=gate.handler(), queue="q")
        pending = asyncio.ensure_future(pub.publish("job", b"", timeout=10))
        try:
            await asyncio.wait_for(gate.entered.wait(), 5)
            await worker.close()
            with pytest.raises(HandlerError) as info:
                await asyncio.wait_for(pending, 5)
            assert "closed" in str(info.value)
        finally:
            gate.open()

    scenario(body)


# --- request / reply ---------------------------------------------------------


def test_request_reply_handler_returns_bytes(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client, server = await face.bus(ch), await face.bus(ch)
        await server.subscribe("math.double", handler=lambda m: str(2 * int(m.payload)).encode())
        reply = await client.request("math.double", b"21", {"trace": "t1"})
        assert reply.payload == b"42"
        assert reply.topic == "math.double"

    scenario(body)


def test_request_answered_with_respond(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client, server = await face.bus(ch), await face.bus(ch)
        s = await server.subscribe("svc.echo")
        call = asyncio.ensure_future(client.request("svc.echo", b"ping"))
        req = await s.get()
        assert req.is_request
        plain = Message(req.id, req.topic, req.payload, req.headers, req.timestamp)
        assert req == plain and repr(req) == repr(plain)  # reply context is invisible
        req.respond(b"pong", {"via": "respond"})
        with pytest.raises(ZmqbusError):
            req.respond(b"twice")
        reply = await asyncio.wait_for(call, 5)
        assert (reply.payload, reply.headers) == (b"pong", {"via": "respond"})

    scenario(body)


def test_request_no_responders_is_immediate(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client = await face.bus(ch)
        await client.subscribe("other")
        with pytest.raises(NoResponders):
            await client.request("nobody.home", b"", timeout=30)

    scenario(body)


def test_request_handler_error_and_timeout(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client, server = await face.bus(ch), await face.bus(ch)

        def boom(msg: Message) -> bytes:
            raise KeyError("missing")

        await server.subscribe("fail", handler=boom)
        with pytest.raises(HandlerError) as info:
            await client.request("fail", b"")
        assert info.value.errors == ["KeyError: 'missing'"]
        await server.subscribe("silent", handler=lambda m: None)
        with pytest.raises(RequestTimeout) as tinfo:
            await client.request("silent", b"", timeout=0.2)
        assert isinstance(tinfo.value, TimeoutError)
        await server.subscribe("ok", handler=lambda m: b"fine")
        assert (await client.request("ok", b"")).payload == b"fine"

    scenario(body)


def test_late_reply_dropped_and_counted(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client, server = await face.bus(ch), await face.bus(ch)
        gate = face.gate()
        await server.subscribe("late", handler=gate.handler(result=b"too late"))
        try:
            with pytest.raises(RequestTimeout):
                await client.request("late", b"", timeout=0.2)
        finally:
            gate.open()
        # the late answer arrives and is counted; the next request gets its own reply
        await server.subscribe("now", handler=lambda m: b"on time")
        assert (await client.request("now", b"")).payload == b"on time"
        for _ in range(100):
            if client.counters["late_replies"]:
                break
            await client.publish("sync", b"")  # a round trip: lets the late answer land
        assert client.counters["late_replies"] == 1

    scenario(body)


def test_request_to_queue_group_reaches_one_member(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client = await face.bus(ch)
        servers = [await face.bus(ch) for _ in range(3)]
        for i, s in enumerate(servers):
            await s.subscribe("svc", handler=lambda m, i=i: str(i).encode(), queue="pool")
        answers = [(await client.request("svc", b"")).payload for _ in range(30)]
        assert set(answers) == {b"0", b"1", b"2"}

    scenario(body)


def test_concurrent_requests_each_get_their_own_reply(scenario: Callable[[Scenario], None]) -> None:
    async def body(face: Face, ch: uuid.UUID) -> None:
        client, server = await face.bus(ch), await face.bus(ch)
        await server.subscribe("echo", handler=lambda m: m.payload, maxsize=1000)
        payloads = [str(i).encode() for i in range(40)]
        replies = await asyncio.gather(*(client.request("echo", p, timeout=20) for p in payloads))
        assert [r.payload for r in replies] == payloads

    scenario(body)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cancelled_publish_and_get_lose_nothing(broker: Broker, loop: str) -> None:
    """asyncio only: cancelling a task awaiting publish or get loses no other
    message and leaves the bus usable."""

    async def body() -> None:
        face = Face("asyncio", broker.address)
        try:
            ch = uuid.uuid4()
            pub, sub = await face.bus(ch), await face.bus(ch)
            gate = face.gate()
            await sub.subscribe("slow", handler=gate.handler())
            s = await sub.subscribe("data", maxsize=1000)
            waiting_get = asyncio.ensure_future(s.get(timeout=30))
            waiting_pub = asyncio.ensure_future(pub.publish("slow", b"", timeout=30))
            await asyncio.wait_for(gate.entered.wait(), 5)
            waiting_get.cancel()
            waiting_pub.cancel()
            for task in (waiting_get, waiting_pub):
                with pytest.raises(asyncio.CancelledError):
                    await task
            for i in range(20):
                assert (await pub.publish("data", bytes([i]))).delivered == 1
            assert [m.payload for m in await s.drain()] == [bytes([i]) for i in range(20)]
            gate.open()
            assert (await pub.publish("slow", b"again")).delivered == 1
        finally:
            await face.close_all()

    run(loop, body())


def test_big_bodies_pass_the_broker_whole(scenario: Callable[[Scenario], None]) -> None:
    # Bodies past FORWARD_BYTES leave the broker from libzmq's buffer, uncopied:
    # to a plain subscriber, a queue group member, and both ways of a request.
    big = bytes(range(256)) * 1200  # 300 KiB
    other = big[::-1]

    async def body(face: Face, ch: uuid.UUID) -> None:
        pub, sub, server = await face.bus(ch), await face.bus(ch), await face.bus(ch)
        plain = await sub.subscribe("big.>")
        grouped = await sub.subscribe("big.>", queue="q")
        await server.subscribe("svc.big", handler=lambda m: m.payload[::-1])
        result = await pub.publish("big.one", big, confirm=True)
        assert result.delivered == 2
        for s in (plain, grouped):
            got = await s.get()
            assert got.payload == big and got.topic == "big.one"
        reply = await pub.request("svc.big", other)
        assert reply.payload == big

    scenario(body)
