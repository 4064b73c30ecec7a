"""A short soak: ``perf/soak.py`` for about 20 s, processes and a broker of its own.

Two publishers publish numbered messages with confirmation, as fast as they
can, to two subscribers in other processes that keep up (a large buffer).
Nothing may be lost or duplicated: every publish is confirmed by both
subscribers, and each subscriber receives every message of every publisher,
once and in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SOAK = Path(__file__).resolve().parents[1] / "perf" / "soak.py"
PUBLISHERS = 2
SUBSCRIBERS = 2
DURATION = 20


@pytest.mark.timeout(120)
def test_soak_confirmed_publishing_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SOAK), "--publishers", str(PUBLISHERS)]
    cmd += ["--subscribers", str(SUBSCRIBERS), "--duration", str(DURATION)]
    cmd += ["--confirm", "--maxsize", "1000000", "--json", str(out)]
    proc = subprocess.run(
        cmd, cwd=SOAK.parents[1], capture_output=True, text=True, timeout=110, check=False
    )
    sys.stderr.write(proc.stderr)  # the summary, shown with -s or on failure
    assert proc.returncode in (0, 1), f"soak.py could not run:\n{proc.stderr}"
    report: dict[str, Any] = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report

    sent = report["sent"]
    assert sent > 0
    assert report["duration"] >= DURATION
    assert sum(report["sent_per_publisher"].values()) == sent
    assert all(n > 0 for n in report["sent_per_publisher"].values())
    # Confirmed publishing: every publish confirmed, by every subscriber.
    assert report["publish_errors"] == {}
    assert report["confirmed"] == sent
    assert report["under_delivered"] == 0
    for pub in report["publishers"]:
        assert pub["result_delivered"] == pub["sent"] * SUBSCRIBERS
        assert pub["end_marker_error"] is None
    # Zero loss, zero duplicates, nothing dropped, and in order.
    assert report["loss"] == 0
    assert report["duplicates"] == 0
    assert report["gaps"] == 0
    assert report["out_of_order"] == 0
    assert report["drops"] == {"subscription_dropped": 0, "publish_result_dropped": 0}
    assert report["publish_result_failed"] == 0
    # Every subscriber received every message of every publisher.
    assert report["received_per_subscriber"] == {str(i): sent for i in range(SUBSCRIBERS)}
    assert report["received"] == report["expected"] == sent * SUBSCRIBERS
    for sub in report["subscribers"]:
        assert sub["end_markers"] == PUBLISHERS
        for pub, tally in sub["from"].items():
            assert tally["unique"] == tally["received"] == report["sent_per_publisher"][pub]
            assert tally["missing"] == 0
    assert report["ok"] is True
    assert proc.returncode == 0
