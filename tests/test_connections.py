"""Connections: unjoined ones are closed (after hello_timeout_seconds, or the
oldest at once past max_connections), and a session is bound to the connection
it joined on: another connection that claims its routing id inherits nothing."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import zmq
from frames import A, hello, joined, publish, subscribe, take
from zmq.utils.monitor import recv_monitor_message

from zmqbus import Broker, Bus, Limits
from zmqbus import protocol as p
from zmqbus._connections import Connections
from zmqbus._edge import still_open
from zmqbus._routing import ENDING_GRACE, BrokerState
from zmqbus.admin import broker_stats
from zmqbus.broker import LISTEN_BACKLOG
from zmqbus.limits import raise_fd_limit

pytestmark = pytest.mark.timeout(60)

K1, K2, K3 = (7, "127.0.0.1:5001"), (8, "127.0.0.1:5002"), (9, "127.0.0.1:5003")


# --- the table, without sockets ------------------------------------------------


def test_an_unjoined_connection_expires_after_the_hello_timeout() -> None:
    c = Connections(hello_timeout=10, capacity=100)
    c.accepted(K1, now=0.0)
    c.accepted(K2, now=4.0)
    assert c.due() == 10.0 and c.expired(9.9) == []
    assert c.expired(10.0) == [K1]
    assert c.expired(10.0) == []  # named once; it counts as open until it closes
    assert len(c) == 2 and c.unjoined == 2 and c.due() == 14.0
    assert c.closed(K1) is None and len(c) == 1


def test_a_joined_connection_never_expires_and_is_unjoined_again_when_its_peer_leaves() -> None:
    c = Connections(hello_timeout=10, capacity=100)
    c.accepted(K1, now=0.0)
    c.joined(K1, b"a")
    assert c.due() is None and c.expired(1000.0) == [] and c.ident(K1) == b"a"
    c.left(K1, b"other", now=50.0)  # not the peer joined on it: nothing changes
    assert c.ident(K1) == b"a"
    c.left(K1, b"a", now=50.0)
    assert c.ident(K1) is None and c.due() == 60.0 and c.expired(60.0) == [K1]


def test_a_hello_reported_before_its_accept_is_not_undone_by_it() -> None:
    c = Connections(hello_timeout=10, capacity=100)
    c.joined(K1, b"a")
    c.accepted(K1, now=0.0)
    assert c.unjoined == 0 and c.closed(K1) == b"a" and len(c) == 0


def test_past_capacity_the_oldest_unjoined_close_at_once_and_joined_ones_never() -> None:
    c = Connections(hello_timeout=10, capacity=2)
    c.accepted(K1, now=0.0)
    c.joined(K1, b"a")
    c.accepted(K2, now=1.0)
    assert c.due() == 11.0
    c.accepted(K3, now=2.0)
    assert c.due() == float("-inf")
    assert c.expired(2.0) == [K2]  # the oldest unjoined; the joined one stays
    assert c.due() == 12.0  # the one closing counts as gone
    assert c.closed(K2) is None and c.expired(2.0) == []


# --- BrokerState: sources, ending sessions, takeovers ----------------------------


def _hello_from(state: BrokerState, ident: bytes, key: tuple[int, str], tag: str | None) -> None:
    state.sources[ident] = (key[0], key[1], tag)
    state.handle(ident, hello())


def test_a_hello_binds_the_peer_to_its_connection() -> None:
    state = BrokerState()
    state.connection_opened(K1, now=0.0)
    assert state.stats()["unjoined_connections"] == 1
    _hello_from(state, b"v", K1, "1")
    peer = state.peers[b"v"]
    assert peer.conn == K1 and peer.tag == "1" and state.connections.ident(K1) == b"v"
    assert state.stats()["unjoined_connections"] == 0 and not state.sources


def test_a_connection_with_no_hello_is_closed_by_tick() -> None:
    state = BrokerState(limits=Limits(hello_timeout_seconds=5))
    state.connection_opened(K1, now=100.0)
    state.connection_opened(K2, now=101.0)
    _hello_from(state, b"v", K2, "2")
    assert state.due() == 105.0
    state.tick(105.0)
    assert state.closing == [K1] and state.counters["unjoined_closed"] == 1


def test_a_closed_connections_peer_gets_nothing_more_and_is_dropped_after_its_last_message() -> (
    None
):
    state = BrokerState()
    state.connection_opened(K1, now=0.0)
    _hello_from(state, b"v", K1, "1")
    state.handle(b"v", subscribe("t"))
    take(state)
    joined(state, b"pub")  # no source: inproc, never watched
    state.connection_closed(K1, now=10.0)
    assert b"v" in state.ending
    state.handle(b"pub", publish("t"), now=10.1)
    assert take(state) == []  # not to a routing id another may hold next
    assert state.counters["unroutable"] == 1
    # What it sent before its connection ended still counts.
    state.handle(b"pub", subscribe("u"), now=10.2)
    take(state)
    state.sources[b"v"] = (K1[0], None, "1")
    state.handle(b"v", publish("u"), now=10.5)
    assert [to for to, cmd in take(state) if isinstance(cmd, p.Deliver)] == [b"pub"]
    state.tick(10.5)
    assert state.due() == pytest.approx(10.5 + ENDING_GRACE)
    state.tick(10.5 + ENDING_GRACE)
    assert b"v" not in state.peers and not state.ending and not state.watched
    assert state.counters["vanished"] == 1


def test_a_message_under_a_closed_connections_routing_id_from_another_connection_ends_it() -> None:
    state = BrokerState()
    state.connection_opened(K1, now=0.0)
    _hello_from(state, b"v", K1, "1")
    state.handle(b"v", subscribe("t"))
    take(state)
    state.connection_closed(K1, now=1.0)
    # The attacker's connection (tag "2") claims the routing id "v".
    state.sources[b"v"] = (K2[0], None, "2")
    state.handle(b"v", publish("t"), now=1.1)
    (_, err), *_ = take(state)
    assert isinstance(err, p.Error) and err.code == p.ErrorCode.NOT_JOINED
    assert b"v" not in state.peers and state.counters["takeovers"] == 1


def test_a_hello_under_a_live_peers_routing_id_from_another_connection_starts_afresh() -> None:
    state = BrokerState()
    _hello_from(state, b"v", K1, "1")
    state.handle(b"v", subscribe("t"))
    take(state)
    session = state.peers[b"v"].session
    # Before the close of K1 is reported, a HELLO under "v" from another connection.
    _hello_from(state, b"v", K2, "2")
    peer = state.peers[b"v"]
    assert peer.session != session and peer.subs == {} and peer.conn == K2
    assert state.counters["takeovers"] == 1
    # The old connection's close, reported late, leaves the new session alone.
    state.connection_closed(K1, now=5.0)
    assert not state.ending and state.peers[b"v"] is peer


def test_a_peer_that_chose_its_routing_id_has_every_messages_source_checked() -> None:
    state = BrokerState()
    _hello_from(state, b"chosen", K1, "1")
    _hello_from(state, b"\x00abcd", K2, "2")  # the form libzmq gives: unguessable
    assert state.watched == {b"chosen"}
    take(state)
    # Its connection's close not reported yet, a message from another one.
    state.sources[b"chosen"] = (K3[0], None, "3")
    state.handle(b"chosen", subscribe("t"))
    (_, err), *_ = take(state)
    assert isinstance(err, p.Error) and err.code == p.ErrorCode.NOT_JOINED
    assert b"chosen" not in state.peers and not state.watched
    assert state.counters["takeovers"] == 1


# --- on real sockets ----------------------------------------------------------------


def _watched_dealer(ctx: zmq.Context[Any], address: str, ident: bytes | None = None) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 60_000)  # closed stays closed
    if ident is not None:
        sock.setsockopt(zmq.ROUTING_ID, ident)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    sock.connect(address)
    return sock, monitor


def _next_event(monitor: zmq.Socket[bytes], timeout: float) -> int | None:
    if not monitor.poll(int(timeout * 1000)):
        return None
    event: int = recv_monitor_message(monitor)["event"]
    return event


def test_the_broker_listens_with_a_deep_accept_queue() -> None:
    # libzmq's default listen queue is 100: a reconnect storm past it has its
    # SYNs dropped, and those clients wait out TCP's retransmits (1 s, 3, 7...).
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed: .ci/run installs it"
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with Broker("tcp://127.0.0.1:0") as broker:
        port = broker.address.rsplit(":", 1)[1]
        out = subprocess.run(
            [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        # For a listening socket, Send-Q is its backlog.
        assert int(out[2]) == min(LISTEN_BACKLOG, somaxconn) > 100, out


def test_still_open_tells_a_live_connection_from_one_whose_peer_hung_up() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            host, port = client.getsockname()
            address = f"{host}:{port}"
            assert still_open(accepted.fileno(), address)
            assert not still_open(accepted.fileno(), "127.0.0.1:1")  # another's now
            client.close()
            # Its FIN arrives: the descriptor is open, to that address, but ending.
            assert select.select([accepted], [], [], 10)[0]
            assert not still_open(accepted.fileno(), address)
    left, right = socket.socketpair()  # unnamed, as ipc:// peers are
    with left:
        assert still_open(left.fileno(), "")
        right.close()
        assert not still_open(left.fileno(), "")
    read_end, write_end = os.pipe()
    try:
        assert not still_open(read_end, "")  # no socket
    finally:
        os.close(read_end)
        os.close(write_end)


def test_vanished_connections_are_forgotten_when_their_close_is_seen() -> None:
    # libzmq reports a connection's end just before it closes the descriptor:
    # the broker once took some such reports for another connection's (the
    # descriptor still went to that address) and kept those peers until an idle
    # probe found them, here a minute away. Rounds of 2,000 vanishing peers hit
    # that window a few times each.
    raise_fd_limit()
    limits = Limits(idle_probe_seconds=60)
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        for _ in range(3):
            ctx = zmq.Context()
            ctx.set(zmq.MAX_SOCKETS, 2100)
            try:
                socks = []
                for _ in range(2000):
                    sock = ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(broker.address)
                    sock.send_multipart([p.H_HELLO, uuid.uuid4().bytes, p.pack_hello("gone")])
                    socks.append(sock)
                for sock in socks:
                    assert sock.poll(30_000) and sock.recv_multipart()[0] == p.H_WELCOME
                assert broker.stats()["peers"] == 2000
                for sock in socks:
                    sock.close(0)  # no DISCONNECT, no heartbeats
                deadline = time.monotonic() + ENDING_GRACE + 10
                # The broker's count has no event to wait on: looked at often.
                while broker.stats()["peers"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert broker.stats()["peers"] == 0
            finally:
                ctx.destroy(linger=0)
        counters = broker.stats()["counters"]
        assert counters.get("idle_probes", 0) == 0 and counters.get("stale_closes", 0) == 0


def test_the_broker_closes_a_connection_that_never_says_hello() -> None:
    limits = Limits(hello_timeout_seconds=1)
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        ctx = zmq.Context()
        try:
            _idle, idle_events = _watched_dealer(ctx, broker.address)
            assert _next_event(idle_events, 10) == zmq.EVENT_HANDSHAKE_SUCCEEDED
            with Bus(broker.address, uuid.uuid4()) as bus:
                opened = time.monotonic()
                assert _next_event(idle_events, 10) == zmq.EVENT_DISCONNECTED
                assert 0.5 < time.monotonic() - opened < 5
                # The joined bus is left alone, and works.
                got = threading.Event()
                bus.subscribe("x", handler=lambda m: got.set())
                bus.publish("x", b"1", confirm=False)
                assert got.wait(10)
            stats = broker.stats()
            assert stats["counters"]["unjoined_closed"] >= 1
        finally:
            ctx.destroy(linger=0)


def test_a_connection_whose_peer_left_is_closed_after_the_hello_timeout() -> None:
    limits = Limits(hello_timeout_seconds=1)
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        ctx = zmq.Context()
        try:
            sock, events = _watched_dealer(ctx, broker.address)
            assert _next_event(events, 10) == zmq.EVENT_HANDSHAKE_SUCCEEDED
            sock.send_multipart([p.H_HELLO, A, p.pack_hello("leaver")])
            assert sock.poll(10_000) and sock.recv_multipart()[0] == p.H_WELCOME
            left = time.monotonic()
            sock.send_multipart([p.H_DISCONNECT, A, b"d"])
            assert _next_event(events, 10) == zmq.EVENT_DISCONNECTED
            assert time.monotonic() - left > 0.5
        finally:
            ctx.destroy(linger=0)


def test_past_max_connections_the_oldest_unjoined_are_closed_and_a_bus_still_joins() -> None:
    limits = Limits(max_connections=20, hello_timeout_seconds=60)
    with Broker("tcp://127.0.0.1:0", limits=limits) as broker:
        ctx = zmq.Context()
        try:
            idle = [_watched_dealer(ctx, broker.address) for _ in range(40)]
            # The first ones are closed long before their hello timeout (some
            # before their handshake was done).
            closed = 0
            for _, events in idle[:20]:
                event = _next_event(events, 10)
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    event = _next_event(events, 10)
                closed += event == zmq.EVENT_DISCONNECTED
            assert closed == 20
            with Bus(broker.address, uuid.uuid4(), connect_timeout=10) as bus:
                got = threading.Event()
                bus.subscribe("x", handler=lambda m: got.set())
                bus.publish("x", b"1", confirm=False)
                assert got.wait(10)
                stats = broker_stats(broker.address)
            assert stats["counters"]["unjoined_closed"] >= 20
            assert stats["connections"] <= 22  # 20, the bus and the STATS asker
        finally:
            ctx.destroy(linger=0)


def _claim(ctx: zmq.Context[Any], address: str, ident: bytes, ch: bytes) -> zmq.Socket[bytes]:
    # Connects as ``ident`` and publishes as it until the broker answers: a
    # connection that comes while the id is still held is never read (libzmq
    # keeps it aside), so the attacker tries again, as a real one would.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, ident)
        sock.connect(address)
        sock.send_multipart(publish("card.x", ch=ch, ref=b"r1"))
        if sock.poll(300):
            return sock
        sock.close(0)
    raise AssertionError("the routing id was never free")


@pytest.mark.parametrize("chosen", [True, False], ids=["chosen-id", "libzmq-id"])
def test_a_connection_claiming_a_closed_peers_routing_id_inherits_nothing(chosen: bool) -> None:
    with Broker("tcp://127.0.0.1:0") as broker:
        ctx = zmq.Context()
        try:
            ch = uuid.uuid4().bytes
            victim = ctx.socket(zmq.DEALER)
            victim.setsockopt(zmq.LINGER, 0)
            if chosen:
                victim.setsockopt(zmq.ROUTING_ID, b"victim")
            victim.connect(broker.address)
            victim.send_multipart([p.H_HELLO, ch, p.pack_hello("victim")])
            assert victim.poll(10_000) and victim.recv_multipart()[0] == p.H_WELCOME
            victim.send_multipart(subscribe("card.*", ch=ch))
            assert victim.poll(10_000) and victim.recv_multipart()[0] == p.H_OK
            # The attacker has learnt the victim's id (libzmq's are unguessable:
            # the test reads it from the broker).
            (ident,) = (i for i, peer in broker._state.peers.items() if peer.channel.id == ch)
            victim.close(0)  # as if killed: no DISCONNECT
            attacker = _claim(ctx, broker.address, ident, ch)
            # It can neither publish nor ACK as the victim...
            reply = p.parse_broker(attacker.recv_multipart())
            assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.NOT_JOINED
            with Bus(broker.address, uuid.UUID(bytes=ch)) as pub:
                # ... nor receive what the victim subscribed to.
                assert pub.publish("card.number", b"4111", timeout=10).delivered == 0
                pub.publish("card.number", b"4111", confirm=False)
                assert pub.publish("card.number", b"4111", timeout=10).delivered == 0
            assert not attacker.poll(100)
            counters = broker.stats()["counters"]
            assert counters.get("takeovers", 0) + counters.get("vanished", 0) == 1
        finally:
            ctx.destroy(linger=0)
