"""Interop: the C and Node.js clients of interop/ against the real Python broker.

Both clients were written from docs/protocol.md and tests/vectors/ alone. These
tests build them (make; npm ci), check their codecs against tests/vectors/, and
run real processes against a broker on loopback: zb-sub prints "ready" to
stderr once its SUBSCRIBE is confirmed, and zb-pub returns once the broker has
processed everything it sent (DISCONNECT and its OK), so nothing here sleeps.

When a toolchain or package is missing, the tests skip with the reason, except
under CI (the CI variable set), where they fail: .ci/run installs everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from zmqbus import Broker, Bus, HandlerError, Message, User
from zmqbus.keys import keygen, load_keypair

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "interop" / "c"
NODE_DIR = ROOT / "interop" / "node"
VECTORS = ROOT / "tests" / "vectors"
IN_CI = bool(os.environ.get("CI"))

LANGS = ("c", "node")
# Every byte value, and headers and a topic that are not ASCII.
ALL_BYTES = bytes(range(256))
UTF8_HEADERS = {"grüße": "Grüße, 世界 🚀", "ключ": "значение", "eq": "a=b", "empty": ""}
UTF8_TOPIC = "café.événement.日本"


def unavailable(reason: str) -> None:
    """Fail under CI, where everything must be installed; skip elsewhere."""
    if IN_CI:
        pytest.fail(f"interop toolchain missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, encoding="utf-8", timeout=timeout
    )


@pytest.fixture(scope="session")
def c_client() -> Path:
    """interop/c built with make; the directory holding zb-pub, zb-sub, zb-vectors."""
    for tool in ("make", "cc", "pkg-config"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found (Debian: apt-get install build-essential pkg-config)")
    if run(["pkg-config", "--exists", "libzmq", "msgpack"], C_DIR, 30).returncode != 0:
        unavailable(
            "libzmq or msgpack-c not found (Debian: apt-get install libzmq3-dev libmsgpack-dev)"
        )
    build = run(["make", "-s"], C_DIR, 120)
    assert build.returncode == 0, f"make failed:\n{build.stdout}\n{build.stderr}"
    return C_DIR


@pytest.fixture(scope="session")
def node_client() -> Path:
    """interop/node with its packages installed (npm ci when node_modules is stale)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found (Node.js 18 or later is needed)")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = run(["npm", "ci", "--no-audit", "--no-fund"], NODE_DIR, 300)
        if npm.returncode != 0:
            unavailable(f"npm ci failed:\n{npm.stderr[-2000:]}")
    probe = run(
        ["node", "-e", "import('zeromq').then(() => import('@msgpack/msgpack'))"], NODE_DIR, 60
    )
    if probe.returncode != 0:
        unavailable(f"the zeromq or @msgpack/msgpack package does not load:\n{probe.stderr}")
    return NODE_DIR


@pytest.fixture
def clients(c_client: Path, node_client: Path) -> dict[str, Path]:
    return {"c": c_client, "node": node_client}


def program(lang: str, name: str) -> list[str]:
    """The argv prefix of zb-pub or zb-sub in one language."""
    if lang == "c":
        return [str(C_DIR / name)]
    return ["node", str(NODE_DIR / f"{name}.js")]


class Peer:
    """A zb-sub process: stderr and stdout read by threads, "ready" awaited."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
        )
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._events: queue.Queue[str] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read_err, name="interop-stderr", daemon=True),
            threading.Thread(target=self._read_out, name="interop-stdout", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.strip() == "ready":
                self._events.put("ready")
        self._events.put("eof")

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)

    def wait_ready(self, timeout: float = 15.0) -> None:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            event = "timeout"
        if event != "ready":
            self.kill()
            pytest.fail(f"{self.argv[:2]} not ready ({event}); stderr:\n{''.join(self.stderr)}")

    def finish(self, timeout: float = 30.0) -> tuple[int, list[dict[str, Any]]]:
        """Wait for the exit; the status and the JSON lines printed."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.argv[:2]} did not exit; stderr:\n{''.join(self.stderr)}")
        for t in self._threads:
            t.join(5)
        return rc, [json.loads(line) for line in self.stdout]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def start_sub(broker: Broker, clients: dict[str, Path]) -> Iterator[Callable[..., Peer]]:
    """Start zb-sub in a language on the test broker, and wait until it is subscribed."""
    peers: list[Peer] = []

    def start(lang: str, channel: uuid.UUID, *patterns: str, **options: str | int) -> Peer:
        """Options become --key value; a value True, the flag --key alone."""
        argv = [*program(lang, "zb-sub"), "--endpoint", broker.address, "--channel", str(channel)]
        for pattern in patterns:
            argv += ["--pattern", pattern]
        argv += ["--timeout", "20000"]
        for key, value in options.items():
            flag = f"--{key.replace('_', '-')}"
            argv += [flag] if value is True else [flag, str(value)]
        peer = Peer(argv)
        peers.append(peer)
        peer.wait_ready()
        return peer

    yield start
    for peer in peers:
        peer.kill()


@pytest.fixture
def pub(
    broker: Broker, clients: dict[str, Path]
) -> Callable[..., tuple[int, list[dict[str, Any]], str]]:
    """Run zb-pub in a language on the test broker: exit status, JSON lines, stderr."""

    def run_pub(
        lang: str,
        channel: uuid.UUID,
        topic: str | None,
        *,
        payload: bytes = b"",
        headers: dict[str, str] | None = None,
        confirm: bool = True,
        garbage: bool = False,
        count: int = 1,
        batch_commands: bool = False,
    ) -> tuple[int, list[dict[str, Any]], str]:
        argv = [*program(lang, "zb-pub"), "--endpoint", broker.address, "--channel", str(channel)]
        if topic is not None:
            argv += ["--topic", topic, "--payload-hex", payload.hex()]
        for key, value in (headers or {}).items():
            argv += ["--header", f"{key}={value}"]
        if confirm:
            argv.append("--confirm")
        if garbage:
            argv.append("--raw-garbage")
        if count != 1:
            argv += ["--count", str(count)]
        if batch_commands:
            argv.append("--batch-commands")
        done = run(argv, ROOT, 30)
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        return done.returncode, lines, done.stderr

    return run_pub


