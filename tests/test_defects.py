"""Defects that lost messages in ordinary use (issue 12), each with the test
that failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from brokers import BrokerProcess
from frames import joined, publish_batch

from zmqbus import Broker, Bus, Limits
from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus.aio import Bus as AsyncBus


@pytest.mark.timeout(60)
def test_a_bus_that_never_stops_sending_still_hears_the_broker(
    broker_process: BrokerProcess,
) -> None:
    # Its I/O thread once read only when its send queue ran dry: a publisher that
    # never paused left the broker's heartbeats unread, declared the broker silent
    # after LIVENESS intervals, reconnected and dropped what it held.
    # The broker runs in a process of its own, as it did when this was found: in
    # this one it would share the GIL with the flooding publisher, and each of its
    # socket calls could wait a switch interval (5 ms) for it, so that one pass
    # of sends took 0.26 s and the broker itself fell silent.
    address = broker_process.address
    channel = uuid.uuid4()
    lost = threading.Event()
    sub_lost = threading.Event()
    with (
        # The subscriber's liveness is not what is tested: the default heartbeat.
        Bus(address, channel, on_disconnected=sub_lost.set) as sub_bus,
        Bus(address, channel, heartbeat=0.25, on_disconnected=lost.set) as pub,
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
        assert not sub_lost.is_set(), "the subscriber lost its session"
        assert sub.received == sent
        assert sub.dropped == 0


@pytest.mark.timeout(60)
def test_an_asyncio_bus_that_never_stops_sending_still_hears_the_broker(
    broker_process: BrokerProcess,
) -> None:
    # The broker in a process of its own, as in the threaded test above. A guard
    # for the asyncio face's reading under a flood: unlike the threaded test it
    # passes on the code before the fix too (its earlier failure there came with
    # the broker in this process, where the GIL made the broker itself slow).
    channel = uuid.uuid4()
    lost = threading.Event()
    sub_lost = threading.Event()

    async def main(address: str) -> tuple[int, int, int]:
        async with (
            # Default heartbeat for the subscriber, as in the threaded test above.
            AsyncBus(address, channel, on_disconnected=sub_lost.set) as sub_bus,
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

    sent, received, dropped = asyncio.run(main(broker_process.address))
    assert not lost.is_set(), "the publisher declared a live broker dead"
    assert not sub_lost.is_set(), "the subscriber lost its session"
    assert (received, dropped) == (sent, 0)


# --- DELIVER_BATCH and a peer with more sids than an entry can name ---------------

LIMIT = p.MAX_ENTRY_SIDS_BYTES // p.SID_BYTES  # 16,383


@pytest.mark.parametrize("count", [1, LIMIT - 1, LIMIT, LIMIT + 1, 4 * LIMIT])
def test_deliver_entries_name_any_number_of_sids(count: int) -> None:
    # 16,384 subscriptions once overflowed the 16-bit sids-length: every
    # PUBLISH_BATCH on the channel got ERROR 500 and nobody received anything.
    state = BrokerState(limits=Limits(max_subscriptions_per_peer=4 * LIMIT))
    joined(state, b"big", *[("orders.>", n) for n in range(1, count + 1)], client="t", batch=True)
    joined(state, b"small", ("orders.*", 1), client="t", batch=True)
    joined(state, b"pub", client="t")
    pairs = [(b"orders.a", b"1"), (b"orders.b.c", b"2"), (b"orders.d", b"3")]
    state.handle(b"pub", publish_batch(*pairs))
    got: dict[bytes, list[tuple[bytes, bytes, int]]] = {}
    for ident, frames in state.outbox:
        assert frames[0] != p.H_ERROR, p.parse_broker(frames)
        cmd = p.parse_broker(frames)
        if isinstance(cmd, p.DeliverBatch):
            for sids, topic, body in p.unpack_deliver_entries(cmd.entries):
                got.setdefault(ident, []).append((topic, body, len(sids) // 4))
        else:
            assert isinstance(cmd, p.Deliver) and cmd.token == b""
            got.setdefault(ident, []).append((cmd.topic, cmd.body, len(cmd.sids) // 4))
    # Every message, in publish order, naming every sid, whichever frame carried it.
    assert got[b"big"] == [(t, b, count) for t, b in pairs]
    assert got[b"small"] == [(b"orders.a", b"1", 1), (b"orders.d", b"3", 1)]
    assert sum(1 for i, f in state.outbox if i == b"big" and f[0] == p.H_DELIVER) == (
        3 if count > LIMIT else 0
    )


def test_a_deliver_entry_refuses_more_sids_than_its_length_field_holds() -> None:
    entry = p.pack_publish_entry(b"t", b"")
    at_limit = p.pack_deliver_entry(b"\0\0\0\1" * LIMIT, entry)
    assert p.unpack_deliver_entries(at_limit)[0][0] == b"\0\0\0\1" * LIMIT
    with pytest.raises(ValueError, match="at most 16383 sids"):
        p.pack_deliver_entry(b"\0\0\0\1" * (LIMIT + 1), entry)


@pytest.mark.timeout(120)
def test_a_member_with_16384_subscriptions_breaks_nobodys_batches() -> None:
    channel = uuid.uuid4()
    with (
        Broker("tcp://127.0.0.1:0", limits=Limits(max_subscriptions_per_peer=LIMIT + 1)) as broker,
        Bus(broker.address, channel) as many,
        Bus(broker.address, channel) as honest,
        Bus(broker.address, channel) as pub,
    ):
        subs = [many.subscribe("news.>", maxsize=20_000) for _ in range(LIMIT + 1)]
        mine = honest.subscribe("news.>", maxsize=20_000)
        for i in range(100):
            pub.publish("news.x", str(i).encode(), confirm=False)
        assert pub.publish("news.x", b"end", timeout=60.0).delivered == LIMIT + 2
        assert [m.payload for m in (mine.get(5.0) for _ in range(101))] == [
            str(i).encode() for i in range(100)
        ] + [b"end"]
        assert {s.received for s in (subs[0], subs[-1])} == {101}
