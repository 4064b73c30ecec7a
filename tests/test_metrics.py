"""Broker(metrics=...): /metrics scraped over HTTP from a real broker with real
traffic, parsed with prometheus_client's parser, linted with promtool; the
alert rules and the Grafana dashboard in deploy/ checked against a real scrape."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from brokers import free_port

from zmqbus import Broker, Bus, __version__

try:
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families

    from zmqbus.metrics import BROKER_COUNTERS, COUNTER_FAMILIES, STREAM_COUNTERS
except ImportError:
    if os.environ.get("CI"):  # the test extra installs it
        raise
    pytest.skip("prometheus_client is not installed: zmqbus[metrics]", allow_module_level=True)

pytestmark = pytest.mark.timeout(60)

IN_CI = bool(os.environ.get("CI"))
ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "zmqbus.json"
DOCS = ROOT / "docs" / "metrics.md"
# Families exported only when a counter has no metric of its own (none today).
FALLBACK = {"zmqbus_broker_other", "zmqbus_stream_other"}
METRIC_NAME = re.compile(r"\bzmqbus_[a-z0-9_]*[a-z0-9]")

HELLO = b"ZB\x01\x01"
ERROR = b"ZB\x01\x8f"


def unavailable(reason: str) -> None:
    """Fail under CI, where everything must be installed; skip elsewhere."""
    if IN_CI:
        pytest.fail(f"missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool not installed (Debian: apt-get install prometheus)")
    assert path is not None
    return path


class Scrape:
    """One scrape of /metrics: the text and its families by name."""

    def __init__(self, address: str) -> None:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            assert resp.status == 200
            self.content_type = resp.headers["Content-Type"]
            self.text = resp.read().decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}

    def value(self, sample: str, **labels: str) -> float:
        """The value of the one sample named ``sample`` with ``labels``."""
        found = [
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and s.labels == labels
        ]
        assert len(found) == 1, (sample, labels, found)
        return found[0]

    def labelled(self, sample: str, label: str) -> dict[str, float]:
        """Every sample named ``sample``, by the value of its ``label``."""
        return {
            s.labels[label]: s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample
        }

    def names(self) -> set[str]:
        """The names a query may use: each sample's, and each family's even
        without samples (a counter by its ``_total``)."""
        samples = {s.name for f in self.families.values() for s in f.samples}
        typed = {f.name + ("_total" if f.type == "counter" else "") for f in self.families.values()}
        return samples | typed


@pytest.fixture
def metered() -> Iterator[Broker]:
    """A broker on loopback with metrics on a free loopback port."""
    with Broker("tcp://127.0.0.1:0", metrics="127.0.0.1:0") as b:
        yield b


@contextlib.contextmanager
def traffic(broker: Broker) -> Iterator[dict[str, int]]:
    """Plain pub/sub, a stream with a redelivery, a protocol error from a raw
    DEALER, every step synchronised by a reply; yields what was done while the
    buses (and the stream's consumer) are still there."""
    channel = uuid.uuid4()
    with Bus(broker.address, channel) as pub, Bus(broker.address, channel) as sub_bus:
        sub = sub_bus.subscribe("events.*")
        for i in range(4):
            assert pub.publish("events.new", b"%d" % i).delivered == 1
        for _ in range(4):
            sub.get(timeout=5)
        pub.add_stream("ORDERS", ["orders.>"], storage="memory")
        for i in range(3):
            assert pub.publish("orders.created", b"%d" % i).seq == i + 1
        consumer = sub_bus.consume("ORDERS")
        first = [consumer.get(timeout=5) for _ in range(3)]
        first[0].nak()
        again = consumer.get(timeout=5)  # the broker counted the redelivery when it sent it
        assert (again.seq, again.deliveries) == (1, 2)
        # Raw: a HELLO whose channel is 15 bytes is refused with 400.
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVTIMEO, 5000)
        try:
            dealer.connect(broker.address)
            dealer.send_multipart([HELLO, uuid.uuid4().bytes[:15], msgpack.packb({})])
            reply = dealer.recv_multipart()
        finally:
            dealer.close(0)
        assert reply[0] == ERROR and int.from_bytes(reply[3], "big") == 400
        yield {"published": 4 + 3, "delivered": 4, "stored": 3}


# --- what a scrape says ---------------------------------------------------------


