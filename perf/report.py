"""Statistics over runs, ratios, the Markdown tables, the targets of issue 4 (and of
issue 15, durable streams), charts."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from perf.scenarios import PERCENTILES, STREAM_PREFIX
from perf.servers import ZMQBUS_STREAM_HWM, ZMQBUS_STREAM_QUEUED_BYTES
from perf.systems import (
    NATS_JS,
    PEERS,
    STREAM_FACES,
    STREAM_SYSTEMS,
    SYSTEMS,
    ZMQBUS,
    ZMQBUS_AIO,
    ZMQBUS_SYNC_FULL,
    ZMQBUS_SYNC_NORMAL,
    Variant,
)

__all__ = [
    "histogram",
    "make_charts",
    "markdown",
    "percentiles_us",
    "stats",
    "stream_targets",
    "streams_markdown",
    "targets",
    "variant_cost",
    "variant_markdown",
]

log = logging.getLogger("perf.report")

TIMES = "\N{MULTIPLICATION SIGN}"

# Histograms in ns, 1 µs .. 100 s, 3 significant digits.
_HIST_LOW = 1_000
_HIST_HIGH = 100_000_000_000
_CURVE_POINTS = (
    0.0,
    10.0,
    25.0,
    50.0,
    75.0,
    90.0,
    95.0,
    99.0,
    99.5,
    99.9,
    99.95,
    99.99,
    99.999,
    100.0,
)


def histogram(samples_ns: Iterable[int]) -> Any:
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

    h = HdrHistogram(_HIST_LOW, _HIST_HIGH, 3)
    record = h.record_value
    for v in samples_ns:
        record(min(max(v, _HIST_LOW), _HIST_HIGH))
    return h


def percentiles_us(h: Any) -> dict[str, float]:
    return {f"p{p:g}": h.get_value_at_percentile(p) / 1000 for p in PERCENTILES}


def encode_histogram(h: Any) -> str:
    data: bytes = h.encode()
    return data.decode("ascii") if isinstance(data, bytes) else str(data)


def curve_us(h: Any) -> list[list[float]]:
    """(percentile, µs) points for a percentile-distribution chart."""
    return [[p, h.get_value_at_percentile(p) / 1000] for p in _CURVE_POINTS]


def stats(values: list[float]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# --- formatting ------------------------------------------------------------------------


def fmt_value(v: float, unit: str) -> str:
    if unit == "msgs/s":
        if v >= 1e6:
            return f"{v / 1e6:.2f}M"
        if v >= 1e4:
            return f"{v / 1e3:.0f}k"
        if v >= 1e3:
            return f"{v / 1e3:.1f}k"
        return f"{v:.0f}"
    if unit == "µs":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if unit in ("MB/s", "MiB", "MB"):
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if unit == "B":
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _cell(st: dict[str, float] | None, unit: str) -> str:
    if st is None:
        return "—"
    med = fmt_value(st["median"], unit)
    if st["n"] < 2:
        return med
    return f"{med} <sub>{fmt_value(st['min'], unit)}-{fmt_value(st['max'], unit)}</sub>"


def _ratio_cell(r: dict[str, float] | None) -> str:
    if r is None:
        return "—"
    text = f"{r['ratio']:.2f}{TIMES}"
    if r.get("n", 1) >= 2:
        text += f" <sub>{r['min']:.2f}-{r['max']:.2f}</sub>"
    return text


# The asyncio face's ratio columns in the table (all its ratios are in the JSON).
AIO_RATIO_PEERS = ("nats", "zmq-router")


# A ratio column of a table: its heading, and where a scenario keeps its ratios
# (figure key -> ratio) for that column.
RatioColumn = tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]


def _ratios_of(field: str, *path: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ratios a scenario keeps under ``field`` and then ``path`` ({} if none)."""

    def get(sc: dict[str, Any]) -> dict[str, Any]:
        node: dict[str, Any] = sc.get(field, {})
        for key in path:
            node = node.get(key, {})
        return node

    return get


