"""A hostile or broken broker must not hang, flood or crash a bus (issue #13).

The broker here is a bare ROUTER the test drives: it answers HELLO with the
WELCOME (or garbage) the test wants, and sends frames no real broker would.
Each test checks a bound of the client: a clear error, a skipped message that
is counted, a connection libzmq drops, a read that waits for the socket, a bus
that closes with the cause of its failure.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import zmqbus.aio
from zmqbus import Broker, Bus, BusClosed, ProtocolError
from zmqbus import protocol as p
from zmqbus._client import FIRST_MAX_MESSAGE_SIZE, FRAME_ALLOWANCE

CH = uuid.UUID(int=0x13)
C = CH.bytes


def deliver(
    sid: bytes, payload: bytes = b"hi", token: bytes = b"", topic: bytes = b"t"
) -> list[bytes]:
    body = p.pack_message(bytes(16), time.time_ns(), {}, payload)
    return p.encode(p.Deliver(C, token, topic, body, sid))


class Fake:
    """A broker that does only what the test tells it to."""

    def __init__(self, ctx: zmq.Context[Any] | None = None, *, rcvhwm: int = 1000) -> None:
        self.own = ctx is None
        self.ctx: zmq.Context[Any] = ctx if ctx is not None else zmq.Context()
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 5000)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # a ROUTER drops what its queue cannot hold
        if ctx is None:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
            self.address = f"tcp://127.0.0.1:{port}"
        else:
            self.address = f"inproc://fake-broker-{uuid.uuid4().hex}"
            self.sock.bind(self.address)

    def recv(self, *headers: bytes) -> tuple[bytes, list[bytes]]:
        """The next message (one of ``headers``, others skipped), within 5 s."""
        while True:
            ident, *frames = self.sock.recv_multipart()
            if not headers or frames[0] in headers:
                return ident, frames

    def send(self, ident: bytes, frames: list[bytes]) -> None:
        self.sock.send_multipart([ident, *frames])

    def handshake(self, max_message_size: int = 1 << 20, **extra: Any) -> bytes:
        """Answer the next HELLO with this WELCOME; return the bus's identity."""
        ident, _ = self.recv(p.H_HELLO)
        body = p.pack_welcome("fake", max_message_size, **extra)
        self.send(ident, p.encode(p.Welcome(C, body)))
        return ident

    def subscribed(self) -> tuple[bytes, bytes]:
        """Confirm the next SUBSCRIBE; return (identity, sid)."""
        ident, frames = self.recv(p.H_SUBSCRIBE)
        self.send(ident, p.encode(p.Ok(C, frames[2])))
        return ident, frames[3]

    def close(self) -> None:
        self.sock.close(0)
        if self.own:
            self.ctx.term()


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.close()


def in_thread(fn: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn)
    pool.shutdown(wait=False)
    return fut


def connect(fake: Fake, **bus_kw: Any) -> tuple[Bus, bytes]:
    fut = in_thread(lambda: Bus(fake.address, CH, **bus_kw))
    ident = fake.handshake()
    return fut.result(10), ident


def subscribe(fake: Fake, bus: Bus, pattern: str = "t", **kw: Any) -> tuple[Any, bytes, bytes]:
    fut = in_thread(lambda: bus.subscribe(pattern, **kw))
    ident, sid = fake.subscribed()
    return fut.result(10), ident, sid


# --- WELCOME -------------------------------------------------------------------------

