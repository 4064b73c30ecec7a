"""The parts of the client core, each alone: connection states, deadlines,
subscriptions, pending work."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from sinks import ListSink

from zmqbus import protocol as p
from zmqbus._connection import Conn, Connection, IllegalMove
from zmqbus._deadlines import Deadlines
from zmqbus._pending import PendingCommand, PendingPublish, PendingRequest, timeout_error
from zmqbus._subscriptions import Subscriptions
from zmqbus.errors import ProtocolError, PublishTimeout, RequestTimeout

# --- connection states ---------------------------------------------------------

LEGAL = {
    (Conn.NEW, Conn.JOINING),
    (Conn.JOINING, Conn.READY),
    (Conn.READY, Conn.RECONNECTING),
    (Conn.RECONNECTING, Conn.REJOINING),
    (Conn.REJOINING, Conn.READY),
    (Conn.REJOINING, Conn.RECONNECTING),
} | {(s, Conn.CLOSED) for s in Conn if s is not Conn.CLOSED}


@pytest.mark.parametrize("start", list(Conn))
@pytest.mark.parametrize("to", list(Conn))
def test_the_table_allows_exactly_the_legal_moves(start: Conn, to: Conn) -> None:
    conn = Connection()
    conn.state = start
    if (start, to) in LEGAL:
        assert conn.move(to) is start
        assert conn.state is to
    else:
        with pytest.raises(IllegalMove, match=f"from {start.value} to {to.value}"):
            conn.move(to)
        assert conn.state is start


def test_states_compare_equal_to_their_names() -> None:
    assert Conn.READY == "ready" and str(Conn.RECONNECTING) == "reconnecting"


# --- deadlines -------------------------------------------------------------------


def test_deadlines_come_due_in_order_whatever_order_they_were_given() -> None:
    pending: dict[bytes, object] = {}
    d = Deadlines(pending, lambda: False)
    given = [5.0, 3.0, 7.0, 3.5, 10.0, 1.0, 7.0]
    for i, t in enumerate(given):
        pending[bytes([i + 1])] = object()
        d.add(t, bytes([i + 1]))
    assert d.earliest() == 1.0
    assert list(d.due(3.5)) == [b"\x06", b"\x02", b"\x04"]
    for key in (b"\x06", b"\x02", b"\x04"):
        del pending[key]
    assert d.earliest() == 5.0
    del pending[b"\x01"]  # finished early: skipped, and dropped on the way
    assert d.earliest() == 7.0
    assert sorted(d.due(100.0)) == [b"\x03", b"\x05", b"\x07"]


def test_the_handshake_deadline_counts_while_the_handshake_waits() -> None:
    waiting = [True]
    d = Deadlines({}, lambda: waiting[0])
    d.add(2.0, b"")
    assert d.earliest() == 2.0
    waiting[0] = False
    assert d.earliest() is None and len(d) == 0


@pytest.mark.parametrize("first", [5.0, 1e9], ids=["in-order", "out-of-order"])
def test_finished_deadlines_do_not_pile_up_behind_a_pending_one(first: float) -> None:
    pending: dict[bytes, object] = {b"stuck": object()}
    d = Deadlines(pending, lambda: False)
    d.add(first, b"stuck")
    for i in range(10_000):
        key = i.to_bytes(4, "big")
        pending[key] = object()
        d.add(5.0 + (i if first == 5.0 else -i * 1e-6), key)
        del pending[key]  # finished at once
    # Finished entries are dropped along the way, not kept until "stuck" is due.
    assert len(d) < 2_100
    assert d.earliest() == first


# --- subscriptions ---------------------------------------------------------------


def test_a_subscription_is_one_record_found_by_sid_sink_and_pattern() -> None:
    subs = Subscriptions()
    a, b, c = ListSink("x.>"), ListSink("x.>"), ListSink("y")
    sa, sb, sc = subs.add(a, ""), subs.add(b, "q"), subs.add(c, "")
    assert [s.sid for s in (sa, sb, sc)] == [(n).to_bytes(4, "big") for n in (1, 2, 3)]
    assert sb.subscribe_frames(b"C" * 16) == [p.H_SUBSCRIBE, b"C" * 16, b"", sb.sid, b"x.>", b"q"]
    assert subs.targets(sa.sid + sc.sid + b"\0\0\0\x09") == [a, c]
    assert subs.remove(c) is sc and c.ended and subs.remove(c) is None
    assert subs.remove_pattern("x.>") == [sa, sb] and a.ended and b.ended
    assert len(subs) == 0 and subs.sinks == {} and subs.targets(sa.sid) == []


def test_a_malformed_sids_frame_is_a_protocol_error() -> None:
    subs = Subscriptions()
    subs.add(ListSink("x"), "")
    with pytest.raises(ProtocolError):
        subs.targets(b"\0\0\0\1\0")


def test_closing_all_ends_every_sink() -> None:
    subs = Subscriptions()
    sinks = [ListSink("x") for _ in range(3)]
    for s in sinks:
        subs.add(s, "")
    subs.close_all()
    assert all(s.ended for s in sinks) and len(subs) == 0 and list(subs) == []


# --- pending work ------------------------------------------------------------------


def test_each_kind_of_pending_work_times_out_with_its_own_error() -> None:
    pub = PendingPublish(Future(), 1.5)
    pub.expected, pub.buses, pub.delivered = 2, 1, 3
    exc = timeout_error(pub)
    assert isinstance(exc, PublishTimeout) and exc.result.delivered == 3
    assert not pub.complete
    pub.buses = 2
    assert pub.complete
    req = timeout_error(PendingRequest(Future(), 2.0, "a.b"))
    assert isinstance(req, RequestTimeout) and "'a.b' within 2s" in str(req)
    cmd = timeout_error(PendingCommand(Future(), 3.0, "subscribe", None))
    assert isinstance(cmd, RequestTimeout) and "subscribe not confirmed within 3s" in str(cmd)
