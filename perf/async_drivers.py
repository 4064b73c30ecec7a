"""Which driver for the asyncio face? Measure, side by side, in one run:

- ``threaded``: the threaded ``zmqbus.Bus`` called synchronously (the baseline);
- ``aio-native``: ``zmqbus.aio.Bus``, the core on the event loop, the DEALER's
  descriptor watched with ``add_reader`` (default loop, and uvloop);
- ``aio-bridged``: the alternative design: the threaded bus's I/O thread owns
  the socket and its futures are bridged to the loop with ``asyncio.wrap_future``.

The broker and a responder bus run in their own processes; all share the
machine's cores. Usage: ``python perf/async_drivers.py [--count N] [--runs R]``.
Prints a Markdown table of medians (min-max) over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

import zmqbus
import zmqbus.aio
from zmqbus import protocol as p

RESPONDER = """
import sys, uuid
from zmqbus import Bus
with Bus(sys.argv[1], uuid.UUID(sys.argv[2])) as bus:
    bus.subscribe("echo", handler=lambda m: m.payload, maxsize=100_000)
    bus.subscribe("sink", maxsize=100_000)
    print("ready", flush=True)
    sys.stdin.read()
"""


class Bridged:
    """The asyncio face as it would be over the I/O thread: each call is handed
    to the I/O thread and its concurrent future awaited through wrap_future."""

    def __init__(self, bus: zmqbus.Bus) -> None:
        self._bus = bus
        self._core = bus._core
        self._io = bus._io
        self._ch = bus.channel_id.bytes

    async def publish(self, topic: str, payload: bytes, *, confirm: bool = True) -> Any:
        body = p.pack_message(uuid.uuid4().bytes, time.time_ns(), {}, payload)
        if not confirm:
            self._io.submit([p.H_PUBLISH, self._ch, b"", topic.encode(), body])
            return None
        fut: Future[Any] = Future()
        deadline = time.monotonic() + 5.0
        self._io.submit(partial(self._core.publish, topic.encode(), body, fut, deadline, 5.0))
        return await asyncio.wrap_future(fut)

    async def request(self, topic: str, payload: bytes) -> Any:
        body = p.pack_message(uuid.uuid4().bytes, time.time_ns(), {}, payload)
        fut: Future[Any] = Future()
        deadline = time.monotonic() + 5.0
        self._io.submit(partial(self._core.request, topic.encode(), body, fut, deadline, 5.0))
        return await asyncio.wrap_future(fut)


async def _measure_async(pub: Any, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for _ in range(200):  # warm-up
        await pub.request("echo", b"x")
    t = time.perf_counter()
    for _ in range(n):
        await pub.request("echo", b"x" * 100)
    out["request_us"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        await pub.publish("sink", b"x" * 100)
    out["confirmed_us"] = (time.perf_counter() - t) / n * 1e6
    window = 100
    t = time.perf_counter()
    for _ in range(n // window):
        await asyncio.gather(*(pub.publish("sink", b"x" * 100) for _ in range(window)))
    out["pipelined_per_s"] = (n // window * window) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n * 5):
        await pub.publish("none", b"x" * 100, confirm=False)
    await pub.publish("none", b"")  # a confirmed one behind them: all were sent
    out["fire_forget_per_s"] = n * 5 / (time.perf_counter() - t)
    return out


def _measure_threaded(bus: zmqbus.Bus, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for _ in range(200):
        bus.request("echo", b"x")
    t = time.perf_counter()
    for _ in range(n):
        bus.request("echo", b"x" * 100)
    out["request_us"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        bus.publish("sink", b"x" * 100)
    out["confirmed_us"] = (time.perf_counter() - t) / n * 1e6
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        t = time.perf_counter()
        list(pool.map(lambda _: bus.publish("sink", b"x" * 100), range(n)))
        out["pipelined_per_s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n * 5):
        bus.publish("none", b"x" * 100, confirm=False)
    bus.publish("none", b"")
    out["fire_forget_per_s"] = n * 5 / (time.perf_counter() - t)
    return out


async def _native(addr: str, ch: uuid.UUID, n: int) -> dict[str, float]:
    async with zmqbus.aio.Bus(addr, ch) as bus:
        return await _measure_async(bus, n)


async def _bridged(addr: str, ch: uuid.UUID, n: int) -> dict[str, float]:
    with zmqbus.Bus(addr, ch) as bus:
        return await _measure_async(Bridged(bus), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write the raw figures to this file")
    args = ap.parse_args()

    broker = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", "--bind", "tcp://127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert broker.stderr is not None
    addr = ""
    for line in broker.stderr:
        if "listening on" in line:
            addr = line.rsplit("listening on", 1)[1].strip()
            break
    ch = uuid.uuid4()
    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER, addr, str(ch)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert responder.stdout is not None
    responder.stdout.readline()

    import uvloop

    drivers: dict[str, Callable[[], dict[str, float]]] = {
        "threaded": lambda: _with_bus(addr, ch, args.count),
        "aio-native": lambda: asyncio.run(_native(addr, ch, args.count)),
        "aio-native+uvloop": lambda: uvloop.run(_native(addr, ch, args.count)),
        "aio-bridged": lambda: asyncio.run(_bridged(addr, ch, args.count)),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in drivers}
    try:
        for run in range(args.runs):
            for name, fn in drivers.items():
                print(f"run {run + 1}/{args.runs}: {name}", file=sys.stderr)
                results[name].append(fn())
    finally:
        if responder.stdin:
            responder.stdin.close()
        responder.wait(10)
        broker.terminate()
        broker.wait(10)

    metrics = ["request_us", "confirmed_us", "pipelined_per_s", "fire_forget_per_s"]
    print(f"\ncount={args.count} runs={args.runs} cores={os.cpu_count()} (broker, responder and")
    print("client processes share them); medians, min-max in brackets\n")
    print("| driver | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for name, runs in results.items():
        cells = []
        for m in metrics:
            vals = [r[m] for r in runs]
            cells.append(f"{statistics.median(vals):,.0f} [{min(vals):,.0f}-{max(vals):,.0f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _with_bus(addr: str, ch: uuid.UUID, n: int) -> dict[str, float]:
    with zmqbus.Bus(addr, ch) as bus:
        return _measure_threaded(bus, n)


if __name__ == "__main__":
    main()