BAD_WELCOMES = {
    "heartbeat 2**63": {"heartbeat": 2**63},
    "heartbeat 1 ms": {"heartbeat": 1},
    "max_message_size 2**63": {"max_message_size": 2**63},
    "max_message_size 0": {"max_message_size": 0},
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("welcome", BAD_WELCOMES.values(), ids=BAD_WELCOMES.keys())
def test_a_welcome_out_of_range_fails_connect_with_a_protocol_error(
    fake: Fake, welcome: dict[str, Any]
) -> None:
    t0 = time.monotonic()
    fut = in_thread(lambda: Bus(fake.address, CH, connect_timeout=10))
    fake.handshake(**welcome)
    with pytest.raises(ProtocolError) as err:
        fut.result(15)
    assert err.value.code == p.ErrorCode.BAD_BODY
    assert time.monotonic() - t0 < 5  # at once, not at connect_timeout


@pytest.mark.timeout(20)
def test_asyncio_a_welcome_out_of_range_fails_connect_with_a_protocol_error(fake: Fake) -> None:
    async def main() -> None:
        answered = asyncio.create_task(asyncio.to_thread(fake.handshake, heartbeat=2**63))
        with pytest.raises(ProtocolError):
            await zmqbus.aio.Bus(fake.address, CH, connect_timeout=10).connect()
        await answered

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_a_bad_welcome_on_rejoin_is_retried_with_backoff(fake: Fake) -> None:
    rejoined = threading.Event()
    bus, ident = connect(fake, heartbeat=0, on_reconnected=rejoined.set)
    try:
        fake.send(ident, p.encode(p.Bye(C)))
        fake.handshake(heartbeat=2**63)  # the rejoin's HELLO
        fake.handshake()  # the next attempt's
        assert rejoined.wait(5)
        assert bus.state == "connected"
        assert bus._core.counters["protocol_errors"] == 1
    finally:
        bus.close()


# --- frame sizes -----------------------------------------------------------------------


def _disconnects(fake: Fake) -> Callable[[], None]:
    mon = fake.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    mon.setsockopt(zmq.RCVTIMEO, 5000)

    def wait() -> None:
        try:
            assert recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED
        finally:
            fake.sock.disable_monitor()
            mon.close(0)

    return wait


@pytest.mark.timeout(30)
def test_a_frame_over_the_limit_drops_the_connection_and_is_never_delivered(fake: Fake) -> None:
    bus, _ = connect(fake, heartbeat=0)
    try:
        sub, ident, sid = subscribe(fake, bus)
        disconnected = _disconnects(fake)
        too_big = FIRST_MAX_MESSAGE_SIZE + FRAME_ALLOWANCE + 1
        fake.send(ident, deliver(sid, b"x" * too_big))
        disconnected()
        # libzmq refused the frame as it arrived (nothing later can come: it
        # does not reconnect after a protocol error; heartbeats notice the loss).
        assert len(sub) == 0 and sub.received == 0
        assert bus._io.thread.is_alive()
    finally:
        t0 = time.monotonic()
        bus.close()
        assert time.monotonic() - t0 < 5


@pytest.mark.timeout(30)
def test_a_broker_with_larger_messages_gets_a_socket_that_takes_them(fake: Fake) -> None:
    big = 4 << 20
    fut = in_thread(lambda: Bus(fake.address, CH, heartbeat=0))
    first = fake.handshake(max_message_size=big)
    second = fake.handshake(max_message_size=big)  # again, on a fresh socket
    bus = fut.result(10)
    try:
        assert first != second
        assert bus.max_message_size == big
        sub, ident, sid = subscribe(fake, bus)
        assert ident == second
        fake.send(ident, deliver(sid, b"x" * (3 << 20)))
        assert len(sub.get(timeout=5).payload) == 3 << 20
        disconnected = _disconnects(fake)
        fake.send(ident, deliver(sid, b"x" * (big + FRAME_ALLOWANCE + 1)))
        disconnected()
    finally:
        bus.close()


# --- short and malformed messages ------------------------------------------------------


def _short(sid: bytes) -> dict[str, list[list[bytes]]]:
    whole = deliver(sid, b"x")
    return {
        "header alone": [[p.H_DELIVER]],
        "four frames of six": [whole[:4]],
        "header alone then a heartbeat": [[p.H_DELIVER], p.encode(p.BrokerHeartbeat(C))],
        "batch header alone": [[p.H_BROKER_BATCH]],
    }


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(_short(b"\0\0\0\1")))
def test_a_short_message_is_counted_and_skipped_and_the_next_one_kept(
    fake: Fake, case: str
) -> None:
    bus, _ = connect(fake, heartbeat=0)
    try:
        sub, ident, sid = subscribe(fake, bus)
        for frames in _short(sid)[case]:
            fake.send(ident, frames)
        # The I/O thread is not blocked in a read: it still sends.
        bus.publish("t", b"ping", confirm=False)
        fake.recv(p.H_PUBLISH)
        fake.send(ident, deliver(sid, b"next"))
        assert sub.get(timeout=5).payload == b"next"
        assert bus._core.counters["protocol_errors"] == 1
    finally:
        bus.close()


