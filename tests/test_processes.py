"""The seed's background jobs and request/reply with buses in separate processes."""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from zmqbus import Broker, Bus

WORKER = str(pathlib.Path(__file__).with_name("proc_worker.py"))


@pytest.fixture
def spawn(broker: Broker, channel: uuid.UUID) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, WORKER, broker.address, str(channel), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # subscribed and confirmed
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _finish(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out.splitlines()


@pytest.mark.timeout(120)
def test_background_jobs_each_handled_once_across_processes(
    broker: Broker, channel: uuid.UUID, spawn: object
) -> None:
    workers = [spawn("jobs") for _ in range(3)]  # type: ignore[operator]
    with Bus(broker.address, channel) as producer:
        for i in range(90):
            r = producer.publish("jobs.email", str(i).encode(), timeout=10)
            # confirmed: exactly one worker took it and its handler has returned
            assert (r.delivered, r.buses) == (1, 1)
    handled = [_finish(w) for w in workers]
    jobs = [line.split()[1] for lines in handled for line in lines]
    assert collections.Counter(jobs) == collections.Counter(str(i) for i in range(90))
    assert all(len(lines) >= 10 for lines in handled), [len(x) for x in handled]


@pytest.mark.timeout(120)
def test_request_reply_across_processes_both_faces(
    broker: Broker, channel: uuid.UUID, spawn: object
) -> None:
    responders = [spawn("respond") for _ in range(2)]  # type: ignore[operator]
    pids = {str(r.pid) for r in responders}
    with Bus(broker.address, channel) as client:
        answers = {
            client.request("svc.whoami", b"", timeout=10).payload.decode() for _ in range(20)
        }
    assert answers == pids  # one member per request, spread over the pool
    requester = spawn("arequest")  # type: ignore[operator]
    lines = _finish(requester)
    assert len(lines) == 20 and {line.split()[1] for line in lines} == pids
    for r in responders:
        _finish(r)
