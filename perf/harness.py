"""Worker processes and the small protocol the orchestrator speaks with them.

Every publisher, subscriber and helper runs in a process of its own, started from
a ``forkserver`` that has the client libraries imported already, so starting one
costs milliseconds and no process inherits another's sockets or threads. A worker
runs one *role* function of one *system* (``perf.systems``) with a ``Spec`` and
talks to the orchestrator over a pipe:

    worker -> ("ready", info)       subscribed / connected, waiting
    orch   -> ("go",)               sources start publishing
    orch   -> ("expect", n)         sinks: the sources are done and sent n in total
    orch   -> ("stop",)             helpers (fillers): finish
    worker -> ("result", data)      what it measured
    worker -> ("error", text)       it failed (traceback text)

Times are ``time.monotonic_ns()``: CLOCK_MONOTONIC on Linux, one clock for every
process on the machine, so a timestamp taken in one process can be subtracted from
one taken in another (one-way latency, start-to-last-delivery throughput).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.connection
import signal
import struct
import sys
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "PAYLOAD_HEADER",
    "Ctl",
    "Failures",
    "IdleRule",
    "RoleFn",
    "RunError",
    "Spec",
    "Worker",
    "die_with_parent",
    "filler_patterns",
    "make_payload",
    "now_ns",
    "read_stamp",
    "record_latency",
    "samples_from_bytes",
    "samples_to_bytes",
    "stamp_payload",
    "stand_in_channels",
    "worker_context",
]

log = logging.getLogger("perf")

now_ns = time.monotonic_ns

# Latency payloads start with (sequence number, send time in ns), little-endian int64s.
_STAMP = struct.Struct("<qq")
PAYLOAD_HEADER = _STAMP.size  # 16: the smallest payload size the suite uses
_pack_stamp = _STAMP.pack
_unpack_stamp = _STAMP.unpack_from


def make_payload(size: int) -> bytes:
    """A constant payload of ``size`` bytes for throughput runs."""
    return b"x" * size


def stamp_payload(seq: int, t_ns: int, size: int) -> bytes:
    """A payload of ``size`` (>= 16) bytes carrying ``seq`` and a send time."""
    return _pack_stamp(seq, t_ns) + b"x" * (size - PAYLOAD_HEADER)


def read_stamp(payload: bytes) -> tuple[int, int]:
    """The (seq, send time) of a stamped payload."""
    seq, t_ns = _unpack_stamp(payload)
    return int(seq), int(t_ns)


def filler_patterns(kind: str, n: int, *, glob: bool = False) -> list[str]:
    """``n`` subscription patterns that the benchmark topics (``bench.*``) never match.

    ``exact``: ``fill.I``. ``wildcard``: a mix of ``fill.I.*``, ``*.fI`` and ``fI.>``
    (with ``glob``, Redis glob patterns: ``fill.I.*``, ``*.fI``, ``fI.*``), so the
    wildcard branches of a matcher hold many entries, including one at the root.
    """
    if kind == "exact":
        return [f"fill.{i}" for i in range(n)]
    if kind != "wildcard":
        raise ValueError(f"unknown filler kind {kind!r}")
    tail = "*" if glob else ">"
    forms = ("fill.{}.*", "*.f{}", f"f{{}}.{tail}")
    return [forms[i % 3].format(i) for i in range(n)]


def stand_in_channels(topic: str, n: int) -> list[str]:
    """``n`` subjects ``chI.<topic>`` for a system without channels: each stands in for
    one channel, the benchmark's topic in a namespace of its own that it never matches."""
    return [f"ch{i}.{topic}" for i in range(n)]


class Failures:
    """A confirmer's failed publishes: how many, and what the first five were."""

    def __init__(self) -> None:
        self.count = 0
        self.samples: list[str] = []

    def add(self, what: object) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(repr(what)[:300])


def record_latency(lat: array[int], t0: int, _done: object) -> None:
    """A future's done-callback (``functools.partial(record_latency, lat, t0)``): the
    time from ``t0`` to now, as the confirmation arrives."""
    lat.append(now_ns() - t0)


