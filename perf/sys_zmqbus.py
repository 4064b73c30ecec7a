"""zmqbus roles: every client is a ``zmqbus.Bus`` (its own I/O thread), the broker is
``python -m zmqbus broker`` in its own process (``perf.servers``).

Fire-and-forget sources call ``publish(..., confirm=False)``; sinks read a queue
subscription with ``get()`` on the main thread, with a buffer (``maxsize``) far above
any run's message count so the subscription itself never drops. A pipelined
confirmer keeps ``window`` confirmations outstanding from one thread with
``Bus.publish_nowait`` (a future per publish), waiting for the oldest when the window
is full.

Request/reply (``reqrep``, registered when the installed zmqbus has ``Bus.request``):
the responder is a handler subscription whose return value is the reply, the
requester calls ``Bus.request`` one request at a time.

The same roles serve "zmqbus (CURVE)": a spec with ``curve`` set connects its bus
with CURVE (``curve_options``); nothing else differs.

Durable streams (the "zmqbus (sync ...)" systems, a broker with a store directory):
the confirmer is the stored publisher too (``Spec.extra`` names the stream it adds,
and a publish counts once the stream stored it); ``stream_filler`` stores a backlog
as fast as it goes in; ``stream_consumer`` reads a stream back from its first message
through ``Bus.consume``, acking each message.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from array import array
from collections import deque
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import zmq

from perf.harness import (
    Ctl,
    Failures,
    IdleRule,
    Spec,
    filler_patterns,
    make_payload,
    now_ns,
    read_stamp,
    record_latency,
    samples_to_bytes,
    stamp_payload,
)
from zmqbus import Bus, Message, PublishResult
from zmqbus import protocol as p

__all__ = [
    "confirmer",
    "curve_options",
    "filler",
    "pinger",
    "reqrep",
    "sink",
    "source",
    "stream_consumer",
    "stream_filler",
]

# Far above any run's count: the subscription buffer must never be what drops.
_SUB_BUFFER = 50_000_000
_IDLE = 0.25


def curve_options(spec: Spec) -> dict[str, Any]:
    """``Bus`` keyword arguments for a CURVE broker's client (none for a plain broker)."""
    if spec.curve is None:
        return {}
    server_key, key_file = spec.curve
    # A Path, not str: zmqbus reads any 40-character str as Z85 key text, and a
    # temporary directory's key file path can be exactly that long.
    return {"server_key": server_key, "key": Path(key_file)}


def _bus(spec: Spec, close_timeout: float = 10.0) -> Bus:
    return Bus(spec.address, spec.channel, close_timeout=close_timeout, **curve_options(spec))


def sink(spec: Spec, ctl: Ctl) -> None:
    """Subscribe to ``spec.sub_pattern``; count (and in echo mode time and echo) messages."""
    bus = _bus(spec)
    try:
        sub = bus.subscribe(spec.sub_pattern, maxsize=_SUB_BUFFER)
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
                    msg = get(_IDLE)
                except TimeoutError:
                    if rule.stop(n, t_last):
                        break
                    continue
                t_last = mono()
                payload = msg.payload
                seq, t0 = read_stamp(payload)
                if seq >= warmup:
                    lat.append(t_last - t0)
                publish(reply, payload, confirm=False)
                n += 1
        else:  # count, ack: zmqbus confirms by itself
            while n < rule.target:
                try:
                    get(_IDLE)
                except TimeoutError:
                    if rule.stop(n, t_last):
                        break
                    continue
                n += 1
                t_last = mono()
        ctl.result(
            received=n, t_last=t_last, lat=samples_to_bytes(lat), dropped=sub.dropped, target=n
        )
    finally:
        bus.close()


