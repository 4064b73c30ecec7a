"""Shared fixtures: a real broker on an ephemeral loopback port, buses on it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import zmq
from brokers import BrokerProcess, free_port

from zmqbus import Broker, Bus


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A broker on tcp://127.0.0.1 with a free port, stopped after the test."""
    with Broker("tcp://127.0.0.1:0") as b:
        yield b


@pytest.fixture
def broker_process() -> Iterator[BrokerProcess]:
    """`zmqbus broker` in a process of its own on a free loopback port, killed after."""
    bp = BrokerProcess(f"tcp://127.0.0.1:{free_port()}")
    bp.start()
    yield bp
    bp.stop()


@pytest.fixture
def channel() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def make_bus(broker: Broker, channel: uuid.UUID) -> Iterator[Callable[..., Bus]]:
    """Factory for buses on the test broker (default: the test's channel); all closed after."""
    buses: list[Bus] = []

    def make(channel_id: uuid.UUID | str | None = None, **kwargs: object) -> Bus:
        bus = Bus(broker.address, channel_id or channel, **kwargs)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


@pytest.fixture
def raw_dealer(broker: Broker) -> Iterator[Callable[[], zmq.Socket[bytes]]]:
    """Factory for bare DEALER sockets connected to the test broker (linger 0, rcvtimeo 5 s)."""
    socks: list[zmq.Socket[bytes]] = []
    ctx = zmq.Context.instance()

    def make() -> zmq.Socket[bytes]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 5000)
        s.connect(broker.address)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(0)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves zmqbus threads running after its fixtures are torn down."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("zmqbus") and t.is_alive()
    ]
    for t in leaked:
        t.join(2.0)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"
