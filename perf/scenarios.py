"""The scenarios of issue 4 and how one run of one system is measured.

Every run starts fresh worker processes: sinks (subscribers) first, each reporting
"ready" once its subscription is in place; then sources (publishers), which connect,
report "ready" and wait; then all sources get "go" at once. Figures:

- throughput: messages received by all sinks / (last receipt - first source's start),
  so it includes draining the queues, not just how fast ``publish`` returned; loss is
  what the sources sent times the number of sinks, minus what the sinks received.
- confirmed: confirmed messages / the confirmer's time from its first to its last
  confirmation; a confirmed one-at-a-time run also gives the round-trip latencies.
- latency: ping-pong with one message in flight; the subscriber time-stamps arrival
  against the publisher's send time in the payload (one clock: CLOCK_MONOTONIC),
  the publisher times the echo's return.
- durable streams (issue 15): a stream of its own per run (added by the worker that
  publishes into it, deleted after the clock), 100-byte messages. Stored publishes
  are confirmed publishes (``confirmed``) that count once stored; consume+ack and
  replay read a backlog that ``stream_filler`` stored first (not timed):
  messages read / (the reader's time from before it binds its consumer to its last
  message, or for a durable to the broker holding its last ack); memory: the
  server's RSS before and after storing a backlog, on a fresh server every run.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from perf.harness import RunError, Spec, Worker, close_all, samples_from_bytes, wait_all
from perf.profiles import Profile
from perf.servers import Server, start_server
from perf.systems import (
    STREAM_SYSTEMS,
    SYSTEMS,
    ZMQBUS,
    ZMQBUS_CURVE,
    ZMQBUS_IPC,
    ZMQBUS_METRICS,
    ZMQBUS_VARIANTS,
)

__all__ = [
    "PERCENTILES",
    "STREAM_PREFIX",
    "Env",
    "FigureDef",
    "Measure",
    "Prepared",
    "Scenario",
    "build_scenarios",
]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# The keys of the durable-stream scenarios start so (they have a table of their own).
STREAM_PREFIX = "stream_"


@dataclass(frozen=True)
class FigureDef:
    key: str
    label: str
    unit: str  # msgs/s | MB/s | µs | MiB | B
    better: str = "higher"  # or "lower"


@dataclass
class Measure:
    """One run of one system."""

    values: dict[str, float] = field(default_factory=dict)
    loss: int | None = None
    errors: int = 0
    samples: dict[str, list[int]] = field(default_factory=dict)  # group -> ns
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """What a setup left running for one system (fillers), and what it measured."""

    values: dict[str, float] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    channel: str | None = None

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(RunError):
                w.send("stop")
        close_all(self.workers)


class Env:
    """Servers and fixed settings of one scenario."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.servers: dict[str, Server] = {}
        self._served: set[str] = set()  # systems whose server a fresh_server() run has used

    def channel(self, system: str) -> str:
        return str(uuid.uuid4())

    @contextlib.contextmanager
    def server(self, system: str) -> Iterator[Server]:
        sysdef = SYSTEMS[system]
        if sysdef.per_run_server:
            srv = start_server(sysdef.server, system)
            try:
                yield srv
            finally:
                srv.stop()
        else:
            yield self.servers[system]

    def fresh_server(self, system: str) -> Server:
        """A server for ``system`` that no earlier run has used: the scenario's own on the
        first call, a restarted one after that (a server keeps memory it has freed, so a
        run's memory figures need a server that no earlier run filled)."""
        if system in self._served or system not in self.servers:
            old = self.servers.pop(system, None)
            if old is not None:
                old.stop()
            self.servers[system] = start_server(SYSTEMS[system].server, system)
        self._served.add(system)
        return self.servers[system]

    def close(self) -> None:
        for srv in self.servers.values():
            srv.stop()
        self.servers.clear()


RunFn = Callable[[Env, str], Measure]


@dataclass
class Scenario:
    key: str
    title: str
    description: str
    roles: tuple[str, ...]  # a system takes part if it has all of these
    systems: tuple[str, ...]
    figures: list[FigureDef]
    run: RunFn
    lossless: Callable[[str], bool] = lambda system: False  # zero loss promised?
    params: dict[str, Any] = field(default_factory=dict)


