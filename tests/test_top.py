"""``zmqbus top``: the frame built from two STATS snapshots, ``--once`` against a
real broker, and the live view driven as a person would, in tmux.

The tmux test reads the screen (``tmux capture-pane``) until what it waits
for shows, within a deadline; it never sleeps to synchronise.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import free_port

from zmqbus import Broker, Bus, ConnectTimeout, User
from zmqbus.keys import keygen

pytest.importorskip("rich")

from zmqbus import top  # needs rich: skipped above without it

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
WAIT = 20.0  # seconds for a command to finish, or for the screen to show something


def unavailable(reason: str) -> None:
    """Fail under CI, where everything must be installed; skip elsewhere."""
    if IN_CI:
        pytest.fail(f"missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    env.pop("ZMQBUS_ADDRESS", None)
    return env


def run_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqbus", "top", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        env=_env(),
        check=False,
    )


def row(text: str, label: str) -> list[str]:
    """The figures after ``label`` on the first line that has it (tables stand
    side by side, so a line may hold rows of two tables)."""
    match = re.search(rf"(?m)^.*?\b{re.escape(label)}((?:\s+(?:[\d,.%]+|-))+)", text)
    assert match is not None, f"no row {label!r} in:\n{text}"
    return match.group(1).split()


def number(figure: str) -> float:
    return float(figure.replace(",", ""))


def table_rows(text: str, title: str) -> list[list[str]]:
    """The rows of the table whose title starts with ``title`` (the Channels
    and Peers tables stand alone, full width), each split into its cells:
    the lines after its title, header and rule, up to a blank line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
    assert start is not None, f"no table {title!r} in:\n{text}"
    rows = []
    for line in lines[start + 3 :]:
        if not line.strip() or line.startswith("[s]ort"):
            break
        rows.append(line.split())
    return rows


# --- the frame builder ----------------------------------------------------------------

CHANNEL_COLUMNS = ["channel", "msgs_in", "msgs_out", "bytes_in", "peers", "subscriptions"]
PEER_COLUMNS = ["peer", "channel", "msgs_in", "msgs_out", "subscriptions", "dropped"]


def stats_table(columns: list[str], *rows: tuple[Any, ...]) -> list[Any]:
    """A STATS traffic table: the column count, the columns, the rows' cells."""
    return [len(columns), *columns, *(cell for r in rows for cell in r)]


BEFORE: dict[str, Any] = {
    "broker": "zmqbus/9.9",
    "uptime_s": 50.0,
    "peers": 40,
    "channels": 3,
    "subscriptions": 120,
    "queue_groups": 2,
    "pending_confirmations": 7,
    "connections": 41,
    "unjoined_connections": 1,
    "slow_peers": {"aaaaaaaaaaaa": 500, "bbbbbbbbbbbb": 300},
    "counters": {
        "published": 1000,
        "delivered": 3000,
        "messages_in": 1100,
        "messages_out": 3300,
        "dropped_hwm": 800,
        "throttled": 10,
        "errors": 5,
        "connects": 40,
    },
    "errors": {429: 4, 406: 1},
    "limits": {
        "max_peers": 50,
        "max_channels": 10000,
        "max_connections": 12000,
        "max_streams": 1000,
        "topic_cache_bytes": 1 << 20,
    },
    "refused": {"max_subscriptions_per_peer": 4},
    "denied": {"billing": 1},
    "rate_limited": {},
    "streams": {"streams": 2, "stored_messages": 900, "stored_bytes": 3 << 20, "consumers": 5},
    "topic_cache_bytes": 2048,
    "top_channels": stats_table(
        CHANNEL_COLUMNS,
        ("c1c1c1c1c1c1", 1000, 3000, 64000, 30, 100),
        ("c2c2c2c2c2c2", 100, 0, 1000, 10, 20),
    ),
    "top_peers": stats_table(
        PEER_COLUMNS,
        ("p1p1p1p1p1p1", "c1c1c1c1c1c1", 0, 2000, 50, 500),
        ("p2p2p2p2p2p2", "c1c1c1c1c1c1", 1000, 0, 0, 0),
    ),
}


