"""Durable streams at the broker, in memory (issue #15): capture before routing,
STORED then ROUTED, dedup, management ops, consumers with acks, redelivery,
backoff, dead letters, retention, and what survives a broker restart on the
same store. The store itself is tested in tests/test_store.py."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from frames import A, B, batch, hello, publish, subscribe, take

from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus._streams import SAVE_EVERY
from zmqbus.protocol import AckKind, ErrorCode
from zmqbus.store import open_store
from zmqbus.users import User

pytestmark = pytest.mark.timeout(60)


class Clock:
    """Wall time the streams see (stored times, max_age), set by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def body(n: int = 0, msg_id: bytes | None = None, payload: bytes = b"x") -> bytes:
    return p.pack_message(msg_id or uuid.uuid4().bytes, 1_700_000_000_000_000_000 + n, {}, payload)


def state_with(tmp: Path | None = None, **kw: Any) -> BrokerState:
    store = open_store(tmp) if tmp is not None else None
    return BrokerState(store=store, clock=kw.pop("clock", Clock()), **kw)


def request(
    state: BrokerState, ident: bytes, op: str, ref: bytes = b"r", ch: bytes = A, **args: Any
) -> p.StreamReply | p.Error:
    state.handle(ident, [p.H_STREAM, ch, ref, p.pack_stream_request(op, **args)])
    replies = [c for who, c in take(state) if who == ident]
    assert len(replies) == 1, replies
    reply = replies[0]
    assert isinstance(reply, p.StreamReply | p.Error)
    return reply


def result(reply: p.StreamReply | p.Error) -> dict[str, Any]:
    assert isinstance(reply, p.StreamReply), reply
    return p.unpack_stream_reply(reply.body)


def add(state: BrokerState, ident: bytes, name: str, *subjects: str, **config: Any) -> dict:  # type: ignore[type-arg]
    config = {"name": name, "subjects": list(subjects), "storage": "memory", **config}
    return result(request(state, ident, "add", config=config))["stream"]  # type: ignore[no-any-return]


def consume(
    state: BrokerState, ident: bytes, sid: bytes, stream: str, ref: bytes = b"c", **config: Any
) -> list[tuple[bytes, p.BrokerCommand]]:
    state.handle(ident, [p.H_CONSUME, A, ref, sid, p.pack_consume(stream, **config)])
    return take(state)


def msgs(out: list[tuple[bytes, p.BrokerCommand]], ident: bytes) -> list[p.StreamMsg]:
    return [c for who, c in out if who == ident and isinstance(c, p.StreamMsg)]


def ack(
    state: BrokerState, ident: bytes, msg: p.StreamMsg, kind: int = AckKind.ACK, **kw: Any
) -> None:
    state.handle(
        ident,
        p.encode(p.StreamAck(A, msg.token, kind, kw.get("delay"), kw.get("text", ""))),
        now=kw.get("now"),
    )


S1, S2, S3 = b"\0\0\0\1", b"\0\0\0\2", b"\0\0\0\3"


# --- capture -----------------------------------------------------------------------


def test_a_captured_publish_is_stored_then_routed_and_a_duplicate_goes_nowhere() -> None:
    state = state_with()
    state.handle(b"pub", hello(streams=True))
    state.handle(b"sub", hello())
    state.handle(b"sub", subscribe("orders.>"))
    take(state)
    info = add(state, b"pub", "ORDERS", "orders.>")
    assert info["name"] == "ORDERS" and info["last_seq"] == 0
    mid = uuid.uuid4().bytes
    state.handle(b"pub", publish("orders.x", body(msg_id=mid), ref=b"1"))
    out = take(state)
    stored = [c for who, c in out if who == b"pub"]
    assert stored[0] == p.Stored(A, b"1", "ORDERS", 1, False)
    assert isinstance(stored[1], p.Routed) and stored[1].count == 1
    assert [type(c) for who, c in out if who == b"sub"] == [p.Deliver]
    state.handle(b"pub", publish("orders.x", body(msg_id=mid), ref=b"2"))  # a retry
    out = take(state)
    assert [c for _, c in out] == [p.Stored(A, b"2", "ORDERS", 1, True), p.Routed(A, b"2", 0)]
    state.handle(b"pub", publish("audit.x", body(), ref=b"3"))  # not captured
    assert [type(c) for _, c in take(state)] == [p.Routed]
    assert result(request(state, b"pub", "info", name="ORDERS"))["stream"]["messages"] == 1