def assert_message(
    line: dict[str, Any], topic: str, payload: bytes, headers: dict[str, str]
) -> None:
    assert line["topic"] == topic
    assert bytes.fromhex(line["payload"]) == payload
    assert line["headers"] == headers
    assert len(bytes.fromhex(line["id"])) == 16


# ---- the vectors, checked by the C and Node codecs ---------------------------------


def test_c_codec_passes_the_vectors(c_client: Path) -> None:
    done = run([str(c_client / "zb-vectors"), str(VECTORS)], ROOT, 60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failures" in done.stdout


def test_node_codec_passes_the_vectors(node_client: Path) -> None:
    done = run(["node", str(node_client / "test" / "vectors.js"), str(VECTORS)], ROOT, 60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failures" in done.stdout
    # it implements the durable streams: no vector is skipped for a missing feature
    assert "vectors of features not implemented skipped: none" in done.stdout


# ---- mixed-language scenarios ------------------------------------------------------


def test_python_publishes_c_and_node_receive_with_wildcards(
    make_bus: Callable[..., Bus], channel: uuid.UUID, start_sub: Callable[..., Peer]
) -> None:
    c_sub = start_sub("c", channel, "orders.*", stop_topic="orders.end")
    node_sub = start_sub("node", channel, "orders.>", stop_topic="orders.end")
    bus = make_bus()
    headers = {"source": "python", "escapes": 'tab\tnl\n"quote" \\ \x01 \x7f'}
    # orders.* matches one token: the C subscriber does not get orders.eu.created
    assert bus.publish("orders.eu.created", b"deep", headers).delivered == 1
    result = bus.publish("orders.eu", b"\x00shallow\xff", headers)
    assert (result.delivered, result.buses) == (2, 2)
    bus.publish("orders.end", b"", confirm=False)

    rc, c_lines = c_sub.finish()
    assert rc == 0, c_sub.stderr
    rc, node_lines = node_sub.finish()
    assert rc == 0, node_sub.stderr
    assert [m["topic"] for m in c_lines] == ["orders.eu", "orders.end"]
    assert [m["topic"] for m in node_lines] == ["orders.eu.created", "orders.eu", "orders.end"]
    for line in (c_lines[0], node_lines[1]):
        assert_message(line, "orders.eu", b"\x00shallow\xff", headers)
        assert line["confirmed"] is True
        assert line["sids"] == ["00000001"]
    assert c_lines[-1]["confirmed"] is False and node_lines[-1]["confirmed"] is False
    # the same message is printed byte for byte alike by both languages
    assert c_sub.stdout[0] == node_sub.stdout[1]


@pytest.mark.parametrize("lang", LANGS)
def test_undecodable_body_is_acked_with_an_error(
    lang: str,
    make_bus: Callable[..., Bus],
    channel: uuid.UUID,
    start_sub: Callable[..., Peer],
    raw_dealer: Callable[[], zmq.Socket[bytes]],
) -> None:
    peer = start_sub(lang, channel, "raw.>", count=2)
    # The broker forwards bodies unchanged: a raw DEALER publishes one that is not msgpack.
    sock = raw_dealer()
    sock.send_multipart([b"ZB\x01\x01", channel.bytes, b"\x80"])
    assert sock.recv_multipart()[0] == b"ZB\x01\x81"  # WELCOME
    sock.send_multipart([b"ZB\x01\x04", channel.bytes, b"r1", b"raw.bad", b"\xc1"])
    routed, acked = sock.recv_multipart(), sock.recv_multipart()
    assert (routed[0], routed[2], routed[3]) == (b"ZB\x01\x84", b"r1", b"\x00\x00\x00\x01")
    assert (acked[0], acked[2]) == (b"ZB\x01\x85", b"r1")
    delivered, dropped, errors = msgpack.unpackb(acked[3])
    assert (delivered, dropped, len(errors)) == (0, 0, 1)
    assert errors[0].startswith("subscriber could not decode message")
    # and the subscriber goes on
    assert make_bus().publish("raw.good", b"ok").delivered == 1
    rc, lines = peer.finish()
    assert rc == 0, peer.stderr
    assert lines[0] == {
        "topic": "raw.bad",
        "undecodable": True,
        "sids": ["00000001"],
        "confirmed": True,
    }
    assert bytes.fromhex(lines[1]["payload"]) == b"ok"


def test_node_publisher_gets_the_error_of_a_python_handler(
    make_bus: Callable[..., Bus], channel: uuid.UUID, pub: Callable[..., Any]
) -> None:
    seen: list[Message] = []

    def charge(msg: Message) -> None:
        seen.append(msg)
        raise ValueError("card declined: ünïcödé")

    make_bus().subscribe("payments.charge", charge)
    rc, lines, stderr = pub("node", channel, "payments.charge", payload=b"order 123")
    assert rc == 3, stderr  # 3: a confirmation reported handler errors
    assert lines == [
        {
            "routed": 1,
            "acked": 1,
            "delivered": 0,
            "dropped": 0,
            "errors": ["ValueError: card declined: ünïcödé"],
        }
    ]
    assert [m.payload for m in seen] == [b"order 123"]


def test_python_publisher_gets_the_errors_of_c_and_node_subscribers(
    make_bus: Callable[..., Bus], channel: uuid.UUID, start_sub: Callable[..., Peer]
) -> None:
    c_sub = start_sub("c", channel, "jobs.>", error="C handler: nein", count=1)
    node_sub = start_sub("node", channel, "jobs.>", error="Node handler: ніт", count=1)
    with pytest.raises(HandlerError) as failed:
        make_bus().publish("jobs.run", b"x")
    assert sorted(failed.value.errors) == ["C handler: nein", "Node handler: ніт"]
    assert (failed.value.result.delivered, failed.value.result.buses) == (0, 2)
    assert c_sub.finish()[0] == 0 and node_sub.finish()[0] == 0


def test_c_and_node_on_different_channels_never_meet(
    make_bus: Callable[..., Bus], start_sub: Callable[..., Peer], pub: Callable[..., Any]
) -> None:
    channel_c, channel_node = uuid.uuid4(), uuid.uuid4()
    c_sub = start_sub("c", channel_c, ">", stop_topic="sentinel.end")
    node_sub = start_sub("node", channel_node, ">", stop_topic="sentinel.end")
    # the same topic on both channels, from both languages
    for lang, channel in (("c", channel_c), ("node", channel_node)):
        rc, lines, stderr = pub(lang, channel, "shared.topic", payload=f"{lang} only".encode())
        assert rc == 0, stderr
        assert lines[0]["delivered"] == 1
    # zb-pub has its DISCONNECT OK: the broker has routed its messages. A sentinel
    # published now reaches each subscriber after anything routed to it before.
    for channel in (channel_c, channel_node):
        assert make_bus(channel).publish("sentinel.end", b"").delivered == 1

    for peer, lang in ((c_sub, "c"), (node_sub, "node")):
        rc, lines = peer.finish()
        assert rc == 0, peer.stderr
        assert [(m["topic"], bytes.fromhex(m["payload"])) for m in lines] == [
            ("shared.topic", f"{lang} only".encode()),
            ("sentinel.end", b""),
        ]


PAIRS = [
    ("python", "c"),
    ("python", "node"),
    ("c", "python"),
    ("node", "python"),
    ("c", "node"),
    ("node", "c"),
]


@pytest.mark.parametrize(("sender", "receiver"), PAIRS, ids=[f"{s}-to-{r}" for s, r in PAIRS])
def test_binary_payload_and_utf8_headers_survive(
    sender: str,
    receiver: str,
    make_bus: Callable[..., Bus],
    channel: uuid.UUID,
    start_sub: Callable[..., Peer],
    pub: Callable[..., Any],
) -> None:
    if receiver == "python":
        inbox = make_bus().subscribe("café.>")
    else:
        peer = start_sub(receiver, channel, "café.>", count=1)
    if sender == "python":
        result = make_bus().publish(UTF8_TOPIC, ALL_BYTES, UTF8_HEADERS)
        assert result.delivered == 1
    else:
        rc, lines, stderr = pub(
            sender, channel, UTF8_TOPIC, payload=ALL_BYTES, headers=UTF8_HEADERS
        )
        assert rc == 0, stderr
        assert lines == [{"routed": 1, "acked": 1, "delivered": 1, "dropped": 0, "errors": []}]
    if receiver == "python":
        msg = inbox.get(timeout=10)
        assert (msg.topic, msg.payload, msg.headers) == (UTF8_TOPIC, ALL_BYTES, UTF8_HEADERS)
    else:
        rc, lines = peer.finish()
        assert rc == 0, peer.stderr
        assert len(lines) == 1
        assert_message(lines[0], UTF8_TOPIC, ALL_BYTES, UTF8_HEADERS)


# The malformed messages of --raw-garbage (interop/c/zb-pub.c, interop/node/lib/garbage.js)
# and the ERROR each gets: code, and ref echoed ("g10" is 673130).
GARBAGE_ERRORS = [
    (505, ""),  # foreign signature
    (505, ""),  # version 2
    (505, ""),  # 3-octet header
    (505, ""),  # REQ-style delimiter frame
    (405, ""),  # unknown command 0x7f
    (405, ""),  # a broker command (DELIVER) from a client
    (400, ""),  # PUBLISH with 4 frames
    (400, ""),  # 15-octet channel
    (400, ""),  # 33-octet ref (not echoed)
    (406, b"g10".hex()),  # publish to a pattern
    (409, ""),  # another channel
    (400, b"g12".hex()),  # 3-octet sid
    (406, b"g13".hex()),  # '>' not last in a pattern
    (422, ""),  # HELLO body not msgpack
    (400, ""),  # ACK with an empty token
    (400, ""),  # REQUEST with an empty ref
    (413, b"g17".hex()),  # body one octet over max_message_size
    (400, b"g18".hex()),  # UNSUBSCRIBE sids of 3 octets
    (409, ""),  # HELLO on another channel while joined
]


@pytest.mark.parametrize("lang", LANGS)
def test_malformed_frames_get_errors_while_others_keep_working(
    lang: str,
    make_bus: Callable[..., Bus],
    channel: uuid.UUID,
    start_sub: Callable[..., Peer],
    pub: Callable[..., Any],
) -> None:
    other = "node" if lang == "c" else "c"
    watcher = start_sub(other, channel, ">", count=3)
    py_bus = make_bus()
    inbox = py_bus.subscribe(">")
    assert py_bus.publish("before.garbage", b"1").delivered == 2

    rc, lines, stderr = pub(lang, channel, "after.garbage", payload=b"2", garbage=True)
    assert rc == 0, stderr
    # its own confirmed publish after the garbage: the session still works
    assert lines[0] == {"routed": 2, "acked": 2, "delivered": 2, "dropped": 0, "errors": []}
    errors = lines[1:]
    assert [(e["error"], e["ref"]) for e in errors] == GARBAGE_ERRORS
    assert all(
        e["channel"] in ("", channel.hex, "ffeeddccbbaa99887766554433221100") for e in errors
    )

    assert py_bus.publish("after.everything", b"3").delivered == 2
    assert [inbox.get(timeout=10).topic for _ in range(3)] == [
        "before.garbage",
        "after.garbage",
        "after.everything",
    ]
    rc, seen = watcher.finish()
    assert rc == 0, watcher.stderr
    assert [m["topic"] for m in seen] == ["before.garbage", "after.garbage", "after.everything"]


def test_c_and_node_share_a_queue_group(
    make_bus: Callable[..., Bus], channel: uuid.UUID, start_sub: Callable[..., Peer]
) -> None:
    c_sub = start_sub("c", channel, "jobs.*", queue="workers", count=2)
    node_sub = start_sub("node", channel, "jobs.*", queue="workers", count=2)
    bus = make_bus()
    for i in range(4):
        # each job goes to exactly one member; confirmed, so both are idle at the next
        # one and the broker rotates strictly
        assert bus.publish(f"jobs.n{i}", b"").delivered == 1
    jobs: list[str] = []
    for peer in (c_sub, node_sub):
        rc, lines = peer.finish()
        assert rc == 0, peer.stderr
        assert len(lines) == 2
        jobs += [m["topic"] for m in lines]
    assert sorted(jobs) == [f"jobs.n{i}" for i in range(4)]


# ---- batches of commands (--batch-commands) ----------------------------------------

# Confirmed publishes kept outstanding at once, and published by zb-pub in one run
# (zb-pub publishes 256 at a time with --batch-commands: two windows, two BATCHes).
OUTSTANDING = 40
PUBLISHED = 300
CONFIRMED = {"routed": 1, "acked": 1, "delivered": 1, "dropped": 0, "errors": []}


def batch_stats(stderr: str) -> dict[str, Any]:
    """The stderr line a program ends with under --batch-commands."""
    lines = [line for line in stderr.splitlines() if line.startswith('{"batch_commands"')]
    assert len(lines) == 1, stderr
    stats: dict[str, Any] = json.loads(lines[0])
    assert list(stats) == [
        "batch_commands",
        "batches_in",
        "entries_in",
        "batches_out",
        "entries_out",
    ]
    return stats


def batch_counters(broker: Broker) -> tuple[int, int]:
    """The broker's BROKER_BATCHes sent and BATCHes received so far."""
    counters = broker.stats()["counters"]
    return counters.get("broker_batches", 0), counters.get("batches_in", 0)


@pytest.mark.parametrize("lang", LANGS)
def test_batching_subscriber_confirms_pipelined_python_publishes(
    lang: str,
    broker: Broker,
    make_bus: Callable[..., Bus],
    channel: uuid.UUID,
    start_sub: Callable[..., Peer],
) -> None:
    peer = start_sub(lang, channel, "pipe.>", count=OUTSTANDING, batch_commands=True)
    bus = make_bus()
    sent_before, received_before = batch_counters(broker)
    # All outstanding at once: the bus sends them as BATCHes, so the broker hands the
    # subscriber their DELIVERs as BROKER_BATCHes, whose ACKs it sends back as BATCHes.
    futures = [bus.publish_nowait(f"pipe.n{i}", f"#{i}".encode()) for i in range(OUTSTANDING)]
    results = [f.result(timeout=15) for f in futures]
    assert [(r.delivered, r.dropped, r.failed, r.buses) for r in results] == [
        (1, 0, 0, 1)
    ] * OUTSTANDING

    rc, lines = peer.finish()
    assert rc == 0, peer.stderr
    assert [(m["topic"], bytes.fromhex(m["payload"])) for m in lines] == [
        (f"pipe.n{i}", f"#{i}".encode()) for i in range(OUTSTANDING)
    ]
    assert all(m["confirmed"] and m["sids"] == ["00000001"] for m in lines)
    stats = batch_stats("".join(peer.stderr))
    assert stats["batch_commands"] is True  # the broker offered them
    # DELIVER entries came in BROKER_BATCHes, and the ACKs of each went back in one
    # BATCH (the ACKs of two may share one: never more BATCHes than BROKER_BATCHes)
    assert 1 <= stats["batches_out"] <= stats["batches_in"]
    assert 2 * stats["batches_in"] <= stats["entries_in"] <= stats["entries_out"] <= OUTSTANDING
    sent, received = batch_counters(broker)
    # the bus got BROKER_BATCHes too (ROUTEDs, ACKEDs) and sent BATCHes too (PUBLISHes)
    assert sent - sent_before >= stats["batches_in"] + 1
    assert received - received_before >= stats["batches_out"] + 1
    assert broker.stats()["errors"] == {}
    assert broker.stats()["pending_confirmations"] == 0


@pytest.mark.parametrize("lang", LANGS)
def test_batching_publisher_reaches_python_subscriber(
    lang: str,
    broker: Broker,
    make_bus: Callable[..., Bus],
    channel: uuid.UUID,
    pub: Callable[..., Any],
) -> None:
    inbox = make_bus().subscribe("pipe.>", maxsize=2 * PUBLISHED)
    payload = b"\x00batched\xff"

    # Without the option: one PUBLISH at a time, each confirmed before the next, and
    # nobody sends or gets a batch.
    before = batch_counters(broker)
    rc, plain_lines, stderr = pub(lang, channel, "pipe.plain", payload=payload, count=PUBLISHED)
    assert rc == 0, stderr
    assert plain_lines == [CONFIRMED] * PUBLISHED
    assert '"batch_commands"' not in stderr
    assert batch_counters(broker) == before
    assert [inbox.get(timeout=10).topic for _ in range(PUBLISHED)] == ["pipe.plain"] * PUBLISHED

    sent_before, received_before = batch_counters(broker)
    rc, lines, stderr = pub(
        lang, channel, "pipe.batched", payload=payload, count=PUBLISHED, batch_commands=True
    )
    assert rc == 0, stderr
    # the same confirmations, printed as without the option
    assert lines == plain_lines
    messages = [inbox.get(timeout=10) for _ in range(PUBLISHED)]
    assert all((m.topic, m.payload, m.headers) == ("pipe.batched", payload, {}) for m in messages)
    assert len({m.id for m in messages}) == PUBLISHED
    stats = batch_stats(stderr)
    assert stats["batch_commands"] is True
    # its PUBLISHes left as one BATCH per window of 256, and its ROUTEDs and ACKEDs
    # came back in BROKER_BATCHes (entries: at most one ROUTED and one ACKED each)
    assert (stats["batches_out"], stats["entries_out"]) == (2, PUBLISHED)
    assert stats["batches_in"] >= 1
    assert 2 * stats["batches_in"] <= stats["entries_in"]
    assert stats["entries_in"] <= 2 * PUBLISHED
    sent, received = batch_counters(broker)
    assert received - received_before >= stats["batches_out"]
    assert sent - sent_before >= stats["batches_in"]
    assert broker.stats()["errors"] == {}
    assert broker.stats()["pending_confirmations"] == 0


# ---- CURVE: a broker that authenticates every connection ---------------------------

# zb-pub and zb-sub exit with this when the broker refuses the handshake (3, the
# Python CLI's status for it, already means handler errors to zb-pub).
EXIT_REFUSED = 5
# Each program's wait for the WELCOME: a refusal must show well before it ends.
CONNECT_TIMEOUT = 5.0


class Secure:
    """A CURVE broker and its users' keys: Python's as Z85 text, C's and Node's
    as the certificate files `zmqbus keygen` writes (the broker's public key
    too), and two users limited to one message per 100 s."""

    USERS = ("python", "c", "node", "c-limited", "node-limited")

    def __init__(self, folder: Path) -> None:
        self.files = {name: keygen(name, folder) for name in ("broker", *self.USERS)}
        self.keys = {name: load_keypair(secret) for name, (_, secret) in self.files.items()}
        self.users = users = [
            User(name, self.keys[name][0])
            if not name.endswith("-limited")
            # a bucket of one message that refills in 100 s: the second is over
            else User(name, self.keys[name][0], rate=0.01, burst=100.0)
            for name in self.USERS
        ]
        self.broker = Broker("tcp://127.0.0.1:0", secret_key=self.keys["broker"][1], users=users)
        self.broker.start()
        self.server_key = self.keys["broker"][0]
        self.buses: list[Bus] = []

    def bus(self, channel: uuid.UUID) -> Bus:
        bus = Bus(
            self.broker.address,
            channel,
            server_key=self.server_key,
            key=self.keys["python"],
            connect_timeout=CONNECT_TIMEOUT,
        )
        self.buses.append(bus)
        return bus

    def key_args(self, name: str, form: str = "files") -> list[str]:
        """--server-key and --key for a user: as certificate files ("files"),
        as Z85 text and the secret key alone ("z85"), or as Z85 text and
        PUBLIC:SECRET ("pair")."""
        public, secret = self.keys[name]
        if form == "files":
            return ["--server-key", str(self.files["broker"][0]), "--key", str(self.files[name][1])]
        key = secret.decode() if form == "z85" else f"{public.decode()}:{secret.decode()}"
        return ["--server-key", self.server_key.decode(), "--key", key]

    def argv(self, lang: str, name: str, channel: uuid.UUID, *args: str) -> list[str]:
        return [
            *program(lang, name),
            "--endpoint",
            self.broker.address,
            "--channel",
            str(channel),
            *args,
        ]

    def close(self) -> None:
        for bus in self.buses:
            bus.close()
        self.broker.stop()


@pytest.fixture
def secure(tmp_path: Path, clients: dict[str, Path]) -> Iterator[Secure]:
    s = Secure(tmp_path)
    yield s
    s.close()


def refused_line(stderr: str, address: str) -> str:
    """The line that says the broker refused the handshake, naming its endpoint."""
    lines = [line for line in stderr.splitlines() if "authentication refused" in line]
    assert len(lines) == 1, stderr
    assert f"authentication refused by the broker at {address}: " in lines[0]
    return lines[0]


def test_curve_python_c_and_node_meet_on_an_authenticating_broker(secure: Secure) -> None:
    channel = uuid.uuid4()
    # the subscribers give certificate files for both keys
    sub = ["--pattern", "secure.>", "--count", "3"]
    subs = {
        lang: Peer(secure.argv(lang, "zb-sub", channel, *sub, *secure.key_args(lang)))
        for lang in LANGS
    }
    try:
        for peer in subs.values():
            peer.wait_ready()
        inbox = secure.bus(channel).subscribe("secure.>")
        everyone = {"routed": 3, "acked": 3, "delivered": 3, "dropped": 0, "errors": []}

        result = secure.bus(channel).publish("secure.python", b"\x00from python\xff")
        assert (result.delivered, result.buses) == (3, 3)
        # the C publisher gives its secret key alone, the Node one PUBLIC:SECRET
        for lang, form in (("c", "z85"), ("node", "pair")):
            pub = ["--topic", f"secure.{lang}", "--payload", f"from {lang}", "--confirm"]
            done = run(
                secure.argv(lang, "zb-pub", channel, *pub, *secure.key_args(lang, form)), ROOT, 30
            )
            assert done.returncode == 0, done.stderr
            assert [json.loads(line) for line in done.stdout.splitlines()] == [everyone]

        topics = ["secure.python", "secure.c", "secure.node"]
        assert [inbox.get(timeout=10).topic for _ in topics] == topics
        for peer in subs.values():
            rc, lines = peer.finish()
            assert rc == 0, peer.stderr
            assert [m["topic"] for m in lines] == topics
            payloads = [bytes.fromhex(m["payload"]) for m in lines]
            assert payloads == [b"\x00from python\xff", b"from c", b"from node"]
    finally:
        for peer in subs.values():
            peer.kill()
    stats = secure.broker.stats()
    assert stats["errors"] == {} and stats["counters"].get("auth_refused", 0) == 0


@pytest.mark.parametrize("lang", LANGS)
def test_curve_refuses_a_stranger_and_no_key_at_once_and_serves_the_others(
    lang: str, secure: Secure, tmp_path: Path
) -> None:
    channel = uuid.uuid4()
    inbox = secure.bus(channel).subscribe("after.>")
    address = secure.broker.address
    stranger = tmp_path / "stranger"
    stranger_public, stranger_secret = keygen("stranger", stranger)
    broker_key = ["--server-key", str(secure.files["broker"][0])]
    known_key = ["--key", str(secure.files[lang][1])]
    zap_400 = "refused this client's key (ZAP 400)"
    cases = [
        # a key pair the broker has no user for: as its certificate file, as Z85
        ("zb-pub", ["--topic", "t", *broker_key, "--key", str(stranger_secret)], zap_400),
        (
            "zb-sub",
            ["--pattern", ">", *broker_key, "--key", load_keypair(stranger_secret)[1].decode()],
            zap_400,
        ),
        # no key at all: the broker's CURVE handshake is not one the client speaks
        ("zb-pub", ["--topic", "t"], "CURVE"),
        ("zb-sub", ["--pattern", ">"], "CURVE"),
        # a known key, but another broker's public key: the broker cannot read the HELLO
        (
            "zb-pub",
            ["--topic", "t", "--server-key", str(stranger_public), *known_key],
            "server key",
        ),
    ]
    for name, args, why in cases:
        started = time.monotonic()
        done = run(secure.argv(lang, name, channel, *args), ROOT, 30)
        elapsed = time.monotonic() - started
        assert done.returncode == EXIT_REFUSED, (name, args, done.stderr)
        assert why in refused_line(done.stderr, address), (name, args)
        # the monitor reports the refusal: nothing waits for the WELCOME's timeout
        assert elapsed < CONNECT_TIMEOUT, (name, args, elapsed)
        assert done.stdout == ""
    assert secure.broker.stats()["counters"]["auth_refused"] >= 2

    # and the broker serves its users as before, in the same language too
    pub = ["--topic", "after.refusals", "--confirm", *secure.key_args(lang)]
    done = run(secure.argv(lang, "zb-pub", channel, *pub), ROOT, 30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["delivered"] == 1
    assert inbox.get(timeout=10).topic == "after.refusals"


@pytest.mark.parametrize("lang", LANGS)
def test_curve_subscriber_whose_user_is_removed_exits_refused(lang: str, secure: Secure) -> None:
    sub = ["--pattern", ">", *secure.key_args(lang)]
    peer = Peer(secure.argv(lang, "zb-sub", uuid.uuid4(), *sub))
    try:
        peer.wait_ready()
        # the broker closes the user's connection; the DEALER reconnects and is refused
        secure.broker.set_users([u for u in secure.users if u.name != lang])
        rc, lines = peer.finish()
    finally:
        peer.kill()
    assert (rc, lines) == (EXIT_REFUSED, [])
    assert "refused this client's key" in refused_line("".join(peer.stderr), secure.broker.address)


@pytest.mark.parametrize("lang", LANGS)
def test_rate_limited_confirmed_publish_gets_429_with_retry_after(
    lang: str, secure: Secure
) -> None:
    user = f"{lang}-limited"
    # the first passes, the second is refused with 429 and a retry-after
    pub = ["--topic", "limited.confirmed", "--confirm", "--count", "2", *secure.key_args(user)]
    done = run(secure.argv(lang, "zb-pub", uuid.uuid4(), *pub), ROOT, 30)
    assert done.returncode == 1, done.stderr
    assert [json.loads(line)["routed"] for line in done.stdout.splitlines()] == [0]
    refusal = re.search(r"PUBLISH refused: ERROR 429: (.*) \(retry after (\d+) ms\)", done.stderr)
    assert refusal, done.stderr
    assert f"user '{user}' is over its rate" in refusal[1]
    assert 0 < int(refusal[2]) <= 100_000
    assert secure.broker.stats()["rate_limited"] == {user: 1}


@pytest.mark.parametrize("lang", LANGS)
def test_retry_after_and_throttled_reach_the_user_from_a_scripted_broker(
    lang: str, clients: dict[str, Path]
) -> None:
    """The new wire fields, each once, from a ROUTER that plays the broker: a
    DROPPED that names no sid but 7 throttled publishes, an ERROR 429 with a
    retry-after refusing a confirmed publish, and a stray one with its own."""
    channel = uuid.uuid4()
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    pub = ["--channel", str(channel), "--topic", "slow.down", "--confirm", "--count", "2"]
    argv = [*program(lang, "zb-pub"), "--endpoint", endpoint, *pub]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ch = channel.bytes
        peer, header, *_ = router.recv_multipart()
        assert header == b"ZB\x01\x01"
        router.send_multipart([peer, b"ZB\x01\x81", ch, msgpack.packb({"max_message_size": 4096})])
        ref = router.recv_multipart()[3]
        router.send_multipart([peer, b"ZB\x01\x8b", ch, b"", (7).to_bytes(4, "big")])
        router.send_multipart([peer, b"ZB\x01\x84", ch, ref, (0).to_bytes(4, "big")])
        ref = router.recv_multipart()[3]
        refused = [ref, b"\x01\xad", b"over its rate", (250).to_bytes(4, "big")]
        stray = [b"", b"\x01\xad", b"stray", (9).to_bytes(4, "big")]
        for frames in (refused, stray):
            router.send_multipart([peer, b"ZB\x01\x8f", ch, *frames])
        ref = router.recv_multipart()[3]  # DISCONNECT
        router.send_multipart([peer, b"ZB\x01\x82", ch, ref])
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        router.close(0)
    assert proc.returncode == 1, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"routed": 0, "acked": 0, "delivered": 0, "dropped": 0, "errors": []},
        {"error": 429, "channel": channel.hex, "ref": "", "text": "stray", "retry_after": 9},
    ]
    assert "dropped 7 unconfirmed publish(es) of this client" in err
    assert "PUBLISH refused: ERROR 429: over its rate (retry after 250 ms)" in err


@pytest.mark.parametrize("lang", LANGS)
def test_rate_limited_unconfirmed_publishes_are_reported_as_throttled(
    lang: str, secure: Secure
) -> None:
    user = f"{lang}-limited"
    # One passes (the bucket holds one message); the other three are dropped at the
    # broker, and the DROPPEDs that say so come before the DISCONNECT's OK.
    pub = ["--topic", "limited.unconfirmed", "--count", "4", *secure.key_args(user)]
    done = run(secure.argv(lang, "zb-pub", uuid.uuid4(), *pub), ROOT, 30)
    assert done.returncode == 0, done.stderr
    assert "refused a broker message" not in done.stderr
    throttled = re.findall(r"dropped (\d+) unconfirmed publish\(es\) of this client", done.stderr)
    assert sum(map(int, throttled)) == 3, done.stderr
    stats = secure.broker.stats()
    assert stats["rate_limited"] == {user: 3}
    assert stats["counters"]["throttled"] == 3


# ---- durable streams: the Node client and a Python broker with a store -------------
#
# The C client has no durable streams; the Node one publishes into a stream (zb-pub:
# the stream and seq of a confirmed publish, --msg-id) and reads a durable consumer
# (zb-consume.js, which prints "ready" once bound and exits once it has acked --count
# messages, after its DISCONNECT's OK: the broker has then handled every ack).


@pytest.fixture
def stream_broker(tmp_path: Path, node_client: Path) -> Iterator[Broker]:
    """A broker with a store directory: streams are file streams by default."""
    with Broker("tcp://127.0.0.1:0", data_dir=tmp_path / "data") as b:
        yield b


def node_argv(name: str, broker: Broker, channel: uuid.UUID, *args: str) -> list[str]:
    """A Node program's argv on ``broker`` and ``channel``."""
    return [*program("node", name), "--endpoint", broker.address, "--channel", str(channel), *args]


def run_node(
    name: str, broker: Broker, channel: uuid.UUID, *args: str
) -> tuple[int, list[dict[str, Any]], str]:
    """Run a Node program to its end: exit status, JSON lines, stderr."""
    done = run(node_argv(name, broker, channel, *args), ROOT, 30)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def stored(seq: int, *, duplicate: bool = False, routed: int = 1) -> dict[str, Any]:
    """The result line of a confirmed publish into stream ORDERS, with one subscriber."""
    return {
        "routed": routed,
        "acked": routed,
        "delivered": routed,
        "dropped": 0,
        "errors": [],
        "stream": "ORDERS",
        "seq": seq,
        "duplicate": duplicate,
    }


@pytest.mark.timeout(60)
def test_node_publishes_into_a_stream_and_a_python_consumer_reads_it(
    stream_broker: Broker,
) -> None:
    channel = uuid.uuid4()
    with Bus(stream_broker.address, channel) as bus:
        bus.add_stream("ORDERS", ["orders.>"])
        inbox = bus.subscribe("orders.>")  # captured messages are routed too
        publish = ["--topic", "orders.created", "--confirm"]

        # two messages, each with an id of its own: stored at 1 and 2
        rc, lines, stderr = run_node(
            "zb-pub", stream_broker, channel, *publish, "--payload", "new", "--header", "k=v",
            "--count", "2",
        )  # fmt: skip
        assert rc == 0, stderr
        assert lines == [stored(1), stored(2)]

        # the same UUID id twice: stored once, the second a duplicate of seq 3, not routed
        msg_id = uuid.uuid4()
        rc, lines, stderr = run_node(
            "zb-pub", stream_broker, channel, *publish, "--payload", "retried",
            "--msg-id", str(msg_id), "--count", "2",
        )  # fmt: skip
        assert rc == 0, stderr
        assert lines == [stored(3), stored(3, duplicate=True, routed=0)]
        # a UUID id is the same 16 octets in Python: its retry of it is a duplicate too
        again = bus.publish("orders.created", b"retried", msg_id=msg_id)
        assert (again.stream, again.seq, again.duplicate, again.delivered) == ("ORDERS", 3, True, 0)

        # another text: the first 16 octets of its SHA-256 (Python would make a uuid5)
        rc, lines, stderr = run_node(
            "zb-pub", stream_broker, channel, *publish, "--payload", "named",
            "--msg-id", "order-42",
        )  # fmt: skip
        assert rc == 0, stderr
        assert lines == [stored(4)]

        consumer = bus.consume("ORDERS", durable="python-reader")
        got = [consumer.get(timeout=10) for _ in range(4)]
        assert [(m.stream, m.seq, m.deliveries, m.topic, m.payload) for m in got] == [
            ("ORDERS", 1, 1, "orders.created", b"new"),
            ("ORDERS", 2, 1, "orders.created", b"new"),
            ("ORDERS", 3, 1, "orders.created", b"retried"),
            ("ORDERS", 4, 1, "orders.created", b"named"),
        ]
        assert [m.headers for m in got] == [{"k": "v"}, {"k": "v"}, {}, {}]
        assert got[0].id != got[1].id
        assert got[2].id == msg_id
        assert got[3].id.bytes == hashlib.sha256(b"order-42").digest()[:16]
        for m in got:
            m.ack()
        info = bus.consumer_info("ORDERS", "python-reader")
        assert (info.delivered, info.ack_floor, info.pending) == (4, 4, 0)
        assert bus.stream_info("ORDERS").messages == 4
        # routed once each: the duplicates reached no subscriber
        assert [inbox.get(timeout=10).payload for _ in range(4)] == [
            b"new",
            b"new",
            b"retried",
            b"named",
        ]


@pytest.mark.timeout(60)
def test_node_durable_consumer_reads_python_publishes_in_order_and_acks(
    stream_broker: Broker,
) -> None:
    channel = uuid.uuid4()
    durable = ["--stream", "JOBS", "--durable", "node-worker", "--timeout", "20000"]
    with Bus(stream_broker.address, channel) as bus:
        bus.add_stream("JOBS", ["jobs.>"])

        def publish(first: int, n: int) -> None:
            for i in range(first, first + n):
                r = bus.publish(f"jobs.n{i}", f"job {i}".encode(), {"n": str(i)})
                assert (r.stream, r.seq, r.duplicate) == ("JOBS", i, False)

        def expected(seq: int, deliveries: int) -> dict[str, Any]:
            return {
                "stream": "JOBS",
                "seq": seq,
                "deliveries": deliveries,
                "topic": f"jobs.n{seq}",
                "payload": f"job {seq}".encode().hex(),
                "headers": {"n": str(seq)},
                "id": bus.get_message("JOBS", seq).id.hex,
            }

        # bound first, then the jobs come: each delivered once, in order, and acked
        peer = Peer(node_argv("zb-consume", stream_broker, channel, *durable, "--count", "3"))
        try:
            peer.wait_ready()
            publish(1, 3)
            rc, lines = peer.finish()
        finally:
            peer.kill()
        assert rc == 0, peer.stderr
        assert lines == [expected(seq, 1) for seq in (1, 2, 3)]
        info = bus.consumer_info("JOBS", "node-worker")
        assert (info.delivered, info.ack_floor, info.pending, info.waiting) == (3, 3, 0, 0)
        assert info.redelivered == 0

        # bound again, it goes on after its ack floor; --nak-first: each job NAKed on
        # its first delivery comes again at once (deliveries 2) and is acked then
        peer = Peer(
            node_argv("zb-consume", stream_broker, channel, *durable, "--count", "2", "--nak-first")
        )
        try:
            peer.wait_ready()
            publish(4, 2)
            rc, lines = peer.finish()
        finally:
            peer.kill()
        assert rc == 0, peer.stderr
        assert [line["seq"] for line in lines if line["deliveries"] == 1] == [4, 5]
        assert sorted(lines, key=lambda line: (line["seq"], line["deliveries"])) == [
            expected(4, 1),
            expected(4, 2),
            expected(5, 1),
            expected(5, 2),
        ]
        info = bus.consumer_info("JOBS", "node-worker")
        assert (info.delivered, info.ack_floor, info.pending, info.waiting) == (5, 5, 0, 0)
        assert info.redelivered == 2

        # a filtered durable of its own takes only what its filter matches
        argv = node_argv(
            "zb-consume", stream_broker, channel, "--stream", "JOBS", "--durable", "urgent",
            "--filter", "jobs.urgent.*", "--count", "1", "--timeout", "20000",
        )  # fmt: skip
        peer = Peer(argv)
        try:
            peer.wait_ready()
            assert bus.publish("jobs.urgent.fire", b"now").seq == 6
            rc, lines = peer.finish()
        finally:
            peer.kill()
        assert rc == 0, peer.stderr
        assert [(line["seq"], line["topic"], line["deliveries"]) for line in lines] == [
            (6, "jobs.urgent.fire", 1)
        ]
        # (its ack_floor stays 0: the reference broker counts the sequences its filter
        # skipped as never settled, so only delivered and pending say it is done)
        info = bus.consumer_info("JOBS", "urgent")
        assert (info.delivered, info.pending, info.waiting) == (6, 0, 0)

        # refusals: no such stream (404), the durable with another filter (410)
        rc, lines, stderr = run_node(
            "zb-consume", stream_broker, channel, "--stream", "NOPE", "--durable", "node-worker"
        )
        assert (rc, lines) == (1, []) and "CONSUME refused: ERROR 404" in stderr, stderr
        rc, lines, stderr = run_node(
            "zb-consume", stream_broker, channel, *durable, "--filter", "jobs.other"
        )
        assert (rc, lines) == (1, []) and "CONSUME refused: ERROR 410" in stderr, stderr
