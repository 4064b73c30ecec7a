"""The stream store: configs, both backends (memory and SQLite) behaving alike,
and what only SQLite promises: restarts, kill -9, corrupt files, bounded memory.

Every behaviour test runs against both backends through ``open_store``. Times
are passed explicitly; nothing sleeps. ``ZMQBUS_STORE_BENCH=1`` also runs the
measurements (1M messages, appends/s), printed with ``-s``.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import math
import os
import pathlib
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

import zmqbus
from zmqbus.store import (
    ConsumerState,
    MemoryStream,
    SqliteStream,
    Store,
    StoreCorrupt,
    StoredMessage,
    StoreError,
    Stream,
    StreamConfig,
    StreamFull,
    SubjectFilter,
    open_store,
)
from zmqbus.store.base import decode_consumer, encode_consumer
from zmqbus.store.sqlite import APPLICATION_ID, DB_FILENAME

pytestmark = pytest.mark.timeout(60)

REPO = pathlib.Path(zmqbus.__file__).parent.parent
STORE_PKG = pathlib.Path(zmqbus.__file__).parent / "store"
CHANNEL = uuid.UUID(int=7).bytes
T0 = 1_700_000_000.0
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def mid(i: int) -> bytes:
    """A distinct 16-byte message id per int."""
    return i.to_bytes(16, "big")


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: pathlib.Path) -> Iterator[Store]:
    s = open_store(tmp_path / "data" if kind == "sqlite" else None)
    yield s
    s.close()


@pytest.fixture
def make_config(kind: str) -> Callable[..., StreamConfig]:
    """StreamConfig with this backend's storage and a default name, channel and subjects."""

    def make(name: str = "s1", **kw: Any) -> StreamConfig:
        kw.setdefault("subjects", ("orders.>", "audit"))
        kw.setdefault("storage", "file" if kind == "sqlite" else "memory")
        return StreamConfig(name=name, channel=CHANNEL, **kw)

    return make


@pytest.fixture
def stream(store: Store, make_config: Callable[..., StreamConfig]) -> Stream:
    return store.create_stream(make_config())


def fill(s: Stream, n: int, *, start_time: float = T0, topic: bytes = b"orders.new") -> list[int]:
    """Append n messages one second apart, ids from last_seq + 1; their seqs."""
    base = s.last_seq
    return [
        s.append(topic, b"body-%d" % (base + i), mid(base + i), start_time + i)[0]
        for i in range(1, n + 1)
    ]


def everything(s: Stream) -> list[StoredMessage]:
    return s.read(0, 10**9)


def check_numbers(s: Stream) -> None:
    """The running numbers agree with what is stored."""
    msgs = everything(s)
    assert s.messages == len(msgs)
    assert s.bytes == sum(len(m.topic) + len(m.body) for m in msgs)
    assert [m.seq for m in msgs] == sorted({m.seq for m in msgs})
    if msgs:
        assert s.first_seq == msgs[0].seq
        assert msgs[-1].seq <= s.last_seq
    else:
        assert s.first_seq == s.last_seq + 1


def dedup_entries(s: Stream) -> int:
    if isinstance(s, MemoryStream):
        return len(s._ids)
    assert isinstance(s, SqliteStream)
    return int(s._db.execute(f"SELECT count(*) FROM d{s.sid}").fetchall()[0][0])


# --- StreamConfig -------------------------------------------------------------------


def test_config_defaults() -> None:
    c = StreamConfig("orders", CHANNEL, ("orders.>",))
    assert (c.retention, c.discard, c.storage) == ("limits", "old", "file")
    assert (c.max_msgs, c.max_bytes, c.max_msg_size) == (-1, -1, -1)
    assert (c.max_age, c.duplicate_window) == (0.0, 120.0)


def test_config_normalizes_subjects_and_seconds() -> None:
    c = StreamConfig("s", CHANNEL, ["a.*", "b.>"], max_age=5, duplicate_window=0)  # type: ignore[arg-type]
    assert c.subjects == ("a.*", "b.>")
    assert type(c.max_age) is float and type(c.duplicate_window) is float
    assert c == StreamConfig("s", CHANNEL, ("a.*", "b.>"), max_age=5.0, duplicate_window=0.0)


def test_config_is_frozen() -> None:
    c = StreamConfig("s", CHANNEL, ("a",))
    with pytest.raises(AttributeError):
        c.name = "t"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["a", "A-z_09", "x" * 64])
def test_config_good_names(name: str) -> None:
    assert StreamConfig(name, CHANNEL, ("a",)).name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a.b", "a b", "ü", "a/b", "a*", "a\n"])
def test_config_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="stream name"):
        StreamConfig(name, CHANNEL, ("a",))


BAD_CONFIGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"name": 5}, TypeError, "name must be a str"),
    ({"channel": "x" * 16}, TypeError, "channel must be bytes"),
    ({"channel": bytearray(16)}, TypeError, "channel must be bytes"),
    ({"channel": uuid.UUID(int=1)}, TypeError, "channel must be bytes"),
    ({"channel": b"x" * 15}, ValueError, "16 bytes"),
    ({"subjects": ()}, ValueError, "at least one subject"),
    ({"subjects": "orders.>"}, TypeError, "sequence of patterns"),
    ({"subjects": None}, TypeError, "sequence of patterns"),
    ({"subjects": ("a..b",)}, ValueError, "bad subject"),
    ({"subjects": ("a.>.b",)}, ValueError, "bad subject"),
    ({"subjects": ("a b",)}, ValueError, "bad subject"),
    ({"subjects": (5,)}, TypeError, "pattern must be str"),
    ({"subjects": ("a", "a")}, ValueError, "duplicate subject"),
    ({"retention": "forever"}, ValueError, "retention must be one of"),
    ({"retention": 1}, TypeError, "retention must be a str"),
    ({"discard": "oldest"}, ValueError, "discard must be one of"),
    ({"storage": "disk"}, ValueError, "storage must be one of"),
    ({"max_msgs": 0}, ValueError, "max_msgs must be -1"),
    ({"max_msgs": -2}, ValueError, "max_msgs must be -1"),
    ({"max_msgs": 2**63}, ValueError, "max_msgs must be -1"),
    ({"max_msgs": 1.5}, TypeError, "max_msgs must be an int"),
    ({"max_msgs": True}, TypeError, "max_msgs must be an int"),
    ({"max_bytes": 0}, ValueError, "max_bytes must be -1"),
    ({"max_msg_size": 0}, ValueError, "max_msg_size must be -1"),
    ({"max_msg_size": "10"}, TypeError, "max_msg_size must be an int"),
    ({"max_age": -1}, ValueError, "max_age must be a finite"),
    ({"max_age": math.inf}, ValueError, "max_age must be a finite"),
    ({"max_age": math.nan}, ValueError, "max_age must be a finite"),
    ({"max_age": "1"}, TypeError, "max_age must be a number"),
    ({"max_age": False}, TypeError, "max_age must be a number"),
    ({"duplicate_window": -0.5}, ValueError, "duplicate_window must be a finite"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD_CONFIGS)
