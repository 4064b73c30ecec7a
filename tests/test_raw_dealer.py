"""Speak the wire protocol from bare zmq DEALER sockets to a real running Broker.

Every frame here is built by hand from ``docs/protocol.md`` with bytes literals
and ``msgpack``; nothing from ``zmqbus.protocol`` is used, to show that the
spec alone is enough to write a client. Synchronisation is by replies and
sentinels only: to prove something did NOT arrive, a second message that must
arrive is sent after it, and the first thing received is checked.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from zmqbus import Broker

# --- the protocol, from the spec -------------------------------------------------


def header(cmd: int) -> bytes:
    """Frame 0 of every message: signature "ZB", version 1, command byte."""
    return b"ZB\x01" + bytes((cmd,))


HELLO = header(0x01)
SUBSCRIBE = header(0x02)
UNSUBSCRIBE = header(0x03)
PUBLISH = header(0x04)
ACK = header(0x05)
DISCONNECT = header(0x06)
REQUEST = header(0x07)
REPLY = header(0x08)
HEARTBEAT = header(0x09)
STATS = header(0x0A)
WELCOME = header(0x81)
OK = header(0x82)
DELIVER = header(0x83)
ROUTED = header(0x84)
ACKED = header(0x85)
ASK = header(0x86)
ANSWER = header(0x87)
BROKER_HEARTBEAT = header(0x88)
BYE = header(0x89)
STATS_REPLY = header(0x8A)
ERROR = header(0x8F)

MSG_ID = bytes.fromhex("6f1c4a2e3b5d4e8f9a0b1c2d3e4f5a6b")
TS_NS = 1_700_000_000_123_456_789
LEFT_TEXT = "subscribing bus left before confirming"
VECTORS = Path(__file__).resolve().parent / "vectors"

Dealer = zmq.Socket[bytes]
MakeDealer = Callable[[], Dealer]


def packb(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def body(payload: bytes = b"payload", headers: dict[str, str] | None = None) -> bytes:
    """A PUBLISH body: [id bin16, Timestamp ext -1, headers map, payload bin]."""
    return packb([MSG_ID, msgpack.Timestamp.from_unix_nano(TS_NS), headers or {}, payload])


def body_of_size(size: int) -> bytes:
    """A valid PUBLISH body of exactly ``size`` bytes."""
    n = size - len(body(b""))
    while len(body(b"x" * n)) > size:
        n -= 1
    out = body(b"x" * n)
    assert len(out) == size
    return out


def reply_body(payload: bytes = b"reply", error: str | None = None) -> bytes:
    """A REPLY body: a message body with a fifth element, the error (nil for a reply)."""
    return packb([MSG_ID, msgpack.Timestamp.from_unix_nano(TS_NS), {}, payload, error])


def ack_body(delivered: int = 1, dropped: int = 0, errors: list[str] | None = None) -> bytes:
    return packb([delivered, dropped, errors or []])


def count(n: int) -> bytes:
    return n.to_bytes(4, "big")


def join(sock: Dealer, channel: bytes) -> dict[str, Any]:
    """HELLO, and wait for the WELCOME (the client must not send anything before it)."""
    sock.send_multipart([HELLO, channel, packb({"client": "raw-dealer-test/1"})])
    frames = sock.recv_multipart()
    assert len(frames) == 3 and frames[:2] == [WELCOME, channel], frames
    info: dict[str, Any] = msgpack.unpackb(frames[2], raw=False)
    return info


def request(sock: Dealer, frames: list[bytes]) -> list[bytes]:
    sock.send_multipart(frames)
    return sock.recv_multipart()


def recv_past_beats(sock: Dealer, channel: bytes | None = None) -> list[bytes]:
    """The next message other than BROKER_HEARTBEAT (for peers that asked for
    heartbeats); skipped heartbeats must name ``channel``, if given."""
    while True:
        frames = sock.recv_multipart()
        if frames[0] != BROKER_HEARTBEAT:
            return frames
        assert len(frames) == 2 and len(frames[1]) == 16, frames
        assert channel is None or frames[1] == channel


def join_beating(sock: Dealer, channel: bytes, heartbeat: int) -> dict[str, Any]:
    """HELLO asking for heartbeats every ``heartbeat`` ms; the WELCOME's map."""
    sock.send_multipart(
        [HELLO, channel, packb({"client": "raw-dealer-test/1", "heartbeat": heartbeat})]
    )
    frames = recv_past_beats(sock, channel)
    assert len(frames) == 3 and frames[:2] == [WELCOME, channel], frames
    info: dict[str, Any] = msgpack.unpackb(frames[2], raw=False)
    return info


def stats(sock: Dealer, channel: bytes = b"", ref: bytes = b"stats") -> dict[str, Any]:
    """STATS (joined or not); the STATS_REPLY's map. It echoes the channel and ref."""
    sock.send_multipart([STATS, channel, ref])
    frames = recv_past_beats(sock)
    assert len(frames) == 4 and frames[:3] == [STATS_REPLY, channel, ref], frames
    info: dict[str, Any] = msgpack.unpackb(frames[3], raw=False)
    assert all(isinstance(k, str) for k in info)
    return info


# Subscription IDs are chosen by the client; one sequence for the whole module
# keeps them unique on every connection.
_sids = itertools.count(1)


def new_sid() -> bytes:
    """A fresh 4-byte subscription ID."""
    return next(_sids).to_bytes(4, "big")


def subscribe(
    sock: Dealer, channel: bytes, pattern: bytes, ref: bytes = b"sub", *, queue: bytes = b""
) -> bytes:
    """Open a subscription (a queue group member if ``queue``); return its sid."""
    sid = new_sid()
    assert request(sock, [SUBSCRIBE, channel, ref, sid, pattern, queue]) == [OK, channel, ref]
    return sid


def split_sids(frame: bytes) -> set[bytes]:
    """The 4-byte sids packed in a sids frame; none may repeat."""
    assert frame and len(frame) % 4 == 0, frame
    sids = [frame[i : i + 4] for i in range(0, len(frame), 4)]
    assert len(set(sids)) == len(sids), sids
    return set(sids)


def assert_error(frames: list[bytes], code: int, channel: bytes = b"", ref: bytes = b"") -> str:
    assert len(frames) == 6 and frames[0] == ERROR, frames
    assert len(frames[3]) == 2 and frames[5] == b""  # no retry-after
    text = frames[4].decode("utf-8")
    assert int.from_bytes(frames[3], "big") == code, text
    assert frames[1] == channel
    assert frames[2] == ref
    assert text
    return text


