"""``zmqbus top``: a live terminal view of a broker, refreshed from its STATS.

Fetching (``fetch``, ``Top.refresh``) is kept apart from rendering
(``build_frame``, a pure function of two STATS snapshots), so a frame can be
built, and tested, from plain dicts. Rates are counter deltas between two
snapshots over the time between them (the broker's, from ``uptime_s``, when
both have it); STATS carries no rates of its own. The same holds per channel
and per peer, for the rows of STATS's ``top_channels`` and ``top_peers``.

Needs ``rich`` (``pip install 'zmqbus[top]'``). The ``zmqbus`` command
(``cli.py``) runs it; this module writes to the terminal only through
``run_live``'s rich console, and hands ``--once`` frames back as text.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NoReturn, TextIO

import zmq
from rich import box
from rich.color import ColorSystem
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .admin import broker_stats
from .errors import ZmqbusError
from .protocol import ErrorCode

__all__ = [
    "RATES",
    "SORTS",
    "SORT_ALIASES",
    "Snapshot",
    "Top",
    "View",
    "build_frame",
    "counter_rates",
    "fetch",
    "frames",
    "render_text",
    "run_live",
    "stats_table",
    "traffic_rows",
]

# The rows of the rates table: a label and the STATS counters it sums.
RATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("published", ("published",)),
    ("delivered", ("delivered",)),
    ("messages in", ("messages_in",)),
    ("messages out", ("messages_out",)),
    ("requests", ("requests",)),
    ("replies", ("replies",)),
    # As the Prometheus family zmqbus_dropped_total sums them (docs/metrics.md).
    ("dropped", ("dropped_hwm", "unroutable", "throttled", "replies_lost")),
    ("errors", ("errors",)),
    ("connects", ("connects",)),
    ("disconnects", ("disconnects",)),
)

# Sort keys of the channel, peer and slow-consumer tables, in the order `s`
# cycles through them: messages in or out per second, dropped, dropped per
# second, name. A table without the key's column keeps its own first order.
SORTS = ("in", "out", "dropped", "rate", "name")
SORT_ALIASES = {"peer": "name"}  # the name key's first spelling (--sort peer)
_SORT_TITLES = {
    "in": "in/s",
    "out": "out/s",
    "dropped": "dropped",
    "rate": "dropped/s",
    "name": "name",
}

SLOW_PEERS_SHOWN = 10  # STATS names at most the 10 slowest peers
REFUSALS_SHOWN = 10

# A header rule of plain hyphens, for output that is not a terminal.
_ASCII_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)


@dataclass(frozen=True)
class Snapshot:
    """One STATS answer, and when it came (``at``: monotonic seconds, for
    rates; ``wall``: epoch seconds, for the clock in the header)."""

    stats: Mapping[str, Any]
    at: float
    wall: float


@dataclass(frozen=True)
class View:
    """How to draw a frame: the broker's ``address`` and the refresh
    ``interval`` (for the header), the tables' ``sort`` key (one of
    ``SORTS``), ``keys``: show the key help (the live view), ``ascii``: plain
    hyphen rules (text for scripts), ``error``: why the last refresh failed,
    if it did; ``width`` and ``height``: the screen's, to fit the channel and
    peer tables to (``height`` None: every row, for text)."""

    address: str
    interval: float = 1.0
    sort: str = "in"
    keys: bool = False
    ascii: bool = False
    error: str | None = None
    width: int = 100
    height: int | None = None


def fetch(
    address: str,
    *,
    timeout: float = 5.0,
    server_key: str | None = None,
    key: str | None = None,
) -> Snapshot:
    """Ask the broker at ``address`` for STATS once (``admin.broker_stats``)."""
    stats = broker_stats(address, timeout=timeout, server_key=server_key, key=key)
    return Snapshot(stats, time.monotonic(), time.time())


# --- numbers ----------------------------------------------------------------------


def _per_second(now: int | None, before: int | None, seconds: float) -> float | None:
    """The rate of a monotonic count; None when unknown: a side missing, no
    time between them, or the count went down (the broker restarted)."""
    if now is None or before is None or seconds <= 0 or now < before:
        return None
    return (now - before) / seconds


def _counter(stats: Mapping[str, Any], names: Sequence[str]) -> int | None:
    counters = stats.get("counters")
    if not isinstance(counters, Mapping):
        return None  # not admin: STATS shows no traffic
    # A counter STATS leaves out has not moved since the broker started.
    return sum(int(counters.get(name, 0)) for name in names)


def _seconds(current: Snapshot, previous: Snapshot | None) -> float:
    """The time between two snapshots: the broker's (``uptime_s``, when it
    was counted, however old the broker let its answer be) if both have it
    and it moved on, else the time between the answers; 0 without
    ``previous``."""
    if previous is None:
        return 0.0
    now, before = current.stats.get("uptime_s"), previous.stats.get("uptime_s")
    if isinstance(now, int | float) and isinstance(before, int | float) and now > before:
        return float(now - before)
    return current.at - previous.at


def counter_rates(current: Snapshot, previous: Snapshot | None) -> dict[str, float | None]:
    """Per second, for each row of ``RATES``: its counters' growth from
    ``previous`` to ``current`` (None: unknown, as on the first frame)."""
    out: dict[str, float | None] = {}
    seconds = _seconds(current, previous)
    for label, names in RATES:
        if previous is None:
            out[label] = None
            continue
        out[label] = _per_second(
            _counter(current.stats, names), _counter(previous.stats, names), seconds
        )
    return out


def stats_table(stats: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """The rows of the STATS table ``key`` (``top_channels``, ``top_peers``:
    one array of the column count, the column names, then the rows' cells),
    each as a map by column name, in the broker's order; [] if absent or
    malformed."""
    table = stats.get(key)
    if not isinstance(table, Sequence) or isinstance(table, str | bytes) or not table:
        return []
    width = table[0]
    if type(width) is not int or width <= 0 or len(table) < 1 + width:
        return []
    names = table[1 : 1 + width]
    if not all(isinstance(name, str) for name in names):
        return []
    cells = table[1 + width :]
    return [
        dict(zip(names, cells[at : at + width], strict=True))
        for at in range(0, len(cells) - width + 1, width)
    ]


# The counters of a channel or peer row that get a rate, as "<name>/s".
_RATED = ("msgs_in", "msgs_out", "bytes_in", "dropped")


def traffic_rows(
    current: Snapshot, previous: Snapshot | None, key: str, name: str
) -> list[dict[str, Any]]:
    """The rows of the STATS table ``key`` of ``current`` (see
    ``stats_table``), each with its counters' rates since ``previous``
    (``msgs_in/s``...), matched by the column ``name``: None for a row
    ``previous`` does not have (the table holds the busiest only, so what
    it had before is unknown)."""
    rows = stats_table(current.stats, key)
    before: dict[Any, dict[str, Any]] = {}
    if previous is not None:
        before = {row.get(name): row for row in stats_table(previous.stats, key)}
    seconds = _seconds(current, previous)
    for row in rows:
        was = before.get(row.get(name))
        for column in _RATED:
            if column in row:
                then = was.get(column) if was is not None else None
                row[f"{column}/s"] = _per_second(
                    row[column] if isinstance(row[column], int) else None,
                    then if isinstance(then, int) else None,
                    seconds,
                )
    return rows


def _mapping(stats: Mapping[str, Any], key: str) -> Mapping[str, int]:
    value = stats.get(key)
    return value if isinstance(value, Mapping) else {}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _bytes(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    if value < 1024:
        return f"{value} B"
    size, units = value / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{size:,.1f} {units[0]}"


def _share(value: Any, limit: Any) -> float | None:
    """``value`` as a share of ``limit``; None without a limit."""
    if not isinstance(value, int) or not isinstance(limit, int) or limit <= 0:
        return None
    return value / limit


def _use(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.0f}%"


# --- the frame --------------------------------------------------------------------


def _table(title: str, view: View, *columns: str, names: int = 1) -> Table:
    """A table of ``columns``, the first ``names`` of them names (to the left)
    and the rest figures (to the right)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=_ASCII_HEAD if view.ascii else box.SIMPLE_HEAD,
        header_style="bold",
        show_edge=False,
        min_width=len(title),  # the title on one line
    )
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < names else "right", no_wrap=True)
    return table