@pytest.mark.timeout(30)
def test_asyncio_a_short_message_is_skipped_and_the_next_one_kept(fake: Fake) -> None:
    async def main() -> None:
        answered = asyncio.create_task(asyncio.to_thread(fake.handshake))
        async with zmqbus.aio.Bus(fake.address, CH, heartbeat=0) as bus:
            await answered
            subscribed = asyncio.create_task(asyncio.to_thread(fake.subscribed))
            sub = await bus.subscribe("t")
            ident, sid = await subscribed
            fake.send(ident, [p.H_DELIVER])
            fake.send(ident, deliver(sid, b"next"))
            assert (await sub.get(timeout=5)).payload == b"next"
            assert bus._core.counters["protocol_errors"] == 1

    asyncio.run(main())


# --- ACKs while the socket cannot send -----------------------------------------------


@pytest.mark.timeout(60)
def test_acks_wait_for_the_socket_instead_of_piling_up() -> None:
    # inproc: the bus's sends stop after its SNDHWM and the fake's RCVHWM.
    ctx = zmq.Context()
    fake = Fake(ctx, rcvhwm=1)
    hwm, count = 10, 2000
    try:
        fut = in_thread(lambda: Bus(fake.address, CH, context=ctx, hwm=hwm, heartbeat=0))
        fake.handshake()
        bus = fut.result(10)
        sub, ident, sid = subscribe(fake, bus, maxsize=count)
        for i in range(count):
            fake.send(ident, deliver(sid, b"m", token=i.to_bytes(4, "big")))
        sub.get(timeout=5)
        # A claim that something does not happen needs a window: with the
        # reading unbounded, every delivery was read within milliseconds.
        time.sleep(0.5)
        assert sub.received <= 4 * hwm
        assert len(bus._io._out) + bus._core.queued <= hwm + 1
        tokens: set[bytes] = set()
        while len(tokens) < count:
            _, frames = fake.recv(p.H_ACK)
            tokens.add(frames[2])
        assert sub.received == count
        bus.close()
    finally:
        fake.close()
        ctx.term()


# --- a driver that fails ---------------------------------------------------------------


def _broken() -> Any:
    raise RuntimeError("injected")


@pytest.mark.timeout(30)
def test_a_failed_io_thread_closes_the_bus_with_its_cause(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, _ = connect(fake, heartbeat=0)
    pending = bus.publish_nowait("t", b"in flight", timeout=30)
    fake.recv(p.H_PUBLISH)
    # Fault injection: the core fails under the loop (as zmq.poll once did).
    monkeypatch.setattr(bus._core, "take_outgoing", _broken)
    bus._io.submit(lambda: None)  # wakes the loop, which then fails
    with pytest.raises(BusClosed) as err:
        pending.result(5)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert bus.state == "closed" and isinstance(bus.failure, RuntimeError)
    with pytest.raises(BusClosed) as err:
        bus.publish("t", b"x", confirm=False)
    assert isinstance(err.value.__cause__, RuntimeError)
    t0 = time.monotonic()
    bus.close()
    assert time.monotonic() - t0 < 1.0
    assert not bus._io.thread.is_alive()


@pytest.mark.timeout(30)
def test_asyncio_a_failed_driver_closes_the_bus_with_its_cause(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        answered = asyncio.create_task(asyncio.to_thread(fake.handshake))
        bus = await zmqbus.aio.Bus(fake.address, CH, heartbeat=0).connect()
        await answered
        pending = bus.publish_nowait("t", b"in flight", timeout=30)
        await asyncio.to_thread(fake.recv, p.H_PUBLISH)
        monkeypatch.setattr(bus._core, "take_outgoing", _broken)
        await bus.publish("t", b"x", confirm=False)  # its send fails
        with pytest.raises(BusClosed) as err:
            await pending
        assert isinstance(err.value.__cause__, RuntimeError)
        assert bus.state == "closed" and isinstance(bus.failure, RuntimeError)
        with pytest.raises(BusClosed) as err:
            await bus.publish("t", b"x", confirm=False)
        assert isinstance(err.value.__cause__, RuntimeError)
        await asyncio.wait_for(bus.close(), 1.0)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_an_endless_timeout_does_not_stop_the_io(broker: Broker) -> None:
    with Bus(broker.address, CH) as pub:
        pub.publish_nowait("nobody", b"x", timeout=float("inf"))
        pub.publish_nowait("nobody", b"x", timeout=1e300)
        assert pub.publish("nobody", b"y", timeout=5).buses == 0
        assert pub.publish("nobody", b"z", timeout=float("inf")).buses == 0
        assert pub.state == "connected"
