"""Soak test: N publishers and M subscribers, each in a process of its own, for a while.

    python perf/soak.py --publishers 2 --subscribers 2 --duration 60
    python perf/soak.py -p 4 -s 3 -d 600 --no-confirm --rate 2000 --json soak.json

The script starts a broker (``python -m zmqbus broker --bind tcp://127.0.0.1:0``,
its address read from its ``listening on`` log line) unless ``--address`` names
one. Every subscriber subscribes to ``soak.>`` and reports ready once the broker
holds its subscription; every publisher reports ready once connected; only then
are all publishers told to go, at once. Each publisher publishes on
``soak.p<i>`` for ``--duration`` seconds, numbering its messages 0, 1, 2, ...
(the payload starts with the publisher id and the sequence number, both also in
the headers), with confirmation unless ``--no-confirm``, as fast as it can or at
``--rate`` messages per second. It then publishes a confirmed end marker that
carries its count, and the subscribers stop once they have every publisher's
marker (or, if a marker was lost, ``--drain-timeout`` seconds later). Without
confirmation, publishers can outrun the broker by far: the end marker then
waits behind the broker's backlog, up to ``--drain-timeout`` seconds, and a
publisher that gives up and leaves earlier loses what the broker still held.

With ``--hostile`` (issue #13's soak), every hostile peer of
``tests/hostile_peers.py`` runs at once beside them, each in a process of its
own, round after round (``--hostile-round`` seconds each) for the whole run,
against a broker of default limits (and a 2 s idle probe); the broker's
resident memory is sampled twice a second, and the run fails unless its peak
stays under the sum of the bounds those peers can fill (printed with its parts).

At the end it reports, as JSON on stdout (and in ``--json FILE``) and as a
summary on stderr: sent, confirmed, publish errors, the drops, failures and
under-deliveries that confirmations reported (``PublishResult``), and for every
subscriber what it received from each publisher: unique messages, missing
ones (loss), gaps in the sequence, duplicates, messages out of order, and its
subscription's ``dropped``; with the duration, the rates and the confirmation
latencies. Exit status 0 when nothing was lost or duplicated and every publish
succeeded (and, with confirmation, every confirmation counted every
subscriber), 1 otherwise, 2 for a setup failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

TOPIC_PREFIX = "soak"
PATTERN = f"{TOPIC_PREFIX}.>"
# Payload head: publisher id (uint32) and sequence number (uint64), big endian.
HEAD = struct.Struct(">IQ")
END_HEADER = "end"
READY_TIMEOUT = 60.0  # seconds for every worker to connect and report ready
MISSING_SAMPLE = 20  # missing sequence numbers listed per publisher and subscriber

Report = dict[str, Any]
TESTS = Path(__file__).resolve().parents[1] / "tests"  # hostile_peers.py


# --- workers (each in a process of its own) ----------------------------------------


@dataclass(frozen=True)
class Setup:
    address: str
    channel: str
    publishers: int
    subscribers: int
    duration: float
    confirm: bool
    rate: float
    size: int
    maxsize: int
    timeout: float
    drain_timeout: float


def publisher(
    index: int, setup: Setup, results: mp.Queue[Any], go: EventType, abort: EventType
) -> None:
    try:
        results.put(("report", "publisher", index, _publish(index, setup, results, go, abort)))
    except BaseException:
        results.put(("failed", "publisher", index, traceback.format_exc()))


def _publish(
    index: int, setup: Setup, results: mp.Queue[Any], go: EventType, abort: EventType
) -> Report:
    from zmqbus import Bus, PublishResult

    topic = f"{TOPIC_PREFIX}.p{index}"
    padding = b"\0" * max(0, setup.size - HEAD.size)
    subscribers = setup.subscribers
    errors: Counter[str] = Counter()
    sent = confirmed = dropped = failed = delivered = under_delivered = 0
    latencies: list[float] = []
    with Bus(setup.address, setup.channel, connect_timeout=30) as bus:
        results.put(("ready", "publisher", index, None))
        go.wait()
        if abort.is_set():
            raise RuntimeError("aborted before the start")
        started = time.monotonic()
        stop_at = started + setup.duration
        interval = 1.0 / setup.rate if setup.rate > 0 else 0.0
        seq = 0
        now = started
        while now < stop_at and not abort.is_set():
            if interval:
                due = started + seq * interval
                if due > now:
                    time.sleep(due - now)  # pacing to --rate, not synchronisation
            payload = HEAD.pack(index, seq) + padding
            headers = {"pub": str(index), "seq": str(seq)}
            sent += 1
            t0 = time.monotonic()
            try:
                result: PublishResult = bus.publish(
                    topic, payload, headers, timeout=setup.timeout, confirm=setup.confirm
                )
            except Exception as exc:
                errors[type(exc).__name__] += 1
            else:
                if setup.confirm:
                    latencies.append(time.monotonic() - t0)
                    confirmed += 1
                    dropped += result.dropped
                    failed += result.failed
                    delivered += result.delivered
                    under_delivered += result.delivered < subscribers
            seq += 1
            now = time.monotonic()
        finished = time.monotonic()
        # The end marker, confirmed even without --confirm: the bus sends in order,
        # so once it is confirmed the broker has routed every message before it.
        end_error = None
        try:
            bus.publish(
                topic,
                HEAD.pack(index, sent),
                {END_HEADER: str(sent)},
                timeout=setup.drain_timeout,
            )
        except Exception as exc:
            end_error = repr(exc)
    latencies.sort()
    return {
        "publisher": index,
        "sent": sent,
        "confirmed": confirmed,
        "publish_errors": dict(errors),
        "result_delivered": delivered,
        "result_dropped": dropped,
        "result_failed": failed,
        "under_delivered": under_delivered,
        "end_marker_error": end_error,
        "duration": finished - started,
        "started": started,
        "finished": finished,
        "latency": _percentiles(latencies),
    }


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(values[-1] * 1000, 3)}


class Tally:
    """What one subscriber got from one publisher: a bitmap of sequence numbers."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.received = 0
        self.unique = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.gaps = 0  # times the sequence jumped ahead
        self.next = 0
        self.end: int | None = None
        # Message ids by sequence number, so a duplicate can say whether the same
        # message came twice (a resend) or the publisher published the number twice.
        self.ids: dict[int, bytes] = {}
        self.duplicate_sample: list[dict[str, Any]] = []

    def add(self, seq: int, msg_id: bytes = b"") -> None:
        self.received += 1
        seen = self.seen
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen), 1024)))
        if seen[seq]:
            self.duplicates += 1
            if len(self.duplicate_sample) < MISSING_SAMPLE:
                first = self.ids.get(seq, b"")
                self.duplicate_sample.append(
                    {"seq": seq, "same_id": first == msg_id, "ids": [first.hex(), msg_id.hex()]}
                )
            return
        seen[seq] = 1
        self.ids[seq] = msg_id
        self.unique += 1
        if seq < self.next:
            self.out_of_order += 1
        elif seq > self.next:
            self.gaps += 1
        self.next = max(self.next, seq + 1)

    def report(self) -> Report:
        upto = self.end if self.end is not None else self.next
        missing: list[int] = []
        at = 0
        while len(missing) < MISSING_SAMPLE:
            at = self.seen.find(0, at, upto)
            if at < 0:
                # Beyond the bitmap nothing was seen.
                missing += range(len(self.seen), upto)[: MISSING_SAMPLE - len(missing)]
                break
            missing.append(at)
            at += 1
        return {
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "gaps": self.gaps,
            "end_marker": self.end,
            "missing_sample": missing[:MISSING_SAMPLE],
            "duplicate_sample": self.duplicate_sample,
        }