def test_scrape_matches_the_traffic(metered: Broker) -> None:
    with traffic(metered) as done:
        scrape = Scrape(metered.metrics_address or "")
    assert scrape.content_type.startswith("text/plain")
    assert scrape.value("zmqbus_messages_published_total") == done["published"]
    assert scrape.value("zmqbus_deliveries_total") == done["delivered"]
    assert scrape.value("zmqbus_subscribes_total") == 1
    assert scrape.value("zmqbus_peers_joined_total") == 2
    assert scrape.value("zmqbus_protocol_errors_total", code="400") == 1
    assert scrape.value("zmqbus_protocol_errors_total", code="403") == 0
    assert scrape.value("zmqbus_stream_stored_total") == done["stored"]
    assert scrape.value("zmqbus_stream_deliveries_total") == 4
    assert scrape.value("zmqbus_stream_acks_total", kind="nak") == 1
    assert scrape.value("zmqbus_stream_redelivered_total", stream="ORDERS") == 1
    assert scrape.value("zmqbus_streams") == 1
    assert scrape.value("zmqbus_stream_messages", stream="ORDERS") == 3
    assert scrape.value("zmqbus_stream_last_seq", stream="ORDERS") == 3
    assert scrape.value("zmqbus_stream_bytes", stream="ORDERS") > 3 * len("orders.created")
    assert scrape.value("zmqbus_build_info", version=__version__) == 1
    assert scrape.value("process_resident_memory_bytes") > 0
    assert scrape.value("zmqbus_peers") == 2
    assert scrape.value("zmqbus_stream_consumers", stream="ORDERS") == 1
    assert scrape.value("zmqbus_max_peers") == metered.limits.max_peers
    # The buses closed: their peers left, and the consumer went with them.
    scrape = Scrape(metered.metrics_address or "")
    assert scrape.value("zmqbus_peers") == 0
    assert scrape.value("zmqbus_channels") == 0
    assert scrape.value("zmqbus_subscriptions") == 0
    assert scrape.value("zmqbus_stream_consumers", stream="ORDERS") == 0
    assert scrape.value("zmqbus_stream_redelivered_total", stream="ORDERS") == 1


def test_gauges_while_peers_are_joined(metered: Broker) -> None:
    channel = uuid.uuid4()
    with Bus(metered.address, channel) as a, Bus(metered.address, channel) as b:
        a.subscribe("x.>")
        b.subscribe("y.*", queue="workers")
        a.add_stream("JOBS", ["jobs.>"], storage="memory")
        b.publish("jobs.one", b"1")
        consumer = b.consume("JOBS")
        consumer.get(timeout=5)  # delivered and not acked
        scrape = Scrape(metered.metrics_address or "")
        assert scrape.value("zmqbus_peers") == 2
        assert scrape.value("zmqbus_channels") == 1
        assert scrape.value("zmqbus_subscriptions") == 2
        assert scrape.value("zmqbus_queue_groups") == 1
        assert scrape.value("zmqbus_connections") >= 2
        assert scrape.value("zmqbus_stream_consumers", stream="JOBS") == 1
        assert scrape.value("zmqbus_stream_ack_pending", stream="JOBS") == 1
        stats = metered.stats()
        for name in ("peers", "channels", "subscriptions", "queue_groups"):
            assert scrape.value(f"zmqbus_{name}") == stats[name], name


def test_counters_are_what_stats_says(metered: Broker) -> None:
    # A scrape, STATS, a scrape: each counter STATS shows lies between the two
    # (the broker may count a heartbeat meanwhile), and equals both when they agree.
    with traffic(metered):
        pass
    before = Scrape(metered.metrics_address or "")
    stats = metered.stats()
    after = Scrape(metered.metrics_address or "")
    checked = 0
    for fam in COUNTER_FAMILIES:
        for source, key, label in fam.sources:
            if source != "broker":
                continue
            labels = {fam.label: label} if fam.label else {}
            want = stats["counters"].get(key, 0)
            lo = before.value(fam.name + "_total", **labels)
            hi = after.value(fam.name + "_total", **labels)
            assert lo <= want <= hi, (key, lo, want, hi)
            checked += 1
    assert checked > 30
    for sample, label, key in (
        ("zmqbus_protocol_errors_total", "code", "errors"),
        ("zmqbus_refused_total", "limit", "refused"),
        ("zmqbus_denied_total", "user", "denied"),
        ("zmqbus_rate_limited_total", "user", "rate_limited"),
    ):
        shown = {k: v for k, v in after.labelled(sample, label).items() if v}
        assert shown == {str(k): v for k, v in stats[key].items()}, sample


