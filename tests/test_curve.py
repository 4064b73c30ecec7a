"""CURVE encryption and authentication (issue #14): a broker with a secret key
admits only its users' keys; a refused bus gets AuthenticationError, not a
timeout; every frame on the wire is encrypted."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from zmqbus import AuthenticationError, Broker, Bus, User
from zmqbus import aio as zaio
from zmqbus.keys import keygen

pytestmark = pytest.mark.timeout(60)

SERVER_PUBLIC, SERVER_SECRET = zmq.curve_keypair()
CLIENT_PUBLIC, CLIENT_SECRET = zmq.curve_keypair()


@pytest.fixture
def secure() -> Iterator[Broker]:
    users = [User("billing", CLIENT_PUBLIC)]
    with Broker("tcp://127.0.0.1:0", secret_key=SERVER_SECRET, users=users) as broker:
        yield broker


def _bus(broker: Broker, **kwargs: object) -> Bus:
    return Bus(broker.address, uuid.uuid4(), connect_timeout=5, **kwargs)  # type: ignore[arg-type]


def test_a_bus_with_a_known_key_works(secure: Broker) -> None:
    assert secure.public_key == SERVER_PUBLIC
    channel = uuid.uuid4()
    key = (CLIENT_PUBLIC, CLIENT_SECRET)
    with (
        Bus(secure.address, channel, server_key=SERVER_PUBLIC, key=key) as sub,
        Bus(secure.address, channel, server_key=SERVER_PUBLIC, key=CLIENT_SECRET) as pub,
    ):
        got: list[bytes] = []
        done = threading.Event()
        sub.subscribe("orders.*", handler=lambda m: (got.append(m.payload), done.set()))
        assert pub.publish("orders.created", b"42", timeout=5).delivered == 1
        assert done.wait(5) and got == [b"42"]


def test_an_unknown_key_is_refused_with_a_reason_not_a_timeout(
    secure: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = zmq.curve_keypair()
    with (
        caplog.at_level(logging.WARNING, logger="zmqbus.broker"),
        pytest.raises(AuthenticationError) as info,
    ):
        _bus(secure, server_key=SERVER_PUBLIC, key=stranger)
    assert info.value.address == secure.address and "refused" in info.value.reason
    # The broker logs the refused public key, never a secret.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert stranger[0].decode() in logged
    assert stranger[1].decode() not in logged and SERVER_SECRET.decode() not in logged
    assert secure.stats()["counters"]["auth_refused"] >= 1


def test_a_bus_without_a_key_or_with_the_wrong_server_key_is_refused(secure: Broker) -> None:
    with pytest.raises(AuthenticationError, match="CURVE"):
        _bus(secure)
    with pytest.raises(AuthenticationError):
        _bus(secure, server_key=zmq.curve_keypair()[0], key=(CLIENT_PUBLIC, CLIENT_SECRET))


def test_the_asyncio_bus_is_refused_the_same_way(secure: Broker) -> None:
    import asyncio

    async def main() -> None:
        with pytest.raises(AuthenticationError):
            await zaio.Bus(
                secure.address,
                uuid.uuid4(),
                server_key=SERVER_PUBLIC,
                key=zmq.curve_keypair(),
                connect_timeout=5,
            ).connect()
        async with zaio.Bus(
            secure.address,
            uuid.uuid4(),
            server_key=SERVER_PUBLIC,
            key=(CLIENT_PUBLIC, CLIENT_SECRET),
        ) as bus:
            assert bus.state == "connected"

    asyncio.run(main())


def test_keys_from_certificate_files(tmp_path: Path) -> None:
    server_public, server_secret = keygen("broker", tmp_path)
    client_public, client_secret = keygen("billing", tmp_path)
    users = [User("billing", client_public)]
    with (
        Broker("tcp://127.0.0.1:0", secret_key=server_secret, users=users) as broker,
        Bus(broker.address, uuid.uuid4(), server_key=server_public, key=client_secret) as bus,
    ):
        assert bus.state == "connected"


def test_a_secret_key_without_users_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="users"):
        Broker("tcp://127.0.0.1:0", secret_key=SERVER_SECRET)
    with pytest.raises(ValueError, match="key"):
        Bus("tcp://127.0.0.1:1", uuid.uuid4(), server_key=SERVER_PUBLIC)


class _Recorder:
    """A TCP proxy that keeps every byte it relays."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.seen = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    s.close()
                return
            with self._lock:
                self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "clear"])
def test_with_curve_no_payload_topic_or_channel_crosses_the_wire_in_clear(curve: bool) -> None:
    users = [User("billing", CLIENT_PUBLIC)]
    options = {"secret_key": SERVER_SECRET, "users": users} if curve else {}
    keys = {"server_key": SERVER_PUBLIC, "key": (CLIENT_PUBLIC, CLIENT_SECRET)} if curve else {}
    channel = uuid.uuid4()
    payload, topic = b"card-4111111111111111", "orders.secret-topic"
    with Broker("tcp://127.0.0.1:0", **options) as broker:  # type: ignore[arg-type]
        proxy = _Recorder(broker.address)
        try:
            with (
                Bus(proxy.address, channel, **keys) as sub,  # type: ignore[arg-type]
                Bus(proxy.address, channel, **keys) as pub,  # type: ignore[arg-type]
            ):
                done = threading.Event()
                sub.subscribe(topic, handler=lambda m: done.set())
                assert pub.publish(topic, payload, {"h": "header-value"}, timeout=5).delivered == 1
                assert done.wait(5)
        finally:
            proxy.close()
    wire = bytes(proxy.seen)
    secrets = [payload, topic.encode(), channel.bytes, b"header-value"]
    if curve:
        assert b"CURVE" in wire  # the ZMTP greeting names the mechanism
        assert not [s for s in secrets if s in wire]
    else:  # the same test sees them all when CURVE is off
        assert all(s in wire for s in secrets)


def test_broker_stats_takes_keys(secure: Broker) -> None:
    from zmqbus.admin import broker_stats

    stats = broker_stats(
        secure.address, server_key=SERVER_PUBLIC, key=(CLIENT_PUBLIC, CLIENT_SECRET)
    )
    assert stats["broker"].startswith("zmqbus/") and "counters" not in stats  # billing: no admin
    with pytest.raises(AuthenticationError):
        broker_stats(secure.address, server_key=SERVER_PUBLIC, key=zmq.curve_keypair())
    with pytest.raises(AuthenticationError):
        broker_stats(secure.address)
