"""A broker in a process of its own, and free loopback ports, for tests that
need the broker away from the test's own threads (its GIL) or killed."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """`zmqbus broker` in a process of its own, on a fixed address."""

    def __init__(self, address: str, *args: str) -> None:
        self.address = address
        self.args = args  # more `zmqbus broker` options
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqbus", "broker", "--bind", self.address, *self.args],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "listening on" in line:
                break
        # Keep draining its log so a chatty broker never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