def _header(current: Snapshot, view: View) -> Text:
    stats = current.stats
    clock = datetime.fromtimestamp(current.wall).strftime("%H:%M:%S")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("zmqbus top", style="bold")
    text.append(f"  {view.address}  {stats.get('broker', '?')}")
    uptime = stats.get("uptime_s")
    if isinstance(uptime, int | float):
        text.append(f"  up {_duration(uptime)}")
    text.append(f"  {clock}, every {view.interval:g}s")
    if view.keys:
        text.append("   [s]ort [q]uit", style="dim")
    return text


def _duration(seconds: float) -> str:
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _footer(view: View) -> Text:
    order = " > ".join(_SORT_TITLES[key] for key in SORTS)
    text = Text(no_wrap=True, overflow="ellipsis", style="dim")
    text.append(f"[s]ort by {order} (now {_SORT_TITLES[view.sort]})   [q]uit, or Ctrl-C")
    return text


def _rates_table(current: Snapshot, previous: Snapshot | None, view: View) -> Table:
    table = _table("rates", view, "", "/s", "total")
    rates = counter_rates(current, previous)
    for label, names in RATES:
        rate = rates[label]
        style = "red" if label in ("dropped", "errors") and rate else ""
        table.add_row(label, _rate(rate), _count(_counter(current.stats, names)), style=style)
    return table


