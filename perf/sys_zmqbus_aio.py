"""zmqbus roles through its asyncio face: every client is a ``zmqbus.aio.Bus`` on a
uvloop event loop (as the NATS roles run nats-py), the broker is the same
``python -m zmqbus broker`` process the threaded roles use (``perf.servers``).

The roles mirror ``perf.sys_zmqbus`` one for one, with the same semantics and the
same result fields, so the scenarios and the report treat both faces alike:

- sources ``await publish(..., confirm=False)`` in a loop and let the loop run
  once per chunk of messages (``asyncio.sleep(0)``, ~1 MiB of payload), so the
  bus's own socket work (heartbeats, arrivals) is not starved by a long burst;
- sinks read a queue subscription with ``await get()``, with a buffer
  (``maxsize``) far above any run's message count;
- a pipelined confirmer keeps ``window`` confirmations outstanding with
  ``Bus.publish_nowait`` (a future per publish), awaiting the oldest when the
  window is full, as the threaded one does (the NATS confirmer keeps ``window``
  requests outstanding with as many tasks: nats-py has no future-returning request);
- request/reply (``reqrep``, registered when ``zmqbus.aio.Bus`` has ``request``):
  the responder is a handler subscription (a plain function, run on the loop)
  whose returned bytes are the reply; the requester awaits ``Bus.request`` one
  request at a time.

The bus has no thread of its own: its socket is watched by the loop. A wait for
the orchestrator (``go``, ``expect``) therefore runs in a helper thread
(``asyncio.to_thread``) so the loop keeps serving the bus meanwhile (a loop
blocked for longer than three heartbeat intervals would take the broker for
dead and reconnect); nothing is measured while it waits.

Fillers are the threaded system's (``perf.sys_zmqbus.filler``): raw DEALER
sockets speaking the wire protocol, which do not depend on the face.
"""

from __future__ import annotations

import asyncio
from array import array
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from perf.harness import (
    Ctl,
    Failures,
    IdleRule,
    Spec,
    make_payload,
    now_ns,
    read_stamp,
    record_latency,
    samples_to_bytes,
    stamp_payload,
)
from perf.sys_zmqbus import curve_options, filler
from zmqbus import Message, PublishResult
from zmqbus.aio import Bus

__all__ = ["confirmer", "filler", "pinger", "reqrep", "sink", "source"]

# Far above any run's count: the subscription buffer must never be what drops.
_SUB_BUFFER = 50_000_000
_IDLE = 0.25

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, None]) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def _bus(spec: Spec, close_timeout: float = 10.0) -> Bus:
    return Bus(spec.address, spec.channel, close_timeout=close_timeout, **curve_options(spec))


async def _blocking(fn: Callable[[], T]) -> T:
    """A blocking wait for the orchestrator, off the loop (see the module docstring)."""
    return await asyncio.to_thread(fn)


def sink(spec: Spec, ctl: Ctl) -> None:
    """Subscribe to ``spec.sub_pattern``; count (and in echo mode time and echo) messages."""
    _run(_sink(spec, ctl))


async def _sink(spec: Spec, ctl: Ctl) -> None:
    async with _bus(spec) as bus:
        sub = await bus.subscribe(spec.sub_pattern, maxsize=_SUB_BUFFER)
        ctl.ready()
        rule = IdleRule(ctl)
        get = sub.get
        mono = now_ns
        n = 0
        t_last = 0
        lat = array("q")
        if spec.mode == "echo":
            publish = bus.publish
            reply = spec.reply_topic
            warmup = spec.warmup
            while n < rule.target:
                try:
                    msg = await get(_IDLE)
                except TimeoutError:
                    if rule.stop(n, t_last):
                        break
                    continue
                t_last = mono()
                payload = msg.payload
                seq, t0 = read_stamp(payload)
                if seq >= warmup:
                    lat.append(t_last - t0)
                await publish(reply, payload, confirm=False)
                n += 1
        else:  # count, ack: zmqbus confirms by itself
            while n < rule.target:
                try:
                    await get(_IDLE)
                except TimeoutError:
                    if rule.stop(n, t_last):
                        break
                    continue
                n += 1
                t_last = mono()
        ctl.result(
            received=n, t_last=t_last, lat=samples_to_bytes(lat), dropped=sub.dropped, target=n
        )


