"""The broker alone on a durable stream: ``BrokerState`` with a store, no
sockets (issue #15's per-message cost at the broker).

``python -m perf.micro_streams [--count N] [--runs R] [--storage file|memory]``
prints, for each case, the median of R runs of the broker's own time per
message: **store**, unconfirmed PUBLISH entries of a BATCH (as a ``Bus``
sends them) captured by a stream, one commit per batch as the loop does;
**consume+ack**, a durable consumer (``max_ack_pending`` 1,000) reading that
backlog from the first, each delivery acked by a plain STREAM_ACK entry of a
BATCH, as a ``Bus`` does. Only the broker's calls (``handle``, ``tick``,
``take_outgoing``) are timed; reading its BROKER_BATCHes and making the acks
is not. One process, one core.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zmqbus import _fastpath
from zmqbus import protocol as p
from zmqbus._routing import BrokerState
from zmqbus.store import Store, open_store

CHANNEL = b"C" * 16
SID = b"\0\0\0\1"
_BATCH = 1_000  # PUBLISH entries per BATCH while storing


def _state(store: Store, storage: str) -> BrokerState:
    state = BrokerState(store=store)
    hello = p.pack_hello("micro", batch=True, batch_commands=True, streams=True)
    state.handle(b"w", [p.H_HELLO, CHANNEL, hello], 1.0)
    config = {"name": "S", "subjects": ["s.>"], "storage": storage}
    state.handle(
        b"w", [p.H_STREAM, CHANNEL, b"r", p.pack_stream_request("add", config=config)], 1.0
    )
    replies = [frames[0] for _, frames in state.take_outgoing()]
    if p.H_STREAM_REPLY not in replies:
        raise SystemExit(f"the stream was not made: {replies!r}")
    return state


def _body() -> bytes:
    # A fresh message id each: the stream stores each once (dedup by id).
    return p.pack_message(uuid.uuid4().bytes, 1, {}, b"x" * 100)


def _store(state: BrokerState, count: int) -> float:
    """Seconds of broker time to store ``count`` messages."""
    clock = time.perf_counter
    busy = 0.0
    for start in range(0, count, _BATCH):
        entries = b"".join(
            p.pack_command_entry(
                [
                    p.H_PUBLISH,
                    CHANNEL,
                    b"",
                    b"s.a",
                    p.pack_message(uuid.uuid4().bytes, 1, {}, b"x" * 100),
                ]
            )
            for _ in range(min(_BATCH, count - start))
        )
        t = clock()
        state.handle(b"w", [p.H_BATCH, CHANNEL, entries], 1.0)
        state.take_outgoing()  # the loop's pass: its commit
        busy += clock() - t
    stored = state.streams.counters.get("stored", 0)
    if stored != count:
        raise SystemExit(f"{stored:,} of {count:,} stored")
    return busy


def _consume(state: BrokerState, count: int) -> float:
    """Seconds of broker time to deliver ``count`` and settle their acks."""
    consume = p.pack_consume("S", durable="d", deliver="all", max_ack_pending=1_000)
    clock = time.perf_counter
    t = clock()
    state.handle(b"w", [p.H_CONSUME, CHANNEL, b"c", SID, consume], 2.0)
    busy = clock() - t
    ack_kind = bytes((p.AckKind.ACK,))
    got = 0
    acks: list[bytes] = []
    now = 2.0
    while got < count:
        t = clock()
        if acks:
            state.handle(b"w", [p.H_BATCH, CHANNEL, b"".join(acks)], now)
            acks = []
        state.tick(now)
        out = state.take_outgoing()
        busy += clock() - t
        if not out and not acks:
            raise SystemExit(f"stalled after {got:,} of {count:,}")
        for _, frames in out:
            if frames[0] == p.H_BROKER_BATCH:
                entries = p.unpack_broker_batch(frames[2], CHANNEL)
            else:
                entries = [frames]
            for entry in entries:
                if entry[0] == p.H_STREAM_MSG:
                    got += 1
                    acks.append(
                        p.pack_command_entry(
                            [p.H_STREAM_ACK, CHANNEL, entry[p.STREAM_MSG_TOKEN], ack_kind, b"", b""]
                        )
                    )
        now += 0.001
    state.handle(b"w", [p.H_BATCH, CHANNEL, b"".join(acks)], now)
    settled = state.streams.counters.get("stream_acks", 0)
    if settled != count:
        raise SystemExit(f"{settled:,} of {count:,} acks settled")
    return busy


def run(count: int, storage: str) -> tuple[float, float]:
    """(store, consume+ack) broker microseconds per message, one fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp))
        try:
            state = _state(store, storage)
            gc.collect()
            storing = _store(state, count)
            consuming = _consume(state, count)
            state.streams.commit(None)
        finally:
            store.close()
    return storing / count * 1e6, consuming / count * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.micro_streams", description=__doc__)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--storage", choices=("file", "memory"), default="file")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = ap.parse_args(argv)
    runs = [run(args.count, args.storage) for _ in range(args.runs)]
    result: dict[str, Any] = {
        "implementation": _fastpath.implementation(),
        "storage": args.storage,
        "count": args.count,
        "store_us": round(statistics.median(r[0] for r in runs), 2),
        "consume_ack_us": round(statistics.median(r[1] for r in runs), 2),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"implementation: {result['implementation']}, storage {args.storage}")
    for key, name in (("store_us", "store"), ("consume_ack_us", "consume+ack")):
        us = result[key]
        print(f"{name}: {us} us a message at the broker ({1e6 / us:,.0f}/s), median of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