def _state_table(current: Snapshot, view: View) -> Table:
    stats = current.stats
    limits = _mapping(stats, "limits")
    streams = _mapping(stats, "streams")
    table = _table("state", view, "", "now", "limit", "use")
    rows: list[tuple[str, Any, str | None]] = [
        ("peers", stats.get("peers"), "max_peers"),
        ("channels", stats.get("channels"), "max_channels"),
        ("subscriptions", stats.get("subscriptions"), None),
        ("queue groups", stats.get("queue_groups"), None),
        ("connections", stats.get("connections"), "max_connections"),
        ("unjoined connections", stats.get("unjoined_connections"), None),
        ("pending confirmations", stats.get("pending_confirmations"), None),
        ("streams", streams.get("streams"), "max_streams"),
        ("stream consumers", streams.get("consumers"), None),
        ("stored messages", streams.get("stored_messages"), None),
    ]
    for label, value, limit_key in rows:
        if value is None:
            continue  # a non-admin STATS leaves it out
        limit = limits.get(limit_key) if limit_key else None
        share = _share(value, limit)
        style = "yellow" if share is not None and share >= 0.8 else ""
        table.add_row(
            label, _count(value), _count(limit) if limit else "", _use(share), style=style
        )
    for label, value, limit in (
        ("stored bytes", streams.get("stored_bytes"), None),
        ("topic cache", stats.get("topic_cache_bytes"), limits.get("topic_cache_bytes")),
    ):
        if value is not None:
            share = _share(value, limit)
            table.add_row(label, _bytes(value), _bytes(limit) if limit else "", _use(share))
    return table


def _sorted_peers(
    current: Mapping[str, int], rates: Mapping[str, float | None], sort: str
) -> list[str]:
    if sort == "name":
        return sorted(current)
    if sort == "rate":
        return sorted(current, key=lambda name: (-(rates[name] or 0.0), -current[name], name))
    return sorted(current, key=lambda name: (-current[name], name))  # by dropped


def _slow_table(current: Snapshot, previous: Snapshot | None, view: View) -> Table:
    slow = _mapping(current.stats, "slow_peers")
    before = _mapping(previous.stats, "slow_peers") if previous is not None else None
    seconds = _seconds(current, previous)
    rates: dict[str, float | None] = {}
    for name, dropped in slow.items():
        was: int | None = None
        if before is not None:
            # STATS names only the slowest peers that lost any: a peer missing
            # from a list that was not full had lost none.
            was = before.get(name, 0 if len(before) < SLOW_PEERS_SHOWN else None)
        rates[name] = _per_second(dropped, was, seconds)
    sort = view.sort if view.sort in ("rate", "name") else "dropped"
    title = f"slow consumers (by {_SORT_TITLES[sort]})"
    table = _table(title, view, "peer", "dropped", "dropped/s")
    for name in _sorted_peers(slow, rates, sort):
        table.add_row(name, _count(slow[name]), _rate(rates[name]))
    if not slow:
        table.add_row("none", "", "")
    return table