def _after() -> dict[str, Any]:
    after = copy.deepcopy(BEFORE)
    counters = after["counters"]
    counters["published"] += 200  # 100/s over 2 s
    counters["delivered"] += 600
    counters["messages_in"] += 210
    counters["messages_out"] += 620
    counters["dropped_hwm"] += 30  # with 10 throttled and 2 unroutable: 21/s
    counters["throttled"] += 10
    counters["unroutable"] = 2
    counters["errors"] += 3
    after["peers"] = 45  # 90% of max_peers
    after["slow_peers"] = {"aaaaaaaaaaaa": 510, "bbbbbbbbbbbb": 340, "cccccccccccc": 6}
    after["errors"] = {429: 7, 406: 1}
    after["uptime_s"] = 52.0  # as the snapshots' own times: 2 s
    after["top_channels"] = stats_table(
        CHANNEL_COLUMNS,
        ("c1c1c1c1c1c1", 1200, 3600, 76800, 30, 100),  # 100/s in, 300/s out, 6,400 B/s
        ("c2c2c2c2c2c2", 110, 0, 1100, 10, 20),  # 5/s in
        ("c3c3c3c3c3c3", 4, 4, 40, 1, 1),  # not listed before: no rates
    )
    after["top_peers"] = stats_table(
        PEER_COLUMNS,
        ("p1p1p1p1p1p1", "c1c1c1c1c1c1", 0, 2400, 50, 510),  # 200/s out, 5 dropped/s
        ("p2p2p2p2p2p2", "c1c1c1c1c1c1", 1200, 0, 0, 0),  # 100/s in
        ("p3p3p3p3p3p3", "c2c2c2c2c2c2", 6, 0, 0, 0),
    )
    return after


def _pair() -> tuple[top.Snapshot, top.Snapshot]:
    return top.Snapshot(BEFORE, 100.0, 1.7e9), top.Snapshot(_after(), 102.0, 1.7e9 + 2)


def test_rates_are_counter_deltas_over_the_time_between_snapshots() -> None:
    before, after = _pair()
    rates = top.counter_rates(after, before)
    assert rates["published"] == 100.0
    assert rates["delivered"] == 300.0
    assert rates["messages in"] == 105.0
    assert rates["messages out"] == 310.0
    assert rates["dropped"] == 21.0  # dropped_hwm + throttled + unroutable (+ replies_lost)
    assert rates["errors"] == 1.5
    assert rates["requests"] == 0.0  # a counter STATS leaves out has not moved
    assert set(rates) == {label for label, _ in top.RATES}
    # No previous snapshot: unknown, not zero; a counter that went down: the broker restarted.
    assert set(top.counter_rates(after, None).values()) == {None}
    restarted = top.Snapshot({**_after(), "counters": {"published": 3}}, 104.0, 1.7e9 + 4)
    assert top.counter_rates(restarted, after)["published"] is None


