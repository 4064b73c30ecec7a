"""Every Python example in the README runs as written, and prints what it says."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # Where a line promises output in a trailing comment, the output must contain it.
    for expected in re.findall(r"print\(.*\)\s+# (.+)$", code, re.M):
        shown = expected.split(" (")[0].strip()
        if shown.startswith("e.g."):
            continue
        assert shown in proc.stdout, f"expected {shown!r} in output:\n{proc.stdout}"
