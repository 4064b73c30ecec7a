"""The hostile tier (``pytest -m hostile``, run by .ci/run after the main suite).

Each test is one probe of issue #13: a hostile peer does its worst to a broker
in a process of its own, with the default limits (but a 2 s idle probe),
while an honest publisher/subscriber pair in another process publishes
confirmed messages at a fixed rate on a channel of its own. Each test asserts
the probe's bound and the honest pair's figures against an undisturbed run of
the same pair: at least half its confirmed rate, p99 under 100 ms, never cut
off. Each prints one line (shown with ``-s``, and appended as JSON to
``$HOSTILE_REPORT`` if set): the probe, its bound, what was measured, and the
honest pair's figures. Machine: 2 cores shared by the broker, the honest pair
and the hostile peer.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from brokers import BrokerProcess, free_port

from zmqbus import Limits
from zmqbus import protocol as p
from zmqbus.admin import broker_stats
from zmqbus.limits import raise_fd_limit

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(300)]

HONEST = Path(__file__).with_name("honest_pair.py")
SECONDS = 8.0  # the honest pair's run, the probe working meanwhile
RATE = 200.0  # confirmed messages per second the honest pair offers
IDLE_PROBE = 2
LIMITS = Limits()
QUEUED = LIMITS.max_queued_bytes
Probe = Callable[[str, threading.Event], dict[str, Any]]


def _rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def _reset_peak(pid: int) -> None:
    # Writing 5 resets VmHWM (Linux >= 4.0), so each probe's peak is its own.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    proc = BrokerProcess(
        f"tcp://127.0.0.1:{free_port()}",
        "--idle-probe-seconds",
        str(IDLE_PROBE),
    )
    proc.start()
    yield proc
    proc.stop()


def _honest(address: str, seconds: float = SECONDS) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HONEST), address, str(seconds), str(RATE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _figures(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(json.loads(out))


@pytest.fixture(scope="module")
def baseline(broker: BrokerProcess) -> dict[str, Any]:
    return _figures(_honest(broker.address))


def _run(
    broker: BrokerProcess,
    baseline: dict[str, Any],
    name: str,
    probe: Probe,
    *,
    gap: str = "",
) -> dict[str, Any]:
    """Run ``probe`` beside the honest pair; assert the pair's goal figures,
    unless ``gap`` names why this probe does not meet them yet (then only that
    the pair was never cut off and lost nothing, and the line says so)."""
    assert broker.proc is not None
    pid = broker.proc.pid
    _reset_peak(pid)
    rss_before = _rss_kib(pid)
    stop = threading.Event()
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.update(probe(broker.address, stop))
        except BaseException as exc:  # reported in the test's own thread
            failure.append(exc)

    honest = _honest(broker.address)
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    figures = _figures(honest)
    stop.set()
    worker.join(120)
    assert not worker.is_alive(), "the probe did not stop"
    if failure:
        raise failure[0]
    rss_peak = _rss_kib(pid, "VmHWM")
    # Give the broker a moment to settle what the probe left, then read it.
    time.sleep(0.5)
    result["rss_growth_mib"] = round((_rss_kib(pid) - rss_before) / 1024, 1)
    result["rss_peak_growth_mib"] = round((rss_peak - rss_before) / 1024, 1)
    line = {"probe": name, "measured": result, "honest": figures, "undisturbed": baseline}
    if gap:
        line["goal_not_met"] = gap
    print(f"\n{json.dumps(line)}")
    report = os.environ.get("HOSTILE_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")
    # The honest pair: never cut off, every publish confirmed, its rate and p99 kept.
    assert figures["lost_broker"] == 0 and figures["failed"] == 0, figures
    assert figures["confirmed"] == figures["sent"] == figures["received"], figures
    if not gap:
        assert figures["rate"] >= 0.5 * baseline["rate"], (figures, baseline)
        assert figures["p99_ms"] < 100, figures
    return result


# --- raw peers ----------------------------------------------------------------


def _dealer(ctx: zmq.Context[Any], address: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(address)
    return sock


def _join(sock: zmq.Socket[bytes], ch: bytes, **fields: Any) -> None:
    sock.send_multipart([p.H_HELLO, ch, p.pack_hello("hostile", **fields)])
    frames = sock.recv_multipart()
    assert frames[0] == p.H_WELCOME, frames


def _pump(seen: dict[bytes, int], *socks: zmq.Socket[bytes]) -> None:
    # Reads (and counts by header) whatever waits; a socket is used by one
    # thread only (zmq sockets are not thread-safe), so the sender reads too.
    for sock in socks:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            seen[frames[0]] = seen.get(frames[0], 0) + 1


def _idle(stop: threading.Event, seen: dict[bytes, int], *socks: zmq.Socket[bytes]) -> None:
    # Keep reading until the honest pair is done.
    while not stop.wait(0.05):
        _pump(seen, *socks)


def _close(ctx: zmq.Context[Any], *socks: zmq.Socket[bytes]) -> None:
    for sock in socks:
        sock.close(0)
    ctx.term()


def _stats(address: str) -> dict[str, Any]:
    return broker_stats(address, timeout=10.0)


def _sid(n: int) -> bytes:
    return n.to_bytes(p.SID_BYTES, "big")


# --- the probes ----------------------------------------------------------------


def test_subscribe_flood_is_bounded_per_peer(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    n = 300_000

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        sock = _dealer(ctx, address)
        ch = uuid.uuid4().bytes
        _join(sock, ch)
        seen: dict[bytes, int] = {}
        for i in range(n):
            sock.send_multipart([p.H_SUBSCRIBE, ch, b"", _sid(i + 1), b"flood.%d" % i, b""])
            if i % 10 == 0:
                _pump(seen, sock)
            if stop.is_set():
                break
        stats = _stats(address)
        _idle(stop, seen, sock)
        _close(ctx, sock)
        return {
            "sent": n,
            "subscriptions": stats["subscriptions"],
            "refused": stats["refused"].get("max_subscriptions_per_peer", 0),
        }

    got = _run(broker, baseline, "subscribe flood", probe)
    assert got["subscriptions"] <= LIMITS.max_subscriptions_per_peer + 1
    assert got["refused"] >= 1
    assert got["rss_peak_growth_mib"] < 256


def test_deep_patterns_are_refused(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    deep = b".".join([b"a"] * 100)  # 199 octets: a valid pattern, past the token bound

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        sock = _dealer(ctx, address)
        ch = uuid.uuid4().bytes
        _join(sock, ch)
        seen: dict[bytes, int] = {}
        sent = 0
        while not stop.is_set() and sent < 100_000:
            sock.send_multipart([p.H_SUBSCRIBE, ch, b"", _sid(sent + 1), deep, b""])
            sent += 1
            if sent % 10 == 0:
                _pump(seen, sock)
        deadline = time.monotonic() + 60
        while seen.get(p.H_ERROR, 0) + seen.get(p.H_OK, 0) < sent:  # every one answered
            assert time.monotonic() < deadline, seen
            sock.poll(100)
            _pump(seen, sock)
        stats = _stats(address)
        _idle(stop, seen, sock)
        _close(ctx, sock)
        return {"sent": sent, "refused": stats["refused"].get("max_pattern_tokens", 0)}

    got = _run(broker, baseline, "deep patterns (100 tokens)", probe)
    assert got["refused"] >= got["sent"] * 0.9
    assert got["rss_growth_mib"] < 64


def test_vanished_connections_are_forgotten(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    n = 2_000

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        raise_fd_limit()  # this process holds n sockets too
        ctx = zmq.Context()
        ctx.set(zmq.MAX_SOCKETS, n + 100)
        socks = []
        for _ in range(n):
            sock = _dealer(ctx, address)
            sock.send_multipart([p.H_HELLO, uuid.uuid4().bytes, p.pack_hello("gone")])
            socks.append(sock)
        for sock in socks:
            assert sock.recv_multipart()[0] == p.H_WELCOME
        joined = _stats(address)["peers"]
        for sock in socks:
            sock.close(0)  # no DISCONNECT, no heartbeats
        start = time.monotonic()
        while (peers := _stats(address)["peers"]) > 2:
            assert time.monotonic() - start < 3 * IDLE_PROBE + 5, peers
            time.sleep(0.2)
        forgotten_in = time.monotonic() - start
        ctx.term()
        stop.wait()
        return {"joined": joined, "left": peers, "forgotten_in_s": round(forgotten_in, 1)}

    got = _run(broker, baseline, f"{n} vanished connections", probe)
    assert got["joined"] >= n and got["left"] <= 2
    assert got["forgotten_in_s"] <= 2 * IDLE_PROBE + 2


def test_unacked_confirmations_are_bounded_per_subscriber(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    n = 60_000

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        ch = uuid.uuid4().bytes
        sub, pub = _dealer(ctx, address), _dealer(ctx, address)
        _join(sub, ch)
        _join(pub, ch)
        sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b"h.>", b""])
        assert sub.recv_multipart()[0] == p.H_OK
        seen: dict[bytes, int] = {}
        for i in range(n):
            pub.send_multipart([p.H_PUBLISH, ch, b"r%d" % i, b"h.x", b"\x90"])
            if i % 100 == 0:
                _pump(seen, sub, pub)  # the subscriber reads, and never ACKs
        # The broker has routed them all once the publisher has every ROUTED.
        while seen.get(p.H_ROUTED, 0) < n:
            _pump(seen, sub, pub)
            assert not stop.wait(0.01), "the broker never routed them all"
        stats = _stats(address)
        _idle(stop, seen, sub, pub)
        _close(ctx, sub, pub)
        return {
            "published": n,
            "pending": stats["pending_confirmations"],
            "expired": stats["refused"].get("max_pending_per_peer", 0),
        }

    got = _run(broker, baseline, "confirmed publishes never ACKed", probe)
    assert got["pending"] <= LIMITS.max_pending_per_peer
    assert got["expired"] >= got["published"] - LIMITS.max_pending_per_peer - 1000


def test_stats_floods_are_rate_limited(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        socks = [_dealer(ctx, address) for _ in range(10)]
        sent = 0
        while not stop.is_set():
            for sock in socks:  # never read: replies and refusals pile up for them
                try:
                    sock.send_multipart([p.H_STATS, b"", b"q"], zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    pass
            if sent % 1000 == 0:
                time.sleep(0.001)  # leave the 2 cores to the broker now and then
        stats = _stats(address)
        for sock in socks:
            sock.close(0)
        ctx.term()
        return {"sent": sent, "refused": stats["refused"].get("stats_per_second", 0)}

    got = _run(broker, baseline, "10 peers sending STATS, never reading", probe)
    assert got["refused"] >= 1
    assert got["rss_growth_mib"] < 128


def test_a_message_of_many_big_frames_is_read_one_frame_deep(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    frame = b"x" * (1 << 20)

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        sock = _dealer(ctx, address)
        ch = uuid.uuid4().bytes
        _join(sock, ch)
        sent = 0
        for _ in range(3):
            sock.send_multipart([p.H_PUBLISH, ch, b"", b"t", *[frame] * 200])
            sent += 1
            reply = sock.recv_multipart()
            assert reply[0] == p.H_ERROR and int.from_bytes(reply[3], "big") == 400, reply
        _idle(stop, {}, sock)
        _close(ctx, sock)
        return {"messages": sent, "frames_each": 203, "mib_each": 200}

    got = _run(broker, baseline, "messages of 200 frames x 1 MiB", probe)
    # libzmq holds a whole message before the broker reads any of it: the peak
    # is one such message; the broker's own copies stay one frame deep.
    assert got["rss_peak_growth_mib"] < 2 * 200 + 64
    # What stays (58-69 MiB in three runs): not the frames (mmapped, returned at
    # free), but what libzmq and the allocator keep of the connection's buffers.
    assert got["rss_growth_mib"] < 128


def test_topic_cache_stays_within_its_bytes(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        ch = uuid.uuid4().bytes
        sub, pub = _dealer(ctx, address), _dealer(ctx, address)
        _join(sub, ch)
        _join(pub, ch)
        seen: dict[bytes, int] = {}
        for i in range(LIMITS.max_subscriptions_per_peer):
            sub.send_multipart([p.H_SUBSCRIBE, ch, b"", _sid(i + 1), b">", b""])
            if i % 10 == 0:
                _pump(seen, sub)
        n = 0
        while not stop.is_set() and n < 200_000:
            pub.send_multipart([p.H_PUBLISH, ch, b"", b"new.%d" % n, b"\x90"])
            n += 1
            if n % 100 == 0:
                _pump(seen, sub, pub)
        stats = _stats(address)
        _idle(stop, seen, sub, pub)
        _close(ctx, sub, pub)
        return {"topics": n, "sids": LIMITS.max_subscriptions_per_peer,
                "cache_bytes": stats["topic_cache_bytes"]}  # fmt: skip

    got = _run(
        broker,
        baseline,
        "new topics to 10,000 sids on '>'",
        probe,
        # Each DELIVER to that peer names its 10,000 sids: 40 KB a message,
        # ~400 MB/s that the broker's one libzmq I/O thread writes while the
        # honest pair waits behind it. Needs a per-peer byte bound (#13).
        gap="p99: a peer whose every delivery is 40 KB takes the broker's I/O thread",
    )
    assert got["cache_bytes"] <= LIMITS.topic_cache_bytes
    assert got["rss_growth_mib"] < LIMITS.topic_cache_bytes / (1 << 20) + 64


def test_unsubscribing_a_whole_queue_group_is_linear(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    members = LIMITS.max_subscriptions_per_peer

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        ch = uuid.uuid4().bytes
        sock = _dealer(ctx, address)
        _join(sock, ch)
        seen: dict[bytes, int] = {}
        rounds = 0
        sids = b"".join(_sid(i + 1) for i in range(members))
        while not stop.is_set():
            for i in range(members):
                sock.send_multipart([p.H_SUBSCRIBE, ch, b"", _sid(i + 1), b"q", b"workers"])
                if i % 10 == 0:
                    _pump(seen, sock)
            sock.send_multipart([p.H_UNSUBSCRIBE, ch, b"", sids])
            rounds += 1
        _close(ctx, sock)
        return {"rounds": rounds, "members": members}

    got = _run(broker, baseline, "queue group of 10,000 members, unsubscribed whole", probe)
    assert got["rounds"] >= 1


def test_disconnecting_with_many_unconfirmed_deliveries(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        ch = uuid.uuid4().bytes
        pub = _dealer(ctx, address)
        _join(pub, ch)
        seen: dict[bytes, int] = {}
        rounds = 0
        while not stop.is_set():
            sub = _dealer(ctx, address)
            _join(sub, ch)
            sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b"d.>", b""])
            assert sub.recv_multipart()[0] == p.H_OK
            for i in range(LIMITS.max_pending_per_peer):
                pub.send_multipart([p.H_PUBLISH, ch, b"r%d" % i, b"d.x", b"\x90"])
                if i % 100 == 0:
                    _pump(seen, pub)
            sub.send_multipart([p.H_DISCONNECT, ch, b"bye"])
            while sub.recv_multipart()[0] != p.H_OK:
                pass
            sub.close(0)
            rounds += 1
        _close(ctx, pub)
        return {"rounds": rounds, "unconfirmed_each": LIMITS.max_pending_per_peer}

    got = _run(broker, baseline, "DISCONNECT holding 10,000 unconfirmed deliveries", probe)
    assert got["rounds"] >= 1


def test_stats_from_many_peers(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    peers = 1_000

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        socks = [_dealer(ctx, address) for _ in range(peers)]
        for sock in socks:
            _join(sock, uuid.uuid4().bytes)
        asked = 0
        while not stop.is_set():
            for sock in socks:
                sock.send_multipart([p.H_STATS, b"", b"q"])
                asked += 1
            for sock in socks:
                sock.recv_multipart()
        for sock in socks:
            sock.close(0)
        ctx.term()
        return {"peers": peers, "stats_asked": asked}

    got = _run(broker, baseline, f"STATS from {peers} peers", probe)
    assert got["stats_asked"] >= peers


def test_hello_bodies_that_decode_into_many_objects(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    body = msgpack.packb({"client": "x", "junk": [[]] * 150_000})
    assert len(body) < 1 << 20

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        sock = _dealer(ctx, address)
        refused = 0
        while not stop.is_set():
            sock.send_multipart([p.H_HELLO, uuid.uuid4().bytes, body])
            reply = sock.recv_multipart()
            assert reply[0] == p.H_ERROR and int.from_bytes(reply[3], "big") == 422
            refused += 1
        _close(ctx, sock)
        return {"refused": refused, "body_bytes": len(body)}

    got = _run(broker, baseline, "HELLO bodies of 150,000 empty arrays", probe)
    assert got["refused"] >= 1


def test_big_batches(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        ch = uuid.uuid4().bytes
        pub = _dealer(ctx, address)
        _join(pub, ch, batch=True, batch_commands=True)
        seen: dict[bytes, int] = {}
        subs = []
        for _ in range(4):
            sub = _dealer(ctx, address)
            _join(sub, ch, batch=True, batch_commands=True)
            sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b">", b""])
            assert sub.recv_multipart()[0] == p.H_OK
            subs.append(sub)
        too_big = b"".join(
            p.pack_publish_entry(b"t.%d" % i, b"x") for i in range(p.MAX_BATCH_ENTRIES + 1)
        )
        at_limit = b"".join(
            p.pack_publish_entry(b"t.%d" % i, b"x") for i in range(p.MAX_BATCH_ENTRIES)
        )
        sent = 0
        while not stop.is_set():
            pub.send_multipart([p.H_PUBLISH_BATCH, ch, too_big])
            pub.send_multipart([p.H_PUBLISH_BATCH, ch, at_limit])
            sent += 2
            stop.wait(0.05)
            _pump(seen, pub, *subs)
        stats = _stats(address)
        for s in [pub, *subs]:
            s.close(0)
        ctx.term()
        return {"batches": sent, "refused": stats["refused"].get("max_batch_entries", 0)}

    got = _run(broker, baseline, "PUBLISH_BATCHes of 1,025 and 1,024 entries", probe)
    assert got["refused"] >= got["batches"] // 2


def test_a_stalled_subscriber_of_big_messages_holds_max_queued_bytes(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    body = b"x" * ((1 << 20) - 1024)
    n = 2_000  # 2,000 MiB offered, twice the bound

    def probe(address: str, stop: threading.Event) -> dict[str, Any]:
        ctx = zmq.Context()
        ch = uuid.uuid4().bytes
        sub, pub = _dealer(ctx, address), _dealer(ctx, address)
        sub.setsockopt(zmq.RCVHWM, 1)  # and it reads nothing: TCP fills, then the queue
        _join(sub, ch)
        _join(pub, ch)
        sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b"big.>", b""])
        assert sub.recv_multipart()[0] == p.H_OK
        seen: dict[bytes, int] = {}
        for _ in range(n):
            pub.send_multipart([p.H_PUBLISH, ch, b"", b"big.x", body])
        # Its OK comes once the broker has handled every publish before it.
        pub.send_multipart([p.H_DISCONNECT, ch, b"d"])
        while pub.recv_multipart()[0] != p.H_OK:
            pass
        stats = _stats(address)
        _idle(stop, seen, pub)
        _close(ctx, sub, pub)
        return {
            "offered_mib": n,
            "bound_mib": QUEUED >> 20,
            "dropped_at_broker": stats["counters"].get("dropped_hwm", 0),
        }

    got = _run(
        broker,
        baseline,
        "a stalled subscriber of 1 MiB messages",
        probe,
        # 2 GB through the broker in a few seconds: its one libzmq I/O thread
        # writes them while the honest pair's small messages wait their turn.
        gap="p99: a pair moving 1 MiB messages as fast as it can takes the broker's I/O thread",
    )
    assert got["dropped_at_broker"] >= 1
    # Its queue, the publisher's inbound queue (both within the bound), and
    # the socket buffers between.
    assert got["rss_peak_growth_mib"] < 2 * (QUEUED >> 20) + 64
