"""Defects a new user hit on the faces (issue 12), each with the test that failed
before its fix: a script exiting without close() lost what it had queued, and
the asyncio bus used off its own loop failed late and vaguely."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from zmqbus import Broker, Bus, WrongEventLoop
from zmqbus.aio import Bus as AsyncBus

N = 1000
PAD = 32 * 1024

# Each script publishes N unconfirmed messages, then ends without close(). They are
# big enough (32 MiB in all) that the exit does not wait for ZeroMQ to send them
# unless zmqbus flushes.
THREADED_SCRIPT = """
import sys
import zmqbus

address, channel, n, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bus = zmqbus.Bus(address, channel)
for i in range(n):
    bus.publish("exit.flush", str(i).encode().ljust(pad), confirm=False)
"""

ASYNCIO_SCRIPT = """
import asyncio
import sys
import zmqbus.aio

address, channel, n, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def main() -> None:
    bus = await zmqbus.aio.Bus(address, channel).connect()
    for i in range(n):
        await bus.publish("exit.flush", str(i).encode().ljust(pad), confirm=False)

asyncio.run(main())
"""


def _run_script(script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("script", [THREADED_SCRIPT, ASYNCIO_SCRIPT], ids=["threaded", "asyncio"])
def test_script_exiting_without_close_delivers_everything(broker: Broker, script: str) -> None:
    channel = uuid.uuid4()
    with Bus(broker.address, channel) as sub_bus:
        sub = sub_bus.subscribe("exit.flush", maxsize=N)
        proc = _run_script(script, broker.address, str(channel), str(N), str(PAD))
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        got = []
        with contextlib.suppress(TimeoutError):
            while len(got) < N:
                got.append(sub.get(timeout=10).payload.rstrip())
        assert len(got) == N
        assert got == [str(i).encode() for i in range(N)]


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_exit_flush_waits_for_a_frozen_broker_only_close_timeout() -> None:
    # A frozen broker never answers: the flush at exit tries for close_timeout
    # (it does try: no answer is no proof the messages arrived), then gives up.
    broker = _spawn(
        "import sys; from zmqbus import Broker\n"
        "b = Broker('tcp://127.0.0.1:0').start(); print(b.address, flush=True)\n"
        "sys.stdin.readline()"
    )
    script = """
import sys
import zmqbus

bus = zmqbus.Bus(sys.argv[1], sys.argv[2], close_timeout=0.5, heartbeat=0)
bus.publish("exit.flush", b"x", confirm=False)
print("published", flush=True)
sys.stdin.readline()
"""
    try:
        address = _line(broker)
        client = _spawn(script, address, str(uuid.uuid4()))
        try:
            assert _line(client) == "published"
            os.kill(broker.pid, signal.SIGSTOP)
            assert client.stdin is not None
            start = time.monotonic()
            client.stdin.write("\n")
            client.stdin.flush()
            assert client.wait(30) == 0
            elapsed = time.monotonic() - start
            assert 0.45 <= elapsed < 1.5, elapsed  # the default close_timeout is 2 s
        finally:
            _end(client)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        _end(broker)


def test_asyncio_bus_collected_unclosed_warns(broker: Broker) -> None:
    # A loop closed without asyncio.run's shutdown cannot flush the bus: then
    # collecting it warns, as an unclosed asyncio transport does.
    loop = asyncio.new_event_loop()
    try:
        bus: Any = loop.run_until_complete(AsyncBus(broker.address, uuid.uuid4()).connect())
    finally:
        loop.close()
    with pytest.warns(ResourceWarning, match=r"unclosed <aio\.Bus .*await bus\.close\(\)"):
        del bus
        gc.collect()


# --- the asyncio bus off its own loop ---------------------------------------------


def _unhandled(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


def test_asyncio_bus_called_from_another_thread_fails_at_the_call(broker: Broker) -> None:
    channel = uuid.uuid4()

    def elsewhere(bus: AsyncBus, sub: Any) -> list[BaseException]:
        errors: list[BaseException] = []
        calls = [
            lambda: bus.publish_nowait("t", b""),  # a plain thread, no loop at all
            lambda: asyncio.run(bus.publish("t", b"")),  # a loop of its own
            lambda: asyncio.run(bus.publish("t", b"", confirm=False)),
            lambda: asyncio.run(bus.request("t", b"")),
            lambda: asyncio.run(bus.subscribe("u")),
            lambda: asyncio.run(bus.unsubscribe("t")),
            lambda: asyncio.run(sub.get(timeout=0)),
            lambda: asyncio.run(sub.unsubscribe()),
            lambda: asyncio.run(bus.close()),
        ]
        for call in calls:
            try:
                call()
            except BaseException as exc:
                errors.append(exc)
        return errors

    async def main() -> None:
        seen = _unhandled(asyncio.get_running_loop())
        async with AsyncBus(broker.address, channel) as bus:
            sub = await bus.subscribe("t")
            errors = await asyncio.to_thread(elsewhere, bus, sub)
            assert [type(e) for e in errors] == [WrongEventLoop] * 9
            owner = threading.current_thread()
            for exc in errors:
                assert isinstance(exc, WrongEventLoop)
                assert f"thread {owner.name!r}" in str(exc)
                assert exc.owner_thread == owner.ident
            # Untouched by the attempts: nothing queued for it, and it still works.
            assert (await bus.publish("t", b"ok")).delivered == 1
            assert (await sub.get(timeout=5)).payload == b"ok"
            assert not sub.closed
        gc.collect()
        await asyncio.sleep(0)
        assert seen == []

    asyncio.run(main())


def test_asyncio_bus_called_from_another_loop_on_its_thread(broker: Broker) -> None:
    owner, other = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        bus = owner.run_until_complete(AsyncBus(broker.address, uuid.uuid4()).connect())
        with pytest.raises(WrongEventLoop, match="belongs to event loop") as info:
            other.run_until_complete(bus.publish("t", b""))
        assert info.value.owner_loop is owner
        assert (owner.run_until_complete(bus.publish("t", b""))).buses == 0
        owner.run_until_complete(bus.close())
    finally:
        owner.close()
        other.close()


def test_readme_shows_broker_start_stop_and_asyncio_connect() -> None:
    # A new user found neither in the README; tests/test_readme.py runs these blocks.
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme.read_text(), re.S))
    assert "Broker(" in code and ".start()" in code and "broker.stop()" in code
    assert "await Bus(" in code and ".connect()" in code and "await bus.close()" in code
