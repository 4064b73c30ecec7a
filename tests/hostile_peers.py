"""Hostile peers of issue #13, one function each, for the hostile tier
(tests/test_hostile.py, one at a time beside an honest pair) and the soak
(``perf/soak.py --hostile``, all at once).

Each is ``probe(address, stop) -> measurements``: it does its worst to the
broker at ``address`` with raw DEALER sockets until ``stop`` is set (or its
work is done, then it keeps reading until ``stop``), and returns what it
measured; the callers assert the bounds. The bounds are the broker's
defaults (``LIMITS``), except the idle probe (``IDLE_PROBE`` seconds), which
the broker is started with.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from zmqbus import Limits
from zmqbus import protocol as p
from zmqbus.admin import broker_stats
from zmqbus.limits import raise_fd_limit

__all__ = ["IDLE_PROBE", "LIMITS", "PROBES", "Probe", "Stopped"]

IDLE_PROBE = 2
LIMITS = Limits()
Probe = Callable[[str, threading.Event], dict[str, Any]]


# --- raw peers ----------------------------------------------------------------


def _dealer(ctx: zmq.Context[Any], address: str, rcvhwm: int = 1000) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.connect(address)
    return sock


class Stopped(Exception):
    """The probe was told to stop while it waited for the broker."""


def _next(sock: zmq.Socket[bytes], stop: threading.Event | None = None) -> list[bytes]:
    """The broker's next message other than a BROKER_HEARTBEAT (the idle probe
    greets a peer that sent nothing for IDLE_PROBE seconds). Waits until
    ``stop`` is set (then ``Stopped``), or 60 s without it (``TimeoutError``)."""
    deadline = time.monotonic() + 60
    while True:
        if sock.poll(100):
            frames = sock.recv_multipart()
            if frames[0] != p.H_BROKER_HEARTBEAT:
                return frames
        elif stop is not None and stop.is_set():
            raise Stopped
        elif stop is None and time.monotonic() > deadline:
            raise TimeoutError("no answer from the broker in 60 s")


def _until(sock: zmq.Socket[bytes], header: bytes, stop: threading.Event | None = None) -> None:
    """Read until a message with ``header`` (one of the commands before it answered)."""
    while _next(sock, stop)[0] != header:
        pass


def _join(sock: zmq.Socket[bytes], ch: bytes, **fields: Any) -> None:
    sock.send_multipart([p.H_HELLO, ch, p.pack_hello("hostile", **fields)])
    frames = _next(sock)
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
    # Keep reading until told to stop.
    while not stop.wait(0.05):
        _pump(seen, *socks)


def _close(ctx: zmq.Context[Any], *socks: zmq.Socket[bytes]) -> None:
    for sock in socks:
        sock.close(0)
    ctx.destroy(linger=0)  # and any socket a stopped probe left open


def _joined(address: str) -> tuple[zmq.Context[Any], bytes, zmq.Socket[bytes]]:
    """A context, a new channel, and one peer joined to it."""
    ctx = zmq.Context()
    ch = uuid.uuid4().bytes
    sock = _dealer(ctx, address)
    _join(sock, ch)
    return ctx, ch, sock


def _pair(
    address: str, sub_rcvhwm: int = 1000, pub_rcvhwm: int = 1000
) -> tuple[zmq.Context[Any], bytes, zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A context, a new channel, and a subscriber and a publisher joined to it."""
    ctx = zmq.Context()
    ch = uuid.uuid4().bytes
    sub, pub = _dealer(ctx, address, sub_rcvhwm), _dealer(ctx, address, pub_rcvhwm)
    _join(sub, ch)
    _join(pub, ch)
    return ctx, ch, sub, pub


def _subscribe_many(
    sock: zmq.Socket[bytes],
    ch: bytes,
    n: int,
    pattern: Callable[[int], bytes],
    seen: dict[bytes, int],
    stop: threading.Event | None = None,
) -> None:
    """SUBSCRIBEs with sids 1..n to ``pattern(i)``, reading the replies as they
    come (counted in ``seen``); fewer if ``stop`` is set meanwhile."""
    for i in range(n):
        sock.send_multipart([p.H_SUBSCRIBE, ch, b"", _sid(i + 1), pattern(i), b""])
        if i % 10 == 0:
            _pump(seen, sock)
        if stop is not None and stop.is_set():
            return


