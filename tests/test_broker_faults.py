"""The broker's fault barriers: a bug in one message, a full peer queue."""

from __future__ import annotations

import uuid

import msgpack
import pytest
import zmq

from zmqbus import Broker, Bus
from zmqbus import protocol as p
from zmqbus._routing import BrokerState


def _join(state: BrokerState, ident: bytes, channel: bytes) -> None:
    state.handle(ident, [p.H_HELLO, channel, p.pack_hello("t")])
    state.outbox.clear()


def test_internal_error_answers_500_and_broker_keeps_going(monkeypatch: pytest.MonkeyPatch) -> None:
    state = BrokerState()
    ch = uuid.uuid4().bytes
    _join(state, b"A", ch)

    def broken(ident: bytes, frames: object) -> None:
        raise RuntimeError("simulated bug")

    # Fault injection at the barrier under test: the routing step itself fails.
    monkeypatch.setattr(state, "_publish", broken)
    state.handle(b"A", [p.H_PUBLISH, ch, b"\x07", b"t", b"body"])
    assert len(state.outbox) == 1
    ident, frames = state.outbox.pop()
    err = p.parse_broker(frames)
    assert ident == b"A"
    assert isinstance(err, p.Error) and err.code == p.ErrorCode.INTERNAL and err.ref == b"\x07"
    assert state.counters["internal_errors"] == 1
    monkeypatch.undo()
    state.handle(b"A", [p.H_SUBSCRIBE, ch, b"\x08", b"\0\0\0\1", b"t", b""])
    assert p.parse_broker(state.outbox.pop()[1]) == p.Ok(ch, b"\x08")


def test_undeliverable_confirmed_deliver_reported_as_dropped() -> None:
    state = BrokerState()
    ch = uuid.uuid4().bytes
    _join(state, b"P", ch)
    _join(state, b"S", ch)
    state.handle(b"S", [p.H_SUBSCRIBE, ch, b"\x01", b"\0\0\0\1", b"t", b""])
    state.outbox.clear()
    state.handle(b"P", [p.H_PUBLISH, ch, b"\x09", b"t", b"body"])
    deliver = next(frames for ident, frames in state.take_outgoing() if ident == b"S")
    state.send_failed(b"S", deliver, gone=False)
    ((ident, frames),) = state.outbox
    acked = p.parse_broker(frames)
    assert ident == b"P" and isinstance(acked, p.Acked) and acked.ref == b"\x09"
    assert p.unpack_ack(acked.body) == p.AckResult(0, 1, ())
    assert state.pending_confirmations == 0
    # the subscriber's own late ACK for it is now stale, not forwarded twice
    state.outbox.clear()
    state.handle(b"S", [p.H_ACK, ch, deliver[2], p.pack_ack(1, 0)])
    assert state.outbox == [] and state.counters["stale_acks"] == 1


def test_full_subscriber_queue_never_blocks_broker_or_others() -> None:
    # inproc has no kernel buffers, so a tiny HWM fills after a few messages.
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.DEALER)
    try:
        with Broker("inproc://zmqbus-faults-hwm", context=ctx, hwm=5) as broker:
            ch = uuid.uuid4()
            stalled.setsockopt(zmq.LINGER, 0)
            stalled.setsockopt(zmq.RCVHWM, 1)
            stalled.setsockopt(zmq.RCVTIMEO, 5000)
            stalled.connect(broker.address)
            stalled.send_multipart([p.H_HELLO, ch.bytes, msgpack.packb({"client": "stalled"})])
            assert stalled.recv_multipart()[0] == p.H_WELCOME
            stalled.send_multipart([p.H_SUBSCRIBE, ch.bytes, b"\x01", b"\0\0\0\1", b"flood", b""])
            assert stalled.recv_multipart()[0] == p.H_OK
            with (
                Bus(broker.address, ch, context=ctx) as pub,
                Bus(broker.address, ch, context=ctx) as healthy,
            ):
                s = healthy.subscribe("flood", maxsize=1000)
                # Fill the stalled peer's queue without waiting on it.
                for _ in range(50):
                    pub.publish("flood", b"fill", confirm=False)
                assert [s.get(timeout=5).payload for _ in range(50)] == [b"fill"] * 50
                # Now each confirmed publish completes at once: the stalled peer's
                # copy is reported dropped at the broker, not awaited until timeout.
                results = [pub.publish("flood", str(i).encode(), timeout=5) for i in range(20)]
                assert all(r.buses == 2 and r.delivered == 1 and r.dropped == 1 for r in results)
                assert [s.get(timeout=5).payload for _ in range(20)] == [
                    str(i).encode() for i in range(20)
                ]
            assert broker.stats()["counters"]["dropped_hwm"] > 0
    finally:
        stalled.close(0)
        ctx.term()


def test_slow_peer_is_told_what_it_missed() -> None:
    ctx = zmq.Context()
    slow = ctx.socket(zmq.DEALER)
    try:
        with Broker("inproc://zmqbus-faults-dropped", context=ctx, hwm=5) as broker:
            ch = uuid.uuid4()
            slow.setsockopt(zmq.LINGER, 0)
            slow.setsockopt(zmq.RCVHWM, 1)
            slow.setsockopt(zmq.RCVTIMEO, 5000)
            slow.connect(broker.address)
            slow.send_multipart([p.H_HELLO, ch.bytes, msgpack.packb({"client": "slow"})])
            assert slow.recv_multipart()[0] == p.H_WELCOME
            sid = b"\0\0\0\7"
            slow.send_multipart([p.H_SUBSCRIBE, ch.bytes, b"\x01", sid, b"feed", b""])
            assert slow.recv_multipart()[0] == p.H_OK
            with Bus(broker.address, ch, context=ctx) as pub:
                for _ in range(40):  # far more than the slow peer's queues hold
                    pub.publish("feed", b"x", confirm=False)
                assert pub.publish("sync", b"").delivered == 0  # the broker has handled all
                missed = broker.stats()["counters"]["dropped_hwm"]
                assert missed > 0
                got = 0
                while True:  # the slow peer catches up on what was queued
                    frames = slow.recv_multipart()
                    assert frames[0] == p.H_DELIVER
                    got += 1
                    if not slow.poll(0):
                        break
                pub.publish("feed", b"after", confirm=False)
                notice = p.parse_broker(slow.recv_multipart())
                assert isinstance(notice, p.Dropped)
                assert p.unpack_dropped(notice.counts) == {sid: missed}
                assert got + missed == 40
                assert p.parse_broker(slow.recv_multipart()).body  # then the new message
    finally:
        slow.close(0)
        ctx.term()