def test_stored_goes_only_to_a_client_that_asked_and_unconfirmed_publishes_are_stored_too() -> None:
    state = state_with()
    state.handle(b"old", hello())
    take(state)
    add(state, b"old", "S", "t.>")
    state.handle(b"old", publish("t.1", body(), ref=b"1"))
    assert [type(c) for _, c in take(state)] == [p.Routed]
    state.handle(b"old", publish("t.2", body()))
    assert take(state) == []
    assert result(request(state, b"old", "info", name="S"))["stream"]["last_seq"] == 2


def test_a_captured_body_without_an_id_is_refused_and_nothing_is_stored() -> None:
    state = state_with()
    state.handle(b"a", hello())
    take(state)
    add(state, b"a", "S", "t")
    state.handle(b"a", publish("t", b"\xc0", ref=b"1"))
    ((_, err),) = take(state)
    assert isinstance(err, p.Error) and err.code == ErrorCode.BAD_BODY and err.ref == b"1"
    assert result(request(state, b"a", "info", name="S"))["stream"]["messages"] == 0


def test_discard_new_refuses_with_429_and_discard_old_drops_the_oldest() -> None:
    state = state_with()
    state.handle(b"a", hello())
    take(state)
    add(state, b"a", "NEW", "n", max_msgs=2, discard="new")
    add(state, b"a", "OLD", "o", max_msgs=2)
    for topic in ("n", "o"):
        for ref in (b"1", b"2", b"3"):
            state.handle(b"a", publish(topic, body(), ref=ref))
    out = [c for _, c in take(state)]
    errors = [c for c in out if isinstance(c, p.Error)]
    assert [(e.code, e.ref) for e in errors] == [(ErrorCode.LIMIT_REACHED, b"3")]
    old = result(request(state, b"a", "info", name="OLD"))["stream"]
    assert (old["messages"], old["first_seq"], old["last_seq"]) == (2, 2, 3)


# --- management ----------------------------------------------------------------------


def test_stream_ops_and_their_errors() -> None:
    state = state_with()
    state.handle(b"a", hello())
    take(state)
    add(state, b"a", "ORDERS", "orders.>")
    assert add(state, b"a", "ORDERS", "orders.>")["name"] == "ORDERS"  # idempotent
    again = request(
        state, b"a", "add", config={"name": "ORDERS", "subjects": ["x"], "storage": "memory"}
    )
    assert isinstance(again, p.Error) and again.code == ErrorCode.CONFLICT
    overlap = request(
        state, b"a", "add", config={"name": "O2", "subjects": ["orders.eu"], "storage": "memory"}
    )
    assert (
        isinstance(overlap, p.Error)
        and overlap.code == ErrorCode.CONFLICT
        and "overlap" in overlap.text
    )
    for op, args, code in [
        ("info", {"name": "NOPE"}, ErrorCode.NOT_FOUND),
        ("get", {"name": "ORDERS", "seq": 9}, ErrorCode.NOT_FOUND),
        ("get", {"name": "ORDERS"}, ErrorCode.BAD_BODY),
        ("frobnicate", {}, ErrorCode.BAD_BODY),
        ("add", {"config": {"name": "bad name", "subjects": ["x"]}}, ErrorCode.BAD_BODY),
        (
            "add",
            {"config": {"name": "F", "subjects": ["f"]}},
            ErrorCode.STORE_FAILED,
        ),  # file, no dir
        ("consumer_info", {"name": "ORDERS", "consumer": "x"}, ErrorCode.NOT_FOUND),
    ]:
        reply = request(state, b"a", op, **args)
        assert isinstance(reply, p.Error) and reply.code == code, (op, args, reply)
    state.handle(b"a", publish("orders.1", body(payload=b"first")))
    take(state)
    got = result(request(state, b"a", "get", name="ORDERS", seq=1))["message"]
    assert got["topic"] == b"orders.1" and p.unpack_message(got["body"])[3] == b"first"
    assert [s["name"] for s in result(request(state, b"a", "list"))["streams"]] == ["ORDERS"]
    # Another channel sees none of it.
    state.handle(b"b", hello(B))
    take(state)
    assert result(request(state, b"b", "list", ch=B))["streams"] == []
    assert result(request(state, b"a", "purge", name="ORDERS"))["purged"] == 1
    assert result(request(state, b"a", "delete", name="ORDERS"))["deleted"] is True
    assert isinstance(request(state, b"a", "info", name="ORDERS"), p.Error)


