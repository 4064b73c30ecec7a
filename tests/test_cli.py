"""The ``zmqbus`` command, run as real subprocesses (``python -m zmqbus``).

Processes are synchronised on the lines they print (the broker's "listening on
ADDRESS", the subscriber's "subscribed to PATTERN"), never on sleeps; every
wait has a small timeout.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from zmqbus import Bus, Limits, Message, __version__

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # seconds any one expected line or exit may take


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ZMQBUS_ADDRESS", None)
    env.pop("ZMQBUS_CHANNEL", None)
    return env


def run(
    *args: str, timeout: float = WAIT, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``zmqbus ARGS`` to completion; ``stdin`` is fed as raw bytes."""
    r = subprocess.run(
        [sys.executable, "-m", "zmqbus", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
        env=env if env is not None else _env(),
        check=False,
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8")
    )


class Proc:
    """A running ``zmqbus`` subprocess whose stdout and stderr lines are read by
    threads into queues, so tests can wait for a line with a timeout."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "zmqbus", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        self.lines: dict[str, queue.Queue[str | None]] = {
            "stdout": queue.Queue(),
            "stderr": queue.Queue(),
        }
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(
                target=self._read, args=(name, stream), daemon=True, name=f"cli-{name}"
            )
            for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for t in self._readers:
            t.start()

    def _read(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines[name].put(line.rstrip("\n"))
        self.lines[name].put(None)

    def expect(self, pattern: str, stream: str = "stderr", timeout: float = WAIT) -> re.Match[str]:
        """Wait for a line of ``stream`` matching ``pattern``; fail with what was seen."""
        rx = re.compile(pattern)
        q = self.lines[stream]
        while True:
            try:
                line = q.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(
                    f"no {stream} line matching {pattern!r} within {timeout}s; {self.dump()}"
                )
            if line is None:
                q.put(None)  # keep the end marker for later readers
                pytest.fail(f"{stream} closed before a line matching {pattern!r}; {self.dump()}")
            self.seen[stream].append(line)
            m = rx.search(line)
            if m:
                return m

    def rest(self, stream: str) -> list[str]:
        """Every remaining line of ``stream``; call after the process has exited."""
        for t in self._readers:
            t.join(WAIT)
        out: list[str] = []
        q = self.lines[stream]
        while True:
            line = q.get(timeout=WAIT)
            if line is None:
                q.put(None)
                return out
            self.seen[stream].append(line)
            out.append(line)

    def wait(self, timeout: float = WAIT) -> int:
        return self.popen.wait(timeout)

    def dump(self) -> str:
        return f"stdout so far: {self.seen['stdout']!r}, stderr so far: {self.seen['stderr']!r}"

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT)
        for t in self._readers:
            t.join(WAIT)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Holder of started processes; any still running is killed after the test."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def start(procs: list[Proc], *args: str) -> Proc:
    p = Proc(*args)
    procs.append(p)
    return p


@pytest.fixture
def cli_broker(procs: list[Proc]) -> tuple[Proc, str]:
    """A ``zmqbus broker`` on a free port; returns the process and its address."""
    p = start(procs, "broker", "--bind", "tcp://127.0.0.1:0")
    m = p.expect(r"listening on (tcp://127\.0\.0\.1:\d+)")
    return p, m.group(1)


def free_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_sub(procs: list[Proc], address: str, channel: str, pattern: str, *extra: str) -> Proc:
    """A ``zmqbus sub`` whose subscription the broker has confirmed."""
    p = start(procs, "sub", pattern, "--channel", channel, "--address", address, *extra)
    p.expect(rf"^subscribed to {re.escape(pattern)}( |$)")
    return p


# --- version and help -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_version() -> None:
    r = run("version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"zmqbus {__version__} (pyzmq ")
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"zmqbus {__version__}"


@pytest.mark.timeout(30)
def test_help_documents_exit_codes() -> None:
    r = run("--help")
    assert r.returncode == 0
    for line in (
        "exit codes:",
        "  2  bad input",
        "  3  the broker did not answer",
        "  4  timed out",
    ):
        assert line in r.stdout
    r = run("pub", "--help")
    assert r.returncode == 0 and "exit codes:" in r.stdout


def help_synopsis(text: str) -> list[str]:
    """The synopsis that opens ``zmqbus --help``, without "usage: " and its indent."""
    head = text.split("\n\n", 1)[0].splitlines()
    assert head[0].startswith("usage: "), text
    return [line[len("usage: ") :] for line in head]


@pytest.mark.timeout(60)
def test_help_synopsis_lists_every_option_of_every_command() -> None:
    r = run("--help")
    assert r.returncode == 0, r.stderr
    lines = help_synopsis(r.stdout)
    # A command's entry: its first line and the continuation lines under it.
    entries: dict[str, str] = {}
    for line in lines:
        if line.startswith("zmqbus "):
            name = line.split()[1]
            entries[name] = line
        else:
            assert line.startswith(" "), lines
            entries[name] += line
    commands = re.findall(r"^    ([a-z]+) ", r.stdout, re.M)
    assert {"broker", "pub", "sub", "demo", "stats", "version"} <= set(commands), r.stdout
    for command in commands:
        own = run(command, "--help")
        assert own.returncode == 0, own.stderr
        # The options the command's help describes, one per entry of its list.
        options = set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", own.stdout, re.M))
        options -= {"--help"}
        if command == "broker":
            # The limits stand as one [LIMITS] there; its own help lists each.
            assert "[LIMITS]" in entries[command]
            options -= {"--" + name.replace("_", "-") for name in Limits().as_dict()}
        missing = {o for o in options if not re.search(rf"{o}(?![\w-])", entries[command])}
        assert not missing, f"{command}: {sorted(missing)} not in {entries[command]!r}"
    assert "--buffer N" in entries["sub"]
    assert "--log-level LEVEL" in entries["pub"]
    assert all(len(line) <= 79 for line in r.stdout.split("\n\n", 1)[0].splitlines())


@pytest.mark.timeout(30)
def test_no_command_is_usage_error() -> None:
    r = run()
    assert r.returncode == 2
    assert "usage:" in r.stderr


# --- demo -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_demo_runs_every_section() -> None:
    r = run("demo", timeout=50)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for text in (
        "== 1. basic pub/sub",
        'alice got orders.created: {"id": 123}',
        "== 2. fan-out",
        "delivered=2 dropped=0 failed=0 buses=2",
        "bob   got: order 123 paid",
        "== 3. headers",
        "'user_id': '123'",
        "== 4. wildcards",
        "alice (audit.>) got: audit.user.login, audit.order.created, audit.logout",
        "bob   (audit.*) got: audit.logout",
        "== 5. a handler raises",
        "publish raised HandlerError: 1 handler failed: ValueError: card declined for order 123",
        "== 6. fire and forget",
        "sent (not confirmed)",
        "== 7. latency: 2000 confirmed publishes",
        "msgs/s",
        "ONE process sharing the GIL",
    ):
        assert text in out, f"{text!r} missing from demo output:\n{out}"
    assert re.search(r"p50 \d+ µs  p90 \d+ µs  p99 \d+ µs  max \d+ µs", out), out
    assert r.stderr == ""


@pytest.mark.timeout(30)
def test_demo_count() -> None:
    r = run("demo", "--count", "50")
    assert r.returncode == 0, r.stderr
    assert "== 7. latency: 50 confirmed publishes" in r.stdout


# --- broker, sub and pub together -------------------------------------------------


@pytest.mark.timeout(40)
def test_pub_delivers_to_sub(procs: list[Proc], cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    channel = str(uuid.uuid4())
    sub = start_sub(procs, address, channel, "orders.>", "--count", "1", "--timeout", "10")
    r = run(
        "pub", "orders.created", 'hello {"id": 1}', "--channel", channel,
        "--address", address, "--header", "source=api", "--header", "trace=a=b",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "delivered=1 dropped=0 failed=0 buses=1"
    line = sub.expect(r"^orders\.created ", stream="stdout")
    assert line.string == 'orders.created {"source":"api","trace":"a=b"} hello {"id": 1}'
    assert sub.wait() == 0
    assert sub.rest("stdout") == []


@pytest.mark.timeout(40)
def test_sub_background_returns_once_subscribed(
    procs: list[Proc], cli_broker: tuple[Proc, str]
) -> None:
    _, address = cli_broker
    channel = str(uuid.uuid4())
    sub = start(
        procs, "sub", "orders.>", "--channel", channel, "--address", address,
        "--count", "1", "--timeout", "20", "--background",
    )  # fmt: skip
    # The command itself ends once subscribed; its child keeps the output pipes.
    assert sub.wait() == 0
    ready = sub.expect(r"^subscribed to orders\.> on channel \S+ \(in the background, pid (\d+)\)$")
    assert int(ready.group(1)) != sub.popen.pid
    # No wait between: the subscription is in place when the command returns.
    r = run("pub", "orders.created", "now", "--channel", channel, "--address", address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "delivered=1 dropped=0 failed=0 buses=1"
    assert sub.expect(r"^orders\.", stream="stdout").string == "orders.created {} now"
    # The child exits after --count 1, closing the pipes it inherited.
    assert sub.rest("stdout") == []


@pytest.mark.timeout(30)
def test_sub_background_failing_before_subscribed_exits_with_its_code() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    r = run(
        "sub", "a.b", "--channel", CHANNEL, "--address", address,
        "--connect-timeout", "0.5", "--background",
    )  # fmt: skip
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"no answer from broker at {address} within 0.5s" in r.stderr


@pytest.mark.timeout(40)
def test_sub_json_and_stdin_payload(procs: list[Proc], cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    channel = str(uuid.uuid4())
    sub = start_sub(procs, address, channel, "bin.*", "--count", "2", "--json", "--timeout", "10")
    payload = bytes(range(256))
    r = run("pub", "bin.raw", "-", "--channel", channel, "--address", address, stdin=payload)
    assert r.returncode == 0, r.stderr
    r = run("pub", "bin.text", "line1\nline2", "--channel", channel, "--address", address)
    assert r.returncode == 0, r.stderr
    first = json.loads(sub.expect(r"^\{", stream="stdout").string)
    second = json.loads(sub.expect(r"^\{", stream="stdout").string)
    assert sub.wait() == 0
    assert first["topic"] == "bin.raw"
    assert base64.b64decode(first["payload"]) == payload
    assert first["headers"] == {}
    uuid.UUID(first["id"])
    assert second["topic"] == "bin.text"
    assert base64.b64decode(second["payload"]) == b"line1\nline2"


@pytest.mark.timeout(40)
def test_sub_text_escapes_keep_one_line_per_message(
    procs: list[Proc], cli_broker: tuple[Proc, str]
) -> None:
    _, address = cli_broker
    channel = str(uuid.uuid4())
    sub = start_sub(procs, address, channel, "t", "--count", "1", "--timeout", "10")
    r = run("pub", "t", "-", "--channel", channel, "--address", address, stdin=b"a\nb\xff\x00c")
    assert r.returncode == 0, r.stderr
    line = sub.expect(r"^t ", stream="stdout")
    assert line.string == "t {} a\\nb\\xff\\x00c"
    assert sub.wait() == 0


@pytest.mark.timeout(40)
def test_pub_no_confirm(procs: list[Proc], cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    channel = str(uuid.uuid4())
    sub = start_sub(procs, address, channel, "fire", "--count", "1", "--timeout", "10")
    r = run("pub", "fire", "forget", "--no-confirm", "--channel", channel, "--address", address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sent (not confirmed)"
    assert sub.expect(r"^fire ", stream="stdout").string == "fire {} forget"
    assert sub.wait() == 0


@pytest.mark.timeout(30)
def test_pub_without_subscribers(cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    r = run("pub", "nobody.listens", "x", "--channel", str(uuid.uuid4()), "--address", address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "delivered=0 dropped=0 failed=0 buses=0"


@pytest.mark.timeout(30)
def test_pub_handler_error_exits_1(cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    channel = uuid.uuid4()

    def refuse(msg: Message) -> None:
        raise RuntimeError(f"refused {msg.payload.decode()}")

    with Bus(address, channel) as bus:
        bus.subscribe("jobs.email", refuse)
        r = run("pub", "jobs.email", "job-7", "--channel", str(channel), "--address", address)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "zmqbus pub: 1 handler failed:",
        "  RuntimeError: refused job-7",
        "delivered=0 dropped=0 failed=1 buses=1",
    ]
    assert r.stdout == ""


@pytest.mark.timeout(30)
def test_pub_prints_each_handler_error_once(cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    channel = uuid.uuid4()

    def refuse(who: str) -> Callable[[Message], None]:
        def handler(msg: Message) -> None:
            raise RuntimeError(f"{who} refused {msg.payload.decode()}")

        return handler

    with Bus(address, channel) as a, Bus(address, channel) as b:
        a.subscribe("jobs.email", refuse("a"))
        b.subscribe("jobs.email", refuse("b"))
        r = run("pub", "jobs.email", "job-8", "--channel", str(channel), "--address", address)
    assert r.returncode == 1
    assert r.stderr.count("a refused job-8") == 1, r.stderr
    assert r.stderr.count("b refused job-8") == 1, r.stderr
    assert r.stderr.splitlines()[0] == "zmqbus pub: 2 handlers failed:"
    assert r.stderr.splitlines()[-1] == "delivered=0 dropped=0 failed=2 buses=2"


@pytest.mark.timeout(30)
def test_sub_timeout(cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    channel = str(uuid.uuid4())
    common = ("--channel", channel, "--address", address, "--timeout", "0.3")
    r = run("sub", "quiet", "--count", "1", *common)
    assert r.returncode == 4
    assert "0 of 1 messages" in r.stderr
    # Without --count, the timeout is the plan: exit 0.
    r = run("sub", "quiet", *common)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sub_stops_on_signal(procs: list[Proc], cli_broker: tuple[Proc, str], sig: int) -> None:
    _, address = cli_broker
    sub = start_sub(procs, address, str(uuid.uuid4()), "forever")
    sub.popen.send_signal(sig)
    assert sub.wait(5) == 0
    assert not any("Traceback" in line for line in sub.rest("stderr"))


@pytest.mark.timeout(60)
def test_sub_logs_losing_and_regaining_the_broker(procs: list[Proc], tmp_path: Path) -> None:
    # An ipc endpoint, so the second broker gets the same address without a port race.
    address = f"ipc://{tmp_path}/broker"
    broker = start(procs, "broker", "--bind", address)
    broker.expect(r"broker ready")
    channel = str(uuid.uuid4())
    sub = start_sub(procs, address, channel, "news.*", "--count", "1", "--timeout", "40")
    broker.popen.send_signal(signal.SIGTERM)
    assert broker.wait() == 0
    sub.expect(r"WARNING .*lost the broker")
    again = start(procs, "broker", "--bind", address)
    again.expect(r"broker ready")
    sub.expect(rf"WARNING zmqbus\.cli: reconnected to the broker at {re.escape(address)}$")
    # The subscription came back with it.
    r = run("pub", "news.today", "back", "--channel", channel, "--address", address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "delivered=1 dropped=0 failed=0 buses=1"
    assert sub.expect(r"^news\.today ", stream="stdout").string == "news.today {} back"
    assert sub.wait() == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_broker_stops_cleanly_on_signal(procs: list[Proc], sig: int) -> None:
    broker = start(procs, "broker", "--bind", "tcp://127.0.0.1:0")
    broker.expect(r"listening on tcp://")
    broker.expect(r"broker ready")
    broker.popen.send_signal(sig)
    assert broker.wait(5) == 0
    rest = broker.rest("stderr")
    assert any(f"received {signal.Signals(sig).name}" in line for line in rest), rest
    assert any("stopped" in line for line in rest), rest
    assert not any("Traceback" in line for line in rest), rest
    assert broker.rest("stdout") == []


@pytest.mark.timeout(30)
def test_broker_bind_in_use_exits_1(procs: list[Proc], cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    r = run("broker", "--bind", address)
    assert r.returncode == 1
    assert "cannot bind" in r.stderr


@pytest.mark.timeout(30)
def test_broker_bad_bind_exits_2() -> None:
    r = run("broker", "--bind", "nonsense")
    assert r.returncode == 2
    assert "cannot bind to 'nonsense'" in r.stderr


# --- bad input and unreachable broker ---------------------------------------------


CHANNEL = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("pub", "a.b", "x", "--channel", "not-a-uuid"), "not a UUID"),
        (("pub", "a.b", "x", "--channel", CHANNEL, "--header", "novalue"), "KEY=VALUE"),
        (("pub", "a.b", "x", "--channel", CHANNEL, "--header", "=v"), "KEY=VALUE"),
        (("pub", "a.b", "x", "--channel", CHANNEL, "--header", "k=1", "--header", "k=2"), "twice"),
        (("pub", "a.*", "x", "--channel", CHANNEL), "cannot publish to a pattern"),
        (("pub", "a..b", "x", "--channel", CHANNEL), "empty token"),
        (("pub", "a.b", "x", "--channel", CHANNEL, "--address", "nonsense"), "cannot connect"),
        (("pub", "a.b", "x", "--channel", CHANNEL, "--timeout", "0"), "positive"),
        (("pub", "a.b", "x"), "--channel"),
        (("sub", "a.>.b", "--channel", CHANNEL), "'>' may only be the last token"),
        (("sub", "a", "--channel", "xyz"), "not a UUID"),
        (("sub", "a", "--channel", CHANNEL, "--count", "0"), "at least 1"),
    ],
)
def test_bad_input_exits_2(args: tuple[str, ...], complaint: str) -> None:
    # The address is never reachable: bad input must be refused before connecting.
    address = f"tcp://127.0.0.1:{free_port()}"
    if "--address" not in args:
        args = (*args, "--address", address, "--connect-timeout", "0.5")
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert complaint in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", [("pub", "a.b", "x"), ("sub", "a.b")])
def test_unreachable_broker_exits_3(command: tuple[str, ...]) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    r = run(*command, "--channel", CHANNEL, "--address", address, "--connect-timeout", "0.5")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"no answer from broker at {address} within 0.5s" in r.stderr
    assert r.stdout == ""


@pytest.mark.timeout(30)
def test_channel_from_environment(cli_broker: tuple[Proc, str]) -> None:
    _, address = cli_broker
    env = _env()
    env["ZMQBUS_CHANNEL"] = str(uuid.uuid4())
    env["ZMQBUS_ADDRESS"] = address
    r = run("pub", "env.topic", "x", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "delivered=0 dropped=0 failed=0 buses=0"


def _wheel_packages() -> list[str]:
    """The top-level import packages the wheel holds, as pyproject.toml lists them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["setuptools"]["packages"]
    return [name for name in packages if "." not in name]


@pytest.mark.timeout(60)
def test_the_installed_packages_bench_needs_nothing_of_the_checkout(tmp_path: Path) -> None:
    # What `pip install .` installs, and nothing of the checkout: perf/ is not in it, so
    # the bench the command offers must run without it (an embedded broker and buses).
    site = tmp_path / "site"
    for package in _wheel_packages():
        shutil.copytree(ROOT / package, site / package)
    assert not (site / "perf").exists()
    env = _env()
    env["PYTHONPATH"] = str(site)
    bench = subprocess.run(
        [sys.executable, "-m", "zmqbus", "bench", "--count", "100"],
        capture_output=True, text=True, timeout=50, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "msgs/s" in bench.stdout


@pytest.mark.timeout(120)
def test_bench_prints_latency_and_throughput_with_plain_progress_off_a_terminal() -> None:
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "zmqbus", "bench", "--count", "400", "--size", "16"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert "bench: 400 messages of 16 bytes" in done.stdout
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,]+) msgs/s", done.stdout)]
    assert len(rates) == 2 and all(r > 0 for r in rates)
    p50, p99 = (int(x) for x in re.findall(r"p(?:50|99) (\d+) µs", done.stdout))
    assert 0 < p50 <= p99
    # Off a terminal: one plain line per quarter, no escape codes.
    assert "bench:   400/400" in done.stderr and "\x1b[" not in done.stderr
