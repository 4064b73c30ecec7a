"""The README's command-line synopsis is the command's own, and its example runs as
written, in bash, and the message arrives.

The block is taken from README.md and run unchanged; only its surroundings are the
test's: ``zmqbus`` on PATH runs this checkout, and ``$ZMQBUS_ADDRESS`` (which the
broker binds and the clients connect to) is an ipc endpoint of the test's own, so
runs in parallel do not meet on the default port.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
WAIT = 15.0  # seconds for the block to finish, or for one expected line


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match is not None, f"README has no section {title!r}"
    return match.group(1)


def _run_help() -> str:
    r = subprocess.run(
        [sys.executable, "-m", "zmqbus", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.timeout(30)
def test_synopsis_is_the_commands_own() -> None:
    blocks = re.findall(r"```text\n(.*?)```", _section("Command line"), re.S)
    assert blocks, "no synopsis block under '## Command line'"
    usage = _run_help().split("\n\n", 1)[0].splitlines()
    assert usage[0].startswith("usage: ")
    # `zmqbus --help` opens with it after "usage: ", the later lines indented to match.
    assert blocks[0].splitlines() == [line[len("usage: ") :] for line in usage]


def _example() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", _section("Command line"), re.S)
    assert len(blocks) == 1, "expected one bash example under '## Command line'"
    block: str = blocks[0]
    return block


def _kill_group(pgid: int, sig: int) -> None:
    # The group is gone once its last process has (the block may leave none).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _read(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


@pytest.mark.timeout(60)
def test_command_line_example_delivers(tmp_path: Path) -> None:
    block = _example()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "zmqbus"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zmqbus "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["ZMQBUS_ADDRESS"] = f"ipc://{tmp_path}/bus"
    env.pop("ZMQBUS_CHANNEL", None)
    # A session of its own: the broker the block leaves running, and anything else
    # it started, go with one killpg at the end.
    shell = subprocess.Popen(
        ["bash", "-c", block],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
    )
    out: queue.Queue[str | None] = queue.Queue()
    err: queue.Queue[str | None] = queue.Queue()
    readers = [
        threading.Thread(target=_read, args=(shell.stdout, out), daemon=True),
        threading.Thread(target=_read, args=(shell.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    seen: list[str] = []

    def stderr_so_far() -> list[str]:
        lines = []
        while not err.empty():
            line = err.get_nowait()
            if line is not None:
                lines.append(line)
        return lines

    try:
        assert shell.wait(WAIT) == 0, (seen, stderr_so_far())
        wanted = {
            "delivered=1 dropped=0 failed=0 buses=1",
            'orders.created {"source":"cli"} {"id": 1}',
        }
        while wanted:
            try:
                line = out.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"still waiting for {wanted}; stdout {seen}, stderr {stderr_so_far()}")
            if line is None:
                pytest.fail(
                    f"stdout ended without {wanted}; stdout {seen}, stderr {stderr_so_far()}"
                )
            seen.append(line)
            wanted.discard(line)
    finally:
        _kill_group(shell.pid, signal.SIGTERM)
        for reader in readers:
            reader.join(WAIT)
        if any(reader.is_alive() for reader in readers):
            _kill_group(shell.pid, signal.SIGKILL)
            for reader in readers:
                reader.join(WAIT)
        for stream in (shell.stdout, shell.stderr):
            assert stream is not None
            stream.close()