def test_stream_management_needs_the_streams_permission() -> None:
    user = User("anonymous", subscribe=["t"])
    state = BrokerState(users={user.name: user}, anonymous=user)
    state.handle(b"a", hello())
    take(state)
    reply = request(state, b"a", "list")
    assert isinstance(reply, p.Error) and reply.code == ErrorCode.PERMISSION_DENIED


# --- consumers -------------------------------------------------------------------------


def _orders(state: BrokerState, n: int, **config: Any) -> None:
    state.handle(b"pub", hello())
    take(state)
    add(state, b"pub", "ORDERS", "orders.>", **config)
    for i in range(n):
        state.handle(b"pub", publish(f"orders.{i}", body(i)))
    take(state)


def test_a_durable_consumer_gets_the_backlog_in_order_and_acks_move_its_floor() -> None:
    state = state_with()
    _orders(state, 5)
    state.handle(b"w", hello())
    take(state)
    out = consume(state, b"w", S1, "ORDERS", durable="billing", max_ack_pending=3)
    info = p.unpack_stream_reply(out[0][1].body)  # type: ignore[union-attr]
    assert info["name"] == "billing" and info["stream"] == "ORDERS"
    got = msgs(out, b"w")
    assert [p.unpack_meta(m.meta) for m in got] == [(1, 1), (2, 1), (3, 1)]  # max_ack_pending
    assert got[0].topic == b"orders.0" and got[0].sid == S1
    ack(state, b"w", got[1])
    ack(state, b"w", got[0])
    more = msgs(take(state), b"w")
    assert [p.unpack_meta(m.meta)[0] for m in more] == [4, 5]
    info = result(request(state, b"w", "consumer_info", name="ORDERS", consumer="billing"))
    assert info["consumer"]["ack_floor"] == 2 and info["consumer"]["pending"] == 3
    ack(state, b"w", got[0])  # twice: ignored
    assert state.streams.counters["late_stream_acks"] == 1


def test_deliver_policies_and_filters() -> None:
    state = state_with()
    _orders(state, 4)
    state.handle(b"w", hello())
    take(state)
    cases = [
        ({"deliver": "new"}, []),
        ({"deliver": "last"}, [4]),
        ({"start_seq": 3}, [3, 4]),
        ({"filter": "orders.2"}, [3]),
        ({"deliver": "last", "filter": "orders.1"}, [2]),
    ]
    for n, (config, want) in enumerate(cases):
        sid = (10 + n).to_bytes(4, "big")
        got = msgs(consume(state, b"w", sid, "ORDERS", **config), b"w")
        assert [p.unpack_meta(m.meta)[0] for m in got] == want, config
    state.handle(b"pub", publish("orders.9", body()))
    out = take(state)
    assert [m.sid for m in msgs(out, b"w")] == [
        (10).to_bytes(4, "big"),
        (11).to_bytes(4, "big"),
        (12).to_bytes(4, "big"),
    ]


