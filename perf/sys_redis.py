"""Redis pub/sub roles: ``redis-server`` (Debian) with ``redis-py`` and its hiredis parser.

Sources publish through a non-transactional pipeline (up to 128 PUBLISH commands,
or ~1 MiB of payload, per round trip); sinks read a ``PubSub`` with
``get_message(timeout)``. A pattern with ``*`` becomes a PSUBSCRIBE (Redis glob
patterns), anything else a SUBSCRIBE.

Redis has no subscriber confirmation: a PUBLISH answers with the number of clients
the server handed the message to. That reply is what the confirmed scenarios wait
for here (one PUBLISH at a time, or a pipeline of ``window`` PUBLISHes), so Redis's
"confirmed" figures promise less than zmqbus's (the server queued it, not the
subscriber took it). Redis has no request/reply.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

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

__all__ = ["confirmer", "filler", "pinger", "sink", "source"]

_IDLE = 0.25
_MESSAGE_TYPES = frozenset({b"message", b"pmessage", "message", "pmessage"})


def _client(spec: Spec, connections: int = 100) -> Any:
    """A client whose pool may open ``connections`` (redis-py's default cap is 100)."""
    import redis

    return redis.Redis.from_url(
        spec.address, socket_connect_timeout=10, max_connections=connections
    )


def _subscribe(client: Any, patterns: list[str], *, glob: bool, timeout: float = 30.0) -> Any:
    """A PubSub holding ``patterns``, once the server confirmed every one."""
    import redis

    ps = client.pubsub()
    for lo in range(0, len(patterns), 1000):
        chunk = patterns[lo : lo + 1000]
        if glob:
            ps.psubscribe(*chunk)
        else:
            ps.subscribe(*chunk)
    confirmed = 0
    deadline = time.monotonic() + timeout
    kinds = ("psubscribe",) if glob else ("subscribe",)
    while confirmed < len(patterns):
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis confirmed {confirmed} of {len(patterns)} subscriptions")
        try:
            msg = ps.get_message(timeout=1.0)
        except redis.exceptions.TimeoutError:
            continue  # the server is still working through the batch
        if msg is not None and msg["type"] in kinds:
            confirmed += 1
    return ps


def sink(spec: Spec, ctl: Ctl) -> None:
    r = _client(spec)
    pattern = spec.sub_pattern
    ps = _subscribe(r, [pattern], glob="*" in pattern)
    try:
        ctl.ready()
        rule = IdleRule(ctl)
        get = ps.get_message
        kinds = _MESSAGE_TYPES
        mono = now_ns
        echo = spec.mode == "echo"
        publish = r.publish
        reply = spec.reply_topic
        warmup = spec.warmup
        lat = array("q")
        n = 0
        t_last = 0
        while n < rule.target:
            msg = get(timeout=_IDLE)
            if msg is None:
                if rule.stop(n, t_last):
                    break
                continue
            if msg["type"] not in kinds:
                continue
            t_last = mono()
            n += 1
            if echo:
                data = msg["data"]
                seq, t0 = read_stamp(data)
                if seq >= warmup:
                    lat.append(t_last - t0)
                publish(reply, data)
        ctl.result(
            received=n, t_last=t_last, lat=samples_to_bytes(lat), dropped=0, target=rule.target
        )
    finally:
        ps.close()
        r.close()


def _batch(size: int, cap: int = 128) -> int:
    return max(1, min(cap, (1 << 20) // max(1, size)))


def source(spec: Spec, ctl: Ctl) -> None:
    r = _client(spec)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic
        pipe = r.pipeline(transaction=False)
        batch = _batch(spec.size)
        r.ping()
        ctl.ready()
        ctl.wait_go()
        t0 = now_ns()
        stop_at = t0 + int(spec.max_seconds * 1e9)
        sent = 0
        while sent < spec.count:
            k = min(batch, spec.count - sent)
            for _ in range(k):
                pipe.publish(topic, payload)
            pipe.execute()
            sent += k
            if now_ns() > stop_at:
                break
        t1 = now_ns()
    finally:
        r.close()
    ctl.result(sent=sent, t_start=t0, t_end=t1, t_flushed=t1)


def confirmer(spec: Spec, ctl: Ctl) -> None:
    """PUBLISH one at a time (``window`` 1) or ``window`` per pipelined round trip,
    checking each reply's receiver count."""
    r = _client(spec)
    try:
        payload = make_payload(spec.size)
        topic = spec.topic
        want = int(spec.extra.get("delivered", 1))
        window = max(1, spec.window)
        publish = r.publish
        pipe = r.pipeline(transaction=False)
        r.ping()
        ctl.ready()
        ctl.wait_go()
        for _ in range(spec.warmup):
            publish(topic, payload)
        mono = now_ns
        lat = array("q")
        errors = 0
        total = spec.count
        t0 = mono()
        if window == 1:
            for _ in range(total):
                t = mono()
                got = publish(topic, payload)
                lat.append(mono() - t)
                if got != want:
                    errors += 1
        else:
            done = 0
            while done < total:
                k = min(window, total - done)
                t = mono()
                for _ in range(k):
                    pipe.publish(topic, payload)
                replies = pipe.execute()
                dt = mono() - t
                for got in replies:
                    lat.append(dt)
                    if got != want:
                        errors += 1
                done += k
        t1 = mono()
    finally:
        r.close()
    ctl.result(sent=total, t_start=t0, t_end=t1, lat=samples_to_bytes(lat), errors=errors)


def pinger(spec: Spec, ctl: Ctl) -> None:
    r = _client(spec)
    ps = _subscribe(r, [spec.reply_topic], glob=False)
    try:
        publish = r.publish
        get = ps.get_message
        kinds = _MESSAGE_TYPES
        topic = spec.topic
        size = spec.size
        warmup = spec.warmup
        mono = now_ns
        rtt = array("q")
        errors = 0
        total = warmup + spec.count
        ctl.ready()
        ctl.wait_go()
        t_start = mono()
        for i in range(total):
            if i == warmup:
                t_start = mono()
            t0 = mono()
            publish(topic, stamp_payload(i, t0, size))
            while True:
                msg = get(timeout=10.0)
                if msg is None:
                    raise TimeoutError(f"no echo of ping {i} within 10 s")
                if msg["type"] in kinds:
                    break
            t1 = mono()
            if read_stamp(msg["data"])[0] != i:
                errors += 1
            if i >= warmup:
                rtt.append(t1 - t0)
        t_end = mono()
    finally:
        ps.close()
        r.close()
    ctl.result(sent=total, t_start=t_start, t_end=t_end, lat=samples_to_bytes(rtt), errors=errors)


def filler(spec: Spec, ctl: Ctl) -> None:
    """Hold ``spec.fill`` channel subscriptions (exact: one connection) or glob patterns
    (wildcard: 1,000 per connection; Redis 7.0 keeps a client's patterns in a list and
    searches it on every PSUBSCRIBE, so 100,000 on one connection take many minutes to
    install, a cost of setup rather than of routing). For ``channels``, ``spec.fill``
    connections, each subscribed to a Redis channel of its own (``stand_in_channels``):
    a zmqbus channel is a namespace with a connection of its own."""
    if spec.fill_kind == "channels":
        groups = [[name] for name in stand_in_channels(spec.topic, spec.fill)]
        glob = False
    else:
        glob = spec.fill_kind == "wildcard"
        patterns = filler_patterns(spec.fill_kind, spec.fill, glob=glob)
        per_conn = 1000 if glob else max(1, len(patterns))
        groups = [patterns[lo : lo + per_conn] for lo in range(0, len(patterns), per_conn)]
    r = _client(spec, connections=max(100, len(groups)))
    subs: list[Any] = []
    try:
        # Each PubSub takes a connection of its own from the client's pool.
        for group in groups:
            subs.append(_subscribe(r, group, glob=glob, timeout=spec.timeout))
        ctl.ready(installed=sum(len(g) for g in groups), connections=len(subs))
        ctl.wait_stop()
        ctl.result()
    finally:
        for ps in subs:
            ps.close()
        r.close()
