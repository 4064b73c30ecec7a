"""Per-channel and per-peer traffic in STATS (``top_channels``, ``top_peers``)
and ``uptime_s``: counted by ``BrokerState`` in memory on each routing path,
bounded, named by labels only, and read back from a real broker's STATS.

Tables are read as docs/protocol.md lays them out (``table`` below), not
with ``zmqbus.top``'s reader, so the spec is checked rather than the code
against itself.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from frames import A, B, batch, disconnect, joined, publish, publish_batch, reply, request, take

from zmqbus import Broker, Bus, Message, User
from zmqbus import protocol as p
from zmqbus._routing import CHANNEL_COLUMNS, PEER_COLUMNS, STATS_TOP, STATS_TOP_MAX, BrokerState
from zmqbus.admin import broker_stats

pytestmark = pytest.mark.timeout(60)


def table(stats: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The rows of the traffic table ``key``: the column count k, k column
    names, then k cells a row."""
    cells = stats[key]
    k = cells[0]
    names, body = cells[1 : 1 + k], cells[1 + k :]
    assert len(body) % k == 0, cells
    return [dict(zip(names, body[at : at + k], strict=True)) for at in range(0, len(body), k)]


def channel_row(state: BrokerState, channel: bytes = A) -> dict[str, Any]:
    label = state.channel_label(channel)
    (row,) = [r for r in table(state.stats(), "top_channels") if r["channel"] == label]
    return row


def traffic(state: BrokerState, ident: bytes) -> tuple[int, int]:
    """(msgs_in, msgs_out) of the peer ``ident``, as STATS lists it."""
    label = state.label(ident)
    (row,) = [r for r in table(state.stats(), "top_peers") if r["peer"] == label]
    return row["msgs_in"], row["msgs_out"]


# --- counted on each routing path -----------------------------------------------------


def test_a_publish_alone_counts_in_for_its_peer_and_channel_and_out_per_target() -> None:
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"s1", "orders.>")
    joined(state, b"s2", "orders.*", "orders.>")  # two sids: still one delivery
    state.handle(b"pub", publish("orders.new", b"12345"))
    state.handle(b"pub", publish("orders.new", b"678", ref=b"r"))  # confirmed
    state.handle(b"pub", publish("other", b"9"))  # routed to nobody: in, nothing out
    state.handle(b"pub", publish("bad..topic", b"refused"))  # refused: not counted
    out = take(state)
    assert sum(isinstance(cmd, p.Deliver) for _, cmd in out) == 4
    assert channel_row(state) == {
        "channel": state.channel_label(A),
        "msgs_in": 3,
        "msgs_out": 4,
        "bytes_in": 9,  # the bodies, 5 + 3 + 1 octets
        "peers": 3,
        "subscriptions": 3,
    }
    assert traffic(state, b"pub") == (3, 0)
    assert traffic(state, b"s1") == (0, 2)
    assert traffic(state, b"s2") == (0, 2)
    # What departed peers moved stays with their channel.
    state.handle(b"pub", disconnect())
    state.handle(b"s1", disconnect())
    take(state)
    row = channel_row(state)
    assert (row["msgs_in"], row["msgs_out"], row["peers"]) == (3, 4, 1)


def test_stream_deliveries_count_out_for_the_consumer_and_stored_publishes_in() -> None:
    state = BrokerState()
    joined(state, b"pub")
    joined(state, b"con")
    state.handle(
        b"pub",
        [p.H_STREAM, A, b"s", p.pack_stream_request(
            "add", config={"name": "S", "subjects": ["jobs.>"], "storage": "memory"})],
    )  # fmt: skip
    state.handle(b"con", [p.H_CONSUME, A, b"c", b"\0\0\0\7", p.pack_consume("S")])
    take(state)
    for n in range(3):
        body = p.pack_message(uuid.uuid4().bytes, n, {}, b"job")
        state.handle(b"pub", publish("jobs.x", body))
    out = take(state)
    assert [type(c) for who, c in out if who == b"con"] == [p.StreamMsg] * 3
    assert traffic(state, b"pub") == (3, 0)
    assert traffic(state, b"con") == (0, 3)