def test_the_frame_shows_rates_state_slow_consumers_and_refusals() -> None:
    before, after = _pair()
    text = top.render_text(top.build_frame(after, before, top.View("tcp://h:1", ascii=True)), 120)
    assert "\x1b" not in text
    assert text.splitlines()[0].startswith("zmqbus top  tcp://h:1  zmqbus/9.9")
    for title in ("rates", "state", "slow consumers (by dropped)", "refusals and denials"):
        assert title in text
    assert row(text, "published") == ["100.0", "1,200"]  # /s, total
    assert row(text, "delivered") == ["300.0", "3,600"]
    assert row(text, "messages in") == ["105.0", "1,310"]
    assert row(text, "messages out") == ["310.0", "3,920"]
    assert row(text, "dropped") == ["21.0", "852"]
    assert row(text, "errors") == ["1.5", "8"]
    assert row(text, "peers") == ["45", "50", "90%"]  # now, limit, use
    assert row(text, "subscriptions") == ["120"]
    assert row(text, "connections") == ["41", "12,000", "0%"]
    assert row(text, "pending confirmations") == ["7"]
    assert row(text, "streams") == ["2", "1,000", "0%"]
    assert row(text, "stream consumers") == ["5"]
    assert row(text, "stored messages") == ["900"]
    assert "3.0 MiB" in text
    # Slow consumers: dropped, and per second since the last snapshot; cccc was not
    # among the (fewer than 10) slow peers before, so it had lost none.
    assert row(text, "aaaaaaaaaaaa") == ["510", "5.0"]
    assert row(text, "bbbbbbbbbbbb") == ["340", "20.0"]
    assert row(text, "cccccccccccc") == ["6", "3.0"]
    assert re.search(r"error\s+429 LIMIT_REACHED\s+7\s+1\.5", text), text
    assert re.search(r"limit\s+max_subscriptions_per_peer\s+4\s+0\.0", text), text
    assert re.search(r"denied\s+billing\s+1\s+0\.0", text), text


def _slow_order(text: str) -> list[str]:
    return re.findall(r"\b([abc])\1{11}\b", text)


def _frames_by_sort() -> tuple[top.Top, list[tuple[str, str]]]:
    """A session with both snapshots, and each sort key in turn with the frame
    it renders at 120 columns (``s`` pressed between them)."""
    before, after = _pair()
    session = top.Top(iter([before, after]).__next__, top.View("tcp://h:1"))
    session.refresh(first=True)
    session.refresh()
    frames = []
    for _ in top.SORTS:
        frames.append((session.view.sort, top.render_text(session.frame(), 120)))
        session.cycle_sort()
    return session, frames


def test_the_slow_consumer_table_sorts_by_each_key_in_turn() -> None:
    before, after = _pair()
    session, frames = _frames_by_sort()
    orders = [(sort, _slow_order(text)) for sort, text in frames]
    assert orders == [
        ("in", ["a", "b", "c"]),  # no such column: by dropped
        ("out", ["a", "b", "c"]),
        ("dropped", ["a", "b", "c"]),
        ("rate", ["b", "a", "c"]),
        ("name", ["a", "b", "c"]),
    ]
    assert session.view.sort == "in"  # round again
    assert "slow consumers (by dropped/s)" in top.render_text(
        top.build_frame(after, before, top.View("x", sort="rate")), 120
    )
    # "peer", the name key's first spelling, is still taken.
    assert top.Top(iter([after]).__next__, top.View("x", sort="peer")).view.sort == "name"


def test_a_failed_refresh_is_shown_and_the_last_figures_kept() -> None:
    before, after = _pair()
    answers: list[Callable[[], top.Snapshot]] = [lambda: before, lambda: after]

    def fetch() -> top.Snapshot:
        if answers:
            return answers.pop(0)()
        raise ConnectTimeout("tcp://h:1", 5)

    session = top.Top(fetch, top.View("tcp://h:1"))
    session.refresh(first=True)
    session.refresh()
    session.refresh()
    text = top.render_text(session.frame(), 120)
    assert "no answer from broker at tcp://h:1 within 5s" in text.splitlines()[1]
    assert row(text, "published") == ["100.0", "1,200"]
    with pytest.raises(ConnectTimeout):  # the first refresh raises: the broker was never reached
        top.Top(fetch, top.View("tcp://h:1")).refresh(first=True)


def test_a_non_admin_snapshot_shows_its_channel_and_says_so() -> None:
    own = {"broker": "zmqbus/9.9", "peers": 2, "channels": 1, "subscriptions": 3,
           "queue_groups": 0, "limits": {"max_peers": 10}}  # fmt: skip
    text = top.render_text(top.build_frame(top.Snapshot(own, 1.0, 1.7e9), None, top.View("a")))
    assert "not an admin key" in text
    assert row(text, "peers") == ["2", "10", "20%"]
    assert "rates" not in text and "slow consumers" not in text
    assert "Channels" not in text  # an older broker: no table
    # Its own channel's traffic, from the one row STATS gives it; no peers.
    mine = {**own, "top_channels": stats_table(CHANNEL_COLUMNS, ("c9c9c9c9c9c9", 7, 8, 9, 2, 3))}
    text = top.render_text(top.build_frame(top.Snapshot(mine, 1.0, 1.7e9), None, top.View("a")))
    assert "Channels (by in/s)" in text and "Peers" not in text
    assert row(text, "c9c9c9c9c9c9") == ["-", "-", "7", "8", "2", "3", "-"]