def samples_to_bytes(samples: array[int]) -> bytes:
    return samples.tobytes()


def samples_from_bytes(data: bytes) -> list[int]:
    a = array("q")
    a.frombytes(data)
    return a.tolist()


@dataclass(frozen=True)
class Spec:
    """What one worker does. Roles read the fields they need."""

    system: str
    role: str
    address: str = ""  # the system's server endpoint (zmq endpoint, nats://, redis://)
    channel: str = ""  # zmqbus channel UUID
    topic: str = "bench.data"  # topic/subject/channel that sources publish to
    pattern: str = ""  # what sinks subscribe to; "" means ``topic``
    reply_topic: str = "bench.reply"  # echo / ack / pong topic
    count: int = 0  # messages per source; messages a sink expects until told otherwise
    size: int = 100  # payload bytes
    window: int = 1  # confirmer: confirmations outstanding at once
    warmup: int = 0  # pinger / confirmer: leading round trips not recorded
    mode: str = "count"  # sink: count | echo | ack | respond
    max_seconds: float = 30.0  # a source stops publishing after this long
    timeout: float = 120.0  # a worker gives up after this long
    fill: int = 0  # filler: how many subscriptions (or channels) to install
    fill_kind: str = "exact"  # filler: exact | wildcard | channels
    # A CURVE broker's client: (the broker's public key, Z85; this client's
    # ``.key_secret`` file), from ``perf.servers.Server.curve``. None: no CURVE.
    curve: tuple[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sub_pattern(self) -> str:
        return self.pattern or self.topic

    def but(self, **changes: Any) -> Spec:
        return replace(self, **changes)


class RunError(RuntimeError):
    """A worker failed, died or did not answer in time."""


# --- the worker side -----------------------------------------------------------------


class Ctl:
    """The worker's end of the pipe."""

    def __init__(self, conn: Connection, spec: Spec) -> None:
        self._conn = conn
        self.spec = spec
        self.deadline = time.monotonic() + spec.timeout
        self.expected: int | None = None

    def ready(self, **info: Any) -> None:
        self._conn.send(("ready", info))

    def wait_go(self) -> None:
        self._wait_for("go")

    def wait_stop(self) -> None:
        self._wait_for("stop")

    def _wait_for(self, kind: str) -> None:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not self._conn.poll(remaining):
                raise TimeoutError(f"no {kind!r} from the orchestrator in time")
            msg = self._conn.recv()
            if msg[0] == kind:
                return
            if msg[0] == "expect":
                self.expected = int(msg[1])

    def wait_expect(self) -> int:
        """Block until the orchestrator says the sources are done (and sent how many)."""
        while self.expected is None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not self._conn.poll(remaining):
                raise TimeoutError("no 'expect' from the orchestrator in time")
            msg = self._conn.recv()
            if msg[0] == "expect":
                self.expected = int(msg[1])
        return self.expected

    def poll_expect(self) -> int | None:
        """The total the sources sent, once the orchestrator has said it."""
        while self.expected is None and self._conn.poll(0):
            msg = self._conn.recv()
            if msg[0] == "expect":
                self.expected = int(msg[1])
        return self.expected

    def result(self, **data: Any) -> None:
        self._conn.send(("result", data))

    def error(self, text: str) -> None:
        self._conn.send(("error", text))


class IdleRule:
    """When a sink stops: it has what it expects, or (once told how many were sent)
    nothing more arrived for ``grace`` seconds, or its hard deadline passed.

    Sinks call ``stop(received, t_last_ns)`` only when a receive timed out, so the
    hot path never touches the pipe.
    """

    def __init__(self, ctl: Ctl, grace: float = 1.0) -> None:
        self._ctl = ctl
        self._grace_ns = int(grace * 1e9)
        self._told_ns: int | None = None
        self.target = ctl.spec.count

    def stop(self, received: int, t_last_ns: int) -> bool:
        if self._told_ns is None:
            expected = self._ctl.poll_expect()
            if expected is not None:
                self.target = expected
                self._told_ns = now_ns()
        if received >= self.target:
            return True
        if time.monotonic() > self._ctl.deadline:
            return True
        if self._told_ns is None:
            return False
        return now_ns() - max(self._told_ns, t_last_ns) > self._grace_ns


RoleFn = Callable[[Spec, Ctl], None]

_PR_SET_PDEATHSIG = 1
_prctl: Any
try:  # looked up here, in the parent, so a child only makes the call
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """Have the kernel SIGTERM this process when its parent ends, however the parent
    ends (Linux ``PR_SET_PDEATHSIG``): no server or worker outlives a killed run."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker_entry(spec: Spec, conn: Connection) -> None:
    die_with_parent()  # the parent is the forkserver, which ends with the suite
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s %(levelname)s {spec.system}/{spec.role}: %(message)s",
        stream=sys.stderr,
    )
    # The preloaded modules' objects are shared with the forkserver copy-on-write: a
    # full collection in the timed part would walk (and copy) every page of them.
    # In the 5,000-message fan-out that cost ~150 ms per run and halved the figure.
    gc.collect()
    gc.freeze()
    ctl = Ctl(conn, spec)
    try:
        from perf.systems import role_function

        role_function(spec.system, spec.role)(spec, ctl)
    except BaseException:
        text = traceback.format_exc()
        try:
            ctl.error(text)
        except OSError:
            print(text, file=sys.stderr)
    finally:
        conn.close()


# --- the orchestrator side -----------------------------------------------------------

_PRELOAD = [
    "zmq",
    "msgpack",
    "zmqbus",
    "zmqbus.aio",
    "perf.harness",
    "perf.systems",
    "perf.sys_zmqbus",
    "perf.sys_zmqbus_aio",
    "perf.sys_zmq",
    "perf.sys_nats",
    "perf.sys_redis",
    "nats",
    "uvloop",
    "redis",
    "hiredis",
]

_context: multiprocessing.context.BaseContext | None = None


def worker_context() -> multiprocessing.context.BaseContext:
    """The forkserver context every worker starts from (modules preloaded)."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _context = ctx
    return _context


class Worker:
    """One worker process and the orchestrator's end of its pipe."""

    def __init__(self, spec: Spec, name: str | None = None) -> None:
        ctx = worker_context()
        self.spec = spec
        self.name = name or f"{spec.system}/{spec.role}"
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_entry, args=(spec, child), name=self.name, daemon=True
        )
        self.proc.start()
        child.close()
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        pid = self.proc.pid
        assert pid is not None
        return int(pid)

    def send(self, *msg: Any) -> bool:
        """Send to the worker; False if it has already exited (a sink that got all it
        expected before being told the total, say): whatever it reported is still
        waiting in the pipe for ``expect``."""
        try:
            self.conn.send(msg)
        except OSError:
            return False
        return True

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """Wait for a ``kind`` message; RunError on an error, death or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunError(f"{self.name}: no {kind!r} within {timeout:g}s")
            ready = multiprocessing.connection.wait([self.conn, self.proc.sentinel], remaining)
            if self.conn in ready:
                try:
                    msg = self.conn.recv()
                except EOFError:
                    raise RunError(
                        f"{self.name}: exited (code {self.proc.exitcode}) before {kind!r}"
                    ) from None
                if msg[0] == "error":
                    raise RunError(f"{self.name} failed:\n{msg[1]}")
                if msg[0] == kind:
                    data: dict[str, Any] = msg[1]
                    if kind == "ready":
                        self.info = data
                    return data
                continue
            if self.proc.sentinel in ready and not self.conn.poll(0):
                self.proc.join(0.1)
                raise RunError(f"{self.name}: exited (code {self.proc.exitcode}) before {kind!r}")

    def close(self, timeout: float = 2.0) -> None:
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2.0)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(1.0)
        self.conn.close()


def wait_all(workers: list[Worker], kind: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [w.expect(kind, max(0.1, deadline - time.monotonic())) for w in workers]


def close_all(workers: list[Worker]) -> None:
    for w in workers:
        w.close()
