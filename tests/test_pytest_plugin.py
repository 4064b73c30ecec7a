"""The pytest plugin (``zmqbus.testing``): its fixtures as a user's tests take them, in
pytest runs of their own (pytester, in subprocesses: zmq contexts and the session's
broker stay out of this one), the README's example, and ``collect``/``acollect``.

The plugin is loaded through its entry point, so the package must be installed
(``pip install -e .``) with the current pyproject.toml.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import zmqbus.aio
from zmqbus import Broker, Bus
from zmqbus.testing import CollectTimeout, acollect, collect

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parent.parent / "README.md"
HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None
HAS_ANYIO = importlib.util.find_spec("anyio") is not None
# Each inner run: a deadline per test, and the warnings this suite makes errors.
INNER = (
    "--timeout=60",
    "-W",
    "error::pytest.PytestUnraisableExceptionWarning",
    "-W",
    "error::pytest.PytestUnhandledThreadExceptionWarning",
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*INNER, *args, timeout=90)


# --- the plugin is installed and cheap ------------------------------------------


def test_the_entry_point_is_installed(request: pytest.FixtureRequest) -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in points if p.name == "zmqbus"] == ["zmqbus.testing"], (
        "reinstall the package (pip install -e .) to register the pytest11 entry point"
    )
    assert request.config.pluginmanager.has_plugin("zmqbus")


def test_import_zmqbus_imports_neither_the_plugin_nor_pytest() -> None:
    code = "import sys, zmqbus; print(sorted({'pytest', 'zmqbus.testing'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


# --- the fixtures in a user's tests ---------------------------------------------

FIXTURES_CONFTEST = """
import pathlib

import pytest

from zmqbus import Broker


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    # The session's broker is stopped by now: its port must be free again.
    path = pathlib.Path("session_broker.txt")
    if path.exists():
        address = path.read_text()
        try:
            Broker(address).start().stop()
            path.write_text("released " + address)
        except Exception as exc:
            path.write_text(f"still bound {address}: {exc!r}")
"""

FIXTURES_TEST = """
import pathlib
import sys
import threading
import uuid

import pytest

from zmqbus import Broker, Bus
from zmqbus.testing import CollectTimeout, collect

seen = {}


def test_unused_the_plugin_costs_nothing():
    assert "zmqbus.testing" in sys.modules
    assert "zmqbus.aio" not in sys.modules
    assert not [t.name for t in threading.enumerate() if t.name.startswith("zmqbus")]


def test_round_trip(zmqbus_bus, zmqbus_collect, zmqbus_broker, zmqbus_channel):
    assert zmqbus_bus.address == zmqbus_broker.address
    assert zmqbus_bus.channel_id == zmqbus_channel
    orders = zmqbus_bus.subscribe("orders.*")
    for i in range(3):
        assert zmqbus_bus.publish(f"orders.n{i}", str(i).encode()).delivered == 1
    assert [m.payload for m in zmqbus_collect(orders, 3)] == [b"0", b"1", b"2"]
    late = r"^0 of 1 messages arrived on 'orders.\\*' within 0.2s$"
    with pytest.raises(CollectTimeout, match=late):
        collect(orders, 1, timeout=0.2)


def test_more_buses_on_the_channel(zmqbus_broker, zmqbus_channel, zmqbus_bus):
    with Bus(zmqbus_broker.address, zmqbus_channel) as other:
        inbox = other.subscribe("ping")
        assert zmqbus_bus.publish("ping", b"x").delivered == 1
        assert collect(inbox, 1)[0].payload == b"x"


def test_channel_is_fresh_a(zmqbus_channel):
    assert isinstance(zmqbus_channel, uuid.UUID)
    seen["channel"] = zmqbus_channel


def test_channel_is_fresh_b(zmqbus_channel):
    assert zmqbus_channel != seen["channel"]


