"""Speak the wire protocol from bare zmq DEALER sockets to a real running Broker.

Every frame here is built by hand from ``docs/protocol.md`` with bytes literals
and ``msgpack``; nothing from ``zmqbus.protocol`` is used, to show that the
spec alone is enough to write a client. Synchronisation is by replies and
sentinels only: to prove something did NOT arrive, a second message that must
arrive is sent after it, and the first thing received is checked.
"""

from __future__ import annotations

import contextlib
import json
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
WELCOME = header(0x81)
OK = header(0x82)
DELIVER = header(0x83)
ROUTED = header(0x84)
ACKED = header(0x85)
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


def subscribe(sock: Dealer, channel: bytes, pattern: bytes, ref: bytes = b"sub") -> None:
    assert request(sock, [SUBSCRIBE, channel, ref, pattern]) == [OK, channel, ref]


def assert_error(frames: list[bytes], code: int, channel: bytes = b"", ref: bytes = b"") -> str:
    assert len(frames) == 5 and frames[0] == ERROR, frames
    assert len(frames[3]) == 2
    text = frames[4].decode("utf-8")
    assert int.from_bytes(frames[3], "big") == code, text
    assert frames[1] == channel
    assert frames[2] == ref
    assert text
    return text


def deliver_of(frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """(token, topic, body) of a DELIVER."""
    assert len(frames) == 5 and frames[0] == DELIVER, frames
    return frames[2], frames[3], frames[4]


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
            s = zmq.Context.instance().socket(zmq.DEALER)
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
    assert request(sock, [SUBSCRIBE, ch, ref, b"orders.>"]) == [OK, ch, ref]
    assert request(sock, [SUBSCRIBE, ch, b"", b"orders.>"]) == [OK, ch, b""]  # idempotent
    assert request(sock, [UNSUBSCRIBE, ch, b"u1", b"orders.>"]) == [OK, ch, b"u1"]
    assert request(sock, [UNSUBSCRIBE, ch, b"u2", b"never.subscribed"]) == [OK, ch, b"u2"]


def test_unconfirmed_publish_is_delivered_with_same_topic_and_body(
    raw_dealer: MakeDealer, ch: bytes
) -> None:
    pub, sub = raw_dealer(), raw_dealer()
    join(pub, ch)
    join(sub, ch)
    subscribe(sub, ch, b"orders.eu.created")
    msg = body(b'{"order":42}', {"content-type": "application/json", "trace": "ünï"})
    pub.send_multipart([PUBLISH, ch, b"", b"orders.eu.created", msg])
    frames = sub.recv_multipart()
    assert frames == [DELIVER, ch, b"", b"orders.eu.created", msg]
    decoded = msgpack.unpackb(frames[4], raw=False, timestamp=0)
    assert decoded[0] == MSG_ID
    assert decoded[1].to_unix_nano() == TS_NS
    assert decoded[2] == {"content-type": "application/json", "trace": "ünï"}
    assert decoded[3] == b'{"order":42}'
    # An unconfirmed publish gets no reply: the publisher's next reply is its OK.
    assert request(pub, [SUBSCRIBE, ch, b"s", b"x"]) == [OK, ch, b"s"]


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
    for i, pattern in enumerate([b"a.b", b"a.*", b"a.>", b">"]):
        subscribe(sub, ch, pattern, b"%d" % i)
    assert request(pub, [PUBLISH, ch, b"r", b"a.b", body()])[3] == count(1)
    deliver_of(sub.recv_multipart())
    pub.send_multipart([PUBLISH, ch, b"", b"sentinel", body(b"s")])
    assert deliver_of(sub.recv_multipart())[1] == b"sentinel"


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
    subscribe(sub, ch, b"news.>")
    subscribe(sub, ch, b"sentinel", b"s")
    pub.send_multipart([PUBLISH, ch, b"", b"news.one", body(b"1")])
    assert deliver_of(sub.recv_multipart())[1] == b"news.one"
    assert request(sub, [UNSUBSCRIBE, ch, b"u", b"news.>"]) == [OK, ch, b"u"]
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
    assert request(sub, [SUBSCRIBE, ch, b"s", b"x"]) == [OK, ch, b"s"]
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
    subscribe(sub, ch, b"t")
    pub.send_multipart([PUBLISH, ch, b"", b"t", b"\xc1 not msgpack"])
    assert sub.recv_multipart() == [DELIVER, ch, b"", b"t", b"\xc1 not msgpack"]


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
    assert_error(request(pub, [SUBSCRIBE, ch, b"s", b"t"]), 403, ch, b"s")
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
    assert request(sub, [SUBSCRIBE, ch, b"s1", b"y"]) == [OK, ch, b"s1"]
    # ...so an ACKED, if any, would reach the publisher before this OK.
    assert request(pub, [SUBSCRIBE, ch, b"s2", b"x"]) == [OK, ch, b"s2"]


# --- malformed input --------------------------------------------------------------

OTHER = bytes.fromhex("ffeeddccbbaa99887766554433221100")

# (id, joined first?, frames given the channel, code, ERROR echoes channel?, ERROR's ref)
MALFORMED_CASES: list[tuple[str, bool, Callable[[bytes], list[bytes]], int, bool, bytes]] = [
    ("400-too-few-frames", False, lambda c: [SUBSCRIBE, c, b"r"], 400, True, b"r"),
    ("400-too-many-frames", True, lambda c: [PUBLISH, c, b"r", b"t", body(), b""], 400, True, b"r"),
    ("400-channel-15-bytes", False, lambda c: [HELLO, c[:15], packb({})], 400, False, b""),
    ("400-channel-17-bytes", True, lambda c: [SUBSCRIBE, c + b"!", b"r", b"t"], 400, False, b"r"),
    ("400-ref-33-bytes", True, lambda c: [PUBLISH, c, bytes(33), b"t", body()], 400, True, b""),
    ("400-token-33-bytes", True, lambda c: [ACK, c, bytes(33), ack_body()], 400, True, b""),
    ("403-subscribe-before-hello", False, lambda c: [SUBSCRIBE, c, b"r", b"t"], 403, True, b"r"),
    ("403-publish-before-hello", False, lambda c: [PUBLISH, c, b"", b"t", body()], 403, True, b""),
    ("403-ack-before-hello", False, lambda c: [ACK, c, b"tok", ack_body()], 403, True, b""),
    ("405-unknown-0x7f", False, lambda c: [header(0x7F), c, b"r"], 405, True, b""),
    ("405-client-sends-welcome", False, lambda c: [WELCOME, c, packb({})], 405, True, b""),
    ("405-client-sends-deliver", True, lambda c: [DELIVER, c, b"", b"t", body()], 405, True, b""),
    ("406-publish-wildcard", True, lambda c: [PUBLISH, c, b"r", b"a.*", body()], 406, True, b"r"),
    ("406-publish-space", True, lambda c: [PUBLISH, c, b"r", b"a b", body()], 406, True, b"r"),
    ("406-publish-bad-utf8", True, lambda c: [PUBLISH, c, b"", b"\xff", body()], 406, True, b""),
    ("406-publish-long", True, lambda c: [PUBLISH, c, b"r", b"a" * 257, body()], 406, True, b"r"),
    ("406-pattern-gt-not-last", True, lambda c: [SUBSCRIBE, c, b"r", b">.a"], 406, True, b"r"),
    ("406-pattern-empty", False, lambda c: [UNSUBSCRIBE, c, b"r", b""], 406, True, b"r"),
    ("409-subscribe-other", True, lambda c: [SUBSCRIBE, OTHER, b"r", b"t"], 409, True, b"r"),
    ("409-publish-other", True, lambda c: [PUBLISH, OTHER, b"r", b"t", body()], 409, True, b"r"),
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
            assert_error(request(bad, [SUBSCRIBE, ch, b"s", b"t"]), 403, ch, b"s")
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
