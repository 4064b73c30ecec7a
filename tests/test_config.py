"""The broker's config file (``zmqbus broker --config``) and ``zmqbus keygen``."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from brokers import BrokerProcess, free_port

from zmqbus import AuthenticationError, Broker, Bus, Limits
from zmqbus._logfmt import handler as log_handler
from zmqbus.config import BrokerConfig, load_config
from zmqbus.keys import keygen, load_keypair, load_public_key

ROOT = Path(__file__).resolve().parent.parent

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


# --- every key, checked -------------------------------------------------------------


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("ZMQBUS_ADDRESS", None)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "zmqbus", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
        check=False,
    )


def _keys(folder: Path, *names: str) -> None:
    for name in names:
        keygen(name, folder)


EVERY_KEY = """
bind = "tcp://127.0.0.1:0"
data_dir = "data"
sync = "full"
secret_key = "certs/broker.key_secret"
max_message_size = 65536
hwm = 5000
metrics = "127.0.0.1:0"
metrics_per_channel = true
log_level = "debug"
log_format = "json"
[limits]
max_peers = 50
max_queued_bytes = 1048576
[[users]]
name = "billing"
public_key = "certs/billing.key"
publish = ["orders.>"]
subscribe = ["orders.*"]
deny_publish = ["orders.secret"]
streams = true
max_connections = 3
rate = 100.5
burst = 2.0
[[users]]
name = "ops"
public_key = "certs/ops.key"
admin = true
channels = ["7c9e6679-7425-40de-944b-e07fc1f90ae7"]
"""


def test_every_key_of_a_config_file_is_read(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path / "broker.toml", EVERY_KEY))
    assert config == BrokerConfig(
        bind="tcp://127.0.0.1:0",
        data_dir=tmp_path / "data",
        sync="full",
        secret_key=tmp_path / "certs/broker.key_secret",
        max_message_size=65536,
        hwm=5000,
        metrics="127.0.0.1:0",
        metrics_per_channel=True,
        log_level="DEBUG",
        log_format="json",
        limits={"max_peers": 50, "max_queued_bytes": 1048576},
        users=config.users,
    )
    assert config.users is not None
    billing, ops = config.users
    assert billing.public_key == tmp_path / "certs/billing.key" and billing.rate == 100.5
    assert list(billing.deny_publish) == ["orders.secret"] and billing.streams
    assert ops.admin and list(ops.channels) == ["7c9e6679-7425-40de-944b-e07fc1f90ae7"]
    # Z85 text stands for itself (40 characters, no such file).
    z85_key = load_public_key(keygen("z", tmp_path / "z")[0]).decode()
    text = f'[[users]]\nname = "z"\npublic_key = "{z85_key}"\n'
    users = load_config(_write(tmp_path / "z85.toml", text)).users
    assert users is not None and users[0].public_key == z85_key


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("bnid = 'x'", r"unknown key\(s\) \['bnid'\] \(did you mean 'bind' for 'bnid'\?\)"),
        ("bind = 9090", "bind must be an address string"),
        ("bind = 'nonsense'", "bind: cannot bind to 'nonsense'"),
        ("bind = 'tcp://127.0.0.1:99999'", "bind: not a valid port"),
        ("data_dir = 3", "data_dir must be a file path"),
        ("data_dir = ''", "data_dir must be a file path"),
        ("sync = 'fast'", "sync must be 'normal' or 'full', not 'fast'"),
        ("sync = true", "sync must be 'normal' or 'full', not True"),
        ("secret_key = ['a']", "secret_key must be a file path"),
        ("max_message_size = 'big'", "max_message_size must be a positive integer"),
        ("max_message_size = 0", "max_message_size must be a positive integer, not 0"),
        ("max_message_size = 5_000_000_000", "max_message_size must be at most 4294967295"),
        ("hwm = 1.5", "hwm must be a positive integer, not 1.5"),
        ("hwm = 3_000_000_000", "hwm must be at most 2147483647"),
        ("metrics = 9464", "metrics must be a string 'host:port' or a port"),
        ("metrics = 'localhost:http'", "metrics must be 'host:port'"),
        ("metrics = ':9464'", "metrics must be 'host:port'"),
        ("metrics_per_channel = 'yes'", "metrics_per_channel must be true or false, not 'yes'"),
        ("log_level = 'loud'", "log_level must be DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("log_level = 10", "log_level must be DEBUG, INFO"),
        ("log_format = 'xml'", "log_format must be 'text' or 'json', not 'xml'"),
        ("limits = 3", r"limits must be a table \(\[limits\]\)"),
        ("[limits]\nmax_peer = 3", r"unknown limit\(s\) \['max_peer'\]"),
        ("[limits]\nmax_peers = 0", "limits.max_peers must be a positive integer"),
        ("[limits]\nmax_peers = true", "limits.max_peers must be a positive integer"),
        ("users = {}", r"users must be an array of tables \(\[\[users\]\]\)"),
        ("users = [1]", r"users\[0\] must be a table"),
        ("[[users]]\npublic_key = 'k'", r"users\[0\] needs a name"),
        (
            "[[users]]\nname = 'a'\npublick_key = 'x'",
            r"users\[0\]: unknown key\(s\) \['publick_key'\]",
        ),
        ("[[users]]\nname = 'a'", r"users\[0\]: user 'a' needs a public_key"),
        ("[[users]]\nname = 'a'\npublic_key = 3", r"users\[0\]\.public_key must be a key file"),
        ("[[users]]\nname = 'a'\npublic_key = 'k'\nadmin = 1", r"users\[0\]: User\.admin must"),
        ("[[users]]\nname = 'a'\npublic_key = 'k'\nrate = -1", r"users\[0\]: User\.rate must"),
        ("[[users]]\nname = 'a'\npublic_key = 'k'\npublish = 'x'", r"User\.publish must be a list"),
        ("[[users]]\nname = 'a'\npublic_key = 'k'\nsubscribe = ['a..b']", r"users\[0\]: .*empty"),
        ("[[users]]\nname='a'\npublic_key='k'\n[[users]]\nname='a'\npublic_key='j'", "second user"),
        ("bind = ", "not valid TOML"),
    ],
)
def test_a_bad_key_is_an_error_naming_the_file_and_the_key(
    tmp_path: Path, text: str, error: str
) -> None:
    bad = _write(tmp_path / "bad.toml", text)
    with pytest.raises(ValueError, match=error) as caught:
        load_config(bad)
    assert str(caught.value).startswith(str(bad))


def test_a_config_file_that_is_not_utf8_or_missing(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b"bind = '\xe9'\n")
    with pytest.raises(ValueError, match=r"latin1\.toml is not UTF-8 text"):
        load_config(tmp_path / "latin1.toml")
    with pytest.raises(ValueError, match=r"cannot read .*missing\.toml"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("secret_key = 'nokey'\nusers = []", r"bad\.toml: secret_key: no key file at '.*nokey'"),
        ("secret_key = 'certs/broker.key_secret'", "a secret key needs users"),
        (
            "secret_key = 'certs/broker.key_secret'\n[[users]]\nname='a'\npublic_key='certs/x.key'",
            r"bad\.toml: users\[0\]\.public_key: no key file at '.*x\.key'",
        ),
        ("[[users]]\nname='a'\npublic_key='certs/billing.key'", r"bad\.toml: users\[0\] \('a'\)"),
        ("metrics_per_channel = true", r"bad\.toml: metrics_per_channel needs metrics"),
        ("log_format = 'xml'", r"bad\.toml: log_format must be"),
    ],
)
def test_the_broker_refuses_a_bad_config_before_binding(
    tmp_path: Path, text: str, error: str
) -> None:
    _keys(tmp_path / "certs", "broker", "billing")
    port = free_port()
    bad = _write(tmp_path / "bad.toml", f"bind = 'tcp://127.0.0.1:{port}'\n{text}")
    for extra in ((), ("--print-config",)):
        r = _cli("broker", "--config", str(bad), *extra)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert re.search(error, r.stderr), r.stderr
        assert "listening" not in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == ""


# --- --print-config -----------------------------------------------------------------


def _printed(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return tomllib.loads(r.stdout)


def test_print_config_without_a_file_is_the_defaults(tmp_path: Path) -> None:
    printed = _printed(_cli("broker", "--print-config"))
    assert printed == {
        "bind": "tcp://127.0.0.1:9090",
        "sync": "normal",
        "max_message_size": 1 << 20,
        "hwm": 100_000,
        "metrics_per_channel": False,
        "log_level": "INFO",
        "log_format": "text",
        "limits": Limits().as_dict(),
    }


def test_every_flag_wins_over_the_file(tmp_path: Path) -> None:
    _keys(tmp_path / "certs", "broker", "billing", "ops", "other")
    config = _write(tmp_path / "broker.toml", EVERY_KEY)
    from_file = _printed(_cli("broker", "--config", str(config), "--print-config"))
    assert from_file["bind"] == "tcp://127.0.0.1:0"
    assert from_file["data_dir"] == str(tmp_path / "data")
    assert from_file["secret_key"] == str(tmp_path / "certs/broker.key_secret")
    assert from_file["limits"] == Limits(max_peers=50, max_queued_bytes=1 << 20).as_dict()
    assert [u["name"] for u in from_file["users"]] == ["billing", "ops"]
    flags = {
        "--bind": ("9091", "bind", "tcp://127.0.0.1:9091"),
        "--data-dir": ("elsewhere", "data_dir", str(tmp_path / "elsewhere")),
        "--sync": ("normal", "sync", "normal"),
        "--secret-key": (
            "certs/other.key_secret",
            "secret_key",
            str(tmp_path / "certs/other.key_secret"),
        ),
        "--max-message-size": ("1000", "max_message_size", 1000),
        "--hwm": ("7", "hwm", 7),
        "--metrics": ("9999", "metrics", "127.0.0.1:9999"),
        "--log-level": ("warning", "log_level", "WARNING"),
        "--log-format": ("text", "log_format", "text"),
        "--max-peers": ("9", "limits", {**from_file["limits"], "max_peers": 9}),
        "--max-streams": ("4", "limits", {**from_file["limits"], "max_streams": 4}),
    }
    assert {key for _, key, _ in flags.values()} | {"metrics_per_channel", "users"} == set(
        from_file
    )
    for flag, (value, key, expected) in flags.items():
        printed = _printed(
            _cli("broker", "--config", str(config), flag, value, "--print-config", cwd=tmp_path)
        )
        assert printed[key] == expected, flag
        assert {k: v for k, v in printed.items() if k != key} == {
            k: v for k, v in from_file.items() if k != key
        }, flag
    off = _printed(
        _cli("broker", "--config", str(config), "--no-metrics-per-channel", "--print-config")
    )
    assert off["metrics_per_channel"] is False
    on = _printed(_cli("broker", "--metrics", "0", "--metrics-per-channel", "--print-config"))
    assert on["metrics_per_channel"] is True and on["metrics"] == "127.0.0.1:0"


def test_print_config_never_prints_key_material(tmp_path: Path) -> None:
    _keys(tmp_path / "certs", "broker", "billing", "ops")
    config = _write(tmp_path / "broker.toml", EVERY_KEY)
    r = _cli("broker", "--config", str(config), "--print-config")
    assert r.returncode == 0, r.stderr
    public, secret = load_keypair(tmp_path / "certs/broker.key_secret")
    for text in (secret, public):  # the broker's own pair: neither half
        assert text.decode() not in r.stdout
    assert str(tmp_path / "certs/broker.key_secret") in r.stdout
    # A secret key given as key text, not a file, is refused rather than printed.
    r = _cli("broker", "--config", str(config), "--secret-key", secret.decode(), "--print-config")
    assert r.returncode == 2 and secret.decode() not in r.stdout
    assert "secret_key: no key file" in r.stderr


def test_printed_config_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    _keys(tmp_path / "certs", "broker", "billing", "ops")
    z85_key = load_public_key(keygen("z", tmp_path / "z")[0]).decode()
    config = _write(
        tmp_path / "broker.toml",
        EVERY_KEY + f'[[users]]\nname = "z"\npublic_key = "{z85_key}"\ndeny_subscribe = ["x.>"]\n',
    )
    args = ["--sync", "normal", "--max-pending-per-peer", "77", "--log-level", "ERROR"]
    first = _cli("broker", "--config", str(config), *args, "--print-config")
    assert first.returncode == 0, first.stderr
    printed = _write(tmp_path / "elsewhere.toml", first.stdout)
    again = load_config(printed)
    original = load_config(config)
    assert again.sync == "normal" and again.log_level == "ERROR"
    assert again.limits == {**Limits().as_dict(), **original.limits, "max_pending_per_peer": 77}
    for name in ("bind", "data_dir", "secret_key", "max_message_size", "hwm", "metrics"):
        assert getattr(again, name) == getattr(original, name), name
    assert again.metrics_per_channel and again.log_format == "json"
    assert again.users is not None and original.users is not None
    for mine, theirs in zip(again.users, original.users, strict=True):
        assert mine.public_key == theirs.public_key and mine.same_rights(theirs)
        assert (mine.rate, mine.burst, mine.max_connections) == (
            theirs.rate,
            theirs.burst,
            theirs.max_connections,
        )
    # And printed again, from the printed file alone: the very same settings.
    second = _cli("broker", "--config", str(printed), "--print-config")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]


# --- logging ------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in text.splitlines()]
    for entry in entries:
        assert set(entry) <= {"ts", "level", "logger", "message", "exc_info", "stack_info"}
        ts = datetime.fromisoformat(entry["ts"])
        assert ts.utcoffset() == timedelta(0) and entry["ts"].endswith("Z")
        assert abs(datetime.now(UTC) - ts) < timedelta(minutes=5)
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert entry["logger"].startswith("zmqbus")
    return entries


@pytest.mark.parametrize("how", ["flag", "config"])
def test_broker_logs_json_lines(tmp_path: Path, how: str) -> None:
    address = f"ipc://{tmp_path}/bus"
    if how == "flag":
        args = ["--bind", address, "--log-format", "json"]
    else:
        config = _write(tmp_path / "b.toml", f'bind = "{address}"\nlog_format = "json"\n')
        args = ["--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "broker ready" in line:
                break
        # Another command that logs: a publisher at DEBUG.
        pub = _cli(
            "pub",
            "t.x",
            "hi",
            "--channel",
            str(uuid.uuid4()),
            "--address",
            address,
            "--log-level",
            "DEBUG",
            "--log-format",
            "json",
        )
        assert pub.returncode == 0, pub.stderr
        assert any(e["logger"] == "zmqbus.bus" for e in _json_lines(pub.stderr)), pub.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        seen += proc.stderr.read().splitlines(keepends=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
    entries = _json_lines("".join(seen))
    messages = [e["message"] for e in entries]
    assert f"broker listening on {address}" in messages, messages
    assert "received SIGTERM, stopping" in messages
    assert {e["logger"] for e in entries} >= {"zmqbus.broker", "zmqbus.cli"}


def test_json_log_lines_carry_the_traceback() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("zmqbus.test_json")
    logger.propagate = False
    logger.addHandler(log_handler(stream, "json"))
    try:
        logger.warning("plain, with\na newline")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it failed: %s", "why")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    plain, failed = _json_lines(stream.getvalue())
    assert plain == {**plain, "level": "WARNING", "message": "plain, with\na newline"}
    assert "exc_info" not in plain
    assert failed["message"] == "it failed: why" and failed["level"] == "ERROR"
    assert failed["exc_info"].startswith("Traceback") and "RuntimeError: boom" in failed["exc_info"]