def _refusals_table(current: Snapshot, previous: Snapshot | None, view: View) -> Table:
    seconds = _seconds(current, previous)
    rows: list[tuple[str, str, int, float | None]] = []
    for kind, key in (
        ("error", "errors"),
        ("limit", "refused"),
        ("denied", "denied"),
        ("rate limit", "rate_limited"),
    ):
        now = _mapping(current.stats, key)
        before = _mapping(previous.stats, key) if previous is not None else None
        for name, total in now.items():
            was = before.get(name, 0) if before is not None else None
            what = str(name)
            if kind == "error":
                with contextlib.suppress(ValueError):
                    what = f"{int(name)} {ErrorCode(int(name)).name}"
            rows.append((kind, what, int(total), _per_second(int(total), was, seconds)))
    rows.sort(key=lambda row: (-row[2], row[0], row[1]))
    table = _table("refusals and denials", view, "kind", "what", "total", "/s")
    for kind, what, total, rate in rows[:REFUSALS_SHOWN]:
        table.add_row(kind, what, _count(total), _rate(rate), style="red" if rate else "")
    if len(rows) > REFUSALS_SHOWN:
        table.add_row("...", f"{len(rows) - REFUSALS_SHOWN} more", "", "")
    if not rows:
        table.add_row("none", "", "", "")
    return table


# Per traffic table: each sort key it has, as the row column it sorts by; a
# key it lacks sorts it by its first one.
_CHANNEL_SORTS = {"in": "msgs_in/s", "out": "msgs_out/s", "name": "channel"}
_PEER_SORTS = {
    "in": "msgs_in/s",
    "out": "msgs_out/s",
    "dropped": "dropped",
    "rate": "dropped/s",
    "name": "peer",
}
_COLUMN_TITLES = {
    "msgs_in/s": "in/s",
    "msgs_out/s": "out/s",
    "dropped": "dropped",
    "dropped/s": "dropped/s",
}
# Lines a traffic table takes besides its rows: a blank line, title, header, rule.
_TABLE_LINES = 4


def _sorted_rows(rows: list[dict[str, Any]], column: str, name: str) -> list[dict[str, Any]]:
    if column == name:
        return sorted(rows, key=lambda row: str(row.get(name)))

    def key(row: dict[str, Any]) -> tuple[float, int, str]:
        # Largest first; an unknown rate after every known one, then by its total.
        value = row.get(column)
        total = row.get(column.removesuffix("/s"))
        return (
            -(value if isinstance(value, int | float) else -1.0),
            -(total if isinstance(total, int) else 0),
            str(row.get(name)),
        )

    return sorted(rows, key=key)


def _traffic_table(
    title: str,
    rows: list[dict[str, Any]],
    view: View,
    sorts: Mapping[str, str],
    columns: Sequence[tuple[str, str, Callable[[Any], str]]],
    limit: int | None,
) -> Table:
    """``rows`` under ``columns`` (header, row key, format), sorted by what
    ``view.sort`` means for this table; at most ``limit`` lines of rows."""
    name = columns[0][1]
    column = sorts.get(view.sort, next(iter(sorts.values())))
    by = _SORT_TITLES["name"] if column == name else _COLUMN_TITLES[column]
    names = sum(fmt is _name for _, _, fmt in columns)
    table = _table(f"{title} (by {by})", view, *(h for h, _, _ in columns), names=names)
    shown = _sorted_rows(rows, column, name)
    if limit is not None and len(shown) > limit:
        more = len(shown) - max(limit - 1, 0)
        shown = shown[: max(limit - 1, 0)]
    else:
        more = 0
    for row in shown:
        dropping = row.get("dropped/s")
        table.add_row(
            *(fmt(row.get(key)) for _, key, fmt in columns),
            style="red" if dropping else "",
        )
    if more:
        table.add_row("...", f"{more} more", *([""] * (len(columns) - 2)))
    if not rows:
        table.add_row("none", *([""] * (len(columns) - 1)))
    return table


def _name(value: Any) -> str:
    return str(value) if value is not None else "-"


