"""Raw pyzmq peers, written the way a Python user tuning for speed would write them.

``zmq-pushpull``: PUSH -> a Python *streamer* process (PULL in, PUSH out) -> PULL.
PUSH blocks when its queue is full, so nothing is ever lost. One frame per message.

``zmq-router``: DEALER clients and a Python *forwarder* process holding one ROUTER
socket: the smallest broker that routes by topic, the same three-process layout as
zmqbus. A client sends two frames, ``[topic, payload]``; ``[b"\\0", topic]``
subscribes (answered with the same two frames). The forwarder delivers
``[topic, payload]`` to every identity subscribed to that exact topic; like any
ROUTER it drops a message for a peer whose queue is full. Confirmation, where a
scenario wants it, is an application-level ACK the subscriber sends back through
the forwarder (``[reply_topic, seq+time]``).

For request/reply the forwarder is left out: the client DEALER talks straight to a
ROUTER that answers each request (two processes). That is the floor any broker's
round trip is measured against.

Hot loops use plain ``recv()``/``send(frame, flags)`` with a fixed frame count and
precomputed flags, never ``recv_multipart``/``send_multipart``, and blocking calls,
so an idle wait costs no CPU. Every socket has the same 100,000-message high-water
marks as zmqbus's sockets.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

import zmq

from perf.harness import (
    Ctl,
    IdleRule,
    Spec,
    make_payload,
    now_ns,
    read_stamp,
    samples_to_bytes,
    stamp_payload,
)

__all__ = [
    "forwarder",
    "pp_sink",
    "pp_source",
    "reqrep",
    "rt_confirmer",
    "rt_pinger",
    "rt_sink",
    "rt_source",
    "streamer",
]

HWM = 100_000
_MORE = zmq.SNDMORE
_SUB = b"\0"
_IDLE_MS = 250


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    s: zmq.Socket[bytes] = ctx.socket(kind)
    s.setsockopt(zmq.SNDHWM, HWM)
    s.setsockopt(zmq.RCVHWM, HWM)
    return s


def _bind(s: zmq.Socket[bytes]) -> str:
    s.bind("tcp://127.0.0.1:0")
    return s.getsockopt_string(zmq.LAST_ENDPOINT)


def _close(ctx: zmq.Context[zmq.Socket[bytes]], *socks: zmq.Socket[bytes], linger: int) -> None:
    # A positive linger: close() returns at once, term() waits until queued messages
    # have left (or linger ms passed), so a source exits only once its data is out.
    for s in socks:
        s.close(linger)
    ctx.term()


# --- servers -------------------------------------------------------------------------


def streamer(spec: Spec, ctl: Ctl) -> None:
    """PULL (publishers connect) -> PUSH (the subscriber connects); runs until killed."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = _socket(ctx, zmq.PULL)
    push = _socket(ctx, zmq.PUSH)
    ctl.ready(pub=_bind(pull), sub=_bind(push))
    recv = pull.recv
    send = push.send
    while True:
        send(recv())


def forwarder(spec: Spec, ctl: Ctl) -> None:
    """A ROUTER that forwards ``[topic, payload]`` to the topic's subscribers."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = _socket(ctx, zmq.ROUTER)
    address = _bind(router)
    ctl.ready(pub=address, sub=address)
    recv = router.recv
    send = router.send
    more = _MORE
    subs: dict[bytes, list[bytes]] = {}
    get = subs.get
    while True:
        ident = recv()
        topic = recv()
        payload = recv()
        dests = get(topic)
        if dests is not None:
            for dest in dests:
                send(dest, more)
                send(topic, more)
                send(payload)
        elif topic == _SUB:
            subs.setdefault(payload, []).append(ident)
            send(ident, more)
            send(_SUB, more)
            send(payload)


# --- PUSH/PULL -----------------------------------------------------------------------


def pp_sink(spec: Spec, ctl: Ctl) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = _socket(ctx, zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, _IDLE_MS)
    pull.connect(spec.address)
    try:
        ctl.ready()
        rule = IdleRule(ctl)
        recv = pull.recv
        mono = now_ns
        n = 0
        t_last = 0
        while n < rule.target:
            try:
                recv()
            except zmq.Again:
                if rule.stop(n, t_last):
                    break
                continue
            n += 1
            t_last = mono()
        ctl.result(received=n, t_last=t_last, lat=b"", dropped=0, target=rule.target)
    finally:
        _close(ctx, pull, linger=0)


def pp_source(spec: Spec, ctl: Ctl) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = _socket(ctx, zmq.PUSH)
    push.connect(spec.address)
    try:
        payload = make_payload(spec.size)
        send = push.send
        ctl.ready()
        ctl.wait_go()
        t0, t1, sent = _publish_loop(spec, lambda: send(payload))
    finally:
        _close(ctx, push, linger=int(spec.timeout * 1000))
    ctl.result(sent=sent, t_start=t0, t_end=t1, t_flushed=now_ns())


def _publish_loop(spec: Spec, fn: Callable[[], object]) -> tuple[int, int, int]:
    chunk = max(1, min(1024, (1 << 20) // max(1, spec.size)))
    t0 = now_ns()
    stop_at = t0 + int(spec.max_seconds * 1e9)
    sent = 0
    while sent < spec.count:
        k = min(chunk, spec.count - sent)
        for _ in range(k):
            fn()
        sent += k
        if now_ns() > stop_at:
            break
    return t0, now_ns(), sent


# --- DEALER/ROUTER via the forwarder ---------------------------------------------------


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], spec: Spec) -> zmq.Socket[bytes]:
    s = _socket(ctx, zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, _IDLE_MS)
    s.connect(spec.address)
    return s


def _subscribe(s: zmq.Socket[bytes], topic: str, timeout: float) -> None:
    t = topic.encode()
    s.send(_SUB, _MORE)
    s.send(t)
    stop_at = now_ns() + int(timeout * 1e9)
    while True:
        try:
            head = s.recv()
            body = s.recv()
        except zmq.Again:
            if now_ns() > stop_at:
                raise TimeoutError(f"forwarder did not confirm subscribing to {topic!r}") from None
            continue
        if head == _SUB and body == t:
            return


def rt_sink(spec: Spec, ctl: Ctl) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    s = _dealer(ctx, spec)
    try:
        _subscribe(s, spec.sub_pattern, 10.0)
        ctl.ready()
        rule = IdleRule(ctl)
        recv = s.recv
        send = s.send
        more = _MORE
        reply = spec.reply_topic.encode()
        mono = now_ns
        mode = spec.mode
        warmup = spec.warmup
        lat = array("q")
        n = 0
        t_last = 0
        while n < rule.target:
            try:
                recv()
                payload = recv()
            except zmq.Again:
                if rule.stop(n, t_last):
                    break
                continue
            t_last = mono()
            n += 1
            if mode == "echo":
                seq, t0 = read_stamp(payload)
                if seq >= warmup:
                    lat.append(t_last - t0)
                send(reply, more)
                send(payload)
            elif mode == "ack":
                send(reply, more)
                send(payload[:16])
        ctl.result(
            received=n, t_last=t_last, lat=samples_to_bytes(lat), dropped=0, target=rule.target
        )
    finally:
        _close(ctx, s, linger=2000)


def rt_source(spec: Spec, ctl: Ctl) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    s = _dealer(ctx, spec)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic.encode()
        send = s.send
        more = _MORE

        def one() -> None:
            send(topic, more)
            send(payload)

        ctl.ready()
        ctl.wait_go()
        t0, t1, sent = _publish_loop(spec, one)
    finally:
        _close(ctx, s, linger=int(spec.timeout * 1000))
    ctl.result(sent=sent, t_start=t0, t_end=t1, t_flushed=now_ns())


def rt_confirmer(spec: Spec, ctl: Ctl) -> None:
    """Keeps up to ``window`` messages unacknowledged; one socket, one thread."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    s = _dealer(ctx, spec)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        _subscribe(s, spec.reply_topic, 10.0)
        ctl.ready()
        ctl.wait_go()
        t_start, t_end, lat, errors = _window_loop(s, spec, spec.window)
    finally:
        _close(ctx, s, linger=0)
    ctl.result(
        sent=spec.count, t_start=t_start, t_end=t_end, lat=samples_to_bytes(lat), errors=errors
    )


