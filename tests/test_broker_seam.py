"""The broker loop's contract with BrokerState, without a socket: handle,
take_outgoing, send_failed and tick, as broker.py drives them."""

from __future__ import annotations

from frames import S1, S2, A, hello, joined, publish, sid, subscribe

from zmqbus import Limits
from zmqbus import protocol as p
from zmqbus._routing import LIVENESS, BrokerState

Sent = list[tuple[bytes, list[bytes]]]


def _world(**sub_hello: object) -> BrokerState:
    """A publisher "pub" and a subscriber "sub" to "t" with sid S1."""
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"sub", ("t", S1), **sub_hello)
    return state


def _heads(sent: Sent, ident: bytes) -> list[bytes]:
    return [frames[0] for to, frames in sent if to == ident]


def _counter(state: BrokerState, name: str) -> int:
    """A counter as ``stats()`` reports it."""
    counters = state.stats()["counters"]
    assert isinstance(counters, dict)
    return int(counters.get(name, 0))


def _refuse_deliveries(state: BrokerState, sent: Sent, ident: bytes) -> None:
    """The socket refuses every message to ``ident`` in ``sent``: its queue is full."""
    for to, frames in sent:
        if to == ident:
            state.send_failed(to, frames, gone=False)


def test_handle_says_how_many_messages_wait() -> None:
    state = _world()
    assert state.handle(b"pub", publish("t", ref=b"r"), 1.0) == 2  # DELIVER, ROUTED
    assert state.handle(b"pub", publish("t"), 1.0) == 3
    assert len(state.take_outgoing()) == 3
    assert state.take_outgoing() == []  # taken once


def test_take_outgoing_coalesces_for_the_peers_that_asked_only() -> None:
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"sub", ("t", S1), batch_commands=True)
    joined(state, b"plain", ("t", S2))
    out_before = _counter(state, "messages_out")
    for i in range(3):
        state.handle(b"pub", publish("t", b"%d" % i), 1.0)
    sent = state.take_outgoing()
    (batched,) = [frames for to, frames in sent if to == b"sub"]
    assert batched[0] == p.H_BROKER_BATCH
    entries = p.unpack_command_entries(batched[2], A, p.BROKER_ENTRY_FRAMES)
    assert [e[p.DELIVER_BODY] for e in entries] == [b"0", b"1", b"2"]
    assert _heads(sent, b"plain") == [p.H_DELIVER] * 3
    assert _counter(state, "broker_batches") == 1
    assert _counter(state, "messages_out") - out_before == 4


def test_a_dropped_notice_waits_for_the_next_message_to_its_peer_and_goes_first() -> None:
    state = _world()
    joined(state, b"other", ("u", S2))
    out_before = _counter(state, "messages_out")
    state.handle(b"pub", publish("t"), 1.0)
    state.handle(b"pub", publish("t"), 1.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    # Nothing goes to the slow peer, so nothing is sent to it: the notice waits.
    state.handle(b"pub", publish("u"), 1.0)
    assert _heads(state.take_outgoing(), b"sub") == []
    state.handle(b"pub", publish("t", b"after"), 1.0)
    sent = state.take_outgoing()
    assert _heads(sent, b"sub") == [p.H_DROPPED, p.H_DELIVER]
    notice = p.parse_broker(sent[0][1])
    assert isinstance(notice, p.Dropped) and p.unpack_dropped(notice.counts) == {S1: 2}
    # Reported once: the next message goes alone.
    state.handle(b"pub", publish("t"), 1.0)
    assert _heads(state.take_outgoing(), b"sub") == [p.H_DELIVER]
    assert _counter(state, "dropped_hwm") == 2 and _counter(state, "dropped_notices") == 1
    # Sent: the DELIVER to "other", the two after the drops; not the notice, nor the refused.
    assert _counter(state, "messages_out") - out_before == 3


def test_a_dropped_notice_goes_before_a_broker_batch_not_inside_it() -> None:
    state = _world(batch_commands=True)
    state.handle(b"pub", publish("t"), 1.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("t"), 1.0)
    state.handle(b"pub", publish("t"), 1.0)
    assert _heads(state.take_outgoing(), b"sub") == [p.H_DROPPED, p.H_BROKER_BATCH]


def test_a_heartbeat_carries_an_owed_notice() -> None:
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"sub", ("t", S1), heartbeat=1000)
    state.handle(b"pub", publish("t"), 0.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    assert state.tick(1.0) is not None
    assert _heads(state.take_outgoing(), b"sub") == [p.H_DROPPED, p.H_BROKER_HEARTBEAT]


def test_a_refused_notice_keeps_its_counts_for_the_next_chance() -> None:
    state = _world()
    state.handle(b"pub", publish("t"), 1.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("t"), 1.0)
    # Still full: the notice and the DELIVER behind it are both refused.
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("t"), 1.0)
    sent = state.take_outgoing()
    assert _heads(sent, b"sub") == [p.H_DROPPED, p.H_DELIVER]
    notice = p.parse_broker(sent[0][1])
    assert isinstance(notice, p.Dropped) and p.unpack_dropped(notice.counts) == {S1: 2}
    assert _counter(state, "dropped_notices") == 1  # the refused one is not counted
    assert state.stats()["slow_peers"] == {state.label(b"sub"): 2}


