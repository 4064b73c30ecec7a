"""A worker process for the cross-process tests: `python proc_worker.py ADDRESS CHANNEL MODE`.

MODE `jobs`: joins queue group "workers" on `jobs.>` and prints `job <payload>`
for each job it handles. MODE `respond`: joins queue group "pool" on `svc.whoami`
and answers each request with its pid. MODE `arequest`: an asyncio client that
sends 20 requests to `svc.whoami` and prints each answer. Prints `ready` once
subscribed; exits when stdin closes (or, for `arequest`, when done).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from zmqbus import Bus, Message
from zmqbus.aio import Bus as AsyncBus


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def jobs(address: str, channel: uuid.UUID) -> None:
    with Bus(address, channel) as bus:

        def handle(msg: Message) -> None:
            _say(f"job {msg.payload.decode()}")

        bus.subscribe("jobs.>", handler=handle, maxsize=10_000, queue="workers")
        _say("ready")
        sys.stdin.read()


def respond(address: str, channel: uuid.UUID) -> None:
    with Bus(address, channel) as bus:
        bus.subscribe("svc.whoami", handler=lambda m: str(os.getpid()).encode(), queue="pool")
        _say("ready")
        sys.stdin.read()


async def arequest(address: str, channel: uuid.UUID) -> None:
    async with AsyncBus(address, channel) as bus:
        _say("ready")
        for _ in range(20):
            reply = await bus.request("svc.whoami", b"", timeout=10)
            _say(f"answer {reply.payload.decode()}")


if __name__ == "__main__":
    addr, chan, mode = sys.argv[1], uuid.UUID(sys.argv[2]), sys.argv[3]
    if mode == "jobs":
        jobs(addr, chan)
    elif mode == "respond":
        respond(addr, chan)
    else:
        asyncio.run(arequest(addr, chan))
