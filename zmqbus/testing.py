"""A pytest plugin: a broker, a channel and buses for your tests, and ``collect``.

Installed with ``pip install zmqbus[testing]``, pytest loads it by itself (entry
point ``pytest11``, name ``zmqbus``). ``import zmqbus`` never imports it.

Fixtures:

- ``zmqbus_broker``: a started ``Broker("tcp://127.0.0.1:0")`` on a free port, with
  a ``data_dir`` under the test's ``tmp_path``; stopped (its port freed) after the test.
- ``zmqbus_broker_session``: the same, one for the whole session.
- ``zmqbus_channel``: a fresh ``uuid.UUID`` per test.
- ``zmqbus_bus``: a ``zmqbus.Bus`` connected to ``zmqbus_broker`` on ``zmqbus_channel``,
  closed after the test.
- ``zmqbus_aio_bus``: the same as a ``zmqbus.aio.Bus``, for async tests run by
  pytest-asyncio (``@pytest.mark.asyncio``) or by anyio (``@pytest.mark.anyio``, asyncio
  backend); without either it fails the test saying so.
- ``zmqbus_collect``: ``collect``, below.

``collect(subscription, count, timeout)`` and ``await acollect(...)`` take ``count``
messages from a queue subscription, or raise ``CollectTimeout`` (an ``AssertionError``
and a ``TimeoutError``) saying how many of them arrived in time.
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

from .broker import Broker
from .bus import Bus, Subscription
from .errors import SubscriptionClosed
from .message import Message

if TYPE_CHECKING:
    import zmqbus.aio

__all__ = ["CollectTimeout", "acollect", "collect"]  # the fixtures come with the plugin

log = logging.getLogger("zmqbus.testing")

_F = TypeVar("_F", bound=Callable[..., Any])

_BIND = "tcp://127.0.0.1:0"
_DATA_DIR = "zmqbus-broker"  # the brokers' data_dir, under the test's (or session's) tmp path

_NO_ASYNC_PLUGIN = (
    "zmqbus_aio_bus is an async fixture, and no plugin runs it on an event loop: "
    "install pytest-asyncio (pip install pytest-asyncio) and mark the test "
    "@pytest.mark.asyncio (or set asyncio_mode = auto), or use anyio's plugin "
    "(pip install anyio) and mark it @pytest.mark.anyio"
)


# --- collecting messages ------------------------------------------------------


class CollectTimeout(AssertionError, TimeoutError):
    """Fewer than ``count`` messages arrived in time; ``messages`` holds those that did."""

    def __init__(self, text: str, messages: list[Message]) -> None:
        super().__init__(text)
        self.messages = messages


def _check(count: int, timeout: float) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int, 0 or more, not {count!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds, 0 or more, not {timeout!r}")


def _late(
    sub: Subscription | zmqbus.aio.Subscription, got: list[Message], count: int, timeout: float
) -> CollectTimeout:
    dropped = f" ({sub.dropped} dropped)" if sub.dropped else ""
    return CollectTimeout(
        f"{len(got)} of {count} messages arrived on {sub.pattern!r} within {timeout:g}s{dropped}",
        got,
    )


def _ended(
    sub: Subscription | zmqbus.aio.Subscription, got: list[Message], count: int
) -> AssertionError:
    return AssertionError(
        f"subscription {sub.pattern!r} ended after {len(got)} of {count} messages"
    )


def collect(subscription: Subscription, count: int, timeout: float = 5.0) -> list[Message]:
    """The next ``count`` messages of a queue subscription (or consumer), in order,
    all within ``timeout`` seconds together; later ones stay in the subscription.

    Raises ``CollectTimeout`` if fewer arrive in time, ``AssertionError`` if the
    subscription ends first.
    """
    _check(count, timeout)
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while len(got) < count:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            got.append(subscription.get(timeout=remaining))
        except TimeoutError:
            raise _late(subscription, got, count, timeout) from None
        except SubscriptionClosed:
            raise _ended(subscription, got, count) from None
    return got


async def acollect(
    subscription: zmqbus.aio.Subscription, count: int, timeout: float = 5.0
) -> list[Message]:
    """``collect`` for a ``zmqbus.aio`` subscription (or consumer), awaited."""
    _check(count, timeout)
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while len(got) < count:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            got.append(await subscription.get(timeout=remaining))
        except TimeoutError:
            raise _late(subscription, got, count, timeout) from None
        except SubscriptionClosed:
            raise _ended(subscription, got, count) from None
    return got


# --- fixtures -----------------------------------------------------------------


def _serve(data_dir: Path, owner: str) -> Iterator[Broker]:
    with Broker(_BIND, data_dir=data_dir) as broker:
        log.debug("broker for %s on %s, data_dir %s", owner, broker.address, data_dir)
        yield broker
    log.debug("broker for %s on %s stopped", owner, broker.address)


@pytest.fixture
def zmqbus_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A started Broker on tcp://127.0.0.1 and a free port, data_dir
    ``tmp_path / "zmqbus-broker"``; stopped, its port freed, after the test."""
    yield from _serve(tmp_path / _DATA_DIR, request.node.nodeid)


