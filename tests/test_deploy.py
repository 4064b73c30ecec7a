"""deploy/: the systemd unit and the Dockerfile run the real command line, and the
broker tells systemd when it is ready (Type=notify)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from brokers import free_port

from zmqbus.config import load_config
from zmqbus.keys import keygen

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy/systemd/zmqbus-broker.service"
SAMPLE = ROOT / "deploy/systemd/broker.toml"
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in ("ZMQBUS_ADDRESS", "ZMQBUS_CHANNEL", "NOTIFY_SOCKET"):
        env.pop(name, None)
    return env


def _zmqbus(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a deployed command line, its ``zmqbus`` (any path) being this checkout's."""
    assert Path(argv[0]).name == "zmqbus", argv
    return subprocess.run(
        [sys.executable, "-m", "zmqbus", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        check=False,
    )


# --- systemd ------------------------------------------------------------------------


def _unit(text: str) -> dict[str, list[str]]:
    """The [Service] (and other) settings of a unit file: continuation lines joined,
    comments dropped; every value of a setting, in order."""
    settings: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_file_is_complete() -> None:
    unit = _unit(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    assert unit["DynamicUser"] == ["yes"] and unit["StateDirectory"] == ["zmqbus"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert hardening in unit, hardening
    assert unit["WantedBy"] == ["multi-user.target"]


def _exec_start(tmp_path: Path) -> tuple[list[str], Path]:
    """The unit's ExecStart with its folders moved under ``tmp_path``: /etc/zmqbus
    (the sample config, keys for its users), the state and credentials folders."""
    unit = _unit(UNIT.read_text())
    (line,) = unit["ExecStart"]
    etc, state, credentials = tmp_path / "etc", tmp_path / "state", tmp_path / "credentials"
    etc.mkdir()
    shutil.copy(SAMPLE, etc / "broker.toml")
    names = re.findall(r'public_key = "certs/(\w+)\.key"', SAMPLE.read_text())
    for name in ["broker", *names]:
        keygen(name, etc / "certs")
    # LoadCredential=NAME:PATH copies PATH to $CREDENTIALS_DIRECTORY/NAME.
    for credential in unit["LoadCredential"]:
        name, _, source = credential.partition(":")
        credentials.mkdir(exist_ok=True)
        shutil.copy(source.replace("/etc/zmqbus", str(etc)), credentials / name)
    line = (
        line.replace("/etc/zmqbus", str(etc))
        .replace("${STATE_DIRECTORY}", str(state))
        .replace("${CREDENTIALS_DIRECTORY}", str(credentials))
    )
    assert "$" not in line, line
    return shlex.split(line), etc


def test_the_units_command_line_runs(tmp_path: Path) -> None:
    argv, etc = _exec_start(tmp_path)
    assert argv[:2] == ["/opt/zmqbus/bin/zmqbus", "broker"]
    r = _zmqbus([*argv, "--print-config"])
    assert r.returncode == 0, r.stderr
    printed = tomllib.loads(r.stdout.split("\n", 1)[1])
    assert printed["bind"] == "tcp://0.0.0.0:9090"
    assert printed["data_dir"] == str(tmp_path / "state")
    assert printed["secret_key"] == str(tmp_path / "credentials/broker.key_secret")
    assert printed["metrics"].startswith("127.0.0.1:")
    assert [user["name"] for user in printed["users"]] == ["billing", "ops"]
    # What SIGHUP (ExecReload) reloads: the same file's users.
    users = load_config(etc / "broker.toml").users
    assert users is not None and [user.name for user in users] == ["billing", "ops"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit as written, but for its command: verify wants an executable there.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/zmqbus/bin/zmqbus", sys.executable))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0 and "Failed to" in r.stderr and UNIT.name not in r.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert UNIT.name not in r.stderr, r.stderr


# --- docker -------------------------------------------------------------------------


def _dockerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text()).splitlines():
        if line.strip() and not line.startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.setdefault(word.upper(), []).append(rest.strip())
    return instructions


def test_the_dockerfile_is_complete() -> None:
    docker = _dockerfile()
    # A build stage compiles the wheel; the image itself stays slim.
    assert docker["FROM"] == ["python:3.11-slim AS build", "python:3.11-slim"]
    assert any("pip wheel" in run for run in docker["RUN"])
    assert any("pip install" in run and 'implementation() == "compiled"' in run
               for run in docker["RUN"])  # fmt: skip
    assert docker["EXPOSE"] == ["9090"]
    assert docker["VOLUME"] == ['["/var/lib/zmqbus"]']
    (user,) = docker["USER"]
    assert user.split(":")[0] not in ("root", "0")
    (health,) = docker["HEALTHCHECK"]
    assert "CMD zmqbus stats " in health


def _docker_command() -> list[str]:
    docker = _dockerfile()
    (entrypoint,) = docker["ENTRYPOINT"]
    (cmd,) = docker["CMD"]
    argv: list[str] = json.loads(entrypoint) + json.loads(cmd)
    return argv


def test_the_images_command_runs_and_its_health_check_passes(tmp_path: Path) -> None:
    argv = _docker_command()
    assert argv[:2] == ["zmqbus", "broker"]
    r = _zmqbus([*argv, "--print-config"])
    assert r.returncode == 0, r.stderr
    printed = tomllib.loads(r.stdout.split("\n", 1)[1])
    assert printed["bind"] == "tcp://0.0.0.0:9090" and printed["log_format"] == "json"
    assert printed["data_dir"] == "/var/lib/zmqbus"
    # Run it for real, on a free loopback port and a folder of the test's own, then
    # ask its health check.
    port = free_port()
    argv = [
        {"tcp://0.0.0.0:9090": f"tcp://127.0.0.1:{port}", "/var/lib/zmqbus": str(tmp_path)}.get(
            arg, arg
        )
        for arg in argv
    ]
    (health,) = _dockerfile()["HEALTHCHECK"]
    check = shlex.split(health.split(" CMD ", 1)[1].split(">", 1)[0])
    check = [
        f"tcp://127.0.0.1:{port}" if arg == "tcp://127.0.0.1:9090" else arg
        for arg in check
        if arg != "$ZMQBUS_HEALTH_ARGS"  # empty by default
    ]
    assert _zmqbus(check).returncode == 3  # no broker yet: unhealthy
    broker = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", *argv[1:]],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert broker.stderr is not None
    try:
        for line in broker.stderr:
            assert json.loads(line)["level"] != "ERROR", line
            if "broker ready" in line:
                break
        r = _zmqbus(check)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["broker"]
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(10) == 0
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait(10)
        broker.stderr.close()


# --- sd_notify ----------------------------------------------------------------------


def test_the_broker_notifies_systemd_once_bound(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    notify.bind(str(path))
    notify.settimeout(15)
    address = f"ipc://{tmp_path}/bus"
    env = dict(_env(), NOTIFY_SOCKET=str(path))
    broker = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", "--bind", address],
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        ready = notify.recv(4096).decode().split("\n")
        assert "READY=1" in ready, ready
        assert f"STATUS=listening on {address}" in ready
        # Bound by then: a client gets an answer at once.
        r = _zmqbus(["zmqbus", "stats", "--address", address, "--timeout", "5"])
        assert r.returncode == 0, r.stderr
        broker.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode().split("\n") == ["STOPPING=1"]
        assert broker.wait(10) == 0
    finally:
        notify.close()
        if broker.poll() is None:
            broker.kill()
            broker.wait(10)
