"""Per-user rate limits at the broker (issue #14): a token bucket of messages/s
and bytes/s with a burst, shared by all the user's peers. Over it, a confirmed
publish or a request gets ERROR 429 with a retry-after (``RateLimited``); an
unconfirmed publish is dropped, counted, and the publisher told in DROPPED."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import zmq
from frames import A, batch, hello, publish, publish_batch, request, subscribe, take

from zmqbus import Broker, Bus, LimitReached, RateLimited, User
from zmqbus import protocol as p
from zmqbus._rates import Bucket
from zmqbus._routing import THROTTLE_NOTICE, BrokerState

pytestmark = pytest.mark.timeout(60)


def _state(user: User) -> BrokerState:
    return BrokerState(users={user.name: user}, anonymous=user)


def _of(state: BrokerState, ident: bytes, kind: type) -> list:  # type: ignore[type-arg]
    return [cmd for who, cmd in take(state) if who == ident and isinstance(cmd, kind)]


# --- the bucket ------------------------------------------------------------------


def test_bucket_passes_its_burst_then_its_rate() -> None:
    bucket = Bucket(10.0, None, 2.0, now=0.0)  # 20 at once, then 10/s
    assert [bucket.take(0, 0.0) for _ in range(20)] == [0.0] * 20
    wait = bucket.take(0, 0.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take(0, 0.05) == pytest.approx(0.05)  # refused: nothing spent
    assert bucket.take(0, 0.1) == 0.0
    # A long idle refills to the burst, never past it.
    assert sum(bucket.take(0, 100.0) == 0.0 for _ in range(50)) == 20


def test_bucket_of_bytes_lets_a_message_larger_than_its_burst_pass_into_debt() -> None:
    bucket = Bucket(None, 1000.0, 1.0, now=0.0)
    assert bucket.take(600, 0.0) == 0.0
    assert bucket.take(600, 0.0) == pytest.approx(0.2)  # 400 left, 600 wanted
    assert bucket.take(5000, 0.6) == 0.0  # full again: a 5000-byte message passes...
    assert bucket.take(1, 0.6) == pytest.approx(4.001)  # ...and the debt is paid first
    assert bucket.take(1, 4.601) == 0.0


def test_bucket_of_both_waits_for_the_later_of_the_two() -> None:
    bucket = Bucket(100.0, 100.0, 1.0, now=0.0)
    assert bucket.take(100, 0.0) == 0.0  # one message, all the bytes
    assert bucket.take(50, 0.0) == pytest.approx(0.5)  # bytes are what is short
    assert bucket.take(0, 0.0) == 0.0  # an empty body needs messages only


def test_a_rate_below_one_message_still_holds_one() -> None:
    bucket = Bucket(0.5, None, 1.0, now=0.0)
    assert bucket.take(0, 0.0) == 0.0
    assert bucket.take(0, 0.0) == pytest.approx(2.0)


# --- the broker's state --------------------------------------------------------------


def test_a_confirmed_publish_over_the_rate_gets_429_with_the_time_to_wait() -> None:
    state = _state(User("anonymous", rate=2.0, burst=1.0))
    state.handle(b"a", hello(), now=10.0)
    take(state)
    for ref in (b"1", b"2"):
        state.handle(b"a", publish("t", ref=ref), now=10.0)
        assert [c.ref for c in _of(state, b"a", p.Routed)] == [ref]
    state.handle(b"a", publish("t", ref=b"3"), now=10.1)
    (err,) = _of(state, b"a", p.Error)
    assert err.code == p.ErrorCode.LIMIT_REACHED and err.ref == b"3"
    assert err.retry_after == 400  # 0.2 of a message refilled at 2/s: 0.4 s to go
    assert "'anonymous' is over its rate (2 messages/s, burst 1s)" in err.text
    state.handle(b"a", request("t", ref=b"q"), now=10.2)
    (err,) = _of(state, b"a", p.Error)
    assert err.ref == b"q" and err.retry_after == 300
    state.handle(b"a", publish("t", ref=b"4"), now=10.5)
    assert [c.ref for c in _of(state, b"a", p.Routed)] == [b"4"]
    assert state.rate_limited["anonymous"] == 2 and state.counters["rate_limited"] == 2
    assert state.counters["published"] == 3 and state.counters["throttled"] == 0


def test_unconfirmed_publishes_over_the_rate_are_dropped_and_the_publisher_told() -> None:
    state = _state(User("anonymous", rate=3.0, burst=1.0))
    state.handle(b"sub", hello(), now=0.0)
    state.handle(b"sub", subscribe(">"), now=0.0)
    state.handle(b"pub", hello(), now=0.0)
    take(state)
    for _ in range(10):
        state.handle(b"pub", publish("t"), now=0.0)
    out = take(state)
    assert sum(isinstance(c, p.Deliver) for who, c in out if who == b"sub") == 3
    # Told at once, in one notice for all of this pass...
    (notice,) = [c for who, c in out if who == b"pub"]
    assert isinstance(notice, p.Dropped) and notice.throttled == 7 and notice.counts == b""
    # ...then at most one notice per THROTTLE_NOTICE.
    for _ in range(5):
        state.handle(b"pub", publish("t"), now=0.05)
    assert not take(state)
    assert state.due() == pytest.approx(THROTTLE_NOTICE)
    assert state.tick(0.06) == pytest.approx(THROTTLE_NOTICE)
    assert not take(state)
    state.tick(THROTTLE_NOTICE)
    ((who, notice),) = take(state)
    assert who == b"pub" and isinstance(notice, p.Dropped) and notice.throttled == 5
    assert state.counters["throttled"] == 12 and state.rate_limited["anonymous"] == 12
    assert not any(isinstance(c, p.Error) for _, c in out)  # no ERROR per dropped message


def test_a_throttled_count_goes_with_the_next_message_to_the_publisher() -> None:
    state = _state(User("anonymous", rate=1.0, burst=1.0))
    state.handle(b"pub", hello(), now=0.0)
    state.handle(b"pub", subscribe("own"), now=0.0)
    take(state)
    for _ in range(3):
        state.handle(b"pub", publish("t"), now=0.0)
    (notice,) = _of(state, b"pub", p.Dropped)  # two dropped, told at once
    assert notice.throttled == 2
    state.handle(b"pub", publish("own"), now=0.01)  # over the rate too: one more owed
    state.handle(b"pub", subscribe("t", 2), now=0.01)  # its OK takes the notice along
    out = take(state)
    assert [type(c) for _, c in out] == [p.Dropped, p.Ok]
    assert out[0][1].throttled == 1  # type: ignore[union-attr]
    state.tick(1.0)
    assert not take(state)  # nothing left to tell


def test_the_rate_is_the_users_across_its_peers_and_batches() -> None:
    state = _state(User("anonymous", rate=4.0, burst=1.0))
    state.handle(b"a", hello(batch=True, batch_commands=True), now=0.0)
    state.handle(b"b", hello(), now=0.0)
    state.handle(b"s", hello(), now=0.0)
    state.handle(b"s", subscribe(">"), now=0.0)
    take(state)
    state.handle(b"b", publish("t"), now=0.0)  # one of the user's four
    state.handle(b"a", publish_batch(("t", b"1"), ("t", b"2"), ("t", b"3")), now=0.0)
    state.handle(b"a", batch(publish("t"), publish("t", ref=b"r")), now=0.0)
    out = take(state)
    assert sum(isinstance(c, p.Deliver) for who, c in out if who == b"s") == 4
    (err,) = [c for who, c in out if who == b"a" and isinstance(c, p.Error)]
    assert err.ref == b"r" and err.retry_after == 250
    assert state.counters["throttled"] == 1 and state.rate_limited["anonymous"] == 2


def test_a_byte_rate_counts_body_bytes() -> None:
    state = _state(User("anonymous", byte_rate=1000.0, burst=1.0))
    state.handle(b"a", hello(), now=0.0)
    take(state)
    state.handle(b"a", publish("t", b"x" * 900, ref=b"1"), now=0.0)
    state.handle(b"a", publish("t", b"x" * 200, ref=b"2"), now=0.0)
    state.handle(b"a", publish("t", b"", ref=b"3"), now=0.0)
    out = take(state)
    assert [type(c) for _, c in out] == [p.Routed, p.Error, p.Routed]
    assert out[1][1].retry_after == 100  # type: ignore[union-attr]


def test_users_without_a_rate_and_replies_are_never_limited() -> None:
    limited = User("anonymous", rate=1.0, burst=1.0)
    state = _state(limited)
    state.handle(b"a", hello(), now=0.0)
    state.handle(b"a", subscribe("t"), now=0.0)
    take(state)
    state.handle(b"a", request("t"), now=0.0)
    ((_, ask), (_, routed)) = take(state)
    assert isinstance(ask, p.Ask) and isinstance(routed, p.Routed)
    for _ in range(3):  # replies answer someone else's request: never limited
        state.handle(b"a", [p.H_REPLY, A, ask.token, b"r"], now=0.0)
    assert sum(isinstance(c, p.Answer) for _, c in take(state)) == 3
    assert state.counters["rate_limited"] == 0
    free = BrokerState()
    free.handle(b"a", hello(), now=0.0)
    for _ in range(1000):
        free.handle(b"a", publish("t", ref=b"r"), now=0.0)
    assert free.counters["rate_limited"] == 0 and free.counters["published"] == 1000


def test_stats_counts_the_rate_limited_per_user() -> None:
    state = _state(User("anonymous", rate=1.0, admin=True))
    state.handle(b"a", hello(), now=0.0)
    for _ in range(3):
        state.handle(b"a", publish("t"), now=0.0)
    take(state)
    state.handle(b"a", [p.H_STATS, b"", b"s"], now=0.0)
    (reply,) = _of(state, b"a", p.StatsReply)
    body = p.unpack_stats(reply.body)
    assert body["rate_limited"] == {"anonymous": 2}
    assert body["counters"]["throttled"] == 2


def test_a_refused_notice_keeps_its_throttled_count() -> None:
    state = _state(User("anonymous", rate=1.0))
    state.handle(b"a", hello(), now=0.0)
    take(state)
    state.handle(b"a", publish("t"), now=0.0)
    state.handle(b"a", publish("t"), now=0.0)
    ((ident, frames),) = state.take_outgoing()
    assert frames[0] == p.H_DROPPED
    state.send_failed(ident, frames, gone=False)
    state.handle(b"a", subscribe("x"), now=0.5)
    out = take(state)
    assert [type(c) for _, c in out] == [p.Dropped, p.Ok]
    assert out[0][1].throttled == 1  # type: ignore[union-attr]


# --- over real sockets -------------------------------------------------------------

SERVER_PUBLIC, SERVER_SECRET = zmq.curve_keypair()
SLOW = zmq.curve_keypair()
FAST = zmq.curve_keypair()
CHANNEL = uuid.uuid4()


@pytest.fixture
def limited() -> Iterator[Broker]:
    users = [
        User("slow", SLOW[0], rate=5.0, burst=1.0),
        User("fast", FAST[0]),
    ]
    with Broker("tcp://127.0.0.1:0", secret_key=SERVER_SECRET, users=users) as broker:
        yield broker


def test_a_bus_over_its_rate_is_refused_with_retry_after_and_told_of_drops(
    limited: Broker,
) -> None:
    with (
        Bus(limited.address, CHANNEL, server_key=SERVER_PUBLIC, key=FAST) as fast,
        Bus(limited.address, CHANNEL, server_key=SERVER_PUBLIC, key=SLOW) as slow,
    ):
        got = []
        done = threading.Event()

        def on(msg: object) -> None:
            got.append(msg)
            if len(got) == 5:
                done.set()

        fast.subscribe("t.>", handler=on)
        for i in range(5):  # the burst
            assert slow.publish("t.c", str(i).encode(), timeout=5).delivered == 1
        with pytest.raises(RateLimited) as info:
            slow.publish("t.c", b"over", timeout=5)
        assert isinstance(info.value, LimitReached) and info.value.code == 429
        assert 0 < info.value.retry_after <= 0.2 + 1e-9
        assert done.wait(5)
        for _ in range(20):
            slow.publish("t.u", b"x", confirm=False)
        # Not limited, and after the publishes on the same connection: its OK
        # brings every throttled count still owed along (DROPPED goes first).
        slow.subscribe("nothing")
        stats = limited.stats()
        assert stats["rate_limited"]["slow"] == stats["counters"]["rate_limited"] >= 16
        assert slow.throttled == stats["counters"]["throttled"] >= 15
        assert fast.throttled == 0
        for _ in range(50):  # the unlimited user is not slowed by the other
            fast.publish("t.f", b"x", confirm=False)
        assert fast.publish("t.f", b"last", timeout=5).delivered == 1


def test_the_asyncio_bus_raises_the_same(limited: Broker) -> None:
    import asyncio

    from zmqbus import aio

    async def main() -> float:
        async with aio.Bus(limited.address, CHANNEL, server_key=SERVER_PUBLIC, key=SLOW) as bus:
            for _ in range(5):
                await bus.publish("t", b"x", timeout=5)
            try:
                await bus.publish("t", b"x", timeout=5)
            except RateLimited as exc:
                return exc.retry_after
            raise AssertionError("the sixth publish within a second passed")

    assert 0 < asyncio.run(main()) <= 0.2 + 1e-9


def test_a_disconnect_gets_what_it_is_owed_before_its_ok() -> None:
    state = _state(User("anonymous", rate=0.01, burst=100.0))
    state.handle(b"a", hello(), now=0.0)
    take(state)
    for _ in range(4):  # one passes, three over the rate
        state.handle(b"a", publish("t"), now=0.0)
    state.handle(b"a", [p.H_DISCONNECT, A, b"d"], now=0.0)  # in the same pass
    out = state.take_outgoing()
    assert [frames[0] for _, frames in out] == [p.H_DROPPED, p.H_OK]
    assert p.parse_broker(out[0][1]).throttled == 3  # type: ignore[union-attr]
    # WELCOME and OK are messages; the notice is counted as one.
    assert state.counters["messages_out"] == 2 and state.counters["dropped_notices"] == 1