@pytest.fixture(scope="session")
def zmqbus_broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A started Broker on tcp://127.0.0.1 and a free port for the whole session,
    data_dir under the session's base temp dir; stopped at the end."""
    yield from _serve(tmp_path_factory.mktemp(_DATA_DIR), "the session")


@pytest.fixture
def zmqbus_channel() -> uuid.UUID:
    """A fresh channel ID (uuid4) for the test."""
    return uuid.uuid4()


@pytest.fixture
def zmqbus_bus(zmqbus_broker: Broker, zmqbus_channel: uuid.UUID) -> Iterator[Bus]:
    """A zmqbus.Bus connected to ``zmqbus_broker`` on ``zmqbus_channel``; closed after."""
    with Bus(zmqbus_broker.address, zmqbus_channel) as bus:
        yield bus


@pytest.fixture
def zmqbus_collect() -> Callable[..., list[Message]]:
    """``zmqbus.testing.collect(subscription, count, timeout=5.0)``."""
    return collect


@pytest.fixture
def _zmqbus_event_loop(request: pytest.FixtureRequest) -> None:
    """Fails the test, saying what to do, where no plugin would run
    ``zmqbus_aio_bus`` on the test's asyncio loop."""
    plugins = request.config.pluginmanager
    if plugins.has_plugin("anyio") and "anyio_backend" in request.fixturenames:
        backend = request.getfixturevalue("anyio_backend")
        name = backend if isinstance(backend, str) else backend[0]
        if name != "asyncio":
            pytest.fail(
                f"zmqbus_aio_bus runs on asyncio, not on anyio's {name!r} backend: "
                "run this test with anyio_backend 'asyncio'",
                pytrace=False,
            )
        return
    if plugins.has_plugin("asyncio"):  # pytest-asyncio
        if request.node.get_closest_marker("asyncio") is None:
            pytest.fail(
                "zmqbus_aio_bus is for asyncio tests: make the test an async def and mark it "
                "@pytest.mark.asyncio (or set asyncio_mode = auto)",
                pytrace=False,
            )
        return
    pytest.fail(_NO_ASYNC_PLUGIN, pytrace=False)


def _async_fixture(func: _F) -> _F:
    """pytest-asyncio's fixture decorator where it is installed (so that its strict
    mode runs the fixture), else pytest's (anyio's plugin runs either)."""
    try:
        pytest_asyncio = importlib.import_module("pytest_asyncio")
    except ImportError:
        return cast(_F, pytest.fixture(func))
    return cast(_F, pytest_asyncio.fixture(func))


@_async_fixture
async def zmqbus_aio_bus(
    _zmqbus_event_loop: None, zmqbus_broker: Broker, zmqbus_channel: uuid.UUID
) -> AsyncIterator[zmqbus.aio.Bus]:
    """A zmqbus.aio.Bus connected to ``zmqbus_broker`` on ``zmqbus_channel``, on the
    test's event loop (pytest-asyncio or anyio); closed after."""
    from .aio import Bus as AioBus  # imported only where used: asyncio and the aio face

    async with AioBus(zmqbus_broker.address, zmqbus_channel) as bus:
        yield bus