def deliver_of(frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """(token, topic, body) of a DELIVER (whose sids frame must be well-formed)."""
    assert len(frames) == 6 and frames[0] == DELIVER, frames
    split_sids(frames[5])
    return frames[2], frames[3], frames[4]


def ask_of(frames: list[bytes]) -> tuple[bytes, bytes, bytes, set[bytes]]:
    """(token, topic, body, sids) of an ASK."""
    assert len(frames) == 6 and frames[0] == ASK, frames
    assert 9 <= len(frames[2]) <= 32, frames[2]
    return frames[2], frames[3], frames[4], split_sids(frames[5])


def quiet(sock: Dealer, channel: bytes) -> None:
    """Nothing is queued for ``sock``: the reply to a sentinel SUBSCRIBE comes first."""
    ref = b"quiet-%d" % next(_sids)
    assert request(sock, [SUBSCRIBE, channel, ref, new_sid(), b"quiet.sentinel", b""]) == [
        OK,
        channel,
        ref,
    ]


def refused(sock: Dealer, channel: bytes) -> list[bytes]:
    """After a message that must be refused, send a sentinel HELLO on ``channel`` and
    return the one reply that comes before its WELCOME (the ERROR, if all is well)."""
    sock.send_multipart([HELLO, channel, packb({"client": "raw-dealer-test/1"})])
    first = sock.recv_multipart()
    assert first[0] != WELCOME, "the broker sent no reply to the refused message"
    second = sock.recv_multipart()
    assert second[:2] == [WELCOME, channel], f"more than one reply: {first}, {second}"
    return first


class Pair:
    """A well-behaved publisher and subscriber on their own channel of the same broker."""

    def __init__(self, make: MakeDealer) -> None:
        self.channel = uuid.uuid4().bytes
        self.pub = make()
        self.sub = make()
        join(self.pub, self.channel)
        join(self.sub, self.channel)
        subscribe(self.sub, self.channel, b"health.>")
        self.n = 0

    def check(self) -> None:
        """A full confirmed round trip still works."""
        self.n += 1
        ref = b"pair-%d" % self.n
        msg = body(b"ping %d" % self.n)
        ch = self.channel
        self.pub.send_multipart([PUBLISH, ch, ref, b"health.ping", msg])
        token, topic, got = deliver_of(self.sub.recv_multipart())
        assert (topic, got) == (b"health.ping", msg)
        assert self.pub.recv_multipart() == [ROUTED, ch, ref, count(1)]
        self.sub.send_multipart([ACK, ch, token, ack_body()])
        assert self.pub.recv_multipart() == [ACKED, ch, ref, ack_body()]


@contextlib.contextmanager
def serve(max_message_size: int) -> Iterator[tuple[Broker, MakeDealer]]:
    """A broker with the given limit, and a factory of DEALERs connected to it."""
    socks: list[Dealer] = []
    with Broker("tcp://127.0.0.1:0", max_message_size=max_message_size) as broker:

        def make() -> Dealer:
            s: Dealer = zmq.Context.instance().socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 5000)
            s.connect(broker.address)
            socks.append(s)
            return s

        try:
            yield broker, make
        finally:
            for s in socks:
                s.close(0)


@pytest.fixture
def ch(channel: uuid.UUID) -> bytes:
    return channel.bytes


# --- handshake ------------------------------------------------------------------


def test_hello_gets_welcome_with_max_message_size(raw_dealer: MakeDealer, ch: bytes) -> None:
    info = join(raw_dealer(), ch)
    assert info["max_message_size"] == 1 << 20
    assert isinstance(info["broker"], str) and info["broker"]


def test_hello_again_on_same_channel_is_welcomed_and_keeps_subscriptions(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"a.b")
    join(sub, ch)
    pub.send_multipart([PUBLISH, ch, b"", b"a.b", body()])
    assert deliver_of(sub.recv_multipart()) == (b"", b"a.b", body())


def test_hello_on_a_second_channel_is_refused(raw_dealer: MakeDealer, ch: bytes) -> None:
    sock = raw_dealer()
    join(sock, ch)
    other = uuid.uuid4().bytes
    assert_error(request(sock, [HELLO, other, packb({"client": "x"})]), 409, other)
    subscribe(sock, ch, b"still.joined")


# --- subscribe, publish, deliver ------------------------------------------------------


