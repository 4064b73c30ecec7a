"""What one request/reply costs each process in CPU: broker, requester, responder.

``python -m perf.reqrep_cpu [--count N]`` starts ``zmqbus broker`` and a
responder (a handler subscription answering each request with 16 bytes) in
processes of their own, then makes ``count`` requests one at a time from this
process, 500 of them first unmeasured. It prints the round trip's p50 and
each process's CPU time (user + system, libzmq's I/O threads included, from
/proc or ``os.times``) per request. On a machine of few cores the three
processes and their I/O threads take turns: what a request costs each of them
in wake-ups, not in Python, is then most of the round trip. Linux only.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

from zmqbus import Bus

_WARMUP = 500
_RESPONDER = """
import os, sys, threading, uuid
from zmqbus import Bus
address, channel, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
bus = Bus(address, uuid.UUID(channel))
done = threading.Event()
answered = [0]
def answer(msg):
    answered[0] += 1
    if answered[0] >= count:
        done.set()
    return msg.payload[:16]
bus.subscribe("rr.x", answer)
print("ready", flush=True)
done.wait(300)
used = os.times()
bus.close()
print(used.user + used.system, flush=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/PID/stat: utime and stime, in clock ticks.
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.reqrep_cpu", description=__doc__)
    ap.add_argument("--count", type=int, default=15_000, help="requests (500 more first)")
    args = ap.parse_args(argv)
    address = f"tcp://127.0.0.1:{_free_port()}"
    channel = uuid.uuid4()
    broker = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", "--bind", address],
        stderr=subprocess.PIPE,
        text=True,
    )
    responder: subprocess.Popen[str] | None = None
    try:
        assert broker.stderr is not None
        for line in broker.stderr:
            if "listening on" in line:
                break
        total = args.count + _WARMUP
        responder = subprocess.Popen(
            [sys.executable, "-c", _RESPONDER, address, str(channel), str(total)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert responder.stdout is not None
        if responder.stdout.readline().strip() != "ready":
            raise SystemExit("the responder did not start")
        with Bus(address, channel) as bus:
            for _ in range(_WARMUP):
                bus.request("rr.x", b"y" * 100, timeout=10)
            broker0, mine0 = _cpu_seconds(broker.pid), os.times()
            clock = time.perf_counter
            rtt = []
            for _ in range(args.count):
                t = clock()
                bus.request("rr.x", b"y" * 100, timeout=10)
                rtt.append(clock() - t)
            broker1, mine1 = _cpu_seconds(broker.pid), os.times()
        answered_cpu = float(responder.stdout.readline())
    finally:
        broker.kill()
        broker.wait()
        if responder is not None:
            responder.wait(30)
    n = args.count
    mine = (mine1.user + mine1.system - mine0.user - mine0.system) / n
    print(f"request/reply p50: {statistics.median(rtt) * 1e6:.0f} us over {n:,} requests")
    at_broker = (broker1 - broker0) / n
    print(f"CPU per request: requester {mine * 1e6:.0f} us, broker {at_broker * 1e6:.0f} us,")
    print(f"  responder {answered_cpu / total * 1e6:.0f} us (its whole run, warm-up included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