def test_names_and_types_follow_prometheus_conventions(metered: Broker) -> None:
    with traffic(metered):
        scrape = Scrape(metered.metrics_address or "")
    ours = {n: f for n, f in scrape.families.items() if n.startswith("zmqbus_")}
    assert len(ours) > 50
    for name, fam in ours.items():
        assert fam.documentation, name
        assert fam.type in ("counter", "gauge"), name
        for sample in fam.samples:
            if fam.type == "counter":
                assert sample.name == name + "_total", sample.name
            else:
                assert sample.name == name and not name.endswith("_total"), sample.name
    for line in scrape.text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
    # Units in the names: everything in bytes says so.
    assert {n for n in ours if "bytes" in n} == {
        "zmqbus_topic_cache_bytes",
        "zmqbus_topic_cache_limit_bytes",
        "zmqbus_stream_bytes",
    }
    for name in ours:
        assert "bytes" not in name or name.endswith("_bytes"), name


def test_every_counter_of_the_broker_has_a_metric() -> None:
    # What the code counts: BrokerState, Streams and the broker's loop.
    keys = {
        path: set(re.findall(r"counters\[\"(\w+)\"\]", (ROOT / "zmqbus" / path).read_text()))
        for path in ("_routing.py", "broker.py", "_streams.py")
    }
    assert keys["_routing.py"] and keys["_streams.py"]
    assert keys["_routing.py"] | keys["broker.py"] <= BROKER_COUNTERS
    assert keys["_streams.py"] <= STREAM_COUNTERS


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    with (
        Broker("tcp://127.0.0.1:0", metrics="127.0.0.1:0", metrics_per_channel=True) as broker,
        traffic(broker),
    ):
        scrape = Scrape(broker.metrics_address or "")
    exported = {n for n in scrape.families if n.startswith("zmqbus_")}
    docs = DOCS.read_text()
    documented = {n.removesuffix("_total") for n in METRIC_NAME.findall(docs)}
    assert exported - documented == set()
    assert documented - exported - FALLBACK == set()


def test_per_channel_gauges_only_when_asked(metered: Broker) -> None:
    channel = uuid.uuid4()
    with Bus(metered.address, channel) as bus:
        bus.subscribe("a.b")
        scrape = Scrape(metered.metrics_address or "")
    assert not any("channel" in s.labels for f in scrape.families.values() for s in f.samples)
    assert "zmqbus_channel_peers" not in scrape.families
    with (
        Broker("tcp://127.0.0.1:0", metrics="127.0.0.1:0", metrics_per_channel=True) as broker,
        Bus(broker.address, channel) as one,
        Bus(broker.address, channel) as two,
    ):
        one.subscribe("a.b")
        two.subscribe("a.*")
        two.subscribe("c.>")
        scrape = Scrape(broker.metrics_address or "")
        assert scrape.labelled("zmqbus_channel_peers", "channel") == {str(channel): 2}
        assert scrape.labelled("zmqbus_channel_subscriptions", "channel") == {str(channel): 3}


def test_two_brokers_in_one_process_have_registries_of_their_own() -> None:
    with (
        Broker("tcp://127.0.0.1:0", metrics="127.0.0.1:0") as busy,
        Broker("tcp://127.0.0.1:0", metrics="127.0.0.1:0") as quiet,
    ):
        assert busy.metrics_address != quiet.metrics_address
        with Bus(busy.address, uuid.uuid4()) as bus:
            for _ in range(5):
                bus.publish("t", b"x")
        one, other = Scrape(busy.metrics_address or ""), Scrape(quiet.metrics_address or "")
        assert one.value("zmqbus_messages_published_total") == 5
        assert other.value("zmqbus_messages_published_total") == 0
        # Process metrics in both: each registry has its own collector, and the
        # global registry none of them.
        assert "process_cpu_seconds" in one.families and "process_cpu_seconds" in other.families
        global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
        assert not any(n.startswith("zmqbus_") for n in global_names)