def _byte_rate(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{_bytes(round(value))}/s"


_CHANNEL_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("channel", "channel", _name),
    ("in/s", "msgs_in/s", _rate),
    ("out/s", "msgs_out/s", _rate),
    ("in", "msgs_in", _count),
    ("out", "msgs_out", _count),
    ("peers", "peers", _count),
    ("subs", "subscriptions", _count),
    ("bytes in/s", "bytes_in/s", _byte_rate),  # last: its unit is a word of its own
)
_PEER_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("peer", "peer", _name),
    ("channel", "channel", _name),
    ("in/s", "msgs_in/s", _rate),
    ("out/s", "msgs_out/s", _rate),
    ("in", "msgs_in", _count),
    ("out", "msgs_out", _count),
    ("subs", "subscriptions", _count),
    ("dropped", "dropped", _count),
    ("dropped/s", "dropped/s", _rate),
)


def _lines(renderable: RenderableType, width: int) -> int:
    console = Console(file=io.StringIO(), width=width, legacy_windows=False)
    return len(console.render_lines(renderable, console.options, pad=False))


def _fit(spare: int, counts: Sequence[int]) -> list[int]:
    """Lines of rows for tables of ``counts`` rows within ``spare`` lines:
    an equal share each, what one leaves over going to the next; 1 at least."""
    limits: list[int] = []
    for i, count in enumerate(counts):
        share = max(1, spare // (len(counts) - i))
        limits.append(max(1, min(count, share)))
        spare -= limits[-1]
    return limits


def build_frame(current: Snapshot, previous: Snapshot | None, view: View) -> RenderableType:
    """One screen of ``zmqbus top``: rates from ``previous`` to ``current``
    (dashes without ``previous``), the broker's state and limits, its slowest
    consumers, refusals, and the busiest channels and peers with their rates,
    sorted by ``view.sort``. A non-admin snapshot (its own channel only) gets
    the state and channel it has and a note. With ``view.height``, the
    channel and peer tables show what rows fit the screen."""
    parts: list[RenderableType] = [_header(current, view)]
    if view.error:
        parts.append(Text(view.error, style="bold red"))
    admin = isinstance(current.stats.get("counters"), Mapping)
    if not admin:
        parts.append(
            Text(
                "not an admin key: STATS shows this user's own channel only",
                style="yellow",
            )
        )
    tables: list[RenderableType] = []
    if admin:
        tables.append(_rates_table(current, previous, view))
    tables.append(_state_table(current, view))
    if admin:
        tables.append(_slow_table(current, previous, view))
        tables.append(_refusals_table(current, previous, view))
    parts.append(Columns(tables, padding=(1, 4)))
    # STATS's own tables, if the broker sends them (an older one does not).
    traffic: list[tuple[str, list[dict[str, Any]], Mapping[str, str], Any]] = []
    if "top_channels" in current.stats:
        rows = traffic_rows(current, previous, "top_channels", "channel")
        traffic.append(("Channels", rows, _CHANNEL_SORTS, _CHANNEL_COLUMNS))
    if admin and "top_peers" in current.stats:
        rows = traffic_rows(current, previous, "top_peers", "peer")
        traffic.append(("Peers", rows, _PEER_SORTS, _PEER_COLUMNS))
    footer = [_footer(view)] if view.keys else []
    limits: list[int | None] = [None] * len(traffic)
    if view.height is not None and traffic:
        spare = view.height - _lines(Group(*parts, *footer), view.width)
        spare -= _TABLE_LINES * len(traffic)
        limits = [n for n in _fit(spare, [max(1, len(rows)) for _, rows, _, _ in traffic])]
    for (title, rows, sorts, columns), limit in zip(traffic, limits, strict=True):
        parts.append(Text())
        parts.append(_traffic_table(title, rows, view, sorts, columns, limit))
    parts.extend(footer)
    return Group(*parts)


def render_text(renderable: RenderableType, width: int = 100, *, color: bool = False) -> str:
    """``renderable`` as lines of text ``width`` columns wide at most, without
    trailing spaces; with ``color``, styled with ANSI escapes."""
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        legacy_windows=False,
        highlight=False,
        emoji=False,
    )
    lines = console.render_lines(renderable, console.options, pad=False)
    out = []
    for line in lines:
        if color:
            text = "".join(
                seg.style.render(seg.text, color_system=ColorSystem.STANDARD)
                if seg.style
                else seg.text
                for seg in line
            )
        else:
            text = "".join(seg.text for seg in line)
        out.append(text.rstrip())
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