def test_ack_wait_redelivers_with_backoff_then_dead_letters_with_headers() -> None:
    state = state_with()
    _orders(state, 1)
    state.handle(b"dlq", hello())
    state.handle(b"dlq", subscribe("dlq.orders"))
    state.handle(b"w", hello(), now=0.0)
    take(state)
    (m,) = msgs(
        consume(state, b"w", S1, "ORDERS", durable="d", ack_wait=1000, backoff=[500, 2000],
                max_deliver=3, dead_letter="dlq.orders"),
        b"w",
    )  # fmt: skip
    assert p.unpack_meta(m.meta) == (1, 1)
    assert state.due() == pytest.approx(1.0)
    state.tick(1.0)  # ack wait over: due again after backoff[0]
    assert msgs(take(state), b"w") == []
    state.tick(1.5)
    (m,) = msgs(take(state), b"w")
    assert p.unpack_meta(m.meta) == (1, 2)
    ack(state, b"w", m, AckKind.NAK, text="ValueError: bad card", now=1.6)  # backoff[1]: 2 s
    state.tick(3.5)
    assert msgs(take(state), b"w") == []
    state.tick(3.6)
    (m,) = msgs(take(state), b"w")
    assert p.unpack_meta(m.meta) == (1, 3)
    ack(state, b"w", m, AckKind.NAK, delay=0, now=3.7)  # the third delivery failed: dead
    out = take(state)
    assert msgs(out, b"w") == []
    (dead,) = [c for who, c in out if who == b"dlq"]
    assert isinstance(dead, p.Deliver) and dead.topic == b"dlq.orders"
    headers = p.unpack_message(dead.body)[2]
    assert headers["zmqbus-stream"] == "ORDERS" and headers["zmqbus-seq"] == "1"
    assert headers["zmqbus-deliveries"] == "3" and headers["zmqbus-topic"] == "orders.0"
    assert headers["zmqbus-error"] == "ValueError: bad card"
    assert state.streams.counters["dead_letters"] == 1


def test_progress_extends_the_wait_and_term_stops_redelivery() -> None:
    state = state_with()
    _orders(state, 2)
    state.handle(b"w", hello(), now=0.0)
    take(state)
    a, b = msgs(consume(state, b"w", S1, "ORDERS", ack_wait=1000), b"w")
    ack(state, b"w", a, AckKind.PROGRESS, now=0.9)
    ack(state, b"w", b, AckKind.TERM, now=0.9)
    state.tick(1.5)
    assert msgs(take(state), b"w") == []
    state.tick(1.9)
    (again,) = msgs(take(state), b"w")
    assert p.unpack_meta(again.meta) == (1, 2)


def test_two_members_share_a_durable_and_a_leaving_members_messages_go_to_the_other() -> None:
    state = state_with()
    _orders(state, 4)
    for who in (b"w1", b"w2"):
        state.handle(who, hello())
    take(state)
    first = msgs(consume(state, b"w1", S1, "ORDERS", durable="jobs", max_ack_pending=2), b"w1")
    assert [p.unpack_meta(m.meta)[0] for m in first] == [1, 2]
    out = consume(state, b"w2", S1, "ORDERS", durable="jobs", max_ack_pending=2)
    assert msgs(out, b"w2") == []  # the consumer's two are out, both with w1
    state.drop_peer(b"w1")  # w1 dies holding 1 and 2
    again = msgs(take(state), b"w2")
    assert [p.unpack_meta(m.meta) for m in again] == [(1, 2), (2, 2)]
    for m in again:
        ack(state, b"w2", m)
    assert [p.unpack_meta(m.meta)[0] for m in msgs(take(state), b"w2")] == [3, 4]


def test_a_forged_or_borrowed_token_is_refused() -> None:
    state = state_with()
    _orders(state, 1)
    for who in (b"w", b"thief"):
        state.handle(who, hello())
    take(state)
    (m,) = msgs(consume(state, b"w", S1, "ORDERS"), b"w")
    # A plain ACK (the broker's short path) and a NAK with text (the long one).
    for kind, text in ((AckKind.ACK, ""), (AckKind.NAK, "mine now")):
        ack(state, b"thief", m, kind, text=text)
        ((_, err),) = take(state)
        assert isinstance(err, p.Error) and err.code == ErrorCode.PERMISSION_DENIED
    assert state.streams.counters["forged_stream_acks"] == 2
    # The receiver's own delivery named with a tag it was not given: refused too
    # (its sequence is held by this session, but the token is not the one sent).
    bent = dataclasses.replace(m, token=m.token[:-1] + bytes((m.token[-1] ^ 1,)))
    ack(state, b"w", bent)
    ((_, err),) = take(state)
    assert isinstance(err, p.Error) and err.code == ErrorCode.PERMISSION_DENIED
    assert state.streams.counters["forged_stream_acks"] == 3
    ack(state, b"w", m)  # still the receiver's to settle
    assert take(state) == [] and state.streams.counters["stream_acks"] == 1