def test_a_notice_refused_because_the_peer_is_gone_keeps_its_counts_until_it_is_dropped() -> None:
    state = _world()
    state.handle(b"pub", publish("t"), 1.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("t"), 1.0)
    (notice, deliver) = [f for to, f in state.take_outgoing() if to == b"sub"]
    state.send_failed(b"sub", notice, gone=True)
    assert b"sub" in state.peers  # the message behind it tells the state the peer is gone
    state.send_failed(b"sub", deliver, gone=True)
    assert b"sub" not in state.peers


def test_refused_for_a_full_queue_a_confirmed_deliver_is_reported_dropped_at_once() -> None:
    state = _world()
    state.handle(b"pub", publish("t", ref=b"r1"), 1.0)
    sent = state.take_outgoing()
    assert _heads(sent, b"pub") == [p.H_ROUTED]
    _refuse_deliveries(state, sent, b"sub")
    ((to, frames),) = state.take_outgoing()
    acked = p.parse_broker(frames)
    assert to == b"pub" and acked == p.Acked(A, b"r1", p.pack_ack(0, 1, []))
    assert state.pending_confirmations == 0
    assert b"sub" in state.peers  # a full queue is no reason to forget the peer


def test_refused_because_the_peer_is_gone_it_is_forgotten() -> None:
    state = _world()
    state.handle(b"pub", publish("t", ref=b"r1"), 1.0)
    sent = state.take_outgoing()
    for to, frames in sent:
        if to == b"sub":
            state.send_failed(to, frames, gone=True)
    assert b"sub" not in state.peers and state.subscription_count() == 0
    # Its publisher hears once that the delivery was dropped, and no one waits.
    ((to, frames),) = state.take_outgoing()
    assert to == b"pub" and p.parse_broker(frames) == p.Acked(A, b"r1", p.pack_ack(0, 1, []))
    assert state.pending_confirmations == 0
    state.handle(b"pub", publish("t", ref=b"r2"), 1.0)
    ((to, frames),) = state.take_outgoing()
    assert p.parse_broker(frames) == p.Routed(A, b"r2", 0)
    assert (_counter(state, "unroutable"), _counter(state, "disconnects")) == (1, 1)
    assert _counter(state, "dropped_hwm") == 0


def test_tick_returns_the_next_deadline_and_does_nothing_before_it() -> None:
    state = BrokerState(limits=Limits(idle_probe_seconds=1000))
    assert state.tick(5.0) is None  # no peers: block without a timeout
    joined(state, b"quiet")
    # Without heartbeats, the only duty is the idle probe of its connection.
    assert state.tick(5.0) == state.due() == 1000.0
    state.handle(b"beat", hello(heartbeat=500), 10.0)
    state.take_outgoing()
    assert state.tick(10.0) == 10.5
    assert state.tick(10.49) == 10.5 and state.take_outgoing() == []
    # Due: a heartbeat to the peer that asked, none to the other.
    assert state.tick(10.5) == 11.0
    assert state.take_outgoing() == [(b"beat", [p.H_BROKER_HEARTBEAT, A])]
    # A peer that keeps talking is kept; one silent for LIVENESS intervals is forgotten.
    state.handle(b"beat", subscribe("t"), 11.0)
    state.take_outgoing()
    silent_until = 11.0 + LIVENESS * 0.5
    t = 11.0
    # As the loop does: it wakes up at least a millisecond after the deadline.
    while (deadline := state.tick(t)) != 1000.0:
        assert deadline is not None
        assert b"beat" in state.peers and t <= silent_until
        t = deadline + 0.001
    assert t > silent_until and b"beat" not in state.peers
    assert b"quiet" in state.peers
    assert [to for to, _ in state.take_outgoing()] == [b"beat"] * LIVENESS


def test_counters_are_the_states_own() -> None:
    # messages_out counts what the socket took: taken, less what was refused.
    state = _world()
    in_before, out_before = _counter(state, "messages_in"), _counter(state, "messages_out")
    for _ in range(4):
        state.handle(b"pub", publish("t"), 1.0)
    sent = state.take_outgoing()
    state.send_failed(*sent[0], gone=False)
    assert _counter(state, "messages_in") - in_before == 4
    assert _counter(state, "messages_out") - out_before == 3
    assert _counter(state, "dropped_hwm") == 1 and _counter(state, "dropped_out") == 1


