"""BrokerState in memory: frames in, (identity, frames) out; no sockets."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from frames import (
    A,
    B,
    ack,
    disconnect,
    hello,
    joined,
    publish,
    reply,
    request,
    sid,
    sid_of,
    subscribe,
    take,
    unsubscribe,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus.protocol import ErrorCode
from zmqbus.topics import matches

# --- helpers ---------------------------------------------------------------------


def delivered_to(out: list[tuple[bytes, p.BrokerCommand]]) -> list[bytes]:
    return sorted(ident for ident, cmd in out if isinstance(cmd, p.Deliver))


def sids_to(out: list[tuple[bytes, p.BrokerCommand]]) -> dict[bytes, set[bytes]]:
    """Peer -> the sids its one DELIVER or ASK names (each peer at most once)."""
    got: dict[bytes, set[bytes]] = {}
    for ident, cmd in out:
        if isinstance(cmd, (p.Deliver, p.Ask)):
            assert ident not in got, f"two messages for {ident!r}"
            sids = p.split_sids(cmd.sids)
            assert len(set(sids)) == len(sids), sids
            got[ident] = set(sids)
    return got


def only_error(out: list[tuple[bytes, p.BrokerCommand]], ident: bytes) -> p.Error:
    assert len(out) == 1, out
    to, cmd = out[0]
    assert to == ident
    assert isinstance(cmd, p.Error)
    return cmd


# --- handshake and subscriptions ------------------------------------------------------


def test_hello_gets_welcome() -> None:
    s = BrokerState(name="unit-broker")
    s.handle(b"p1", hello(A))
    [(ident, cmd)] = take(s)
    assert ident == b"p1"
    assert isinstance(cmd, p.Welcome)
    assert cmd.channel == A
    info = p.unpack_welcome(cmd.body)
    assert info == {"broker": "unit-broker", "max_message_size": 1 << 20}
    assert set(s.peers) == {b"p1"}
    assert set(s.channels) == {A}
    assert s.counters["connects"] == 1


def test_repeated_hello_on_same_channel_is_welcomed_again_without_a_new_peer() -> None:
    s = BrokerState()
    joined(s, b"p1", "a.*")
    session = s.peers[b"p1"].session
    s.handle(b"p1", hello(A))
    [(_, cmd)] = take(s)
    assert isinstance(cmd, p.Welcome)
    assert s.counters["connects"] == 1
    assert s.subscription_count() == 1  # the subscription survived the second HELLO
    assert s.peers[b"p1"].session == session  # and so did the session


def test_sessions_are_numbered_and_never_reused() -> None:
    s = BrokerState()
    joined(s, b"p1")
    joined(s, b"p2", ch=B)
    assert [s.peers[i].session for i in (b"p1", b"p2")] == [
        (1).to_bytes(8, "big"),
        (2).to_bytes(8, "big"),
    ]
    s.handle(b"p1", disconnect())
    take(s)
    joined(s, b"p1")  # the same identity joins again: a new session
    assert s.peers[b"p1"].session == (3).to_bytes(8, "big")
    assert set(s.sessions) == {(2).to_bytes(8, "big"), (3).to_bytes(8, "big")}


def test_max_message_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BrokerState(max_message_size=0)
    s = BrokerState(max_message_size=100)
    s.handle(b"p", hello())
    [(_, cmd)] = take(s)
    assert p.unpack_welcome(cmd.body)["max_message_size"] == 100  # type: ignore[union-attr]


def test_subscribe_is_answered_ok_with_ref() -> None:
    s = BrokerState()
    joined(s, b"p1")
    s.handle(b"p1", subscribe("a.>", ref=b"ref-1", sid=sid(1)))
    assert take(s) == [(b"p1", p.Ok(A, b"ref-1"))]
    assert s.subscription_count() == 1
    assert s.peers[b"p1"].subs == {sid(1): ("a.>", "")}
    # The same sid with the same pattern and queue again: answered, nothing changes.
    s.handle(b"p1", subscribe("a.>", ref=b"ref-2", sid=sid(1)))
    assert take(s) == [(b"p1", p.Ok(A, b"ref-2"))]
    assert s.subscription_count() == 1
    assert s.counters["subscribes"] == 1
    # Another sid with the same pattern is another subscription.
    s.handle(b"p1", subscribe("a.>", ref=b"ref-3", sid=sid(2)))
    assert take(s) == [(b"p1", p.Ok(A, b"ref-3"))]
    assert s.subscription_count() == 2
    assert s.counters["subscribes"] == 2


@pytest.mark.parametrize(
    ("pattern", "queue"),
    [("a.*", ""), ("a.>", "g"), ("a.*", "g")],
    ids=["pattern", "queue", "both"],
)
def test_subscribe_reusing_an_open_sid_otherwise_is_refused(pattern: str, queue: str) -> None:
    s = BrokerState()
    joined(s, b"p1")
    joined(s, b"pub")
    s.handle(b"p1", subscribe("a.>", sid=sid(7)))
    take(s)
    s.handle(b"p1", subscribe(pattern, queue=queue, ref=b"again", sid=sid(7)))
    err = only_error(take(s), b"p1")
    assert (err.code, err.ref, err.channel) == (ErrorCode.SID_IN_USE, b"again", A)
    assert s.errors == Counter({ErrorCode.SID_IN_USE: 1})
    # Nothing changed: still plain, on a.>.
    assert s.peers[b"p1"].subs == {sid(7): ("a.>", "")}
    assert s.channels[A].groups == {}
    s.handle(b"pub", publish("a.b.c"))
    assert take(s) == [(b"p1", p.Deliver(A, b"", b"a.b.c", b"body", sid(7)))]


def test_a_group_member_sid_cannot_be_reused_as_plain() -> None:
    s = BrokerState()
    joined(s, b"p1")
    s.handle(b"p1", subscribe("a", queue="g", sid=sid(1)))
    s.handle(b"p1", subscribe("a", queue="g", sid=sid(1), ref=b"same"))
    assert [c for _, c in take(s)] == [p.Ok(A, b"s"), p.Ok(A, b"same")]
    s.handle(b"p1", subscribe("a", sid=sid(1), ref=b"plain"))
    assert only_error(take(s), b"p1").code == ErrorCode.SID_IN_USE
    assert s.peers[b"p1"].subs == {sid(1): ("a", "g")}


def test_a_closed_sid_may_be_opened_again_with_anything() -> None:
    s = BrokerState()
    joined(s, b"p1")
    s.handle(b"p1", subscribe("a", sid=sid(1)))
    s.handle(b"p1", unsubscribe(sids=sid(1)))
    s.handle(b"p1", subscribe("b.>", queue="g", sid=sid(1)))
    assert [type(c) for _, c in take(s)] == [p.Ok] * 3
    assert s.peers[b"p1"].subs == {sid(1): ("b.>", "g")}


def test_unsubscribe_is_idempotent() -> None:
    s = BrokerState()
    joined(s, b"p1", "a.*")
    for ref in (b"u1", b"u2"):
        s.handle(b"p1", unsubscribe("a.*", ref=ref))
        assert take(s) == [(b"p1", p.Ok(A, ref))]
    s.handle(b"p1", unsubscribe("never.subscribed", ref=b"u3"))
    assert take(s) == [(b"p1", p.Ok(A, b"u3"))]
    assert s.subscription_count() == 0
    assert s.counters["unsubscribes"] == 1
    joined(s, b"pub")
    s.handle(b"pub", publish("a.b"))
    assert take(s) == []


def test_unsubscribe_closes_several_sids_and_ignores_unknown_ones() -> None:
    s = BrokerState()
    joined(s, b"sub")
    joined(s, b"pub")
    for n, pattern in enumerate(["t", "t", "t", "*"], start=1):
        s.handle(b"sub", subscribe(pattern, sid=sid(n)))
    take(s)
    s.handle(b"sub", unsubscribe(sids=sid(1) + sid(99) + sid(4) + sid(1), ref=b"many"))
    assert take(s) == [(b"sub", p.Ok(A, b"many"))]
    assert set(s.peers[b"sub"].subs) == {sid(2), sid(3)}
    assert s.counters["unsubscribes"] == 2
    s.handle(b"pub", publish("t"))
    assert sids_to(take(s)) == {b"sub": {sid(2), sid(3)}}


def test_the_same_sid_on_two_peers_is_two_subscriptions() -> None:
    s = BrokerState()
    joined(s, b"x")
    joined(s, b"y")
    for ident in (b"x", b"y"):
        s.handle(ident, subscribe("t", sid=sid(1)))
    take(s)
    s.handle(b"x", unsubscribe(sids=sid(1)))
    take(s)
    s.handle(b"x", publish("t"))
    assert sids_to(take(s)) == {b"y": {sid(1)}}


# --- fan-out --------------------------------------------------------------------


def test_fan_out_to_every_matching_peer_exactly_once() -> None:
    s = BrokerState()
    joined(s, b"many", "a.*", "a.>", "a.b", "*.b", ">")  # five matching patterns
    joined(s, b"one", "a.b")
    joined(s, b"tail", ">")
    joined(s, b"miss", "a.c", "b.>", "a.*.c", "a")
    joined(s, b"none")
    joined(s, b"other", ">", "a.b", ch=B)  # same patterns, another channel
    joined(s, b"pub")
    s.handle(b"pub", publish("a.b", b"payload"))
    out = take(s)
    assert delivered_to(out) == [b"many", b"one", b"tail"]
    for _, cmd in out:
        assert isinstance(cmd, p.Deliver)
        assert (cmd.channel, cmd.token, cmd.topic, cmd.body) == (A, b"", b"a.b", b"payload")
    # One DELIVER per peer, naming each of its matching subscriptions.
    assert sids_to(out) == {
        b"many": {sid_of(pat) for pat in ("a.*", "a.>", "a.b", "*.b", ">")},
        b"one": {sid_of("a.b")},
        b"tail": {sid_of(">")},
    }
    assert s.counters["published"] == 1
    assert s.counters["delivered"] == 3


def test_publisher_in_other_channel_reaches_only_its_channel() -> None:
    s = BrokerState()
    joined(s, b"a-sub", ">")
    joined(s, b"b-sub", ">", ch=B)
    joined(s, b"b-pub", ch=B)
    s.handle(b"b-pub", publish("x.y", ch=B))
    out = take(s)
    assert out == [(b"b-sub", p.Deliver(B, b"", b"x.y", b"body", sid_of(">")))]


def test_publisher_with_matching_pattern_gets_its_own_message() -> None:
    s = BrokerState()
    joined(s, b"self", "t")
    s.handle(b"self", publish("t"))
    assert delivered_to(take(s)) == [b"self"]


def test_unconfirmed_publish_reuses_received_frames() -> None:
    s = BrokerState()
    for i in range(4):
        joined(s, b"sub%d" % i, ">")
    joined(s, b"pub")
    frames = publish("a.b", b"x" * 50)
    topic, body = frames[3], frames[4]
    s.handle(b"pub", frames)
    raw = list(s.outbox)
    assert len(raw) == 4  # no ROUTED for an unconfirmed publish
    for _, out_frames in raw:
        assert out_frames[0] == p.H_DELIVER
        assert out_frames[2] == b""
        assert out_frames[3] is topic
        assert out_frames[4] is body
    # A second publish of an equal topic (a new bytes object) is routed from the cache.
    s.outbox.clear()
    frames2 = publish("a.b", b"y")
    s.handle(b"pub", frames2)
    assert all(f[3] is frames2[3] and f[4] is frames2[4] for _, f in s.outbox)


def test_no_subscribers_no_deliveries() -> None:
    s = BrokerState()
    joined(s, b"pub")
    s.handle(b"pub", publish("a.b"))
    assert take(s) == []
    assert s.counters["published"] == 1
    assert s.counters["delivered"] == 0


# --- confirmed publish -------------------------------------------------------------


def test_confirmed_publish_deliver_tokens_routed_and_acked() -> None:
    s = BrokerState()
    joined(s, b"s1", "a.*", "a.>")
    joined(s, b"s2", ">")
    joined(s, b"s3", "zzz")
    joined(s, b"pub")
    s.handle(b"pub", publish("a.b", b"msg", ref=b"r1"))
    out = take(s)
    delivers = [(i, c) for i, c in out if isinstance(c, p.Deliver)]
    assert sorted(i for i, _ in delivers) == [b"s1", b"s2"]
    tokens = {c.token for _, c in delivers}  # type: ignore[union-attr]
    assert len(tokens) == 1
    token = tokens.pop()
    assert 0 < len(token) <= p.MAX_REF_BYTES
    assert (b"pub", p.Routed(A, b"r1", 2)) in out
    assert len(out) == 3
    assert s.pending_confirmations == 1

    body1 = p.pack_ack(2, 0)
    s.handle(b"s1", ack(token, body1))
    [(to, acked)] = take(s)
    assert to == b"pub"
    assert acked == p.Acked(A, b"r1", body1)
    assert s.pending_confirmations == 1

    body2 = p.pack_ack(0, 1, ["boom"])
    s.handle(b"s2", ack(token, body2))
    assert take(s) == [(b"pub", p.Acked(A, b"r1", body2))]
    assert s.pending_confirmations == 0


def test_acked_forwards_the_subscribers_body_untouched() -> None:
    # The broker does not decode the ACK body: even a body that is not a valid
    # ack reaches the publisher byte for byte.
    s = BrokerState()
    joined(s, b"sub", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    body = b"\x00\xffnot msgpack"
    frames = ack(token, body)
    s.handle(b"sub", frames)
    [(to, raw)] = s.outbox
    assert to == b"pub"
    assert raw == [p.H_ACKED, A, b"r", body]
    assert raw[3] is frames[3]


def test_confirmed_publish_without_subscribers_routes_zero() -> None:
    s = BrokerState()
    joined(s, b"pub")
    s.handle(b"pub", publish("a", ref=b"r"))
    assert take(s) == [(b"pub", p.Routed(A, b"r", 0))]
    assert s.pending_confirmations == 0


def test_each_confirmed_publish_gets_a_fresh_token() -> None:
    s = BrokerState()
    joined(s, b"sub", ">")
    joined(s, b"pub")
    seen = set()
    for i in range(5):
        s.handle(b"pub", publish("t", ref=b"r%d" % i))
        seen |= {c.token for _, c in take(s) if isinstance(c, p.Deliver)}
    assert len(seen) == 5


def test_duplicate_and_stale_acks_are_ignored_and_counted() -> None:
    s = BrokerState()
    joined(s, b"sub", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.handle(b"sub", ack(token))
    assert len(take(s)) == 1
    s.handle(b"sub", ack(token))  # duplicate
    s.handle(b"sub", ack(b"\x00" * 8))  # never issued
    assert take(s) == []
    assert s.counters["stale_acks"] == 2
    assert s.counters["errors"] == 0


def test_ack_from_a_peer_that_was_not_a_target_is_refused() -> None:
    s = BrokerState()
    joined(s, b"sub", "t")
    joined(s, b"bystander", "other")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.handle(b"bystander", ack(token))
    s.handle(b"pub", ack(token))  # not even the publisher may confirm
    out = take(s)
    assert [(i, c.code) for i, c in out if isinstance(c, p.Error)] == [
        (b"bystander", ErrorCode.PERMISSION_DENIED),
        (b"pub", ErrorCode.PERMISSION_DENIED),
    ]
    assert s.counters["forged_acks"] == 2 and s.counters["stale_acks"] == 0
    assert s.pending_confirmations == 1
    s.handle(b"sub", ack(token))
    assert [i for i, _ in take(s)] == [b"pub"]
    assert s.pending_confirmations == 0


# --- peers leaving --------------------------------------------------------------------


def test_drop_peer_resolves_outstanding_tokens_with_error_ack() -> None:
    s = BrokerState()
    joined(s, b"sub", "t", "u.>")
    joined(s, b"good", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r1"))
    s.handle(b"pub", publish("t", ref=b"r2"))
    tokens = [c.token for i, c in take(s) if i == b"good" and isinstance(c, p.Deliver)]
    assert len(tokens) == 2

    assert s.drop_peer(b"sub") is True
    out = take(s)
    assert sorted(c.ref for _, c in out) == [b"r1", b"r2"]  # type: ignore[union-attr]
    for to, cmd in out:
        assert to == b"pub"
        assert isinstance(cmd, p.Acked)
        result = p.unpack_ack(cmd.body)
        assert (result.delivered, result.dropped) == (0, 0)
        assert len(result.errors) == 1
        assert result.errors[0]  # a non-empty explanation
    assert s.counters["disconnects"] == 1
    assert s.subscription_count() == 1

    # The remaining subscriber's ACKs finish both publishes.
    for token in tokens:
        s.handle(b"good", ack(token))
    assert len(take(s)) == 2
    assert s.pending_confirmations == 0

    # Its subscriptions are gone: a later publish does not route to it.
    s.handle(b"pub", publish("t"))
    s.handle(b"pub", publish("u.v"))
    assert delivered_to(take(s)) == [b"good"]
    assert s.drop_peer(b"sub") is False
    assert s.drop_peer(b"never-seen") is False


def test_drop_peer_after_a_cached_publish_stops_routing_to_it() -> None:
    s = BrokerState()
    joined(s, b"sub", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t"))  # fills the topic cache with (sub,)
    assert delivered_to(take(s)) == [b"sub"]
    s.drop_peer(b"sub")
    s.handle(b"pub", publish("t", ref=b"r"))  # a stale cache would raise KeyError here
    assert take(s) == [(b"pub", p.Routed(A, b"r", 0))]


def test_disconnect_command_drops_peer_and_answers_ok() -> None:
    s = BrokerState()
    joined(s, b"sub", ">")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    take(s)
    s.handle(b"sub", disconnect(ref=b"bye"))
    out = take(s)
    assert out[-1] == (b"sub", p.Ok(A, b"bye"))
    acked = [c for i, c in out if i == b"pub"]
    assert len(acked) == 1 and isinstance(acked[0], p.Acked)
    assert p.unpack_ack(acked[0].body).errors
    assert b"sub" not in s.peers
    # After leaving it must HELLO again.
    s.handle(b"sub", subscribe(">", ref=b"s"))
    assert only_error(take(s), b"sub").code == ErrorCode.NOT_JOINED


def test_publisher_leaving_with_pending_confirmations() -> None:
    s = BrokerState()
    joined(s, b"sub", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.drop_peer(b"pub")
    s.handle(b"sub", ack(token))  # nobody to forward to; must not raise
    assert take(s) == []
    assert s.pending_confirmations == 0


def test_subscriber_that_is_also_the_publisher_leaving() -> None:
    s = BrokerState()
    joined(s, b"both", "t")
    joined(s, b"other", "t")
    s.handle(b"both", publish("t", ref=b"r"))
    take(s)
    s.drop_peer(b"both")
    assert take(s) == []  # no ACKED to a peer that is gone


def test_acked_not_leaked_to_a_new_session_reusing_the_identity() -> None:
    # A publisher leaves with a confirmation outstanding; a new connection with
    # the same identity joins another channel. The old ACK must not reach it as
    # an ACKED on the new channel with the old session's ref.
    s = BrokerState()
    joined(s, b"sub", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r1"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.handle(b"pub", disconnect())
    take(s)
    joined(s, b"pub", ch=B)
    s.handle(b"sub", ack(token))
    assert take(s) == []


def test_channel_removed_when_last_peer_leaves() -> None:
    s = BrokerState()
    joined(s, b"p1", "a")
    joined(s, b"p2")
    joined(s, b"p3", ch=B)
    assert set(s.channels) == {A, B}
    s.drop_peer(b"p1")
    assert set(s.channels) == {A, B}
    s.drop_peer(b"p2")
    assert set(s.channels) == {B}
    s.handle(b"p3", disconnect(B))
    take(s)
    assert s.channels == {}
    assert s.peers == {}
    # A new peer on A gets a fresh channel with no leftover subscriptions.
    joined(s, b"p4")
    joined(s, b"p5", ">")
    s.handle(b"p4", publish("a"))
    assert delivered_to(take(s)) == [b"p5"]


# --- topic cache ------------------------------------------------------------------


def test_subscribe_after_publish_gets_the_next_message() -> None:
    s = BrokerState()
    joined(s, b"pub")
    joined(s, b"sub")
    s.handle(b"pub", publish("a.b"))
    assert take(s) == []  # cached: no targets for a.b
    s.handle(b"sub", subscribe("a.*"))
    take(s)
    s.handle(b"pub", publish("a.b"))
    assert delivered_to(take(s)) == [b"sub"]
    s.handle(b"sub", unsubscribe("a.*"))
    take(s)
    s.handle(b"pub", publish("a.b"))
    assert take(s) == []


def test_cache_is_per_channel() -> None:
    s = BrokerState()
    joined(s, b"a-sub", "t")
    joined(s, b"b-pub", ch=B)
    s.handle(b"b-pub", publish("t", ch=B))
    assert take(s) == []
    joined(s, b"a-pub")
    s.handle(b"a-pub", publish("t"))
    assert delivered_to(take(s)) == [b"a-sub"]


# --- queue groups ------------------------------------------------------------------


def _group(s: BrokerState, ch: bytes, pattern: str, queue: str) -> list[tuple[bytes, bytes]]:
    return [(peer.ident, sid) for peer, sid in s.channels[ch].groups[(pattern, queue)].members]


def test_queue_group_each_message_reaches_one_member_and_every_plain_subscriber() -> None:
    s = BrokerState()
    members = [b"m1", b"m2", b"m3"]
    for m in members:
        joined(s, m, ("jobs.>", None, "workers"))
    joined(s, b"plain", "jobs.>")
    joined(s, b"pub")
    take(s)
    assert _group(s, A, "jobs.>", "workers") == [(m, sid_of("jobs.>", "workers")) for m in members]
    got: Counter[bytes] = Counter()
    for i in range(30):
        s.handle(b"pub", publish("jobs.run", b"%d" % i))
        out = sids_to(take(s))
        assert out.pop(b"plain") == {sid_of("jobs.>")}
        [(member, sids)] = out.items()
        assert sids == {sid_of("jobs.>", "workers")}
        got[member] += 1
    # Nothing is waiting for confirmation: plain rotation, in the order members joined.
    assert got == Counter({m: 10 for m in members})
    assert s.counters["delivered"] == 60


def test_queue_group_rotation_order() -> None:
    s = BrokerState()
    for m in (b"m1", b"m2", b"m3"):
        joined(s, m, ("t", None, "g"))
    joined(s, b"pub")
    take(s)
    order = []
    for _ in range(6):
        s.handle(b"pub", publish("t"))
        order += delivered_to(take(s))
    assert order == [b"m1", b"m2", b"m3"] * 2


def test_queue_group_prefers_an_idle_member_then_the_least_busy() -> None:
    s = BrokerState()
    for m in (b"m1", b"m2", b"m3"):
        joined(s, m, ("t", None, "g"))
    joined(s, b"pub")
    take(s)
    tokens: dict[bytes, list[bytes]] = {}

    def confirmed(ref: bytes) -> bytes:
        s.handle(b"pub", publish("t", ref=ref))
        [member] = delivered_to(out := take(s))
        tokens.setdefault(member, []).extend(c.token for _, c in out if isinstance(c, p.Deliver))
        return member

    # Each confirmed delivery makes its member busy until it ACKs.
    assert [confirmed(b"r%d" % i) for i in range(3)] == [b"m1", b"m2", b"m3"]
    # All busy (one each): the least busy, in rotation order.
    assert confirmed(b"r3") == b"m1"
    # m1 has two now; m2 and m3 one each.
    assert confirmed(b"r4") == b"m2"
    # m3 confirms: the only idle member gets the next one, whatever the rotation says.
    s.handle(b"m3", ack(tokens[b"m3"][0]))
    take(s)
    assert confirmed(b"r5") == b"m3"
    # Unconfirmed publishes do not make anyone busy, but still prefer the idle.
    for m in (b"m1", b"m2"):
        for token in tokens[m]:
            s.handle(m, ack(token))
    take(s)
    s.handle(b"pub", publish("t"))
    assert delivered_to(take(s)) in ([b"m1"], [b"m2"])


def test_requests_do_not_make_a_member_busy() -> None:
    s = BrokerState()
    for m in (b"m1", b"m2"):
        joined(s, m, ("t", None, "g"))
    joined(s, b"req")
    take(s)
    order = []
    for i in range(4):
        s.handle(b"req", request("t", ref=b"q%d" % i))  # never answered
        out = take(s)
        order += [i for i, c in out if isinstance(c, p.Ask)]
    assert order == [b"m1", b"m2", b"m1", b"m2"]


def test_queue_group_and_plain_sids_of_one_peer_share_one_deliver() -> None:
    s = BrokerState()
    joined(s, b"sub", "a.*")
    s.handle(b"sub", subscribe("a.>", queue="g1"))
    s.handle(b"sub", subscribe("a.b", queue="g2"))
    s.handle(b"sub", subscribe("a.>", queue="g1", sid=sid(5)))  # two members of one group
    assert [type(c) for _, c in take(s)] == [p.Ok] * 3
    joined(s, b"pub")
    s.handle(b"pub", publish("a.b", ref=b"r"))
    out = take(s)
    [(to, deliver)] = [(i, c) for i, c in out if isinstance(c, p.Deliver)]
    got = set(p.split_sids(deliver.sids))  # type: ignore[union-attr]
    assert to == b"sub"
    assert {sid_of("a.*"), sid_of("a.b", "g2")} < got
    # Exactly one of the two members of g1.
    assert len(got & {sid_of("a.>", "g1"), sid(5)}) == 1
    assert len(got) == 3
    assert (b"pub", p.Routed(A, b"r", 1)) in out


def test_queue_groups_are_per_pattern_name_and_channel() -> None:
    s = BrokerState()
    joined(s, b"x")
    joined(s, b"y")
    joined(s, b"z", ch=B)
    s.handle(b"x", subscribe("a.>", queue="g"))
    s.handle(b"y", subscribe("a.*", queue="g"))  # same name, other pattern
    s.handle(b"y", subscribe("a.>", queue="h"))  # same pattern, other name
    s.handle(b"z", subscribe("a.>", queue="g", ch=B))  # another channel
    take(s)
    assert set(s.channels[A].groups) == {("a.>", "g"), ("a.*", "g"), ("a.>", "h")}
    assert set(s.channels[B].groups) == {("a.>", "g")}
    s.handle(b"x", publish("a.b", ref=b"r"))
    out = take(s)
    assert sids_to(out) == {
        b"x": {sid_of("a.>", "g")},
        b"y": {sid_of("a.*", "g"), sid_of("a.>", "h")},
    }
    assert (b"x", p.Routed(A, b"r", 2)) in out


def test_group_goes_when_its_last_member_leaves() -> None:
    s = BrokerState()
    joined(s, b"m1")
    joined(s, b"m2")
    joined(s, b"pub")
    s.handle(b"m1", subscribe("t", queue="g"))
    s.handle(b"m2", subscribe("t", queue="g"))
    take(s)
    s.handle(b"m1", unsubscribe(sids=sid_of("t", "g")))
    take(s)
    assert _group(s, A, "t", "g") == [(b"m2", sid_of("t", "g"))]
    s.handle(b"pub", publish("t"))
    assert delivered_to(take(s)) == [b"m2"]
    s.drop_peer(b"m2")
    assert s.channels[A].groups == {}
    assert len(s.channels[A].trie) == 0
    s.handle(b"pub", publish("t", ref=b"r"))
    assert take(s) == [(b"pub", p.Routed(A, b"r", 0))]


def test_member_leaving_reports_its_delivery_which_is_not_given_to_another() -> None:
    s = BrokerState()
    joined(s, b"stay")
    joined(s, b"leave")
    joined(s, b"pub")
    for m in (b"stay", b"leave"):
        s.handle(m, subscribe("job", queue="workers"))
    take(s)
    s.handle(b"pub", publish("job", ref=b"r1"))  # to stay (first in rotation)
    s.handle(b"pub", publish("job", ref=b"r2"))  # to leave (the idle one)
    out = take(s)
    assert sorted(i for i, c in out if isinstance(c, p.Deliver)) == [b"leave", b"stay"]
    assert s.drop_peer(b"leave")
    [(to, acked)] = take(s)
    assert to == b"pub" and isinstance(acked, p.Acked) and acked.ref == b"r2"
    assert p.unpack_ack(acked.body) == p.AckResult(
        0, 0, ("subscribing bus left before confirming",)
    )
    assert _group(s, A, "job", "workers") == [(b"stay", sid_of("job", "workers"))]
    # At most once: nothing is redelivered to the remaining member.
    s.handle(b"pub", publish("job"))
    assert delivered_to(take(s)) == [b"stay"]


def test_member_whose_deliver_could_not_be_queued_is_reported_dropped_and_idle() -> None:
    s = BrokerState()
    joined(s, b"m1")
    joined(s, b"m2")
    joined(s, b"pub")
    for m in (b"m1", b"m2"):
        s.handle(m, subscribe("job", queue="g"))
    take(s)
    s.handle(b"pub", publish("job", ref=b"r1"))
    [(to, frames)] = [(i, f) for i, f in s.take_outgoing() if f[0] == p.H_DELIVER]
    assert to == b"m1"
    # The socket could not take the DELIVER (queue full): the publisher learns at once.
    s.send_failed(b"m1", frames, gone=False)
    assert take(s) == [(b"pub", p.Acked(A, b"r1", p.pack_ack(0, 1, [])))]
    assert s.pending_confirmations == 0
    assert not s.peers[b"m1"].outstanding
    # Its own ACK, should it come, is stale.
    s.handle(b"m1", ack(frames[2]))
    assert take(s) == []
    assert s.counters["stale_acks"] == 1
    # Unconfirmed or already settled deliveries are not reported.
    s.send_failed(b"m1", frames, gone=False)
    s.send_failed(b"m1", [p.H_DELIVER, A, b"", b"job", b"x", sid(1)], gone=False)
    assert take(s) == []
    assert s.counters["dropped_out"] == 3


# --- requests ------------------------------------------------------------------------


def _session(s: BrokerState, ident: bytes) -> bytes:
    return s.peers[ident].session


def _token(s: BrokerState, requester: bytes, responder: bytes, ref: bytes) -> bytes:
    # The reply token of ``requester``'s ``ref`` in the ASK to ``responder``.
    session = _session(s, requester)
    return session + s._reply_tag(session, ref, _session(s, responder)) + ref


def test_request_asks_every_target_then_routes_the_count() -> None:
    s = BrokerState()
    joined(s, b"s1", "svc.*", "svc.>")
    joined(s, b"s2", "svc.echo")
    joined(s, b"miss", "other")
    joined(s, b"req")
    frames = request("svc.echo", b"ping", ref=b"q1")
    s.handle(b"req", frames)
    out = take(s)
    assert out[-1] == (b"req", p.Routed(A, b"q1", 2))
    for to, cmd in out[:-1]:
        assert isinstance(cmd, p.Ask)
        token = _token(s, b"req", to, b"q1")  # each target's own
        assert (cmd.channel, cmd.token, cmd.topic, cmd.body) == (A, token, b"svc.echo", b"ping")
    assert sids_to(out) == {b"s1": {sid_of("svc.*"), sid_of("svc.>")}, b"s2": {sid_of("svc.echo")}}
    assert s.counters["requests"] == 1
    assert s.counters["delivered"] == 0  # requests are not publishes
    assert s.pending_confirmations == 0


def test_request_forwards_the_received_frames() -> None:
    s = BrokerState()
    joined(s, b"sub", ">")
    joined(s, b"req")
    frames = request("a.b", b"x" * 50)
    s.handle(b"req", frames)
    [(_, ask_frames), _] = s.outbox
    assert ask_frames[3] is frames[3] and ask_frames[4] is frames[4]


def test_request_with_no_target_is_routed_zero() -> None:
    s = BrokerState()
    joined(s, b"other", ">", ch=B)
    joined(s, b"req")
    s.handle(b"req", request("svc", ref=b"q"))
    assert take(s) == [(b"req", p.Routed(A, b"q", 0))]


def test_request_to_self() -> None:
    s = BrokerState()
    joined(s, b"me", "svc")
    s.handle(b"me", request("svc", ref=b"q"))
    token = _token(s, b"me", b"me", b"q")
    assert take(s) == [
        (b"me", p.Ask(A, token, b"svc", b"body", sid_of("svc"))),
        (b"me", p.Routed(A, b"q", 1)),
    ]
    s.handle(b"me", reply(token, b"r"))
    assert take(s) == [(b"me", p.Answer(A, b"q", b"r"))]


def test_reply_is_forwarded_to_the_requester_only_every_time() -> None:
    s = BrokerState()
    joined(s, b"s1", "svc")
    joined(s, b"s2", "svc")
    joined(s, b"req")
    s.handle(b"req", request("svc", ref=b"q"))
    tokens = {to: c.token for to, c in take(s) if isinstance(c, p.Ask)}
    token = tokens[b"s1"]
    frames = reply(token, b"first")
    s.handle(b"s1", frames)
    [(to, raw)] = s.outbox
    assert (to, raw) == (b"req", [p.H_ANSWER, A, b"q", b"first"])
    assert raw[3] is frames[3]  # the body is forwarded, not decoded or copied
    s.outbox.clear()
    # Every REPLY is forwarded (the requester keeps the first); the broker keeps no state.
    s.handle(b"s2", reply(tokens[b"s2"], b"second"))
    s.handle(b"s1", reply(token, b"again"))
    assert take(s) == [
        (b"req", p.Answer(A, b"q", b"second")),
        (b"req", p.Answer(A, b"q", b"again")),
    ]
    assert s.counters["replies"] == 3
    assert s.counters["stale_replies"] == 0


def test_same_ref_from_two_requesters_never_crosses() -> None:
    s = BrokerState()
    joined(s, b"resp", "svc")
    joined(s, b"r1")
    joined(s, b"r2")
    tokens = {}
    for r in (b"r1", b"r2"):
        s.handle(r, request("svc", ref=b"same"))
        tokens[r] = next(c.token for _, c in take(s) if isinstance(c, p.Ask))
    assert tokens[b"r1"] != tokens[b"r2"]
    s.handle(b"resp", reply(tokens[b"r2"], b"2"))
    s.handle(b"resp", reply(tokens[b"r1"], b"1"))
    assert take(s) == [(b"r2", p.Answer(A, b"same", b"2")), (b"r1", p.Answer(A, b"same", b"1"))]


def test_reply_from_another_channel_is_dropped() -> None:
    s = BrokerState()
    joined(s, b"resp", "svc")
    joined(s, b"req")
    joined(s, b"evil", ch=B)
    s.handle(b"req", request("svc", ref=b"q"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Ask))
    s.handle(b"evil", reply(token, b"forged", ch=B))
    # Not asked: the token's tag is not its own.
    assert only_error(take(s), b"evil").code == ErrorCode.PERMISSION_DENIED
    assert s.counters["forged_replies"] == 1 and s.counters["replies"] == 0


@pytest.mark.parametrize("how", ["disconnect", "drop", "disconnect-and-rejoin"])
def test_reply_after_the_requester_left_is_dropped_and_counted(how: str) -> None:
    s = BrokerState()
    joined(s, b"resp", "svc")
    joined(s, b"req")
    s.handle(b"req", request("svc", ref=b"q"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Ask))
    if how == "drop":
        s.drop_peer(b"req")
    else:
        s.handle(b"req", disconnect())
    take(s)
    if how == "disconnect-and-rejoin":
        joined(s, b"req")  # a new session of the same identity must not get it
    s.handle(b"resp", reply(token))
    assert take(s) == []
    assert s.counters["stale_replies"] == 1
    assert s.counters["replies"] == 0


def test_reply_with_a_token_of_no_session_is_dropped() -> None:
    s = BrokerState()
    joined(s, b"resp")
    resp = _session(s, b"resp")
    for session in (b"\xff" * 8, resp[:-1] + b"\x09"):
        # Tags the broker made for this peer, of sessions that do not exist.
        s.handle(b"resp", reply(session + s._reply_tag(session, b"q", resp) + b"q"))
    assert take(s) == []
    assert s.counters["stale_replies"] == 2


def test_a_reply_token_not_made_for_the_replying_peer_is_refused() -> None:
    s = BrokerState()
    joined(s, b"s1", "svc")
    joined(s, b"s2", "other")
    joined(s, b"req")
    s.handle(b"req", request("svc", ref=b"q"))
    (token,) = [c.token for _, c in take(s) if isinstance(c, p.Ask)]
    # A peer that was not asked uses the token it learnt; another guesses one.
    guessed = _session(s, b"req") + bytes(p.REPLY_TAG_BYTES) + b"q"
    for forged in (token, guessed):
        s.handle(b"s2", reply(forged))
        err = only_error(take(s), b"s2")
        assert err.code == ErrorCode.PERMISSION_DENIED and "not issued to you" in err.text
    assert s.counters["forged_replies"] == 2 and s.counters["replies"] == 0
    s.handle(b"s1", reply(token))  # the peer asked
    assert take(s) == [(b"req", p.Answer(A, b"q", b"reply"))]


@pytest.mark.parametrize(
    ("ref", "ok"),
    [(b"", False), (b"q", True), (b"q" * 8, True), (b"q" * 9, False), (b"q" * 32, False)],
)
def test_request_ref_is_1_to_8_bytes(ref: bytes, ok: bool) -> None:
    s = BrokerState()
    joined(s, b"req")
    s.handle(b"req", request("svc", ref=ref))
    if ok:
        assert take(s) == [(b"req", p.Routed(A, ref, 0))]
    else:
        err = only_error(take(s), b"req")
        assert (err.code, err.ref) == (ErrorCode.BAD_FRAMES, ref)  # a ref up to 32 is echoed


@pytest.mark.parametrize(
    ("size", "ok"), [(0, False), (8, False), (24, False), (25, True), (32, True), (33, False)]
)
def test_reply_token_is_25_to_32_bytes(size: int, ok: bool) -> None:
    s = BrokerState()
    joined(s, b"resp")
    s.handle(b"resp", reply(b"t" * size))
    out = take(s)
    if ok:
        # Well formed, but no tag the broker made: refused as forged.
        assert only_error(out, b"resp").code == ErrorCode.PERMISSION_DENIED
        assert s.counters["forged_replies"] == 1
    else:
        err = only_error(out, b"resp")
        assert (err.code, err.ref) == (ErrorCode.BAD_FRAMES, b"")


def test_request_and_reply_bodies_are_limited_by_max_message_size() -> None:
    s = BrokerState(max_message_size=10)
    joined(s, b"resp", "svc")
    joined(s, b"req")
    s.handle(b"req", request("svc", b"x" * 11, ref=b"big"))
    err = only_error(take(s), b"req")
    assert (err.code, err.ref) == (ErrorCode.TOO_LARGE, b"big")
    s.handle(b"req", request("svc", b"x" * 10, ref=b"q"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Ask))
    s.handle(b"resp", reply(token, b"y" * 11))
    err = only_error(take(s), b"resp")
    assert (err.code, err.ref) == (ErrorCode.TOO_LARGE, b"")
    s.handle(b"resp", reply(token, b"y" * 10))
    assert take(s) == [(b"req", p.Answer(A, b"q", b"y" * 10))]


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "ref"),
    [
        (subscribe("a", ref=b"s1"), b"s1"),
        (unsubscribe("a", ref=b"u1"), b"u1"),
        (publish("a", ref=b"p1"), b"p1"),
        (publish("a"), b""),
        (ack(b"tok"), b""),
        (disconnect(ref=b"d1"), b"d1"),
        (request("a", ref=b"q1"), b"q1"),
        (reply(b"\x00" * 8 + b"q"), b""),
    ],
)
def test_not_joined_before_hello(frames: list[bytes], ref: bytes) -> None:
    s = BrokerState()
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.NOT_JOINED
    assert err.ref == ref
    assert err.channel == A
    assert s.errors[ErrorCode.NOT_JOINED] == 1
    assert s.counters["errors"] == 1
    assert s.peers == {}


@pytest.mark.parametrize(
    "frames",
    [
        subscribe("a", ch=B, ref=b"x"),
        unsubscribe("a", ch=B, ref=b"x"),
        publish("a", ch=B, ref=b"x"),
        publish("a", ch=B),
        ack(b"tok", ch=B),
        disconnect(ch=B, ref=b"x"),
        request("a", ch=B, ref=b"x"),
        reply(b"\x00" * 8 + b"x", ch=B),
    ],
)
def test_channel_mismatch_on_frame_channel(frames: list[bytes]) -> None:
    s = BrokerState()
    joined(s, b"p", ">")
    joined(s, b"q", ">", ch=B)
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.CHANNEL_MISMATCH
    assert s.errors[ErrorCode.CHANNEL_MISMATCH] == 1
    assert b"p" in s.peers  # still joined
    assert s.subscription_count() == 2


def test_second_hello_with_another_channel_is_refused() -> None:
    s = BrokerState()
    joined(s, b"p", "t")
    s.handle(b"p", hello(B))
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.CHANNEL_MISMATCH
    assert s.peers[b"p"].channel.id == A
    assert set(s.channels) == {A}
    joined(s, b"pub")
    s.handle(b"pub", publish("t"))
    assert delivered_to(take(s)) == [b"p"]


def test_too_large() -> None:
    s = BrokerState(max_message_size=100)
    joined(s, b"sub", "t")
    joined(s, b"pub")
    s.handle(b"pub", publish("t", b"x" * 101, ref=b"big"))
    err = only_error(take(s), b"pub")
    assert err.code == ErrorCode.TOO_LARGE
    assert err.ref == b"big"
    s.handle(b"pub", publish("t", b"x" * 100, ref=b"ok"))
    out = take(s)
    assert delivered_to(out) == [b"sub"]
    token = next(c.token for _, c in out if isinstance(c, p.Deliver))
    s.handle(b"sub", ack(token, b"y" * 101))
    assert only_error(take(s), b"sub").code == ErrorCode.TOO_LARGE
    assert s.errors[ErrorCode.TOO_LARGE] == 2
    assert s.counters["published"] == 1
    # The oversized ACK did not consume the token: a proper ACK still goes through.
    s.handle(b"sub", ack(token))
    assert [i for i, _ in take(s)] == [b"pub"]


@pytest.mark.parametrize(
    ("frames", "ref"),
    [
        ([p.H_PUBLISH, A, b"r", b"a.*", b""], b"r"),
        ([p.H_PUBLISH, A, b"r", b">", b""], b"r"),
        ([p.H_PUBLISH, A, b"", b"a..b", b""], b""),
        ([p.H_PUBLISH, A, b"", b"", b""], b""),
        ([p.H_PUBLISH, A, b"", b"\xff\xfe", b""], b""),
        ([p.H_PUBLISH, A, b"", b"a b", b""], b""),
        ([p.H_PUBLISH, A, b"", b"x" * 257, b""], b""),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a..b", b""], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b">.a", b""], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a*", b""], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a", b"*"], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a", b"g..h"], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a", b"g h"], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a", b"q" * 65], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", sid(1), b"a", b"\xff"], b"s"),
        ([p.H_REQUEST, A, b"q", b"a.*", b""], b"q"),
        ([p.H_REQUEST, A, b"q", b"", b""], b"q"),
    ],
)
def test_bad_topic(frames: list[bytes], ref: bytes) -> None:
    s = BrokerState()
    joined(s, b"p", ">")
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.BAD_TOPIC
    assert err.ref == ref
    assert s.errors == Counter({ErrorCode.BAD_TOPIC: 1})
    assert s.subscription_count() == 1
    assert s.counters["published"] == 0


def test_bad_topic_refused_again_on_repeat() -> None:
    s = BrokerState()
    joined(s, b"p", ">")
    for _ in range(3):
        s.handle(b"p", [p.H_PUBLISH, A, b"", b"a.>", b""])
        assert only_error(take(s), b"p").code == ErrorCode.BAD_TOPIC
    assert s.errors[ErrorCode.BAD_TOPIC] == 3


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], ErrorCode.BAD_FRAMES),
        ([b""], ErrorCode.VERSION_NOT_SUPPORTED),
        ([b"ZB"], ErrorCode.VERSION_NOT_SUPPORTED),
        ([b"ZB\x09\x04", A, b"", b"t", b""], ErrorCode.VERSION_NOT_SUPPORTED),
        ([p.H_PUBLISH], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, A, b"", b"t"], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, A, b"", b"t", b"", b""], ErrorCode.BAD_FRAMES),
        ([p.H_PUBLISH, b"short", b"", b"t", b""], ErrorCode.BAD_FRAMES),
        # An oversized ref/token is only looked at once the peer has joined.
        ([p.H_PUBLISH, A, b"r" * 33, b"t", b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_ACK], ErrorCode.BAD_FRAMES),
        ([p.H_ACK, A, b"t" * 33, b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_ACK, A, b"", b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_ACK, b"short", b"t", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, A, b"s"], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, A, b"s", b"t"], ErrorCode.BAD_FRAMES),  # the draft without sids
        ([p.H_SUBSCRIBE, A, b"s", b"\0\0\1", b"t", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, A, b"s", b"\0\0\0\0\1", b"t", b""], ErrorCode.BAD_FRAMES),
        ([p.H_UNSUBSCRIBE, A, b"u", b""], ErrorCode.BAD_FRAMES),
        ([p.H_UNSUBSCRIBE, A, b"u", b"\0\0\0\1\0"], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, A, b"q", b"t"], ErrorCode.BAD_FRAMES),
        ([p.H_REQUEST, A, b"", b"t", b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_REQUEST, A, b"q" * 25, b"t", b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_REPLY, A, b"t" * 9], ErrorCode.BAD_FRAMES),
        ([p.H_REPLY, A, b"", b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_REPLY, A, b"t" * 8, b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_REPLY, A, b"t" * 33, b""], (ErrorCode.NOT_JOINED, ErrorCode.BAD_FRAMES)),
        ([p.H_ASK, A, b"t" * 9, b"t", b"", b"\0\0\0\1"], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_ANSWER, A, b"q", b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_HELLO, A, b"\xc1"], ErrorCode.BAD_BODY),
        ([p.H_HELLO, b"short", p.pack_hello("x")], ErrorCode.BAD_FRAMES),
        ([p.H_DELIVER, A, b"", b"t", b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_WELCOME, A, p.pack_welcome("b", 1)], ErrorCode.UNKNOWN_COMMAND),
        ([b"ZB\x01\x00", A], ErrorCode.UNKNOWN_COMMAND),
    ],
)
@pytest.mark.parametrize("member", [False, True])
def test_malformed_messages_are_refused_not_raised(
    frames: list[bytes], code: int | tuple[int, int], member: bool
) -> None:
    if isinstance(code, tuple):
        code = code[member]
    s = BrokerState()
    if member:
        joined(s, b"p", ">")
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == code
    assert s.errors[code] == 1
    assert s.counters["errors"] == 1
    assert s.counters["internal_errors"] == 0


_frame = st.one_of(
    st.binary(max_size=20),
    st.sampled_from(
        [A, B, b"t", b"a.b", b"a.*", b">", b"", b"\xff", b"g", p.pack_hello("x"), sid(1)]
    ),
    st.builds(
        lambda n, r: (n % 4).to_bytes(8, "big") + r, st.integers(0, 5), st.binary(max_size=3)
    ),
    st.sampled_from([p.header(c) for c in p.Cmd]),
)
_frames = st.one_of(
    st.lists(_frame, max_size=6),
    st.builds(
        lambda h, rest: [h, *rest],
        st.sampled_from([p.header(c) for c in p.Cmd]),
        st.lists(_frame, max_size=5),
    ),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"p", b"q", b"x"]), _frames), max_size=8))
def test_random_frames_never_raise_and_replies_are_valid(
    msgs: list[tuple[bytes, list[bytes]]],
) -> None:
    s = BrokerState(max_message_size=64)
    joined(s, b"p", ">")
    joined(s, b"q", "a.*", ch=B)
    for ident, frames in msgs:
        s.handle(ident, frames)
        for to, out in s.outbox:
            p.parse_broker(out)  # whatever the broker sends is valid protocol
            assert to in s.peers or to == ident
        s.outbox.clear()
    assert s.counters["messages_in"] == len(msgs) + 4
    # Refused, never crashed: a bug caught by handle's safety net would show here.
    assert s.counters["internal_errors"] == 0
    assert ErrorCode.INTERNAL not in s.errors


# --- model-based: random interleavings ------------------------------------------------

CHANNELS = [A, B]
PATTERNS = ["a", "b", "a.b", "a.*", "*", ">", "a.>", "*.b", "*.*", "b.>", "a.b.>", "*.a.b"]
# Fewer patterns for queue groups, so that groups get several members.
GROUP_PATTERNS = ["a.*", ">", "a.b"]
QUEUES = ["g1", "g2"]
TOPICS = ["a", "b", "a.b", "b.b", "a.a", "a.b.c", "b.a.b", "c"]
SIDS = [sid(n) for n in range(1, 6)]
FORGED_TOKEN = (999).to_bytes(8, "big") + bytes(16) + b"forged"
GHOST_COMMANDS = [
    subscribe("a"),
    publish("a"),
    ack(b"t"),
    disconnect(),
    unsubscribe("a"),
    request("a"),
    reply(FORGED_TOKEN),
]


class RoutingModel:
    """A plain model of the broker's routing rules. Each method sends one command
    to a real BrokerState and checks every reply against the model.

    The model does not predict which member of a queue group gets a message;
    it checks that exactly one does, that it was among the least busy, and
    learns the choice from the output."""

    def __init__(self) -> None:
        self.s = BrokerState()
        self.n = 0
        self.sessions_made = 0
        self.joined: dict[bytes, bytes] = {}  # ident -> channel
        self.session: dict[bytes, bytes] = {}  # ident -> its session number, kept after leaving
        self.subs: dict[
            bytes, dict[bytes, tuple[str, str]]
        ] = {}  # ident -> sid -> (pattern, queue)
        self.outstanding: dict[bytes, set[bytes]] = {}
        self.pending: dict[bytes, list[Any]] = {}  # token -> [publisher, ref, remaining]
        self.asked: dict[bytes, set[bytes]] = {}  # ident -> reply tokens of the ASKs it got
        self.tokens: set[bytes] = {FORGED_TOKEN}  # every reply token issued, and a forged one
        self.left: list[bytes] = []  # identities never reused, as a new session would be
        self.stale = 0
        self.forged = 0
        self.refs = 0
        self.deliveries = 0
        self.synthetic_acks = 0
        self.group_hits = 0
        self.requests = 0
        self.asks = 0
        self.replies = 0
        self.stale_replies = 0
        self.sid_in_use = 0

    def _ref(self) -> bytes:
        self.refs += 1
        return b"r%d" % self.refs

    def join(self, ch: bytes) -> bytes:
        self.n += 1
        ident = b"peer%d" % self.n
        self.s.handle(ident, hello(ch))
        [(to, cmd)] = take(self.s)
        assert to == ident and isinstance(cmd, p.Welcome)
        self.sessions_made += 1
        self.session[ident] = self.sessions_made.to_bytes(8, "big")
        self.joined[ident] = ch
        self.subs[ident] = {}
        self.outstanding[ident] = set()
        self.asked[ident] = set()
        return ident

    def hello_again(self, ident: bytes, ch: bytes) -> None:
        self.s.handle(ident, hello(ch))
        [(to, cmd)] = take(self.s)
        assert to == ident
        if ch == self.joined[ident]:
            assert isinstance(cmd, p.Welcome)
        else:
            assert isinstance(cmd, p.Error) and cmd.code == ErrorCode.CHANNEL_MISMATCH

    def subscribe(self, ident: bytes, sid: bytes, pattern: str, queue: str = "") -> None:
        ch, ref = self.joined[ident], self._ref()
        self.s.handle(ident, subscribe(pattern, sid, queue, ch=ch, ref=ref))
        out = take(self.s)
        current = self.subs[ident].get(sid)
        if current is None or current == (pattern, queue):
            assert out == [(ident, p.Ok(ch, ref))]
            self.subs[ident][sid] = (pattern, queue)
        else:
            err = only_error(out, ident)
            assert (err.code, err.channel, err.ref) == (ErrorCode.SID_IN_USE, ch, ref)
            self.sid_in_use += 1

    def unsubscribe(self, ident: bytes, sids: list[bytes]) -> None:
        ch, ref = self.joined[ident], self._ref()
        self.s.handle(ident, unsubscribe(ch=ch, ref=ref, sids=b"".join(sids)))
        assert take(self.s) == [(ident, p.Ok(ch, ref))]
        for x in sids:
            self.subs[ident].pop(x, None)

    def groups(self, ch: bytes) -> dict[tuple[str, str], set[tuple[bytes, bytes]]]:
        """The queue groups of a channel: (pattern, queue) -> {(peer, sid)}."""
        out: dict[tuple[str, str], set[tuple[bytes, bytes]]] = {}
        for q, qch in self.joined.items():
            if qch == ch:
                for x, (pattern, queue) in self.subs[q].items():
                    if queue:
                        out.setdefault((pattern, queue), set()).add((q, x))
        return out

    def _fan_out(
        self, ch: bytes, topic: str, out: list[tuple[bytes, p.BrokerCommand]]
    ) -> set[bytes]:
        """Check who one message (DELIVERs or ASKs) went to; return the peers."""
        got = sids_to(out)
        plain: dict[bytes, set[bytes]] = {}
        for q, qch in self.joined.items():
            if qch == ch:
                mine = {
                    x
                    for x, (pattern, queue) in self.subs[q].items()
                    if not queue and matches(pattern, topic)
                }
                if mine:
                    plain[q] = mine
        # Every plain matching sid, once.
        assert set(plain) <= set(got)
        extra: set[tuple[bytes, bytes]] = set()
        for q, sids in got.items():
            assert plain.get(q, set()) <= sids
            extra |= {(q, x) for x in sids - plain.get(q, set())}
        # Exactly one member of each matching group, among the least busy.
        for (pattern, _), members in self.groups(ch).items():
            if not matches(pattern, topic):
                continue
            chosen = members & extra
            assert len(chosen) == 1, (pattern, members, chosen)
            [(q, _)] = chosen
            load = {m: len(self.outstanding[m]) for m, _ in members}
            assert load[q] == min(load.values())
            extra -= chosen
            self.group_hits += 1
        assert not extra, f"sids that do not match: {extra}"
        return set(got)

    def publish(self, ident: bytes, topic: str, body: bytes, confirmed: bool) -> None:
        ch = self.joined[ident]
        ref = self._ref() if confirmed else b""
        self.s.handle(ident, publish(topic, body, ch, ref))
        out = take(self.s)
        delivers = [(to, c) for to, c in out if isinstance(c, p.Deliver)]
        others = [(to, c) for to, c in out if not isinstance(c, p.Deliver)]
        expected = sorted(self._fan_out(ch, topic, delivers))
        self.deliveries += len(expected)
        toks = set()
        for _, c in delivers:
            assert isinstance(c, p.Deliver)
            assert (c.channel, c.topic, c.body) == (ch, topic.encode(), body)
            toks.add(c.token)
        if not confirmed:
            assert others == []
            assert toks <= {b""}
            return
        assert others == [(ident, p.Routed(ch, ref, len(expected)))]
        if expected:
            assert len(toks) == 1
            token = toks.pop()
            assert token and token not in self.pending
            self.pending[token] = [ident, ref, len(expected)]
            for q in expected:
                self.outstanding[q].add(token)

    def request(self, ident: bytes, topic: str, body: bytes) -> None:
        ch, ref = self.joined[ident], self._ref()
        self.s.handle(ident, request(topic, body, ch, ref))
        out = take(self.s)
        session = self.session[ident]
        asks = out[:-1]
        for to, c in asks:
            assert isinstance(c, p.Ask)
            # Each target's token: the session, a tag made for that target, the ref.
            token = session + self.s._reply_tag(session, ref, self.session[to]) + ref
            assert (c.channel, c.token, c.topic, c.body) == (ch, token, topic.encode(), body)
            self.asked[to].add(token)
            self.tokens.add(token)
        reached = self._fan_out(ch, topic, asks)
        assert out[-1] == (ident, p.Routed(ch, ref, len(reached)))
        self.requests += 1
        self.asks += len(reached)

    def reply_candidates(self, ident: bytes) -> list[bytes]:
        return sorted(self.asked[ident] | self.tokens)

    def reply(self, ident: bytes, token: bytes, body: bytes) -> None:
        ch = self.joined[ident]
        self.s.handle(ident, reply(token, body, ch))
        out = take(self.s)
        if token not in self.asked[ident]:
            # Guessed, or asked of another peer: the tag is not this peer's.
            assert [(to, type(cmd), cmd.code) for to, cmd in out] == [  # type: ignore[attr-defined]
                (ident, p.Error, p.ErrorCode.PERMISSION_DENIED)
            ]
            return
        requester = next(
            (q for q in self.joined if self.session[q] == token[: p.SESSION_BYTES]), None
        )
        if requester is not None and self.joined[requester] == ch:
            ref = token[p.SESSION_BYTES + p.REPLY_TAG_BYTES :]
            assert out == [(requester, p.Answer(ch, ref, body))]
            self.replies += 1
        else:
            # The requester left, is on another channel, or never existed.
            assert out == []
            self.stale_replies += 1

    def _resolve(self, token: bytes) -> list[tuple[bytes, bytes]]:
        """(publisher, ref) of the ACKED the broker owes for one confirmation."""
        entry = self.pending[token]
        publisher, ref = entry[0], entry[1]
        entry[2] -= 1
        if entry[2] == 0:
            del self.pending[token]
        return [(publisher, ref)] if publisher in self.joined else []

    def ack_candidates(self, ident: bytes) -> list[bytes]:
        return sorted({*self.outstanding[ident], *self.pending, b"\x00" * 8})

    def ack(self, ident: bytes, token: bytes, delivered: int) -> None:
        ch = self.joined[ident]
        body = p.pack_ack(delivered, 0)
        self.s.handle(ident, ack(token, body, ch))
        out = take(self.s)
        if token in self.outstanding[ident]:
            self.outstanding[ident].discard(token)
            expected = self._resolve(token)
            assert out == [(pub, p.Acked(self.joined[pub], ref, body)) for pub, ref in expected]
        elif token in self.pending:
            # Another peer's live delivery: refused, nothing settled.
            err = only_error(out, ident)
            assert err.code == ErrorCode.PERMISSION_DENIED
            self.forged += 1
        else:
            self.stale += 1
            assert out == []

    def leave(self, ident: bytes, command: bool) -> None:
        ch = self.joined.pop(ident)
        self.subs.pop(ident)
        self.asked.pop(ident)
        expected = []
        for token in self.outstanding.pop(ident):
            expected += self._resolve(token)
        if command:
            self.s.handle(ident, disconnect(ch, b"bye"))
        else:
            assert self.s.drop_peer(ident) is True
        out = take(self.s)
        if command:
            assert out[-1] == (ident, p.Ok(ch, b"bye"))
            out = out[:-1]
        got = []
        for to, cmd in out:
            assert isinstance(cmd, p.Acked)
            assert cmd.channel == self.joined[to]
            assert p.unpack_ack(cmd.body).errors
            got.append((to, cmd.ref))
        assert sorted(got) == sorted(expected)
        self.synthetic_acks += len(got)
        self.left.append(ident)

    def ghost(self, ident: bytes, frames: list[bytes]) -> None:
        """A peer that left sends a command without joining again."""
        self.s.handle(ident, frames)
        err = only_error(take(self.s), ident)
        assert err.code == ErrorCode.NOT_JOINED
        assert ident not in self.s.peers

    def check(self) -> None:
        s = self.s
        assert set(s.peers) == set(self.joined)
        assert set(s.channels) == set(self.joined.values())
        assert set(s.sessions) == {self.session[q] for q in self.joined}
        for ch_id, channel in s.channels.items():
            assert channel.peers == {q for q, c in self.joined.items() if c == ch_id}
            groups = {
                key: {(peer.ident, x) for peer, x in group.members}
                for key, group in channel.groups.items()
            }
            assert groups == self.groups(ch_id)
        for ident, peer in s.peers.items():
            assert peer.subs == self.subs[ident]
            assert set(peer.outstanding) == self.outstanding[ident]
            assert peer.session == self.session[ident]
        assert s.subscription_count() == sum(len(v) for v in self.subs.values())
        assert s.pending_confirmations == len(self.pending)
        assert s.counters["stale_acks"] == self.stale
        assert s.counters["forged_acks"] == self.forged
        assert s.counters["delivered"] == self.deliveries
        assert s.counters["requests"] == self.requests
        assert s.counters["replies"] == self.replies
        assert s.counters["stale_replies"] == self.stale_replies
        assert s.errors[ErrorCode.SID_IN_USE] == self.sid_in_use
        assert s.counters["errors"] == sum(s.errors.values())
        assert s.counters["internal_errors"] == 0
        assert s.outbox == []


def _step(m: RoutingModel, rng: random.Random) -> None:
    """One random command, weighted towards the interesting ones."""
    if len(m.joined) < 2:
        m.join(rng.choice(CHANNELS))
        return
    action = rng.choices(
        ["join", "hello", "sub", "subq", "unsub", "pub", "req", "reply", "ack", "leave", "ghost"],
        weights=[2, 1, 5, 4, 2, 8, 4, 4, 5, 2, 1],
    )[0]
    ident = rng.choice(sorted(m.joined))
    if action == "join" and len(m.joined) < 6:
        m.join(rng.choice(CHANNELS))
    elif action == "hello":
        m.hello_again(ident, rng.choice(CHANNELS))
    elif action == "sub":
        m.subscribe(ident, rng.choice(SIDS), rng.choice(PATTERNS))
    elif action == "subq":
        m.subscribe(ident, rng.choice(SIDS), rng.choice(GROUP_PATTERNS), rng.choice(QUEUES))
    elif action == "unsub":
        held = sorted(m.subs[ident])
        sids = rng.sample(held, rng.randint(1, len(held))) if held else []
        if not sids or rng.random() < 0.2:
            sids.append(rng.choice(SIDS))
        m.unsubscribe(ident, sids)
    elif action == "pub":
        m.publish(ident, rng.choice(TOPICS), rng.randbytes(rng.randrange(4)), rng.random() < 0.7)
    elif action == "req":
        m.request(ident, rng.choice(TOPICS), rng.randbytes(rng.randrange(4)))
    elif action == "reply":
        m.reply(ident, rng.choice(m.reply_candidates(ident)), rng.randbytes(rng.randrange(4)))
    elif action == "ack":
        m.ack(ident, rng.choice(m.ack_candidates(ident)), rng.randrange(3))
    elif action == "leave":
        m.leave(ident, rng.random() < 0.5)
    elif action == "ghost" and m.left:
        m.ghost(rng.choice(m.left), rng.choice(GHOST_COMMANDS))


@pytest.mark.parametrize("seed", range(6))
def test_random_interleavings_match_the_model(seed: int) -> None:
    rng = random.Random(seed)
    m = RoutingModel()
    for _ in range(300):
        _step(m, rng)
        m.check()
    # The run exercised what it is meant to check.
    assert m.deliveries > 0
    assert m.s.counters["published"] > 0
    assert m.group_hits > 0
    assert m.asks > 0
    assert m.left


def test_random_interleavings_reach_the_rare_cases() -> None:
    totals: Counter[str] = Counter()
    for seed in range(6):
        rng = random.Random(seed)
        m = RoutingModel()
        for _ in range(300):
            _step(m, rng)
        totals.update(
            synthetic_acks=m.synthetic_acks,
            replies=m.replies,
            stale_replies=m.stale_replies,
            sid_in_use=m.sid_in_use,
        )
    assert min(totals.values()) > 0 and len(totals) == 4, totals


_peer_index = st.integers(0, 5)


class BrokerMachine(RuleBasedStateMachine):
    """The same model, driven by hypothesis (which also shrinks a failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.m = RoutingModel()

    def _pick(self, i: int) -> bytes:
        idents = sorted(self.m.joined)
        return idents[i % len(idents)]

    @initialize(chs=st.lists(st.sampled_from(CHANNELS), min_size=2, max_size=3))
    def first_peers(self, chs: list[bytes]) -> None:
        for ch in chs:
            self.m.join(ch)

    @precondition(lambda self: len(self.m.joined) < 6)
    @rule(ch=st.sampled_from(CHANNELS))
    def join(self, ch: bytes) -> None:
        self.m.join(ch)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, ch=st.sampled_from(CHANNELS))
    def hello_again(self, i: int, ch: bytes) -> None:
        self.m.hello_again(self._pick(i), ch)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, sid=st.sampled_from(SIDS), pattern=st.sampled_from(PATTERNS))
    def subscribe(self, i: int, sid: bytes, pattern: str) -> None:
        self.m.subscribe(self._pick(i), sid, pattern)

    @precondition(lambda self: self.m.joined)
    @rule(
        i=_peer_index,
        sid=st.sampled_from(SIDS),
        pattern=st.sampled_from(GROUP_PATTERNS),
        queue=st.sampled_from(QUEUES),
    )
    def join_group(self, i: int, sid: bytes, pattern: str, queue: str) -> None:
        self.m.subscribe(self._pick(i), sid, pattern, queue)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, sids=st.lists(st.sampled_from(SIDS), min_size=1, max_size=4))
    def unsubscribe(self, i: int, sids: list[bytes]) -> None:
        self.m.unsubscribe(self._pick(i), sids)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, topic=st.sampled_from(TOPICS), body=st.binary(max_size=4))
    def publish_confirmed(self, i: int, topic: str, body: bytes) -> None:
        self.m.publish(self._pick(i), topic, body, True)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, topic=st.sampled_from(TOPICS))
    def publish_unconfirmed(self, i: int, topic: str) -> None:
        self.m.publish(self._pick(i), topic, b"b", False)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, topic=st.sampled_from(TOPICS), body=st.binary(max_size=4))
    def request(self, i: int, topic: str, body: bytes) -> None:
        self.m.request(self._pick(i), topic, body)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, data=st.data())
    def reply(self, i: int, data: st.DataObject) -> None:
        ident = self._pick(i)
        token = data.draw(st.sampled_from(self.m.reply_candidates(ident)))
        self.m.reply(ident, token, data.draw(st.binary(max_size=4)))

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, data=st.data())
    def ack(self, i: int, data: st.DataObject) -> None:
        ident = self._pick(i)
        token = data.draw(st.sampled_from(self.m.ack_candidates(ident)))
        self.m.ack(ident, token, data.draw(st.integers(0, 3)))

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, command=st.booleans())
    def leave(self, i: int, command: bool) -> None:
        self.m.leave(self._pick(i), command)

    @precondition(lambda self: self.m.left)
    @rule(data=st.data(), frames=st.sampled_from(GHOST_COMMANDS))
    def ghost(self, data: st.DataObject, frames: list[bytes]) -> None:
        self.m.ghost(data.draw(st.sampled_from(self.m.left)), frames)

    @invariant()
    def state_matches_model(self) -> None:
        self.m.check()


BrokerMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_broker_machine = BrokerMachine.TestCase


def test_queue_group_removes_members_in_any_order_and_keeps_rotating() -> None:
    """Removal swaps the last member into the gap (O(1)): every remaining member
    still gets its turn, and a group emptied in any order is empty."""
    from zmqbus._groups import QueueGroup
    from zmqbus._peer import Peer

    group = QueueGroup(("work.>", "q"))
    peers = [Peer(bytes([i]), None, bytes(8)) for i in range(10)]  # type: ignore[arg-type]
    for peer in peers:
        group.add(peer, b"sid1")
    for i in (0, 9, 4, 5):
        group.remove(peers[i], b"sid1")
    left = {peers[i] for i in (1, 2, 3, 6, 7, 8)}
    assert {m[0] for m in group.members} == left
    assert {group.pick()[0] for _ in range(6)} == left
    for peer in [peers[i] for i in (8, 1, 7, 2, 6, 3)]:
        group.remove(peer, b"sid1")
    assert group.members == []
    with pytest.raises(KeyError):
        group.remove(peers[1], b"sid1")