def test_work_queue_removes_on_ack_and_takes_one_consumer_per_filter() -> None:
    state = state_with()
    _orders(state, 2, retention="work_queue")
    state.handle(b"w", hello())
    take(state)
    got = msgs(consume(state, b"w", S1, "ORDERS", durable="a"), b"w")
    out = consume(state, b"w", S2, "ORDERS", durable="b")
    assert isinstance(out[0][1], p.Error) and out[0][1].code == ErrorCode.CONFLICT
    ack(state, b"w", got[0])
    take(state)
    info = result(request(state, b"w", "info", name="ORDERS"))["stream"]
    assert (info["messages"], info["first_seq"]) == (1, 2)


def test_interest_removes_once_every_consumer_settled() -> None:
    state = state_with()
    _orders(state, 1, retention="interest")
    state.handle(b"w", hello())
    take(state)
    (a,) = msgs(consume(state, b"w", S1, "ORDERS", durable="a"), b"w")
    (b,) = msgs(consume(state, b"w", S2, "ORDERS", durable="b"), b"w")
    ack(state, b"w", a)
    assert result(request(state, b"w", "info", name="ORDERS"))["stream"]["messages"] == 1
    ack(state, b"w", b)
    assert result(request(state, b"w", "info", name="ORDERS"))["stream"]["messages"] == 0


def test_sids_of_consumers_and_subscriptions_do_not_mix() -> None:
    state = state_with()
    _orders(state, 0)
    state.handle(b"w", hello())
    state.handle(b"w", subscribe("x", S1))
    take(state)
    out = consume(state, b"w", S1, "ORDERS")
    assert isinstance(out[0][1], p.Error) and out[0][1].code == ErrorCode.SID_IN_USE
    consume(state, b"w", S2, "ORDERS")
    state.handle(b"w", subscribe("y", S2))
    ((_, err),) = take(state)
    assert isinstance(err, p.Error) and err.code == ErrorCode.SID_IN_USE
    state.handle(b"w", [p.H_UNSUBSCRIBE, A, b"u", S2])  # unbinds the consumer
    take(state)
    assert state.streams.consumers == {}  # ephemeral: gone with its last sid


def _restart_after_two_acks(tmp_path: Path, settle: Any) -> list[tuple[int, int]]:
    # 5 stored, 5 delivered to a durable, 2 acked, ``settle(state)``, then the
    # store is closed as a crash would leave it; (seq, deliveries) the durable
    # is sent on the restarted broker.
    clock = Clock()
    state = state_with(tmp_path, clock=clock)
    state.handle(b"pub", hello(), now=1.0)
    take(state)
    add(state, b"pub", "JOBS", "jobs.>", storage="file")
    for i in range(5):
        state.handle(b"pub", publish(f"jobs.{i}", body(i)))
    state.handle(b"w", hello())
    take(state)
    got = msgs(consume(state, b"w", S1, "JOBS", durable="workers"), b"w")
    for m in got[:2]:
        ack(state, b"w", m)
    take(state)  # commits the stored messages, not yet the acks
    settle(state)
    state.streams.store.close()
    again = state_with(tmp_path, clock=clock)  # same data_dir: a restart
    again.handle(b"w2", hello())
    take(again)
    got = msgs(consume(again, b"w2", S1, "JOBS", durable="workers"), b"w2")
    assert result(request(again, b"w2", "info", name="JOBS"))["stream"]["last_seq"] == 5
    return [p.unpack_meta(m.meta) for m in got]