def _stats(address: str) -> dict[str, Any]:
    return broker_stats(address, timeout=10.0)


def _sid(n: int) -> bytes:
    return n.to_bytes(p.SID_BYTES, "big")


# --- the probes ----------------------------------------------------------------

FLOOD = 300_000


def subscribe_flood(address: str, stop: threading.Event) -> dict[str, Any]:
    """SUBSCRIBEs to distinct patterns from one peer, past its bound."""
    ctx, ch, sock = _joined(address)
    seen: dict[bytes, int] = {}
    _subscribe_many(sock, ch, FLOOD, lambda i: b"flood.%d" % i, seen, stop)
    stats = _stats(address)
    _idle(stop, seen, sock)
    _close(ctx, sock)
    return {
        "sent": FLOOD,
        "subscriptions": stats["subscriptions"],
        "refused": stats["refused"].get("max_subscriptions_per_peer", 0),
    }


def deep_patterns(address: str, stop: threading.Event) -> dict[str, Any]:
    """SUBSCRIBEs to valid patterns of 100 tokens, past the token bound."""
    deep = b".".join([b"a"] * 100)  # 199 octets
    ctx, ch, sock = _joined(address)
    seen: dict[bytes, int] = {}
    sent = 0
    while not stop.is_set() and sent < 100_000:
        sock.send_multipart([p.H_SUBSCRIBE, ch, b"", _sid(sent + 1), deep, b""])
        sent += 1
        if sent % 10 == 0:
            _pump(seen, sock)
    deadline = time.monotonic() + 60
    # Every one answered, unless the broker forgot this peer for reading its
    # replies too slowly (past HELD_REPLIES: so it may be when all probes run).
    while seen.get(p.H_ERROR, 0) + seen.get(p.H_OK, 0) < sent and time.monotonic() < deadline:
        sock.poll(100)
        _pump(seen, sock)
    stats = _stats(address)
    _idle(stop, seen, sock)
    _close(ctx, sock)
    return {
        "sent": sent,
        "answered": seen.get(p.H_ERROR, 0) + seen.get(p.H_OK, 0),
        "refused": stats["refused"].get("max_pattern_tokens", 0),
    }


VANISHING = 2_000


def vanished_connections(address: str, stop: threading.Event) -> dict[str, Any]:
    """Peers that join and close without DISCONNECT or heartbeats."""
    raise_fd_limit()  # this process holds them all too
    before = _stats(address)["peers"]
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, VANISHING + 100)
    socks = []
    for _ in range(VANISHING):
        sock = _dealer(ctx, address)
        sock.send_multipart([p.H_HELLO, uuid.uuid4().bytes, p.pack_hello("gone")])
        socks.append(sock)
    for sock in socks:
        assert _next(sock)[0] == p.H_WELCOME
    after = _stats(address)["peers"]
    for sock in socks:
        sock.close(0)  # no DISCONNECT, no heartbeats
    start = time.monotonic()
    forgotten_in: float | None = None
    while time.monotonic() - start < 3 * IDLE_PROBE + 5:
        # Others (the honest pair) may join meanwhile: what counts is these going.
        if _stats(address)["peers"] <= after - VANISHING:
            forgotten_in = round(time.monotonic() - start, 1)
            break
        time.sleep(0.2)  # polling the broker's count, which has no event to wait on
    ctx.term()
    stop.wait()
    return {"joined": after - before, "forgotten_in_s": forgotten_in}


UNACKED = 60_000
ROUTED_WINDOW = 500  # under the broker's held replies per peer (1,024)