def subscriber(
    index: int, setup: Setup, results: mp.Queue[Any], stop: EventType, abort: EventType
) -> None:
    try:
        results.put(("report", "subscriber", index, _subscribe(index, setup, results, stop, abort)))
    except BaseException:
        results.put(("failed", "subscriber", index, traceback.format_exc()))


def _subscribe(
    index: int, setup: Setup, results: mp.Queue[Any], stop: EventType, abort: EventType
) -> Report:
    from zmqbus import Bus

    tallies = [Tally() for _ in range(setup.publishers)]
    ends = 0
    strays = 0
    first: float | None = None
    last: float | None = None
    with Bus(setup.address, setup.channel, connect_timeout=30) as bus:
        sub = bus.subscribe(PATTERN, maxsize=setup.maxsize)
        results.put(("ready", "subscriber", index, None))
        while ends < setup.publishers and not abort.is_set():
            try:
                msg = sub.get(timeout=0.5)
            except TimeoutError:
                # Publishers done and a marker still missing: stop when told to.
                if stop.is_set():
                    break
                continue
            last = time.monotonic()
            if first is None:
                first = last
            pub, seq = HEAD.unpack_from(msg.payload)
            if pub >= len(tallies):
                strays += 1
                continue
            end = msg.headers.get(END_HEADER)
            if end is not None:
                if tallies[pub].end is None:
                    ends += 1
                tallies[pub].end = int(end)
                continue
            tallies[pub].add(seq, msg.id.bytes)
        dropped = sub.dropped
    return {
        "subscriber": index,
        "received": sum(t.received for t in tallies),
        "dropped": dropped,
        "strays": strays,
        "end_markers": ends,
        "first": first,
        "last": last,
        "from": {str(i): t.report() for i, t in enumerate(tallies)},
    }


