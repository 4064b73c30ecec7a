"""Routing ids a client chooses cannot crash the broker (issue #14, first part)."""

from __future__ import annotations

import uuid

import pytest
import zmq
from brokers import BrokerProcess

from zmqbus import protocol as p

# libzmq's first anonymous routing id when libc's rand() is never seeded.
UNSEEDED_FIRST = 0x6B8B4567


@pytest.mark.timeout(60)
def test_claiming_the_next_anonymous_ids_does_not_crash_the_broker(
    broker_process: BrokerProcess,
) -> None:
    broker = broker_process
    # Peers that take the ids libzmq would give the next anonymous peers made
    # it abort (SIGABRT) when one of those connected; now they cannot be known.
    ctx = zmq.Context()
    socks = []  # held: a socket collected by Python closes, and frees its id
    try:
        ch = uuid.uuid4().bytes
        for k in range(64):
            s = ctx.socket(zmq.DEALER)
            socks.append(s)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, b"\x00" + (UNSEEDED_FIRST + k).to_bytes(4, "big"))
            s.connect(broker.address)
            s.send_multipart([p.H_HELLO, ch, p.pack_hello("claimer")])
            assert s.poll(10_000) and s.recv_multipart()[0] == p.H_WELCOME
        for _ in range(16):
            s = ctx.socket(zmq.DEALER)
            socks.append(s)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(broker.address)
            s.send_multipart([p.H_HELLO, ch, p.pack_hello("anonymous")])
            assert s.poll(10_000) and s.recv_multipart()[0] == p.H_WELCOME
        assert broker.proc is not None and broker.proc.poll() is None
    finally:
        ctx.destroy(linger=0)
