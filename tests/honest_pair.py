"""An honest publisher/subscriber pair, in a process of its own, for the hostile tier.

    python tests/honest_pair.py ADDRESS SECONDS RATE

Two buses on a channel of their own: one subscribes, the other publishes
confirmed messages at RATE per second for SECONDS, without waiting for
each confirmation before the next. Prints one JSON object:
messages sent and confirmed, the rate reached, confirmation latency p50/p99/max
in milliseconds, failed publishes, and how often either bus lost the broker
(a heartbeat expiry on the broker's side shows as a disconnect here).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any


def run(address: str, seconds: float, rate: float) -> dict[str, float | int]:
    from zmqbus import Bus

    lost = [0]

    def on_lost() -> None:
        lost[0] += 1

    channel = uuid.uuid4()
    latencies: list[float] = []
    with (
        Bus(address, channel, on_disconnected=on_lost) as sub_bus,
        Bus(address, channel, on_disconnected=on_lost) as pub,
    ):
        sub = sub_bus.subscribe("honest.>", maxsize=1_000_000)
        received = [0]
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    sub.get(timeout=0.2)
                    received[0] += 1
                except TimeoutError:
                    pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        start = time.monotonic()
        end = start + seconds
        n = 0
        futures = []
        lock = threading.Lock()
        errors = [0]
        in_time = [0]  # confirmed before the run's end
        end_pc = time.perf_counter() + seconds

        def settled(t0: float) -> Callable[[Future[Any]], None]:
            def done(fut: Future[Any]) -> None:
                with lock:
                    if fut.exception() is None:
                        now = time.perf_counter()
                        latencies.append((now - t0) * 1000)
                        in_time[0] += now <= end_pc
                    else:
                        errors[0] += 1

            return done

        # Pipelined at a fixed offered rate, so the rate reached measures the
        # broker's share for this pair, not one publish's round trip.
        while (now := time.monotonic()) < end:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)  # pacing the offered rate, not a sync point
            t0 = time.perf_counter()
            fut = pub.publish_nowait(f"honest.{n % 16}", b"x" * 100, timeout=5.0)
            fut.add_done_callback(settled(t0))
            futures.append(fut)
            n += 1
        wait(futures, timeout=10.0)
        failed = errors[0] + sum(1 for f in futures if not f.done())
        stop.set()
        reader.join()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else -1.0

    return {
        "sent": n,
        "confirmed": len(latencies),
        "received": received[0],
        "rate": round(in_time[0] / seconds, 1),
        "p50_ms": round(pct(0.5), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else -1.0,
        "failed": failed,
        "lost_broker": lost[0],
    }


if __name__ == "__main__":
    address, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(run(address, seconds, rate)))