# --- hostile peers (--hostile) ------------------------------------------------------


def hostile(name: str, address: str, until: float, round_seconds: float, out: Any) -> None:
    """Run the probe ``name`` round after round until ``until`` (time.time());
    report its rounds, the last round's measurements and its failures."""
    sys.path.insert(0, str(TESTS))
    import hostile_peers

    probe = hostile_peers.PROBES[name]
    rounds, unfinished, failures, last = 0, 0, [], None
    while time.time() < until - 1:
        stop = threading.Event()
        timer = threading.Timer(min(round_seconds, max(0.0, until - time.time())), stop.set)
        timer.start()
        try:
            last = probe(address, stop)
            rounds += 1
        except hostile_peers.Stopped:
            unfinished += 1  # the round ended while it waited for an answer
        except Exception as exc:  # counted and reported; the soak's verdict is the honest pairs'
            failures.append(f"{type(exc).__name__}: {exc}"[:300])
            stop.wait()
        timer.cancel()
    out.put((name, {"rounds": rounds, "unfinished": unfinished, "failures": len(failures),
                    "first_failures": failures[:3], "last": last}))  # fmt: skip


def _probe_names() -> list[str]:
    sys.path.insert(0, str(TESTS))
    import hostile_peers

    return list(hostile_peers.PROBES)


def hostile_bound() -> dict[str, int]:
    """What the hostile peers may make the broker hold, by the default limits,
    in MiB: the sum is the soak's bound on the broker's resident memory."""
    sys.path.insert(0, str(TESTS))
    import hostile_peers

    limits = hostile_peers.LIMITS
    mib = 1 << 20
    return {
        # The stalled subscriber's queue, and its publisher's inbound queue.
        "queued_to_a_stalled_peer": limits.max_queued_bytes // mib,
        "inbound_from_its_publisher": limits.max_queued_bytes // mib,
        "topic_cache": limits.topic_cache_bytes // mib,
        # A message of 200 frames of 1 MiB, which libzmq holds whole.
        "one_message_of_many_frames": 200,
        # Connections that never join, up to max_connections (libzmq's session
        # and buffers for each: 50 MiB for 12,000 measured in the hostile tier).
        "unjoined_connections": limits.max_connections * 8 // 1024,
        # Peers, subscriptions, pending confirmations, held replies at their
        # bounds, the interpreter, libzmq and the allocator's slack.
        "state_and_runtime": 512,
    }


