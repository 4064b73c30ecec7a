"""The broker's config file (``zmqbus broker --config``) and ``zmqbus keygen``."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from brokers import BrokerProcess, free_port

from zmqbus import AuthenticationError, Broker, Bus
from zmqbus.config import load_config
from zmqbus.keys import load_keypair, load_public_key

pytestmark = pytest.mark.timeout(60)


def _zmqbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqbus", *args], capture_output=True, text=True, timeout=30
    )


def test_keygen_writes_a_pair(tmp_path: Path) -> None:
    r = _zmqbus("keygen", "broker", "--dir", str(tmp_path / "certs"))
    assert r.returncode == 0, r.stderr
    public, secret = tmp_path / "certs/broker.key", tmp_path / "certs/broker.key_secret"
    assert str(public) in r.stdout and str(secret) in r.stdout
    assert load_keypair(secret)[0] == load_public_key(public)
    assert _zmqbus("keygen", "../x", "--dir", str(tmp_path)).returncode == 2


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_config_file_is_checked_key_by_key(tmp_path: Path) -> None:
    good = _write(
        tmp_path / "broker.toml",
        """
bind = "tcp://127.0.0.1:0"
secret_key = "certs/broker.key_secret"
max_message_size = 65536
[limits]
max_peers = 50
[[users]]
name = "billing"
public_key = "certs/billing.key"
publish = ["orders.>"]
admin = true
""",
    )
    config = load_config(good)
    assert config.bind == "tcp://127.0.0.1:0" and config.max_message_size == 65536
    assert config.secret_key == tmp_path / "certs/broker.key_secret"
    assert config.limits == {"max_peers": 50}
    assert config.users is not None and config.users[0].public_key == tmp_path / "certs/billing.key"
    for text, error in [
        ("bnid = 'x'", r"unknown key\(s\) \['bnid'\]"),
        ("[limits]\nmax_peer = 3", r"unknown limit\(s\) \['max_peer'\]"),
        ("[limits]\nmax_peers = 0", "limits.max_peers must be a positive integer"),
        ("[[users]]\nname = 'a'\npublick_key = 'x'", r"users\[0\]: unknown key"),
        ("[[users]]\nname = 'a'", r"users\[0\]: user 'a' needs a public_key"),
        ("max_message_size = 'big'", "max_message_size must be a positive integer"),
        ("bind = ", "not valid TOML"),
    ]:
        with pytest.raises(ValueError, match=error):
            load_config(_write(tmp_path / "bad.toml", text))
    with pytest.raises(ValueError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_a_broker_from_its_config_file_admits_its_users_only(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    for name in ("broker", "billing", "stranger"):
        assert _zmqbus("keygen", name, "--dir", str(certs)).returncode == 0
    port = free_port()
    config = _write(
        tmp_path / "broker.toml",
        f"""
bind = "tcp://127.0.0.1:{port}"
secret_key = "certs/broker.key_secret"
[[users]]
name = "billing"
public_key = "certs/billing.key"
""",
    )
    broker = BrokerProcess(f"tcp://127.0.0.1:{port}")
    broker.args = ("--config", str(config))
    broker.address = f"tcp://127.0.0.1:{port}"
    broker.start()
    try:
        server = certs / "broker.key"
        with Bus(broker.address, uuid.uuid4(), server_key=server, key=certs / "billing.key_secret"):
            pass
        with pytest.raises(AuthenticationError):
            Bus(
                broker.address,
                uuid.uuid4(),
                server_key=server,
                key=certs / "stranger.key_secret",
                connect_timeout=5,
            )
        # The client commands with keys: the user's are taken, a stranger's refused (exit 3).
        channel = str(uuid.uuid4())
        for command in (["stats"], ["pub", "t.x", "hello", "--channel", channel]):
            for name, code in (("billing", 0), ("stranger", 3)):
                key = str(certs / f"{name}.key_secret")
                r = _zmqbus(
                    *command, "--address", broker.address, "--server-key", str(server), "--key", key
                )
                assert r.returncode == code, (command, name, r.stderr)
                if code:
                    assert "refused" in r.stderr
                elif command == ["stats"]:
                    assert '"broker"' in r.stdout
    finally:
        broker.stop()


def test_a_secret_key_with_no_users_is_a_usage_error(tmp_path: Path) -> None:
    assert _zmqbus("keygen", "broker", "--dir", str(tmp_path)).returncode == 0
    r = _zmqbus("broker", "--secret-key", str(tmp_path / "broker.key_secret"))
    assert r.returncode == 2 and "users" in r.stderr


def test_a_broker_reachable_beyond_loopback_without_auth_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="zmqbus.broker"):
        with Broker("tcp://127.0.0.1:0"):
            pass
        assert "no authentication" not in caplog.text
        with Broker("tcp://0.0.0.0:0"):
            pass
    assert "no authentication" in caplog.text