def test_batches_count_each_message_and_their_entries_frame_once() -> None:
    state = BrokerState()
    joined(state, b"pub", batch_commands=True)
    joined(state, b"new", "t.>", batch_commands=True)  # BROKER_BATCH
    joined(state, b"mid", "t.>", batch=True)  # DELIVER_BATCH
    joined(state, b"old", "t.>")  # a DELIVER each
    unconfirmed = publish_batch(("t.1", b"a"), ("t.2", b"bb"), ("x", b"c"))
    state.handle(b"pub", unconfirmed)
    # A confirmed entry is routed alone, between two runs: its body is in the
    # entries frame, and counted once with it.
    mixed = batch(publish("t.3", b"ddd"), publish("t.4", b"e", ref=b"r"), publish("t.5", b"f"))
    state.handle(b"pub", mixed)
    take(state)
    row = channel_row(state)
    assert (row["msgs_in"], row["msgs_out"]) == (6, 15)  # 5 of 6 reach 3 peers
    assert row["bytes_in"] == len(unconfirmed[p.ENTRIES_FRAME]) + len(mixed[p.ENTRIES_FRAME])
    assert traffic(state, b"pub") == (6, 0)
    for ident in (b"new", b"mid", b"old"):
        assert traffic(state, ident) == (0, 5), ident


def test_requests_and_replies_count_in_and_asks_and_answers_out() -> None:
    state = BrokerState()
    joined(state, b"client")
    joined(state, b"w1", ("svc.echo", 1, "workers"))
    joined(state, b"w2", ("svc.echo", 1, "workers"))
    joined(state, b"audit", "svc.>")
    for ref in (b"1", b"2", b"3", b"4"):
        state.handle(b"client", request("svc.echo", b"ping", ref=ref))
    asks = [(ident, cmd) for ident, cmd in take(state) if isinstance(cmd, p.Ask)]
    assert sorted(ident for ident, _ in asks).count(b"audit") == 4 and len(asks) == 8
    for ident, ask in asks:
        if ident != b"audit":  # one member of the group answers each
            state.handle(ident, reply(ask.token, b"pong"))
    assert sum(isinstance(cmd, p.Answer) for _, cmd in take(state)) == 4
    row = channel_row(state)
    # In: 4 requests and 4 replies; out: 8 ASKs and 4 ANSWERs; bytes: 8 bodies of 4.
    assert (row["msgs_in"], row["msgs_out"], row["bytes_in"]) == (8, 12, 32)
    assert traffic(state, b"client") == (4, 4)
    assert traffic(state, b"audit") == (0, 4)
    w1, w2 = traffic(state, b"w1"), traffic(state, b"w2")
    assert (w1[0] + w2[0], w1[1] + w2[1]) == (4, 4) and w1[0] == w1[1] and w2[0] == w2[1]


# --- the tables -------------------------------------------------------------------------


def test_the_tables_hold_the_busiest_first_and_no_more_than_asked() -> None:
    state = BrokerState()
    for i in range(25):
        channel = (i + 1).to_bytes(16, "big")
        ident = b"peer-%d" % i
        joined(state, ident, ch=channel)
        for _ in range(i):
            state.handle(ident, publish("t", ch=channel))
    take(state)
    stats: dict[str, Any] = state.stats()
    assert stats["top_channels"][: 1 + len(CHANNEL_COLUMNS)] == [6, *CHANNEL_COLUMNS]
    assert stats["top_peers"][: 1 + len(PEER_COLUMNS)] == [6, *PEER_COLUMNS]
    channels, peers = table(stats, "top_channels"), table(stats, "top_peers")
    assert len(channels) == len(peers) == STATS_TOP == 20
    assert [row["msgs_in"] for row in channels] == list(range(24, 4, -1))
    assert [row["msgs_in"] for row in peers] == list(range(24, 4, -1))
    assert [row["peer"] for row in peers][:2] == [state.label(b"peer-24"), state.label(b"peer-23")]
    assert peers[0]["channel"] == state.channel_label((25).to_bytes(16, "big"))
    assert [row["msgs_in"] for row in table(state.stats(top=3), "top_peers")] == [24, 23, 22]
    assert table(state.stats(top=0), "top_channels") == []
    with pytest.raises(ValueError, match="top must be"):
        state.stats(top=STATS_TOP_MAX + 1)


def test_the_largest_tables_decode_within_a_clients_budget() -> None:
    # A client decodes at most 16 arrays and maps in a body, each of at most
    # MAX_BODY_ITEMS elements: STATS_TOP_MAX rows of both tables must pass.
    state = BrokerState()
    for i in range(STATS_TOP_MAX + 5):
        joined(state, b"peer-%d" % i, ch=(i + 1).to_bytes(16, "big"))
    stats = p.unpack_stats(p.pack_stats(state.stats(top=STATS_TOP_MAX)))
    assert len(table(stats, "top_channels")) == len(table(stats, "top_peers")) == STATS_TOP_MAX