def test_other_paths_are_not_found(metered: Broker) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{metered.metrics_address}/", timeout=5)
    assert err.value.code == 404
    err.value.close()


# --- lifecycle ------------------------------------------------------------------


def _connect(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_the_port_is_released_by_stop_and_served_again_by_start() -> None:
    port = free_port()
    broker = Broker("tcp://127.0.0.1:0", metrics=f"127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match="not started"):
        _ = broker.metrics_address
    broker.start()
    try:
        assert broker.metrics_address == f"127.0.0.1:{port}"
        Scrape(broker.metrics_address)
    finally:
        broker.stop()
    with pytest.raises(ConnectionRefusedError):
        _connect(port)
    # Nothing listens: a server binds the port again at once (as a restart would).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert not [t for t in threading.enumerate() if t.name == "zmqbus-metrics"]
    broker.start()  # the same broker again: the same port served afresh
    try:
        assert Scrape(f"127.0.0.1:{port}").value("zmqbus_peers") == 0
    finally:
        broker.stop()
    with pytest.raises(ConnectionRefusedError):
        _connect(port)


def test_a_metrics_port_in_use_fails_start_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = Broker("tcp://127.0.0.1:0", metrics=f"127.0.0.1:{port}")
        with pytest.raises(OSError):
            broker.start()
        assert not broker.running
    broker.start()  # the port is free now
    broker.stop()


def test_bad_arguments_are_refused_at_construction() -> None:
    for bad in ("nonsense", "host:", "127.0.0.1:99999", ":9100", "127.0.0.1:-1"):
        with pytest.raises(ValueError, match="host:port"):
            Broker("tcp://127.0.0.1:0", metrics=bad)
    with pytest.raises(ValueError, match="metrics_per_channel"):
        Broker("tcp://127.0.0.1:0", metrics_per_channel=True)
    assert Broker("tcp://127.0.0.1:0").metrics_address is None


def test_a_bare_port_means_loopback() -> None:
    with Broker("tcp://127.0.0.1:0", metrics="0") as broker:
        assert (broker.metrics_address or "").startswith("127.0.0.1:")


def test_without_prometheus_client_the_error_says_what_to_install() -> None:
    code = """
import sys
sys.modules["prometheus_client"] = None  # as if it were not installed
import zmqbus
with zmqbus.Broker("tcp://127.0.0.1:0"):  # a broker without metrics needs none of it
    pass
try:
    zmqbus.Broker("tcp://127.0.0.1:0", metrics="127.0.0.1:0")
except ImportError as exc:
    print("ImportError:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "ImportError:" in proc.stdout
    assert "pip install 'zmqbus[metrics]'" in proc.stdout


# --- promtool, and what deploy/ holds ----------------------------------------------


def test_promtool_finds_nothing_to_lint_in_a_scrape(metered: Broker) -> None:
    tool = promtool()
    with traffic(metered):
        scrape = Scrape(metered.metrics_address or "")
    proc = subprocess.run(
        [tool, "check", "metrics"], input=scrape.text, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""


def test_the_alert_rules_pass_promtool_and_use_real_metrics(metered: Broker) -> None:
    tool = promtool()
    proc = subprocess.run(
        [tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    used = set(METRIC_NAME.findall(ALERTS.read_text()))
    assert {"zmqbus_dropped_total", "zmqbus_auth_refused_total", "zmqbus_forged_total"} <= used
    with traffic(metered):
        assert used - Scrape(metered.metrics_address or "").names() == set()


def test_the_grafana_dashboard_queries_real_metrics(metered: Broker) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, key
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(dashboard["panels"]) >= 5 and all(exprs)
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos", "targets"} <= panel.keys(), panel["title"]
    queries = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set(METRIC_NAME.findall("\n".join(exprs + queries)))
    assert {"zmqbus_messages_published_total", "zmqbus_peers", "zmqbus_stream_messages"} <= used
    with traffic(metered):
        assert used - Scrape(metered.metrics_address or "").names() == set()


@pytest.mark.timeout(60)
def test_the_broker_command_serves_metrics() -> None:
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqbus", "broker", "--bind", "tcp://127.0.0.1:0", "--metrics", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            if "metrics on http://" in line:
                url = line.rsplit(" ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"zmqbus_peers" in resp.read()
    finally:
        proc.terminate()
        proc.wait(10)
