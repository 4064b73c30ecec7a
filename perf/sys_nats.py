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

JetStream (the "NATS JetStream" system: ``nats-server -js``, file storage) through
nats-py's own API: a stored publish is ``js.publish`` (it awaits the PubAck), a
pipelined one ``js.publish_async`` (a future per PubAck; faster here than as many
tasks each awaiting ``js.publish``), a backlog goes in as core publishes with a
``js.publish`` every ``_FILL_CHUNK``, and a stream is read back by a push consumer
with a callback: a durable one acking each message (``manual_ack``; faster here than
a pull consumer fetching batches), or for a replay nats-py's ordered consumer
(ephemeral, no acks: how nats-py reads a stream back).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any
from urllib.parse import urlsplit

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
    stand_in_channels,
)

__all__ = [
    "confirmer",
    "event_loop_name",
    "filler",
    "pinger",
    "reqrep",
    "sink",
    "source",
    "stream_consumer",
    "stream_filler",
    "stream_publisher",
]

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


# --- JetStream ---------------------------------------------------------------------------

# Core publishes between two ``js.publish`` while filling a stream (as for zmqbus).
_FILL_CHUNK = 10_000


async def _add_stream(js: Any, spec: Spec) -> str:
    """Add the file stream ``spec.extra`` names (``stream``, ``subjects``); its name."""
    from nats.js.api import StorageType

    name = str(spec.extra["stream"])
    await js.add_stream(name=name, subjects=list(spec.extra["subjects"]), storage=StorageType.FILE)
    return name


def stream_publisher(spec: Spec, ctl: Ctl) -> None:
    _run(_stream_publisher(spec, ctl))


async def _stream_publisher(spec: Spec, ctl: Ctl) -> None:
    """Stored publishes: ``js.publish`` one at a time, or ``js.publish_async`` with
    ``window`` PubAcks outstanding, awaiting the oldest when the window is full (the
    shape of zmqbus's ``publish_nowait`` window). A publish counts once the stream
    stored it (its PubAck names the stream); with ``delete`` the stream is deleted
    when done (after the clock)."""
    nc = await _connect(spec)
    try:
        window = max(1, spec.window)
        js = nc.jetstream(publish_async_max_pending=max(4000, window))
        stream = await _add_stream(js, spec)
        payload = make_payload(spec.size)
        topic = spec.topic
        publish = js.publish
        ctl.ready()
        ctl.wait_go()
        for _ in range(spec.warmup):
            await publish(topic, payload, timeout=10)
        total = spec.count
        lat = array("q")
        failures = Failures()
        failed = failures.add
        mono = now_ns

        async def settled(fut: asyncio.Future[Any]) -> None:
            try:
                # A PubAck already in costs no loop turn: awaiting through wait_for
                # would yield once per message, and nats-py would then write each
                # publish on its own instead of a window's worth at once.
                ack = fut.result() if fut.done() else await asyncio.wait_for(fut, 12.0)
            except Exception as exc:
                failed(exc)
                return
            if ack.stream != stream:
                failed(ack)

        t0 = now_ns()
        if window == 1:
            for _ in range(total):
                t = mono()
                try:
                    ack = await publish(topic, payload, timeout=10)
                except Exception as exc:
                    failed(exc)
                    continue
                lat.append(mono() - t)
                if ack.stream != stream:
                    failed(ack)
        else:
            publish_async = js.publish_async
            outstanding: deque[asyncio.Future[Any]] = deque()
            for _ in range(total):
                if len(outstanding) >= window:
                    await settled(outstanding.popleft())
                t = mono()
                fut = await publish_async(topic, payload)
                fut.add_done_callback(partial(record_latency, lat, t))
                outstanding.append(fut)
            while outstanding:
                await settled(outstanding.popleft())
        t1 = now_ns()
        if spec.extra.get("delete"):
            await js.delete_stream(stream)
    finally:
        await nc.close()
    ctl.result(
        sent=total,
        t_start=t0,
        t_end=t1,
        lat=samples_to_bytes(lat),
        errors=failures.count,
        error_samples=failures.samples,
    )