def test_the_first_frame_has_no_rates_yet() -> None:
    _, after = _pair()
    text = top.render_text(top.build_frame(after, None, top.View("a")), 120)
    assert row(text, "published") == ["-", "1,200"]
    assert row(text, "aaaaaaaaaaaa") == ["510", "-"]
    assert row(text, "c1c1c1c1c1c1") == ["-", "-", "1,200", "3,600", "30", "100", "-"]


# --- channels and peers -------------------------------------------------------------


def test_channel_and_peer_rates_are_row_deltas_matched_by_label() -> None:
    before, after = _pair()
    channels = {r["channel"]: r for r in top.traffic_rows(after, before, "top_channels", "channel")}
    assert channels["c1c1c1c1c1c1"]["msgs_in/s"] == 100.0
    assert channels["c1c1c1c1c1c1"]["msgs_out/s"] == 300.0
    assert channels["c1c1c1c1c1c1"]["bytes_in/s"] == 6400.0
    assert channels["c2c2c2c2c2c2"]["msgs_in/s"] == 5.0
    # Not among the busiest before: what it had then is unknown.
    assert channels["c3c3c3c3c3c3"]["msgs_in/s"] is None
    peers = {r["peer"]: r for r in top.traffic_rows(after, before, "top_peers", "peer")}
    assert peers["p1p1p1p1p1p1"]["msgs_out/s"] == 200.0
    assert peers["p1p1p1p1p1p1"]["dropped/s"] == 5.0
    assert peers["p2p2p2p2p2p2"]["msgs_in/s"] == 100.0
    assert peers["p3p3p3p3p3p3"]["msgs_in/s"] is None
    # The broker's time between the snapshots counts, not the time between answers
    # (an answer may be up to 0.1 s old).
    later = top.Snapshot({**after.stats, "uptime_s": 54.0}, after.at, after.wall)
    (c1, *_) = top.traffic_rows(later, before, "top_channels", "channel")
    assert c1["msgs_in/s"] == 50.0 and top.counter_rates(later, before)["published"] == 50.0
    # A table that is missing or malformed has no rows.
    for bad in (None, [], [0], [3, "a"], [1, ["a"], 2], "abc", {"a": 1}):
        assert top.stats_table({"top_channels": bad}, "top_channels") == []


def test_the_frame_shows_channel_and_peer_tables_with_rates() -> None:
    before, after = _pair()
    text = top.render_text(top.build_frame(after, before, top.View("tcp://h:1", ascii=True)), 100)
    assert "Channels (by in/s)" in text and "Peers (by in/s)" in text
    # channel: in/s, out/s, in, out, peers, subs, bytes in/s
    assert row(text, "c1c1c1c1c1c1") == ["100.0", "300.0", "1,200", "3,600", "30", "100", "6.2"]
    assert "6.2 KiB/s" in text
    assert row(text, "c3c3c3c3c3c3") == ["-", "-", "4", "4", "1", "1", "-"]
    # peer: its channel, in/s, out/s, in, out, subs, dropped, dropped/s
    peers = {cells[0]: " ".join(cells[1:]) for cells in table_rows(text, "Peers")}
    assert peers["p1p1p1p1p1p1"] == "c1c1c1c1c1c1 0.0 200.0 0 2,400 50 510 5.0"
    assert peers["p3p3p3p3p3p3"] == "c2c2c2c2c2c2 - - 6 0 0 0 -"
    assert max(len(line) for line in text.splitlines()) <= 100