def unacked_confirmations(address: str, stop: threading.Event) -> dict[str, Any]:
    """Confirmed publishes to a subscriber that reads and never ACKs."""
    # The publisher takes every ROUTED as it comes (it sends faster than it
    # reads): what is probed is the subscriber that never ACKs.
    ctx, ch, sub, pub = _pair(address, pub_rcvhwm=UNACKED + 1000)
    sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b"h.>", b""])
    assert _next(sub)[0] == p.H_OK
    seen: dict[bytes, int] = {}
    poller = zmq.Poller()
    for sock in (sub, pub):
        poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + 60
    for i in range(UNACKED):
        pub.send_multipart([p.H_PUBLISH, ch, b"r%d" % i, b"h.x", b"\x90"])
        if i % 100 == 0:
            _pump(seen, sub, pub)
        # The publisher keeps a window, as an honest one does: a peer that owes
        # reading more answers than the broker holds for it is forgotten as one
        # that never reads (on a slow machine 60,000 unwindowed publishes were).
        while (
            i + 1 - seen.get(p.H_ROUTED, 0) - seen.get(p.H_ERROR, 0) > ROUTED_WINDOW
            and time.monotonic() < deadline
        ):
            poller.poll(100)
            _pump(seen, sub, pub)
    # The broker has routed them all once the publisher has every ROUTED: waited
    # for past ``stop`` (what is measured is the bound, not the speed).
    while seen.get(p.H_ROUTED, 0) < UNACKED and time.monotonic() < deadline:
        poller.poll(100)  # until either has something to read
        _pump(seen, sub, pub)
    stats = _stats(address)
    _idle(stop, seen, sub, pub)
    _close(ctx, sub, pub)
    return {
        "published": UNACKED,
        "routed": seen.get(p.H_ROUTED, 0),
        "pending": stats["pending_confirmations"],
        "expired": stats["refused"].get("max_pending_per_peer", 0),
    }


def stats_never_read(address: str, stop: threading.Event) -> dict[str, Any]:
    """Ten peers sending STATS as fast as they can, never reading a reply."""
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
    _close(ctx, *socks)
    return {"sent": sent, "refused": stats["refused"].get("stats_per_second", 0)}


def many_big_frames(address: str, stop: threading.Event) -> dict[str, Any]:
    """PUBLISHes of 200 frames of 1 MiB each (a command has at most 8)."""
    frame = b"x" * (1 << 20)
    ctx, ch, sock = _joined(address)
    sent = 0
    for _ in range(3):
        sock.send_multipart([p.H_PUBLISH, ch, b"", b"t", *[frame] * 200])
        sent += 1
        reply = _next(sock, stop)
        assert reply[0] == p.H_ERROR and int.from_bytes(reply[3], "big") == 400, reply
    _idle(stop, {}, sock)
    _close(ctx, sock)
    return {"messages": sent, "frames_each": 203, "mib_each": 200}


def new_topics_to_many_sids(address: str, stop: threading.Event) -> dict[str, Any]:
    """A subscriber with 10,000 sids on '>', and a new topic in every publish."""
    ctx, ch, sub, pub = _pair(address)
    seen: dict[bytes, int] = {}
    _subscribe_many(sub, ch, LIMITS.max_subscriptions_per_peer, lambda i: b">", seen)
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


def queue_group_unsubscribed_whole(address: str, stop: threading.Event) -> dict[str, Any]:
    """10,000 members of one queue group, then one UNSUBSCRIBE naming them all, again."""
    members = LIMITS.max_subscriptions_per_peer
    ctx, ch, sock = _joined(address)
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


def disconnect_with_unconfirmed(address: str, stop: threading.Event) -> dict[str, Any]:
    """A subscriber that takes 10,000 confirmed deliveries, ACKs none, and leaves."""
    ctx, ch, pub = _joined(address)
    seen: dict[bytes, int] = {}
    rounds = 0
    # Stopped while waiting for its OK is the probe's own end, not a failure.
    with contextlib.suppress(Stopped):
        while not stop.is_set():
            sub = _dealer(ctx, address)
            _join(sub, ch)
            sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b"d.>", b""])
            assert _next(sub)[0] == p.H_OK
            for i in range(LIMITS.max_pending_per_peer):
                pub.send_multipart([p.H_PUBLISH, ch, b"r%d" % i, b"d.x", b"\x90"])
                if i % 100 == 0:
                    _pump(seen, pub)
            sub.send_multipart([p.H_DISCONNECT, ch, b"bye"])
            _until(sub, p.H_OK, stop)
            sub.close(0)
            rounds += 1
    _close(ctx, pub)
    return {"rounds": rounds, "unconfirmed_each": LIMITS.max_pending_per_peer}