def stream_filler(spec: Spec, ctl: Ctl) -> None:
    _run(_stream_filler(spec, ctl))


async def _stream_filler(spec: Spec, ctl: Ctl) -> None:
    """Add the file stream and store ``spec.count`` messages in it as fast as they go
    in: core publishes, every ``_FILL_CHUNK``-th one a ``js.publish`` whose PubAck's
    sequence says the stream holds every message sent so far (one connection's
    messages are stored in order): a run that lost one fails here."""
    nc = await _connect(spec)
    try:
        js = nc.jetstream()
        stream = await _add_stream(js, spec)
        payload = make_payload(spec.size)
        topic = spec.topic
        publish = nc.publish
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        sent = 0
        while sent < spec.count:
            k = min(_FILL_CHUNK, spec.count - sent)
            for _ in range(k - 1):
                await publish(topic, payload)
            ack = await js.publish(topic, payload, timeout=spec.timeout)
            sent += k
            if ack.stream != stream or ack.seq != sent:
                raise RuntimeError(f"{sent:,} sent, but the last stored as {ack!r}")
        t1 = now_ns()
    finally:
        await nc.close()
    ctl.result(sent=sent, t_start=t0, t_end=t1)


def stream_consumer(spec: Spec, ctl: Ctl) -> None:
    _run(_stream_consumer(spec, ctl))


async def _stream_consumer(spec: Spec, ctl: Ctl) -> None:
    """Read ``spec.count`` messages of the stream from its first: the named
    ``durable`` push consumer acking each message (explicit acks, at most
    ``ack_pending`` unacknowledged), or without ``durable`` nats-py's ordered consumer
    (no acks). The clock starts before the subscribe; it stops at the last message
    for the ordered consumer, and for the durable once the server's ack floor
    reaches it (``consumer_info``, polled: JetStream takes acks asynchronously). The
    last message must be the stream's ``count``-th."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await _connect(spec)
    try:
        js = nc.jetstream()
        stream = str(spec.extra["stream"])
        durable = str(spec.extra.get("durable") or "")
        subject = str(spec.extra["subjects"][0])
        done = asyncio.Event()
        count = spec.count
        state: list[Any] = [0, None]  # received, the last message

        async def on_ack(msg: Any) -> None:
            await msg.ack()
            state[0] += 1
            if state[0] >= count:
                state[1] = msg
                done.set()

        async def on_read(msg: Any) -> None:
            state[0] += 1
            if state[0] >= count:
                state[1] = msg
                done.set()

        limits = {"pending_msgs_limit": _PENDING_MSGS, "pending_bytes_limit": _PENDING_BYTES}
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        if durable:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=int(spec.extra["ack_pending"]),
            )
            sub = await js.subscribe(
                subject,
                stream=stream,
                durable=durable,
                cb=on_ack,
                manual_ack=True,
                config=config,
                **limits,
            )
        else:
            sub = await js.subscribe(
                subject, stream=stream, ordered_consumer=True, cb=on_read, **limits
            )
        with contextlib.suppress(TimeoutError):  # stalled: the shortfall shows as loss
            await asyncio.wait_for(done.wait(), spec.timeout)
        t_last = now_ns()
        n = int(state[0])
        last = state[1]
        errors = 0
        last_seq = 0 if last is None else int(last.metadata.sequence.stream)
        if last_seq != n:
            errors += 1
        if durable:
            deadline = t_last + int(spec.timeout * 1e9)
            while True:
                info = await js.consumer_info(stream, durable)
                if info.ack_floor.stream_seq >= n or now_ns() > deadline:
                    break
                await asyncio.sleep(0.001)
            errors += info.ack_floor.stream_seq != n
        t1 = now_ns()
        await sub.unsubscribe()
        if spec.extra.get("delete"):
            await js.delete_stream(stream)
    finally:
        await nc.close()
    ctl.result(received=n, t_start=t0, t_last=t_last, t_end=t1, errors=errors, last_seq=last_seq)
