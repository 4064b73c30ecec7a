"""Starting, stopping, connecting and closing: no hang, no leak, no spin."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import zmq
from brokers import free_port

from zmqbus import Broker, Bus, BusClosed, ConnectTimeout, Message


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _zmqbus_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("zmqbus")]


def test_broker_address_resolves_port() -> None:
    with Broker("tcp://127.0.0.1:0") as b:
        host, _, port = b.address.rpartition(":")
        assert host == "tcp://127.0.0.1" and int(port) > 0
        assert b.running
    assert not b.running


def test_broker_address_before_start() -> None:
    b = Broker("tcp://127.0.0.1:0")
    with pytest.raises(RuntimeError):
        _ = b.address


def test_broker_stop_idempotent_and_start_twice() -> None:
    b = Broker("tcp://127.0.0.1:0").start()
    with pytest.raises(RuntimeError):
        b.start()
    b.stop()
    b.stop()
    assert b.wait(0)


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:99999", "nonsense", "tcp://127.0.0.1:x", ""])
def test_broker_bad_bind_is_value_error(bind: str) -> None:
    with pytest.raises(ValueError):
        Broker(bind)


def test_broker_bind_type_error() -> None:
    with pytest.raises(TypeError):
        Broker(["tcp://127.0.0.1:0"])  # type: ignore[arg-type]


def test_broker_port_in_use_raises_at_start() -> None:
    with Broker("tcp://127.0.0.1:0") as b, pytest.raises(zmq.ZMQError):
        Broker(b.address).start()


def test_seed_address_forms() -> None:
    port = free_port()
    with Broker(str(port)) as b:
        assert b.address == f"tcp://127.0.0.1:{port}"
        ch = uuid.uuid4()
        with Bus(f"127.0.0.1:{port}", ch) as pub, Bus(f"127.0.0.1:{port}", ch) as sub:
            s = sub.subscribe("seed")
            assert pub.publish("seed", b"ok").delivered == 1
            assert s.get(timeout=5).payload == b"ok"


def test_inproc_with_shared_context() -> None:
    ctx = zmq.Context()
    try:
        with Broker("inproc://zmqbus-test-inproc", context=ctx) as b:
            ch = uuid.uuid4()
            with Bus(b.address, ch, context=ctx) as pub, Bus(b.address, ch, context=ctx) as sub:
                s = sub.subscribe("in.>")
                assert pub.publish("in.proc", b"fast").delivered == 1
                assert s.get(timeout=5).payload == b"fast"
    finally:
        ctx.term()


def test_connect_timeout_when_no_broker() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as info:
        Bus(f"tcp://127.0.0.1:{port}", uuid.uuid4(), connect_timeout=0.3)
    assert isinstance(info.value, ConnectionError)
    assert time.monotonic() - started < 3
    assert not _zmqbus_threads()


@pytest.mark.parametrize("address", ["", "localhost", "tcp://127.0.0.1:0", "udp://x:1", 5])
def test_bus_bad_address(address: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Bus(address, uuid.uuid4())  # type: ignore[arg-type]


def test_close_flushes_unconfirmed_publishes(broker: Broker, channel: uuid.UUID) -> None:
    with Bus(broker.address, channel) as sub:
        s = sub.subscribe("flush", maxsize=10_000)
        pub = Bus(broker.address, channel)
        for i in range(2000):
            pub.publish("flush", str(i).encode(), confirm=False)
        pub.close()
        got = [s.get(timeout=10).payload for _ in range(2000)]
        assert got == [str(i).encode() for i in range(2000)]


def test_close_with_broker_gone_is_bounded() -> None:
    b = Broker("tcp://127.0.0.1:0").start()
    bus = Bus(b.address, uuid.uuid4(), close_timeout=0.3)
    bus.subscribe("x")
    b.stop()
    started = time.monotonic()
    bus.close()
    assert time.monotonic() - started < 3
    with pytest.raises(BusClosed):
        bus.publish("x", b"")


def test_publish_after_broker_gone_times_out_not_hangs() -> None:
    b = Broker("tcp://127.0.0.1:0").start()
    with Bus(b.address, uuid.uuid4(), close_timeout=0.2) as bus:
        b.stop()
        with pytest.raises(TimeoutError):
            bus.publish("x", b"", timeout=0.2)


def test_broker_stop_with_connected_buses() -> None:
    b = Broker("tcp://127.0.0.1:0").start()
    buses = [Bus(b.address, uuid.uuid4(), close_timeout=0.2) for _ in range(3)]
    for bus in buses:
        bus.subscribe("a")
    b.stop(timeout=5)
    assert not b.running
    for bus in buses:
        bus.close()


def test_only_stop_stops_the_broker_even_mid_traffic() -> None:
    # stop() reaches the loop as a message on the broker's own ROUTER; a remote
    # peer sending the same bytes, under any routing id it picks, is refused.
    b = Broker("tcp://127.0.0.1:0").start()
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.setsockopt(zmq.ROUTING_ID, b"control")
    rogue.setsockopt(zmq.RCVTIMEO, 5000)
    rogue.connect(b.address)
    try:
        rogue.send(b"stop")
        reply = rogue.recv_multipart()
        assert reply[0][3] == 0x8F  # ERROR
        assert b.running
        ch = uuid.uuid4()
        with Bus(b.address, ch) as pub, Bus(b.address, ch, close_timeout=0.2) as sub:
            s = sub.subscribe("t", maxsize=100_000)
            assert pub.publish("t", b"before").delivered == 1
            done = threading.Event()

            def flood() -> None:
                try:
                    while not done.is_set():
                        pub.publish("t", b"x", confirm=False)
                except BusClosed:
                    pass

            flooder = threading.Thread(target=flood)
            flooder.start()
            s.get(timeout=5)
            t0 = time.monotonic()
            b.stop(timeout=5)
            assert time.monotonic() - t0 < 2.0
            done.set()
        # Closing the publisher ends a publish that waits for the lost broker.
        flooder.join(10)
        assert not flooder.is_alive()
        assert not b.running
    finally:
        rogue.close(0)
        ctx.term()


def test_stop_returns_when_the_loop_already_died(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: the loop's own code fails (outside message handling, which
    # turns errors into INTERNAL replies). stop() must not wait on a closed ROUTER.
    from zmqbus._routing import BrokerState

    def broken(self: BrokerState) -> list[tuple[bytes, list[bytes]]]:
        raise RuntimeError("injected")

    monkeypatch.setattr(BrokerState, "take_outgoing", broken)
    b = Broker("tcp://127.0.0.1:0").start()
    ctx = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(b.address)
    try:
        peer.send(b"anything")  # its ERROR reply makes the loop take what to send
        assert b.wait(5)
        t0 = time.monotonic()
        b.stop(timeout=2)
        assert time.monotonic() - t0 < 2.0
        assert not b.running
    finally:
        peer.close(0)
        ctx.term()


def test_thousand_bus_cycles_leave_nothing_behind(broker: Broker) -> None:
    # A context of the test's own: term() returns only once every socket on it
    # is closed, so a leaked socket hangs here and fails on the test timeout.
    ctx = zmq.Context()
    threads_before = set(_zmqbus_threads())
    fds_before = _fds()
    ch = uuid.uuid4()
    with Bus(broker.address, ch, context=ctx) as listener:
        s = listener.subscribe("cycle", maxsize=2000)
        for i in range(1000):
            with Bus(broker.address, ch, context=ctx) as bus:
                assert bus.publish("cycle", str(i).encode()).delivered == 1
        assert len(s) == 1000
    ctx.term()
    assert set(_zmqbus_threads()) <= threads_before
    assert _fds() <= fds_before
    assert broker.stats()["peers"] == 0


def test_bus_with_handlers_closes_cleanly(broker: Broker, channel: uuid.UUID) -> None:
    threads_before = set(_zmqbus_threads())
    for _ in range(50):
        with Bus(broker.address, channel) as bus:
            seen = threading.Event()
            bus.subscribe("h", handler=lambda m, e=seen: e.set())  # type: ignore[misc]
            bus.publish("h", b"")
            assert seen.is_set()
    assert set(_zmqbus_threads()) <= threads_before


def test_idle_broker_and_bus_do_not_spin(broker: Broker, channel: uuid.UUID) -> None:
    with Bus(broker.address, channel) as bus:
        s = bus.subscribe("idle")
        bus.subscribe("idle.h", handler=lambda m: None)
        bus.publish("idle", b"warm")
        s.get(timeout=5)
        cpu0 = time.process_time()
        # Measuring idleness needs idle wall time; nothing here waits on it for sync.
        threading.Event().wait(0.5)
        used = time.process_time() - cpu0
    assert used < 0.05, f"idle process used {used:.3f}s CPU in 0.5s"


def test_handler_subscription_thread_gone_after_unsubscribe(
    broker: Broker, channel: uuid.UUID
) -> None:
    with Bus(broker.address, channel) as bus:
        got: list[Message] = []
        bus.subscribe("u", handler=got.append)
        bus.publish("u", b"1")
        assert len([n for n in _zmqbus_threads() if "handler" in n]) == 1
        bus.unsubscribe("u")
        for t in threading.enumerate():
            if "handler" in t.name:
                t.join(5)
        assert not [n for n in _zmqbus_threads() if "handler" in n]
        assert [m.payload for m in got] == [b"1"]


def test_unconfirmed_publish_blocks_when_the_broker_stops_reading() -> None:
    # A hand-driven ROUTER stands in for a broker that accepts a bus, then stalls.
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.setsockopt(zmq.RCVHWM, 1)
    fake.bind("inproc://zmqbus-stalled-broker")
    from zmqbus import protocol as p

    done: list[int] = []
    bus_box: list[Bus] = []
    try:

        def connect() -> None:
            bus_box.append(
                Bus(
                    "inproc://zmqbus-stalled-broker", uuid.uuid4(), context=ctx, hwm=10, heartbeat=0
                )
            )

        t = threading.Thread(target=connect)
        t.start()
        hello = fake.recv_multipart()
        ident, channel = hello[0], hello[2]
        fake.send_multipart([ident, p.H_WELCOME, channel, p.pack_welcome("fake", 1 << 20)])
        t.join(5)
        bus = bus_box[0]

        def flood() -> None:
            for i in range(200):
                bus.publish("t", str(i).encode(), confirm=False)
                done.append(i)

        publisher = threading.Thread(target=flood)
        publisher.start()
        # Wait until the publisher makes no progress: the socket and the bus's
        # backlog are full and the broker does not read.
        deadline = time.monotonic() + 10
        last = -1
        while len(done) != last:
            assert time.monotonic() < deadline
            last = len(done)
            publisher.join(0.2)
        assert publisher.is_alive() and len(done) < 200  # held back, not queued without end
        got = []
        while len(got) < 200:  # the broker reads again: everything arrives, in order
            frames = fake.recv_multipart()
            got.append(p.unpack_message(frames[5]).payload)
        publisher.join(10)
        assert got == [str(i).encode() for i in range(200)]
    finally:
        for bus in bus_box:
            bus.close()  # the fake never answers DISCONNECT: bounded by close_timeout
        fake.close(0)
        ctx.term()


def test_async_unconfirmed_publish_waits_when_the_broker_stops_reading() -> None:
    import asyncio

    from zmqbus import protocol as p
    from zmqbus.aio import Bus as AsyncBus

    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.setsockopt(zmq.RCVHWM, 1)
    fake.setsockopt(zmq.RCVTIMEO, 10_000)
    fake.bind("inproc://zmqbus-stalled-broker-aio")
    welcomed = threading.Event()

    def greet() -> None:
        hello = fake.recv_multipart()
        fake.send_multipart([hello[0], p.H_WELCOME, hello[2], p.pack_welcome("fake", 1 << 20)])
        welcomed.set()

    async def main() -> None:
        greeter = threading.Thread(target=greet)
        greeter.start()
        bus = AsyncBus(
            "inproc://zmqbus-stalled-broker-aio",
            uuid.uuid4(),
            context=ctx,
            hwm=10,
            heartbeat=0,
            close_timeout=0.2,
        )
        await bus.connect()
        greeter.join(5)
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for i in range(200):
                await bus.publish("t", str(i).encode(), confirm=False)
                sent += 1

        task = asyncio.ensure_future(flood())
        # Yield to the flooding task until it makes no progress for 100 turns of
        # the loop (no wall-clock wait): the socket refuses, a full backlog builds.
        still, last = 0, -1
        while still < 100:
            await asyncio.sleep(0)
            still, last = (still + 1 if sent == last else 0), sent
        assert not task.done() and sent < 200
        got: list[bytes] = []
        reader = asyncio.get_running_loop().run_in_executor(
            None, lambda: [got.append(fake.recv_multipart()[5]) for _ in range(200)]
        )
        await asyncio.wait_for(task, 10)
        await asyncio.wait_for(reader, 10)
        assert [p.unpack_message(b).payload for b in got] == [str(i).encode() for i in range(200)]
        await bus.close()

    try:
        asyncio.run(main())
        assert welcomed.is_set()
    finally:
        fake.close(0)
        ctx.term()