def _is_stream(sc: dict[str, Any]) -> bool:
    return str(sc["key"]).startswith(STREAM_PREFIX)


def markdown(results: dict[str, Any]) -> str:
    """The results table: median <sub>min-max</sub> per system, zmqbus (the threaded
    face) ÷ each peer, and zmqbus (asyncio) ÷ NATS and ÷ pyzmq DEALER/ROUTER. The
    stream scenarios have a table of their own (``streams_markdown``)."""
    order = list(PEERS)
    columns: list[RatioColumn] = [
        (f"zmqbus ÷ {SYSTEMS[k].label}", _ratios_of("ratios", k)) for k in order
    ]
    columns += [
        (f"{SYSTEMS[ZMQBUS_AIO].label} ÷ {SYSTEMS[k].label}", _ratios_of("ratios_aio", k))
        for k in AIO_RATIO_PEERS
    ]
    scenarios = [sc for sc in results["scenarios"] if not _is_stream(sc)]
    return _table(scenarios, [ZMQBUS, ZMQBUS_AIO, *order], columns)


def _table(scenarios: list[dict[str, Any]], measured: list[str], columns: list[RatioColumn]) -> str:
    """A table of ``scenarios``: a column per ``measured`` system, then the ratio
    ``columns``; notes on skipped systems and failed runs below it."""
    head = ["scenario", "figure"] + [SYSTEMS[k].label for k in measured]
    head += [heading for heading, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for sc in scenarios:
        first = True
        rows = list(sc["figures"])
        any_loss = any(
            (s.get("loss_total") or 0) > 0 for s in sc["systems"].values() if s is not None
        )
        if any_loss:
            rows.append({"key": "__loss", "label": "lost (all runs)", "unit": "msgs"})
        for fig in rows:
            cells = [f"**{sc['title']}**" if first else "", fig["label"]]
            first = False
            for key in measured:
                sysres = sc["systems"].get(key)
                if sysres is None:
                    cells.append("n/a" if key not in sc.get("skipped", {}) else "skipped")
                    continue
                if fig["key"] == "__loss":
                    lost = sysres.get("loss_total")
                    cells.append("—" if lost is None else f"{lost:,}")
                    continue
                st = sysres["stats"].get(fig["key"])
                if st is None and sysres.get("failed_runs"):
                    cells.append("failed")
                else:
                    cells.append(_cell(st, fig["unit"]))
            for _, ratios in columns:
                if fig["key"] == "__loss":
                    cells.append("")
                    continue
                cells.append(_ratio_cell(ratios(sc).get(fig["key"])))
            lines.append("| " + " | ".join(cells) + " |")
        for key, reason in sc.get("skipped", {}).items():
            notes.append(f"{sc['title']}: {SYSTEMS[key].label} skipped: {reason}")
        for key, sysres in sc["systems"].items():
            if sysres and sysres.get("failed_runs"):
                notes.append(
                    f"{sc['title']}: {SYSTEMS[key].label}: {sysres['failed_runs']} run(s) "
                    "failed (see the JSON for the error)"
                )
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


# --- targets -----------------------------------------------------------------------------


def _median(results: dict[str, Any], scenario: str, system: str, fig: str) -> float | None:
    for sc in results["scenarios"]:
        if sc["key"] == scenario:
            sysres = sc["systems"].get(system)
            if sysres is None:
                return None
            st = sysres["stats"].get(fig)
            return None if st is None else float(st["median"])
    return None


def _met(ratio: float | None, kind: str, goal: float) -> bool | None:
    if ratio is None:
        return None
    return ratio >= goal if kind == ">=" else ratio <= goal


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured ratio and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(
        name: str, num: float | None, den: float | None, goal: float, kind: str, note: str = ""
    ) -> None:
        ratio = None if num is None or den in (None, 0) else num / float(den or 1)
        met = _met(ratio, kind, goal)
        out.append(
            {"target": name, "ratio": ratio, "goal": f"{kind} {goal:g}", "met": met, "note": note}
        )

    def med(scenario: str, system: str, fig: str) -> float | None:
        return _median(results, scenario, system, fig)

    # Each target that compares zmqbus with a peer is given for the threaded face
    # ("zmqbus", the rows as they always were) and, when it was measured, again for
    # the asyncio face right below it.
    faces = [(ZMQBUS, "zmqbus", "this zmqbus")]
    if any(ZMQBUS_AIO in sc["systems"] for sc in results["scenarios"]):
        faces.append((ZMQBUS_AIO, SYSTEMS[ZMQBUS_AIO].label, "this zmqbus's asyncio face"))

    for key, name, _ in faces:
        add(
            f"1->1 fire-and-forget: {name} ÷ NATS",
            med("ff", key, "rate"),
            med("ff", "nats", "rate"),
            1.5,
            ">=",
        )
    for key, name, _ in faces:
        add(
            f"1->1 fire-and-forget: {name} ÷ pyzmq PUSH/PULL",
            med("ff", key, "rate"),
            med("ff", "zmq-pushpull", "rate"),
            0.25,
            ">=",
        )
    # Only a run that measured request/reply can say that a zmqbus has none.
    reqrep_ran = any(sc["key"] == "reqrep" for sc in results["scenarios"])
    for p in ("p50", "p99"):
        for key, name, which in faces:
            zr = med("reqrep", key, f"rtt.{p}")
            if zr is not None:
                note = ""
            elif reqrep_ran:
                note = f"{which} has no request/reply: not measurable"
            else:
                note = "not measured in this run"
            add(
                f"request/reply {p}: {name} ÷ NATS",
                zr,
                med("reqrep", "nats", f"rtt.{p}"),
                0.5,
                "<=",
                note,
            )
            if zr is None and reqrep_ran:
                add(
                    f"(stand-in) confirmed round trip {p}: {name} ÷ NATS request/reply",
                    med("confirm", key, f"rtt.{p}"),
                    med("reqrep", "nats", f"rtt.{p}"),
                    0.5,
                    "<=",
                    "the nearest thing zmqbus has: publish, subscriber takes it, confirmation back",
                )
    for key, name, _ in faces:
        add(
            f"publish->deliver p50: {name} one-way ÷ pyzmq DEALER/ROUTER round trip",
            med("latency", key, "oneway.p50"),
            med("reqrep", "zmq-router", "rtt.p50"),
            2.0,
            "<=",
        )
    for key, name, _ in faces:
        for scenario, what in (("pipelined", "pipelined confirmed"), ("pipelined_wide", "wide")):
            window = next(
                (
                    sc["params"].get("window")
                    for sc in results["scenarios"]
                    if sc["key"] == scenario
                ),
                None,
            )
            if window is None:
                continue
            add(
                f"{what} (window {window:,}) ÷ fire-and-forget: {name}",
                med(scenario, key, "rate"),
                med("ff", key, "rate"),
                0.5,
                ">=",
            )
    levels = sorted(
        {
            int(sc["params"]["level"])
            for sc in results["scenarios"]
            if sc["key"] != ""
            and sc["key"].startswith("routing_")
            and sc["params"].get("kind") != "channels"
        }
    )
    if len(levels) >= 2:
        lo, hi = levels[0], levels[-1]
        for kind in ("exact", "wildcard"):
            add(
                f"routing {kind}: throughput at {hi:,} ÷ at {lo:,} subscriptions (zmqbus)",
                med(f"routing_{kind}_{hi}", "zmqbus", "rate"),
                med(f"routing_{kind}_{lo}", "zmqbus", "rate"),
                0.8,
                ">=",
            )
        for kind in ("exact", "wildcard"):
            b = med(f"routing_{kind}_{hi}", "zmqbus", "bytes_per_sub")
            out.append(
                {
                    "target": f"broker memory per {kind} subscription at {hi:,} (bytes)",
                    "ratio": b,
                    "goal": "< 1024",
                    "met": None if b is None else b < 1024,
                    "note": "",
                }
            )
    return out


def targets_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in rows:
        r = t["ratio"]
        if r is None:
            measured = "n/a"
        elif t.get("unit") == "MB":
            measured = f"{r:,.1f} MB"
        elif "bytes" in t["target"]:
            measured = f"{r:,.0f} B"
        else:
            measured = f"{r:.2f}{TIMES}"
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']}{note} | {measured} | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n"


# --- what a variant of zmqbus costs (CURVE, metrics) -----------------------------------


def variant_cost(results: dict[str, Any], variant: Variant) -> list[dict[str, Any]]:
    """Every figure of every scenario ``variant`` (zmqbus (CURVE), zmqbus (metrics)) ran
    in: the medians (min-max) of zmqbus with and without it, variant ÷ plain of the
    medians with the range of the per-run ratios (``ratios_<field>``, runs made back to
    back), and the goal, if any. Each row holds the variant's stats under its ``field``
    ("curve", "metrics"), the plain broker's under "plain"."""
    goals = dict(variant.goals)
    rows: list[dict[str, Any]] = []
    for sc in results["scenarios"]:
        other = sc["systems"].get(variant.system)
        if other is None:
            continue
        plain = sc["systems"].get(ZMQBUS) or {}
        ratios = sc.get(f"ratios_{variant.field}", {}).get(ZMQBUS, {})
        for fig in sc["figures"]:
            ratio = ratios.get(fig["key"])
            goal = goals.get((sc["key"], fig["key"]))
            rows.append(
                {
                    "scenario": sc["key"],
                    "title": sc["title"],
                    "figure": fig["label"],
                    "unit": fig["unit"],
                    "plain": (plain.get("stats") or {}).get(fig["key"]),
                    variant.field: other["stats"].get(fig["key"]),
                    "ratio": ratio,
                    "goal": f"{goal[0]} {goal[1]:g}" if goal else "",
                    "met": None if goal is None or ratio is None else _met(ratio["ratio"], *goal),
                }
            )
    return rows


def _change(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "—"
    return f"{(float(row['ratio']['ratio']) - 1) * 100:+.0f}%"


def variant_markdown(rows: list[dict[str, Any]], variant: Variant) -> str:
    """The "<name> cost" section ("" when ``variant`` did not run)."""
    if not rows:
        return ""
    label, name = SYSTEMS[variant.system].label, variant.name
    lines = [
        f"\n### {name} cost\n",
        f"{label} is {variant.what}, measured in the same run as zmqbus, its runs "
        f"alternating with zmqbus's. {name} ÷ plain: of the medians "
        f"<sub>range of the per-run ratios</sub>; change: what {name} does to the figure "
        "(for msgs/s higher is better, for µs lower).\n",
        f"| scenario | figure | zmqbus | {label} | {name} ÷ plain | change | goal | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    title = ""
    for row in rows:
        met = {True: "yes", False: "**no**", None: "—" if row["goal"] else ""}[row["met"]]
        lines.append(
            f"| {'**' + row['title'] + '**' if row['title'] != title else ''} "
            f"| {row['figure']} | {_cell(row['plain'], row['unit'])} "
            f"| {_cell(row[variant.field], row['unit'])} | {_ratio_cell(row['ratio'])} "
            f"| {_change(row)} | {row['goal']} | {met} |"
        )
        title = row["title"]
    return "\n".join(lines) + "\n"


# --- durable streams (issue 15) ----------------------------------------------------------

# The most server memory that 1,000,000 stored 100-byte messages may add (MB).
STREAM_RSS_GOAL_MB = 50.0
STREAM_RSS_GOAL_COUNT = 1_000_000


def stream_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's targets, for each zmqbus sync setting that ran: pipelined stored
    publish and consume+ack >= 1.5x JetStream, one-at-a-time stored publish p50 at
    most JetStream's, and the broker's RSS growth < 50 MB with 1,000,000 stored
    100-byte messages (a run that stored fewer can only show it missed: memory does
    not grow in proportion to the count, so a smaller run says nothing of a pass)."""
    out: list[dict[str, Any]] = []
    by_key = {sc["key"]: sc for sc in results["scenarios"] if _is_stream(sc)}
    faces = [f for f in STREAM_FACES if any(f in sc["systems"] for sc in by_key.values())]
    ratio_goals = (
        ("stream_pipe", "rate", "stored publish, pipelined", ">=", 1.5),
        ("stream_consume", "rate", "consume+ack", ">=", 1.5),
        ("stream_pub", "rtt.p50", "stored publish one at a time, p50", "<=", 1.0),
    )
    for key, fig, what, kind, goal in ratio_goals:
        sc = by_key.get(key)
        if sc is None:
            continue
        for face in faces:
            r = _ratios_of("ratios_stream", face, NATS_JS)(sc).get(fig)
            ratio = None if r is None else float(r["ratio"])
            out.append(
                {
                    "target": f"{what}: {SYSTEMS[face].label} ÷ JetStream",
                    "ratio": ratio,
                    "goal": f"{kind} {goal:g}",
                    "met": _met(ratio, kind, goal),
                    "note": ""
                    if r is None or r["n"] < 2
                    else f"per-run ratios {r['min']:.2f}-{r['max']:.2f}",
                }
            )
    sc = by_key.get("stream_rss")
    if sc is not None:
        count = int(sc["params"]["count"])
        for face in faces:
            growth = _median(results, "stream_rss", face, "rss_growth_mb")
            met: bool | None = None
            note = ""
            if growth is not None:
                if count >= STREAM_RSS_GOAL_COUNT:
                    growth = growth * STREAM_RSS_GOAL_COUNT / count
                    met = growth < STREAM_RSS_GOAL_MB
                elif growth >= STREAM_RSS_GOAL_MB:
                    met = False
                    note = f"already at {count:,} stored"
                else:
                    note = f"measured at {count:,} stored: says nothing of 1,000,000"
            out.append(
                {
                    "target": f"broker RSS growth, 1,000,000 stored 100-B messages: "
                    f"{SYSTEMS[face].label}",
                    "ratio": growth,
                    "unit": "MB",
                    "goal": f"< {STREAM_RSS_GOAL_MB:g} MB",
                    "met": met,
                    "note": note,
                }
            )
    return out


def streams_markdown(results: dict[str, Any]) -> str:
    """The "Durable streams" section ("" when no stream scenario ran): its table, with
    each zmqbus sync setting ÷ JetStream and full ÷ normal, and issue 15's targets."""
    scenarios = [sc for sc in results["scenarios"] if _is_stream(sc)]
    if not scenarios:
        return ""
    jetstream = SYSTEMS[NATS_JS].label
    columns: list[RatioColumn] = [
        (f"{SYSTEMS[face].label} ÷ {jetstream}", _ratios_of("ratios_stream", face, NATS_JS))
        for face in STREAM_FACES
    ]
    columns.append(
        (
            "sync full ÷ sync normal",
            _ratios_of("ratios_stream", ZMQBUS_SYNC_FULL, ZMQBUS_SYNC_NORMAL),
        )
    )
    intro = (
        "\n### Durable streams (issue 15)\n\n"
        "zmqbus is the threaded `Bus` against a broker with a store directory (SQLite, "
        "`--data-dir`), once with `--sync normal` (commits survive the broker process "
        "dying) and once with `--sync full` (power loss too: an fsync per commit); NATS "
        "JetStream is nats-py against `nats-server -js`, file storage, its default sync "
        "(no fsync per write). Every store is in a temporary directory of its own. The "
        f"zmqbus brokers run with `--max-queued-bytes {ZMQBUS_STREAM_QUEUED_BYTES}` (a "
        f"high-water mark of {ZMQBUS_STREAM_HWM:,} messages): at the default (496 with the "
        "suite's 2 MiB frames) a window of "
        "1,000 stored publishes, which owes its publisher 2,000 replies, can fill the "
        "queue, and this zmqbus then drops a STORED or ROUTED and that publish is never "
        "confirmed (see perf/README.md). Each cell: median <sub>min-max</sub> over the "
        "runs; ratios of the medians <sub>range of the per-run ratios</sub> (for µs and MB "
        "lower is better, so there a ratio below 1 favours zmqbus).\n\n"
    )
    return (
        intro
        + _table(scenarios, list(STREAM_SYSTEMS), columns)
        + "\n#### Targets of issue 15\n\n"
        + targets_markdown(results.get("stream_targets") or stream_targets(results))
    )


# --- charts ------------------------------------------------------------------------------

_COLORS = {
    "zmqbus": "#d62728",
    "zmqbus-sync-normal": "#d62728",
    "zmqbus-sync-full": "#e377c2",
    "nats-js": "#1f77b4",
    "zmqbus-aio": "#ff7f0e",
    "zmqbus-curve": "#8c564b",
    "zmqbus-metrics": "#bcbd22",
    "zmqbus-ipc": "#17becf",
    "zmq-pushpull": "#7f7f7f",
    "zmq-router": "#2ca02c",
    "nats": "#1f77b4",
    "redis": "#9467bd",
}


def make_charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG charts into ``out_dir``; returns their paths ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[perf]'): no charts")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _latency_chart(plt, results, out_dir / "latency.png"),
        _throughput_chart(plt, results, out_dir / "throughput.png"),
        _payload_chart(plt, results, out_dir / "payloads.png"),
        _routing_chart(plt, results, out_dir / "routing.png"),
        _stream_chart(plt, results, out_dir / "streams.png"),
    ]
    return [p for p in paths if p is not None]


def _plain_ticks(ax: Any) -> None:
    """Plain numbers (1,000 not 10^3) on a log-scaled y axis."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))


def _by_key(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {sc["key"]: sc for sc in results["scenarios"]}


def _latency_chart(plt: Any, results: dict[str, Any], path: Path) -> Path | None:
    sc = _by_key(results)
    panels = [
        ("latency", "oneway", "publish -> deliver, one-way"),
        ("latency", "rtt", "pub/sub echo round trip"),
        ("confirm", "rtt", "confirmed publish round trip\n(NATS: request/reply; Redis: PUBLISH)"),
        ("reqrep", "rtt", "request/reply round trip\n(pyzmq: DEALER<->ROUTER, no broker)"),
    ]
    panels = [x for x in panels if x[0] in sc]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (key, group, title) in zip(axes[0], panels, strict=True):
        for system, sysres in sc[key]["systems"].items():
            pts = (sysres or {}).get("curves", {}).get(group)
            if not pts:
                continue
            xs = [1 / (1 - p / 100) if p < 100 else 1e5 for p, _ in pts]
            ys = [v for _, v in pts]
            ax.plot(xs, ys, marker=".", label=SYSTEMS[system].label, color=_COLORS.get(system))
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax)
        ax.set_xticks([2, 10, 100, 1000, 10000, 100000])
        ax.set_xticklabels(["50%", "90%", "99%", "99.9%", "99.99%", "max"])
        ax.minorticks_off()
        ax.set_xlabel("percentile")
        ax.set_ylabel("µs")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("latency percentiles (all runs merged; lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _bars(
    plt: Any,
    ax: Any,
    groups: list[tuple[str, dict[str, Any]]],
    fig_key: str,
    ylabel: str,
) -> None:
    systems = [k for k in SYSTEMS if any(k in sc["systems"] for _, sc in groups)]
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        xs, meds, lo, hi = [], [], [], []
        for gi, (_, sc) in enumerate(groups):
            st = ((sc["systems"].get(system) or {}).get("stats") or {}).get(fig_key)
            if st is None:
                continue
            xs.append(gi + (i - (len(systems) - 1) / 2) * width)
            meds.append(st["median"])
            lo.append(st["median"] - st["min"])
            hi.append(st["max"] - st["median"])
        ax.bar(
            xs,
            meds,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=SYSTEMS[system].label,
            color=_COLORS.get(system),
        )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g for g, _ in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _throughput_chart(plt: Any, results: dict[str, Any], path: Path) -> Path | None:
    sc = _by_key(results)
    keys = [
        ("ff", "1->1\nfire-and-forget"),
        ("confirm", "confirmed\none at a time"),
        ("pipelined", "confirmed\npipelined"),
        ("pipelined_wide", "confirmed\nwide window"),
        ("fanout", "fan-out\n(deliveries/s)"),
        ("fanin", "fan-in\n(deliveries/s)"),
    ]
    groups = [(label, sc[k]) for k, label in keys if k in sc]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    _bars(plt, ax, groups, "rate", "messages/s (log)")
    ax.set_title("throughput, 100 B payloads (median, bars: min-max over runs; higher is better)")
    ax.legend(fontsize=8, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _payload_chart(plt: Any, results: dict[str, Any], path: Path) -> Path | None:
    groups = [
        (sc["title"].rsplit(", ", 1)[-1], sc)
        for sc in results["scenarios"]
        if sc["key"].startswith("payload_")
    ]
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _bars(plt, axes[0], groups, "rate", "messages/s (log)")
    _bars(plt, axes[1], groups, "mbps", "MB/s (log)")
    axes[0].set_title("fire-and-forget by payload size: messages/s")
    axes[1].set_title("MB/s")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _routing_chart(plt: Any, results: dict[str, Any], path: Path) -> Path | None:
    rows = [
        sc
        for sc in results["scenarios"]
        if sc["key"].startswith("routing_") and sc["params"].get("kind") != "channels"
    ]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for kind, style in (("exact", "-"), ("wildcard", "--")):
        for system in SYSTEMS:
            pts = []
            mem = []
            for sc in rows:
                if sc["params"]["kind"] != kind or system not in sc["systems"]:
                    continue
                st = sc["systems"][system]["stats"]
                if st.get("rate"):
                    pts.append((sc["params"]["level"], st["rate"]["median"]))
                if st.get("rss_setup_mib"):
                    mem.append((sc["params"]["level"], st["rss_setup_mib"]["median"]))
            label = f"{SYSTEMS[system].label}, {kind}"
            if pts:
                pts.sort()
                axes[0].plot(
                    *zip(*pts, strict=True),
                    style,
                    marker="o",
                    label=label,
                    color=_COLORS.get(system),
                )
            if mem:
                mem.sort()
                axes[1].plot(
                    *zip(*mem, strict=True),
                    style,
                    marker="o",
                    label=label,
                    color=_COLORS.get(system),
                )
    axes[0].set_yscale("log")
    _plain_ticks(axes[0])
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("subscriptions in the channel")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("messages/s")
    axes[0].set_title("1->1 throughput with N subscriptions")
    axes[1].set_ylabel("MiB")
    axes[1].set_title("server RSS with N subscriptions")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _stream_chart(plt: Any, results: dict[str, Any], path: Path) -> Path | None:
    sc = _by_key(results)
    keys = [
        ("stream_pub", "stored publish\none at a time"),
        ("stream_pipe", "stored publish\npipelined"),
        ("stream_consume", "consume+ack"),
        ("stream_replay", "replay"),
    ]
    groups = [(label, sc[k]) for k, label in keys if k in sc]
    memory = [("server RSS growth", sc["stream_rss"])] if "stream_rss" in sc else []
    if not groups and not memory:
        return None
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [max(1, len(groups)), 1]}
    )
    if groups:
        _bars(plt, axes[0], groups, "rate", "messages/s (log)")
        axes[0].set_title("durable streams, 100 B: messages/s (higher is better)")
        axes[0].legend(fontsize=8)
    if memory:
        _bars(plt, axes[1], memory, "rss_growth_mb", "MB (log)")
        count = int(sc["stream_rss"]["params"]["count"])
        axes[1].set_title(f"{count:,} stored\n(lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
