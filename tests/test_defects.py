"""Defects that lost messages in ordinary use (issue 12), each with the test
that failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from zmqbus import Broker, Bus
from zmqbus.aio import Bus as AsyncBus


@pytest.mark.timeout(60)
def test_a_bus_that_never_stops_sending_still_hears_the_broker() -> None:
    # Its I/O thread once read only when its send queue ran dry: a publisher that
    # never paused left the broker's heartbeats unread, declared the broker silent
    # after LIVENESS intervals, reconnected and dropped what it held.
    channel = uuid.uuid4()
    lost = threading.Event()
    with (
        Broker("tcp://127.0.0.1:0") as broker,
        Bus(broker.address, channel, heartbeat=0.25) as sub_bus,
        Bus(broker.address, channel, heartbeat=0.25, on_disconnected=lost.set) as pub,
    ):
        sub = sub_bus.subscribe("flood", maxsize=10_000_000)
        sent = 0
        # Six liveness windows (3 x 250 ms) of sending without pause.
        end = time.monotonic() + 4.5
        while time.monotonic() < end:
            for _ in range(200):
                pub.publish("flood", b"x" * 16, confirm=False)
            sent += 200
        # A confirmed publish is ordered after every unconfirmed one before it.
        assert pub.publish("flood", b"last", timeout=30.0).delivered == 1
        sent += 1
        assert not lost.is_set(), "the publisher declared a live broker dead"
        assert sub.received == sent
        assert sub.dropped == 0


@pytest.mark.timeout(60)
def test_an_asyncio_bus_that_never_stops_sending_still_hears_the_broker() -> None:
    channel = uuid.uuid4()
    lost = threading.Event()

    async def main(address: str) -> tuple[int, int, int]:
        async with (
            AsyncBus(address, channel, heartbeat=0.25) as sub_bus,
            AsyncBus(address, channel, heartbeat=0.25, on_disconnected=lost.set) as pub,
        ):
            sub = await sub_bus.subscribe("flood", maxsize=10_000_000)
            sent = 0
            end = time.monotonic() + 4.5
            while time.monotonic() < end:
                for _ in range(200):
                    await pub.publish("flood", b"x" * 16, confirm=False)
                sent += 200
                await asyncio.sleep(0)  # a publisher that lets its loop turn, as any task does
            assert (await pub.publish("flood", b"last", timeout=30.0)).delivered == 1
            return sent + 1, sub.received, sub.dropped

    with Broker("tcp://127.0.0.1:0") as broker:
        sent, received, dropped = asyncio.run(main(broker.address))
    assert not lost.is_set(), "the publisher declared a live broker dead"
    assert (received, dropped) == (sent, 0)

