"""BrokerState in memory: frames in, (identity, frames) out; no sockets."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
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

A = b"A" * 16
B = b"B" * 16

# --- helpers ---------------------------------------------------------------------


def hello(ch: bytes = A, client: str = "test") -> list[bytes]:
    return p.encode(p.Hello(ch, p.pack_hello(client)))


def subscribe(pattern: str, ch: bytes = A, ref: bytes = b"s") -> list[bytes]:
    return p.encode(p.Subscribe(ch, ref, pattern.encode()))


def unsubscribe(pattern: str, ch: bytes = A, ref: bytes = b"u") -> list[bytes]:
    return p.encode(p.Unsubscribe(ch, ref, pattern.encode()))


def publish(topic: str, body: bytes = b"body", ch: bytes = A, ref: bytes = b"") -> list[bytes]:
    return p.encode(p.Publish(ch, ref, topic.encode(), body))


def ack(token: bytes, body: bytes | None = None, ch: bytes = A) -> list[bytes]:
    return p.encode(p.Ack(ch, token, p.pack_ack(1, 0) if body is None else body))


def disconnect(ch: bytes = A, ref: bytes = b"d") -> list[bytes]:
    return p.encode(p.Disconnect(ch, ref))


def take(state: BrokerState) -> list[tuple[bytes, p.BrokerCommand]]:
    """Parse and clear everything the broker queued; every frame list must be valid."""
    out = [(ident, p.parse_broker(frames)) for ident, frames in state.outbox]
    state.outbox.clear()
    return out


def join(state: BrokerState, ident: bytes, ch: bytes = A, *patterns: str) -> None:
    state.handle(ident, hello(ch))
    for pattern in patterns:
        state.handle(ident, subscribe(pattern, ch))
    out = take(state)
    assert [type(c) for _, c in out] == [p.Welcome] + [p.Ok] * len(patterns)


def delivered_to(out: list[tuple[bytes, p.BrokerCommand]]) -> list[bytes]:
    return sorted(ident for ident, cmd in out if isinstance(cmd, p.Deliver))


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
    join(s, b"p1", A, "a.*")
    s.handle(b"p1", hello(A))
    [(_, cmd)] = take(s)
    assert isinstance(cmd, p.Welcome)
    assert s.counters["connects"] == 1
    assert s.subscription_count() == 1  # the subscription survived the second HELLO


def test_max_message_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BrokerState(max_message_size=0)
    s = BrokerState(max_message_size=100)
    s.handle(b"p", hello())
    [(_, cmd)] = take(s)
    assert p.unpack_welcome(cmd.body)["max_message_size"] == 100  # type: ignore[union-attr]


def test_subscribe_is_answered_ok_with_ref() -> None:
    s = BrokerState()
    join(s, b"p1")
    s.handle(b"p1", subscribe("a.>", ref=b"ref-1"))
    assert take(s) == [(b"p1", p.Ok(A, b"ref-1"))]
    assert s.subscription_count() == 1
    # Subscribing twice to the same pattern is answered but counted once.
    s.handle(b"p1", subscribe("a.>", ref=b"ref-2"))
    assert take(s) == [(b"p1", p.Ok(A, b"ref-2"))]
    assert s.subscription_count() == 1
    assert s.counters["subscribes"] == 1


def test_unsubscribe_is_idempotent() -> None:
    s = BrokerState()
    join(s, b"p1", A, "a.*")
    for ref in (b"u1", b"u2"):
        s.handle(b"p1", unsubscribe("a.*", ref=ref))
        assert take(s) == [(b"p1", p.Ok(A, ref))]
    s.handle(b"p1", unsubscribe("never.subscribed", ref=b"u3"))
    assert take(s) == [(b"p1", p.Ok(A, b"u3"))]
    assert s.subscription_count() == 0
    assert s.counters["unsubscribes"] == 1
    join(s, b"pub")
    s.handle(b"pub", publish("a.b"))
    assert take(s) == []


# --- fan-out --------------------------------------------------------------------


def test_fan_out_to_every_matching_peer_exactly_once() -> None:
    s = BrokerState()
    join(s, b"many", A, "a.*", "a.>", "a.b", "*.b", ">")  # five matching patterns
    join(s, b"one", A, "a.b")
    join(s, b"tail", A, ">")
    join(s, b"miss", A, "a.c", "b.>", "a.*.c", "a")
    join(s, b"none", A)
    join(s, b"other", B, ">", "a.b")  # same patterns, another channel
    join(s, b"pub", A)
    s.handle(b"pub", publish("a.b", b"payload"))
    out = take(s)
    assert delivered_to(out) == [b"many", b"one", b"tail"]
    for _, cmd in out:
        assert cmd == p.Deliver(A, b"", b"a.b", b"payload")
    assert s.counters["published"] == 1
    assert s.counters["delivered"] == 3


def test_publisher_in_other_channel_reaches_only_its_channel() -> None:
    s = BrokerState()
    join(s, b"a-sub", A, ">")
    join(s, b"b-sub", B, ">")
    join(s, b"b-pub", B)
    s.handle(b"b-pub", publish("x.y", ch=B))
    out = take(s)
    assert out == [(b"b-sub", p.Deliver(B, b"", b"x.y", b"body"))]


def test_publisher_with_matching_pattern_gets_its_own_message() -> None:
    s = BrokerState()
    join(s, b"self", A, "t")
    s.handle(b"self", publish("t"))
    assert delivered_to(take(s)) == [b"self"]


def test_unconfirmed_publish_reuses_received_frames() -> None:
    s = BrokerState()
    for i in range(4):
        join(s, b"sub%d" % i, A, ">")
    join(s, b"pub")
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
    join(s, b"pub")
    s.handle(b"pub", publish("a.b"))
    assert take(s) == []
    assert s.counters["published"] == 1
    assert s.counters["delivered"] == 0


# --- confirmed publish -------------------------------------------------------------


def test_confirmed_publish_deliver_tokens_routed_and_acked() -> None:
    s = BrokerState()
    join(s, b"s1", A, "a.*", "a.>")
    join(s, b"s2", A, ">")
    join(s, b"s3", A, "zzz")
    join(s, b"pub")
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
    join(s, b"sub", A, "t")
    join(s, b"pub")
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
    join(s, b"pub")
    s.handle(b"pub", publish("a", ref=b"r"))
    assert take(s) == [(b"pub", p.Routed(A, b"r", 0))]
    assert s.pending_confirmations == 0


def test_each_confirmed_publish_gets_a_fresh_token() -> None:
    s = BrokerState()
    join(s, b"sub", A, ">")
    join(s, b"pub")
    seen = set()
    for i in range(5):
        s.handle(b"pub", publish("t", ref=b"r%d" % i))
        seen |= {c.token for _, c in take(s) if isinstance(c, p.Deliver)}
    assert len(seen) == 5


def test_duplicate_and_stale_acks_are_ignored_and_counted() -> None:
    s = BrokerState()
    join(s, b"sub", A, "t")
    join(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.handle(b"sub", ack(token))
    assert len(take(s)) == 1
    s.handle(b"sub", ack(token))  # duplicate
    s.handle(b"sub", ack(b"\x00" * 8))  # never issued
    assert take(s) == []
    assert s.counters["stale_acks"] == 2
    assert s.counters["errors"] == 0


def test_ack_from_a_peer_that_was_not_a_target_is_ignored() -> None:
    s = BrokerState()
    join(s, b"sub", A, "t")
    join(s, b"bystander", A, "other")
    join(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.handle(b"bystander", ack(token))
    s.handle(b"pub", ack(token))  # not even the publisher may confirm
    assert take(s) == []
    assert s.counters["stale_acks"] == 2
    assert s.pending_confirmations == 1
    s.handle(b"sub", ack(token))
    assert [i for i, _ in take(s)] == [b"pub"]
    assert s.pending_confirmations == 0


# --- peers leaving --------------------------------------------------------------------


def test_drop_peer_resolves_outstanding_tokens_with_error_ack() -> None:
    s = BrokerState()
    join(s, b"sub", A, "t", "u.>")
    join(s, b"good", A, "t")
    join(s, b"pub")
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
    join(s, b"sub", A, "t")
    join(s, b"pub")
    s.handle(b"pub", publish("t"))  # fills the topic cache with (sub,)
    assert delivered_to(take(s)) == [b"sub"]
    s.drop_peer(b"sub")
    s.handle(b"pub", publish("t", ref=b"r"))  # a stale cache would raise KeyError here
    assert take(s) == [(b"pub", p.Routed(A, b"r", 0))]


def test_disconnect_command_drops_peer_and_answers_ok() -> None:
    s = BrokerState()
    join(s, b"sub", A, ">")
    join(s, b"pub")
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
    join(s, b"sub", A, "t")
    join(s, b"pub")
    s.handle(b"pub", publish("t", ref=b"r"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.drop_peer(b"pub")
    s.handle(b"sub", ack(token))  # nobody to forward to; must not raise
    assert take(s) == []
    assert s.pending_confirmations == 0


def test_subscriber_that_is_also_the_publisher_leaving() -> None:
    s = BrokerState()
    join(s, b"both", A, "t")
    join(s, b"other", A, "t")
    s.handle(b"both", publish("t", ref=b"r"))
    take(s)
    s.drop_peer(b"both")
    assert take(s) == []  # no ACKED to a peer that is gone


def test_acked_not_leaked_to_a_new_session_reusing_the_identity() -> None:
    # A publisher leaves with a confirmation outstanding; a new connection with
    # the same identity joins another channel. The old ACK must not reach it as
    # an ACKED on the new channel with the old session's ref.
    s = BrokerState()
    join(s, b"sub", A, "t")
    join(s, b"pub", A)
    s.handle(b"pub", publish("t", ref=b"r1"))
    token = next(c.token for _, c in take(s) if isinstance(c, p.Deliver))
    s.handle(b"pub", disconnect())
    take(s)
    join(s, b"pub", B)
    s.handle(b"sub", ack(token))
    assert take(s) == []


def test_channel_removed_when_last_peer_leaves() -> None:
    s = BrokerState()
    join(s, b"p1", A, "a")
    join(s, b"p2", A)
    join(s, b"p3", B)
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
    join(s, b"p4", A)
    join(s, b"p5", A, ">")
    s.handle(b"p4", publish("a"))
    assert delivered_to(take(s)) == [b"p5"]


# --- topic cache ------------------------------------------------------------------


def test_subscribe_after_publish_gets_the_next_message() -> None:
    s = BrokerState()
    join(s, b"pub")
    join(s, b"sub")
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
    join(s, b"a-sub", A, "t")
    join(s, b"b-pub", B)
    s.handle(b"b-pub", publish("t", ch=B))
    assert take(s) == []
    join(s, b"a-pub", A)
    s.handle(b"a-pub", publish("t"))
    assert delivered_to(take(s)) == [b"a-sub"]


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
    ],
)
def test_channel_mismatch_on_frame_channel(frames: list[bytes]) -> None:
    s = BrokerState()
    join(s, b"p", A, ">")
    join(s, b"q", B, ">")
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.CHANNEL_MISMATCH
    assert s.errors[ErrorCode.CHANNEL_MISMATCH] == 1
    assert b"p" in s.peers  # still joined
    assert s.subscription_count() == 2


def test_second_hello_with_another_channel_is_refused() -> None:
    s = BrokerState()
    join(s, b"p", A, "t")
    s.handle(b"p", hello(B))
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.CHANNEL_MISMATCH
    assert s.peers[b"p"].channel.id == A
    assert set(s.channels) == {A}
    join(s, b"pub", A)
    s.handle(b"pub", publish("t"))
    assert delivered_to(take(s)) == [b"p"]


def test_too_large() -> None:
    s = BrokerState(max_message_size=100)
    join(s, b"sub", A, "t")
    join(s, b"pub")
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
        ([p.H_SUBSCRIBE, A, b"s", b"a..b"], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", b">.a"], b"s"),
        ([p.H_SUBSCRIBE, A, b"s", b"a*"], b"s"),
        ([p.H_UNSUBSCRIBE, A, b"u", b""], b"u"),
    ],
)
def test_bad_topic(frames: list[bytes], ref: bytes) -> None:
    s = BrokerState()
    join(s, b"p", A, ">")
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == ErrorCode.BAD_TOPIC
    assert err.ref == ref
    assert s.errors == Counter({ErrorCode.BAD_TOPIC: 1})
    assert s.subscription_count() == 1
    assert s.counters["published"] == 0


def test_bad_topic_refused_again_on_repeat() -> None:
    s = BrokerState()
    join(s, b"p", A, ">")
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
        ([p.H_ACK, b"short", b"t", b""], ErrorCode.BAD_FRAMES),
        ([p.H_SUBSCRIBE, A, b"s"], ErrorCode.BAD_FRAMES),
        ([p.H_HELLO, A, b"\xc1"], ErrorCode.BAD_BODY),
        ([p.H_HELLO, b"short", p.pack_hello("x")], ErrorCode.BAD_FRAMES),
        ([p.H_DELIVER, A, b"", b"t", b""], ErrorCode.UNKNOWN_COMMAND),
        ([p.H_WELCOME, A, p.pack_welcome("b", 1)], ErrorCode.UNKNOWN_COMMAND),
        ([b"ZB\x01\x00", A], ErrorCode.UNKNOWN_COMMAND),
    ],
)
@pytest.mark.parametrize("joined", [False, True])
def test_malformed_messages_are_refused_not_raised(
    frames: list[bytes], code: int | tuple[int, int], joined: bool
) -> None:
    if isinstance(code, tuple):
        code = code[joined]
    s = BrokerState()
    if joined:
        join(s, b"p", A, ">")
    s.handle(b"p", frames)
    err = only_error(take(s), b"p")
    assert err.code == code
    assert s.errors[code] == 1
    assert s.counters["errors"] == 1


_frame = st.one_of(
    st.binary(max_size=20),
    st.sampled_from([A, B, b"t", b"a.b", b"a.*", b">", b"", b"\xff", p.pack_hello("x")]),
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


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"p", b"q", b"x"]), _frames), max_size=8))
def test_random_frames_never_raise_and_replies_are_valid(
    msgs: list[tuple[bytes, list[bytes]]],
) -> None:
    s = BrokerState(max_message_size=64)
    join(s, b"p", A, ">")
    join(s, b"q", B, "a.*")
    for ident, frames in msgs:
        s.handle(ident, frames)
        for to, out in s.outbox:
            p.parse_broker(out)  # whatever the broker sends is valid protocol
            assert to in s.peers or to == ident
        s.outbox.clear()
    assert s.counters["messages_in"] == len(msgs) + 4


# --- model-based: random interleavings ------------------------------------------------

CHANNELS = [A, B]
PATTERNS = ["a", "b", "a.b", "a.*", "*", ">", "a.>", "*.b", "*.*", "b.>", "a.b.>", "*.a.b"]
TOPICS = ["a", "b", "a.b", "b.b", "a.a", "a.b.c", "b.a.b", "c"]
GHOST_COMMANDS = [subscribe("a"), publish("a"), ack(b"t"), disconnect(), unsubscribe("a")]


class RoutingModel:
    """A plain model of the broker's routing rules. Each method sends one command
    to a real BrokerState and checks every reply against the model."""

    def __init__(self) -> None:
        self.s = BrokerState()
        self.n = 0
        self.joined: dict[bytes, bytes] = {}  # ident -> channel
        self.patterns: dict[bytes, set[str]] = {}
        self.outstanding: dict[bytes, set[bytes]] = {}
        self.pending: dict[bytes, list[Any]] = {}  # token -> [publisher, ref, remaining]
        self.left: list[bytes] = []  # identities never reused, as a new session would be
        self.stale = 0
        self.refs = 0
        self.deliveries = 0
        self.synthetic_acks = 0

    def _ref(self) -> bytes:
        self.refs += 1
        return b"r%d" % self.refs

    def join(self, ch: bytes) -> bytes:
        self.n += 1
        ident = b"peer%d" % self.n
        self.s.handle(ident, hello(ch))
        [(to, cmd)] = take(self.s)
        assert to == ident and isinstance(cmd, p.Welcome)
        self.joined[ident] = ch
        self.patterns[ident] = set()
        self.outstanding[ident] = set()
        return ident

    def hello_again(self, ident: bytes, ch: bytes) -> None:
        self.s.handle(ident, hello(ch))
        [(to, cmd)] = take(self.s)
        assert to == ident
        if ch == self.joined[ident]:
            assert isinstance(cmd, p.Welcome)
        else:
            assert isinstance(cmd, p.Error) and cmd.code == ErrorCode.CHANNEL_MISMATCH

    def subscribe(self, ident: bytes, pattern: str) -> None:
        ch, ref = self.joined[ident], self._ref()
        self.s.handle(ident, subscribe(pattern, ch, ref))
        assert take(self.s) == [(ident, p.Ok(ch, ref))]
        self.patterns[ident].add(pattern)

    def unsubscribe(self, ident: bytes, pattern: str) -> None:
        ch, ref = self.joined[ident], self._ref()
        self.s.handle(ident, unsubscribe(pattern, ch, ref))
        assert take(self.s) == [(ident, p.Ok(ch, ref))]
        self.patterns[ident].discard(pattern)

    def publish(self, ident: bytes, topic: str, body: bytes, confirmed: bool) -> None:
        ch = self.joined[ident]
        ref = self._ref() if confirmed else b""
        self.s.handle(ident, publish(topic, body, ch, ref))
        out = take(self.s)
        expected = sorted(
            q
            for q, qch in self.joined.items()
            if qch == ch and any(matches(pat, topic) for pat in self.patterns[q])
        )
        self.deliveries += len(expected)
        delivers = [(to, c) for to, c in out if isinstance(c, p.Deliver)]
        assert sorted(to for to, _ in delivers) == expected  # each exactly once
        others = [(to, c) for to, c in out if not isinstance(c, p.Deliver)]
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
        else:
            self.stale += 1
            assert out == []

    def leave(self, ident: bytes, command: bool) -> None:
        ch = self.joined.pop(ident)
        self.patterns.pop(ident)
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
        for ch_id, channel in s.channels.items():
            assert channel.peers == {q for q, c in self.joined.items() if c == ch_id}
        for ident, peer in s.peers.items():
            assert peer.patterns == self.patterns[ident]
            assert peer.outstanding == self.outstanding[ident]
        assert s.subscription_count() == sum(len(v) for v in self.patterns.values())
        assert s.pending_confirmations == len(self.pending)
        assert s.counters["stale_acks"] == self.stale
        assert s.counters["delivered"] == self.deliveries
        assert s.counters["errors"] == sum(s.errors.values())
        assert s.outbox == []


def _step(m: RoutingModel, rng: random.Random) -> None:
    """One random command, weighted towards the interesting ones."""
    if len(m.joined) < 2:
        m.join(rng.choice(CHANNELS))
        return
    action = rng.choices(
        ["join", "hello", "sub", "unsub", "pub", "ack", "leave", "ghost"],
        weights=[2, 1, 6, 2, 8, 5, 2, 1],
    )[0]
    ident = rng.choice(sorted(m.joined))
    if action == "join" and len(m.joined) < 6:
        m.join(rng.choice(CHANNELS))
    elif action == "hello":
        m.hello_again(ident, rng.choice(CHANNELS))
    elif action == "sub":
        m.subscribe(ident, rng.choice(PATTERNS))
    elif action == "unsub":
        held = sorted(m.patterns[ident])
        m.unsubscribe(ident, rng.choice(held) if held and rng.random() < 0.8 else "a")
    elif action == "pub":
        m.publish(ident, rng.choice(TOPICS), rng.randbytes(rng.randrange(4)), rng.random() < 0.7)
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
    assert m.left


def test_random_interleavings_reach_synthetic_acks() -> None:
    total = 0
    for seed in range(6):
        rng = random.Random(seed)
        m = RoutingModel()
        for _ in range(300):
            _step(m, rng)
        total += m.synthetic_acks
    assert total > 0


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
    @rule(i=_peer_index, pattern=st.sampled_from(PATTERNS))
    def subscribe(self, i: int, pattern: str) -> None:
        self.m.subscribe(self._pick(i), pattern)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, data=st.data())
    def unsubscribe(self, i: int, data: st.DataObject) -> None:
        ident = self._pick(i)
        held = sorted(self.m.patterns[ident])
        self.m.unsubscribe(ident, data.draw(st.sampled_from(held or PATTERNS)))

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, topic=st.sampled_from(TOPICS), body=st.binary(max_size=4))
    def publish_confirmed(self, i: int, topic: str, body: bytes) -> None:
        self.m.publish(self._pick(i), topic, body, True)

    @precondition(lambda self: self.m.joined)
    @rule(i=_peer_index, topic=st.sampled_from(TOPICS))
    def publish_unconfirmed(self, i: int, topic: str) -> None:
        self.m.publish(self._pick(i), topic, b"b", False)

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


BrokerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
test_broker_machine = BrokerMachine.TestCase