def rt_pinger(spec: Spec, ctl: Ctl) -> None:
    """Ping-pong through the forwarder: the window-of-one case of the confirmer."""
    rt_confirmer(spec.but(window=1), ctl)


def _window_loop(s: zmq.Socket[bytes], spec: Spec, window: int) -> tuple[int, int, array[int], int]:
    send = s.send
    recv = s.recv
    more = _MORE
    topic = spec.topic.encode()
    size = spec.size
    warmup = spec.warmup
    total = warmup + spec.count
    mono = now_ns
    lat = array("q")
    errors = 0
    nxt = done = inflight = 0
    t_start = mono()
    expect_seq = 0
    while done < total:
        while inflight < window and nxt < total:
            send(topic, more)
            send(stamp_payload(nxt, mono(), size))
            nxt += 1
            inflight += 1
        recv()
        body = recv()
        t = mono()
        seq, t0 = read_stamp(body)
        if seq != expect_seq:
            errors += 1
        expect_seq = seq + 1
        done += 1
        inflight -= 1
        if seq >= warmup:
            lat.append(t - t0)
        if done == warmup:
            t_start = t
    return t_start, mono(), lat, errors


# --- request/reply: DEALER straight to a ROUTER ----------------------------------------


def reqrep(spec: Spec, ctl: Ctl) -> None:
    """``part`` server: a ROUTER that answers every request with its first 16 bytes;
    ``part`` client: a DEALER sending one request at a time."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    if spec.extra.get("part") == "server":
        router = _socket(ctx, zmq.ROUTER)
        router.setsockopt(zmq.RCVTIMEO, _IDLE_MS)
        address = _bind(router)
        try:
            ctl.ready(address=address)
            rule = IdleRule(ctl)
            recv = router.recv
            send = router.send
            more = _MORE
            n = 0
            t_last = 0
            while n < rule.target:
                try:
                    ident = recv()
                    body = recv()
                except zmq.Again:
                    if rule.stop(n, t_last):
                        break
                    continue
                send(ident, more)
                send(body[:16])
                n += 1
                t_last = now_ns()
            ctl.result(received=n, t_last=t_last, lat=b"", dropped=0, target=rule.target)
        finally:
            _close(ctx, router, linger=1000)
        return
    s = _socket(ctx, zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(spec.address)
    try:
        ctl.ready()
        ctl.wait_go()
        send = s.send
        recv = s.recv
        size = spec.size
        warmup = spec.warmup
        mono = now_ns
        lat = array("q")
        errors = 0
        t_start = mono()
        for i in range(warmup + spec.count):
            if i == warmup:
                t_start = mono()
            t0 = mono()
            send(stamp_payload(i, t0, size))
            body = recv()
            t1 = mono()
            if read_stamp(body)[0] != i:
                errors += 1
            if i >= warmup:
                lat.append(t1 - t0)
        t_end = mono()
    finally:
        _close(ctx, s, linger=0)
    ctl.result(
        sent=warmup + spec.count,
        t_start=t_start,
        t_end=t_end,
        lat=samples_to_bytes(lat),
        errors=errors,
    )