def _many(n: int, first: int = 1) -> list[tuple[str, bytes]]:
    return [(">", sid(i)) for i in range(first, first + n)]


def test_dropped_counts_for_many_sids_are_exact_per_sid() -> None:
    # 300 sids on ">" and 100 more on "t": a DELIVER on "t" names 400 sids, one
    # on "u" names 300; each sid is told exactly the messages it missed.
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"sub", *_many(300), *[("t", sid(i)) for i in range(301, 401)])
    for topic in ("t", "u", "t", "t"):
        state.handle(b"pub", publish(topic), 1.0)
        _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("u"), 1.0)
    sent = state.take_outgoing()
    assert _heads(sent, b"sub") == [p.H_DROPPED, p.H_DELIVER]
    notice = p.parse_broker(next(f for to, f in sent if to == b"sub"))
    assert isinstance(notice, p.Dropped)
    want = {sid(i): 4 for i in range(1, 301)} | {sid(i): 3 for i in range(301, 401)}
    assert p.unpack_dropped(notice.counts) == want
    assert state.stats()["slow_peers"] == {state.label(b"sub"): 4}


def test_a_refused_notice_for_many_sids_gives_back_its_counts() -> None:
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"sub", *_many(1000))
    state.handle(b"pub", publish("t"), 1.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    for _ in range(3):  # notice and DELIVER refused, three times over
        state.handle(b"pub", publish("t"), 1.0)
        sent = state.take_outgoing()
        assert _heads(sent, b"sub") == [p.H_DROPPED, p.H_DELIVER]
        _refuse_deliveries(state, sent, b"sub")
    state.handle(b"pub", publish("t"), 1.0)
    sent = state.take_outgoing()
    notice = p.parse_broker(sent[0][1])
    assert isinstance(notice, p.Dropped)
    assert p.unpack_dropped(notice.counts) == {sid(i): 4 for i in range(1, 1001)}


def test_distinct_sid_sets_owed_past_their_budget_are_counted_per_sid() -> None:
    # Each topic matches a different set of the peer's sids (".>" patterns on
    # its own first token plus ">" for all), so each lost DELIVER names a new
    # frame; past DROPPED_SETS_BYTES they fold into per-sid counts, exactly.
    from zmqbus._routing import DROPPED_SETS_BYTES

    n = 2000
    state = BrokerState(limits=Limits(max_subscriptions_per_peer=2 * n))
    joined(state, b"pub")
    subs = [(">", sid(i)) for i in range(1, n + 1)]
    subs += [(f"k{i}.>", sid(n + i)) for i in range(1, 41)]
    joined(state, b"sub", *subs)
    rounds = DROPPED_SETS_BYTES // (4 * n) + 10
    for r in range(rounds):
        state.handle(b"pub", publish(f"k{r % 40 + 1}.x"), 1.0)
        _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("z"), 1.0)
    notice = p.parse_broker(state.take_outgoing()[0][1])
    assert isinstance(notice, p.Dropped)
    want = {sid(i): rounds for i in range(1, n + 1)}
    for r in range(rounds):
        key = sid(n + r % 40 + 1)
        want[key] = want.get(key, 0) + 1
    assert p.unpack_dropped(notice.counts) == want


def test_a_departed_peers_confirmations_are_settled_in_slices() -> None:
    from zmqbus._routing import SETTLE_SLICE

    n = 3 * SETTLE_SLICE + 10
    state = _world()
    for i in range(n):
        state.handle(b"pub", publish("t", ref=b"r%d" % i), 1.0)
    state.take_outgoing()
    state.drop_peer(b"sub")  # left without ACKing any of them
    assert state.due() == 1.0  # more to settle: the loop must not block
    told: list[bytes] = []
    for now in (1.0, 1.001, 1.002, 1.003):
        sent = state.take_outgoing()
        assert len(sent) <= SETTLE_SLICE
        told += [frames[2] for to, frames in sent if frames[0] == p.H_ACKED]
        state.tick(now)
    told += [frames[2] for to, frames in state.take_outgoing() if frames[0] == p.H_ACKED]
    # Every publisher told, once each, oldest first; then nothing is due at once.
    assert told == [b"r%d" % i for i in range(n)]
    due = state.due()
    assert due is None or due > 1.003