def test_file_streams_under_tmp_path(zmqbus_bus, tmp_path):
    info = zmqbus_bus.add_stream("ORDERS", ["orders.>"])
    assert info.config["storage"] == "file"
    assert zmqbus_bus.publish("orders.created", b"1").seq == 1
    assert any((tmp_path / "zmqbus-broker").iterdir())
    [msg] = collect(zmqbus_bus.consume("ORDERS"), 1)
    assert (msg.stream, msg.seq, msg.payload) == ("ORDERS", 1, b"1")
    msg.ack()


def test_port_released_a(zmqbus_broker):
    assert zmqbus_broker.running
    seen["address"] = zmqbus_broker.address


def test_port_released_b():
    # The previous test's broker was stopped after it: its port binds again.
    with Broker(seen["address"]) as again:
        assert again.address == seen["address"]


def test_session_broker_a(zmqbus_broker_session, zmqbus_channel):
    seen["session"] = (zmqbus_broker_session.address, zmqbus_channel)
    pathlib.Path("session_broker.txt").write_text(zmqbus_broker_session.address)
    with Bus(zmqbus_broker_session.address, zmqbus_channel) as bus:
        bus.add_stream("KEPT", ["kept.>"])
        assert bus.publish("kept.one", b"1").seq == 1


def test_session_broker_b(zmqbus_broker_session, zmqbus_broker):
    address, channel = seen["session"]
    assert zmqbus_broker_session.address == address != zmqbus_broker.address
    with Bus(address, channel) as bus:
        assert bus.stream_info("KEPT").messages == 1
"""


def test_fixtures_in_a_users_tests(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FIXTURES_CONFTEST)
    pytester.makepyfile(test_fixtures=FIXTURES_TEST)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=10)
    status = (pytester.path / "session_broker.txt").read_text()
    assert status.startswith("released tcp://127.0.0.1:"), status


# --- zmqbus_aio_bus ---------------------------------------------------------------

AIO_TEST = """
import pytest

from zmqbus.testing import acollect


async def round_trip(bus):
    orders = await bus.subscribe("orders.*")
    await bus.publish("orders.created", b"1")
    await bus.publish("orders.paid", b"2", confirm=False)
    assert [m.payload for m in await acollect(orders, 2)] == [b"1", b"2"]


@pytest.mark.asyncio
async def test_marked(zmqbus_aio_bus, zmqbus_broker, zmqbus_channel):
    assert zmqbus_aio_bus.address == zmqbus_broker.address
    assert zmqbus_aio_bus.channel_id == zmqbus_channel
    await round_trip(zmqbus_aio_bus)


async def test_unmarked(zmqbus_aio_bus):
    await round_trip(zmqbus_aio_bus)