def _chunk(size: int) -> int:
    # Messages published between clock checks: ~1 MiB of payload, at most 1024.
    return max(1, min(1024, (1 << 20) // max(1, size)))


def source(spec: Spec, ctl: Ctl) -> None:
    """Publish ``spec.count`` messages fire-and-forget, as fast as ``publish`` returns."""
    _run(_source(spec, ctl))


async def _source(spec: Spec, ctl: Ctl) -> None:
    # close() waits until the broker has everything queued: give it time.
    async with _bus(spec, close_timeout=spec.timeout) as bus:
        payload = make_payload(spec.size)
        topic = spec.topic
        publish = bus.publish
        chunk = _chunk(spec.size)
        yield_now = asyncio.sleep
        ctl.ready()
        await _blocking(ctl.wait_go)
        t0 = now_ns()
        stop_at = t0 + int(spec.max_seconds * 1e9)
        sent = 0
        while sent < spec.count:
            k = min(chunk, spec.count - sent)
            for _ in range(k):
                await publish(topic, payload, confirm=False)
            sent += k
            if now_ns() > stop_at:
                break
            await yield_now(0)
        t1 = now_ns()
    ctl.result(sent=sent, t_start=t0, t_end=t1, t_flushed=now_ns())


def confirmer(spec: Spec, ctl: Ctl) -> None:
    """Confirmed publishes: one at a time, or ``window`` outstanding futures.

    Records every publish's duration (the confirmed round trip) after ``warmup``.
    """
    _run(_confirmer(spec, ctl))


async def _confirmer(spec: Spec, ctl: Ctl) -> None:
    async with _bus(spec) as bus:
        payload = make_payload(spec.size)
        topic = spec.topic
        want = int(spec.extra.get("delivered", 1))
        window = max(1, spec.window)
        publish = bus.publish
        ctl.ready()
        await _blocking(ctl.wait_go)
        for _ in range(spec.warmup):
            await publish(topic, payload)
        total = spec.count
        lat = array("q")
        failures = Failures()
        failed = failures.add
        mono = now_ns

        async def settled(fut: asyncio.Future[PublishResult]) -> None:
            try:
                result = await fut
            except Exception as exc:
                failed(exc)
                return
            if result.delivered != want:
                failed(result)

        t0 = now_ns()
        if window == 1:
            for _ in range(total):
                t = mono()
                try:
                    result = await publish(topic, payload, timeout=10.0)
                except Exception as exc:
                    failed(exc)
                    continue
                lat.append(mono() - t)
                if result.delivered != want:
                    failed(result)
        else:
            nowait = bus.publish_nowait
            outstanding: deque[asyncio.Future[PublishResult]] = deque()
            for _ in range(total):
                if len(outstanding) >= window:
                    await settled(outstanding.popleft())
                t = mono()
                fut = nowait(topic, payload, timeout=10.0)
                fut.add_done_callback(partial(record_latency, lat, t))
                outstanding.append(fut)
            while outstanding:
                await settled(outstanding.popleft())
        t1 = now_ns()
    ctl.result(
        sent=total,
        t_start=t0,
        t_end=t1,
        lat=samples_to_bytes(lat),
        errors=failures.count,
        error_samples=failures.samples,
    )


def pinger(spec: Spec, ctl: Ctl) -> None:
    """Ping-pong: publish a stamped message, wait for its echo, repeat."""
    _run(_pinger(spec, ctl))


async def _pinger(spec: Spec, ctl: Ctl) -> None:
    async with _bus(spec) as bus:
        sub = await bus.subscribe(spec.reply_topic, maxsize=_SUB_BUFFER)
        ctl.ready()
        await _blocking(ctl.wait_go)
        publish = bus.publish
        get = sub.get
        topic = spec.topic
        size = spec.size
        warmup = spec.warmup
        mono = now_ns
        rtt = array("q")
        errors = 0
        total = warmup + spec.count
        t_start = mono()
        for i in range(total):
            if i == warmup:
                t_start = mono()
            t0 = mono()
            await publish(topic, stamp_payload(i, t0, size), confirm=False)
            msg = await get(10.0)
            t1 = mono()
            if read_stamp(msg.payload)[0] != i:
                errors += 1
            if i >= warmup:
                rtt.append(t1 - t0)
        t_end = mono()
    ctl.result(sent=total, t_start=t_start, t_end=t_end, lat=samples_to_bytes(rtt), errors=errors)


def reqrep(spec: Spec, ctl: Ctl) -> None:
    """``part`` server: a handler subscription answering each request with its first
    16 bytes; ``part`` client: ``await Bus.request`` one at a time, timing each."""
    if spec.extra.get("part") == "server":
        _run(_responder(spec, ctl))
    else:
        _run(_requester(spec, ctl))


async def _responder(spec: Spec, ctl: Ctl) -> None:
    async with _bus(spec) as bus:
        rule = IdleRule(ctl)
        done = asyncio.Event()
        state = [0, 0]  # answered, time of the last

        def answer(msg: Message) -> bytes:
            state[0] += 1
            state[1] = now_ns()
            if state[0] >= rule.target:
                done.set()
            return msg.payload[:16]

        await bus.subscribe(spec.topic, handler=answer, maxsize=_SUB_BUFFER)
        ctl.ready()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), _IDLE)
            except TimeoutError:
                if rule.stop(state[0], state[1]):
                    break
        # The last reply leaves after its handler returns: close only once the
        # requester is done.
        await _blocking(ctl.wait_expect)
        ctl.result(received=state[0], t_last=state[1], lat=b"", dropped=0, target=rule.target)


async def _requester(spec: Spec, ctl: Ctl) -> None:
    async with _bus(spec) as bus:
        request = bus.request
        topic = spec.topic
        size = spec.size
        warmup = spec.warmup
        mono = now_ns
        lat = array("q")
        errors = 0
        ctl.ready()
        await _blocking(ctl.wait_go)
        t_start = mono()
        for i in range(warmup + spec.count):
            if i == warmup:
                t_start = mono()
            t0 = mono()
            reply = await request(topic, stamp_payload(i, t0, size), timeout=10.0)
            t1 = mono()
            if read_stamp(reply.payload)[0] != i:
                errors += 1
            if i >= warmup:
                lat.append(t1 - t0)
        t_end = mono()
    ctl.result(
        sent=warmup + spec.count,
        t_start=t_start,
        t_end=t_end,
        lat=samples_to_bytes(lat),
        errors=errors,
    )