def test_channels_and_peers_go_by_labels_never_by_their_ids() -> None:
    state = BrokerState()
    joined(state, b"my-routing-id", "x")
    body = p.pack_stats(state.stats())
    for secret in (A, A.hex().encode(), str(uuid.UUID(bytes=A)).encode(), b"my-routing-id"):
        assert secret not in body
    (row,) = table(state.stats(), "top_peers")
    assert row["peer"] == state.label(b"my-routing-id")
    assert row["channel"] == state.channel_label(A) != state.label(A)  # apart from peers' names
    assert len(row["channel"]) == 12 and BrokerState().channel_label(A) != row["channel"]


def test_uptime_is_the_states_clock_since_it_was_made() -> None:
    now = [1000.0]
    state = BrokerState(clock=lambda: now[0])
    now[0] = 1012.5
    assert state.stats()["uptime_s"] == 12.5
    assert state.channel_stats(None)["uptime_s"] == 12.5


def test_a_user_without_admin_sees_its_own_channels_row_alone() -> None:
    state = BrokerState(anonymous=User("anonymous"))
    joined(state, b"a", "x")
    joined(state, b"b", "x", ch=B)
    state.handle(b"a", publish("x", b"1234"))
    state.handle(b"b", publish("x", ch=B))
    state.handle(b"b", publish("x", ch=B))
    take(state)
    state.handle(b"a", [p.H_STATS, A, b"q"])
    state.handle(b"nobody", [p.H_STATS, b"", b"q"])  # not joined: no row
    (_, own), (_, unjoined) = take(state)
    assert isinstance(own, p.StatsReply) and isinstance(unjoined, p.StatsReply)
    body = p.unpack_stats(own.body)
    assert table(body, "top_channels") == [
        {
            "channel": state.channel_label(A),
            "msgs_in": 1,
            "msgs_out": 1,
            "bytes_in": 4,
            "peers": 1,
            "subscriptions": 1,
        }
    ]
    assert "top_peers" not in body and isinstance(body["uptime_s"], float)
    assert table(p.unpack_stats(unjoined.body), "top_channels") == []


# --- over a real broker -------------------------------------------------------------


def test_stats_from_a_real_broker_counts_each_channel_and_peer(
    broker: Broker, make_bus: Callable[..., Bus]
) -> None:
    pub, sub = make_bus(), make_bus()
    make_bus(uuid.uuid4())  # an idle peer on a channel of its own
    n = 30
    seen: list[Message] = []
    all_in = threading.Event()

    def take_one(msg: Message) -> None:
        seen.append(msg)
        if len(seen) == n + 1:
            all_in.set()

    sub.subscribe("orders.>", take_one)
    sub.subscribe("svc.echo", lambda msg: b"pong")
    for _ in range(n):
        pub.publish("orders.created", b"x" * 10, confirm=False)
    pub.publish("orders.created", b"y" * 10)
    assert all_in.wait(10), len(seen)
    # Its answer is routed after the reply is counted: STATS asked now sees all.
    assert pub.request("svc.echo", b"ping").payload == b"pong"

    stats = broker_stats(broker.address)
    assert isinstance(stats["uptime_s"], float) and stats["uptime_s"] > 0
    ours, idle = table(stats, "top_channels")  # busiest first
    # In: n + 1 publishes, a request, a reply; out: as many deliveries, an ASK, an ANSWER.
    assert (ours["msgs_in"], ours["msgs_out"]) == (n + 3, n + 3)
    assert (ours["peers"], ours["subscriptions"]) == (2, 2)
    assert ours["bytes_in"] > (n + 1) * 10  # message bodies: payload and envelope
    assert (idle["msgs_in"], idle["msgs_out"], idle["bytes_in"], idle["peers"]) == (0, 0, 0, 1)
    peers = table(stats, "top_peers")
    assert [row["channel"] for row in peers] == [ours["channel"]] * 2 + [idle["channel"]]
    figures = sorted((r["msgs_in"], r["msgs_out"], r["subscriptions"], r["dropped"]) for r in peers)
    assert figures == [(0, 0, 0, 0), (1, n + 2, 2, 0), (n + 2, 1, 0, 0)]