def _chunk(size: int) -> int:
    # Messages published between clock checks: ~1 MiB of payload, at most 1024.
    return max(1, min(1024, (1 << 20) // max(1, size)))


def source(spec: Spec, ctl: Ctl) -> None:
    """Publish ``spec.count`` messages fire-and-forget, as fast as ``publish`` returns."""
    # close() waits until the broker has everything queued: give it time.
    bus = _bus(spec, close_timeout=spec.timeout)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic
        publish = bus.publish
        chunk = _chunk(spec.size)
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        stop_at = t0 + int(spec.max_seconds * 1e9)
        sent = 0
        while sent < spec.count:
            k = min(chunk, spec.count - sent)
            for _ in range(k):
                publish(topic, payload, confirm=False)
            sent += k
            if now_ns() > stop_at:
                break
        t1 = now_ns()
    finally:
        bus.close()
    ctl.result(sent=sent, t_start=t0, t_end=t1, t_flushed=now_ns())


def _add_stream(bus: Bus, spec: Spec) -> str:
    """Add the file stream ``spec.extra`` names (``stream``, ``subjects``); its name."""
    name = str(spec.extra["stream"])
    bus.add_stream(name, list(spec.extra["subjects"]), storage="file", timeout=30.0)
    return name


def confirmer(spec: Spec, ctl: Ctl) -> None:
    """Confirmed publishes: one at a time, or ``window`` outstanding futures.

    Records every publish's duration (the confirmed round trip) after ``warmup``.
    With ``stream`` in ``spec.extra`` (role ``stream_publisher``) it first adds that
    file stream, a publish counts only once that stream stored it (``PublishResult``
    names it), and with ``delete`` it deletes the stream when done (after the clock).
    """
    bus = _bus(spec)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic
        want = int(spec.extra.get("delivered", 1))
        stream = _add_stream(bus, spec) if "stream" in spec.extra else None
        window = max(1, spec.window)
        ctl.ready()
        ctl.wait_go()
        publish = bus.publish
        for _ in range(spec.warmup):
            publish(topic, payload)
        total = spec.count
        lat = array("q")
        failures = Failures()
        failed = failures.add
        mono = now_ns

        def settled(fut: Future[PublishResult]) -> None:
            try:
                result = fut.result(12.0)
            except Exception as exc:
                failed(exc)
                return
            if result.delivered != want or result.stream != stream:
                failed(result)

        t0 = now_ns()
        if window == 1:
            for _ in range(total):
                t = mono()
                try:
                    result = publish(topic, payload, timeout=10.0)
                except Exception as exc:
                    failed(exc)
                    continue
                lat.append(mono() - t)
                if result.delivered != want or result.stream != stream:
                    failed(result)
        else:
            nowait = bus.publish_nowait
            outstanding: deque[Future[PublishResult]] = deque()
            for _ in range(total):
                if len(outstanding) >= window:
                    settled(outstanding.popleft())
                t = mono()
                fut = nowait(topic, payload, timeout=10.0)
                # On the bus's I/O thread, as the confirmation arrives.
                fut.add_done_callback(partial(record_latency, lat, t))
                outstanding.append(fut)
            while outstanding:
                settled(outstanding.popleft())
        t1 = now_ns()
        if stream is not None and spec.extra.get("delete"):
            bus.delete_stream(stream, timeout=spec.timeout)
    finally:
        bus.close()
    ctl.result(
        sent=total,
        t_start=t0,
        t_end=t1,
        lat=samples_to_bytes(lat),
        errors=failures.count,
        error_samples=failures.samples,
    )


# Unconfirmed publishes between two confirmed ones while filling a stream: far below
# the bus's 100,000-message high-water mark, so none is ever dropped on the way.
_FILL_CHUNK = 10_000


def stream_filler(spec: Spec, ctl: Ctl) -> None:
    """Add the file stream ``spec.extra`` names and store ``spec.count`` messages in it
    as fast as they go in: unconfirmed publishes, every ``_FILL_CHUNK``-th one
    confirmed. The broker handles one peer's messages in order, so each confirmed
    publish's sequence says the stream holds every message sent so far: a run that
    lost one fails here. (Not timed by any figure: this makes a backlog.)"""
    bus = _bus(spec, close_timeout=spec.timeout)
    try:
        stream = _add_stream(bus, spec)
        payload = make_payload(spec.size)
        topic = spec.topic
        publish = bus.publish
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        sent = 0
        while sent < spec.count:
            k = min(_FILL_CHUNK, spec.count - sent)
            for _ in range(k - 1):
                publish(topic, payload, confirm=False)
            result = publish(topic, payload, timeout=spec.timeout)
            sent += k
            if result.stream != stream or result.seq != sent:
                raise RuntimeError(f"{sent:,} sent, but the last stored as {result!r}")
        t1 = now_ns()
    finally:
        bus.close()
    ctl.result(sent=sent, t_start=t0, t_end=t1)


def stream_consumer(spec: Spec, ctl: Ctl) -> None:
    """Read ``spec.count`` messages of the stream ``spec.extra`` names from its first,
    acking each: the named ``durable`` (made on the broker as it binds), or an
    ephemeral consumer when ``durable`` is empty. The clock starts before the bind;
    it stops at the last message for an ephemeral consumer, and for a durable once
    the broker holds every ack (a ``consumer_info`` after the acks: the broker
    handles one peer's messages in order). The last message must be the stream's
    ``count``-th: a redelivery or a gap would show there, and the durable's ack
    floor must reach it."""
    bus = _bus(spec)
    try:
        stream = str(spec.extra["stream"])
        durable = str(spec.extra.get("durable") or "")
        options: dict[str, Any] = {
            "deliver": "all",
            "max_ack_pending": int(spec.extra["ack_pending"]),
        }
        if durable:
            options["durable"] = durable
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        consumer = bus.consume(stream, maxsize=_SUB_BUFFER, timeout=30.0, **options)
        get = consumer.get
        n = 0
        last: Message | None = None
        try:
            while n < spec.count:
                last = get(10.0)
                last.ack()
                n += 1
        except TimeoutError:
            pass  # stalled: the shortfall shows as loss
        t_last = now_ns()
        errors = 0
        if last is None or last.seq != n:
            errors += 1
        if durable:
            floor = bus.consumer_info(stream, durable, timeout=spec.timeout).ack_floor
            errors += floor != n
        t1 = now_ns()
        consumer.unsubscribe()
        if spec.extra.get("delete"):
            bus.delete_stream(stream, timeout=spec.timeout)
    finally:
        bus.close()
    ctl.result(
        received=n,
        t_start=t0,
        t_last=t_last,
        t_end=t1,
        errors=errors,
        last_seq=0 if last is None else int(last.seq or 0),
    )


def pinger(spec: Spec, ctl: Ctl) -> None:
    """Ping-pong: publish a stamped message, wait for its echo, repeat."""
    bus = _bus(spec)
    try:
        sub = bus.subscribe(spec.reply_topic, maxsize=_SUB_BUFFER)
        ctl.ready()
        ctl.wait_go()
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
            publish(topic, stamp_payload(i, t0, size), confirm=False)
            msg = get(10.0)
            t1 = mono()
            if read_stamp(msg.payload)[0] != i:
                errors += 1
            if i >= warmup:
                rtt.append(t1 - t0)
        t_end = mono()
    finally:
        bus.close()
    ctl.result(sent=total, t_start=t_start, t_end=t_end, lat=samples_to_bytes(rtt), errors=errors)


def reqrep(spec: Spec, ctl: Ctl) -> None:
    """``part`` server: a handler subscription answering each request with its first
    16 bytes; ``part`` client: ``Bus.request`` one at a time, timing each."""
    bus = _bus(spec)
    try:
        if spec.extra.get("part") == "server":
            rule = IdleRule(ctl)
            done = threading.Event()
            state = [0, 0]  # answered, time of the last

            def answer(msg: Message) -> bytes:
                state[0] += 1
                state[1] = now_ns()
                if state[0] >= rule.target:
                    done.set()
                return msg.payload[:16]

            bus.subscribe(spec.topic, answer, maxsize=_SUB_BUFFER)
            ctl.ready()
            while not done.wait(_IDLE):
                if rule.stop(state[0], state[1]):
                    break
            # The last reply leaves after its handler returns: close only once the
            # requester is done.
            ctl.wait_expect()
            ctl.result(received=state[0], t_last=state[1], lat=b"", dropped=0, target=rule.target)
            return
        request = bus.request
        topic = spec.topic
        size = spec.size
        warmup = spec.warmup
        mono = now_ns
        lat = array("q")
        errors = 0
        ctl.ready()
        ctl.wait_go()
        t_start = mono()
        for i in range(warmup + spec.count):
            if i == warmup:
                t_start = mono()
            t0 = mono()
            reply = request(topic, stamp_payload(i, t0, size), timeout=10.0)
            t1 = mono()
            if read_stamp(reply.payload)[0] != i:
                errors += 1
            if i >= warmup:
                lat.append(t1 - t0)
        t_end = mono()
    finally:
        bus.close()
    ctl.result(
        sent=warmup + spec.count,
        t_start=t_start,
        t_end=t_end,
        lat=samples_to_bytes(lat),
        errors=errors,
    )


def _hello(chan: bytes) -> list[bytes]:
    return p.encode(p.Hello(chan, p.pack_hello("perf-filler")))


def _subscribe(chan: bytes, n: int, pattern: str) -> list[bytes]:
    """SUBSCRIBE frames built from the protocol module's own ``Subscribe`` fields, so
    the filler follows the protocol if SUBSCRIBE grows fields (a subscription id, a
    queue group): ``n`` numbers the ref and any id; anything else stays empty."""
    known: dict[str, bytes] = {
        "channel": chan,
        "ref": n.to_bytes(8, "big"),
        "pattern": pattern.encode(),
        "sid": n.to_bytes(4, "big"),
    }
    names = [f.name for f in dataclasses.fields(p.Subscribe)]
    return p.encode(p.Subscribe(**{k: known.get(k, b"") for k in names}))


def filler(spec: Spec, ctl: Ctl) -> None:
    """Install ``spec.fill`` subscriptions (or channels) that the benchmark topic never
    matches, with raw DEALER sockets speaking the wire protocol (docs/protocol.md):
    pipelined SUBSCRIBEs install 100,000 patterns in seconds, where one ``Bus`` would
    wait for each one in turn."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.set(zmq.MAX_SOCKETS, spec.fill + 64)
    socks: list[zmq.Socket[bytes]] = []

    def dealer() -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.RCVTIMEO, 30_000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(spec.address)
        socks.append(s)
        return s

    def expect(s: zmq.Socket[bytes], head: bytes) -> None:
        frames = s.recv_multipart()
        if frames[0] != head:
            raise RuntimeError(f"broker answered {frames!r}")

    try:
        if spec.fill_kind == "channels":
            chans = [uuid.uuid4().bytes for _ in range(spec.fill)]
            for chan in chans:
                dealer().send_multipart(_hello(chan))
            for s in socks:
                expect(s, p.H_WELCOME)
            for s, chan in zip(socks, chans, strict=True):
                s.send_multipart(_subscribe(chan, 1, spec.topic))
            for s in socks:
                expect(s, p.H_OK)
        else:
            chan = uuid.UUID(spec.channel).bytes
            s = dealer()
            s.send_multipart(_hello(chan))
            expect(s, p.H_WELCOME)
            patterns = filler_patterns(spec.fill_kind, spec.fill)
            for lo in range(0, len(patterns), 1000):
                batch = patterns[lo : lo + 1000]
                for i, pattern in enumerate(batch, lo + 1):
                    s.send_multipart(_subscribe(chan, i, pattern))
                for _ in batch:
                    expect(s, p.H_OK)
        ctl.ready(installed=spec.fill)
        ctl.wait_stop()
        ctl.result()
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