def test_a_departed_peers_subscriptions_are_removed_in_slices() -> None:
    from zmqbus._routing import UNSUBSCRIBE_SLICE

    n = 3 * UNSUBSCRIBE_SLICE + 5
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"other", ("t", S1))
    subs: list[tuple[str, bytes]] = [(f"t.{i}.>", sid(i + 1)) for i in range(n - 1)]
    joined(state, b"many", ("t", sid(n)), *subs)
    channel = state.channels[A]
    state.drop_peer(b"many")
    assert len(channel.trie) == n + 1  # none removed yet: all in the passes to come
    due = state.due()
    assert due is not None and due <= 1.0  # the loop must not block meanwhile
    # Meanwhile routing passes the departed peer over, its subscriptions still there.
    state.handle(b"pub", publish("t"), 1.0)
    assert [to for to, frames in state.take_outgoing() if frames[0] == p.H_DELIVER] == [b"other"]
    for i in range(4):
        state.tick(1.0 + i / 1000)
    assert len(channel.trie) == 1 and channel.nsubs == 1 and not channel.gone
    assert A in state.channels
    state.drop_peer(b"other")
    state.drop_peer(b"pub")
    assert A not in state.channels  # with its last peer, once nothing else is left


def test_a_connection_that_joins_again_meanwhile_starts_clean() -> None:
    from zmqbus._routing import UNSUBSCRIBE_SLICE

    state = BrokerState()
    joined(state, b"pub")
    subs = [(">", sid(i + 1)) for i in range(2 * UNSUBSCRIBE_SLICE)]
    joined(state, b"back", *subs)
    state.drop_peer(b"back")
    # The same connection joins again and takes the same sid on the same pattern.
    joined(state, b"back", (">", sid(1)))
    state.tick(1.0)
    state.tick(1.001)
    state.handle(b"pub", publish("x"), 1.0)
    sent = [f for to, f in state.take_outgoing() if to == b"back" and f[0] == p.H_DELIVER]
    assert len(sent) == 1 and sent[0][p.DELIVER_SIDS] == sid(1)
    assert state.channels[A].nsubs == 1


def test_a_departed_queue_group_member_is_never_picked() -> None:
    from zmqbus._routing import UNSUBSCRIBE_SLICE

    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"stays", ("w", S1, "q"))
    joined(state, b"left", *[("w", sid(i + 1), "q") for i in range(UNSUBSCRIBE_SLICE + 1)])
    state.drop_peer(b"left")
    for _ in range(20):
        state.handle(b"pub", publish("w"), 1.0)
    delivered = [to for to, f in state.take_outgoing() if f[0] == p.H_DELIVER]
    assert delivered == [b"stays"] * 20


def test_a_channel_goes_once_its_last_departed_peer_is_removed() -> None:
    from zmqbus._routing import UNSUBSCRIBE_SLICE

    state = BrokerState()
    joined(state, b"only", *[(f"k.{i}", sid(i + 1)) for i in range(UNSUBSCRIBE_SLICE + 1)])
    state.drop_peer(b"only")
    assert A in state.channels  # its subscriptions are still being removed
    state.tick(5.0)
    assert A in state.channels  # one slice done, one subscription left
    state.tick(5.001)
    assert A not in state.channels


def test_a_notice_refused_after_a_later_take_still_gives_its_counts_back() -> None:
    # The counts are read back from the notice's own frame when the broker no
    # longer holds them (a refusal reported after the next take_outgoing).
    state = _world()
    state.handle(b"pub", publish("t"), 1.0)
    _refuse_deliveries(state, state.take_outgoing(), b"sub")
    state.handle(b"pub", publish("t"), 1.0)
    first = state.take_outgoing()
    notice = next(f for to, f in first if to == b"sub" and f[0] == p.H_DROPPED)
    state.take_outgoing()  # nothing new, but the held counts are let go
    state.send_failed(b"sub", notice, gone=False)
    state.handle(b"pub", publish("t"), 1.0)
    sent = state.take_outgoing()
    again = p.parse_broker(next(f for to, f in sent if to == b"sub"))
    assert isinstance(again, p.Dropped) and p.unpack_dropped(again.counts) == {S1: 1}


def test_a_full_publisher_queue_holds_its_routed_and_acked_until_there_is_room() -> None:
    # A pipelining publisher whose queue is full must still learn what it waits on.
    from zmqbus._routing import HELD_RETRY

    state = _world()
    state.handle(b"pub", publish("t", ref=b"r"), now=0.0)
    sent = state.take_outgoing()
    _refuse_deliveries(state, sent, b"pub")  # the ROUTED
    (deliver,) = [p.parse_broker(f) for to, f in sent if to == b"sub"]
    assert isinstance(deliver, p.Deliver)
    state.handle(b"sub", [p.H_ACK, A, deliver.token, p.pack_ack(1, 0)], now=0.01)
    acked = state.take_outgoing()  # the ACKED waits behind the held ROUTED, in order
    assert _heads(acked, b"pub") == []
    state.tick(HELD_RETRY)
    again = state.take_outgoing()
    assert _heads(again, b"pub") == [p.H_ROUTED, p.H_ACKED]
    assert _counter(state, "replies_held") == 2 and _counter(state, "dropped_out") == 0