def test_acks_a_stream_reply_has_shown_survive_a_restart(tmp_path: Path) -> None:
    def info(state: BrokerState) -> None:
        reply = request(state, b"w", "consumer_info", name="JOBS", consumer="workers")
        assert result(reply)["consumer"]["ack_floor"] == 2

    # 3, 4 and 5 were delivered, never acked: all three again, nothing acked.
    assert _restart_after_two_acks(tmp_path, info) == [(3, 2), (4, 2), (5, 2)]


def test_acks_are_saved_within_save_every_and_unsaved_ones_are_delivered_again(
    tmp_path: Path,
) -> None:
    def nothing(state: BrokerState) -> None:
        assert state.streams.save_at == pytest.approx(1.0 + SAVE_EVERY)
        assert state.tick(1.0 + SAVE_EVERY / 2) == state.streams.save_at  # the loop wakes then

    # A crash before the save forgets the acks: at least once, so 1 and 2 again too.
    assert _restart_after_two_acks(tmp_path / "a", nothing) == [(n, 2) for n in range(1, 6)]

    def later(state: BrokerState) -> None:
        state.tick(1.0 + SAVE_EVERY)
        take(state)  # the save is due: made before anything of this pass leaves
        assert state.streams.save_at is None and not state.streams.changed

    assert _restart_after_two_acks(tmp_path / "b", later) == [(3, 2), (4, 2), (5, 2)]


def test_start_time_replays_from_the_first_message_stored_then() -> None:
    clock = Clock()
    state = state_with(clock=clock)
    state.handle(b"pub", hello())
    take(state)
    add(state, b"pub", "LOG", "log.>")
    for i in range(4):
        clock.now = 1_000.0 + i * 10  # stored at 1000, 1010, 1020, 1030
        state.handle(b"pub", publish(f"log.{i}", body(i)))
    take(state)
    state.handle(b"w", hello())
    take(state)
    got = msgs(consume(state, b"w", S1, "LOG", start_time=1015.0), b"w")
    assert [p.unpack_meta(m.meta)[0] for m in got] == [3, 4]


def test_max_age_expires_messages_once_a_second() -> None:
    clock = Clock()
    state = state_with(clock=clock)
    state.handle(b"pub", hello(), now=0.0)
    take(state)
    add(state, b"pub", "TMP", "tmp.>", max_age=10.0)
    state.handle(b"pub", publish("tmp.1", body()), now=0.0)
    take(state)
    assert state.due() is not None  # expiry keeps the broker ticking
    clock.now += 11
    state.tick(state.due())  # type: ignore[arg-type]
    take(state)
    assert result(request(state, b"pub", "info", name="TMP"))["stream"]["messages"] == 0


def test_a_consumer_with_a_narrow_filter_scans_a_long_stream_a_slice_per_pass() -> None:
    state = state_with()
    state.handle(b"pub", hello())
    take(state)
    add(state, b"pub", "BIG", "big.>")
    for i in range(700):
        state.handle(b"pub", publish("big.rare" if i == 650 else "big.common", body(i)))
    take(state)
    state.handle(b"w", hello(), now=0.0)
    take(state)
    out = consume(state, b"w", S1, "BIG", filter="big.rare")
    assert msgs(out, b"w") == []  # the first slice held none of it...
    assert state.due() == 0.0  # ...and the broker comes back at once for more
    found: list[p.StreamMsg] = []
    for _ in range(3):
        state.tick(0.0)
        found += msgs(take(state), b"w")
    assert [p.unpack_meta(m.meta)[0] for m in found] == [651]


def test_a_filtered_durables_ack_floor_passes_what_its_filter_skips() -> None:
    state = state_with()
    _orders(state, 6)  # orders.0 .. orders.5 at 1 .. 6
    state.handle(b"w", hello())
    take(state)
    (m,) = msgs(consume(state, b"w", S1, "ORDERS", durable="f", filter="orders.4"), b"w")
    assert p.unpack_meta(m.meta)[0] == 5
    ack(state, b"w", m)
    take(state)
    info = result(request(state, b"w", "consumer_info", name="ORDERS", consumer="f"))
    assert (info["consumer"]["ack_floor"], info["consumer"]["pending"]) == (5, 0)
    assert info["consumer"]["config"]["deliver"] == "all"  # a CONSUME body again


