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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hostile_peers as hp
import pytest
from brokers import BrokerProcess, free_port
from hostile_peers import IDLE_PROBE, LIMITS, Probe

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(300)]

HONEST = Path(__file__).with_name("honest_pair.py")
SECONDS = 8.0  # the honest pair's run, the probe working meanwhile
RATE = 200.0  # confirmed messages per second the honest pair offers
QUEUED = LIMITS.max_queued_bytes


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
) -> dict[str, Any]:
    """Run ``probe`` beside the honest pair; assert the pair's goal figures."""
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
    print(f"\n{json.dumps(line)}")
    report = os.environ.get("HOSTILE_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")
    # The honest pair: never cut off, every publish confirmed, its rate and p99 kept.
    assert figures["lost_broker"] == 0 and figures["failed"] == 0, figures
    assert figures["confirmed"] == figures["sent"] == figures["received"], figures
    assert figures["rate"] >= 0.5 * baseline["rate"], (figures, baseline)
    assert figures["p99_ms"] < 100, figures
    return result


# --- the probes (tests/hostile_peers.py) -----------------------------------------


def test_subscribe_flood_is_bounded_per_peer(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    got = _run(broker, baseline, "subscribe flood", hp.subscribe_flood)
    assert got["subscriptions"] <= LIMITS.max_subscriptions_per_peer + 1
    assert got["refused"] >= 1
    assert got["rss_peak_growth_mib"] < 256


def test_deep_patterns_are_refused(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    got = _run(broker, baseline, "deep patterns (100 tokens)", hp.deep_patterns)
    assert got["answered"] == got["sent"]
    assert got["refused"] >= got["sent"] * 0.9
    assert got["rss_growth_mib"] < 64


def test_vanished_connections_are_forgotten(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    name = f"{hp.VANISHING} vanished connections"
    got = _run(broker, baseline, name, hp.vanished_connections)
    assert got["joined"] >= hp.VANISHING
    assert got["forgotten_in_s"] is not None
    assert got["forgotten_in_s"] <= 2 * IDLE_PROBE + 2
    # Their memory goes back to the system (malloc_trim, a second after the
    # traffic), not kept by the allocator (55 MiB was, before).
    assert got["rss_growth_mib"] < 16


def test_idle_connections_never_shut_honest_buses_out(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    # 24,000 such connections took every descriptor of the broker's 20,000:
    # honest buses got ConnectTimeout. Now the oldest unjoined go past
    # max_connections, and every one within its hello timeout.
    name = f"{hp.IDLE_CONNECTIONS} connections that never say HELLO"
    got = _run(broker, baseline, name, hp.idle_connections)
    # Counted until libzmq reports each close: a flood overshoots a little,
    # within the tenth of the descriptors the broker keeps for it.
    assert got["peak_connections"] <= LIMITS.max_connections * 1.1
    assert got["accepted"] > LIMITS.max_connections  # the bound was reached
    # Every one seen closed on its own socket, each by the broker's count
    # (not libzmq's 30 s handshake timer), all within the hello timeout (with
    # a listen queue of 100, SYNs past it came back seconds later).
    assert got["closed"] == got["opened"], got
    assert got["closed_by_broker"] >= got["opened"]
    assert got["round_s"] < LIMITS.hello_timeout_seconds + 15


def test_unacked_confirmations_are_bounded_per_subscriber(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    got = _run(broker, baseline, "confirmed publishes never ACKed", hp.unacked_confirmations)
    assert got["routed"] == got["published"]
    # STATS counts every pending confirmation: the honest pair's in flight too.
    assert got["pending"] <= LIMITS.max_pending_per_peer + 100
    assert got["expired"] >= got["published"] - LIMITS.max_pending_per_peer - 1000


def test_stats_floods_are_rate_limited(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    got = _run(broker, baseline, "10 peers sending STATS, never reading", hp.stats_never_read)
    assert got["refused"] >= 1
    assert got["rss_growth_mib"] < 128


def test_a_message_of_many_big_frames_is_read_one_frame_deep(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    got = _run(broker, baseline, "messages of 200 frames x 1 MiB", hp.many_big_frames)
    # libzmq holds a whole message before the broker reads any of it: the peak
    # is one such message; the broker's own copies stay one frame deep.
    assert got["rss_peak_growth_mib"] < 2 * 200 + 64
    # What libzmq and the allocator kept of the connection's buffers (58-119 MiB
    # before) goes back with the trim that follows the traffic.
    assert got["rss_growth_mib"] < 16


def test_topic_cache_stays_within_its_bytes(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    # Each DELIVER to that peer names its 10,000 sids (40 KB): losing one for
    # it must cost the broker no more than losing one to a single sid.
    name = "new topics to 10,000 sids on '>'"
    got = _run(broker, baseline, name, hp.new_topics_to_many_sids)
    assert got["cache_bytes"] <= LIMITS.topic_cache_bytes
    assert got["rss_growth_mib"] < LIMITS.topic_cache_bytes / (1 << 20) + 64


def test_unsubscribing_a_whole_queue_group_is_linear(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    name = "queue group of 10,000 members, unsubscribed whole"
    got = _run(broker, baseline, name, hp.queue_group_unsubscribed_whole)
    assert got["rounds"] >= 1


def test_disconnecting_with_many_unconfirmed_deliveries(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    name = "DISCONNECT holding 10,000 unconfirmed deliveries"
    got = _run(broker, baseline, name, hp.disconnect_with_unconfirmed)
    assert got["rounds"] >= 1


def test_leaving_with_many_subscriptions(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    # Its subscriptions go 512 a pass after it left, routing passing it over.
    name = "leaving with 10,000 subscriptions"
    got = _run(broker, baseline, name, hp.leave_with_many_subscriptions)
    assert got["rounds"] >= 1


def test_stats_from_many_peers(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    name = f"STATS from {hp.STATS_PEERS} peers"
    got = _run(broker, baseline, name, hp.stats_from_many_peers)
    assert got["stats_asked"] >= hp.STATS_PEERS


def test_hello_bodies_that_decode_into_many_objects(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    name = "HELLO bodies of 150,000 empty arrays"
    got = _run(broker, baseline, name, hp.hello_bodies_of_many_objects)
    assert got["refused"] >= 1
    assert got["body_bytes"] < 1 << 20


def test_big_batches(broker: BrokerProcess, baseline: dict[str, Any]) -> None:
    got = _run(broker, baseline, "PUBLISH_BATCHes of 1,025 and 1,024 entries", hp.big_batches)
    assert got["refused"] >= got["batches"] // 2


def test_a_stalled_subscriber_of_big_messages_holds_max_queued_bytes(
    broker: BrokerProcess, baseline: dict[str, Any]
) -> None:
    # 2 GB through the broker in a few seconds: each 1 MiB body is passed on
    # from libzmq's buffer, not copied, so the honest pair's turns come often.
    name = "a stalled subscriber of 1 MiB messages"
    got = _run(broker, baseline, name, hp.stalled_subscriber_of_big_messages)
    assert got["dropped_at_broker"] >= 1
    # Its queue, the publisher's inbound queue (both within the bound), and
    # the socket buffers between.
    assert got["rss_peak_growth_mib"] < 2 * (QUEUED >> 20) + 64


def test_every_probe_has_its_test() -> None:
    # The soak runs hostile_peers.PROBES; the tier must run each of them too.
    import inspect

    source = inspect.getsource(sys.modules[__name__])
    assert all(f"hp.{probe.__name__}" in source for probe in hp.PROBES.values())


@pytest.mark.timeout(300)
def test_a_short_soak_with_every_probe_at_once(tmp_path: Path) -> None:
    # perf/soak.py --hostile for 40 s (the soak is 10 minutes of it):
    # confirmed honest pairs lose nothing while every probe runs; the broker's
    # peak memory stays under the sum of the bounds the probes can fill.
    soak = Path(__file__).resolve().parents[1] / "perf" / "soak.py"
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(soak), "--hostile", "--hostile-round", "20", "--duration", "40"]
    cmd += ["--rate", "100", "--timeout", "30", "--json", str(out)]
    proc = subprocess.run(
        cmd, cwd=soak.parents[1], capture_output=True, text=True, timeout=280, check=False
    )
    sys.stderr.write(proc.stderr)  # the summary, shown with -s or on failure
    assert proc.returncode in (0, 1), f"soak.py could not run:\n{proc.stderr}"
    report: dict[str, Any] = json.loads(out.read_text())
    hostile = report["hostile"]
    assert hostile["missing_reports"] == []
    assert set(hostile["probes"]) == set(hp.PROBES)
    assert all(sum(r[k] for k in ("rounds", "unfinished", "failures")) >= 1
               for r in hostile["probes"].values())  # fmt: skip
    assert report["loss"] == 0 and report["duplicates"] == 0
    assert report["publish_errors"] == {} and report["confirmed"] == report["sent"] > 0
    assert hostile["broker_rss_peak_mib"] < hostile["rss_bound_mib"]
    assert report["ok"] is True and proc.returncode == 0