# --- running one group of workers ------------------------------------------------------


def run_group(
    sinks: list[Spec], sources: list[Spec], timeout: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start sinks, then sources; go; collect. Returns (sink results, source results)."""
    workers: list[Worker] = []
    ok = False
    try:
        sink_w = [Worker(s, f"{s.system}/{s.role}#{i}") for i, s in enumerate(sinks)]
        workers += sink_w
        infos = wait_all(sink_w, "ready", 30)
        address = next((i["address"] for i in infos if "address" in i), None)
        if address is not None:
            sources = [s if s.address else s.but(address=address) for s in sources]
        src_w = [Worker(s, f"{s.system}/{s.role}#{i}") for i, s in enumerate(sources)]
        workers += src_w
        wait_all(src_w, "ready", 30)
        for w in src_w:
            w.send("go")
        src_res = wait_all(src_w, "result", timeout)
        total = sum(int(r.get("sent", 0)) for r in src_res)
        for w in sink_w:
            w.send("expect", total)
        sink_res = wait_all(sink_w, "result", timeout)
        ok = True
        return sink_res, src_res
    finally:
        if ok:
            close_all(workers)
        else:
            for w in workers:
                w.proc.kill()
            close_all(workers)


def _secs(ns: int) -> float:
    return max(ns, 1) / 1e9


# --- measurements ------------------------------------------------------------------------


def throughput(
    env: Env,
    system: str,
    *,
    size: int = 100,
    count: int,
    sinks: int = 1,
    sources: int = 1,
    pattern: str = "",
    max_seconds: float | None = None,
    rss: bool = False,
    channel: str | None = None,
) -> Measure:
    prof = env.profile
    with env.server(system) as srv:
        base = Spec(
            system=system,
            role="",
            channel=channel or env.channel(system),
            size=size,
            pattern=pattern,
            max_seconds=max_seconds or prof.max_seconds,
            timeout=prof.run_timeout,
            curve=srv.curve,
        )
        sink_specs = [base.but(role="sink", address=srv.sub, count=count * sources)] * sinks
        src_specs = [base.but(role="source", address=srv.pub, count=count)] * sources
        sink_res, src_res = run_group(sink_specs, src_specs, prof.run_timeout)
        rss_kib = srv.rss_kib() if rss else 0
    received = sum(int(r["received"]) for r in sink_res)
    sent = sum(int(r["sent"]) for r in src_res)
    t0 = min(int(r["t_start"]) for r in src_res)
    t_pub = max(int(r["t_end"]) for r in src_res)
    t_last = max(int(r["t_last"]) for r in sink_res)
    rate = received / _secs(t_last - t0) if received else 0.0
    m = Measure(
        values={"rate": rate, "mbps": rate * size / 1e6},
        loss=sent * sinks - received,
        info={
            "sent": sent,
            "received": received,
            "dropped_in_subscription": sum(int(r.get("dropped", 0)) for r in sink_res),
            "publish_rate": sent / _secs(t_pub - t0),
            "seconds": _secs(t_last - t0),
        },
    )
    if rss:
        m.values["rss_mib"] = rss_kib / 1024
    return m


def confirmed(
    env: Env, system: str, *, count: int, window: int, warmup: int, stored: bool = False
) -> Measure:
    """Confirmed publishes to one subscriber; ``stored``: into a stream of the run's
    own instead (no subscriber), each confirmed once the stream stored it."""
    prof = env.profile
    with env.server(system) as srv:
        base = Spec(
            system=system,
            role="",
            channel=env.channel(system),
            size=100,
            timeout=prof.run_timeout,
            reply_topic="bench.ack",
            curve=srv.curve,
        )
        src = base.but(role="confirmer", address=srv.pub, count=count, window=window, warmup=warmup)
        if stored:
            sinks = []
            src = _into_stream(src.but(role="stream_publisher"), delivered=0, delete=True)
        else:
            sinks = [base.but(role="sink", address=srv.sub, mode="ack", count=warmup + count)]
        sink_res, src_res = run_group(sinks, [src], _run_timeout(prof, count + warmup))
    r = src_res[0]
    lat = samples_from_bytes(r["lat"])
    errors = int(r.get("errors", 0))
    # Stored: a publish the stream did not confirm is lost to it (and an error).
    received = warmup + count - errors if stored else int(sink_res[0]["received"])
    m = Measure(
        values={"rate": count / _secs(int(r["t_end"]) - int(r["t_start"]))},
        loss=warmup + count - received,
        errors=errors,
        info={"received": received, "window": window},
    )
    if r.get("error_samples"):
        m.info["error_samples"] = list(r["error_samples"])
    if window == 1:
        m.samples["rtt"] = lat
    return m


def pingpong(env: Env, system: str, *, count: int, warmup: int) -> Measure:
    prof = env.profile
    with env.server(system) as srv:
        base = Spec(
            system=system,
            role="",
            channel=env.channel(system),
            size=100,
            warmup=warmup,
            timeout=prof.run_timeout,
            reply_topic="bench.pong",
            curve=srv.curve,
        )
        sink = base.but(role="sink", address=srv.sub, mode="echo", count=warmup + count)
        src = base.but(role="pinger", address=srv.pub, count=count)
        sink_res, src_res = run_group([sink], [src], prof.run_timeout)
    return Measure(
        loss=warmup + count - int(sink_res[0]["received"]),
        errors=int(src_res[0].get("errors", 0)),
        samples={
            "oneway": samples_from_bytes(sink_res[0]["lat"]),
            "rtt": samples_from_bytes(src_res[0]["lat"]),
        },
    )


def reqrep(env: Env, system: str, *, count: int, warmup: int) -> Measure:
    """A system's own request/reply (role ``reqrep``), one request at a time."""
    prof = env.profile
    # With a per-run helper (pyzmq) the responder binds a socket of its own instead.
    server: contextlib.AbstractContextManager[Server | None] = (
        contextlib.nullcontext(None) if SYSTEMS[system].per_run_server else env.server(system)
    )
    with server as srv:
        base = Spec(
            system=system,
            role="reqrep",
            address=srv.pub if srv else "",
            channel=env.channel(system),
            size=100,
            warmup=warmup,
            timeout=prof.run_timeout,
            topic="bench.request",
            curve=srv.curve if srv else None,
        )
        responder = base.but(count=warmup + count, extra={"part": "server"})
        requester = base.but(count=count, extra={"part": "client"})
        sink_res, src_res = run_group([responder], [requester], prof.run_timeout)
    r = src_res[0]
    return Measure(
        values={"rate": count / _secs(int(r["t_end"]) - int(r["t_start"]))},
        loss=warmup + count - int(sink_res[0]["received"]),
        errors=int(r.get("errors", 0)),
        samples={"rtt": samples_from_bytes(r["lat"])},
    )


def _into_stream(spec: Spec, **extra: Any) -> Spec:
    """``spec`` publishing into (or reading) a file stream of its own: a fresh name,
    and a topic under subjects no other stream of the server shares (JetStream
    refuses overlapping subjects across the whole server)."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    return spec.but(
        topic=f"bench.{name}.data",
        extra={**spec.extra, "stream": name, "subjects": [f"bench.{name}.>"], **extra},
    )


def _run_timeout(prof: Profile, count: int) -> float:
    """A run's limit: the profile's, or long enough for ``count`` messages at 2,000/s."""
    return max(prof.run_timeout, count / 2_000)


def _stream_backlog(srv: Server, system: str, channel: str, count: int, prof: Profile) -> Spec:
    """Store ``count`` messages in a new stream (``stream_filler``); the spec that did
    it, which names the stream. Returns once they are all stored."""
    timeout = _run_timeout(prof, count)
    spec = _into_stream(
        Spec(
            system=system,
            role="stream_filler",
            address=srv.pub,
            channel=channel,
            count=count,
            size=100,
            timeout=timeout,
        )
    )
    run_group([], [spec], timeout)
    return spec


def stream_read(env: Env, system: str, *, count: int, durable: str) -> Measure:
    """A backlog of ``count`` stored messages (not timed), then one consumer reads it
    all from the first: the ``durable`` one acking each message, or (``durable``
    empty) the system's way of reading a stream back (a replay)."""
    prof = env.profile
    timeout = _run_timeout(prof, count)
    with env.server(system) as srv:
        channel = env.channel(system)
        filled = _stream_backlog(srv, system, channel, count, prof)
        reader = filled.but(
            role="stream_consumer",
            timeout=timeout,
            extra={
                **filled.extra,
                "durable": durable,
                "ack_pending": prof.stream_ack_pending,
                "delete": True,
            },
        )
        r = run_group([], [reader], timeout)[1][0]
    received = int(r["received"])
    return Measure(
        values={"rate": received / _secs(int(r["t_end"]) - int(r["t_start"]))},
        loss=count - received,
        errors=int(r.get("errors", 0)),
        info={
            "received": received,
            "last_seq": int(r["last_seq"]),
            "seconds_to_last_message": _secs(int(r["t_last"]) - int(r["t_start"])),
            "ack_pending": prof.stream_ack_pending,
        },
    )


def stream_rss(env: Env, system: str, *, count: int) -> Measure:
    """The server's RSS growth from storing ``count`` messages, on a fresh server
    (a server keeps memory it has freed): VmRSS before the publisher connects and
    once the stream confirmed the last message. The growth therefore includes one
    connection and an empty stream, next to nothing beside the messages."""
    prof = env.profile
    srv = env.fresh_server(system)
    before = srv.rss_kib()
    t0 = time.monotonic()
    _stream_backlog(srv, system, env.channel(system), count, prof)
    seconds = time.monotonic() - t0
    after = srv.rss_kib()
    return Measure(
        values={"rss_growth_mb": (after - before) * 1024 / 1e6},
        loss=0,
        info={
            "stored": count,
            "rss_before_mib": round(before / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "fill_rate": round(count / max(seconds, 1e-9)),
        },
    )


def _filler(env: Env, system: str, *, kind: str, fill: int) -> Prepared:
    """Fillers on a fresh server, and that server's RSS after them (and per filler)."""
    srv = env.fresh_server(system)
    prep = Prepared(channel=str(uuid.uuid4()))
    before = srv.rss_kib()
    if fill > 0:
        spec = Spec(
            system=system,
            role="filler",
            address=srv.pub,
            channel=prep.channel or "",
            fill=fill,
            fill_kind=kind,
            timeout=3600.0,
        )
        w = Worker(spec, f"{system}/filler")
        prep.workers.append(w)
        try:
            w.expect("ready", 600)
        except BaseException:
            prep.close()
            raise
    after = srv.rss_kib()
    prep.values["rss_setup_mib"] = after / 1024
    if fill >= _per_filler_from(kind):
        prep.values["bytes_per_sub"] = (after - before) * 1024 / fill
    return prep


def _per_filler_from(kind: str) -> int:
    """The fewest fillers whose RSS growth is worth dividing: below ~10,000 subscriptions
    it is lost in allocator and page granularity; a channel (with its connection) costs
    far more, so 100 of them already show."""
    return 100 if kind == "channels" else 10_000


# --- the list --------------------------------------------------------------------------

# Both faces of zmqbus (the threaded ``Bus`` and the asyncio ``aio.Bus``) take part
# wherever zmqbus does.
ALL = ("zmqbus", "zmqbus-aio", "zmq-pushpull", "zmq-router", "nats", "redis")
BROKERED = ("zmqbus", "zmqbus-aio", "zmq-router", "nats", "redis")
ROUTED = ("zmqbus", "zmqbus-aio", "nats", "redis")
ZMQBUS_FACES = ("zmqbus", "zmqbus-aio")
HWM = 100_000


def _with_variants(systems: tuple[str, ...], *variants: str) -> tuple[str, ...]:
    """``systems`` with the zmqbus ``variants`` (``perf.systems.ZMQBUS_VARIANTS``: CURVE,
    metrics) right after zmqbus: runs rotate through the systems in this order, so each
    variant's run follows zmqbus's plain run back to back.

    Only the scenarios whose cost is asked about use them (CURVE: fire-and-forget, with a
    target, and request/reply; metrics: fire-and-forget): each lengthens the full run."""
    return tuple(x for s in systems for x in ((s, *variants) if s == ZMQBUS else (s,)))


def _pct_figures(group: str, what: str) -> list[FigureDef]:
    return [FigureDef(f"{group}.p{p:g}", f"{what} p{p:g}", "µs", "lower") for p in PERCENTILES]


def _lossless_under_hwm(total_per_queue: int) -> Callable[[str], bool]:
    """zmqbus and the zmq peers cannot lose a message while no queue can hold more
    than its high-water mark; NATS and Redis promise nothing for fire-and-forget."""

    def f(system: str) -> bool:
        if system == "zmq-pushpull":
            return True  # PUSH blocks instead of dropping
        variants = tuple(v.system for v in ZMQBUS_VARIANTS)
        return system in (*ZMQBUS_FACES, *variants, "zmq-router") and total_per_queue <= HWM

    return f


def _always(system: str) -> bool:
    return True


def build_scenarios(p: Profile) -> list[Scenario]:
    rate = FigureDef("rate", "msgs/s", "msgs/s")
    deliveries = FigureDef("rate", "deliveries/s", "msgs/s")
    mbps = FigureDef("mbps", "MB/s", "MB/s")
    out: list[Scenario] = [
        Scenario(
            "ff",
            "1 -> 1 fire-and-forget, 100 B",
            f"{p.ff_count:,} messages per run, one publisher, one subscriber",
            ("sink", "source"),
            _with_variants(ALL, ZMQBUS_CURVE, ZMQBUS_METRICS, ZMQBUS_IPC),
            [rate],
            lambda env, s: throughput(env, s, count=p.ff_count),
            _lossless_under_hwm(p.ff_count),
            params={"count": p.ff_count, "size": 100},
        ),
        Scenario(
            "confirm",
            "confirmed, one at a time, 100 B",
            f"{p.confirm_count:,} confirmed publishes after {p.confirm_warmup:,} warm-up; "
            "each publish waits for its confirmation",
            ("sink", "confirmer"),
            BROKERED,
            [rate, *_pct_figures("rtt", "round trip")],
            lambda env, s: confirmed(
                env, s, count=p.confirm_count, window=1, warmup=p.confirm_warmup
            ),
            _always,
            params={"count": p.confirm_count, "warmup": p.confirm_warmup, "size": 100},
        ),
        Scenario(
            "pipelined",
            f"confirmed, pipelined (window {p.window}), 100 B",
            f"{p.pipelined_count:,} confirmed publishes, up to {p.window} unconfirmed at once",
            ("sink", "confirmer"),
            BROKERED,
            [rate],
            lambda env, s: confirmed(env, s, count=p.pipelined_count, window=p.window, warmup=0),
            _always,
            params={"count": p.pipelined_count, "window": p.window, "size": 100},
        ),
        Scenario(
            "pipelined_wide",
            f"confirmed, pipelined (window {p.wide_window:,}), 100 B",
            f"{p.wide_count:,} confirmed publishes, up to {p.wide_window:,} unconfirmed at once "
            "(a publisher's window as wide as NATS JetStream's async default of 4,000 allows)",
            ("sink", "confirmer"),
            BROKERED,
            [rate],
            lambda env, s: confirmed(env, s, count=p.wide_count, window=p.wide_window, warmup=0),
            _always,
            params={"count": p.wide_count, "window": p.wide_window, "size": 100},
        ),
        Scenario(
            "fanout",
            f"fan-out 1 -> {p.fanout_sinks}, 100 B",
            f"{p.fanout_count:,} messages to {p.fanout_sinks} subscribers per run",
            ("sink", "source"),
            BROKERED,
            [deliveries],
            lambda env, s: throughput(env, s, count=p.fanout_count, sinks=p.fanout_sinks),
            _lossless_under_hwm(p.fanout_count),
            params={"count": p.fanout_count, "subscribers": p.fanout_sinks, "size": 100},
        ),
        Scenario(
            "fanin",
            f"fan-in {p.fanin_sources} -> 1, 100 B",
            f"{p.fanin_count:,} messages from each of {p.fanin_sources} publishers per run",
            ("sink", "source"),
            ALL,
            [deliveries],
            lambda env, s: throughput(env, s, count=p.fanin_count, sources=p.fanin_sources),
            _lossless_under_hwm(p.fanin_count * p.fanin_sources),
            params={"count": p.fanin_count, "publishers": p.fanin_sources, "size": 100},
        ),
        Scenario(
            "latency",
            "publish -> deliver latency, 100 B",
            f"ping-pong, one message in flight: {p.latency_count:,} samples per run after "
            f"{p.latency_warmup:,} warm-up; one-way measured at the subscriber, round trip "
            "(the subscriber echoes) at the publisher",
            ("sink", "pinger"),
            _with_variants(BROKERED, ZMQBUS_IPC),
            [*_pct_figures("oneway", "one-way"), *_pct_figures("rtt", "echo round trip")],
            lambda env, s: pingpong(env, s, count=p.latency_count, warmup=p.latency_warmup),
            _always,
            params={"count": p.latency_count, "warmup": p.latency_warmup, "size": 100},
        ),
        Scenario(
            "reqrep",
            "request/reply round trip, 100 B",
            f"{p.latency_count:,} requests per run after {p.latency_warmup:,} warm-up, one "
            "at a time; each system's own request/reply (pyzmq: DEALER straight to a ROUTER "
            "that answers, no broker)",
            ("reqrep",),
            _with_variants(BROKERED, ZMQBUS_CURVE, ZMQBUS_IPC),
            [FigureDef("rate", "round trips/s", "msgs/s"), *_pct_figures("rtt", "round trip")],
            lambda env, s: reqrep(env, s, count=p.latency_count, warmup=p.latency_warmup),
            _always,
            params={"count": p.latency_count, "warmup": p.latency_warmup, "size": 100},
        ),
    ]
    for size, count in sorted(p.payload_counts.items()):
        label = _size_label(size)
        out.append(
            Scenario(
                f"payload_{label.replace(' ', '')}",
                f"1 -> 1 fire-and-forget, {label}",
                f"{count:,} messages of {label} per run",
                ("sink", "source"),
                ALL,
                [rate, mbps],
                _payload_run(size, count),
                _lossless_under_hwm(count),
                params={"count": count, "size": size},
            )
        )
    for level in p.routing_levels:
        for kind in ("exact", "wildcard"):
            out.append(_routing(p, level, kind))
    out.append(_routing(p, p.routing_channels, "channels"))
    out += _stream_scenarios(p)
    return out


def _stream_scenarios(p: Profile) -> list[Scenario]:
    """Durable streams (issue 15): zmqbus with each ``--sync`` setting against NATS
    JetStream (file storage), 100-byte messages, a stream of its own per run."""
    stored = FigureDef("rate", "stored msgs/s", "msgs/s")
    read = FigureDef("rate", "msgs/s read", "msgs/s")
    window = p.stream_window
    return [
        Scenario(
            "stream_pub",
            "stream: stored publish, one at a time, 100 B",
            f"{p.stream_pub_count:,} publishes into a file stream after {p.stream_pub_warmup:,} "
            "warm-up, each waiting until the stream stored it (zmqbus `publish`, JetStream "
            "`js.publish`): msgs/s and each publish's round trip",
            ("stream_publisher",),
            STREAM_SYSTEMS,
            [stored, *_pct_figures("rtt", "stored round trip")],
            lambda env, s: confirmed(
                env, s, count=p.stream_pub_count, window=1, warmup=p.stream_pub_warmup, stored=True
            ),
            _always,
            params={"count": p.stream_pub_count, "warmup": p.stream_pub_warmup, "size": 100},
        ),
        Scenario(
            "stream_pipe",
            f"stream: stored publish, pipelined (window {window:,}), 100 B",
            f"{p.stream_pipe_count:,} publishes into a file stream, up to {window:,} not yet "
            "stored at once (zmqbus `publish_nowait` futures, JetStream `js.publish_async`)",
            ("stream_publisher",),
            STREAM_SYSTEMS,
            [stored],
            lambda env, s: confirmed(
                env, s, count=p.stream_pipe_count, window=window, warmup=0, stored=True
            ),
            _always,
            params={"count": p.stream_pipe_count, "window": window, "size": 100},
        ),
        Scenario(
            "stream_consume",
            f"stream: consume+ack a backlog of {p.stream_backlog:,}, 100 B",
            f"{p.stream_backlog:,} stored messages (stored first, not timed) read by a new "
            "durable consumer from the first, acking each (zmqbus `consume` + `ack()`, "
            "JetStream push consumer + `ack()`), at most "
            f"{p.stream_ack_pending:,} unacknowledged; until the server holds the last ack",
            ("stream_filler", "stream_consumer"),
            STREAM_SYSTEMS,
            [read],
            lambda env, s: stream_read(env, s, count=p.stream_backlog, durable="bench"),
            _always,
            params={
                "count": p.stream_backlog,
                "ack_pending": p.stream_ack_pending,
                "size": 100,
            },
        ),
        Scenario(
            "stream_replay",
            f"stream: replay {p.stream_replay_count:,} stored messages, 100 B",
            f"{p.stream_replay_count:,} stored messages (stored first, not timed) read back "
            'from the first by an ephemeral consumer: zmqbus `consume(deliver="all")`, '
            "acking each (its consumers have no ack-free mode), JetStream nats-py's ordered "
            "consumer (no acks)",
            ("stream_filler", "stream_consumer"),
            STREAM_SYSTEMS,
            [read],
            lambda env, s: stream_read(env, s, count=p.stream_replay_count, durable=""),
            _always,
            params={
                "count": p.stream_replay_count,
                "ack_pending": p.stream_ack_pending,
                "size": 100,
            },
        ),
        Scenario(
            "stream_rss",
            f"stream: server RSS growth, {p.stream_rss_count:,} stored messages of 100 B",
            f"VmRSS of the broker (zmqbus) or nats-server before and after {p.stream_rss_count:,} "
            "messages are stored in one file stream, on a fresh server every run",
            ("stream_filler",),
            STREAM_SYSTEMS,
            [FigureDef("rss_growth_mb", "server RSS growth", "MB", "lower")],
            lambda env, s: stream_rss(env, s, count=p.stream_rss_count),
            _always,
            params={"count": p.stream_rss_count, "size": 100},
        ),
    ]


def _payload_run(size: int, count: int) -> RunFn:
    return lambda env, s: throughput(env, s, size=size, count=count)


def _routing(p: Profile, level: int, kind: str) -> Scenario:
    pattern = "bench.*" if kind == "wildcard" else "bench.data"
    if kind == "channels":
        title = f"routing: {level:,} channels"
        desc = (
            f"{level - 1:,} other channels, each with one connection subscribed to the "
            "benchmark topic (NATS and Redis: each connection subscribed to a subject of "
            "its own, ch<N>.bench.data); throughput measured in one more channel"
        )
    else:
        title = f"routing: {level:,} {kind} subscriptions"
        desc = (
            f"{level - 1:,} {kind} subscriptions that never match, held by one connection, "
            f"plus the subscriber's own ({pattern}) in the same channel"
        )
    figures = [
        FigureDef("rate", "msgs/s", "msgs/s"),
        FigureDef("rss_setup_mib", "server RSS after setup", "MiB", "lower"),
    ]
    if level - 1 >= _per_filler_from(kind):
        per = "channel" if kind == "channels" else "subscription"
        figures.append(FigureDef("bytes_per_sub", f"server RSS per {per}", "B", "lower"))

    # Each run sets up its own fillers on a fresh server, so every memory figure, like
    # every other, is a median over the runs with a ratio per run.
    def run(env: Env, system: str) -> Measure:
        t0 = time.monotonic()
        prep = _filler(env, system, kind=kind, fill=level - 1)
        setup = time.monotonic() - t0
        try:
            m = throughput(
                env,
                system,
                count=p.routing_count,
                pattern=pattern,
                max_seconds=p.routing_max_seconds,
                rss=True,
                channel=prep.channel,
            )
        finally:
            prep.close()
        m.values.update(prep.values)
        m.info["setup_seconds"] = round(setup, 2)
        return m

    return Scenario(
        f"routing_{kind}_{level}",
        title,
        f"{desc}, set up again on a fresh server for every run; {p.routing_count:,} "
        f"messages per run (at most {p.routing_max_seconds:g} s)",
        ("sink", "source", "filler"),
        ROUTED,
        figures,
        run,
        _lossless_under_hwm(p.routing_count),
        params={"level": level, "kind": kind, "count": p.routing_count},
    )


def _size_label(size: int) -> str:
    if size >= 1 << 20:
        return f"{size >> 20} MiB"
    if size >= 1024:
        return f"{size >> 10} KiB"
    return f"{size} B"