# --- refreshing -------------------------------------------------------------------


class Top:
    """The state of a ``zmqbus top`` session: the last two snapshots, the
    sort key, and the last refresh's failure."""

    def __init__(self, fetcher: Callable[[], Snapshot], view: View) -> None:
        view = replace(view, sort=SORT_ALIASES.get(view.sort, view.sort))
        if view.sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}: {view.sort!r}")
        self._fetch = fetcher
        self.view = view
        self.current: Snapshot | None = None
        self.previous: Snapshot | None = None

    def refresh(self, *, first: bool = False) -> None:
        """Fetch a snapshot. With ``first``, a failure raises (the broker was
        never reached); later ones are shown in the frame, and the view keeps
        trying."""
        try:
            snapshot = self._fetch()
        except (ZmqbusError, zmq.ZMQError, OSError, ValueError) as exc:
            if first or self.current is None:
                raise
            clock = datetime.now().strftime("%H:%M:%S")
            self.view = replace(self.view, error=f"{clock} {exc}")
            return
        self.previous, self.current = self.current, snapshot
        self.view = replace(self.view, error=None)

    def cycle_sort(self) -> None:
        """Sort the tables by the next key of ``SORTS``."""
        nxt = SORTS[(SORTS.index(self.view.sort) + 1) % len(SORTS)]
        self.view = replace(self.view, sort=nxt)

    def frame(self) -> RenderableType:
        if self.current is None:
            return Text("waiting for the broker...")
        return build_frame(self.current, self.previous, self.view)


def frames(top: Top, *, once: bool, width: int, color: bool = False) -> Iterator[str]:
    """Text frames for output that is not a live terminal: with ``once``, one
    frame made of two snapshots an interval apart (so that it has rates);
    else one frame per interval, for ever. ``top`` has its first snapshot."""
    interval = top.view.interval
    while True:
        time.sleep(interval)  # pacing the refreshes, not waiting for an event
        top.refresh()
        yield render_text(top.frame(), width, color=color)
        if once:
            return


# --- the live terminal ------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the view as Ctrl-C does, through every ``finally``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _keyboard(stream: TextIO) -> Iterator[int | None]:
    """``stream``'s descriptor in cbreak mode (one key at a time, no echo;
    Ctrl-C still interrupts), its mode restored after; None if it is not a
    terminal (no keys then)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    try:
        import termios
        import tty
    except ImportError:  # pragma: no cover - not on POSIX
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(top: Top, console: Console, keys: TextIO) -> None:
    """Show ``top`` full screen on ``console``, refreshed every interval,
    until ``q`` (read from ``keys``), Ctrl-C or SIGTERM; ``s`` cycles the sort
    of the tables. Waits in ``select`` on the keyboard with the time to the
    next refresh as timeout. The terminal is restored on the way out,
    whatever ends it. ``top`` has its first snapshot."""

    def fitted() -> RenderableType:
        # The screen's size now (it may have been resized), for the tables to fit.
        size = console.size
        top.view = replace(top.view, width=size.width, height=size.height)
        return top.frame()

    top.view = replace(top.view, keys=True)
    interval = top.view.interval
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_interrupts())
        fd = stack.enter_context(_keyboard(keys))
        live = stack.enter_context(
            Live(
                fitted(),
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
        )
        try:
            due = time.monotonic() + interval
            while True:
                left = due - time.monotonic()
                if left > 0:
                    ready, _, _ = select.select([fd] if fd is not None else [], [], [], left)
                    if ready and fd is not None:
                        try:
                            data = os.read(fd, 64)
                        except OSError:
                            return  # the terminal is gone
                        if not data:
                            fd = None  # end of input: no more keys, and no spinning on it
                        for char in data.decode("utf-8", "replace"):
                            if char in "qQ":
                                return
                            if char in "sS":
                                top.cycle_sort()
                                live.update(fitted(), refresh=True)
                        continue
                top.refresh()
                live.update(fitted(), refresh=True)
                due += interval
                now = time.monotonic()
                if due <= now:  # a slow answer: count the next interval from now
                    due = now + interval
        except KeyboardInterrupt:
            return
