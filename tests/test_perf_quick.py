"""The perf suite's quick mode, run inside the test suite so its scripts never rot.

One subprocess runs ``python -m perf --quick`` (every scenario, every system, small
counts, about half a minute here). The test asserts that every scenario completed
for every system that takes part, that nothing was lost where the scenario promises
no loss, and that confirmations and echoes all came back. It never asserts a speed.

The peers (nats-server, redis-server, nats-py, uvloop, redis-py, hiredis) and the
suite's own packages (hdrhistogram, matplotlib) come from ``pip install -e
'.[test,perf]'`` and ``apt-get install nats-server redis-server``. In CI (CI=true)
a missing one fails this test loudly; elsewhere the test skips and says what to
install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.profiles import QUICK  # noqa: E402
from perf.scenarios import build_scenarios  # noqa: E402
from perf.systems import SYSTEMS, missing, suite_missing  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"

# Scenarios whose runs count every reply: any error there is a lost or wrong message.
_COUNTED_REPLIES = {"confirm", "pipelined", "pipelined_wide", "latency", "reqrep"}


def _lacking() -> list[str]:
    lacks = list(suite_missing())
    for key in SYSTEMS:
        lacks += [f"{SYSTEMS[key].label}: {text}" for text in missing(key)]
    return lacks


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lacks = _lacking()
    if lacks:
        text = "\n  ".join(lacks)
        if IN_CI:
            pytest.fail(
                "CI must run the perf suite against every peer, but some are missing:\n  " + text,
                pytrace=False,
            )
        pytest.skip("perf peers missing; install them to run the quick perf suite: " + text)
    out = tmp_path_factory.mktemp("perf")
    proc = subprocess.run(
        [sys.executable, "-m", "perf", "--quick", "--require-all", "--out", str(out)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
    )
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    assert proc.returncode == 0, f"python -m perf --quick exited {proc.returncode}:\n{tail}"
    results: dict[str, Any] = json.loads((out / "quick-latest.json").read_text())
    results["_out"] = str(out)
    return results


@pytest.mark.timeout(300)
def test_every_scenario_completes(quick_results: dict[str, Any]) -> None:
    got = {sc["key"]: sc for sc in quick_results["scenarios"]}
    for sc in build_scenarios(QUICK):
        assert sc.key in got, f"scenario {sc.key} did not run"
        res = got[sc.key]
        takes_part = [s for s in sc.systems if all(SYSTEMS[s].has(r) for r in sc.roles)]
        assert set(res["systems"]) == set(takes_part), (sc.key, sorted(res["systems"]))
        for system, sysres in res["systems"].items():
            where = f"{sc.key}/{system}"
            assert sysres["failed_runs"] == 0, (where, sysres.get("setup_error"), sysres["runs"])
            assert len(sysres["runs"]) == QUICK.runs, where
            for fig in sc.figures:
                assert fig.key in sysres["stats"], (where, fig.key)
                assert sysres["stats"][fig.key]["median"] > 0, (where, fig.key)
    assert not quick_results["failures"]
    assert not quick_results["unavailable"]


@pytest.mark.timeout(300)
def test_no_loss_where_promised(quick_results: dict[str, Any]) -> None:
    promised = 0
    for sc in quick_results["scenarios"]:
        for system, sysres in sc["systems"].items():
            where = f"{sc['key']}/{system}"
            if sysres["lossless_promised"]:
                promised += 1
                assert sysres["loss_total"] == 0, f"{where} lost {sysres['loss_total']} messages"
                for run in sysres["runs"]:
                    assert run["info"].get("dropped_in_subscription", 0) == 0, where
            if sc["key"] in _COUNTED_REPLIES:
                assert sysres["errors_total"] == 0, f"{where}: {sysres['errors_total']} errors"
    # zmqbus (both faces) promises it in every scenario at quick-mode counts (under the HWMs).
    zmqbus_scenarios = [sc for sc in quick_results["scenarios"] if "zmqbus" in sc["systems"]]
    assert all(sc["systems"]["zmqbus"]["lossless_promised"] for sc in zmqbus_scenarios)
    assert promised >= len(zmqbus_scenarios)
    aio_scenarios = [sc for sc in quick_results["scenarios"] if "zmqbus-aio" in sc["systems"]]
    assert all(sc["systems"]["zmqbus-aio"]["lossless_promised"] for sc in aio_scenarios)


@pytest.mark.timeout(300)
def test_latency_samples_and_outputs(quick_results: dict[str, Any]) -> None:
    for sc in quick_results["scenarios"]:
        if sc["key"] not in ("latency", "reqrep", "confirm"):
            continue
        want = QUICK.confirm_count if sc["key"] == "confirm" else QUICK.latency_count
        for system, sysres in sc["systems"].items():
            for run in sysres["runs"]:
                for group in ("rtt", "oneway"):
                    n = run["info"].get(f"{group}_samples")
                    if n is not None:
                        assert n == want, (sc["key"], system, group, n)
            assert sysres["curves"], (sc["key"], system)
    out = Path(quick_results["_out"])
    table = (out / "quick-latest.md").read_text()
    assert "| scenario | figure | zmqbus |" in table
    assert "Targets of issue 4" in table
    for chart in ("latency", "throughput", "payloads", "routing"):
        png = out / "quick-charts" / f"{chart}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def _stats(median: float) -> dict[str, Any]:
    return {"stats": {"rtt.p50": {"median": median}, "rtt.p99": {"median": median}}}


def test_targets_say_whether_request_reply_was_measured() -> None:
    from perf.report import targets

    def notes(results: dict[str, Any]) -> list[str]:
        return [r["note"] for r in targets(results) if r["target"].startswith("request/reply")]

    # A run of other scenarios only: nothing to say about request/reply.
    assert notes({"scenarios": []}) == ["not measured in this run"] * 2
    # A run that measured it: zmqbus has it, or it has none.
    ran = {"key": "reqrep", "systems": {"nats": _stats(300.0)}, "params": {}}
    assert notes({"scenarios": [ran]}) == ["this zmqbus has no request/reply: not measurable"] * 2
    ran["systems"]["zmqbus"] = _stats(600.0)
    rows = [r for r in targets({"scenarios": [ran]}) if r["target"].startswith("request/reply")]
    assert [(r["ratio"], r["met"], r["note"]) for r in rows] == [(2.0, False, "")] * 2
