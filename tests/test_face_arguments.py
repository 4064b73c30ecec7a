"""Both faces check a call's arguments alike: the same exception type and text
for each bad argument, and with several bad, the first in signature order."""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
from typing import Any

import pytest

import zmqbus
import zmqbus.aio
from zmqbus import Broker, BusClosed, MessageTooLarge

# (call, args, kwargs, expected type, a regex its text must match). The call
# names a bus method, "sub.<method>" one of a queue subscription,
# "handler_sub.<method>" one of a handler subscription, or "Bus" the constructor.
CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], type[BaseException], str]] = [
    ("publish", ("a.*", b""), {}, ValueError, "cannot publish to a pattern"),
    ("publish", (1, b""), {}, TypeError, "topic"),
    ("publish", ("a", "text"), {}, TypeError, "payload must be bytes-like, not str"),
    ("publish", ("a", b"", "h"), {}, TypeError, "headers must be a mapping"),
    ("publish", ("a", b"", {"k": 1}), {}, TypeError, "headers must map str to str"),
    ("publish", ("a", b""), {"timeout": 0}, ValueError, "timeout must be positive"),
    ("publish", ("a", b""), {"timeout": "1"}, TypeError, "timeout must be a number"),
    ("publish", ("a", b""), {"confirm": "yes"}, TypeError, "confirm must be True or False"),
    ("publish", ("a", b""), {"confirm": 1}, TypeError, "confirm must be True or False"),
    # Several bad at once: the first in the signature wins, on both faces.
    ("publish", ("a", "text"), {"timeout": -1}, TypeError, "payload"),
    ("publish", ("a..b", "text"), {"timeout": -1}, ValueError, "empty token"),
    ("publish", ("a", b"", {"k": 1}), {"timeout": -1}, TypeError, "headers"),
    ("publish", ("a", b""), {"timeout": -1, "confirm": None}, ValueError, "timeout"),
    ("publish", ("a", b""), {"timeout": 0, "confirm": False}, ValueError, "timeout"),
    # An argument error comes before the broker's size limit.
    ("publish", ("a", b"x" * 2_000_000), {"timeout": 0}, ValueError, "timeout must be"),
    ("publish", ("a", b"x" * 2_000_000), {}, MessageTooLarge, "exceeds"),
    ("publish_nowait", ("a", "text"), {"timeout": -1}, TypeError, "payload"),
    ("publish_nowait", ("a", b""), {"timeout": 0}, ValueError, "timeout must be positive"),
    ("request", ("a.>", b""), {}, ValueError, "cannot publish to a pattern"),
    ("request", ("a", bytearray()), {"timeout": 0}, ValueError, "timeout must be positive"),
    ("request", ("a", 5), {"timeout": 0}, TypeError, "payload"),
    ("subscribe", ("a..b",), {}, ValueError, "empty token"),
    ("subscribe", (b"a",), {}, TypeError, "pattern"),
    ("subscribe", ("a", 1), {}, TypeError, "handler must be callable"),
    ("subscribe", ("a", None, 0), {}, ValueError, "maxsize must be a positive int"),
    ("subscribe", ("a",), {"queue": "bad queue"}, ValueError, "bad queue name"),
    ("subscribe", ("a",), {"queue": 7}, TypeError, "queue must be str"),
    ("subscribe", ("a",), {"timeout": -1}, ValueError, "timeout must be positive"),
    ("subscribe", ("a..b", 1, 0), {"queue": 7, "timeout": 0}, ValueError, "empty token"),
    ("subscribe", ("a", 1, 0), {"queue": 7, "timeout": 0}, TypeError, "handler"),
    ("subscribe", ("a", None, 0), {"queue": 7, "timeout": 0}, ValueError, "maxsize"),
    ("subscribe", ("a",), {"queue": 7, "timeout": 0}, TypeError, "queue"),
    ("unsubscribe", ("a.>.b",), {}, ValueError, "'>' may only be the last token"),
    ("unsubscribe", ("a",), {"timeout": 0}, ValueError, "timeout must be positive"),
    ("unsubscribe", ("*.",), {"timeout": 0}, ValueError, "empty token"),
    ("sub.get", (), {"timeout": -1}, ValueError, "timeout must not be negative"),
    ("sub.get", (), {"timeout": "1"}, TypeError, "timeout must be a number of seconds or None"),
    ("handler_sub.get", (), {"timeout": -1}, TypeError, "a handler subscription has no queue"),
    ("sub.unsubscribe", (), {"timeout": 0}, ValueError, "timeout must be positive"),
    ("Bus", ("nope://x", uuid.uuid4()), {}, ValueError, "unsupported transport"),
    ("Bus", (None, "not-a-uuid"), {"connect_timeout": 0}, TypeError, "address must be str"),
    ("Bus", ("tcp://127.0.0.1:1", "not-a-uuid"), {"connect_timeout": 0}, ValueError, "UUID"),
    ("Bus", ("tcp://127.0.0.1:1", uuid.uuid4()), {"connect_timeout": 0}, ValueError, "connect"),
    ("Bus", ("tcp://127.0.0.1:1", uuid.uuid4()), {"close_timeout": -1}, ValueError, "close"),
    ("Bus", ("tcp://127.0.0.1:1", uuid.uuid4()), {"hwm": 0}, ValueError, "hwm must be"),
    ("Bus", ("tcp://127.0.0.1:1", uuid.uuid4()), {"heartbeat": -1}, ValueError, "heartbeat"),
    (
        "Bus",
        ("tcp://127.0.0.1:1", uuid.uuid4()),
        {"connect_timeout": 0, "hwm": 0, "heartbeat": -1},
        ValueError,
        "connect_timeout",
    ),
]


