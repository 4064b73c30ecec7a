"""Per-user permissions at the broker (issue #14): channels, publish and request
topics, subscription patterns, and what STATS shows. Denied: ERROR 401 with a
reason, ``PermissionDenied`` from confirmed calls, counted per user."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import zmq
from frames import A, B, hello, publish, request, subscribe, take

from zmqbus import Broker, Bus, PermissionDenied, User
from zmqbus import protocol as p
from zmqbus._routing import BrokerState

pytestmark = pytest.mark.timeout(60)

SERVER_PUBLIC, SERVER_SECRET = zmq.curve_keypair()
BILLING = zmq.curve_keypair()
ADMIN = zmq.curve_keypair()
ORDERS = uuid.uuid4()


def _state(user: User) -> BrokerState:
    return BrokerState(users={user.name: user}, anonymous=user)


def _errors(state: BrokerState) -> list[p.Error]:
    return [cmd for _, cmd in take(state) if isinstance(cmd, p.Error)]


def test_each_command_is_checked_against_the_users_permissions() -> None:
    user = User(
        "anonymous",
        channels=[str(uuid.UUID(bytes=A))],
        publish=["orders.>"],
        subscribe=["orders.created", "billing.*"],
        deny_publish=["orders.secret"],
    )
    state = _state(user)
    state.handle(b"x", hello(B))
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.PERMISSION_DENIED and "join this channel" in err.text
    assert b"x" not in state.peers
    state.handle(b"a", hello(A))
    take(state)
    for frames, allowed in [
        (publish("orders.created", ref=b"r"), True),
        (publish("orders.secret", ref=b"r"), False),
        (publish("billing.x", ref=b"r"), False),
        (request("orders.lookup"), True),
        (request("audit.lookup"), False),
        (subscribe("orders.created"), True),
        (subscribe("billing.*", 2), True),
        (subscribe("orders.*", 3), False),  # would match orders.secret and more
        (subscribe(">", 4), False),
    ]:
        state.handle(b"a", frames)
        errors = _errors(state)
        assert (not errors) is allowed, (frames, errors)
        if not allowed:
            assert errors[0].code == 401 and "user 'anonymous' may not" in errors[0].text
    assert state.denied["anonymous"] == 6 and state.counters["denied"] == 6


def test_a_batch_is_checked_entry_by_entry() -> None:
    from frames import batch, publish_batch

    user = User("anonymous", publish=["ok.>"])
    state = _state(user)
    state.handle(b"a", hello(batch_commands=True))
    take(state)
    state.handle(b"a", publish_batch(("ok.1", b"x"), ("no.1", b"x")))
    (err,) = _errors(state)
    assert err.code == 401  # all or nothing
    state.handle(b"a", batch(publish("ok.2"), publish("no.2"), publish("ok.3")))
    errors = _errors(state)
    assert [e.code for e in errors] == [401]
    assert state.counters["published"] == 2


def test_stats_shows_a_user_without_admin_its_own_channel_only() -> None:
    state = BrokerState(anonymous=User("anonymous"))
    state.handle(b"a", hello(A))
    state.handle(b"a", subscribe("x"))
    state.handle(b"b", hello(B))
    take(state)
    state.handle(b"a", [p.H_STATS, A, b"q"])
    ((_, reply),) = take(state)
    assert isinstance(reply, p.StatsReply)
    body = p.unpack_stats(reply.body)
    assert body["peers"] == 1 and body["channels"] == 1 and body["subscriptions"] == 1
    assert "counters" not in body and "slow_peers" not in body
    admin = BrokerState()  # auth off: anonymous is admin
    admin.handle(b"a", [p.H_STATS, b"", b"q"])
    ((_, reply),) = take(admin)
    assert "counters" in p.unpack_stats(reply.body)


@pytest.fixture
def secure() -> Iterator[Broker]:
    users = [
        User(
            "billing",
            BILLING[0],
            channels=[str(ORDERS)],
            publish=["orders.>"],
            subscribe=["orders.*"],
        ),
        User("admin", ADMIN[0], admin=True),
    ]
    with Broker("tcp://127.0.0.1:0", secret_key=SERVER_SECRET, users=users) as broker:
        yield broker


def test_a_bus_is_told_what_its_user_may_not_do(secure: Broker) -> None:
    keys = {"server_key": SERVER_PUBLIC, "key": BILLING}
    with pytest.raises(PermissionDenied, match="join this channel"):
        Bus(secure.address, uuid.uuid4(), **keys)  # type: ignore[arg-type]
    with Bus(secure.address, ORDERS, **keys) as bus:  # type: ignore[arg-type]
        got = threading.Event()
        bus.subscribe("orders.*", handler=lambda m: got.set())
        assert bus.publish("orders.created", b"1", timeout=5).delivered == 1
        assert got.wait(5)
        with pytest.raises(PermissionDenied, match=r"publish or request on 'audit\.x'"):
            bus.publish("audit.x", b"1", timeout=5)
        with pytest.raises(PermissionDenied, match="subscribe to '>'"):
            bus.subscribe(">")
        with pytest.raises(PermissionDenied):
            bus.request("audit.lookup", b"", timeout=5)
        bus.publish("audit.x", b"1", confirm=False)  # refused and counted, not raised
        bus.subscribe("orders.x")  # its OK comes after that ERROR: counted by then
        assert bus.refused == 1
    with Bus(secure.address, uuid.uuid4(), server_key=SERVER_PUBLIC, key=ADMIN):
        pass  # admin: every channel
    assert secure.stats()["denied"]["billing"] == 5


def test_a_users_own_limits_bound_its_peers_channels_and_subscriptions() -> None:
    user = User("anonymous", max_connections=2, max_channels=1, max_subscriptions=3)
    state = _state(user)
    state.handle(b"a", hello(A))
    state.handle(b"b", hello(A))
    take(state)
    state.handle(b"c", hello(A))  # a third peer
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.LIMIT_REACHED and "2 peers joined" in err.text
    state.drop_peer(b"b")
    state.handle(b"c", hello(B))  # room for a peer, not for a second channel
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.LIMIT_REACHED and "1 channels" in err.text
    state.handle(b"c", hello(A))
    take(state)
    for n in (1, 2, 3):
        state.handle(b"a" if n < 3 else b"c", subscribe(f"t{n}", n))
    assert not _errors(state)
    state.handle(b"c", subscribe("t4", 4))  # its peers' subscriptions together
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.LIMIT_REACHED and "3 subscriptions" in err.text
    state.handle(b"a", [p.H_UNSUBSCRIBE, A, b"u", (1).to_bytes(4, "big")])
    state.handle(b"c", subscribe("t4", 4))
    assert not _errors(state)
    state.drop_peer(b"a")  # its subscription and its place go back
    state.handle(b"d", hello(A))
    state.handle(b"d", subscribe("t5", 5))
    assert not _errors(state)
    assert state.refused["user.max_connections"] == 1 and state.refused["user.max_channels"] == 1
    assert state.refused["user.max_subscriptions"] == 1


def test_an_ack_of_another_peers_live_delivery_is_refused_and_counted() -> None:
    from frames import ack

    state = BrokerState()
    for ident in (b"pub", b"sub", b"thief"):
        state.handle(ident, hello(A))
    state.handle(b"sub", subscribe("t"))
    take(state)
    state.handle(b"pub", publish("t", ref=b"r"))
    (deliver,) = [c for who, c in take(state) if who == b"sub"]
    assert isinstance(deliver, p.Deliver) and deliver.token
    state.handle(b"thief", ack(deliver.token, p.pack_ack(1, 0)))  # a guessed or sniffed token
    (err,) = _errors(state)
    assert err.code == p.ErrorCode.PERMISSION_DENIED and state.counters["forged_acks"] == 1
    state.handle(b"sub", ack(deliver.token, p.pack_ack(1, 0)))  # the real one still counts
    (acked,) = [c for _, c in take(state)]
    assert isinstance(acked, p.Acked) and p.unpack_ack(acked.body).delivered == 1
    state.handle(b"sub", ack(deliver.token))  # now late: ignored, no error
    assert take(state) == [] and state.counters["stale_acks"] == 1