def test_subscribe_and_unsubscribe_answer_ok_with_the_ref(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    sock = raw_dealer()
    join(sock, ch)
    ref = bytes(range(32))  # the longest ref allowed
    sid = new_sid()
    assert request(sock, [SUBSCRIBE, ch, ref, sid, b"orders.>", b""]) == [OK, ch, ref]
    # The same sid with the same pattern and queue again: idempotent.
    assert request(sock, [SUBSCRIBE, ch, b"", sid, b"orders.>", b""]) == [OK, ch, b""]
    assert request(sock, [UNSUBSCRIBE, ch, b"u1", sid]) == [OK, ch, b"u1"]
    # Sids that are not open are ignored.
    assert request(sock, [UNSUBSCRIBE, ch, b"u2", sid]) == [OK, ch, b"u2"]
    assert request(sock, [UNSUBSCRIBE, ch, b"u3", new_sid() + new_sid()]) == [OK, ch, b"u3"]


def test_every_pipelined_command_is_answered_in_order(raw_dealer: MakeDealer, ch: bytes) -> None:
    # Far more than the broker handles in one pass before it sends the replies.
    sock = raw_dealer()
    join(sock, ch)
    refs = [i.to_bytes(4, "big") for i in range(1000)]
    for ref in refs:
        sock.send_multipart(
            [SUBSCRIBE, ch, ref, new_sid(), b"pipelined." + ref.hex().encode(), b""]
        )
    got = [sock.recv_multipart() for _ in refs]
    assert got == [[OK, ch, ref] for ref in refs]


def test_unconfirmed_publish_is_delivered_with_same_topic_and_body(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    sid = subscribe(sub, ch, b"orders.eu.created")
    msg = body(b'{"order":42}', {"content-type": "application/json", "trace": "ünï"})
    pub.send_multipart([PUBLISH, ch, b"", b"orders.eu.created", msg])
    frames = sub.recv_multipart()
    assert frames == [DELIVER, ch, b"", b"orders.eu.created", msg, sid]
    decoded = msgpack.unpackb(frames[4], raw=False, timestamp=0)
    assert decoded[0] == MSG_ID
    assert decoded[1].to_unix_nano() == TS_NS
    assert decoded[2] == {"content-type": "application/json", "trace": "ünï"}
    assert decoded[3] == b'{"order":42}'
    # An unconfirmed publish gets no reply: the publisher's next reply is its OK.
    quiet(pub, ch)


def test_confirmed_publish_routed_then_acked(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"orders.>")
    msg = body()
    pub.send_multipart([PUBLISH, ch, b"\x00\x00\x00\x00\x00\x00\x00\x01", b"orders.eu", msg])
    token, topic, got = deliver_of(sub.recv_multipart())
    assert (topic, got) == (b"orders.eu", msg)
    assert 1 <= len(token) <= 32
    assert pub.recv_multipart() == [ROUTED, ch, b"\x00\x00\x00\x00\x00\x00\x00\x01", count(1)]
    ack = ack_body(2, 1, ["ValueError: boom"])
    sub.send_multipart([ACK, ch, token, ack])
    assert pub.recv_multipart() == [ACKED, ch, b"\x00\x00\x00\x00\x00\x00\x00\x01", ack]


def test_confirmed_publish_to_two_subscribers(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub1, sub2 = raw_dealer(), raw_dealer(), raw_dealer()
    for s in (pub, sub1, sub2):
        join(s, ch)
    subscribe(sub1, ch, b"t.*")
    subscribe(sub2, ch, b"t.>")
    pub.send_multipart([PUBLISH, ch, b"r", b"t.x", body()])
    t1, _, _ = deliver_of(sub1.recv_multipart())
    t2, _, _ = deliver_of(sub2.recv_multipart())
    assert t1 == t2  # one token per publish, shared by its deliveries
    assert pub.recv_multipart() == [ROUTED, ch, b"r", count(2)]
    sub1.send_multipart([ACK, ch, t1, ack_body(1, 0)])
    assert pub.recv_multipart() == [ACKED, ch, b"r", ack_body(1, 0)]
    sub2.send_multipart([ACK, ch, t2, ack_body(0, 1)])
    assert pub.recv_multipart() == [ACKED, ch, b"r", ack_body(0, 1)]


def test_confirmed_publish_with_no_subscriber_is_routed_zero(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, other = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(other, ch)
    subscribe(other, ch, b"something.else")
    assert request(pub, [PUBLISH, ch, b"r0", b"nobody.listens", body()]) == [
        ROUTED,
        ch,
        b"r0",
        count(0),
    ]


def test_two_matching_patterns_give_one_delivery(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    sids = {
        pattern: subscribe(sub, ch, pattern, b"%d" % i)
        for i, pattern in enumerate([b"a.b", b"a.*", b"a.>", b">", b"a.c"])
    }
    pub.send_multipart([PUBLISH, ch, b"r", b"a.b", body()])
    frames = sub.recv_multipart()
    token, _, _ = deliver_of(frames)
    # One DELIVER names every matching subscription of the peer.
    assert split_sids(frames[5]) == {sids[k] for k in (b"a.b", b"a.*", b"a.>", b">")}
    assert pub.recv_multipart() == [ROUTED, ch, b"r", count(1)]
    # One ACK covers them all.
    sub.send_multipart([ACK, ch, token, ack_body(4)])
    assert pub.recv_multipart() == [ACKED, ch, b"r", ack_body(4)]
    pub.send_multipart([PUBLISH, ch, b"", b"a.c", body(b"s")])
    frames = sub.recv_multipart()
    assert deliver_of(frames)[1] == b"a.c"
    assert split_sids(frames[5]) == {sids[k] for k in (b"a.*", b"a.>", b">", b"a.c")}


def test_publisher_gets_its_own_message_when_subscribed(raw_dealer: MakeDealer, ch: bytes) -> None:
    sock = raw_dealer()
    join(sock, ch)
    subscribe(sock, ch, b"echo.>")
    sock.send_multipart([PUBLISH, ch, b"r", b"echo.me", body()])
    token, topic, _ = deliver_of(sock.recv_multipart())  # DELIVER comes before ROUTED
    assert topic == b"echo.me" and token
    assert sock.recv_multipart() == [ROUTED, ch, b"r", count(1)]
    sock.send_multipart([ACK, ch, token, ack_body()])
    assert sock.recv_multipart() == [ACKED, ch, b"r", ack_body()]


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        (b"orders.*", [b"orders.eu", b"orders.us"], [b"orders", b"orders.eu.created", b"x.eu"]),
        (b"orders.*.created", [b"orders.eu.created"], [b"orders.eu", b"orders.eu.x.created"]),
        (b"orders.>", [b"orders.eu", b"orders.eu.created.x"], [b"orders", b"ordersx.eu"]),
        (b"*.eu.>", [b"a.eu.b", b"b.eu.c.d"], [b"a.eu", b"a.us.b"]),
        (b">", [b"a", b"a.b.c"], []),
        (b"Orders.EU", [b"Orders.EU"], [b"orders.eu", b"ORDERS.EU"]),
    ],
)
def test_wildcard_routing(
    raw_dealer: MakeDealer,
    ch: bytes,
    pattern: bytes,
    matching: list[bytes],
    not_matching: list[bytes],
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, pattern)
    subscribe(sub, ch, b"sentinel.topic", b"s")
    for topic in not_matching + matching:
        pub.send_multipart([PUBLISH, ch, b"", topic, body(topic)])
    pub.send_multipart([PUBLISH, ch, b"", b"sentinel.topic", body()])
    # Per publisher and subscriber, order is kept: exactly the matches, then the sentinel.
    got = [deliver_of(sub.recv_multipart())[1] for _ in range(len(matching) + 1)]
    assert got == [*matching, b"sentinel.topic"]


def test_channels_are_isolated(raw_dealer: MakeDealer, ch: bytes) -> None:
    other = uuid.uuid4().bytes
    pub, sub, pub_other = raw_dealer(), raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    join(pub_other, other)
    subscribe(sub, ch, b"shared.topic")
    assert request(pub_other, [PUBLISH, other, b"r", b"shared.topic", body(b"other")]) == [
        ROUTED,
        other,
        b"r",
        count(0),
    ]
    pub.send_multipart([PUBLISH, ch, b"", b"shared.topic", body(b"mine")])
    assert deliver_of(sub.recv_multipart())[2] == body(b"mine")


def test_unsubscribe_stops_delivery(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    sid = subscribe(sub, ch, b"news.>")
    subscribe(sub, ch, b"sentinel", b"s")
    pub.send_multipart([PUBLISH, ch, b"", b"news.one", body(b"1")])
    assert deliver_of(sub.recv_multipart())[1] == b"news.one"
    assert request(sub, [UNSUBSCRIBE, ch, b"u", sid]) == [OK, ch, b"u"]
    pub.send_multipart([PUBLISH, ch, b"", b"news.two", body(b"2")])
    pub.send_multipart([PUBLISH, ch, b"", b"sentinel", body(b"s")])
    assert deliver_of(sub.recv_multipart())[1] == b"sentinel"
    # A confirmed publish now reaches nobody.
    assert request(pub, [PUBLISH, ch, b"r", b"news.three", body()])[3] == count(0)


def test_order_is_kept_per_publisher_and_subscriber(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"seq")
    for i in range(200):
        pub.send_multipart([PUBLISH, ch, b"", b"seq", body(b"%d" % i)])
    got = [deliver_of(sub.recv_multipart())[2] for _ in range(200)]
    assert got == [body(b"%d" % i) for i in range(200)]


# --- acks -------------------------------------------------------------------------


def test_repeated_ack_is_ignored(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"t")
    pub.send_multipart([PUBLISH, ch, b"r", b"t", body()])
    token = deliver_of(sub.recv_multipart())[0]
    assert pub.recv_multipart() == [ROUTED, ch, b"r", count(1)]
    sub.send_multipart([ACK, ch, token, ack_body()])
    assert pub.recv_multipart() == [ACKED, ch, b"r", ack_body()]
    sub.send_multipart([ACK, ch, token, ack_body()])  # stale: no ERROR, nothing forwarded
    sub.send_multipart([ACK, ch, b"never-issued", ack_body()])
    quiet(sub, ch)
    assert request(pub, [PUBLISH, ch, b"r2", b"t.none", body()]) == [ROUTED, ch, b"r2", count(0)]


def test_ack_body_is_forwarded_without_decoding(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"t")
    pub.send_multipart([PUBLISH, ch, b"r", b"t", body()])
    token = deliver_of(sub.recv_multipart())[0]
    pub.recv_multipart()
    sub.send_multipart([ACK, ch, token, b"\xc1 not msgpack"])
    assert pub.recv_multipart() == [ACKED, ch, b"r", b"\xc1 not msgpack"]


def test_publish_body_is_forwarded_without_decoding(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    sid = subscribe(sub, ch, b"t")
    pub.send_multipart([PUBLISH, ch, b"", b"t", b"\xc1 not msgpack"])
    assert sub.recv_multipart() == [DELIVER, ch, b"", b"t", b"\xc1 not msgpack", sid]


# --- leaving ----------------------------------------------------------------------


def test_disconnect_is_answered_ok_and_forgets_the_peer(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"t")
    # Everything sent before DISCONNECT is processed before the OK (the flush guarantee).
    for i in range(50):
        pub.send_multipart([PUBLISH, ch, b"", b"t", body(b"%d" % i)])
    assert request(pub, [DISCONNECT, ch, b"bye"]) == [OK, ch, b"bye"]
    got = [deliver_of(sub.recv_multipart())[2] for _ in range(50)]
    assert got == [body(b"%d" % i) for i in range(50)]
    # The session is gone: anything but HELLO is NOT_JOINED.
    assert_error(request(pub, [SUBSCRIBE, ch, b"s", new_sid(), b"t", b""]), 403, ch, b"s")
    assert_error(request(pub, [PUBLISH, ch, b"", b"t", body()]), 403, ch)
    # The subscriber's subscriptions go with it.
    assert request(sub, [DISCONNECT, ch, b""]) == [OK, ch, b""]
    join(pub, ch)
    assert request(pub, [PUBLISH, ch, b"r", b"t", body()]) == [ROUTED, ch, b"r", count(0)]


def test_subscriber_leaving_with_outstanding_token_gets_synthetic_acked(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub1, sub2 = raw_dealer(), raw_dealer(), raw_dealer()
    for s in (pub, sub1, sub2):
        join(s, ch)
    subscribe(sub1, ch, b"t")
    subscribe(sub2, ch, b"t")
    pub.send_multipart([PUBLISH, ch, b"r", b"t", body()])
    token1 = deliver_of(sub1.recv_multipart())[0]
    deliver_of(sub2.recv_multipart())
    assert pub.recv_multipart() == [ROUTED, ch, b"r", count(2)]
    sub1.send_multipart([ACK, ch, token1, ack_body()])
    assert pub.recv_multipart() == [ACKED, ch, b"r", ack_body()]
    assert request(sub2, [DISCONNECT, ch, b"bye"]) == [OK, ch, b"bye"]
    frames = pub.recv_multipart()
    assert frames[:3] == [ACKED, ch, b"r"] and len(frames) == 4
    delivered, dropped, errors = msgpack.unpackb(frames[3], raw=False)
    assert (delivered, dropped) == (0, 0)
    assert errors == [LEFT_TEXT]


def test_acked_never_reaches_a_later_session_of_the_same_connection(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"t")
    pub.send_multipart([PUBLISH, ch, b"r", b"t", body()])
    token = deliver_of(sub.recv_multipart())[0]
    assert pub.recv_multipart() == [ROUTED, ch, b"r", count(1)]
    assert request(pub, [DISCONNECT, ch, b"bye"]) == [OK, ch, b"bye"]
    join(pub, ch)  # a new session on the same connection
    sub.send_multipart([ACK, ch, token, ack_body()])
    # Once the subscriber has its OK, the broker has handled the ACK before it...
    quiet(sub, ch)
    # ...so an ACKED, if any, would reach the publisher before this OK.
    quiet(pub, ch)


# --- subscription IDs ------------------------------------------------------------------


def test_reusing_an_open_sid_with_another_pattern_or_queue_is_refused(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    sid = subscribe(sub, ch, b"orders.>")
    for pattern, queue in [(b"orders.*", b""), (b"orders.>", b"workers")]:
        frames = [SUBSCRIBE, ch, b"again", sid, pattern, queue]
        assert_error(request(sub, frames), 412, ch, b"again")
    # The subscription is as it was: plain, on orders.>.
    pub.send_multipart([PUBLISH, ch, b"", b"orders.eu.x", body()])
    frames = sub.recv_multipart()
    assert deliver_of(frames)[1] == b"orders.eu.x" and frames[5] == sid
    # Once closed, the sid may be opened again with anything.
    assert request(sub, [UNSUBSCRIBE, ch, b"u", sid]) == [OK, ch, b"u"]
    assert request(sub, [SUBSCRIBE, ch, b"s", sid, b"orders.*", b"workers"]) == [OK, ch, b"s"]
    pub.send_multipart([PUBLISH, ch, b"", b"orders.eu", body()])
    assert sub.recv_multipart()[5] == sid


def test_unsubscribe_closes_several_sids_at_once(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    a, b, keep = (subscribe(sub, ch, b"t") for _ in range(3))
    pub.send_multipart([PUBLISH, ch, b"", b"t", body()])
    assert split_sids(sub.recv_multipart()[5]) == {a, b, keep}
    unknown = new_sid()
    assert request(sub, [UNSUBSCRIBE, ch, b"u", a + unknown + b]) == [OK, ch, b"u"]
    pub.send_multipart([PUBLISH, ch, b"", b"t", body()])
    assert split_sids(sub.recv_multipart()[5]) == {keep}


# --- queue groups ---------------------------------------------------------------------


def _until_sentinel(sock: Dealer, sentinel: bytes) -> list[list[bytes]]:
    """Every DELIVER before the one on topic ``sentinel``."""
    got: list[list[bytes]] = []
    while True:
        frames = sock.recv_multipart()
        if deliver_of(frames)[1] == sentinel:
            return got
        got.append(frames)


def test_queue_group_each_message_reaches_one_member_and_every_plain_subscriber(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, plain = raw_dealer(), raw_dealer()
    members = [raw_dealer() for _ in range(3)]
    for sock in (pub, plain, *members):
        join(sock, ch)
    plain_sid = subscribe(plain, ch, b"jobs.>")
    group_sids = [subscribe(m, ch, b"jobs.>", queue=b"workers") for m in members]
    for m in members:
        subscribe(m, ch, b"sentinel")
    n = 30
    for i in range(n):
        pub.send_multipart([PUBLISH, ch, b"", b"jobs.run", body(b"%d" % i)])
    pub.send_multipart([PUBLISH, ch, b"", b"sentinel", body(b"end")])
    # The plain subscriber gets every message, in order, for its own sid only.
    for i in range(n):
        frames = plain.recv_multipart()
        assert deliver_of(frames)[2] == body(b"%d" % i) and frames[5] == plain_sid
    # Each message reached exactly one member, for its group sid.
    seen: list[bytes] = []
    per_member = []
    for m, sid in zip(members, group_sids, strict=True):
        got = _until_sentinel(m, b"sentinel")
        assert all(frames[5] == sid for frames in got)
        seen += [frames[4] for frames in got]
        per_member.append(len(got))
    assert sorted(seen) == sorted(body(b"%d" % i) for i in range(n))
    # All members idle (nothing to confirm): plain rotation spreads them evenly.
    assert per_member == [n // 3] * 3


def test_queue_group_prefers_a_member_with_nothing_to_confirm(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub = raw_dealer()
    members = [raw_dealer() for _ in range(3)]
    for sock in (pub, *members):
        join(sock, ch)
    for m in members:
        subscribe(m, ch, b"job", queue=b"workers")
        subscribe(m, ch, b"sentinel")
    # Three confirmed publishes, none confirmed yet: each goes to another member.
    for i in range(3):
        assert request(pub, [PUBLISH, ch, b"r%d" % i, b"job", body(b"%d" % i)])[3] == count(1)
    pub.send_multipart([PUBLISH, ch, b"", b"sentinel", body()])
    tokens = []
    for m in members:
        [frames] = _until_sentinel(m, b"sentinel")
        tokens.append(frames[2])
    # Member 1 confirms: it is the only idle one, so it gets the next message.
    idle = members[1]
    idle.send_multipart([ACK, ch, tokens[1], ack_body()])
    assert pub.recv_multipart()[:2] == [ACKED, ch]
    assert request(pub, [PUBLISH, ch, b"r3", b"job", body(b"3")])[3] == count(1)
    token, _, got = deliver_of(idle.recv_multipart())
    assert got == body(b"3")
    idle.send_multipart([ACK, ch, token, ack_body()])
    assert pub.recv_multipart() == [ACKED, ch, b"r3", ack_body()]


def test_queue_group_member_leaving_reports_its_delivery_and_leaves_the_group(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, stay, leave = raw_dealer(), raw_dealer(), raw_dealer()
    for sock in (pub, stay, leave):
        join(sock, ch)
    stay_sid = subscribe(stay, ch, b"job", queue=b"workers")
    subscribe(leave, ch, b"job", queue=b"workers")
    # Two confirmed publishes: one to each member (each prefers the idle one).
    pub.send_multipart([PUBLISH, ch, b"r1", b"job", body(b"1")])
    pub.send_multipart([PUBLISH, ch, b"r2", b"job", body(b"2")])
    assert pub.recv_multipart() == [ROUTED, ch, b"r1", count(1)]
    assert pub.recv_multipart() == [ROUTED, ch, b"r2", count(1)]
    left_token, _, _ = deliver_of(leave.recv_multipart())
    stay_token, _, _ = deliver_of(stay.recv_multipart())
    assert left_token != stay_token
    # The member leaves without confirming: the publisher hears about it at once.
    assert request(leave, [DISCONNECT, ch, b"bye"]) == [OK, ch, b"bye"]
    frames = pub.recv_multipart()
    assert frames[:2] == [ACKED, ch] and frames[2] in (b"r1", b"r2")
    assert msgpack.unpackb(frames[3], raw=False) == [0, 0, [LEFT_TEXT]]
    # The message is not given to another member; the group now has one member.
    pub.send_multipart([PUBLISH, ch, b"", b"job", body(b"3")])
    frames = stay.recv_multipart()
    assert deliver_of(frames)[2] == body(b"3") and frames[5] == stay_sid


def test_queue_group_and_plain_sids_of_one_peer_share_one_deliver(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    plain = subscribe(sub, ch, b"a.*")
    member = subscribe(sub, ch, b"a.>", queue=b"g")  # the group's only member
    pub.send_multipart([PUBLISH, ch, b"r", b"a.b", body()])
    frames = sub.recv_multipart()
    assert split_sids(frames[5]) == {plain, member}
    assert pub.recv_multipart() == [ROUTED, ch, b"r", count(1)]


def test_queue_groups_are_per_pattern_and_name(raw_dealer: MakeDealer, ch: bytes) -> None:
    pub, x, y = raw_dealer(), raw_dealer(), raw_dealer()
    for sock in (pub, x, y):
        join(sock, ch)
    # Same name, other pattern: another group. Same pattern, other name: another group.
    x1 = subscribe(x, ch, b"a.>", queue=b"g")
    y1 = subscribe(y, ch, b"a.*", queue=b"g")
    y2 = subscribe(y, ch, b"a.>", queue=b"h")
    assert request(pub, [PUBLISH, ch, b"r", b"a.b", body()])[3] == count(2)
    assert split_sids(x.recv_multipart()[5]) == {x1}
    assert split_sids(y.recv_multipart()[5]) == {y1, y2}


# --- request and reply ------------------------------------------------------------------


def test_request_is_asked_of_every_subscriber_and_answered_to_the_requester_only(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    req, s1, s2, bystander = raw_dealer(), raw_dealer(), raw_dealer(), raw_dealer()
    for sock in (req, s1, s2, bystander):
        join(sock, ch)
    sid1 = subscribe(s1, ch, b"svc.echo")
    sid2 = subscribe(s2, ch, b"svc.>")
    subscribe(bystander, ch, b"other")
    msg = body(b"ping")
    req.send_multipart([REQUEST, ch, b"q1", b"svc.echo", msg])
    token1, topic, got, sids = ask_of(s1.recv_multipart())
    assert (topic, got, sids) == (b"svc.echo", msg, {sid1})
    token2, _, _, sids = ask_of(s2.recv_multipart())
    assert sids == {sid2}
    # The token: the requester's 8-byte session, a 16-byte tag made for the
    # peer asked (so each peer's differs), then the request's ref.
    assert token1 != token2 and token1[:8] == token2[:8]
    assert len(token1) == len(token2) == 8 + 16 + 2 and token1.endswith(b"q1")
    assert req.recv_multipart() == [ROUTED, ch, b"q1", count(2)]
    # Each REPLY body reaches the requester unchanged, as ANSWER with its ref.
    s1.send_multipart([REPLY, ch, token1, reply_body(b"one")])
    assert req.recv_multipart() == [ANSWER, ch, b"q1", reply_body(b"one")]
    s2.send_multipart([REPLY, ch, token2, reply_body(b"", "ValueError: two")])
    assert req.recv_multipart() == [ANSWER, ch, b"q1", reply_body(b"", "ValueError: two")]
    for sock in (s1, s2, bystander, req):
        quiet(sock, ch)
    # The next request of the same session carries the same session number.
    req.send_multipart([REQUEST, ch, b"q2", b"svc.echo", msg])
    token = ask_of(s1.recv_multipart())[0]
    assert token[:8] == token1[:8] and token.endswith(b"q2") and token != token1


def test_request_with_no_subscriber_is_routed_zero(raw_dealer: MakeDealer, ch: bytes) -> None:
    req, other = raw_dealer(), raw_dealer()
    join(req, ch)
    other_channel = uuid.uuid4().bytes
    join(other, other_channel)
    subscribe(other, other_channel, b"svc.>")  # another channel does not count
    assert request(req, [REQUEST, ch, b"q", b"svc.x", body()]) == [ROUTED, ch, b"q", count(0)]


def test_request_to_a_queue_group_asks_one_member(raw_dealer: MakeDealer, ch: bytes) -> None:
    req = raw_dealer()
    members = [raw_dealer() for _ in range(2)]
    for sock in (req, *members):
        join(sock, ch)
    for m in members:
        subscribe(m, ch, b"svc", queue=b"pool")
    for i in range(4):
        assert request(req, [REQUEST, ch, b"q%d" % i, b"svc", body()])[3] == count(1)
    # Requests rotate over the members (asks do not make a member busy).
    for m in members:
        assert [ask_of(m.recv_multipart())[0][24:] for _ in range(2)] in (
            [b"q0", b"q2"],
            [b"q1", b"q3"],
        )


def test_same_ref_from_two_requesters_never_crosses(raw_dealer: MakeDealer, ch: bytes) -> None:
    r1, r2, resp = raw_dealer(), raw_dealer(), raw_dealer()
    for sock in (r1, r2, resp):
        join(sock, ch)
    subscribe(resp, ch, b"svc")
    asks = {}
    for name, sock in ((b"r1", r1), (b"r2", r2)):
        sock.send_multipart([REQUEST, ch, b"same", b"svc", body(name)])
        token, _, got, _ = ask_of(resp.recv_multipart())
        asks[got] = token
        assert sock.recv_multipart() == [ROUTED, ch, b"same", count(1)]
    assert asks[body(b"r1")] != asks[body(b"r2")]
    resp.send_multipart([REPLY, ch, asks[body(b"r2")], reply_body(b"for r2")])
    resp.send_multipart([REPLY, ch, asks[body(b"r1")], reply_body(b"for r1")])
    assert r1.recv_multipart() == [ANSWER, ch, b"same", reply_body(b"for r1")]
    assert r2.recv_multipart() == [ANSWER, ch, b"same", reply_body(b"for r2")]


def test_forged_reply_from_another_channel_is_dropped(
    broker: Broker, raw_dealer: MakeDealer, ch: bytes
) -> None:
    req, resp, evil = raw_dealer(), raw_dealer(), raw_dealer()
    join(req, ch)
    join(resp, ch)
    other = uuid.uuid4().bytes
    join(evil, other)
    subscribe(resp, ch, b"svc")
    req.send_multipart([REQUEST, ch, b"q", b"svc", body()])
    token = ask_of(resp.recv_multipart())[0]
    assert req.recv_multipart() == [ROUTED, ch, b"q", count(1)]
    before = broker.stats()["counters"].get("forged_replies", 0)
    # A peer of another channel that learnt the token cannot answer: it was not
    # asked, so the token's tag is not its own (ERROR 401).
    evil.send_multipart([REPLY, other, token, reply_body(b"forged")])
    reply = evil.recv_multipart()
    assert reply[0] == ERROR and int.from_bytes(reply[3], "big") == 401
    assert broker.stats()["counters"]["forged_replies"] == before + 1
    resp.send_multipart([REPLY, ch, token, reply_body(b"real")])
    assert req.recv_multipart() == [ANSWER, ch, b"q", reply_body(b"real")]


def test_reply_after_the_requester_left_is_dropped_and_counted(
    broker: Broker, raw_dealer: MakeDealer, ch: bytes
) -> None:
    req, resp = raw_dealer(), raw_dealer()
    join(req, ch)
    join(resp, ch)
    subscribe(resp, ch, b"svc")
    req.send_multipart([REQUEST, ch, b"q", b"svc", body()])
    token = ask_of(resp.recv_multipart())[0]
    assert req.recv_multipart() == [ROUTED, ch, b"q", count(1)]
    assert request(req, [DISCONNECT, ch, b"bye"]) == [OK, ch, b"bye"]
    join(req, ch)  # a new session on the same connection
    before = broker.stats()["counters"].get("stale_replies", 0)
    resp.send_multipart([REPLY, ch, token, reply_body()])
    quiet(resp, ch)  # no ERROR for the responder
    assert broker.stats()["counters"]["stale_replies"] == before + 1
    quiet(req, ch)  # and no ANSWER for the new session
    # A token the broker never made is refused (its tag cannot be made without the key).
    resp.send_multipart([REPLY, ch, b"\xff" * 8 + bytes(16) + b"q", reply_body()])
    reply = resp.recv_multipart()
    assert reply[0] == ERROR and int.from_bytes(reply[3], "big") == 401


# --- STATS, heartbeats and BYE ---------------------------------------------------------


def test_stats_without_hello_reports_the_broker(raw_dealer: MakeDealer, ch: bytes) -> None:
    mon = raw_dealer()
    info = stats(mon)
    assert isinstance(info["broker"], str) and info["broker"]
    assert (info["peers"], info["channels"], info["subscriptions"]) == (0, 0, 0)
    assert info["pending_confirmations"] == 0
    assert isinstance(info["counters"], dict) and info["errors"] == {}
    peer = raw_dealer()
    join(peer, ch)
    subscribe(peer, ch, b"a.>")
    subscribe(peer, ch, b"b.*", queue=b"workers")
    # STATS did not join `mon`: anything but HELLO or STATS is still refused.
    sid = new_sid()
    assert_error(request(mon, [SUBSCRIBE, ch, b"s", sid, b"x", b""]), 403, ch, b"s")
    assert_error(request(mon, [PUBLISH, ch, b"", b"a.*", body()]), 403, ch)
    info = stats(mon, ch, b"r2")  # any channel, joined or not
    assert (info["peers"], info["channels"], info["subscriptions"]) == (1, 1, 2)
    assert info["queue_groups"] == 1
    # Refusals by code, the keys being the codes in decimal text.
    assert info["errors"] == {"403": 2}
    counters = info["counters"]
    assert counters["connects"] == 1 and counters["subscribes"] == 2
    assert counters["errors"] == 2
    assert all(isinstance(k, str) and type(v) is int for k, v in counters.items())
    # A joined peer may ask too, naming any channel (informative only: no 409), or none.
    other = uuid.uuid4().bytes
    assert stats(peer, other, b"")["peers"] == 1
    assert stats(peer)["subscriptions"] == 2
    subscribe(peer, ch, b"still.joined")


@pytest.mark.parametrize(
    ("asked", "agreed"),
    [(0, None), (1, 100), (99, 100), (100, 100), (250, 250), (60_000, 60_000), (2**40, 60_000)],
)
def test_hello_heartbeat_is_clamped_to_100_60000_ms(
    raw_dealer: MakeDealer, ch: bytes, asked: int, agreed: int | None
) -> None:
    info = join_beating(raw_dealer(), ch, asked)
    assert info.get("heartbeat") == agreed
    assert info["max_message_size"] == 1 << 20


@pytest.mark.parametrize("bad", [-1, "2000", True, 2000.0, None])
def test_hello_with_invalid_heartbeat_is_refused(
    raw_dealer: MakeDealer, ch: bytes, bad: object
) -> None:
    sock = raw_dealer()
    sock.send_multipart([HELLO, ch, packb({"client": "x", "heartbeat": bad})])
    assert_error(refused(sock, ch), 422, ch)


def test_heartbeat_from_a_joined_peer_is_not_answered(raw_dealer: MakeDealer, ch: bytes) -> None:
    sock = raw_dealer()
    join(sock, ch)  # without heartbeats: HEARTBEAT is allowed all the same
    sock.send_multipart([HEARTBEAT, ch])
    sock.send_multipart([HEARTBEAT, ch])
    quiet(sock, ch)  # no reply came before the sentinel's OK
    assert stats(sock, ch)["counters"]["heartbeats_in"] == 2
    assert_error(request(sock, [HEARTBEAT, OTHER]), 409, OTHER)
    assert_error(request(raw_dealer(), [HEARTBEAT, ch]), 403, ch)


def test_silent_peer_gets_broker_heartbeats_then_is_forgotten(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    mon, silent = raw_dealer(), raw_dealer()
    assert stats(mon)["peers"] == 0
    start = time.monotonic()
    assert join_beating(silent, ch, 200)["heartbeat"] == 200
    assert stats(mon)["peers"] == 1
    for _ in range(2):
        assert silent.recv_multipart() == [BROKER_HEARTBEAT, ch]
    # One interval apart, the first one interval after the HELLO.
    assert time.monotonic() - start >= 0.4 - 0.002
    # It answers none: after three silent intervals the broker forgets it. A
    # peer leaving makes the next STATS reply a fresh look; polled under the
    # broker's stats_per_second; the deadline only bounds a failure.
    deadline = time.monotonic() + 5.0
    while (info := stats(mon))["peers"]:
        assert time.monotonic() < deadline, "the silent peer was never forgotten"
        time.sleep(0.1)
    assert time.monotonic() - start >= 0.6 - 0.002
    assert info["counters"]["expired"] == 1
    assert info["counters"]["heartbeats_out"] >= 2
    assert info["channels"] == 0  # it was the only peer on its channel
    # Its session is gone: a PUBLISH is refused (after the heartbeats still queued).
    silent.send_multipart([PUBLISH, ch, b"p1", b"t", body()])
    assert_error(recv_past_beats(silent, ch), 403, ch, b"p1")
    # It may join again, as a new session (and without heartbeats this time).
    join(silent, ch)
    assert request(silent, [PUBLISH, ch, b"p2", b"t", body()]) == [ROUTED, ch, b"p2", count(0)]


def test_peer_answering_heartbeats_stays_joined(raw_dealer: MakeDealer, ch: bytes) -> None:
    peer, sub = raw_dealer(), raw_dealer()
    join(sub, ch)
    subscribe(sub, ch, b"alive.>")
    assert join_beating(peer, ch, 100)["heartbeat"] == 100
    # Eight intervals, well beyond the three after which a silent peer is forgotten.
    for _ in range(8):
        assert peer.recv_multipart() == [BROKER_HEARTBEAT, ch]
        peer.send_multipart([HEARTBEAT, ch])
    info = stats(peer, ch)
    assert info["peers"] == 2
    assert info["counters"]["heartbeats_in"] == 8
    assert info["counters"].get("expired", 0) == 0
    # Still the same session: it publishes, and its subscription still delivers.
    peer.send_multipart([PUBLISH, ch, b"p", b"alive.check", body()])
    assert recv_past_beats(peer, ch) == [ROUTED, ch, b"p", count(1)]
    assert deliver_of(sub.recv_multipart())[1:] == (b"alive.check", body())


def test_hello_again_without_heartbeat_ends_heartbeats(raw_dealer: MakeDealer, ch: bytes) -> None:
    peer, clock = raw_dealer(), raw_dealer()
    assert join_beating(peer, ch, 100)["heartbeat"] == 100
    # The second HELLO asks for none; its WELCOME says so (heartbeats sent before it
    # are skipped), and from then on the broker neither sends nor expects any.
    assert "heartbeat" not in join_beating(peer, ch, 0)
    # Another peer answering its heartbeats is the clock: five intervals of 100 ms.
    assert join_beating(clock, ch, 100)["heartbeat"] == 100
    for _ in range(5):
        assert clock.recv_multipart() == [BROKER_HEARTBEAT, ch]
        clock.send_multipart([HEARTBEAT, ch])
    quiet(peer, ch)  # first reply is the OK: no BROKER_HEARTBEAT, no 403
    assert stats(clock, ch)["counters"].get("expired", 0) == 0


def test_broker_stop_sends_bye_to_joined_peers(ch: bytes) -> None:
    with serve(1 << 20) as (broker, make):
        plain, beating, elsewhere, mon = make(), make(), make(), make()
        join(plain, ch)
        assert join_beating(beating, ch, 100)["heartbeat"] == 100
        other = uuid.uuid4().bytes
        join(elsewhere, other)
        assert stats(mon)["peers"] == 3
        broker.stop()
        assert plain.recv_multipart() == [BYE, ch]
        assert recv_past_beats(beating, ch) == [BYE, ch]
        assert elsewhere.recv_multipart() == [BYE, other]


# --- malformed input --------------------------------------------------------------

OTHER = bytes.fromhex("ffeeddccbbaa99887766554433221100")

S1 = b"\x00\x00\x00\x01"
T9 = bytes(9)  # a well-formed reply token: an 8-byte session and a 1-byte ref

# (id, joined first?, frames given the channel, code, ERROR echoes channel?, ERROR's ref)
MALFORMED_CASES: list[tuple[str, bool, Callable[[bytes], list[bytes]], int, bool, bytes]] = [
    ("400-too-few-frames", False, lambda c: [SUBSCRIBE, c, b"r"], 400, True, b"r"),
    ("400-too-many-frames", True, lambda c: [PUBLISH, c, b"r", b"t", body(), b""], 400, True, b"r"),
    ("400-old-subscribe", False, lambda c: [SUBSCRIBE, c, b"r", b"t"], 400, True, b"r"),
    ("400-channel-15-bytes", False, lambda c: [HELLO, c[:15], packb({})], 400, False, b""),
    (
        "400-channel-17-bytes",
        True,
        lambda c: [SUBSCRIBE, c + b"!", b"r", S1, b"t", b""],
        400,
        False,
        b"r",
    ),
    ("400-ref-33-bytes", True, lambda c: [PUBLISH, c, bytes(33), b"t", body()], 400, True, b""),
    ("400-token-33-bytes", True, lambda c: [ACK, c, bytes(33), ack_body()], 400, True, b""),
    ("400-sid-3-bytes", False, lambda c: [SUBSCRIBE, c, b"r", S1[1:], b"t", b""], 400, True, b"r"),
    (
        "400-sid-5-bytes",
        True,
        lambda c: [SUBSCRIBE, c, b"r", S1 + b"\0", b"t", b""],
        400,
        True,
        b"r",
    ),
    ("400-no-sids", False, lambda c: [UNSUBSCRIBE, c, b"r", b""], 400, True, b"r"),
    ("400-sids-6-bytes", True, lambda c: [UNSUBSCRIBE, c, b"r", S1 + b"\0\1"], 400, True, b"r"),
    ("400-request-no-ref", True, lambda c: [REQUEST, c, b"", b"t", body()], 400, True, b""),
    (
        "400-request-ref-25-bytes",
        True,
        lambda c: [REQUEST, c, b"q" * 25, b"t", body()],
        400,
        True,
        b"q" * 25,
    ),
    ("400-reply-token-8-bytes", True, lambda c: [REPLY, c, bytes(8), reply_body()], 400, True, b""),
    ("400-reply-token-empty", True, lambda c: [REPLY, c, b"", reply_body()], 400, True, b""),
    (
        "403-subscribe-before-hello",
        False,
        lambda c: [SUBSCRIBE, c, b"r", S1, b"t", b""],
        403,
        True,
        b"r",
    ),
    ("403-publish-before-hello", False, lambda c: [PUBLISH, c, b"", b"t", body()], 403, True, b""),
    ("403-ack-before-hello", False, lambda c: [ACK, c, b"tok", ack_body()], 403, True, b""),
    (
        "403-request-before-hello",
        False,
        lambda c: [REQUEST, c, b"q", b"t", body()],
        403,
        True,
        b"q",
    ),
    ("403-reply-before-hello", False, lambda c: [REPLY, c, T9, reply_body()], 403, True, b""),
    ("403-heartbeat-before-hello", False, lambda c: [HEARTBEAT, c], 403, True, b""),
    ("400-heartbeat-3-frames", True, lambda c: [HEARTBEAT, c, b""], 400, True, b""),
    ("400-stats-channel-15-bytes", False, lambda c: [STATS, c[:15], b"r"], 400, False, b"r"),
    ("400-stats-ref-33-bytes", False, lambda c: [STATS, c, bytes(33)], 400, True, b""),
    ("405-client-sends-bye", True, lambda c: [BYE, c], 405, True, b""),
    (
        "405-client-sends-stats-reply",
        False,
        lambda c: [STATS_REPLY, c, b"", packb({})],
        405,
        True,
        b"",
    ),
    ("409-heartbeat-other", True, lambda c: [HEARTBEAT, OTHER], 409, True, b""),
    (
        "422-hello-heartbeat-negative",
        False,
        lambda c: [HELLO, c, packb({"heartbeat": -1})],
        422,
        True,
        b"",
    ),
    ("405-unknown-0x7f", False, lambda c: [header(0x7F), c, b"r"], 405, True, b""),
    ("405-client-sends-welcome", False, lambda c: [WELCOME, c, packb({})], 405, True, b""),
    (
        "405-client-sends-deliver",
        True,
        lambda c: [DELIVER, c, b"", b"t", body(), S1],
        405,
        True,
        b"",
    ),
    ("405-client-sends-ask", True, lambda c: [ASK, c, T9, b"t", body(), S1], 405, True, b""),
    ("405-client-sends-answer", True, lambda c: [ANSWER, c, b"q", reply_body()], 405, True, b""),
    ("406-publish-wildcard", True, lambda c: [PUBLISH, c, b"r", b"a.*", body()], 406, True, b"r"),
    ("406-publish-space", True, lambda c: [PUBLISH, c, b"r", b"a b", body()], 406, True, b"r"),
    ("406-publish-bad-utf8", True, lambda c: [PUBLISH, c, b"", b"\xff", body()], 406, True, b""),
    ("406-publish-long", True, lambda c: [PUBLISH, c, b"r", b"a" * 257, body()], 406, True, b"r"),
    ("406-request-wildcard", True, lambda c: [REQUEST, c, b"q", b"a.>", body()], 406, True, b"q"),
    (
        "406-pattern-gt-not-last",
        True,
        lambda c: [SUBSCRIBE, c, b"r", S1, b">.a", b""],
        406,
        True,
        b"r",
    ),
    ("406-pattern-empty", False, lambda c: [SUBSCRIBE, c, b"r", S1, b"", b""], 406, True, b"r"),
    ("406-queue-wildcard", True, lambda c: [SUBSCRIBE, c, b"r", S1, b"t", b"*"], 406, True, b"r"),
    (
        "406-queue-65-bytes",
        True,
        lambda c: [SUBSCRIBE, c, b"r", S1, b"t", b"q" * 65],
        406,
        True,
        b"r",
    ),
    (
        "409-subscribe-other",
        True,
        lambda c: [SUBSCRIBE, OTHER, b"r", S1, b"t", b""],
        409,
        True,
        b"r",
    ),
    ("409-publish-other", True, lambda c: [PUBLISH, OTHER, b"r", b"t", body()], 409, True, b"r"),
    ("409-request-other", True, lambda c: [REQUEST, OTHER, b"q", b"t", body()], 409, True, b"q"),
    ("409-reply-other", True, lambda c: [REPLY, OTHER, T9, reply_body()], 409, True, b""),
    ("409-hello-other", True, lambda c: [HELLO, OTHER, packb({})], 409, True, b""),
    ("422-hello-not-msgpack", False, lambda c: [HELLO, c, b"\xc1"], 422, True, b""),
    ("422-hello-not-a-map", False, lambda c: [HELLO, c, packb(["client"])], 422, True, b""),
    ("505-bad-signature", False, lambda c: [b"ZQ\x01\x01", c, packb({})], 505, True, b""),
    ("505-version-2", False, lambda c: [b"ZB\x02\x02", c, b"r", b"t"], 505, True, b""),
    ("505-req-delimiter", False, lambda c: [b"", HELLO, c, packb({})], 505, False, b""),
]


@pytest.mark.parametrize(
    ("joined", "make_frames", "code", "echo_channel", "ref"),
    [case[1:] for case in MALFORMED_CASES],
    ids=[case[0] for case in MALFORMED_CASES],
)
def test_malformed_input_gets_error_and_broker_keeps_working(
    raw_dealer: MakeDealer,
    ch: bytes,
    joined: bool,
    make_frames: Callable[[bytes], list[bytes]],
    code: int,
    echo_channel: bool,
    ref: bytes,
) -> None:
    pair = Pair(raw_dealer)
    bad = raw_dealer()
    if joined:
        join(bad, ch)
    frames = make_frames(ch)
    bad.send_multipart(frames)
    assert_error(refused(bad, ch), code, frames[1] if echo_channel else b"", ref)
    pair.check()


def test_body_over_max_message_size_is_refused(ch: bytes) -> None:
    with serve(1024) as (_, make):
        pair = Pair(make)
        pub, sub = make(), make()
        assert join(pub, ch)["max_message_size"] == 1024
        join(sub, ch)
        subscribe(sub, ch, b"big")
        too_big, just_fits = body_of_size(1025), body_of_size(1024)
        assert_error(request(pub, [PUBLISH, ch, b"r1", b"big", too_big]), 413, ch, b"r1")
        assert_error(request(pub, [PUBLISH, ch, b"", b"big", too_big]), 413, ch, b"")
        pair.check()
        # The limit is inclusive; the refused bodies were never delivered.
        pub.send_multipart([PUBLISH, ch, b"r2", b"big", just_fits])
        token, _, got = deliver_of(sub.recv_multipart())
        assert got == just_fits
        assert pub.recv_multipart() == [ROUTED, ch, b"r2", count(1)]
        # ACK bodies have the same limit; the refusal leaves the token outstanding.
        big_ack = packb([1, 0, ["e" * 1100]])
        assert_error(request(sub, [ACK, ch, token, big_ack]), 413, ch, b"")
        sub.send_multipart([ACK, ch, token, ack_body()])
        assert pub.recv_multipart() == [ACKED, ch, b"r2", ack_body()]
        # REQUEST and REPLY bodies have the same limit.
        assert_error(request(pub, [REQUEST, ch, b"q1", b"big", too_big]), 413, ch, b"q1")
        pub.send_multipart([REQUEST, ch, b"q2", b"big", just_fits])
        ask_token = ask_of(sub.recv_multipart())[0]
        assert pub.recv_multipart() == [ROUTED, ch, b"q2", count(1)]
        big_reply = reply_body(b"x" * 1100)
        assert_error(request(sub, [REPLY, ch, ask_token, big_reply]), 413, ch, b"")
        sub.send_multipart([REPLY, ch, ask_token, reply_body()])
        assert pub.recv_multipart() == [ANSWER, ch, b"q2", reply_body()]
        pair.check()


def test_frame_beyond_transport_limit_drops_the_connection(ch: bytes) -> None:
    with serve(1024) as (_, make):
        pair = Pair(make)
        bad = make()
        monitor = bad.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        monitor.setsockopt(zmq.RCVTIMEO, 5000)
        try:
            join(bad, ch)
            # MAXMSGSIZE is max_message_size + 64 KiB per frame: one byte more drops the link.
            bad.send_multipart([PUBLISH, ch, b"r", b"big", b"x" * (1024 + 65536 + 1)])
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
            # The DEALER reconnects by itself, as a new peer that has not joined.
            assert_error(request(bad, [SUBSCRIBE, ch, b"s", new_sid(), b"t", b""]), 403, ch, b"s")
            join(bad, ch)
            pair.check()
        finally:
            bad.disable_monitor()
            monitor.close(0)


# --- the golden vectors, over the wire ------------------------------------------------


def _vectors(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text("utf-8"))["vectors"]
    return vectors


VECTOR_CHANNEL = bytes.fromhex("00112233445566778899aabbccddeeff")
WIRE_MALFORMED = [
    v for v in _vectors("malformed.json") if v["direction"] == "client" and v["frames"]
]
WIRE_SESSION = _vectors("session.json")


@pytest.mark.parametrize("vec", WIRE_MALFORMED, ids=[v["name"] for v in WIRE_MALFORMED])
def test_malformed_vector_over_the_wire(raw_dealer: MakeDealer, vec: dict[str, Any]) -> None:
    pair = Pair(raw_dealer)
    bad = raw_dealer()
    if vec["joined"]:
        join(bad, VECTOR_CHANNEL)
    bad.send_multipart([bytes.fromhex(f) for f in vec["frames"]])
    reply = refused(bad, VECTOR_CHANNEL)
    echo = vec["reply"]
    assert_error(reply, vec["code"], bytes.fromhex(echo["channel"]), bytes.fromhex(echo["ref"]))
    pair.check()


@pytest.mark.parametrize("vec", WIRE_SESSION, ids=[v["name"] for v in WIRE_SESSION])
def test_session_vector_over_the_wire(vec: dict[str, Any]) -> None:
    with serve(vec["max_message_size"]) as (_, make):
        pair = Pair(make)
        bad = make()
        for setup in vec["setup"]:
            reply = request(bad, [bytes.fromhex(f) for f in setup])
            assert reply[0] in (WELCOME, OK)
        bad.send_multipart([bytes.fromhex(f) for f in vec["frames"]])
        reply = refused(bad, VECTOR_CHANNEL)
        echo = vec["reply"]
        assert_error(reply, vec["code"], bytes.fromhex(echo["channel"]), bytes.fromhex(echo["ref"]))
        pair.check()


WIRE_EXCHANGES = _vectors("exchanges.json")
EXCHANGE_WAIT_MS = 5000  # how long a message the exchange says comes next may take
EXCHANGE_QUIET_MS = 150  # after the last step: nothing more may arrive meanwhile


def assert_vector_message(got: list[bytes], want: list[bytes], where: str) -> None:
    """``got`` is ``want``; of an ERROR all but the text, which is informative
    (it must still be non-empty UTF-8)."""
    if want[0] == ERROR:
        assert len(got) == len(want) == 6 and got[:4] == want[:4], f"{where}: got {got}"
        assert got[5] == want[5], f"{where}: got {got}"
        assert got[4].decode("utf-8"), f"{where}: ERROR without text"
    else:
        assert got == want, f"{where}: got {[f.hex() for f in got]}"


@pytest.mark.parametrize("vec", WIRE_EXCHANGES, ids=[v["name"] for v in WIRE_EXCHANGES])
def test_exchange_over_the_wire(vec: dict[str, Any]) -> None:
    """Each peer of the exchange is a DEALER of its own, on a fresh broker (session
    numbers and delivery tokens count from the start of the exchange). Each send goes
    out once every reply the steps list before it has arrived, so the broker reads it
    alone, and each peer receives exactly its messages of the steps, in their order,
    and nothing more. Each socket is read on its own: the order between peers is not
    checked, as it is not normative."""
    steps: list[tuple[str, str, list[bytes]]] = []
    for step in vec["steps"]:
        assert set(step) in ({"peer", "send"}, {"peer", "receive"}), step
        what = "send" if "send" in step else "receive"
        steps.append((step["peer"], what, [bytes.fromhex(f) for f in step[what]]))
    with serve(vec["max_message_size"]) as (broker, make):
        # The vectors' reply tokens are tagged under their fixed key (a broker's
        # own is random): set before any peer joins, as only a test may.
        broker._state._reply_key = bytes(range(32))
        peers: dict[str, Dealer] = {}
        for name, _, _ in steps:
            if name not in peers:
                peers[name] = make()
        sender: str | None = None  # the peer of the last send with no receive after it
        for i, (name, what, frames) in enumerate(steps):
            sock = peers[name]
            where = f"step {i}: {name} {what} {frames[0].hex()}"
            if what == "send":
                # Two connections give no order between their messages: the second
                # send could reach the broker first.
                assert sender in (None, name), f"{where}: no reply orders it after {sender}'s"
                sock.send_multipart(frames)
                sender = name
                continue
            sender = None
            assert sock.poll(EXCHANGE_WAIT_MS, zmq.POLLIN), f"{where}: nothing arrived"
            assert_vector_message(sock.recv_multipart(zmq.NOBLOCK), frames, where)
        # Proving absence needs a bounded wait: anything more, to any peer, fails.
        poller = zmq.Poller()
        for sock in peers.values():
            poller.register(sock, zmq.POLLIN)
        ready = dict(poller.poll(EXCHANGE_QUIET_MS))
        extra = {
            name: sock.recv_multipart(zmq.NOBLOCK) for name, sock in peers.items() if sock in ready
        }
        assert not extra, f"messages beyond the exchange: {extra}"