"""


def test_aio_bus_without_an_async_plugin_fails_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_aio=AIO_TEST)
    result = run(pytester, "-p", "no:asyncio", "-p", "no:anyio")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*zmqbus_aio_bus is an async fixture, and no plugin runs it*install pytest-asyncio*"]
    )
    # It fails before anything is set up: no coroutine left unawaited, no pytest warning.
    result.stdout.no_fnmatch_line("*requested an async fixture*")


@pytest.mark.skipif(not HAS_PYTEST_ASYNCIO, reason="pytest-asyncio is not installed")
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_aio_bus_with_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_aio=AIO_TEST)
    result = run(pytester, "-p", "no:anyio", "-o", f"asyncio_mode={mode}")
    if mode == "auto":
        result.assert_outcomes(passed=2)
    else:  # the unmarked test is not pytest-asyncio's: it is told how to make it so
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*zmqbus_aio_bus is for asyncio tests: *mark it*"])


@pytest.mark.skipif(not HAS_ANYIO, reason="anyio is not installed")
def test_aio_bus_with_anyio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_aio="""
        import pytest

        from zmqbus.testing import acollect


        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param


        @pytest.mark.anyio
        async def test_anyio(zmqbus_aio_bus):
            orders = await zmqbus_aio_bus.subscribe("orders.*")
            await zmqbus_aio_bus.publish("orders.created", b"1")
            assert [m.payload for m in await acollect(orders, 1)] == [b"1"]
        """
    )
    result = run(pytester, "-p", "no:asyncio")
    result.assert_outcomes(passed=1, errors=1)  # trio: told to use asyncio
    result.stdout.fnmatch_lines(["*zmqbus_aio_bus runs on asyncio, not on anyio's 'trio'*"])


# --- the README's example -----------------------------------------------------------


def _readme_files() -> dict[str, str]:
    text = README.read_text()
    match = re.search(r"^## Testing your code with zmqbus\n(.*?)(?=^## )", text, re.S | re.M)
    assert match is not None, "README has no section 'Testing your code with zmqbus'"
    blocks = re.findall(r"^```\n# (\S+\.py)\n(.*?)^```", match.group(1), re.S | re.M)
    return dict(blocks)


def test_readme_example(pytester: pytest.Pytester) -> None:
    files = _readme_files()
    assert {"conftest.py", "test_orders.py", "test_orders_async.py"} <= set(files)
    args = []
    if not HAS_PYTEST_ASYNCIO:
        del files["test_orders_async.py"]
    else:
        args = ["-p", "no:anyio"]
    for name, code in files.items():
        (pytester.path / name).write_text(code)
    result = run(pytester, *args)
    tests = sum(
        code.count("\ndef test_") + code.count("\nasync def test_") for code in files.values()
    )
    result.assert_outcomes(passed=tests)


# --- collect and acollect -------------------------------------------------------------


def test_collect(broker: Broker, channel: uuid.UUID) -> None:
    with Bus(broker.address, channel) as bus:
        sub = bus.subscribe("t.>")
        assert collect(sub, 0, timeout=0) == []
        for i in range(3):
            bus.publish(f"t.{i}", b"%d" % i)
        assert [m.topic for m in collect(sub, 2)] == ["t.0", "t.1"]
        with pytest.raises(CollectTimeout) as caught:
            collect(sub, 2, timeout=0.1)  # the third is there, a fourth never comes
        assert str(caught.value) == "1 of 2 messages arrived on 't.>' within 0.1s"
        assert isinstance(caught.value, AssertionError)
        assert isinstance(caught.value, TimeoutError)
        assert [m.topic for m in caught.value.messages] == ["t.2"]

        bus.publish("t.end", b"")
        sub.unsubscribe()
        with pytest.raises(AssertionError, match=r"^subscription 't.>' ended after 1 of 2"):
            collect(sub, 2)

        for bad in (-1, 1.0, True):
            with pytest.raises(ValueError, match="count"):
                collect(sub, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            collect(sub, 1, timeout=-1)


def test_collect_counts_drops(broker: Broker, channel: uuid.UUID) -> None:
    with Bus(broker.address, channel) as bus:
        sub = bus.subscribe("full", maxsize=1)
        bus.publish("full", b"1")
        bus.publish("full", b"2")  # the buffer holds one: dropped
        with pytest.raises(CollectTimeout, match=r"^1 of 2 messages .* within 0.1s \(1 dropped\)$"):
            collect(sub, 2, timeout=0.1)


def test_acollect(broker: Broker, channel: uuid.UUID) -> None:
    async def main() -> None:
        async with zmqbus.aio.Bus(broker.address, channel) as bus:
            sub = await bus.subscribe("t.*")
            for i in range(3):
                await bus.publish(f"t.{i}", b"")
            assert [m.topic for m in await acollect(sub, 2)] == ["t.0", "t.1"]
            with pytest.raises(CollectTimeout, match=r"^1 of 2 messages arrived on 't.\*'"):
                await acollect(sub, 2, timeout=0.1)
            await sub.unsubscribe()
            with pytest.raises(AssertionError, match="ended after 0 of 1"):
                await acollect(sub, 1)

    asyncio.run(main())