def test_config_bad_fields(change: dict[str, Any], error: type[Exception], message: str) -> None:
    kw: dict[str, Any] = {"name": "s", "channel": CHANNEL, "subjects": ("a",), **change}
    with pytest.raises(error, match=message):
        StreamConfig(**kw)


def test_config_dict_round_trip_through_msgpack() -> None:
    c = StreamConfig(
        "s",
        CHANNEL,
        ("a.*", "b"),
        retention="work_queue",
        max_msgs=10,
        max_bytes=1000,
        max_age=2.5,
        max_msg_size=100,
        discard="new",
        storage="memory",
        duplicate_window=0.0,
    )
    d = c.to_dict()
    assert d["channel"] == CHANNEL and d["subjects"] == ["a.*", "b"]
    assert set(d) == {
        "name",
        "channel",
        "subjects",
        "retention",
        "max_msgs",
        "max_bytes",
        "max_age",
        "max_msg_size",
        "discard",
        "storage",
        "duplicate_window",
    }
    back = msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False)
    assert StreamConfig.from_dict(back) == c
    assert StreamConfig.from_dict(d) == c


def test_config_from_dict_refuses_unknown_and_missing_keys() -> None:
    d = StreamConfig("s", CHANNEL, ("a",)).to_dict()
    with pytest.raises(ValueError, match=r"unknown stream config key.*colour"):
        StreamConfig.from_dict({**d, "colour": "red"})
    del d["subjects"]
    with pytest.raises(ValueError, match="lacks subjects"):
        StreamConfig.from_dict(d)
    with pytest.raises(TypeError, match="mapping"):
        StreamConfig.from_dict([("name", "s")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_msgs"):
        StreamConfig.from_dict({**StreamConfig("s", CHANNEL, ("a",)).to_dict(), "max_msgs": 0})


# --- SubjectFilter and ConsumerState --------------------------------------------------


def test_subject_filter() -> None:
    f = SubjectFilter(["orders.*", "audit.>"])
    assert f(b"orders.new") and f(b"audit.x.y")
    assert not f(b"orders.new.eu") and not f(b"audit") and not f(b"other")
    assert not f(b"\xff\xfe")  # not UTF-8: matches nothing
    assert SubjectFilter(None)(b"anything") and SubjectFilter([">"]).everything
    assert not SubjectFilter([])(b"a")
    with pytest.raises(TypeError):
        SubjectFilter("orders.*")
    with pytest.raises(ValueError):
        SubjectFilter(["a..b"])


def test_consumer_state_compaction() -> None:
    s = ConsumerState(
        "c", {}, delivered_seq=9, ack_floor=2, pending={5: 1, 9: 2, 2: 7}, acked={1, 3, 4, 6, 8}
    )
    c = s.compacted()
    assert (c.ack_floor, c.acked, c.pending) == (4, {6, 8}, {5: 1, 9: 2})
    assert (s.ack_floor, s.acked) == (2, {1, 3, 4, 6, 8})  # the original is left alone


def test_consumer_state_round_trips_in_order_and_reads_the_older_list_format() -> None:
    state = ConsumerState(
        "c", {"durable": "c"}, delivered_seq=2**40, ack_floor=3, pending={2**40: 2, 7: 1, 5: 3}
    )
    back = decode_consumer(encode_consumer(state))
    assert list(back.pending.items()) == [(5, 3), (7, 1), (2**40, 2)]  # in sequence order
    assert (back.delivered_seq, back.ack_floor, back.acked) == (2**40, 3, set())
    older = msgpack.packb(
        {"name": "c", "config": {}, "delivered_seq": 9, "ack_floor": 4,
         "pending": [[5, 1], [9, 2]], "acked": [7]},
        use_bin_type=True,
    )  # fmt: skip
    assert decode_consumer(older) == ConsumerState("c", {}, 9, 4, {5: 1, 9: 2}, {7})
    with pytest.raises(ValueError, match="pending deliveries"):
        encode_consumer(ConsumerState("c", {}, pending={5: -1}))
    with pytest.raises(ValueError, match="pending seq"):
        encode_consumer(ConsumerState("c", {}, pending={2**63: 1}))


# --- streams: basics (both backends) -------------------------------------------------


def test_new_stream_is_empty(stream: Stream) -> None:
    assert (stream.first_seq, stream.last_seq, stream.messages, stream.bytes) == (1, 0, 0, 0)
    assert stream.get(1) is None and stream.get(0) is None
    assert stream.read(0, 10) == [] and stream.last_for() is None
    assert stream.seq_at_time(T0) == 1
    assert stream.purge() == 0 and stream.expire(T0) == 0 and stream.remove(1) is False


def test_append_assigns_seqs_from_1_and_get_returns_them(stream: Stream) -> None:
    assert stream.append(b"orders.new", b"\x94\xc4\x10body", mid(1), T0) == (1, False)
    assert stream.append(b"audit", b"", mid(2), T0 + 0.25) == (2, False)
    assert stream.get(1) == StoredMessage(1, b"orders.new", b"\x94\xc4\x10body", mid(1), T0)
    assert stream.get(2) == StoredMessage(2, b"audit", b"", mid(2), T0 + 0.25)
    assert stream.get(3) is None
    assert (stream.first_seq, stream.last_seq, stream.messages) == (1, 2, 2)
    assert stream.bytes == len(b"orders.new") + 7 + len(b"audit")


def test_append_takes_bytes_like_and_checks_arguments(stream: Stream) -> None:
    assert stream.append(bytearray(b"audit"), memoryview(b"b"), bytearray(mid(1)), 1) == (1, False)  # type: ignore[arg-type]
    assert stream.get(1) == StoredMessage(1, b"audit", b"b", mid(1), 1.0)
    with pytest.raises(TypeError, match="topic must be bytes"):
        stream.append("audit", b"", mid(2), T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="body must be bytes"):
        stream.append(b"audit", None, mid(2), T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="msg_id must be 1 to 255"):
        stream.append(b"audit", b"", b"", T0)
    with pytest.raises(ValueError, match="msg_id must be 1 to 255"):
        stream.append(b"audit", b"", b"x" * 256, T0)
    with pytest.raises(ValueError, match="now must be finite"):
        stream.append(b"audit", b"", mid(2), math.nan)
    with pytest.raises(TypeError, match="now must be unix seconds"):
        stream.append(b"audit", b"", mid(2), "now")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seq must be an int"):
        stream.get("1")  # type: ignore[arg-type]
    assert stream.last_seq == 1


def test_read_ranges_and_limits(stream: Stream) -> None:
    fill(stream, 10)
    assert [m.seq for m in stream.read(1, 3)] == [1, 2, 3]
    assert [m.seq for m in stream.read(8, 100)] == [8, 9, 10]
    assert [m.seq for m in stream.read(-5, 2)] == [1, 2]
    assert stream.read(11, 5) == [] and stream.read(3, 0) == []
    stream.remove(4)
    stream.remove(5)
    assert [m.seq for m in stream.read(4, 3)] == [6, 7, 8]
    with pytest.raises(ValueError, match="limit must be >= 0"):
        stream.read(1, -1)
    with pytest.raises(TypeError):
        stream.read(1.0, 1)  # type: ignore[arg-type]


def test_read_and_last_for_with_subject_filters(stream: Stream) -> None:
    topics = [b"orders.new", b"orders.eu.new", b"audit", b"orders.new", b"orders.eu.paid", b"audit"]
    for i, t in enumerate(topics, 1):
        stream.append(t, b"%d" % i, mid(i), T0 + i)

    def seqs(start: int, limit: int, subjects: list[str] | None) -> list[int]:
        return [m.seq for m in stream.read(start, limit, subjects)]

    assert seqs(0, 10, None) == [1, 2, 3, 4, 5, 6]
    assert seqs(0, 10, ["orders.new"]) == [1, 4]
    assert seqs(0, 10, ["orders.*"]) == [1, 4]
    assert seqs(0, 10, ["orders.>"]) == [1, 2, 4, 5]
    assert seqs(0, 10, ["orders.*.new", "audit"]) == [2, 3, 6]
    assert seqs(0, 2, ["orders.>"]) == [1, 2]
    assert seqs(3, 10, ["orders.>"]) == [4, 5]
    assert seqs(0, 10, [">"]) == [1, 2, 3, 4, 5, 6]
    assert seqs(0, 10, ["nothing"]) == [] and seqs(0, 10, []) == []
    last = stream.last_for(["orders.new"])
    assert last is not None and (last.seq, last.body) == (4, b"4")
    assert stream.last_for(["orders.*.*"]).seq == 5  # type: ignore[union-attr]
    assert stream.last_for().seq == 6  # type: ignore[union-attr]
    assert stream.last_for(["x.y"]) is None
    with pytest.raises(ValueError):
        stream.read(0, 10, ["a..b"])
    with pytest.raises(TypeError):
        stream.last_for("audit")


def test_seq_at_time(stream: Stream) -> None:
    fill(stream, 10)  # seq i stored at T0 + i
    assert stream.seq_at_time(0) == 1
    assert stream.seq_at_time(T0 + 1) == 1
    assert stream.seq_at_time(T0 + 4) == 4
    assert stream.seq_at_time(T0 + 4.5) == 5
    assert stream.seq_at_time(T0 + 10) == 10
    assert stream.seq_at_time(T0 + 10.01) == 11
    for seq in (5, 6, 7):
        stream.remove(seq)
    assert stream.seq_at_time(T0 + 4.5) == 8
    assert stream.seq_at_time(T0 + 2) == 2
    stream.remove(1)
    assert stream.seq_at_time(0) == 2
    with pytest.raises(ValueError):
        stream.seq_at_time(math.inf)


def test_seq_at_time_with_equal_times(stream: Stream) -> None:
    for i in range(1, 8):
        stream.append(b"audit", b"", mid(i), T0 + (i // 3))  # times 0,0,1,1,1,2,2 after T0
    assert [stream.seq_at_time(T0 + k) for k in (0, 1, 2, 3)] == [1, 3, 6, 8]


# --- dedup ---------------------------------------------------------------------------


def test_duplicate_within_window_is_not_stored(stream: Stream) -> None:
    assert stream.append(b"orders.new", b"a", mid(1), T0) == (1, False)
    assert stream.append(b"orders.new", b"b", mid(2), T0 + 1) == (2, False)
    assert stream.append(b"audit", b"other body", mid(1), T0 + 119) == (1, True)
    assert (stream.last_seq, stream.messages) == (2, 2)
    assert stream.get(1).body == b"a"  # type: ignore[union-attr]
    # 120 s is the default window: exactly at it, the id is new again.
    assert stream.append(b"orders.new", b"c", mid(1), T0 + 120) == (3, False)
    assert stream.append(b"orders.new", b"c", mid(1), T0 + 121) == (3, True)


def test_duplicate_window_zero_disables_dedup(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(duplicate_window=0))
    assert [s.append(b"audit", b"", mid(1), T0)[0] for _ in range(3)] == [1, 2, 3]
    assert dedup_entries(s) == 0


def test_dedup_outlives_removal_and_purge(stream: Stream) -> None:
    fill(stream, 3)
    stream.remove(2)
    assert stream.append(b"audit", b"", mid(2), T0 + 5) == (2, True)
    stream.purge()
    assert stream.append(b"audit", b"", mid(3), T0 + 6) == (3, True)
    assert stream.messages == 0 and stream.last_seq == 3


def test_dedup_ids_are_pruned(store: Store, make_config: Callable[..., StreamConfig]) -> None:
    s = store.create_stream(make_config(duplicate_window=10))
    for i in range(1, 201):
        s.append(b"audit", b"", mid(i), T0 + i * 0.5)  # 100 s of appends
    # Only ids younger than the window (plus up to a second's worth not yet pruned) are kept.
    assert 20 <= dedup_entries(s) <= 23
    assert s.append(b"audit", b"", mid(190), T0 + 100.5) == (190, True)
    assert s.append(b"audit", b"", mid(150), T0 + 100.5) == (201, False)


def test_duplicate_is_reported_even_when_full(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(max_msgs=2, discard="new"))
    fill(s, 2)
    assert s.append(b"audit", b"", mid(2), T0 + 3) == (2, True)
    with pytest.raises(StreamFull):
        s.append(b"audit", b"", mid(3), T0 + 3)


# --- limits --------------------------------------------------------------------------


def test_max_msgs_discard_old(store: Store, make_config: Callable[..., StreamConfig]) -> None:
    s = store.create_stream(make_config(max_msgs=3))
    fill(s, 10)
    assert (s.first_seq, s.last_seq, s.messages) == (8, 10, 3)
    assert [m.seq for m in everything(s)] == [8, 9, 10]
    check_numbers(s)


def test_max_bytes_discard_old_drops_just_enough(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(max_bytes=100))
    for i, n in enumerate([10, 20, 30, 25], 1):  # sizes 15, 25, 35, 30 with topic b"audit"
        s.append(b"audit", b"x" * n, mid(i), T0 + i)
    assert [m.seq for m in everything(s)] == [2, 3, 4] and s.bytes == 90
    s.append(b"audit", b"x" * 55, mid(5), T0 + 5)  # 60 bytes: 2 and 3 must go
    assert [m.seq for m in everything(s)] == [4, 5] and s.bytes == 90
    s.append(b"audit", b"x" * 95, mid(6), T0 + 6)  # exactly max_bytes: all others go
    assert [m.seq for m in everything(s)] == [6] and s.bytes == 100
    check_numbers(s)


def test_max_msgs_discard_new_refuses(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(max_msgs=2, discard="new"))
    fill(s, 2)
    with pytest.raises(StreamFull, match=r"max_msgs \(2\)"):
        s.append(b"audit", b"", mid(3), T0 + 3)
    assert (s.first_seq, s.last_seq, s.messages) == (1, 2, 2)
    s.remove(1)
    assert s.append(b"audit", b"", mid(3), T0 + 3) == (3, False)


def test_max_bytes_discard_new_refuses(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(max_bytes=20, discard="new"))
    s.append(b"audit", b"x" * 10, mid(1), T0)
    with pytest.raises(StreamFull, match=r"max_bytes \(20\)"):
        s.append(b"audit", b"x" * 6, mid(2), T0)
    assert s.append(b"audit", b"", mid(2), T0) == (2, False)  # 15 + 5: exactly max_bytes
    assert s.bytes == 20
    check_numbers(s)


@pytest.mark.parametrize("discard", ["old", "new"])
def test_oversized_messages_are_refused(
    store: Store, make_config: Callable[..., StreamConfig], discard: str
) -> None:
    s = store.create_stream(make_config(max_msg_size=10, max_bytes=100, discard=discard))
    fill(s, 1)
    with pytest.raises(StreamFull, match=r"body of 11 bytes is over max_msg_size \(10\)"):
        s.append(b"audit", b"x" * 11, mid(9), T0)
    assert s.append(b"audit", b"x" * 10, mid(10), T0)[1] is False  # body limit only
    t = store.create_stream(make_config("s2", max_bytes=30, discard=discard))
    with pytest.raises(StreamFull, match=r"message of 31 bytes .* over max_bytes \(30\)"):
        t.append(b"audit", b"x" * 26, mid(1), T0)
    assert (s.messages, t.messages, t.last_seq) == (2, 0, 0)


# --- max_age ---------------------------------------------------------------------------


def test_expire_by_age(store: Store, make_config: Callable[..., StreamConfig]) -> None:
    s = store.create_stream(make_config(max_age=100))
    fill(s, 20)  # seq i at T0 + i
    assert s.expire(T0 + 100.5) == 0
    assert s.expire(T0 + 105) == 5  # 1..5 are 100 s old or more
    assert (s.first_seq, s.messages) == (6, 15)
    assert s.expire(T0 + 105) == 0
    assert s.expire(T0 + 1000) == 15
    assert (s.first_seq, s.last_seq, s.messages, s.bytes) == (21, 20, 0, 0)
    assert s.append(b"audit", b"", mid(99), T0 + 1000) == (21, False)
    check_numbers(s)


def test_append_expires_old_messages(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(max_age=10))
    fill(s, 5)
    s.append(b"audit", b"", mid(100), T0 + 13)  # 1, 2 and 3 are too old by now
    assert [m.seq for m in everything(s)] == [4, 5, 6]
    check_numbers(s)
    s.remove(4)
    s.append(b"audit", b"", mid(101), T0 + 15.5)  # 5 is too old
    assert [m.seq for m in everything(s)] == [6, 7]


def test_expire_without_max_age_keeps_all(stream: Stream) -> None:
    fill(stream, 3)
    assert stream.expire(T0 + 10**9) == 0 and stream.messages == 3


# --- remove and purge -----------------------------------------------------------------


def test_remove(stream: Stream) -> None:
    fill(stream, 5)
    assert stream.remove(3) is True and stream.remove(3) is False
    assert stream.remove(0) is False and stream.remove(6) is False
    assert stream.first_seq == 1 and stream.messages == 4
    assert stream.remove(1) and stream.first_seq == 2
    assert stream.remove(2) and stream.first_seq == 4  # skips the hole at 3
    assert stream.remove(5) and stream.last_seq == 5  # last_seq is never taken back
    assert stream.remove(4) and (stream.first_seq, stream.messages, stream.bytes) == (6, 0, 0)
    assert stream.append(b"audit", b"", mid(6), T0 + 6) == (6, False)
    assert stream.first_seq == 6
    check_numbers(stream)


def test_remove_everything_in_random_order(stream: Stream) -> None:
    fill(stream, 300)
    order = list(range(1, 301))
    random.Random(5).shuffle(order)
    for n, seq in enumerate(order, 1):
        assert stream.remove(seq)
        if n % 37 == 0:
            check_numbers(stream)
    check_numbers(stream)
    assert stream.first_seq == 301


def test_purge_keeps_last_seq(stream: Stream) -> None:
    fill(stream, 7)
    stream.remove(2)
    assert stream.purge() == 6
    assert (stream.first_seq, stream.last_seq, stream.messages, stream.bytes) == (8, 7, 0, 0)
    assert stream.read(0, 10) == [] and stream.get(7) is None
    assert stream.append(b"audit", b"", mid(100), T0) == (8, False)
    assert stream.first_seq == 8


# --- consumers ----------------------------------------------------------------------------


def test_consumers_saved_listed_replaced_deleted(stream: Stream) -> None:
    assert stream.consumers() == []
    a = ConsumerState("b-worker", {"filter": "orders.>", "ack_wait": 30.0, "raw": b"\x00"})
    b = ConsumerState(
        "a-worker", {}, delivered_seq=9, ack_floor=3, pending={5: 2, 7: 1}, acked={6, 9}
    )
    stream.save_consumer(a)
    stream.save_consumer(b)
    assert stream.consumers() == [b, a]  # by name
    b.delivered_seq = 12  # the store keeps the snapshot taken at save
    assert stream.consumers()[0].delivered_seq == 9
    stream.save_consumer(b)
    assert stream.consumers()[0].delivered_seq == 12
    assert stream.delete_consumer("a-worker") is True
    assert stream.delete_consumer("a-worker") is False
    assert [c.name for c in stream.consumers()] == ["b-worker"]


def test_consumer_acks_are_compacted(stream: Stream) -> None:
    stream.save_consumer(ConsumerState("c", {}, 10, 2, {3: 1, 7: 2}, {4, 5, 6, 8}))
    (c,) = stream.consumers()
    assert (c.ack_floor, c.acked, c.pending) == (2, {4, 5, 6, 8}, {3: 1, 7: 2})
    stream.save_consumer(ConsumerState("c", {}, 10, 3, {7: 2}, {4, 5, 6, 8}))
    (c,) = stream.consumers()
    assert (c.ack_floor, c.acked, c.pending) == (6, {8}, {7: 2})


def test_bad_consumer_states(stream: Stream) -> None:
    with pytest.raises(TypeError, match="not msgpack-able"):
        stream.save_consumer(ConsumerState("c", {"f": object()}))
    with pytest.raises(ValueError, match="non-empty str"):
        stream.save_consumer(ConsumerState("", {}))
    with pytest.raises(ValueError, match="ack_floor"):
        stream.save_consumer(ConsumerState("c", {}, ack_floor=-1))
    with pytest.raises(TypeError, match="pending seq"):
        stream.save_consumer(ConsumerState("c", {}, pending={"1": 1}))  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="ConsumerState"):
        stream.save_consumer({"name": "c"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        stream.delete_consumer(5)  # type: ignore[arg-type]
    assert stream.consumers() == []


# --- the store ------------------------------------------------------------------------------


def test_create_stream_is_idempotent_for_an_equal_config(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    s = store.create_stream(make_config(max_msgs=5))
    assert store.create_stream(make_config(max_msgs=5)) is s
    with pytest.raises(ValueError, match="exists with another config"):
        store.create_stream(make_config(max_msgs=6))
    assert store.stream("s1") is s and store.stream("nope") is None
    with pytest.raises(TypeError):
        store.create_stream({"name": "s1"})  # type: ignore[arg-type]


def test_streams_listed_by_name_and_deleted(
    store: Store, make_config: Callable[..., StreamConfig]
) -> None:
    for name in ("zeta", "alpha", "mid"):
        store.create_stream(make_config(name))
    assert [s.config.name for s in store.streams()] == ["alpha", "mid", "zeta"]
    old = store.stream("mid")
    assert old is not None
    fill(old, 3)
    old.save_consumer(ConsumerState("c", {}))
    assert store.delete_stream("mid") is True and store.delete_stream("mid") is False
    assert store.stream("mid") is None
    with pytest.raises(StoreError, match="was deleted"):
        old.append(b"audit", b"", mid(9), T0)
    with pytest.raises(StoreError, match="was deleted"):
        old.read(0, 1)
    again = store.create_stream(make_config("mid"))
    assert (again.last_seq, again.messages, again.consumers()) == (0, 0, [])


def test_streams_are_independent(store: Store, make_config: Callable[..., StreamConfig]) -> None:
    a = store.create_stream(make_config("a"))
    b = store.create_stream(make_config("b"))
    fill(a, 3)
    assert b.append(b"audit", b"", mid(1), T0) == (1, False)  # ids are per stream
    assert (a.last_seq, b.last_seq) == (3, 1)


def test_closed_store_refuses_calls(store: Store, stream: Stream) -> None:
    fill(stream, 1)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.stream("s1")
    with pytest.raises(StoreError, match="closed"):
        stream.append(b"audit", b"", mid(2), T0)


def test_file_streams_need_a_data_dir() -> None:
    s = open_store(None)
    try:
        with pytest.raises(StoreError, match=r"file streams need a data_dir \(Broker\(data_dir"):
            s.create_stream(StreamConfig("f", CHANNEL, ("a",), storage="file"))
        assert s.create_stream(StreamConfig("m", CHANNEL, ("a",), storage="memory"))
    finally:
        s.close()


def test_names_are_unique_across_storage_kinds(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    try:
        s.create_stream(StreamConfig("x", CHANNEL, ("a",), storage="file"))
        with pytest.raises(ValueError, match="exists"):
            s.create_stream(StreamConfig("x", CHANNEL, ("a",), storage="memory"))
        s.create_stream(StreamConfig("y", CHANNEL, ("a",), storage="memory"))
        with pytest.raises(ValueError, match="exists"):
            s.create_stream(StreamConfig("y", CHANNEL, ("a",), storage="file"))
        assert [(t.config.name, t.config.storage) for t in s.streams()] == [
            ("x", "file"),
            ("y", "memory"),
        ]
        assert s.delete_stream("y") and s.delete_stream("x") and s.streams() == []
    finally:
        s.close()


def test_open_store_checks_sync(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        open_store(tmp_path, sync="off")  # type: ignore[arg-type]


# --- both backends agree with each other, op by op ---------------------------------------


def agree(fn: Callable[[Stream], Any], pair: tuple[Stream, Stream], step: int) -> Any:
    """fn's result (or StreamFull) on both streams of the pair, which must be equal."""
    results = []
    for s in pair:
        try:
            results.append(("ok", fn(s)))
        except StreamFull:
            results.append(("full", None))
    assert results[0] == results[1], (step, results)
    return results[0][1]


def test_backends_agree_on_random_operations(tmp_path: pathlib.Path) -> None:
    rng = random.Random(1234)
    stores = [open_store(None), open_store(tmp_path)]
    try:
        pairs: list[tuple[Stream, Stream]] = []
        for i, kw in enumerate(
            [
                {"max_msgs": 50},
                {"max_bytes": 2000, "duplicate_window": 5.0},
                {"max_age": 30.0, "max_msgs": 80, "discard": "new"},
                {},
            ]
        ):
            pairs.append(
                (
                    stores[0].create_stream(
                        StreamConfig(f"s{i}", CHANNEL, ("t.>",), storage="memory", **kw)
                    ),
                    stores[1].create_stream(
                        StreamConfig(f"s{i}", CHANNEL, ("t.>",), storage="file", **kw)
                    ),
                )
            )
        now = T0
        for step in range(4000):
            now += rng.random() * 0.5
            mem, sql = rng.choice(pairs)
            op = rng.random()

            def both(
                fn: Callable[[Stream], Any],
                pair: tuple[Stream, Stream] = (mem, sql),
                at: int = step,
            ) -> Any:
                return agree(fn, pair, at)

            if op < 0.6:
                topic = b"t.%d.%d" % (rng.randrange(3), rng.randrange(3))
                body = rng.randbytes(rng.randrange(0, 120))
                msg_id = mid(rng.randrange(400))
                both(lambda s, t=topic, b=body, i=msg_id, n=now: s.append(t, b, i, n))
            elif op < 0.7:
                seq = rng.randrange(max(1, mem.last_seq - 60), mem.last_seq + 2)
                both(lambda s, q=seq: s.remove(q))
            elif op < 0.8:
                start, limit = rng.randrange(0, mem.last_seq + 2), rng.randrange(0, 30)
                subjects = rng.choice([None, ["t.1.*"], ["t.0.0", "t.2.>"], ["t.*.1"]])
                both(lambda s, a=start, n=limit, f=subjects: s.read(a, n, f))
            elif op < 0.85:
                subjects = rng.choice([None, ["t.1.*"], ["t.2.2"]])
                both(lambda s, f=subjects: s.last_for(f))
            elif op < 0.9:
                when = now - rng.random() * 60
                both(lambda s, t=when: s.seq_at_time(t))
            elif op < 0.94:
                both(lambda s, n=now: s.expire(n))
            elif op < 0.945:
                both(lambda s: s.purge())
            else:
                q = rng.randrange(1, mem.last_seq + 2)
                both(lambda s, q=q: s.get(q))
            both(lambda s: (s.first_seq, s.last_seq, s.messages, s.bytes))
            if step % 500 == 0:
                stores[1].commit()
        for mem, sql in pairs:
            check_numbers(mem)
            check_numbers(sql)
            assert everything(mem) == everything(sql)
    finally:
        for s in stores:
            s.close()


# --- SQLite only: durability ------------------------------------------------------------


def file_config(name: str = "s1", **kw: Any) -> StreamConfig:
    return StreamConfig(name, CHANNEL, kw.pop("subjects", ("orders.>", "audit")), **kw)


def test_everything_survives_a_restart(tmp_path: pathlib.Path) -> None:
    cfg = file_config(max_msgs=100, max_age=3600, duplicate_window=60)
    s = open_store(tmp_path)
    st = s.create_stream(cfg)
    fill(st, 10)
    st.remove(4)
    st.remove(1)
    state = ConsumerState("durable", {"deliver": "all", "max": [1, 2]}, 9, 2, {3: 2}, {5, 7})
    st.save_consumer(state)
    purged = s.create_stream(file_config("purged"))
    fill(purged, 5)
    purged.purge()
    s.commit()
    before = (everything(st), st.first_seq, st.last_seq, st.messages, st.bytes)
    s.close()

    s = open_store(tmp_path)
    try:
        st2 = s.stream("s1")
        assert st2 is not None and st2.config == cfg
        assert (everything(st2), st2.first_seq, st2.last_seq, st2.messages, st2.bytes) == before
        assert st2.consumers() == [state]
        p = s.stream("purged")
        assert p is not None and (p.first_seq, p.last_seq, p.messages) == (6, 5, 0)
        assert p.append(b"audit", b"", mid(100), T0) == (6, False)
        # Dedup ids are in the database too.
        assert st2.append(b"audit", b"", mid(10), T0 + 30) == (10, True)
        assert st2.append(b"audit", b"", mid(11), T0 + 30) == (11, False)
    finally:
        s.close()


def test_close_commits_and_deleted_streams_stay_deleted(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    fill(s.create_stream(file_config("keep")), 3)  # not committed: close() commits it
    fill(s.create_stream(file_config("gone")), 3)
    s.delete_stream("gone")
    s.close()
    s = open_store(tmp_path)
    try:
        assert [t.config.name for t in s.streams()] == ["keep"]
        assert s.stream("keep").messages == 3  # type: ignore[union-attr]
    finally:
        s.close()


CHILD = """
import os, sys
from zmqbus.store import ConsumerState, StreamConfig, open_store

data_dir, batch, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = open_store(data_dir)
s = store.create_stream(StreamConfig("k", bytes(16), ("k.>",)))
s.save_consumer(s.consumers()[0] if s.consumers() else ConsumerState("c", {}))
seq = s.last_seq
while True:
    for _ in range(batch):
        seq += 1
        body = b"body-%d-" % seq + b"x" * 100
        got = s.append(b"k.%d" % seq, body, seq.to_bytes(16, "big"), float(seq))
        assert got == (seq, False), (got, seq)
    state = s.consumers()[0]
    state.delivered_seq = seq
    s.save_consumer(state)
    if mode == "exit" and seq >= 3 * batch:
        os._exit(0)  # dies without committing the last batch
    store.commit()
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
"""


def run_child(data_dir: pathlib.Path, batch: int, mode: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(batch), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )


def verify_committed(data_dir: pathlib.Path, committed: int, batch: int) -> int:
    """Every committed message is there once, in order, and only whole batches are."""
    s = open_store(data_dir)
    try:
        st = s.stream("k")
        assert st is not None
        last = st.last_seq
        assert last >= committed and last % batch == 0
        assert (st.first_seq, st.messages) == (1, last)
        seq = 1
        while seq <= last:
            chunk = st.read(seq, 5000)
            for m in chunk:
                assert m.seq == seq and m.topic == b"k.%d" % seq
                assert m.body == b"body-%d-" % seq + b"x" * 100 and m.time == float(seq)
                seq += 1
        assert seq == last + 1
        assert st.bytes == sum(
            len(b"k.%d" % i) + len(b"body-%d-" % i) + 100 for i in range(1, last + 1)
        )
        assert st.consumers()[0].delivered_seq == last
        return last
    finally:
        s.close()


@pytest.mark.timeout(120)
def test_committed_messages_survive_kill_9(tmp_path: pathlib.Path) -> None:
    batch = 100
    committed = 0
    for round_ in range(3):  # each round continues the stream the last one was killed in
        child = run_child(tmp_path, batch, "run")
        assert child.stdout is not None
        lines = 0
        try:
            for line in child.stdout:
                committed = int(line)
                lines += 1
                if lines >= 15 + 7 * round_:
                    break
            else:
                pytest.fail(f"child ended early: {child.stderr.read() if child.stderr else ''}")
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
            if child.stderr:
                child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        last = verify_committed(tmp_path, committed, batch)
        assert last >= committed


def test_uncommitted_writes_are_lost_whole(tmp_path: pathlib.Path) -> None:
    child = run_child(tmp_path, 50, "exit")
    out, err = child.communicate(timeout=50)
    assert child.returncode == 0, err
    assert out.split() == ["50", "100"]
    assert verify_committed(tmp_path, 100, 50) == 100


# --- SQLite only: bad data_dirs and files -------------------------------------------------


def test_data_dir_is_created(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "a" / "b" / "c"
    s = open_store(d)
    s.close()
    assert (d / DB_FILENAME).is_file()


def test_data_dir_that_is_a_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "file"
    f.write_text("not a dir")
    with pytest.raises(StoreCorrupt, match=f"data_dir {f} is not a directory"):
        open_store(f)
    with pytest.raises(StoreCorrupt, match="cannot use data_dir"):
        open_store(f / "below")


def test_database_path_that_is_a_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / DB_FILENAME).mkdir()
    with pytest.raises(StoreCorrupt, match="is not a regular file"):
        open_store(tmp_path)


@pytest.mark.parametrize(
    "content", [b"garbage " * 1000, b"SQLite format 3\x00" + b"\xff" * 5000, b"\x00" * 100]
)
def test_garbage_database_file(tmp_path: pathlib.Path, content: bytes) -> None:
    (tmp_path / DB_FILENAME).write_bytes(content)
    with pytest.raises(StoreCorrupt, match=str(tmp_path / DB_FILENAME)) as info:
        open_store(tmp_path)
    assert not isinstance(info.value, sqlite3.Error)


def test_corrupt_pages_in_a_used_database(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    st = s.create_stream(file_config())
    for i in range(1, 3001):
        st.append(b"audit", os.urandom(200), mid(i), T0 + i)
    s.close()
    db = tmp_path / DB_FILENAME
    data = bytearray(db.read_bytes())
    page = 4096
    rng = random.Random(3)
    for p in range(4, len(data) // page, 3):  # scribble over every third page past the schema
        data[p * page : p * page + 200] = rng.randbytes(200)
    db.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match=str(db)):
        s = open_store(tmp_path)
        try:
            st2 = s.stream("s1")
            assert st2 is not None
            for start in range(1, 3001, 500):
                st2.read(start, 500)
                st2.append(b"audit", b"x" * 300, os.urandom(16), T0 + 5000 + start)
            s.commit()
        finally:
            with contextlib.suppress(StoreError):
                s.close()


def test_foreign_sqlite_database(tmp_path: pathlib.Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a zmqbus store"):
        open_store(tmp_path)


def test_newer_layout_version(tmp_path: pathlib.Path) -> None:
    open_store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreCorrupt, match="layout version 99"):
        open_store(tmp_path)


def test_unreadable_stream_config(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    s.create_stream(file_config())
    s.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute("UPDATE streams SET config = ?", (msgpack.packb({"name": "s1", "bogus": 1}),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="stream 's1' has an unreadable config"):
        open_store(tmp_path)


PROBE = """
import sys
from zmqbus.store import StoreError, open_store
try:
    open_store(sys.argv[1]).close()
    print("opened")
except StoreError as exc:
    print(type(exc).__name__, exc)
"""


def open_unprivileged(path: pathlib.Path) -> str:
    """What open_store(path) says in a process that file permissions bind: as
    root, one without the capabilities that override them (setpriv)."""
    cmd = [sys.executable, "-c", PROBE, str(path)]
    if IS_ROOT:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root writes through file permissions and setpriv is missing")
        caps = "-dac_override,-dac_read_search"
        cmd = [setpriv, "--bounding-set", caps, "--inh-caps", caps, *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=50, cwd=REPO)
    if IS_ROOT and done.returncode != 0 and "setpriv" in done.stderr:
        pytest.skip(f"cannot drop root's capabilities: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_read_only_data_dir(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "ro"
    open_store(d).close()
    d.chmod(0o500)
    try:
        assert open_unprivileged(d) == (
            f"StoreCorrupt data_dir {d} is not readable and writable by this process"
        )
    finally:
        d.chmod(0o700)
    assert open_unprivileged(d) == "opened"


def test_read_only_database_file(tmp_path: pathlib.Path) -> None:
    db = tmp_path / DB_FILENAME
    open_store(tmp_path).close()
    db.chmod(0o400)
    try:
        assert open_unprivileged(tmp_path) == (
            f"StoreCorrupt {db} is not readable and writable by this process"
        )
    finally:
        db.chmod(0o600)


def test_data_dir_that_cannot_be_created(tmp_path: pathlib.Path) -> None:
    tmp_path.chmod(0o500)
    try:
        out = open_unprivileged(tmp_path / "new")
    finally:
        tmp_path.chmod(0o700)
    assert out.startswith(f"StoreCorrupt cannot use data_dir {tmp_path / 'new'}: Permission denied")


def test_a_data_dir_is_used_by_one_store_at_a_time(tmp_path: pathlib.Path) -> None:
    first = open_store(tmp_path)
    try:
        with pytest.raises(StoreError, match="locked: is another process using data_dir") as info:
            open_store(tmp_path)
        assert not isinstance(info.value, StoreCorrupt)
    finally:
        first.close()
    open_store(tmp_path).close()


def test_a_failed_write_rolls_back_to_the_last_commit(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    try:
        st = s.create_stream(file_config())
        fill(st, 50)
        s.commit()
        st.append(b"audit", b"staged", mid(1000), T0 + 60)
        assert isinstance(s.stream("s1"), SqliteStream)
        db = st._db  # type: ignore[attr-defined]
        pages = db.execute("PRAGMA page_count").fetchall()[0][0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
        with pytest.raises(StoreError, match="disk full"):
            for i in range(2000):
                st.append(b"audit", b"x" * 1000, mid(2000 + i), T0 + 61)
        assert (st.first_seq, st.last_seq, st.messages) == (1, 50, 50)
        check_numbers(st)
        db.execute("PRAGMA max_page_count = 1073741823")
        assert st.append(b"audit", b"after", mid(3000), T0 + 62) == (51, False)
        s.commit()
    finally:
        s.close()
    s = open_store(tmp_path)
    try:
        st = s.stream("s1")
        assert st is not None and (st.last_seq, st.messages) == (51, 51)
        check_numbers(st)
    finally:
        s.close()


def test_store_is_usable_from_another_thread(tmp_path: pathlib.Path) -> None:
    import threading

    s = open_store(tmp_path)  # made here, used in the "loop thread"
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            st = s.create_stream(file_config())
            fill(st, 10)
            s.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    t.join(30)
    assert errors == []
    assert s.stream("s1").messages == 10  # type: ignore[union-attr]
    s.close()


# --- SQLite only: memory and speed ------------------------------------------------------


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def append_many(store: Store, s: Stream, n: int, *, batch: int = 1000, size: int = 100) -> float:
    """Append n messages of a ``size``-byte body, committing every ``batch``; seconds taken."""
    body = b"x" * size
    seq = s.last_seq
    topic = b"orders.created"
    took = 0.0
    for _ in range(n // batch):
        ids = os.urandom(16 * batch)  # random, as publishers' ids are; made outside the timing
        start = time.perf_counter()
        for i in range(0, 16 * batch, 16):
            seq += 1
            s.append(topic, body, ids[i : i + 16], T0 + seq * 1e-4)
        store.commit()
        took += time.perf_counter() - start
    return took


@pytest.mark.timeout(180)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_does_not_grow_with_stored_messages(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    try:
        st = s.create_stream(file_config())
        # Warm up: fills SQLite's page cache (CACHE_KIB), the statement cache, the WAL index.
        append_many(s, st, 100_000)
        gc.collect()
        before = rss()
        append_many(s, st, 100_000)
        gc.collect()
        growth = rss() - before
        tracemalloc.start()
        traced = tracemalloc.get_traced_memory()[0]
        append_many(s, st, 10_000)
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced
        tracemalloc.stop()
        assert st.messages == 210_000
        # The process grows far less than 100,000 messages of 100+ bytes would take...
        assert growth < 8 * 1024 * 1024, growth
        # ...and Python holds nothing per message.
        assert traced_growth < 64 * 1024, traced_growth
    finally:
        s.close()


def test_reads_do_not_scan_from_the_start(tmp_path: pathlib.Path) -> None:
    s = open_store(tmp_path)
    try:
        st = s.create_stream(file_config())
        append_many(s, st, 50_000)
        assert isinstance(st, SqliteStream)
        plan = " ".join(
            str(r) for r in st._db.execute("EXPLAIN QUERY PLAN " + st._q_scan, (1, 1)).fetchall()
        )
        assert "INTEGER PRIMARY KEY" in plan or "rowid" in plan, plan
        got = st.read(49_990, 100)
        assert [m.seq for m in got] == list(range(49_990, 50_001))
        assert st.seq_at_time(T0 + 25_000 * 1e-4) == 25_000
    finally:
        s.close()


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not os.environ.get("ZMQBUS_STORE_BENCH"), reason="ZMQBUS_STORE_BENCH=1 runs it")
def test_bench(tmp_path: pathlib.Path) -> None:
    """Figures for the record: RSS over 1M stored 100-byte messages, appends/s."""
    lines = []

    def run(label: str, n: int, *, sync: str = "normal", batch: int = 1000, **kw: Any) -> None:
        s = open_store(tmp_path / label, sync=sync)  # type: ignore[arg-type]
        st = s.create_stream(file_config(**kw))
        gc.collect()
        rss0 = rss()
        steps = []
        took = 0.0
        done = 0
        while done < n:
            k = min(n - done, 100_000)
            took += append_many(s, st, k, batch=batch)
            done += k
            gc.collect()
            steps.append(rss() - rss0)
        lines.append(
            f"{label}: {n:,} x 100-byte appends, sync={sync}, commit per {batch}: "
            f"{n / took:,.0f}/s; RSS growth after 100k {steps[0] / 2**20:.1f} MiB, "
            f"after {n // 1000}k {steps[-1] / 2**20:.1f} MiB; "
            f"file {os.path.getsize(tmp_path / label / DB_FILENAME) / 2**20:.0f} MiB"
        )
        if n >= 1_000_000:
            t = time.perf_counter()
            for start in range(1, n, n // 100):
                st.read(start, 100)
            lines.append(f"  100 reads of 100 across it: {(time.perf_counter() - t) * 1e3:.0f} ms")
            t = time.perf_counter()
            st.read(1, 100, ["nothing.matches"])
            lines.append(f"  a filtered read scanning all of it: {time.perf_counter() - t:.2f} s")
        s.close()

    run("dedup-normal", 1_000_000)
    run("dedup-full", 200_000, sync="full")
    run("nodedup-normal", 1_000_000, duplicate_window=0)
    run("per-message-normal", 20_000, batch=1)
    run("per-message-full", 5_000, sync="full", batch=1)
    print("\n" + "\n".join(lines))


# --- layering -------------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(p.stem for p in STORE_PKG.glob("*.py")))
def test_store_touches_no_socket_and_never_prints(module: str) -> None:
    source = (STORE_PKG / f"{module}.py").read_text()
    assert "print(" not in source
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    assert not {n for n in names if n.split(".")[0] in ("zmq", "socket", "asyncio", "selectors")}
