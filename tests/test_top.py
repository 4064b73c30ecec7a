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


# --- the frame builder ----------------------------------------------------------------

BEFORE: dict[str, Any] = {
    "broker": "zmqbus/9.9",
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


def test_the_slow_consumer_table_sorts_by_each_key_in_turn() -> None:
    before, after = _pair()
    session = top.Top(iter([before, after]).__next__, top.View("tcp://h:1"))
    session.refresh(first=True)
    session.refresh()
    orders = []
    for _ in top.SORTS:
        text = top.render_text(session.frame(), 120)
        orders.append((session.view.sort, _slow_order(text)))
        session.cycle_sort()
    assert orders == [
        ("dropped", ["a", "b", "c"]),
        ("rate", ["b", "a", "c"]),
        ("peer", ["a", "b", "c"]),
    ]
    assert session.view.sort == "dropped"  # round again
    assert "slow consumers (by dropped/s)" in top.render_text(
        top.build_frame(after, before, top.View("x", sort="rate")), 120
    )


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


def test_the_first_frame_has_no_rates_yet() -> None:
    _, after = _pair()
    text = top.render_text(top.build_frame(after, None, top.View("a")), 120)
    assert row(text, "published") == ["-", "1,200"]
    assert row(text, "aaaaaaaaaaaa") == ["510", "-"]


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
    assert max(len(line) for line in out.splitlines()) <= 100  # COLUMNS


@pytest.mark.usefixtures("publishing")
def test_once_during_traffic_shows_a_rate(broker: Broker) -> None:
    r = run_top("--once", "--address", broker.address, "--interval", "0.3", "--sort", "peer")
    assert r.returncode == 0, r.stderr
    rate, total = row(r.stdout, "published")
    assert number(rate) > 0 and number(total) > 0, r.stdout
    assert "slow consumers (by peer)" in r.stdout


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
        assert row(first, "peers")[0] == "2"
        assert "slow consumers (by dropped)" in first
        total = _published(first)
        assert total is not None
        _screen_until(
            tmux,
            lambda s: (_published(s) or (0.0, total[1]))[1] > total[1],
            "the published counter move between two captures",
        )
        tmux("send-keys", "-t", "top", "s")
        _screen_until(tmux, lambda s: "slow consumers (by dropped/s)" in s, "the sort change")
        tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + WAIT
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # the next look for the session
        assert not tmux.alive(), "the session did not end after q"
        assert rc_file.read_text().strip() == "0"
    finally:
        tmux("kill-server", check=False)
