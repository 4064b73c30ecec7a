"""Replacing a broker's users while it runs (issue #14: revocation without a
restart): ``Broker.set_users`` and SIGHUP in ``zmqbus broker --config``. A
removed key's connections are closed and cannot come back; a user whose rights
changed rejoins under the new ones; one whose limits changed keeps its session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import zmq
from frames import A, hello, publish, take

from zmqbus import AuthenticationError, Broker, Bus, BusClosed, PermissionDenied, RateLimited, User
from zmqbus import protocol as p
from zmqbus._edge import Registry
from zmqbus._routing import BrokerState
from zmqbus.keys import keygen

pytestmark = pytest.mark.timeout(60)

SERVER_PUBLIC, SERVER_SECRET = zmq.curve_keypair()
BILLING = zmq.curve_keypair()
AUDIT = zmq.curve_keypair()
OTHER = zmq.curve_keypair()
CHANNEL = uuid.uuid4()


# --- what changed ---------------------------------------------------------------


def test_revoked_names_the_users_gone_rekeyed_or_with_other_rights() -> None:
    old = Registry(
        [
            User("gone", BILLING[0]),
            User("rekeyed", AUDIT[0]),
            User("narrowed", OTHER[0], publish=["a.>"]),
            User("faster", SERVER_PUBLIC, rate=10.0),
        ],
        secure=True,
    )
    new = Registry(
        [
            User("rekeyed", BILLING[0]),
            User("narrowed", OTHER[0], publish=["a.b"]),
            User("faster", SERVER_PUBLIC, rate=100.0, max_connections=3),
        ],
        secure=True,
    )
    assert old.revoked(new) == {"gone", "rekeyed", "narrowed"}
    assert new.revoked(new) == set()
    open_ = Registry(None, secure=False)
    assert open_.revoked(Registry([User("anonymous", publish=["x"])], secure=False)) == {
        "anonymous"
    }


# --- the broker's state ------------------------------------------------------------

K1, K2, K3 = (5, "127.0.0.1:40001"), (6, "127.0.0.1:40002"), (7, "127.0.0.1:40003")


def test_set_users_drops_the_revoked_and_updates_the_rest_in_place() -> None:
    slow = User("slow", BILLING[0], rate=1.0)
    gone = User("gone", AUDIT[0])
    state = BrokerState(users={"slow": slow, "gone": gone})
    for ident, key, tag in ((b"s", K1, "1:slow"), (b"g", K2, "2:gone")):
        state.connection_opened(key, now=0.0)
        state.sources[ident] = (key[0], key[1], tag)
        state.handle(ident, hello(), now=0.0)
    state.connection_opened(K3, now=0.0)  # authenticated as "gone", not joined yet
    take(state)
    state.handle(b"s", publish("t", ref=b"1"), now=0.0)
    state.handle(b"s", publish("t", ref=b"2"), now=0.0)
    assert [type(c) for _, c in take(state)] == [p.Routed, p.Error]  # 1/s
    faster = User("slow", BILLING[0], rate=1000.0)
    assert state.set_users({"slow": faster}, state.anonymous, {"gone"}) == 1
    assert set(state.peers) == {b"s"} and state.closing == [K2]
    assert state.peers[b"s"].user is faster and state.counters["revoked_peers"] == 1
    state.handle(b"s", publish("t", ref=b"3"), now=0.001)  # the new rate, at once
    assert [type(c) for _, c in take(state)] == [p.Routed]
    # A connection that authenticated as a removed user cannot join with it.
    state.sources[b"late"] = (K3[0], K3[1], "3:gone")
    state.handle(b"late", hello(), now=0.0)
    ((_, err),) = take(state)
    assert isinstance(err, p.Error) and err.code == p.ErrorCode.PERMISSION_DENIED
    assert "'gone' is no longer known" in err.text and b"late" not in state.peers
    assert state.closing == [K2, K3] and state.denied["gone"] == 1


def test_an_anonymous_peer_with_new_rights_is_dropped_and_told_on_its_next_command() -> None:
    state = BrokerState()
    state.handle(b"a", hello(A))  # inproc: no connection to close
    take(state)
    narrow = User("anonymous", publish=["ok.>"])
    assert state.set_users({"anonymous": narrow}, narrow, {"anonymous"}) == 1
    assert not state.closing
    state.handle(b"a", publish("no.x", ref=b"r"))
    ((_, err),) = take(state)
    assert isinstance(err, p.Error) and err.code == p.ErrorCode.NOT_JOINED  # rejoins
    state.handle(b"a", hello(A))
    state.handle(b"a", publish("no.x", ref=b"r"))
    assert [c.code for _, c in take(state) if isinstance(c, p.Error)] == [401]


# --- over real sockets ---------------------------------------------------------------


def _users(*, billing_rate: float | None = None, audit: bool = True) -> list[User]:
    users = [User("billing", BILLING[0], publish=["orders.>"], rate=billing_rate)]
    if audit:
        users.append(User("audit", AUDIT[0]))
    return users


def test_a_removed_key_is_cut_off_and_cannot_come_back() -> None:
    with Broker("tcp://127.0.0.1:0", secret_key=SERVER_SECRET, users=_users()) as broker:
        keys = {"server_key": SERVER_PUBLIC}
        with (
            Bus(broker.address, CHANNEL, key=BILLING, **keys) as billing,  # type: ignore[arg-type]
            Bus(broker.address, CHANNEL, key=AUDIT, **keys) as audit,  # type: ignore[arg-type]
        ):
            got = threading.Event()
            billing.subscribe("orders.>", handler=lambda m: got.set())
            assert audit.publish("orders.x", b"1", timeout=5).delivered == 1
            assert got.wait(5)
            assert broker.set_users(_users(audit=False)) == 1
            # The audit bus lost its connection, and its key is no one's now.
            with pytest.raises(AuthenticationError):
                Bus(broker.address, CHANNEL, key=AUDIT, connect_timeout=5, **keys)  # type: ignore[arg-type]
            assert broker.stats()["counters"]["revoked_peers"] == 1
            # Billing kept its session and subscription throughout.
            got.clear()
            with Bus(broker.address, CHANNEL, key=BILLING, **keys) as other:  # type: ignore[arg-type]
                assert other.publish("orders.y", b"2", timeout=5).delivered == 1
            assert got.wait(5)
            # The audit bus, cut off and refused on its way back, closes itself:
            # what it waits for then fails with the refusal as the cause.
            with pytest.raises(BusClosed) as info:
                audit.publish("orders.z", b"3", timeout=30)
            assert isinstance(info.value.__cause__, AuthenticationError)
            assert isinstance(audit.failure, AuthenticationError)
            assert audit.failure.address == broker.address and audit.state == "closed"


def test_new_limits_apply_to_live_sessions_and_bad_users_change_nothing() -> None:
    with (
        Broker("tcp://127.0.0.1:0", secret_key=SERVER_SECRET, users=_users()) as broker,
        Bus(broker.address, CHANNEL, server_key=SERVER_PUBLIC, key=BILLING) as bus,
    ):
        for _ in range(3):
            bus.publish("orders.x", b"1", timeout=5)
        with pytest.raises(ValueError, match="share a key"):
            broker.set_users([User("a", BILLING[0]), User("b", BILLING[0])])
        assert broker.set_users(_users(billing_rate=1.0)) == 0
        bus.publish("orders.x", b"1", timeout=5)  # the bucket starts full
        with pytest.raises(RateLimited):
            bus.publish("orders.x", b"1", timeout=5)
        with pytest.raises(PermissionDenied):
            bus.publish("audit.x", b"1", timeout=5)  # rights unchanged, still checked
        assert bus.state == "connected"


def test_sighup_reloads_the_users_of_the_config_file(tmp_path: Path) -> None:
    keygen("broker", tmp_path)
    keygen("billing", tmp_path)
    keygen("audit", tmp_path)
    config = tmp_path / "broker.toml"
    both = (
        'bind = "tcp://127.0.0.1:0"\nsecret_key = "broker.key_secret"\n'
        '[[users]]\nname = "billing"\npublic_key = "billing.key"\n'
        '[[users]]\nname = "audit"\npublic_key = "audit.key"\n'
    )
    config.write_text(both)
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        address = ""
        for line in proc.stderr:
            if "listening on" in line:
                address = line.rsplit(" ", 1)[1].strip()
                break
        assert address.startswith("tcp://")
        server = str(tmp_path / "broker.key")
        with Bus(address, CHANNEL, server_key=server, key=str(tmp_path / "audit.key_secret")):
            pass
        config.write_text(both.split('[[users]]\nname = "audit"')[0])
        proc.send_signal(signal.SIGHUP)
        for line in proc.stderr:
            if "users replaced" in line:
                break
        with pytest.raises(AuthenticationError):
            Bus(address, CHANNEL, server_key=server, key=str(tmp_path / "audit.key_secret"))
        with Bus(address, CHANNEL, server_key=server, key=str(tmp_path / "billing.key_secret")):
            pass
        config.write_text("not toml [")
        proc.send_signal(signal.SIGHUP)
        for line in proc.stderr:
            if "reload failed" in line:
                assert "not valid TOML" in line
                break
        with Bus(address, CHANNEL, server_key=server, key=str(tmp_path / "billing.key_secret")):
            pass  # the users in force stay
    finally:
        proc.terminate()
        proc.wait(10)
