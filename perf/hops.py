"""What a hop costs: the echo round trip of three bare processes (pinger ->
relay -> echo -> relay -> pinger), with no zmqbus code in the way (issue #17).

``python -m perf.hops [--count N] [--runs R]`` measures, per variant, the
median over R runs of the round trip's p50 and p99 in µs (N round trips per
run, the first tenth not counted):

- ``zmq tcp``: DEALERs and a Python ROUTER relay over tcp on loopback, the
  shape of zmqbus (libzmq's I/O thread on each side of every hop);
- ``zmq ipc``: the same over ``ipc://`` (Unix domain sockets);
- ``zmq tcp, 2 I/O threads``: the relay's context with two libzmq I/O threads;
- ``zmq tcp, IMMEDIATE``: the DEALERs with ``ZMQ_IMMEDIATE`` set;
- ``plain tcp``: blocking Python sockets and a Python relay, no libzmq: the
  floor of any Python relay on this machine.

Every process shares the machine's cores with the others, as in the suite.
The round trip that ``python -m perf`` calls "echo round trip" (zmqbus) is
the same path plus zmqbus's own work on each side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import zmq

_LEN = struct.Struct(">I")


def _zmq_relay(address: str, io_threads: int, ready: Any) -> None:
    ctx = zmq.Context(io_threads)
    router = ctx.socket(zmq.ROUTER)
    router.bind(address)
    ready.set()
    recv, send, more = router.recv, router.send, zmq.SNDMORE
    while True:
        # Frame by frame, as the suite's pyzmq relay does (cheaper than *_multipart).
        ident = recv()
        dest = recv()
        payload = recv()
        send(dest, more)
        send(ident, more)
        send(payload)


def _zmq_dealer(address: str, name: bytes, immediate: bool) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, name)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(address)
    return sock


def _zmq_echo(address: str, immediate: bool) -> None:
    sock = _zmq_dealer(address, b"echo", immediate)
    sock.send_multipart([b"ping", b"hello"])
    recv, send, more = sock.recv, sock.send, zmq.SNDMORE
    while True:
        src = recv()
        payload = recv()
        send(src, more)
        send(payload)


def _zmq_ping(address: str, immediate: bool, count: int, out: Any, routed: Any) -> None:
    sock = _zmq_dealer(address, b"ping", immediate)
    # A ROUTER drops what it cannot route: first the relay must know this peer
    # (a message to itself comes back), then the echo may say hello.
    sock.send_multipart([b"ping", b"self"])
    sock.recv_multipart()
    routed.set()
    sock.recv_multipart()  # the echo is there
    payload = b"x" * 100
    clock = time.perf_counter_ns
    recv, send, more = sock.recv, sock.send, zmq.SNDMORE
    rtts = []
    for _ in range(count):
        t = clock()
        send(b"echo", more)
        send(payload)
        recv()
        recv()
        rtts.append((clock() - t) / 1000)
    out.put(rtts)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed")
        buf += part
    return buf


def _frame(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    return _recv_exact(sock, n)


def _tcp_relay(port: int, ready: Any) -> None:
    # Two clients, ping first then echo: whatever one sends goes to the other.
    lsock = socket.create_server(("127.0.0.1", port))
    ready.set()
    a, _ = lsock.accept()
    b, _ = lsock.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = _frame(a)
        b.sendall(_LEN.pack(len(data)) + data)
        data = _frame(b)
        a.sendall(_LEN.pack(len(data)) + data)


def _tcp_client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _tcp_echo(port: int, start: Any) -> None:
    start.wait()
    s = _tcp_client(port)
    while True:
        data = _frame(s)
        s.sendall(_LEN.pack(len(data)) + data)


def _tcp_ping(port: int, count: int, out: Any, start: Any) -> None:
    s = _tcp_client(port)
    # Connected before the echo starts: the relay accepts this one first. What
    # is sent before the echo connects waits in the socket for the relay.
    start.set()
    payload = _LEN.pack(100) + b"x" * 100
    clock = time.perf_counter_ns
    rtts = []
    for _ in range(count):
        t = clock()
        s.sendall(payload)
        _frame(s)
        rtts.append((clock() - t) / 1000)
    out.put(rtts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(variant: str, count: int) -> list[float]:
    """One run of ``variant``: the round trips in µs, after the first tenth."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    ready = ctx.Event()
    procs: list[Any] = []
    if variant == "plain tcp":
        port = _free_port()
        start = ctx.Event()
        procs.append(ctx.Process(target=_tcp_relay, args=(port, ready), daemon=True))
        procs[0].start()
        ready.wait(10)
        ping = ctx.Process(target=_tcp_ping, args=(port, count, out, start), daemon=True)
        echo = ctx.Process(target=_tcp_echo, args=(port, start), daemon=True)
        ping.start()
    else:
        if variant == "zmq ipc":
            address = f"ipc://{tempfile.mkdtemp()}/relay"
        else:
            address = f"tcp://127.0.0.1:{_free_port()}"
        io_threads = 2 if "2 I/O" in variant else 1
        immediate = "IMMEDIATE" in variant
        relay = ctx.Process(target=_zmq_relay, args=(address, io_threads, ready), daemon=True)
        relay.start()
        procs.append(relay)
        ready.wait(10)
        routed = ctx.Event()
        ping = ctx.Process(
            target=_zmq_ping, args=(address, immediate, count, out, routed), daemon=True
        )
        echo = ctx.Process(target=_zmq_echo, args=(address, immediate), daemon=True)
        ping.start()
        routed.wait(10)
    echo.start()
    procs += [ping, echo]
    try:
        rtts: list[float] = out.get(timeout=120)
    finally:
        for proc in procs:
            proc.kill()
            proc.join(5)
    return sorted(rtts[count // 10 :])


VARIANTS = ("zmq tcp", "zmq ipc", "zmq tcp, 2 I/O threads", "zmq tcp, IMMEDIATE", "plain tcp")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.hops", description=__doc__)
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"cpus": os.cpu_count()}
    p50s: dict[str, list[float]] = {v: [] for v in VARIANTS}
    p99s: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.runs):
        # Interleaved, so a slow spell of the machine touches every variant alike.
        for variant in VARIANTS:
            rtts = run_once(variant, args.count)
            p50s[variant].append(rtts[len(rtts) // 2])
            p99s[variant].append(rtts[int(len(rtts) * 0.99)])
    for variant in VARIANTS:
        result[variant] = {
            "p50_us": round(statistics.median(p50s[variant])),
            "p99_us": round(statistics.median(p99s[variant])),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for variant in VARIANTS:
            p50, p99 = result[variant]["p50_us"], result[variant]["p99_us"]
            print(f"{variant:24} echo round trip p50 {p50:5} µs  p99 {p99:5} µs")
        cores = os.cpu_count()
        print(f"(medians of {args.runs} runs of {args.count:,}; 3 processes on {cores} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
