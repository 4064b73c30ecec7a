"""Hostile input: a hypothesis-driven fuzz run against a live broker over tcp.

Several bare DEALER sockets throw at least 100,000 random and mutated
multipart messages at a real ``Broker`` (the frames of ``tests/vectors/``
with bytes flipped, frames truncated, extended, duplicated, dropped,
reordered or emptied, headers swapped between commands, frames of random
length, bodies beyond ``max_message_size``, and plain garbage), while a
normal publisher/subscriber pair of ``Bus`` objects keeps publishing with
confirmation on a channel of its own. Afterwards:

* the broker is alive: its thread runs and a fresh ``Bus`` round-trips;
* it refused what it could: the fuzzers received ERROR replies, every reply
  they received is a well-formed broker message, ``stats()["errors"]`` is not
  empty, and no message made it fail internally (no 500);
* the normal pair lost nothing: every confirmed publish reached exactly one
  subscription, and the subscriber holds every message, in order.

Hypothesis chooses, per example, a seed, the mutation operators, how many
mutations a message gets, how often a body is oversized, and a few messages
of its own; a ``random.Random`` seeded with the seed expands each example into
a batch of messages cheaply. Sends are non-blocking; replies are drained
whenever a socket is readable; completion is proven by a sentinel reply per
socket, never by sleeping.

Oversized messages come from a DEALER of their own, each after a HELLO, so
that the broker reaches its size check (413). Most oversized frames stay under
``max_message_size + 64 KiB``; a few exceed it, and the transport then drops
that connection (its DEALER reconnects as a new peer), which is expected and
costs the other fuzzers' sessions nothing. The transport limit is per frame:
a message of several frames each under it is received whole and then refused
(400, wrong frame count); a few of those are sent too.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqbus import Broker, Bus, PublishResult
from zmqbus import protocol as p

VECTORS = Path(__file__).resolve().parent / "vectors"

MAX_MESSAGE_SIZE = 4096
# The broker's ROUTER drops a connection that sends a frame larger than this.
TRANSPORT_LIMIT = MAX_MESSAGE_SIZE + 65536

TOTAL_MESSAGES = 100_000
PER_EXAMPLE = 1_000
EXAMPLES = 105  # 105 x (PER_EXAMPLE + a few direct ones) > TOTAL_MESSAGES
FUZZERS = 4
SEND_BATCH = 64  # sends between two drains of the replies
STALL_MS = 30_000  # no socket readable or writable for this long: the broker is stuck
SENTINEL_WAIT_MS = 5_000

ERROR_HEAD = p.H_ERROR
NORMAL_TOPIC = "fuzz.normal.pair"

OPS = (
    "flip",
    "truncate",
    "extend",
    "dup_frame",
    "drop_frame",
    "reorder",
    "swap_header",
    "graft_frame",
    "swap_body",
    "resize",
    "empty_frame",
    "splice",
    "insert_frame",
)

Frames = list[bytes]


# --- the corpus --------------------------------------------------------------------


def _load(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((VECTORS / name).read_text())
    return data


def _frames(hexes: Iterable[str]) -> Frames:
    return [bytes.fromhex(h) for h in hexes]


def _packb(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


@dataclass(frozen=True)
class Corpus:
    messages: list[Frames]  # every message of the vectors, valid or not, both directions
    joinable: list[Frames]  # valid HELLOs (to get fuzzers joined, so deeper paths run)
    with_body: list[Frames]  # valid client messages whose last frame is a body
    bodies: list[bytes]  # body frames: every body of bodies.json and of the vectors
    headers: list[bytes]  # header frames: every command byte, and near misses


def load_corpus() -> Corpus:
    messages: list[Frames] = []
    for name in ("valid.json", "malformed.json"):
        for vec in _load(name)["vectors"]:  # type: ignore[attr-defined]
            if vec["frames"]:
                messages.append(_frames(vec["frames"]))
    for vec in _load("session.json")["vectors"]:  # type: ignore[attr-defined]
        messages.append(_frames(vec["frames"]))
        messages.extend(_frames(setup) for setup in vec["setup"])
    channel = bytes.fromhex("00112233445566778899aabbccddeeff")
    # Commands added with heartbeats and stats, and HELLO bodies asking for heartbeats.
    hellos = [
        _packb({"client": "fuzz", "heartbeat": hb})
        for hb in (0, 1, 100, 2000, 2**31, -1, True, 1.5, "x", None, [1])
    ]
    messages += [[p.H_HELLO, channel, body] for body in hellos]
    messages += [
        [p.H_HEARTBEAT, channel],
        [p.H_STATS, channel, b"stats-ref"],
        [p.H_STATS, b"", b""],
        [p.H_BROKER_HEARTBEAT, channel],
        [p.H_BYE, channel],
        [p.H_STATS_REPLY, channel, b"", _packb({})],
    ]
    joinable = [m for m in messages if m[0] == p.H_HELLO and len(m) == 3 and m[1] == channel]
    joinable = [m for m in joinable if _is_valid_client(m)]
    with_body = [
        m
        for m in messages
        if len(m) >= 4 and m[0] in (p.H_PUBLISH, p.H_REQUEST, p.H_REPLY) and _is_valid_client(m)
    ]
    bodies_json = _load("bodies.json")
    bodies = [bytes.fromhex(b["body"]) for b in bodies_json["valid"]]  # type: ignore[attr-defined]
    bodies += [bytes.fromhex(b["body"]) for b in bodies_json["malformed"]]  # type: ignore[attr-defined]
    bodies += [m[-1] for m in with_body] + hellos
    headers = [p.header(cmd) for cmd in range(0x00, 0x0C)]
    headers += [p.header(cmd) for cmd in range(0x80, 0x91)]
    headers += [p.header(0xFF), b"ZB\x02\x04", b"ZB\x00\x01", b"zb\x01\x01", b"ZB\x01", b""]
    headers += [b"ZB\x01\x04\x00", b"\x00" * 4, b"XY\x01\x01"]
    assert joinable and with_body and len(messages) > 250
    return Corpus(messages, joinable, with_body, bodies, headers)


def _is_valid_client(frames: Frames) -> bool:
    try:
        p.parse_client(frames)
    except Exception:
        return False
    return True


# --- the mutator -------------------------------------------------------------------


class Mutator:
    """Expands one hypothesis example into many messages; cheap per message."""

    def __init__(self, corpus: Corpus, noise: bytes) -> None:
        self.corpus = corpus
        self.noise = noise

    def blob(self, rng: random.Random, size: int) -> bytes:
        start = rng.randrange(0, len(self.noise) - size) if size < len(self.noise) else 0
        data = self.noise[start : start + size]
        while len(data) < size:
            data += self.noise[: size - len(data)]
        return data

    def random_length(self, rng: random.Random) -> int:
        # Field boundaries of the protocol, their neighbours, and anything small.
        return rng.choice((0, 0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 24, 25, 32, 33, 64, 65, 256, 257))

    def oversized(self, rng: random.Random, over_transport: bool) -> bytes:
        if over_transport:
            size = rng.randint(TRANSPORT_LIMIT + 1, TRANSPORT_LIMIT + 8192)
        else:
            size = rng.randint(MAX_MESSAGE_SIZE + 1, TRANSPORT_LIMIT - 1024)
        return self.blob(rng, size)

    def garbage(self, rng: random.Random) -> Frames:
        count = rng.choice((1, 1, 2, 3, 4, 5, 6, 7, 8, rng.randint(9, 200)))
        out: Frames = []
        for _ in range(count):
            n = self.random_length(rng) if rng.random() < 0.5 else rng.randint(0, 300)
            frame = self.blob(rng, n)
            if rng.random() < 0.3:  # a plausible header makes the broker look further
                frame = rng.choice(self.corpus.headers)
            out.append(frame)
        return out

    def mutate(self, rng: random.Random, frames: Frames, op: str) -> Frames:
        n = len(frames)
        i = rng.randrange(n)
        if op == "flip":
            frame = bytearray(frames[i])
            if frame:
                for _ in range(rng.randint(1, 3)):
                    frame[rng.randrange(len(frame))] ^= rng.randint(1, 255)
            frames[i] = bytes(frame)
        elif op == "truncate":
            frames[i] = frames[i][: rng.randint(0, max(0, len(frames[i]) - 1))]
        elif op == "extend":
            frames[i] = frames[i] + self.blob(rng, rng.choice((1, 1, 2, 4, 16, 40)))
        elif op == "dup_frame":
            frames.insert(rng.randrange(n + 1), frames[i])
        elif op == "drop_frame":
            if n > 1:
                del frames[i]
        elif op == "reorder":
            j = rng.randrange(n)
            frames[i], frames[j] = frames[j], frames[i]
            if rng.random() < 0.2:
                rng.shuffle(frames)
        elif op == "swap_header":
            frames[0] = rng.choice(self.corpus.headers)
        elif op == "graft_frame":
            # A field of another command in the same place: channels, refs, topics...
            other = rng.choice(self.corpus.messages)
            frames[i] = other[i % len(other)]
        elif op == "swap_body":
            frames[-1 if rng.random() < 0.7 else i] = rng.choice(self.corpus.bodies)
        elif op == "resize":
            frames[i] = self.blob(rng, self.random_length(rng))
        elif op == "empty_frame":
            frames[i] = b""
        elif op == "splice":
            other = rng.choice(self.corpus.messages)
            frames = frames[: rng.randint(1, n)] + other[rng.randint(0, len(other)) :]
        elif op == "insert_frame":
            frames.insert(rng.randrange(n + 1), self.blob(rng, self.random_length(rng)))
        return frames

    def expand(self, plan: Plan) -> Iterator[tuple[bool, Frames]]:
        """``(big, frames)`` pairs: ``big`` messages go to the socket of their own
        that sends oversized bodies (so the connection drops it provokes cost the
        other fuzzers nothing), each right after a HELLO that (re)joins it."""
        rng = random.Random(plan.seed)
        corpus = self.corpus
        # Join first, so that session-gated commands reach their field checks.
        for _ in range(FUZZERS):
            yield False, list(rng.choice(corpus.joinable))
        for _ in range(PER_EXAMPLE - FUZZERS):
            roll = rng.random()
            if roll < plan.oversize_rate:
                over = rng.random() < 0.03
                kind = rng.random()
                if kind < 0.75:
                    frames = list(rng.choice(corpus.with_body))
                    frames[-1] = self.oversized(rng, over)
                elif kind < 0.8:
                    # Many frames, each under the transport limit: a large message.
                    frames = list(rng.choice(corpus.with_body))
                    frames += [self.oversized(rng, False) for _ in range(rng.randint(1, 8))]
                else:
                    frames = list(rng.choice(corpus.messages))
                    frames[rng.randrange(len(frames))] = self.oversized(rng, over)
                yield True, list(corpus.joinable[0])
                yield True, frames
            elif roll < plan.oversize_rate + 0.05:
                yield False, self.garbage(rng)
            elif roll < plan.oversize_rate + 0.12:
                # Pristine vectors keep the fuzzers' sessions moving (join, subscribe, leave).
                yield False, list(rng.choice(corpus.messages))
            else:
                frames = list(rng.choice(corpus.messages))
                for _ in range(rng.randint(1, plan.max_mutations)):
                    frames = self.mutate(rng, frames, rng.choice(plan.ops))
                yield False, frames if frames else [b""]
        for direct in plan.direct:
            yield False, list(direct)


@dataclass(frozen=True)
class Plan:
    seed: int
    ops: tuple[str, ...]
    max_mutations: int
    oversize_rate: float
    direct: tuple[tuple[bytes, ...], ...]


plans = st.builds(
    Plan,
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=len(OPS), unique=True).map(tuple),
    max_mutations=st.integers(min_value=1, max_value=4),
    oversize_rate=st.sampled_from((0.0, 0.002, 0.01, 0.03)),
    direct=st.lists(
        st.lists(st.binary(max_size=48), min_size=1, max_size=8).map(tuple), max_size=8
    ).map(tuple),
)


# --- the fuzzers -------------------------------------------------------------------


@dataclass
class Fuzzers:
    """DEALER sockets driven from one thread: non-blocking sends, replies drained
    whenever a socket is readable. The last socket sends the oversized messages."""

    socks: list[zmq.Socket[bytes]]
    sent: int = 0
    oversized_sent: int = 0
    over_transport_sent: int = 0
    replies: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    bad_replies: list[list[bytes]] = field(default_factory=list)
    sentinels: dict[bytes, int] = field(default_factory=dict)  # ref -> socket index
    seen_sentinels: set[int] = field(default_factory=set)
    _next: int = 0

    def __post_init__(self) -> None:
        self.regular = self.socks[:-1]
        self.big = self.socks[-1]
        # Wait for any regular socket to take a message, or the big one; read all.
        self.any_poller = zmq.Poller()
        for s in self.regular:
            self.any_poller.register(s, zmq.POLLIN | zmq.POLLOUT)
        self.any_poller.register(self.big, zmq.POLLIN)
        self.big_poller = zmq.Poller()
        for s in self.regular:
            self.big_poller.register(s, zmq.POLLIN)
        self.big_poller.register(self.big, zmq.POLLIN | zmq.POLLOUT)
        self.read_poller = zmq.Poller()
        for s in self.socks:
            self.read_poller.register(s, zmq.POLLIN)

    def send_all(self, messages: Iterable[tuple[bool, Frames]]) -> None:
        since_drain = 0
        for big, frames in messages:
            if big:
                self._send_big(frames)
            else:
                self._send(frames)
            self.sent += 1
            since_drain += 1
            if since_drain >= SEND_BATCH:
                self.drain()
                since_drain = 0
        self.drain()

    def _send(self, frames: Sequence[bytes]) -> None:
        socks = self.regular
        refused = 0
        while True:
            sock = socks[self._next]
            self._next = (self._next + 1) % len(socks)
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                refused += 1
                if refused >= len(socks):  # every queue full: wait for the broker
                    self._wait(self.any_poller)
                    refused = 0
                continue
            return

    def _send_big(self, frames: Sequence[bytes]) -> None:
        while True:
            try:
                self.big.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._wait(self.big_poller)
                continue
            break
        longest = max(len(f) for f in frames)
        self.oversized_sent += longest > MAX_MESSAGE_SIZE
        self.over_transport_sent += longest > TRANSPORT_LIMIT

    def _wait(self, poller: zmq.Poller) -> None:
        events = poller.poll(STALL_MS)
        assert events, f"no fuzzer socket readable or writable for {STALL_MS} ms"
        self.drain()

    def drain(self) -> None:
        for i, sock in enumerate(self.socks):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._reply(i, frames)

    def _reply(self, index: int, frames: list[bytes]) -> None:
        if frames[0] == ERROR_HEAD and len(frames) == 6 and frames[2] in self.sentinels:
            self.seen_sentinels.add(self.sentinels[frames[2]])
            return
        self.replies += 1
        try:
            cmd = p.parse_broker(frames)
        except Exception:
            if len(self.bad_replies) < 20:
                self.bad_replies.append(frames)
            return
        self.kinds[type(cmd).__name__] += 1
        if frames[0] == ERROR_HEAD:
            self.errors[int.from_bytes(frames[3], "big")] += 1

    def finish(self) -> None:
        """Prove each socket's traffic has been processed: a sentinel that the broker
        always refuses (a DISCONNECT with a 15-byte channel: 400, its ref echoed)
        comes back after everything sent before it. A sentinel lost with a dropped
        connection is sent again."""
        for attempt in range(5):
            waiting = [i for i in range(len(self.socks)) if i not in self.seen_sentinels]
            if not waiting:
                return
            for i in waiting:
                ref = f"fuzz-end-{i}-{attempt}".encode()
                self.sentinels[ref] = i
                self.socks[i].send_multipart([p.H_DISCONNECT, b"\x00" * 15, ref])
            deadline = time.monotonic() + SENTINEL_WAIT_MS / 1000
            while not all(i in self.seen_sentinels for i in waiting):
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0:
                    break
                if self.read_poller.poll(left):
                    self.drain()
        missing = [i for i in range(len(self.socks)) if i not in self.seen_sentinels]
        raise AssertionError(f"fuzzer sockets {missing} never got their sentinel answered")


# --- the normal pair ---------------------------------------------------------------


@dataclass
class NormalPair:
    """A publisher publishing confirmed, numbered messages until told to stop."""

    publisher: Bus
    results: list[PublishResult] = field(default_factory=list)
    failure: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        seq = 0
        try:
            while not self.stop.is_set():
                result = self.publisher.publish(
                    NORMAL_TOPIC, seq.to_bytes(8, "big"), {"seq": str(seq)}, timeout=30.0
                )
                self.results.append(result)
                seq += 1
        except BaseException as exc:
            self.failure = exc


# --- the test ----------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_fuzz_broker_survives_hostile_input_and_normal_pair_loses_nothing() -> None:
    started = time.monotonic()
    corpus = load_corpus()
    mutator = Mutator(corpus, random.Random(0x5A42).randbytes(1 << 18))
    ctx = zmq.Context()
    broker = Broker("tcp://127.0.0.1:0", max_message_size=MAX_MESSAGE_SIZE).start()
    socks: list[zmq.Socket[bytes]] = []
    buses: list[Bus] = []
    thread: threading.Thread | None = None
    pair: NormalPair | None = None
    try:
        channel = uuid.uuid4()  # a channel no vector can name
        publisher = Bus(broker.address, channel)
        subscriber = Bus(broker.address, channel)
        buses += [publisher, subscriber]
        sub = subscriber.subscribe(NORMAL_TOPIC, maxsize=10_000_000)
        normal = pair = NormalPair(publisher)
        thread = threading.Thread(target=normal.run, name="fuzz-normal-publisher", daemon=True)
        thread.start()

        for _ in range(FUZZERS + 1):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 2_000)
            s.connect(broker.address)
            socks.append(s)
        fuzzers = Fuzzers(socks)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(plan=plans)
        def fuzz(plan: Plan) -> None:
            fuzzers.send_all(mutator.expand(plan))
            assert broker.running, "the broker thread died"
            assert normal.failure is None, f"the normal pair failed: {normal.failure!r}"

        fuzz()
        fuzzers.finish()
        fuzz_done = time.monotonic()

        pair.stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the normal publisher is stuck"

        # The broker never died and still answers a newcomer.
        assert broker.running
        fresh = Bus(broker.address, uuid.uuid4(), connect_timeout=10)
        buses.append(fresh)
        probe = fresh.subscribe("fuzz.after")
        assert fresh.publish("fuzz.after", b"alive", timeout=10).delivered == 1
        assert probe.get(timeout=10).payload == b"alive"

        # It refused what it could, and never failed on its own.
        stats = broker.stats()
        assert fuzzers.sent >= TOTAL_MESSAGES, fuzzers.sent
        assert fuzzers.oversized_sent > 0
        assert sum(fuzzers.errors.values()) > 0, "the fuzzers got no ERROR replies"
        assert stats["errors"], "broker stats count no errors"
        assert not fuzzers.bad_replies, f"malformed broker replies: {fuzzers.bad_replies}"
        assert 500 not in stats["errors"] and 500 not in fuzzers.errors, stats
        assert not stats["counters"].get("internal_errors"), stats
        # Every kind of refusal a stranger can earn, including TOO_LARGE for bodies
        # over max_message_size.
        assert {400, 403, 405, 406, 409, 413, 422, 505} <= set(fuzzers.errors), fuzzers.errors
        assert sum(fuzzers.errors.values()) <= sum(stats["errors"].values())

        # The normal pair lost nothing: every confirmed publish reached its one
        # subscription, and the subscriber has them all, in order.
        assert pair.failure is None, f"the normal pair failed: {pair.failure!r}"
        results = pair.results
        assert len(results) > 0
        bad = [(i, r) for i, r in enumerate(results) if r != PublishResult(delivered=1, buses=1)]
        assert not bad, f"confirmed publishes not delivered exactly once: {bad[:10]}"
        received: list[int] = []
        while True:
            try:
                msg = sub.get(timeout=0)
            except TimeoutError:
                break
            received.append(int.from_bytes(msg.payload, "big"))
            assert msg.headers["seq"] == str(received[-1])
        assert sub.dropped == 0
        assert received == list(range(len(results)))

        print(
            f"\nfuzz: {fuzzers.sent} messages ({fuzzers.oversized_sent} oversized, "
            f"{fuzzers.over_transport_sent} over the transport limit) from {FUZZERS + 1} DEALERs "
            f"in {fuzz_done - started:.1f}s; {fuzzers.replies} replies "
            f"{dict(fuzzers.kinds)}; errors by code {dict(sorted(fuzzers.errors.items()))}; "
            f"broker errors {stats['errors']}, counters {stats['counters']}; "
            f"normal pair: {len(results)} confirmed publishes, {len(received)} received"
        )
    finally:
        if pair is not None:
            pair.stop.set()
        if thread is not None:
            thread.join(35)
        for bus in buses:
            bus.close()
        for s in socks:
            s.close(0)
        ctx.term()
        broker.stop()