def _labels(text: str, kind: str) -> list[str]:
    return re.findall(rf"\b({kind}\d)\1{{5}}\b", text)


def test_the_channel_and_peer_tables_sort_by_each_key_in_turn() -> None:
    seen = [
        (
            sort,
            re.findall(r"(Channels|Peers) \(by ([^)]+)\)", text),
            _labels(text, "c")[:3],
            _labels(text, "p"),
        )
        for sort, text in _frames_by_sort()[1]
    ]
    c123, p123 = ["c1", "c2", "c3"], ["p1", "p2", "p3"]
    assert seen == [
        ("in", [("Channels", "in/s"), ("Peers", "in/s")], c123, ["p2", "p1", "p3"]),
        ("out", [("Channels", "out/s"), ("Peers", "out/s")], c123, p123),
        # Channels have no drops: they keep their own order, and say so.
        ("dropped", [("Channels", "in/s"), ("Peers", "dropped")], c123, p123),
        ("rate", [("Channels", "in/s"), ("Peers", "dropped/s")], c123, p123),
        ("name", [("Channels", "name"), ("Peers", "name")], c123, p123),
    ]


def test_on_a_screen_the_tables_show_the_rows_that_fit() -> None:
    before, after = _pair()
    full = top.render_text(top.build_frame(after, before, top.View("a", keys=True)), 120)
    assert "more" not in full and "[s]ort by in/s > out/s > dropped > dropped/s > name" in full
    height = len(full.splitlines()) - 2  # two lines short
    view = top.View("a", keys=True, width=120, height=height)
    text = top.render_text(top.build_frame(after, before, view), 120)
    assert len(text.splitlines()) <= height
    # Two lines each: a row, and "... 2 more" for the rows that do not fit.
    assert len(re.findall(r"\.\.\.\s+2 more", text)) == 2
    assert text.splitlines()[-1].startswith("[s]ort")  # the footer stays


# --- zmqbus top --once against a broker ---------------------------------------------


@pytest.fixture
def traffic(broker: Broker, make_bus: Callable[..., Bus]) -> tuple[Bus, Bus]:
    """A publisher and a subscriber (to orders.>) on one channel, and a memory
    stream ORDERS on orders.>."""
    pub, sub = make_bus(), make_bus()
    sub.subscribe("orders.>", lambda msg: None)
    pub.add_stream("ORDERS", ["orders.>"], storage="memory")
    return pub, sub