def leave_with_many_subscriptions(address: str, stop: threading.Event) -> dict[str, Any]:
    """A peer that takes 10,000 subscriptions to distinct patterns and leaves, again."""
    n = LIMITS.max_subscriptions_per_peer
    ctx = zmq.Context()
    rounds = 0
    with contextlib.suppress(Stopped):  # stopped while waiting for an answer
        while not stop.is_set():
            sock = _dealer(ctx, address)
            ch = uuid.uuid4().bytes
            _join(sock, ch)
            _subscribe_many(sock, ch, n, lambda i: b"leave.%d.>" % i, {})
            sock.send_multipart([p.H_DISCONNECT, ch, b"bye"])
            _until(sock, p.H_OK, stop)
            sock.close(0)
            rounds += 1
    _close(ctx)
    return {"rounds": rounds, "subscriptions_each": n}


STATS_PEERS = 1_000


def stats_from_many_peers(address: str, stop: threading.Event) -> dict[str, Any]:
    """1,000 joined peers asking STATS in turn, reading every reply."""
    ctx = zmq.Context()
    socks = [_dealer(ctx, address) for _ in range(STATS_PEERS)]
    # Each says HELLO as it connects, as a bus does: a connection that waits
    # its turn to say it is the oldest unjoined one, the first closed when a
    # flood of connections (another probe, in the soak) fills the broker.
    for sock in socks:
        sock.send_multipart([p.H_HELLO, uuid.uuid4().bytes, p.pack_hello("hostile")])
    for sock in socks:
        assert _next(sock)[0] == p.H_WELCOME
    asked = 0
    with contextlib.suppress(Stopped):  # stopped while replies were on their way
        while not stop.is_set():
            for sock in socks:
                sock.send_multipart([p.H_STATS, b"", b"q"])
                asked += 1
            for sock in socks:
                _next(sock, stop)
    _close(ctx, *socks)
    return {"peers": STATS_PEERS, "stats_asked": asked}


def hello_bodies_of_many_objects(address: str, stop: threading.Event) -> dict[str, Any]:
    """HELLOs whose body (under 1 MiB) decodes into 150,000 empty arrays."""
    body = msgpack.packb({"client": "x", "junk": [[]] * 150_000})
    ctx = zmq.Context()
    sock = _dealer(ctx, address)
    refused = 0
    with contextlib.suppress(Stopped):  # stopped while a refusal was on its way
        while not stop.is_set():
            sock.send_multipart([p.H_HELLO, uuid.uuid4().bytes, body])
            reply = _next(sock, stop)
            assert reply[0] == p.H_ERROR and int.from_bytes(reply[3], "big") == 422
            refused += 1
    _close(ctx, sock)
    return {"refused": refused, "body_bytes": len(body)}


def big_batches(address: str, stop: threading.Event) -> dict[str, Any]:
    """PUBLISH_BATCHes of 1,025 entries (one past the bound) and of 1,024, to 4 peers."""
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
        assert _next(sub)[0] == p.H_OK
        subs.append(sub)
    too_big = b"".join(
        p.pack_publish_entry(b"t.%d" % i, b"x") for i in range(p.MAX_BATCH_ENTRIES + 1)
    )
    at_limit = b"".join(p.pack_publish_entry(b"t.%d" % i, b"x") for i in range(p.MAX_BATCH_ENTRIES))
    sent = 0
    while not stop.is_set():
        pub.send_multipart([p.H_PUBLISH_BATCH, ch, too_big])
        pub.send_multipart([p.H_PUBLISH_BATCH, ch, at_limit])
        sent += 2
        stop.wait(0.05)
        _pump(seen, pub, *subs)
    stats = _stats(address)
    _close(ctx, pub, *subs)
    return {"batches": sent, "refused": stats["refused"].get("max_batch_entries", 0)}


BIG_MESSAGES = 2_000  # of 1 MiB: twice max_queued_bytes


def stalled_subscriber_of_big_messages(address: str, stop: threading.Event) -> dict[str, Any]:
    """1 MiB messages as fast as they go, to a subscriber that reads nothing."""
    body = b"x" * ((1 << 20) - 1024)
    # A subscriber that reads nothing: TCP fills, then the broker's queue.
    ctx, ch, sub, pub = _pair(address, sub_rcvhwm=1)
    sub.send_multipart([p.H_SUBSCRIBE, ch, b"s", _sid(1), b"big.>", b""])
    assert _next(sub)[0] == p.H_OK
    seen: dict[bytes, int] = {}
    for _ in range(BIG_MESSAGES):
        pub.send_multipart([p.H_PUBLISH, ch, b"", b"big.x", body])
    # Its OK comes once the broker has handled every publish before it.
    pub.send_multipart([p.H_DISCONNECT, ch, b"d"])
    _until(pub, p.H_OK, stop)
    stats = _stats(address)
    _idle(stop, seen, pub)
    _close(ctx, sub, pub)
    return {
        "offered_mib": BIG_MESSAGES,
        "bound_mib": LIMITS.max_queued_bytes >> 20,
        "dropped_at_broker": stats["counters"].get("dropped_hwm", 0),
    }