def test_max_deliver_holds_for_messages_a_leaving_member_held() -> None:
    state = state_with()
    _orders(state, 1)
    state.handle(b"dlq", hello())
    state.handle(b"dlq", subscribe("dlq.x"))
    take(state)
    config = {"durable": "d", "max_deliver": 2, "dead_letter": "dlq.x"}
    for n, who in enumerate((b"w1", b"w2", b"w3")):
        state.handle(who, hello())
        take(state)
        got = msgs(consume(state, who, S1, "ORDERS", **config), who)
        assert [p.unpack_meta(m.meta) for m in got] == ([(1, n + 1)] if n < 2 else [])
        state.drop_peer(who)  # dies holding it
    out = take(state)
    assert [type(c) for who, c in out if who == b"dlq"] == [p.Deliver]  # dead-lettered once
    assert state.streams.counters["dead_letters"] == 1


def test_bound_sids_count_toward_the_peers_subscription_bound() -> None:
    from zmqbus.limits import Limits

    state = state_with(limits=Limits(max_subscriptions_per_peer=3))
    _orders(state, 0)
    state.handle(b"w", hello())
    state.handle(b"w", subscribe("x", S1))
    take(state)
    consume(state, b"w", S2, "ORDERS")
    consume(state, b"w", S3, "ORDERS")
    out = consume(state, b"w", b"\0\0\0\4", "ORDERS")
    assert isinstance(out[0][1], p.Error) and out[0][1].code == ErrorCode.LIMIT_REACHED
    state.handle(b"w", [p.H_UNSUBSCRIBE, A, b"u", S3])
    take(state)
    out = consume(state, b"w", b"\0\0\0\4", "ORDERS")
    assert isinstance(out[0][1], p.StreamReply)
    assert state.streams.bound[b"w"] == 2
    state.drop_peer(b"w")
    assert state.streams.bound[b"w"] == 0


def _ack_frames(m: p.StreamMsg, kind: int = AckKind.ACK, token: bytes | None = None) -> list[bytes]:
    return p.encode(p.StreamAck(A, m.token if token is None else token, kind, None, ""))


def test_stream_acks_in_a_batch_settle_as_alone_and_a_bad_one_is_refused_alone() -> None:
    state = state_with()
    _orders(state, 3)
    for who in (b"w", b"thief"):
        state.handle(who, hello())
    take(state)
    got = msgs(consume(state, b"w", S1, "ORDERS", durable="jobs"), b"w")
    assert len(got) == 3
    short = _ack_frames(got[0], token=got[0].token[:-1])
    state.handle(b"thief", short)
    ((_, alone),) = take(state)
    assert isinstance(alone, p.Error)
    # A borrowed token and a malformed one in a batch: each refused as alone.
    state.handle(b"thief", batch(_ack_frames(got[0]), short))
    refused = [c for _, c in take(state)]
    assert [(e.code, e.ref) for e in refused if isinstance(e, p.Error)] == [
        (ErrorCode.PERMISSION_DENIED, b""),
        (alone.code, alone.ref),
    ]
    # Another channel's batch from the receiver settles nothing.
    state.handle(b"w", batch(p.encode(p.StreamAck(B, got[0].token, AckKind.ACK, None, "")), ch=B))
    (mismatch,) = [c for _, c in take(state)]
    assert isinstance(mismatch, p.Error) and mismatch.code == ErrorCode.CHANNEL_MISMATCH
    # The receiver's own: plain acks (the short path) around a NAK (the long one).
    state.handle(
        b"w", batch(_ack_frames(got[0]), _ack_frames(got[1], AckKind.NAK), _ack_frames(got[2]))
    )
    counters = state.streams.counters
    assert counters["stream_acks"] == 2 and counters["naks"] == 1
    assert counters["forged_stream_acks"] == 3  # the short token twice, the borrowed one
    again = msgs(take(state), b"w")
    assert [p.unpack_meta(m.meta) for m in again] == [(2, 2)]  # the NAK'd one, at once
