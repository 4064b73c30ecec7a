"""The socket helpers of ``zmqbus._wire`` on real inproc sockets, and the cheap
constructors of the receive path against the slow ones they replace."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import zmq

from zmqbus import Message, _fastpath
from zmqbus import protocol as p
from zmqbus._wire import (
    DRAIN_MESSAGES,
    FORWARD_BYTES,
    drain,
    recv_counted,
    recv_frames,
    recv_routed,
    send_frames,
    send_routed,
)
from zmqbus.message import make_message

CH = bytes(range(16))


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-test")
    b.connect("inproc://wire-test")
    yield a, b
    a.close(0)
    b.close(0)
    ctx.term()


def wait_in(sock: zmq.Socket[Any]) -> None:
    assert sock.poll(5000, zmq.POLLIN), "nothing arrived"


def deliver(body: bytes = b"body") -> list[bytes]:
    return [p.H_DELIVER, CH, b"", b"t.a", body, b"\0\0\0\1"]


def test_send_frames_and_recv_frames_keep_every_frame(pair: Any) -> None:
    a, b = pair
    frames = [b"one", b"", bytes(range(256)) * 300, memoryview(b"view")]
    send_frames(a, frames)
    wait_in(b)
    assert recv_frames(b) == [b"one", b"", bytes(range(256)) * 300, b"view"]
    with pytest.raises(zmq.Again):
        recv_frames(b)


def test_recv_counted_reads_a_known_command_whole(pair: Any) -> None:
    a, b = pair
    send_frames(a, deliver(b"first"))
    send_frames(a, deliver(b"second"))
    wait_in(b)
    assert recv_counted(b, p.BROKER_FRAME_COUNTS) == deliver(b"first")
    assert recv_counted(b, p.BROKER_FRAME_COUNTS) == deliver(b"second")
    with pytest.raises(zmq.Again):
        recv_counted(b, p.BROKER_FRAME_COUNTS)


def test_recv_counted_takes_extra_frames_so_the_next_message_starts_clean(pair: Any) -> None:
    a, b = pair
    send_frames(a, [*deliver(), b"extra", b"more extra"])
    send_frames(a, deliver(b"next"))
    wait_in(b)
    too_long = recv_counted(b, p.BROKER_FRAME_COUNTS)
    assert too_long == [*deliver(), b"extra", b"more extra"]
    with pytest.raises(p.ProtocolError) as err:
        p.parse_broker(too_long)
    assert err.value.code == p.ErrorCode.BAD_FRAMES
    assert recv_counted(b, p.BROKER_FRAME_COUNTS) == deliver(b"next")


@pytest.mark.parametrize(
    "frames",
    [
        [b"not a header"],
        [b"not a header", b"x", b"y"],
        [b"ZB\x02\x13", CH],  # another version: not in the table
        [b""],
    ],
)
def test_recv_counted_reads_unknown_messages_frame_by_frame(pair: Any, frames: list[bytes]) -> None:
    a, b = pair
    send_frames(a, frames)
    send_frames(a, deliver(b"after"))
    wait_in(b)
    assert recv_counted(b, p.BROKER_FRAME_COUNTS) == frames
    assert recv_counted(b, p.BROKER_FRAME_COUNTS) == deliver(b"after")


def test_every_broker_command_has_its_count() -> None:
    counts = p.BROKER_FRAME_COUNTS
    vectors = [
        p.Welcome(CH, p.pack_welcome("b", 1)),
        p.Ok(CH, b"r"),
        p.Deliver(CH, b"", b"t", b"b", b"\0\0\0\1"),
        p.Routed(CH, b"r", 1),
        p.Acked(CH, b"r", p.pack_ack(1, 0)),
        p.Ask(CH, b"tok", b"t", b"b", b"\0\0\0\1"),
        p.Answer(CH, b"r", b"b"),
        p.Error(CH, b"r", 400, "bad"),
        p.BrokerHeartbeat(CH),
        p.Bye(CH),
        p.StatsReply(CH, b"r", b"\x80"),
        p.Dropped(CH, b"\0\0\0\1\1"),
        p.DeliverBatch(CH, p.pack_deliver_entry(b"\0\0\0\1", p.pack_publish_entry(b"t", b"b"))),
        p.BrokerBatch(
            CH,
            p.pack_command_entry(p.encode(p.Routed(CH, b"r", 1)))
            + p.pack_command_entry(p.encode(p.Acked(CH, b"r", p.pack_ack(1, 0)))),
        ),
        p.StreamReply(CH, b"r", p.pack_stream_reply({"streams": []})),
        p.Stored(CH, b"r", "ORDERS", 17, False),
        p.StreamMsg(CH, b"t" * 28, b"t", b"b", b"\0\0\0\1", p.pack_meta(17, 1)),
    ]
    assert len(vectors) == len(counts)
    for cmd in vectors:
        frames = p.encode(cmd)
        assert counts[frames[0]] == len(frames), cmd


def test_drain_reads_what_waits_up_to_its_budget_then_stops_at_empty(pair: Any) -> None:
    a, b = pair
    total = DRAIN_MESSAGES + 10
    for i in range(total):
        send_frames(a, deliver(b"%d" % i))
    wait_in(b)
    got: list[list[bytes]] = []
    # Budget spent with messages left: True, and the rest on the next call.
    assert drain(b, p.BROKER_FRAME_COUNTS, got.append, waiting=True) is True
    assert 0 < len(got) <= DRAIN_MESSAGES
    while len(got) < total:
        drain(b, p.BROKER_FRAME_COUNTS, got.append)
    assert [f[4] for f in got] == [b"%d" % i for i in range(total)]
    # Nothing waits: False, with or without a poll's word, and nothing taken.
    assert drain(b, p.BROKER_FRAME_COUNTS, got.append) is False
    assert drain(b, p.BROKER_FRAME_COUNTS, got.append, waiting=True) is False
    assert len(got) == total


def test_drain_logs_a_message_it_cannot_handle_and_goes_on(
    pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    for body in (b"bad", b"good"):
        send_frames(a, deliver(body))
    wait_in(b)
    got: list[bytes] = []

    def receive(frames: list[bytes]) -> None:
        if frames[4] == b"bad":
            raise ValueError("no")
        got.append(frames[4])

    with caplog.at_level("ERROR", logger="zmqbus.client"):
        while not got:
            drain(b, p.BROKER_FRAME_COUNTS, receive)
    assert got == [b"good"]
    assert [r.getMessage() for r in caplog.records] == ["error handling a message from the broker"]


def test_recv_routed_on_a_router() -> None:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind("inproc://wire-router")
        dealer.connect("inproc://wire-router")
        router.setsockopt(zmq.RCVTIMEO, 10)
        with pytest.raises(zmq.Again):
            recv_routed(router)  # nothing waiting: gives up after RCVTIMEO
        router.setsockopt(zmq.RCVTIMEO, 5000)
        send_frames(dealer, [b"only"])
        send_frames(dealer, [b"a", b"b", b"c"])
        first = recv_routed(router)  # waits for the message
        second = recv_routed(router)
        assert first[1:] == [b"only"] and second[1:] == [b"a", b"b", b"c"]
        assert first[0] == second[0]
        send_routed(router, first[0], [b"x", b"y"])
        wait_in(dealer)
        assert recv_frames(dealer) == [b"x", b"y"]
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_recv_routed_shares_a_big_forwarded_body_and_copies_the_rest() -> None:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    big = bytes(range(256)) * (FORWARD_BYTES // 256)
    try:
        router.bind("inproc://wire-forward")
        dealer.connect("inproc://wire-forward")
        router.setsockopt(zmq.RCVTIMEO, 5000)
        forward = frozenset((b"F",))
        send_frames(dealer, [b"F", b"t", big])  # forwarded header, big last frame
        send_frames(dealer, [b"F", b"t", big[:-1]])  # one byte under
        send_frames(dealer, [b"G", b"t", big])  # a header not forwarded
        send_frames(dealer, [b"F", big, b"t"])  # big, but not the last frame
        shared = recv_routed(router, forward)
        assert isinstance(shared[-1], zmq.Frame) and shared[-1].bytes == big
        assert [type(f) for f in shared[:-1]] == [bytes, bytes, bytes]
        for want in ([b"F", b"t", big[:-1]], [b"G", b"t", big], [b"F", big, b"t"]):
            got = recv_routed(router, forward)
            assert all(type(f) is bytes for f in got) and got[1:] == want
        # Sent on as it came: the frame goes out whole, from libzmq's own buffer.
        send_routed(router, shared[0], [b"D", shared[-1]])
        wait_in(dealer)
        assert recv_frames(dealer) == [b"D", big]
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_send_routed_sees_a_queue_the_peer_has_just_drained() -> None:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 2)
        dealer.setsockopt(zmq.RCVHWM, 1)
        router.setsockopt(zmq.RCVTIMEO, 5000)
        router.bind("inproc://wire-drained")
        dealer.connect("inproc://wire-drained")
        send_frames(dealer, [b"hi"])
        ident = recv_routed(router)[0]
        sent = 0
        with pytest.raises(zmq.Again):
            for _ in range(100):
                send_routed(router, ident, [b"m"])
                sent += 1
        got = 0
        while dealer.poll(0):
            recv_frames(dealer)
            got += 1
        assert got == sent
        # The dealer said it has room in a command the ROUTER has not processed
        # yet (a send processes commands at most about once a millisecond).
        send_routed(router, ident, [b"after"])
        wait_in(dealer)
        assert recv_frames(dealer) == [b"after"]
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_message_ids_are_version_4_uuids_and_unique() -> None:
    ids = {p.new_message_id() for _ in range(100_000)}
    assert len(ids) == 100_000
    for raw in list(ids)[:1000]:
        u = uuid.UUID(bytes=raw)
        assert u.version == 4 and u.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"".join(p.new_message_id() for _ in range(100)))
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 65536):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(p.new_message_id() for _ in range(100))
    assert len(child) == 1600
    child_ids = {child[i : i + 16] for i in range(0, 1600, 16)}
    parent_ids = {parent[i : i + 16] for i in range(0, 1600, 16)}
    assert not child_ids & parent_ids


def test_uuid_from_bytes_is_uuid_of_bytes() -> None:
    for raw in [bytes(16), b"\xff" * 16, *(os.urandom(16) for _ in range(100))]:
        fast, slow = p.uuid_from_bytes(raw), uuid.UUID(bytes=raw)
        assert fast == slow and hash(fast) == hash(slow)
        assert str(fast) == str(slow) and repr(fast) == repr(slow)
        assert fast.bytes == raw and fast.is_safe == slow.is_safe


def test_make_message_is_the_same_message() -> None:
    args = (uuid.uuid4(), "orders.created", b"{}", {"k": "v"}, datetime.now(UTC))
    fast, slow = make_message(*args), Message(*args)
    assert fast == slow and repr(fast) == repr(slow)
    assert type(fast) is Message and not fast.is_request
    with pytest.raises(AttributeError):
        fast.topic = "other"  # type: ignore[misc]


def test_a_received_message_builds_its_uuid_when_first_read() -> None:
    import copy
    import dataclasses
    import pickle

    raw = os.urandom(16)
    when = datetime.now(UTC)
    lazy = make_message(raw, "orders.created", b"{}", {"k": "v"}, when)
    # Not built yet (the public fallback builds it at once).
    assert ("id" in vars(lazy)) is not _fastpath.ACTIVE["dict_writes:Message"]
    plain = Message(uuid.UUID(bytes=raw), "orders.created", b"{}", {"k": "v"}, when)
    assert lazy == plain and repr(lazy) == repr(plain)
    assert lazy.id is lazy.id and lazy.id == uuid.UUID(bytes=raw)
    fresh = make_message(raw, "t", b"", {}, when)
    for twin in (pickle.loads(pickle.dumps(fresh)), copy.copy(fresh)):
        assert twin.id == uuid.UUID(bytes=raw)
    assert dataclasses.asdict(fresh)["id"] == uuid.UUID(bytes=raw)
    assert dataclasses.replace(fresh, topic="u").id == uuid.UUID(bytes=raw)
    with pytest.raises(AttributeError):
        fresh.no_such_field  # noqa: B018
    with pytest.raises(AttributeError):
        plain.no_such_field  # noqa: B018