class RssWatch:
    """Samples a process's resident memory (VmRSS) twice a second: the peak."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):
                for line in self.path.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak_kib


# --- the broker --------------------------------------------------------------------


class BrokerProcess:
    """``python -m zmqbus broker`` on a free port; its stderr drained on a thread."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "zmqbus", "broker", "--bind", "tcp://127.0.0.1:0"]
        cmd += ["--log-level", "INFO", *args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # Ctrl-C reaches the script, which stops the broker
        )
        self.lines: deque[str] = deque(maxlen=200)
        self._found: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="soak-broker-log", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        pattern = re.compile(r"listening on (\S+)")
        found = False
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if not found and (m := pattern.search(line)):
                found = True
                self._found.put(m.group(1))
        self._found.put(None)  # the broker exited

    def address(self, timeout: float = 30.0) -> str:
        try:
            address = self._found.get(timeout=timeout)
        except queue.Empty:
            address = None
        if address is None:
            self.stop()
            log = "\n".join(self.lines)
            raise RuntimeError(f"the broker did not report its address:\n{log}")
        return address

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        return self.proc.returncode


def broker_stats(address: str) -> Any:
    """``zmqbus stats`` for the broker, or None where it is unavailable."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "zmqbus", "stats", "--address", address],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


# --- the run -----------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    ctx = mp.get_context("spawn")
    extra = ("--idle-probe-seconds", "2") if args.hostile else ()
    broker = None if args.address else BrokerProcess(*extra)
    hostile_out: mp.Queue[Any] = ctx.Queue()
    watch: RssWatch | None = None
    results: mp.Queue[Any] = ctx.Queue()
    go, stop, abort = ctx.Event(), ctx.Event(), ctx.Event()
    procs: list[Any] = []
    try:
        address = args.address or broker.address()  # type: ignore[union-attr]
        setup = Setup(
            address=address,
            channel=str(uuid.uuid4()),
            publishers=args.publishers,
            subscribers=args.subscribers,
            duration=args.duration,
            confirm=args.confirm,
            rate=args.rate,
            size=args.size,
            maxsize=args.maxsize,
            timeout=args.timeout,
            drain_timeout=args.drain_timeout,
        )
        subs = [
            ctx.Process(
                target=subscriber,
                args=(i, setup, results, stop, abort),
                name=f"soak-sub-{i}",
                daemon=True,
            )
            for i in range(setup.subscribers)
        ]
        pubs = [
            ctx.Process(target=publisher, args=(i, setup, results, go, abort), name=f"soak-pub-{i}")
            for i in range(setup.publishers)
        ]
        for p in pubs:
            p.daemon = True
        collector = Collector(results, procs)
        # Subscribers first: publishers start only once every subscription is in place.
        procs += subs
        for p in subs:
            p.start()
        collector.wait_ready("subscriber", setup.subscribers, READY_TIMEOUT)
        procs += pubs
        for p in pubs:
            p.start()
        collector.wait_ready("publisher", setup.publishers, READY_TIMEOUT)
        go.set()
        _progress(f"go: {setup.publishers} publishers, {setup.subscribers} subscribers")
        if args.hostile:
            if broker is not None:
                watch = RssWatch(broker.proc.pid)
            sys.path.insert(0, str(TESTS))
            import hostile_peers

            until = time.time() + setup.duration
            for name in hostile_peers.PROBES:
                proc = ctx.Process(
                    target=hostile,
                    args=(name, address, until, args.hostile_round, hostile_out),
                    name=f"soak-hostile-{len(procs)}",
                    daemon=True,
                )
                procs.append(proc)
                proc.start()
            _progress(f"and {len(hostile_peers.PROBES)} hostile peers")
        pub_reports = collector.wait_reports(
            "publisher", setup.duration + setup.timeout + setup.drain_timeout + 60
        )
        _progress("publishers done; draining subscribers")
        try:
            sub_reports = collector.wait_reports("subscriber", setup.drain_timeout)
        except TimeoutError:
            stop.set()  # a marker was lost: the subscribers stop with what they have
            sub_reports = collector.wait_reports("subscriber", 30)
        hostile_reports: dict[str, Any] = {}
        if args.hostile:
            deadline = time.monotonic() + 120
            expected = len([p for p in procs if p.name.startswith("soak-hostile-")])
            while len(hostile_reports) < expected and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    name, data = hostile_out.get(timeout=1.0)
                    hostile_reports[name] = data
        for p in procs:
            p.join(30)
        stats = broker_stats(address)
        report = summarise(setup, pub_reports, sub_reports, stats, args.address is None)
        if args.hostile:
            bound = hostile_bound()
            peak = watch.stop() // 1024 if watch is not None else None
            report["hostile"] = {
                "probes": hostile_reports,
                "missing_reports": sorted(set(_probe_names()) - set(hostile_reports)),
                "broker_rss_peak_mib": peak,
                "rss_bound_mib": sum(bound.values()),
                "rss_bound_parts_mib": bound,
            }
            if peak is not None and peak >= sum(bound.values()):
                report["ok"] = False
        return report
    except BaseException:
        abort.set()
        go.set()
        stop.set()
        raise
    finally:
        if watch is not None:
            watch.stop()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        if broker is not None:
            broker.stop()


class Collector:
    """Readiness, reports and failures of the workers, from one queue."""

    def __init__(self, results: mp.Queue[Any], procs: list[Any]) -> None:
        self.results = results
        self.procs = procs
        self.ready: Counter[str] = Counter()
        self.reports: dict[str, dict[int, Report]] = {"publisher": {}, "subscriber": {}}

    def _next(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out waiting for {what}")
        try:
            kind, role, index, data = self.results.get(timeout=min(left, 1.0))
        except queue.Empty:
            dead = [p.name for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"worker processes died: {dead}") from None
            return
        if kind == "failed":
            raise RuntimeError(f"{role} {index} failed:\n{data}")
        if kind == "ready":
            self.ready[role] += 1
        else:
            self.reports[role][index] = data

    def wait_ready(self, role: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.ready[role] < count:
            self._next(deadline, f"{count} {role}s to be ready")

    def wait_reports(self, role: str, timeout: float) -> list[Report]:
        deadline = time.monotonic() + timeout
        count = len([p for p in self.procs if p.name.startswith(f"soak-{role[:3]}-")])
        while len(self.reports[role]) < count:
            self._next(deadline, f"the {role}s' reports")
        return [self.reports[role][i] for i in sorted(self.reports[role])]


def summarise(
    setup: Setup,
    pubs: list[Report],
    subs: list[Report],
    stats: Any,
    own_broker: bool,
) -> Report:
    sent = {str(r["publisher"]): r["sent"] for r in pubs}
    total_sent = sum(sent.values())
    start = min(r["started"] for r in pubs)
    end = max(r["finished"] for r in pubs)
    duration = end - start
    lasts = [s["last"] for s in subs if s["last"] is not None]
    # Until the last message reached the last subscriber (later than ``duration``
    # when publishers outrun the broker, as they may without confirmation).
    delivery = max([*lasts, end]) - start
    loss = duplicates = gaps = out_of_order = 0
    for s in subs:
        s["missing"] = 0
        for pub, tally in s["from"].items():
            tally["missing"] = sent[pub] - tally["unique"]
            s["missing"] += tally["missing"]
            loss += tally["missing"]
            duplicates += tally["duplicates"]
            gaps += tally["gaps"]
            out_of_order += tally["out_of_order"]
        s["unique"] = sum(t["unique"] for t in s["from"].values())
        s["receive_duration"] = (
            s["last"] - s["first"] if s["first"] is not None and s["last"] is not None else 0.0
        )
        del s["first"], s["last"]
    for r in pubs:
        del r["started"], r["finished"]
    errors: Counter[str] = Counter()
    for r in pubs:
        errors.update(r["publish_errors"])
    confirmed = sum(r["confirmed"] for r in pubs)
    result_dropped = sum(r["result_dropped"] for r in pubs)
    result_failed = sum(r["result_failed"] for r in pubs)
    under = sum(r["under_delivered"] for r in pubs)
    sub_dropped = sum(s["dropped"] for s in subs)
    received = sum(s["received"] for s in subs)
    ok = (
        loss == 0
        and duplicates == 0
        and not errors
        and (not setup.confirm or (confirmed == total_sent and under == 0))
    )
    return {
        "ok": ok,
        "config": {
            "publishers": setup.publishers,
            "subscribers": setup.subscribers,
            "duration": setup.duration,
            "confirm": setup.confirm,
            "rate": setup.rate,
            "size": setup.size,
            "maxsize": setup.maxsize,
            "address": setup.address,
            "own_broker": own_broker,
        },
        "duration": round(duration, 3),
        "sent": total_sent,
        "sent_per_publisher": sent,
        "confirmed": confirmed,
        "publish_errors": dict(errors),
        "rate": round(total_sent / duration, 1) if duration > 0 else 0.0,
        "delivery_duration": round(delivery, 3),
        "receive_rate": round(received / delivery, 1) if delivery > 0 else 0.0,
        "received": received,
        "expected": total_sent * setup.subscribers,
        "received_per_subscriber": {str(s["subscriber"]): s["received"] for s in subs},
        "loss": loss,
        "duplicates": duplicates,
        "gaps": gaps,
        "out_of_order": out_of_order,
        "drops": {
            "subscription_dropped": sub_dropped,
            "publish_result_dropped": result_dropped,
        },
        "publish_result_failed": result_failed,
        "under_delivered": under,
        "publishers": pubs,
        "subscribers": subs,
        "broker_stats": stats,
    }


def human(report: Report) -> str:
    c = report["config"]
    mode = "confirmed" if c["confirm"] else "unconfirmed"
    rate = f", paced at {c['rate']:g}/s each" if c["rate"] else ""
    lines = [
        f"soak: {c['publishers']} publishers x {c['subscribers']} subscribers, {mode}{rate}, "
        f"{c['size']}-byte payloads, {report['duration']:.1f} s",
        f"  sent {report['sent']} ({report['rate']:.0f} msg/s), confirmed {report['confirmed']}, "
        f"publish errors {report['publish_errors'] or 0}",
        f"  received {report['received']} of {report['expected']} expected "
        f"({report['receive_rate']:.0f} msg/s, all in by {report['delivery_duration']:.1f} s); "
        f"loss {report['loss']}, duplicates {report['duplicates']}, gaps {report['gaps']}, "
        f"out of order {report['out_of_order']}",
        f"  drops: subscriptions {report['drops']['subscription_dropped']}, "
        f"publish results {report['drops']['publish_result_dropped']}; "
        f"handler failures {report['publish_result_failed']}, "
        f"under-delivered {report['under_delivered']}",
    ]
    for p in report["publishers"]:
        lat = p["latency"]
        lat_text = (
            f", confirm p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms max {lat['max_ms']} ms"
            if lat
            else ""
        )
        lines.append(
            f"  publisher {p['publisher']}: sent {p['sent']}, confirmed {p['confirmed']}{lat_text}"
        )
    for s in report["subscribers"]:
        lines.append(
            f"  subscriber {s['subscriber']}: received {s['received']}, unique {s['unique']}, "
            f"missing {s['missing']}, dropped {s['dropped']}"
        )
        for pub, t in s["from"].items():
            if t["missing"] or t["duplicates"]:
                lines.append(
                    f"    from publisher {pub}: missing {t['missing']} "
                    f"(first {t['missing_sample']}), duplicates {t['duplicates']}"
                )
                for d in t["duplicate_sample"]:
                    same = "the same message twice" if d["same_id"] else "two messages"
                    lines.append(f"      seq {d['seq']}: {same} (ids {', '.join(d['ids'])})")
    stats = report["broker_stats"]
    if isinstance(stats, dict):
        counters = stats.get("counters", {})
        notable = {
            k: v
            for k, v in counters.items()
            if any(w in k for w in ("drop", "unroutable", "expired", "error"))
        }
        lines.append(
            f"  broker: errors by code {stats.get('errors') or 0}, {notable or 'no drops'}; "
            f"published {counters.get('published')} (publishers sent {report['sent']} "
            f"and {report['config']['publishers']} end markers)"
        )
    h = report.get("hostile")
    if h:
        lines.append(
            f"  hostile: broker RSS peak {h['broker_rss_peak_mib']} MiB, bound "
            f"{h['rss_bound_mib']} MiB ({h['rss_bound_parts_mib']}); "
            f"reports missing {h['missing_reports'] or 'none'}"
        )
        for name, r in h["probes"].items():
            lines.append(
                f"    {name}: {r['rounds']} rounds, {r['unfinished']} cut short by the "
                f"round's end, {r['failures']} failed"
                + (f" ({r['first_failures'][0]})" if r["first_failures"] else "")
            )
    lines.append(f"  {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


def _progress(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _payload_size(text: str) -> int:
    value = int(text)
    if value < HEAD.size:
        raise argparse.ArgumentTypeError(f"must be at least {HEAD.size}: {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak.py",
        description="N publishers and M subscribers in processes of their own, for a while; "
        "reports sent, confirmed, received, loss, gaps, duplicates and drops.",
    )
    parser.add_argument("-p", "--publishers", type=_positive_int, default=2, metavar="N")
    parser.add_argument("-s", "--subscribers", type=_positive_int, default=2, metavar="M")
    parser.add_argument(
        "-d", "--duration", type=_positive, default=10.0, metavar="S", help="seconds of publishing"
    )
    parser.add_argument(
        "--confirm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="publish with confirmation (default) or fire and forget",
    )
    parser.add_argument(
        "--rate",
        type=_non_negative,
        default=0.0,
        metavar="R",
        help="messages per second per publisher (default 0: as fast as possible)",
    )
    parser.add_argument(
        "--size",
        type=_payload_size,
        default=64,
        metavar="B",
        help=f"payload bytes (default 64, at least {HEAD.size}: publisher id and sequence)",
    )
    parser.add_argument(
        "--maxsize",
        type=_positive_int,
        default=1_000_000,
        metavar="N",
        help="subscription buffer size (default 1000000: subscribers keep up)",
    )
    parser.add_argument(
        "--timeout", type=_positive, default=10.0, metavar="S", help="publish timeout"
    )
    parser.add_argument(
        "--drain-timeout",
        type=_positive,
        default=60.0,
        metavar="S",
        help="seconds for each publisher's end marker to be confirmed, and then for the "
        "subscribers to get every end marker (default 60)",
    )
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="run every hostile peer of tests/hostile_peers.py at once beside the honest "
        "ones, and bound the broker's memory (issue #13's soak)",
    )
    parser.add_argument(
        "--hostile-round",
        type=_positive,
        default=30.0,
        metavar="S",
        help="seconds of each hostile peer's round before it starts over (default 30)",
    )
    parser.add_argument("--address", help="an already running broker (default: start one)")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    print(human(report), file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
