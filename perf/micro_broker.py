"""The broker alone: ``BrokerState`` fed pre-built PUBLISH_BATCH frames in a
loop, no sockets (issue #17's microbenchmark).

``python -m perf.micro_broker [--seconds S] [--runs N] [--batch B]`` prints,
for each case, the median of N runs of routed messages per second: one
publisher, one subscriber with ``batch_commands`` (as every ``Bus`` says in
its HELLO) on an exact subject, the outgoing frames taken after each batch as
the broker loop does. The second case adds 100,000 other subscriptions (100
peers of 1,000 patterns each: exact subjects and wildcards) that never match.
The third sends the messages as a ``Bus`` does: unconfirmed PUBLISH entries of
a BATCH. One process, one core: the broker's own per-message cost, not the
socket's.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from zmqbus import Limits, _fastpath
from zmqbus import protocol as p
from zmqbus._routing import BrokerState

CHANNEL = b"C" * 16
SUBJECT = b"orders.eu.created"


def _join(state: BrokerState, ident: bytes, patterns: Sequence[bytes]) -> None:
    hello = p.pack_hello("micro", batch_commands=True, streams=True)
    state.handle(ident, [p.H_HELLO, CHANNEL, hello], 0.0)
    for i, pattern in enumerate(patterns, 1):
        sid = i.to_bytes(p.SID_BYTES, "big")
        state.handle(ident, p.encode(p.Subscribe(CHANNEL, b"s", sid, pattern, b"")), 0.0)
    state.take_outgoing()


def _world(others: int) -> BrokerState:
    limits = Limits(max_subscriptions_per_peer=max(10_000, others))
    state = BrokerState(limits=limits)
    _join(state, b"pub", [])
    _join(state, b"sub", [SUBJECT])
    per_peer = 1_000
    for peer in range(others // per_peer):
        patterns = []
        for i in range(per_peer):
            n = peer * per_peer + i
            # Mostly exact subjects, some wildcards: none matches SUBJECT.
            if i % 10 == 0:
                patterns.append(b"orders.p%d.*" % n)
            elif i % 10 == 1:
                patterns.append(b"audit.%d.>" % n)
            else:
                patterns.append(b"orders.eu.n%d" % n)
        _join(state, b"other%d" % peer, patterns)
    return state


def _batch(size: int, kind: bytes) -> list[bytes]:
    body = msgpack.packb(b"x" * 64)  # opaque to the broker
    if kind == p.H_BATCH:
        entry = p.pack_command_entry([p.H_PUBLISH, CHANNEL, b"", SUBJECT, body])
        return [p.H_BATCH, CHANNEL, entry * size]
    entries = b"".join(p.pack_publish_entry(SUBJECT, body) for _ in range(size))
    return [p.H_PUBLISH_BATCH, CHANNEL, entries]


def run_case(others: int, seconds: float, batch: int, kind: bytes = p.H_PUBLISH_BATCH) -> float:
    """Routed messages per second over ``seconds`` for one world."""
    state = _world(others)
    frames = _batch(batch, kind)
    handle, take = state.handle, state.take_outgoing
    clock = time.perf_counter
    # Warm the routing cache and the allocator before the clock.
    for _ in range(50):
        handle(b"pub", frames, 1.0)
        take()
    gc.collect()
    gc.freeze()
    routed = 0
    start = clock()
    end = start + seconds
    now = 1.0
    while True:
        for _ in range(20):
            handle(b"pub", frames, now)
            take()
        routed += 20 * batch
        t = clock()
        if t >= end:
            break
        now = 1.0 + (t - start)
    elapsed = clock() - start
    gc.unfreeze()
    out = state.counters.get("messages_out", 0)
    if not out:
        raise SystemExit("nothing was delivered: the benchmark's world is wrong")
    return routed / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.micro_broker", description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100, help="entries per PUBLISH_BATCH")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {
        "implementation": _fastpath.implementation(),
        "batch": args.batch,
    }
    cases = (
        ("1 exact subscription", 0, p.H_PUBLISH_BATCH),
        ("100,000 subscriptions", 100_000, p.H_PUBLISH_BATCH),
        ("1 exact subscription, BATCH", 0, p.H_BATCH),
    )
    for name, others, kind in cases:
        rates = [run_case(others, args.seconds, args.batch, kind) for _ in range(args.runs)]
        result[name] = round(statistics.median(rates))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            rate = key[0].isdigit()
            shown = f"{value:,} routed msgs/s (median of {args.runs})" if rate else value
            print(f"{key}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