# Name (as reports print it) -> probe, in the tier's order.
IDLE_CONNECTIONS = LIMITS.max_connections + 2_000


def idle_connections(address: str, stop: threading.Event) -> dict[str, Any]:
    """14,000 TCP connections that never say HELLO (nor finish the ZMTP
    handshake), opened 10,000 a second and held; each round runs until the
    broker has closed every one of them (past ``stop``), then again until
    ``stop``. Each connection's end is seen on its own socket."""
    raise_fd_limit()  # this process holds them all too
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    first = _stats(address)["counters"]
    opened = peak = rounds = 0
    slowest = 0.0
    fates = {"closed": 0, "open": 0, "unconnected": 0}
    while not stop.is_set():
        socks: list[socket.socket] = []
        start = time.monotonic()
        for i in range(IDLE_CONNECTIONS):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, int(port)))
            socks.append(sock)
            if i % 100 == 99:
                time.sleep(0.01)  # pacing, not synchronisation
        opened += len(socks)
        rounds += 1
        # Until the broker has closed them all (hello_timeout_seconds), or a
        # bound past libzmq's own handshake timeout (30 s).
        deadline = start + LIMITS.hello_timeout_seconds + 30
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sel.register(sock, selectors.EVENT_READ)
            held = len(socks)
            look_at = 0.0
            while held and (now := time.monotonic()) < deadline:
                if now >= look_at:
                    # The broker's own count has no event: read it every 0.2 s.
                    peak = max(peak, _stats(address)["connections"])
                    look_at = now + 0.2
                # A socket turns readable with the broker's greeting, then with its
                # close (end of stream or reset), or its failure to connect.
                for key, _ in sel.select(timeout=max(0.0, min(look_at, deadline) - now)):
                    if _fate(key.fileobj) != "open":
                        sel.unregister(key.fileobj)
                        held -= 1
        slowest = max(slowest, time.monotonic() - start)
        for sock in socks:
            fates[_fate(sock)] += 1
            sock.close()
    last = _stats(address)["counters"]
    return {
        "opened": opened,
        "accepted": last["connections_accepted"] - first["connections_accepted"],
        "closed_by_broker": last["unjoined_closed"] - first.get("unjoined_closed", 0),
        "rounds": rounds,
        "peak_connections": peak,
        "round_s": round(slowest, 1),
        **fates,
    }


def _fate(sock: socket.socket) -> str:
    # What became of one connection: closed by the broker (end of stream or
    # reset), still open, or never connected at all.
    try:
        sock.getpeername()
    except OSError:
        return "unconnected"
    while True:
        try:
            if not sock.recv(65536):
                return "closed"
        except BlockingIOError:
            return "open"
        except OSError:
            return "closed"


PROBES: dict[str, Probe] = {
    "subscribe flood": subscribe_flood,
    "deep patterns (100 tokens)": deep_patterns,
    f"{VANISHING} vanished connections": vanished_connections,
    "confirmed publishes never ACKed": unacked_confirmations,
    "10 peers sending STATS, never reading": stats_never_read,
    "messages of 200 frames x 1 MiB": many_big_frames,
    "new topics to 10,000 sids on '>'": new_topics_to_many_sids,
    "queue group of 10,000 members, unsubscribed whole": queue_group_unsubscribed_whole,
    "DISCONNECT holding 10,000 unconfirmed deliveries": disconnect_with_unconfirmed,
    "leaving with 10,000 subscriptions": leave_with_many_subscriptions,
    f"STATS from {STATS_PEERS} peers": stats_from_many_peers,
    "HELLO bodies of 150,000 empty arrays": hello_bodies_of_many_objects,
    "PUBLISH_BATCHes of 1,025 and 1,024 entries": big_batches,
    "a stalled subscriber of 1 MiB messages": stalled_subscriber_of_big_messages,
    f"{IDLE_CONNECTIONS} connections that never say HELLO": idle_connections,
}