@pytest.fixture
def publishing(traffic: tuple[Bus, Bus]) -> Iterator[None]:
    """Steady traffic from a thread: a confirmed publish every 10 ms."""
    pub, _ = traffic
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.01):
            pub.publish("orders.tick", b"x" * 64)

    thread = threading.Thread(target=loop, name="traffic", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(WAIT)


def test_once_prints_the_brokers_figures(broker: Broker, traffic: tuple[Bus, Bus]) -> None:
    pub, _ = traffic
    for i in range(25):
        pub.publish("orders.created", f"order {i}".encode())
    r = run_top("--once", "--address", broker.address, "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b" not in out  # not a terminal: plain text
    assert out.startswith(f"zmqbus top  {broker.address}  zmqbus/")
    assert row(out, "published") == ["0.0", "25"]  # nothing published during the frame
    assert row(out, "delivered") == ["0.0", "25"]
    assert row(out, "dropped") == ["0.0", "0"]
    assert row(out, "peers")[0] == "2"
    assert row(out, "channels")[0] == "1"
    assert row(out, "subscriptions") == ["1"]
    assert row(out, "streams")[0] == "1"
    assert row(out, "stored messages") == ["25"]
    assert row(out, "pending confirmations") == ["0"]
    assert re.search(r"slow consumers \(by dropped\)", out)
    # channel, in/s, out/s, in, out, peers, subs, bytes in/s (its number and unit)
    ((label, *figures),) = table_rows(out, "Channels (by in/s)")
    assert figures[:6] == ["0.0", "0.0", "25", "25", "2", "1"] and figures[6] == "0", out
    # peer, channel, in/s, out/s, in, out, subs, dropped, dropped/s: the publisher, then
    # the subscriber (as busy: the broker's order, then the label)
    peers = sorted(table_rows(out, "Peers (by in/s)"), key=lambda cells: cells[6])
    assert [cells[1:] for cells in peers] == [
        [label, "0.0", "0.0", "25", "0", "0", "0", "0.0"],
        [label, "0.0", "0.0", "0", "25", "1", "0", "0.0"],
    ], out
    assert max(len(line) for line in out.splitlines()) <= 100  # COLUMNS


@pytest.mark.usefixtures("publishing")
def test_once_during_traffic_shows_a_rate(broker: Broker) -> None:
    # "peer" is the name key's first spelling, still taken.
    r = run_top("--once", "--address", broker.address, "--interval", "0.3", "--sort", "peer")
    assert r.returncode == 0, r.stderr
    rate, total = row(r.stdout, "published")
    assert number(rate) > 0 and number(total) > 0, r.stdout
    assert "slow consumers (by name)" in r.stdout


@pytest.mark.usefixtures("publishing")
def test_once_during_traffic_shows_each_channels_and_peers_rates(broker: Broker) -> None:
    r = run_top("--once", "--address", broker.address, "--interval", "0.5", "--sort", "out")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    ((label, in_rate, out_rate, msgs_in, msgs_out, npeers, subs, *_),) = table_rows(
        out, "Channels (by out/s)"
    )
    assert number(in_rate) > 0 and number(out_rate) > 0, out
    assert number(msgs_in) > 0 and number(msgs_out) > 0 and (npeers, subs) == ("2", "1"), out
    # By out/s: the subscriber, then the publisher.
    sub, pub = table_rows(out, "Peers (by out/s)")
    assert sub[1] == pub[1] == label, out
    assert sub[6] == "1" and number(sub[3]) > 0 and number(sub[2]) == 0, out  # out, not in
    assert pub[6] == "0" and number(pub[2]) > 0 and number(pub[3]) == 0, out  # in, not out


def test_an_unreachable_broker_exits_3() -> None:
    r = run_top("--once", "--address", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert r.returncode == 3
    assert "no answer from broker" in r.stderr and not r.stdout


def test_keys_admin_sees_all_others_their_channel_a_refused_key_exits_3(tmp_path: Path) -> None:
    server_public, server_secret = keygen("broker", tmp_path)
    ops_public, ops_secret = keygen("ops", tmp_path)
    app_public, app_secret = keygen("app", tmp_path)
    _, stranger_secret = keygen("stranger", tmp_path)
    users = [User("ops", ops_public, admin=True), User("app", app_public)]
    with Broker("tcp://127.0.0.1:0", secret_key=server_secret, users=users) as broker:
        base = ("--once", "--address", broker.address, "--interval", "0.1")
        base += ("--server-key", str(server_public))
        r = run_top(*base, "--key", str(ops_secret))
        assert r.returncode == 0, r.stderr
        assert row(r.stdout, "published") == ["0.0", "0"]
        r = run_top(*base, "--key", str(app_secret))
        assert r.returncode == 0, r.stderr
        assert "not an admin key" in r.stdout and "published" not in r.stdout
        r = run_top(*base, "--key", str(stranger_secret))
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert "refused" in r.stderr


# --- the live view, as a person sees it -----------------------------------------------


class Tmux:
    """A tmux server of the test's own (its own socket), one session."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=_env(),
            check=check,
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self("has-session", "-t", "top", check=False).returncode == 0


def _screen_until(tmux: Tmux, wanted: Callable[[str], bool], what: str) -> str:
    """Read the screen until ``wanted`` says yes; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.screen()
        if wanted(screen):
            return screen
        time.sleep(0.1)  # the next look at the screen
    pytest.fail(f"the screen never showed {what}; last screen:\n{screen}")


def _published(screen: str) -> tuple[float, int] | None:
    match = re.search(r"\bpublished\s+([\d,.]+)\s+([\d,]+)", screen)
    if match is None:
        return None
    return number(match.group(1)), int(number(match.group(2)))


def _figures(cells: list[str]) -> list[float] | None:
    try:
        return [number(cell) for cell in cells]
    except ValueError:
        return None  # "-": no rate yet


def _channel(screen: str) -> tuple[float, float, int] | None:
    """in/s, out/s and messages in of the one channel on the screen, once it has rates."""
    if not re.search(r"(?m)^Channels \(by ", screen):
        return None
    rows = table_rows(screen, "Channels")
    figures = _figures(rows[0][1:5]) if len(rows) == 1 else None
    if figures is None:
        return None
    return figures[0], figures[1], int(figures[2])


def _peers(screen: str) -> list[tuple[float, float]] | None:
    """(in/s, out/s) of each peer on the screen, once they all have rates."""
    if not re.search(r"(?m)^Peers \(by ", screen):
        return None
    rates = [_figures(cells[2:4]) for cells in table_rows(screen, "Peers")]
    if not rates or any(rate is None for rate in rates):
        return None
    return sorted((rate[0], rate[1]) for rate in rates if rate is not None)


def _flowing(screen: str) -> bool:
    """The channel moves messages in and out, a peer publishes, another receives."""
    channel, peers = _channel(screen), _peers(screen)
    if channel is None or peers is None or len(peers) != 2:
        return False
    (sub_in, sub_out), (pub_in, pub_out) = peers  # sorted: the publisher's in/s is larger
    return channel[0] > 0 and channel[1] > 0 and pub_in > 0 == pub_out and sub_out > 0 == sub_in


@pytest.mark.usefixtures("publishing")
def test_live_view_in_tmux_refreshes_sorts_and_quits_on_q(broker: Broker, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        unavailable("tmux is not installed (apt-get install tmux)")
    tmux = Tmux(tmp_path / "tmux.sock")
    rc_file = tmp_path / "rc"
    command = (
        f"cd {shlex.quote(str(ROOT))} && "
        f"{shlex.quote(sys.executable)} -m zmqbus top --address {shlex.quote(broker.address)}; "
        f"echo $? > {shlex.quote(str(rc_file))}"
    )
    tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", command)
    try:
        first = _screen_until(
            tmux, lambda s: (_published(s) or (0.0, 0))[0] > 0, "a non-zero published rate"
        )
        assert "zmqbus top" in first and "[s]ort [q]uit" in first
        assert "[s]ort by in/s > out/s > dropped > dropped/s > name (now in/s)" in first
        assert row(first, "peers")[0] == "2"
        assert "slow consumers (by dropped)" in first
        total = _published(first)
        assert total is not None
        _screen_until(
            tmux,
            lambda s: (_published(s) or (0.0, total[1]))[1] > total[1],
            "the published counter move between two captures",
        )
        # Per channel and per peer: rates while traffic flows, and totals that move.
        flowing = _screen_until(tmux, _flowing, "channel and peer rates of the traffic")
        channel = _channel(flowing)
        assert channel is not None
        _screen_until(
            tmux,
            lambda s: _flowing(s) and (_channel(s) or (0.0, 0.0, channel[2]))[2] > channel[2],
            "the channel's messages in move between two captures",
        )
        tmux("send-keys", "-t", "top", "s")
        _screen_until(
            tmux,
            lambda s: "Channels (by out/s)" in s and "Peers (by out/s)" in s,
            "the tables sorted by out/s",
        )
        tmux("send-keys", "-t", "top", "s", "s")  # by dropped, then by dropped/s
        _screen_until(
            tmux,
            lambda s: "slow consumers (by dropped/s)" in s and "Peers (by dropped/s)" in s,
            "the sort change",
        )
        tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + WAIT
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # the next look for the session
        assert not tmux.alive(), "the session did not end after q"
        assert rc_file.read_text().strip() == "0"
    finally:
        tmux("kill-server", check=False)
