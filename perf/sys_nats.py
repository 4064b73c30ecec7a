"""NATS roles: ``nats-server`` (Debian) with the ``nats-py`` client on ``uvloop``.

Configured the way a user after speed would: uvloop, subject validation off
(``skip_subject_validation``), subscription callbacks (no per-message
``next_msg`` timeouts), client-side pending limits raised far above any run so the
client never drops as a slow consumer. Publishing is ``await nc.publish()`` in a
loop: nats-py buffers and writes in batches by itself; ``flush()`` at the end waits
for the server to have everything.

Confirmation in NATS is request/reply: the subscriber responds to each message and
the publisher awaits the reply (``nc.request``). A pipelined confirmer runs
``window`` tasks, each requesting one message after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from perf.harness import (
    Ctl,
    IdleRule,
    Spec,
    filler_patterns,
    make_payload,
    now_ns,
    read_stamp,
    samples_to_bytes,
    stamp_payload,
    stand_in_channels,
)

__all__ = ["confirmer", "event_loop_name", "filler", "pinger", "reqrep", "sink", "source"]

_PENDING_MSGS = 50_000_000
_PENDING_BYTES = 16 << 30
_IDLE = 0.25


def _new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(coro)


def event_loop_name() -> str:
    """The class of the event loop the roles run on (``uvloop.Loop``), made as they make it."""
    loop = _new_loop()
    try:
        return f"{type(loop).__module__}.{type(loop).__qualname__}"
    finally:
        loop.close()


async def _connect(spec: Spec) -> Any:
    import nats

    return await nats.connect(
        spec.address,
        allow_reconnect=False,
        skip_subject_validation=True,
        name=f"perf-{spec.role}",
    )


def sink(spec: Spec, ctl: Ctl) -> None:
    _run(_sink(spec, ctl))


async def _sink(spec: Spec, ctl: Ctl) -> None:
    nc = await _connect(spec)
    try:
        rule = IdleRule(ctl)
        done = asyncio.Event()
        mode = spec.mode
        warmup = spec.warmup
        reply = spec.reply_topic
        publish = nc.publish
        mono = now_ns
        lat = array("q")
        state = [0, 0]  # received, time of the last

        async def on_count(msg: Any) -> None:
            state[0] += 1
            state[1] = mono()
            if state[0] >= rule.target:
                done.set()

        async def on_echo(msg: Any) -> None:
            t = mono()
            data = msg.data
            seq, t0 = read_stamp(data)
            if seq >= warmup:
                lat.append(t - t0)
            await publish(reply, data)
            state[0] += 1
            state[1] = t
            if state[0] >= rule.target:
                done.set()

        async def on_respond(msg: Any) -> None:
            await publish(msg.reply, msg.data[:16])
            state[0] += 1
            state[1] = mono()
            if state[0] >= rule.target:
                done.set()

        handlers: dict[str, Callable[[Any], Awaitable[None]]] = {
            "count": on_count,
            "echo": on_echo,
            "ack": on_respond,
            "respond": on_respond,
        }
        await nc.subscribe(
            spec.sub_pattern,
            cb=handlers[mode],
            pending_msgs_limit=_PENDING_MSGS,
            pending_bytes_limit=_PENDING_BYTES,
        )
        await nc.flush()
        ctl.ready()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), _IDLE)
            except TimeoutError:
                if rule.stop(state[0], state[1]):
                    break
        await nc.flush()
        ctl.result(
            received=state[0],
            t_last=state[1],
            lat=samples_to_bytes(lat),
            dropped=0,
            target=rule.target,
        )
    finally:
        await nc.close()


def source(spec: Spec, ctl: Ctl) -> None:
    _run(_source(spec, ctl))


async def _source(spec: Spec, ctl: Ctl) -> None:
    nc = await _connect(spec)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic
        publish = nc.publish
        chunk = max(1, min(1024, (1 << 20) // max(1, spec.size)))
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        stop_at = t0 + int(spec.max_seconds * 1e9)
        sent = 0
        while sent < spec.count:
            k = min(chunk, spec.count - sent)
            for _ in range(k):
                await publish(topic, payload)
            sent += k
            if now_ns() > stop_at:
                break
        t1 = now_ns()
        await nc.flush(timeout=int(spec.timeout))
    finally:
        await nc.close()
    ctl.result(sent=sent, t_start=t0, t_end=t1, t_flushed=now_ns())


def confirmer(spec: Spec, ctl: Ctl) -> None:
    _run(_confirmer(spec, ctl))


async def _confirmer(spec: Spec, ctl: Ctl) -> None:
    nc = await _connect(spec)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic
        request = nc.request
        window = max(1, spec.window)
        ctl.ready()
        ctl.wait_go()
        for _ in range(spec.warmup):
            await request(topic, payload, timeout=10)
        total = spec.count
        shares = [total // window + (1 if i < total % window else 0) for i in range(window)]
        lats = [array("q") for _ in range(window)]
        errors = [0]

        async def run(i: int) -> None:
            lat = lats[i]
            mono = now_ns
            for _ in range(shares[i]):
                t = mono()
                try:
                    await request(topic, payload, timeout=10)
                except Exception:
                    errors[0] += 1
                    continue
                lat.append(mono() - t)

        t0 = now_ns()
        await asyncio.gather(*(run(i) for i in range(window)))
        t1 = now_ns()
    finally:
        await nc.close()
    lat_all = array("q")
    for lat in lats:
        lat_all.extend(lat)
    ctl.result(sent=total, t_start=t0, t_end=t1, lat=samples_to_bytes(lat_all), errors=errors[0])


def pinger(spec: Spec, ctl: Ctl) -> None:
    _run(_pinger(spec, ctl))


async def _pinger(spec: Spec, ctl: Ctl) -> None:
    nc = await _connect(spec)
    try:
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[bytes]] = []

        async def on_pong(msg: Any) -> None:
            if waiting:
                waiting.pop().set_result(msg.data)

        await nc.subscribe(spec.reply_topic, cb=on_pong)
        await nc.flush()
        ctl.ready()
        ctl.wait_go()
        publish = nc.publish
        topic = spec.topic
        size = spec.size
        warmup = spec.warmup
        mono = now_ns
        rtt = array("q")
        errors = 0
        total = warmup + spec.count
        t_start = mono()
        async with asyncio.timeout(spec.timeout):
            for i in range(total):
                if i == warmup:
                    t_start = mono()
                fut: asyncio.Future[bytes] = loop.create_future()
                waiting.append(fut)
                t0 = mono()
                await publish(topic, stamp_payload(i, t0, size))
                data = await fut
                t1 = mono()
                if read_stamp(data)[0] != i:
                    errors += 1
                if i >= warmup:
                    rtt.append(t1 - t0)
        t_end = mono()
    finally:
        await nc.close()
    ctl.result(sent=total, t_start=t_start, t_end=t_end, lat=samples_to_bytes(rtt), errors=errors)


def reqrep(spec: Spec, ctl: Ctl) -> None:
    """Request/reply: ``part`` server responds to each request (a sink in respond
    mode); ``part`` client calls ``nc.request`` one at a time."""
    if spec.extra.get("part") == "server":
        _run(_sink(spec.but(mode="respond"), ctl))
    else:
        _run(_confirmer(spec.but(window=1), ctl))


def filler(spec: Spec, ctl: Ctl) -> None:
    """Install ``spec.fill`` subscriptions over one raw protocol connection: pipelined
    SUB lines, then PING; the server's PONG says all of them are in place. For
    ``channels``, ``spec.fill`` raw connections instead, each subscribed to a subject
    of its own (``stand_in_channels``): NATS has no channels, and a zmqbus channel is a
    namespace with a connection of its own."""
    url = urlsplit(spec.address)
    where = (url.hostname or "127.0.0.1", url.port or 4222)
    with contextlib.ExitStack() as stack:
        if spec.fill_kind == "channels":
            subjects = stand_in_channels(spec.topic, spec.fill)
            socks = [stack.enter_context(socket.create_connection(where, 10)) for _ in subjects]
            # All connected first and all PONGs read last: no channel waits for a round
            # trip of its own (each INFO is already waiting when it is read).
            for s, subject in zip(socks, subjects, strict=True):
                _hello(s)
                s.sendall(f"SUB {subject} 1\r\nPING\r\n".encode())
            for s in socks:
                _read_until(s, b"PONG\r\n")
            installed = len(subjects)
        else:
            s = stack.enter_context(socket.create_connection(where, 10))
            socks = [s]
            _hello(s)
            patterns = filler_patterns(spec.fill_kind, spec.fill)
            for lo in range(0, len(patterns), 5000):
                lines = [
                    f"SUB {pat} {sid}\r\n".encode()
                    for sid, pat in enumerate(patterns[lo : lo + 5000], lo + 1)
                ]
                s.sendall(b"".join(lines))
            s.sendall(b"PING\r\n")
            _read_until(s, b"PONG\r\n")
            installed = len(patterns)
        ctl.ready(installed=installed, connections=len(socks))
        ctl.wait_stop()
        ctl.result()


def _hello(s: socket.socket) -> None:
    """Read the server's INFO and send CONNECT on a raw connection."""
    s.settimeout(60)
    _read_until(s, b"\r\n")
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"perf-filler"}\r\n')


def _read_until(s: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"nats-server closed the connection; got {buf[-200:]!r}")
        if b"-ERR" in chunk:
            raise ConnectionError(f"nats-server refused: {chunk[:200]!r}")
        buf += chunk
    return buf
