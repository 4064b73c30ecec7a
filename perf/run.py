"""Run the suite: ``python -m perf [--quick] [--runs N] [--only KEY ...] [--out DIR]``.

Progress goes to stderr; results go to ``perf/results/`` (or ``--out``): a timestamped
JSON file, ``latest.json``, ``latest.md`` (the table and the targets) and PNG charts.
Exit status: 0 when every run of every available system completed, 1 when a run
failed, 2 for bad arguments, 3 with ``--require-all`` when a peer is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python perf/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import report
from perf.harness import worker_context
from perf.profiles import FULL, QUICK, Profile
from perf.scenarios import STREAM_PREFIX, Env, Measure, Scenario, build_scenarios
from perf.servers import start_server
from perf.systems import (
    NATS_JS,
    PEERS,
    STREAM_FACES,
    STREAM_SYSTEMS,
    SYSTEMS,
    ZMQBUS,
    ZMQBUS_AIO,
    ZMQBUS_SYNC_NORMAL,
    ZMQBUS_VARIANTS,
    missing,
    suite_missing,
)

__all__ = ["main"]

log = logging.getLogger("perf")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Progress:
    """Runs done of runs planned, with the run under way, on stderr.

    On a terminal with ``rich`` installed: a progress bar (the current scenario, system
    and run; done/planned; elapsed), each finished run's line printed above it. Not a
    terminal (a pipe, a file, CI): one plain line per finished run, as always; on a
    terminal without ``rich``, the same lines with the run under way rewritten in place.
    """

    def __init__(self, total: int, stream: Any = sys.stderr, *, bar: bool = True) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._label = ""
        self._bar: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        if bar and self.tty:
            self._start_bar()

    def _start_bar(self) -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress
        except ImportError:
            return  # the plain lines, rewritten in place
        self._bar = RichProgress(
            TextColumn("perf", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}", markup=False),
            console=Console(file=self.stream, highlight=False),
        )
        self._task = self._bar.add_task("starting", total=self.total)
        self._bar.start()
        # Log records (the servers' and the harness's) go above the bar too: the live
        # display has replaced sys.stderr with a proxy that prints through its console.
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is self.stream:
                self._handlers.append((h, h.stream))
                h.setStream(sys.stderr)

    def _prefix(self) -> str:
        el = int(time.monotonic() - self.start)
        return f"[{self.done:>3}/{self.total} {el // 60:d}:{el % 60:02d}]"

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()

    def step(self, label: str) -> None:
        self._label = label
        if self._bar is not None:
            self._bar.update(self._task, description=label)
        elif self.tty:
            self.stream.write(f"\r\x1b[K{self._prefix()} {label} ...")
            self.stream.flush()

    def finish(self, outcome: str) -> None:
        self.done += 1
        self._print(f"{self._prefix()} {self._label}: {outcome}")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def note(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        """Stop the bar (if any), leaving it drawn at its last state."""
        if self._bar is None:
            return
        for h, stream in self._handlers:
            h.setStream(stream)
        self._handlers.clear()
        self._bar.stop()
        self._bar = None


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("zmqbus", "pyzmq", "msgpack", "nats-py", "uvloop", "redis", "hiredis"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "missing"
    import zmq

    versions["libzmq"] = zmq.zmq_version()
    from zmqbus import _fastpath

    # The roles import zmqbus with this environment: the same twin runs there.
    versions["zmqbus_hot_paths"] = _fastpath.implementation()
    for prog, flag in (("nats-server", "--version"), ("redis-server", "--version")):
        versions[prog] = _program_version(prog, flag)
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "peer_config": _peer_config(),
        "note": "broker/servers, publishers and subscribers all share these cores",
    }


def _peer_config() -> dict[str, Any]:
    """What the peers' clients really run with, not only what is installed: whether
    redis-py parses with hiredis, and the event loop the nats-py roles create."""
    out: dict[str, Any] = {}
    try:
        import redis.connection
        import redis.utils
    except ImportError:
        out["redis_hiredis"] = None
    else:
        out["redis_hiredis"] = bool(redis.utils.HIREDIS_AVAILABLE)
        out["redis_parser"] = redis.connection.DefaultParser.__name__
    try:
        from perf.sys_nats import event_loop_name

        out["nats_event_loop"] = event_loop_name()
    except ImportError:
        out["nats_event_loop"] = None
    return out


def _zmqbus_source() -> dict[str, Any]:
    """Which zmqbus was measured: its path, and the git commit (and whether the
    package's files differ from it) when it is a checkout."""
    import subprocess

    import zmqbus

    pkg = Path(zmqbus.__file__).resolve().parent
    info: dict[str, Any] = {"path": str(pkg), "version": zmqbus.__version__}
    try:
        commit = subprocess.run(
            ["git", "-C", str(pkg), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["modified"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _program_version(prog: str, flag: str) -> str:
    import shutil
    import subprocess

    if shutil.which(prog) is None:
        return "missing"
    try:
        out = subprocess.run([prog, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    m = re.search(r"v=?(\d+(?:\.\d+)+)", text)
    return f"{prog} {m.group(1)}" if m else (text.splitlines()[0] if text else "unknown")


def _summary(sc: Scenario, m: Measure) -> str:
    parts = []
    for fig in sc.figures:
        if fig.key in m.values:
            parts.append(f"{report.fmt_value(m.values[fig.key], fig.unit)} {fig.unit}")
            if fig.unit == "µs" and len(parts) >= 2:
                break
    if m.loss:
        parts.append(f"lost {m.loss:,}")
    if m.errors:
        parts.append(f"{m.errors} errors")
    return ", ".join(parts) or "done"


def _apply_percentiles(m: Measure) -> dict[str, Any]:
    hists = {}
    for group, samples in m.samples.items():
        h = report.histogram(samples)
        hists[group] = h
        for name, v in report.percentiles_us(h).items():
            m.values[f"{group}.{name}"] = v
        m.info[f"{group}_samples"] = len(samples)
    return hists


def run_scenario(
    sc: Scenario,
    profile: Profile,
    systems: list[str],
    unavailable: dict[str, str],
    progress: Progress,
) -> dict[str, Any]:
    takes_part = [s for s in sc.systems if all(SYSTEMS[s].has(r) for r in sc.roles)]
    active = [s for s in takes_part if s in systems and s not in unavailable]
    skipped = {s: unavailable[s] for s in takes_part if s in unavailable and s in systems}
    env = Env(profile)
    out: dict[str, Any] = {
        "key": sc.key,
        "title": sc.title,
        "description": sc.description,
        "params": sc.params,
        "figures": [
            {
                "key": f.key,
                "label": f.label,
                "unit": f.unit,
                "better": f.better,
            }
            for f in sc.figures
        ],
        "systems": {},
        "skipped": skipped,
    }
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in active}
    hists: dict[str, dict[str, Any]] = {s: {} for s in active}
    setup_errors: dict[str, str] = {}
    try:
        for s in active:
            sysdef = SYSTEMS[s]
            if sysdef.per_run_server:
                continue
            try:
                env.servers[s] = start_server(sysdef.server, s)
            except Exception as exc:
                setup_errors[s] = f"server did not start: {exc}"
        for i in range(profile.runs):
            for s in active:
                if s in setup_errors:
                    continue
                progress.step(f"{sc.title} · {SYSTEMS[s].label} · run {i + 1}/{profile.runs}")
                load = os.getloadavg()[0]
                srv = env.servers.get(s)
                scraper = srv.scraper if srv is not None else None
                scraped = scraper.counts() if scraper is not None else (0, 0)
                try:
                    m = sc.run(env, s)
                except Exception as exc:
                    runs[s].append({"error": f"{type(exc).__name__}: {exc}"})
                    progress.finish(f"FAILED: {str(exc).splitlines()[0][:200]}")
                    log.debug("run failed", exc_info=True)
                    continue
                m.info["loadavg_1min_before"] = round(load, 2)
                srv = env.servers.get(s)
                if scraper is not None and srv is not None and srv.scraper is scraper:
                    # zmqbus (metrics): the scrapes of its /metrics during this run.
                    scrapes, errors = scraper.counts()
                    m.info["metrics_scrapes"] = scrapes - scraped[0]
                    m.info["metrics_scrape_errors"] = errors - scraped[1]
                for group, h in _apply_percentiles(m).items():
                    if group in hists[s]:
                        hists[s][group].add(h)
                    else:
                        hists[s][group] = h
                runs[s].append(
                    {"values": m.values, "loss": m.loss, "errors": m.errors, "info": m.info}
                )
                progress.finish(_summary(sc, m))
    finally:
        env.close()
    for s in active:
        if s in setup_errors:
            out["systems"][s] = {
                "runs": [],
                "stats": {},
                "failed_runs": profile.runs,
                "setup_error": setup_errors[s],
                "lossless_promised": sc.lossless(s),
                "loss_total": None,
            }
            continue
        ok_runs = [r for r in runs[s] if "error" not in r]
        st: dict[str, Any] = {}
        for fig in sc.figures:
            vals = [r["values"][fig.key] for r in ok_runs if fig.key in r["values"]]
            st[fig.key] = report.stats(vals)
        losses = [r["loss"] for r in ok_runs if r["loss"] is not None]
        out["systems"][s] = {
            "runs": runs[s],
            "stats": {k: v for k, v in st.items() if v is not None},
            "failed_runs": len(runs[s]) - len(ok_runs),
            "lossless_promised": sc.lossless(s),
            "loss_total": sum(losses) if losses else None,
            "errors_total": sum(int(r["errors"]) for r in ok_runs),
            "histograms": {g: report.encode_histogram(h) for g, h in hists[s].items()},
            "curves": {g: report.curve_us(h) for g, h in hists[s].items()},
        }
    out["ratios"] = _ratios(sc, out, runs)
    # The asyncio face ÷ every other system (the peers and the threaded face).
    out["ratios_aio"] = _ratios(sc, out, runs, ZMQBUS_AIO, (ZMQBUS, *PEERS))
    # What each variant costs (CURVE, metrics): zmqbus with it ÷ the same bus without,
    # in the same run: ratios_curve, ratios_metrics.
    for v in ZMQBUS_VARIANTS:
        out[f"ratios_{v.field}"] = _ratios(sc, out, runs, v.system, (ZMQBUS,))
    # Durable streams: each zmqbus sync setting ÷ JetStream, and full ÷ normal.
    out["ratios_stream"] = {
        face: _ratios(sc, out, runs, face, (NATS_JS, ZMQBUS_SYNC_NORMAL)) for face in STREAM_FACES
    }
    return out


def _warm_up(
    systems: list[str], unavailable: dict[str, str], progress: Progress, *, streams: bool
) -> None:
    """One small unrecorded fire-and-forget run per system before the first scenario,
    so the first recorded run does not pay for cold caches and first imports; with
    ``streams``, a small pipelined stored publish per stream system too."""
    keys = ("ff", "stream_pipe") if streams else ("ff",)
    scenarios = [s for s in build_scenarios(QUICK) if s.key in keys]
    quiet = Progress(0, stream=_NullStream(), bar=False)
    progress.note("perf: warming up (one small unrecorded run per system)")
    for sc in scenarios:
        run_scenario(sc, QUICK, systems, unavailable, quiet)


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _ratios(
    sc: Scenario,
    out: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    base: str = ZMQBUS,
    peers: Sequence[str] = tuple(PEERS),
) -> dict[str, Any]:
    """``base`` ÷ each of ``peers`` that took part: of the medians, and the range of
    the per-run ratios (run i of ``base`` against run i of the peer: measured back
    to back, in the same run). By default zmqbus (the threaded face) ÷ the peers."""
    ratios: dict[str, Any] = {}
    z = out["systems"].get(base)
    if not z:
        return ratios
    for peer, pres in out["systems"].items():
        if peer == base or peer not in peers or not pres:
            continue
        figs: dict[str, Any] = {}
        for fig in sc.figures:
            zs, ps = z["stats"].get(fig.key), pres["stats"].get(fig.key)
            if not zs or not ps or not ps["median"]:
                continue
            per_run = []
            for zr, pr in zip(runs.get(base, []), runs.get(peer, []), strict=False):
                zv = zr.get("values", {}).get(fig.key)
                pv = pr.get("values", {}).get(fig.key)
                if zv is not None and pv:
                    per_run.append(zv / pv)
            ratio = zs["median"] / ps["median"]
            figs[fig.key] = {
                "ratio": ratio,
                "min": min(per_run) if per_run else ratio,
                "max": max(per_run) if per_run else ratio,
                "n": len(per_run),
            }
        ratios[peer] = figs
    return ratios


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m perf",
        description="zmqbus performance suite: zmqbus side by side with raw pyzmq, NATS, Redis.",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: small counts, 1 run")
    ap.add_argument("--runs", type=int, help="runs per figure (default: full 3, quick 1)")
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="KEY",
        help="scenario keys or prefixes to run (e.g. ff latency routing_)",
    )
    ap.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=list(SYSTEMS),
        help="systems to measure (default: all)",
    )
    ap.add_argument(
        "--stream-count",
        type=int,
        metavar="N",
        help="stored messages that stream_replay reads back and stream_rss measures the "
        "server's memory with (default: full 1,000,000, quick 2,000)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    ap.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    ap.add_argument(
        "--require-all",
        action="store_true",
        help="exit 3 if any peer is missing (the default when CI=true)",
    )
    ap.add_argument(
        "--no-warmup", action="store_true", help="skip the unrecorded warm-up run per system"
    )
    ap.add_argument("--label", default="", help="a note stored with the results")
    ap.add_argument(
        "--update-readme",
        action="store_true",
        help="write this run's table into perf/README.md (between its results markers)",
    )
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    profile = QUICK if args.quick else FULL
    if args.runs is not None:
        if args.runs < 1:
            print("--runs must be at least 1", file=sys.stderr)
            return 2
        profile = Profile(**{**profile.__dict__, "runs": args.runs})
    if args.stream_count is not None:
        if args.stream_count < 1:
            print("--stream-count must be at least 1", file=sys.stderr)
            return 2
        counts = {"stream_replay_count": args.stream_count, "stream_rss_count": args.stream_count}
        profile = Profile(**{**profile.__dict__, **counts})
    scenarios = build_scenarios(profile)
    if args.list:
        for sc in scenarios:
            print(f"{sc.key:<24} {sc.title}")
        return 0
    if args.only:
        scenarios = [sc for sc in scenarios if any(sc.key.startswith(k) for k in args.only)]
        if not scenarios:
            print(f"no scenario matches {args.only}; see --list", file=sys.stderr)
            return 2

    lacking = suite_missing()
    if lacking:
        print("perf: cannot run: " + "; ".join(lacking), file=sys.stderr)
        return 3
    unavailable: dict[str, str] = {}
    for key in args.systems:
        lacks = missing(key)
        if lacks:
            unavailable[key] = "; ".join(lacks)
            print(
                f"perf: {SYSTEMS[key].label} is SKIPPED: " + "; ".join(lacks),
                file=sys.stderr,
            )
    require_all = args.require_all or os.environ.get("CI", "").lower() == "true"
    if unavailable and require_all:
        print("perf: every peer is required (--require-all or CI=true); stopping", file=sys.stderr)
        return 3

    worker_context()  # start the forkserver before any thread of ours exists
    total = 0
    for sc in scenarios:
        n_sys = sum(
            1
            for s in sc.systems
            if s in args.systems
            and s not in unavailable
            and all(SYSTEMS[s].has(r) for r in sc.roles)
        )
        total += n_sys * profile.runs
    progress = Progress(total)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    progress.note(
        f"perf: {profile.name} profile, {profile.runs} run(s) per figure, "
        f"{len(scenarios)} scenarios, {total} steps; systems: "
        + ", ".join(s for s in args.systems if s not in unavailable)
    )
    results: dict[str, Any] = {
        "suite": "zmqbus perf",
        "profile": profile.name,
        "runs": profile.runs,
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "perf", *(sys.argv[1:] if argv is None else argv)]),
        "machine": _machine(),
        "zmqbus": _zmqbus_source(),
        "label": args.label,
        "unavailable": unavailable,
        "scenarios": [],
    }
    try:
        if not args.no_warmup:
            # The stream systems too, but not in a smoke run: their servers take a second.
            streams = not args.quick and any(
                s in STREAM_SYSTEMS for sc in scenarios for s in sc.systems
            )
            _warm_up(list(args.systems), unavailable, progress, streams=streams)
        for sc in scenarios:
            results["scenarios"].append(
                run_scenario(sc, profile, list(args.systems), unavailable, progress)
            )
    except KeyboardInterrupt:
        progress.note("perf: interrupted; writing what was measured")
        results["interrupted"] = True
    finally:
        progress.close()  # the bar stays drawn; what follows goes below it
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["targets"] = report.targets(results)
    for v in ZMQBUS_VARIANTS:  # curve_cost, metrics_cost
        results[f"{v.field}_cost"] = report.variant_cost(results, v)
    results["stream_targets"] = report.stream_targets(results)
    failures = [
        f"{sc['key']}/{s}"
        for sc in results["scenarios"]
        for s, r in sc["systems"].items()
        if r and r.get("failed_runs")
    ]
    results["failures"] = failures
    paths = _write(results, args.out, charts=not args.no_charts)
    if args.update_readme:
        paths.append(_update_readme(results, args.out))
    progress.note(f"perf: done in {results['seconds']:.0f} s; results in {paths[0]}")
    for p in paths[1:]:
        progress.note(f"      {p}")
    if failures:
        progress.note("perf: FAILED runs: " + ", ".join(failures))
        return 1
    return 130 if results.get("interrupted") else 0


def _write(results: dict[str, Any], out: Path, *, charts: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(results["started"]).strftime("%Y%m%dT%H%M%SZ")
    prefix = "quick-" if results["profile"] == "quick" else ""
    text = json.dumps(results, indent=1, sort_keys=False, default=str)
    run_file = out / f"{prefix}{stamp}.json"
    tmp = run_file.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(run_file)
    latest = out / f"{prefix}latest.json"
    latest.write_text(text)
    md = out / f"{prefix}latest.md"
    md.write_text(_markdown_doc(results))
    paths = [run_file, latest, md]
    if charts:
        paths += report.make_charts(results, out / f"{prefix}charts")
    return paths


README = Path(__file__).resolve().parent / "README.md"
_START = "<!-- results:start (written by python -m perf --update-readme) -->"
_END = "<!-- results:end -->"


def _update_readme(results: dict[str, Any], out: Path) -> Path:
    """Replace the block between the results markers of perf/README.md."""
    text = README.read_text()
    lo, hi = text.find(_START), text.find(_END)
    if lo < 0 or hi < lo:
        raise SystemExit(f"{README}: results markers not found")
    charts = out / ("quick-charts" if results["profile"] == "quick" else "charts")
    try:
        rel = charts.resolve().relative_to(README.parent)
    except ValueError:
        rel = charts.resolve()
    figs = "\n".join(
        f"![{name}]({rel.as_posix()}/{name}.png)"
        for name in ("throughput", "latency", "payloads", "routing", "streams")
        if (charts / f"{name}.png").exists()
    )
    block = f"{_START}\n{_markdown_doc(results)}\n{figs}\n{_END}"
    README.write_text(text[:lo] + block + text[hi + len(_END) :])
    return README


def _markdown_doc(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = m["versions"]
    z = results.get("zmqbus", {})
    measured = f"zmqbus {z.get('version', '?')}"
    if z.get("commit"):
        measured += f" at commit {z['commit']}" + (" (modified)" if z.get("modified") else "")
    if results.get("label"):
        measured += f"; {results['label']}"
    peers = m.get("peer_config", {})
    loop = peers.get("nats_event_loop") or "?"
    parser = {True: "in use", False: "NOT in use"}.get(peers.get("redis_hiredis"), "?")
    head = (
        f"{_code(results['command'])}, started {results['started']}: "
        f"{results['profile']} profile, {results['runs']} run(s) per figure, "
        f"{results['seconds']:.0f} s. Measured: {measured}.\n\n"
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory']}, Linux {m['kernel']}, "
        f"{m['python']}; {m['note']}. zmqbus hot paths: {v.get('zmqbus_hot_paths', '?')}. "
        f"pyzmq {v.get('pyzmq')} (libzmq {v.get('libzmq')}), "
        f"{v.get('nats-server')} with nats-py {v.get('nats-py')} on uvloop {v.get('uvloop')} "
        f"(event loop: {loop}), {v.get('redis-server')} with redis-py {v.get('redis')} and "
        f"hiredis {v.get('hiredis')} (hiredis parser: {parser})."
        "\n\n"
    )
    legend = (
        "Each cell: median <sub>min-max</sub> over the runs. Ratio columns: zmqbus ÷ the peer, "
        "of the medians <sub>range of the per-run ratios</sub>; for µs, MiB and bytes lower "
        'is better, so there a ratio below 1 favours zmqbus. "zmqbus" is the threaded `Bus`, '
        '"zmqbus (asyncio)" the asyncio `zmqbus.aio.Bus` on uvloop (the same broker), with '
        "its own ratio columns to NATS and to pyzmq DEALER/ROUTER at the end. "
        'No "lost" row under a scenario: nothing was lost in it.\n\n'
    )
    pubsub = ""
    # A run of the stream scenarios alone has no pub/sub table and no issue-4 targets.
    if any(not sc["key"].startswith(STREAM_PREFIX) for sc in results["scenarios"]):
        pubsub = (
            legend
            + report.markdown(results)
            + "\n### Targets of issue 4\n\n"
            + report.targets_markdown(results["targets"])
        )
    return (
        head
        + pubsub
        + "".join(
            report.variant_markdown(results.get(f"{v.field}_cost", []), v) for v in ZMQBUS_VARIANTS
        )
        + report.streams_markdown(results)
    )


def _code(text: str) -> str:
    """``text`` as inline Markdown code, whatever backticks it holds."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if fence != "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


if __name__ == "__main__":
    raise SystemExit(main())
