"""One async interface over both faces, so one scenario suite tests both.

The threaded ``zmqbus.Bus`` is driven through ``asyncio.to_thread`` (each
blocking call runs on a worker thread, as a thread-based user would call it);
``zmqbus.aio.Bus`` is awaited directly. Scenarios in ``test_faces.py`` speak
only this interface.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import zmqbus
import zmqbus.aio
from zmqbus import Message, PublishResult


class SubH:
    """A subscription handle: same calls on both faces."""

    def __init__(self, sub: Any, threaded: bool) -> None:
        self.sub = sub
        self._threaded = threaded

    async def get(self, timeout: float | None = 5.0) -> Message:
        if self._threaded:
            return await asyncio.to_thread(self.sub.get, timeout)
        return await self.sub.get(timeout)  # type: ignore[no-any-return]

    async def drain(self) -> list[Message]:
        """Everything buffered now, without waiting."""
        out: list[Message] = []
        while len(self.sub):
            out.append(await self.get(0))
        return out

    async def rest(self) -> list[Message]:
        """Iterate to the end (the subscription must end)."""
        if self._threaded:
            return await asyncio.to_thread(lambda: list(self.sub))
        return [m async for m in self.sub]

    async def unsubscribe(self) -> None:
        if self._threaded:
            await asyncio.to_thread(self.sub.unsubscribe)
        else:
            await self.sub.unsubscribe()

    @property
    def dropped(self) -> int:
        return int(self.sub.dropped)

    @property
    def closed(self) -> bool:
        return bool(self.sub.closed)


class BusH:
    """A bus handle: same calls on both faces."""

    def __init__(self, bus: Any, threaded: bool) -> None:
        self.bus = bus
        self.threaded = threaded

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.threaded:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await fn(*args, **kwargs)

    async def publish(self, topic: str, payload: Any, *args: Any, **kw: Any) -> PublishResult:
        return await self._call(self.bus.publish, topic, payload, *args, **kw)  # type: ignore[no-any-return]

    async def request(self, topic: str, payload: Any, *args: Any, **kw: Any) -> Message:
        return await self._call(self.bus.request, topic, payload, *args, **kw)  # type: ignore[no-any-return]

    async def subscribe(self, pattern: str, *args: Any, **kw: Any) -> SubH:
        return SubH(await self._call(self.bus.subscribe, pattern, *args, **kw), self.threaded)

    async def unsubscribe(self, pattern: str) -> int:
        return await self._call(self.bus.unsubscribe, pattern)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._call(self.bus.close)

    @property
    def counters(self) -> Any:
        return self.bus._core.counters


class Gate:
    """Holds handlers until opened: a threading.Event for threaded handlers,
    an asyncio.Event for the asyncio face (a blocking wait would stall its loop)."""

    def __init__(self, threaded: bool) -> None:
        self._threaded = threaded
        self._tev = threading.Event()
        self._aev = asyncio.Event()
        self.entered = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def handler(self, result: Any = None) -> Callable[[Message], Any]:
        """A handler that signals entry, then waits for ``open()``."""
        if self._threaded:

            def hold(msg: Message) -> Any:
                self._loop.call_soon_threadsafe(self.entered.set)
                self._tev.wait(30)
                return result

            return hold

        async def ahold(msg: Message) -> Any:
            self.entered.set()
            await self._aev.wait()
            return result

        return ahold

    def open(self) -> None:
        self._tev.set()
        self._aev.set()


class Face:
    """Makes buses of one face, and closes them all at the end."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.threaded = name == "threaded"
        self.address = address
        self.buses: list[BusH] = []

    async def bus(self, channel: uuid.UUID, **kw: Any) -> BusH:
        if self.threaded:
            raw: Any = await asyncio.to_thread(zmqbus.Bus, self.address, channel, **kw)
        else:
            raw = await zmqbus.aio.Bus(self.address, channel, **kw).connect()
        handle = BusH(raw, self.threaded)
        self.buses.append(handle)
        return handle

    def gate(self) -> Gate:
        return Gate(self.threaded)

    async def close_all(self) -> None:
        for b in self.buses:
            await b.close()


def run(face_name: str, coro: Coroutine[Any, Any, None]) -> None:
    """Run a scenario on the event loop the face calls for."""
    if face_name == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