def _ids() -> list[str]:
    return [f"{i}-{call}" for i, (call, *_rest) in enumerate(CASES)]


async def _outcome(target: Any, threaded: bool, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """(type, text) of what calling ``target`` raised, or None if it returned."""
    try:
        if threaded:
            await asyncio.to_thread(target, *args, **kw)
        else:
            result = target(*args, **kw)
            if inspect.isawaitable(result):
                await result
    except Exception as exc:
        return type(exc), str(exc)
    return None


async def _each_face(
    broker: Broker, call: str, args: tuple[Any, ...], kw: dict[str, Any], *, close: bool = False
) -> dict[str, Any]:
    channel = uuid.uuid4()
    outcomes: dict[str, Any] = {}
    threaded = await asyncio.to_thread(zmqbus.Bus, broker.address, channel)
    aio = await zmqbus.aio.Bus(broker.address, channel).connect()
    try:
        for name, bus in (("threaded", threaded), ("asyncio", aio)):
            is_threaded = name == "threaded"
            owner: Any = bus
            method = call
            if call.startswith(("sub.", "handler_sub.")):
                kind, method = call.split(".")
                handler = (lambda m: None) if kind == "handler_sub" else None
                subscribe = bus.subscribe
                owner = (
                    await asyncio.to_thread(subscribe, f"s.{name}", handler)
                    if is_threaded
                    else await subscribe(f"s.{name}", handler)
                )
            if close:
                await (asyncio.to_thread(bus.close) if is_threaded else bus.close())
            if call == "Bus":
                face = zmqbus.Bus if is_threaded else zmqbus.aio.Bus
                outcomes[name] = await _outcome(face, False, args, kw)
            else:
                outcomes[name] = await _outcome(getattr(owner, method), is_threaded, args, kw)
    finally:
        await asyncio.to_thread(threaded.close)
        await aio.close()
    return outcomes


@pytest.mark.parametrize(("call", "args", "kw", "kind", "text"), CASES, ids=_ids())
def test_both_faces_refuse_alike(
    broker: Broker,
    call: str,
    args: tuple[Any, ...],
    kw: dict[str, Any],
    kind: type[BaseException],
    text: str,
) -> None:
    outcomes = asyncio.run(_each_face(broker, call, args, kw))
    assert outcomes["threaded"] == outcomes["asyncio"]
    got = outcomes["threaded"]
    assert got is not None, f"{call}{args} {kw} raised nothing"
    assert got[0] is kind, got
    assert re.search(text, got[1]), got


@pytest.mark.parametrize(
    ("call", "args", "kw"),
    [
        ("publish", ("a", b""), {}),
        ("publish", ("a", "text"), {"timeout": -1}),
        ("request", ("a.*", b""), {}),
        ("subscribe", ("a..b",), {"maxsize": 0}),
        ("unsubscribe", ("a",), {"timeout": "x"}),
    ],
)
def test_a_closed_bus_refuses_before_it_checks_arguments(
    broker: Broker, call: str, args: tuple[Any, ...], kw: dict[str, Any]
) -> None:
    outcomes = asyncio.run(_each_face(broker, call, args, kw, close=True))
    assert outcomes["threaded"] == outcomes["asyncio"] == (BusClosed, "bus is closed")
