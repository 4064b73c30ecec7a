"""Start and stop the servers on 127.0.0.1: the zmqbus broker (plain, with CURVE, with
Prometheus metrics scraped once a second, or with a store directory for durable
streams), nats-server (plain, or with JetStream), redis-server, and the raw-pyzmq
helper processes; read a server's RSS.

Every server runs in its own process. The script waits for each one's own "ready"
line (the broker's ``listening on``, nats-server's ``Server is ready``,
redis-server's ``Ready to accept connections``) instead of sleeping, keeps
draining its output so it never blocks on a full pipe, and stops it with SIGTERM.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

from perf.harness import Spec, Worker, die_with_parent
from zmqbus.keys import keygen, load_public_key

__all__ = [
    "ZMQBUS_STREAM_HWM",
    "ZMQBUS_STREAM_QUEUED_BYTES",
    "Scraper",
    "Server",
    "rss_kib",
    "start_server",
]

log = logging.getLogger("perf.servers")

ZMQBUS_MAX_MESSAGE_SIZE = 2 << 20  # room for the 1 MiB payload plus its envelope
ZMQBUS_MAX_SUBSCRIPTIONS = 200_000
_NATS_CONF = """\
# perf suite: room for 1 MiB payloads and large bursts without slow-consumer cuts.
max_payload: 2MB
max_pending: 1GB
write_deadline: "60s"
"""


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS in /proc/PID/status), 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else 0


def _store_dir(prefix: str) -> Path:
    """A fresh directory for a server's durable store, removed when the server stops.

    ``tempfile`` puts it under $TMPDIR (else /tmp): a disk, not a tmpfs, or fsync
    costs nothing and ``--sync full`` measures nothing."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running server: where publishers and subscribers connect, and its pid.

    ``curve`` is what a client of a CURVE broker needs (see ``Spec.curve``), None
    for every other server. ``scraper`` is what fetches a metrics broker's
    ``/metrics`` while it runs, None for every other server.
    """

    def __init__(self, kind: str, pub: str, sub: str, pid: int) -> None:
        self.kind = kind
        self.pub = pub
        self.sub = sub
        self.pid = pid
        self.curve: tuple[str, str] | None = None
        self.scraper: Scraper | None = None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> None:
        raise NotImplementedError


class _Subprocess(Server):
    def __init__(
        self,
        kind: str,
        argv: list[str],
        ready: re.Pattern[str],
        address: str | None,
        *,
        stream: str = "stderr",
        timeout: float = 20.0,
        cleanup: list[Path] | None = None,
        also: tuple[re.Pattern[str], ...] = (),
    ) -> None:
        """``ready``'s first group (if any) is the address; the server is up once
        ``ready`` and every pattern of ``also`` have matched a line. ``self.also``
        holds what each of ``also`` matched (its first group, else "")."""
        self._cleanup = cleanup or []
        self._tail: deque[str] = deque(maxlen=40)
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stream == "stderr" else subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a Ctrl-C in the terminal reaches the suite only
            preexec_fn=die_with_parent,
        )
        out = self._proc.stdout if stream == "stdout" else self._proc.stderr
        assert out is not None
        found: list[str] = []
        self.also: list[str | None] = [None] * len(also)
        event = threading.Event()

        def drain() -> None:
            for line in out:
                self._tail.append(line.rstrip())
                if not event.is_set():
                    m = ready.search(line)
                    if m and not found:
                        found.append(m.group(1) if m.groups() else "")
                    for i, pattern in enumerate(also):
                        m = pattern.search(line) if self.also[i] is None else None
                        if m:
                            self.also[i] = m.group(1) if m.groups() else ""
                    if found and None not in self.also:
                        event.set()
            event.set()

        threading.Thread(target=drain, name=f"perf-{kind}-log", daemon=True).start()
        if not event.wait(timeout) or not found or None in self.also:
            self._kill()
            tail = "\n".join(self._tail)
            raise RuntimeError(f"{kind} did not start ({' '.join(argv)}):\n{tail}")
        addr = address if address is not None else found[0]
        super().__init__(kind, addr, addr, self._proc.pid)

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        for path in self._cleanup:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.scraper is not None:
            self.scraper.stop()
        self._kill()


class _Helper(Server):
    """A raw-pyzmq streamer or forwarder in a worker process."""

    def __init__(self, kind: str, role: str, system: str) -> None:
        self._worker = Worker(Spec(system=system, role=role, timeout=1e9), name=f"{system}/{role}")
        info = self._worker.expect("ready", 30)
        super().__init__(kind, info["pub"], info["sub"], self._worker.pid)

    def stop(self) -> None:
        self._worker.proc.kill()
        self._worker.close(1.0)


def _broker_argv(*extra: str, bind: str = "tcp://127.0.0.1:0") -> list[str]:
    return [
        sys.executable,
        "-m",
        "zmqbus",
        "broker",
        "--bind",
        bind,
        "--max-message-size",
        str(ZMQBUS_MAX_MESSAGE_SIZE),
        # The routing scenarios hold up to 100,000 subscriptions on one
        # connection: past the default limits, raised as an operator would.
        "--max-subscriptions-per-peer",
        str(ZMQBUS_MAX_SUBSCRIPTIONS),
        "--max-subscriptions-per-channel",
        str(ZMQBUS_MAX_SUBSCRIPTIONS),
        "--log-level",
        "INFO",
        *extra,
    ]


_BROKER_READY = re.compile(r"listening on (tcp://\S+)")
_BROKER_READY_IPC = re.compile(r"listening on (ipc://\S+)")


def _ipc_broker() -> Server:
    """The same broker as for plain zmqbus, bound on ``ipc://`` (a Unix domain socket
    in a fresh directory) instead of tcp on loopback: for buses on the broker's host."""
    folder = Path(tempfile.mkdtemp(prefix="perf-ipc-"))
    return _Subprocess(
        "zmqbus broker (ipc)",
        _broker_argv(bind=f"ipc://{folder}/broker"),
        _BROKER_READY_IPC,
        None,
        cleanup=[folder],
    )


CURVE_USER = "perf"


def _curve_broker() -> Server:
    """The same broker as for plain zmqbus, started as an operator turns CURVE on: key
    pairs from ``keygen`` (what ``zmqbus keygen`` writes) and a ``--config`` file naming
    the broker's secret key and one user. The user may do anything, so the broker skips
    its permission checks and what the comparison shows is CURVE's own cost."""
    folder = Path(tempfile.mkdtemp(prefix="perf-curve-"))
    try:
        broker_public, broker_secret = keygen("broker", folder)
        user_public, user_secret = keygen(CURVE_USER, folder)
        config = folder / "broker.toml"
        config.write_text(
            f"secret_key = {broker_secret.name!r}\n\n"
            f"[[users]]\nname = {CURVE_USER!r}\npublic_key = {user_public.name!r}\n"
        )
        server_key = load_public_key(broker_public).decode("ascii")
        server = _Subprocess(
            "zmqbus broker (CURVE)",
            _broker_argv("--config", str(config)),
            _BROKER_READY,
            None,
            cleanup=[folder],
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    server.curve = (server_key, str(user_secret))
    return server


_METRICS_READY = re.compile(r"metrics on (http://\S+/metrics)")
SCRAPE_INTERVAL = 1.0  # seconds, as a Prometheus server with scrape_interval: 1s


class Scraper:
    """A thread of the suite's own process fetching ``url`` every ``interval`` seconds
    until stopped, as a Prometheus server would; counts scrapes, failures and bytes."""

    def __init__(self, url: str, interval: float = SCRAPE_INTERVAL) -> None:
        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.errors = 0
        self.last_bytes = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="perf-metrics-scraper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    self.last_bytes = len(resp.read())
                self.scrapes += 1
            except OSError as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def counts(self) -> tuple[int, int]:
        return self.scrapes, self.errors

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _metrics_broker() -> Server:
    """The same broker as for plain zmqbus plus ``--metrics 127.0.0.1:0`` (a free port,
    read back from the broker's "metrics on http://HOST:PORT/metrics" line), and a
    scraper thread fetching that URL once a second until the broker stops."""
    server = _Subprocess(
        "zmqbus broker (metrics)",
        _broker_argv("--metrics", "127.0.0.1:0"),
        _BROKER_READY,
        None,
        also=(_METRICS_READY,),
    )
    url = server.also[0]
    assert url is not None
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # up before the first run
            resp.read()
    except BaseException:
        server.stop()
        raise
    server.scraper = Scraper(url)
    return server


# A stream broker's high-water mark: max_queued_bytes / (max_message_size + 64 KiB)
# messages, 496 with the defaults and the suite's 2 MiB frames. A window of 1,000
# stored publishes owes its publisher 2,000 replies (STORED and ROUTED, each a zmq
# message of its own: STORED is not batched and breaks ROUTED's runs), and the zmqbus
# of 9526451-ed36375 drops a STORED or ROUTED that finds the queue full (counted as
# dropped_hwm), so that publish is never confirmed: 8 GiB makes the mark 3,971
# messages, past any window the suite keeps. A bound, not an allocation.
ZMQBUS_STREAM_QUEUED_BYTES = 8 << 30
# The high-water mark (messages) the broker derives from it, as it logs it.
ZMQBUS_STREAM_HWM = ZMQBUS_STREAM_QUEUED_BYTES // (ZMQBUS_MAX_MESSAGE_SIZE + 65536)


def _stream_broker(sync: str) -> Server:
    """The suite's broker with a store directory of its own (SQLite file streams) and
    its commits synced as ``sync`` says: "normal" survives the broker process dying,
    "full" power loss too (an fsync per commit)."""
    folder = _store_dir(f"perf-zmqbus-{sync}-")
    try:
        argv = _broker_argv(
            "--data-dir",
            str(folder),
            "--sync",
            sync,
            "--max-queued-bytes",
            str(ZMQBUS_STREAM_QUEUED_BYTES),
        )
        return _Subprocess(
            f"zmqbus broker (sync {sync})", argv, _BROKER_READY, None, cleanup=[folder]
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _nats_server(*, jetstream: bool) -> Server:
    """nats-server with the suite's config; with ``jetstream``, JetStream on and its
    file store in a directory of its own, synced as by default: no fsync per write
    (a PubAck means written to the OS, as zmqbus's sync "normal"), a forced sync
    only now and then (``sync_interval``, 2 minutes in the versions that name it)."""
    fd, name = tempfile.mkstemp(prefix="perf-nats-", suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write(_NATS_CONF)
    conf = Path(name)
    cleanup = [conf]
    argv = ["nats-server", "-a", "127.0.0.1", "-p", "-1", "-c", str(conf)]
    if jetstream:
        store = _store_dir("perf-nats-js-")
        cleanup.append(store)
        argv += ["-js", "-sd", str(store)]
    try:
        server = _Subprocess(
            "nats-server" + (" -js" if jetstream else ""),
            argv,
            re.compile(r"Listening for client connections on (\S+:\d+)"),
            None,
            cleanup=cleanup,
        )
    except BaseException:
        for path in cleanup:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    # The address line comes before "Server is ready": wait for that one too.
    _wait_port(server.pub)
    server.pub = server.sub = f"nats://{server.pub}"
    return server


def start_server(kind: str, system: str) -> Server:
    """Start the server of ``kind`` (see ``perf.systems.System.server``)."""
    if kind == "zmqbus":
        return _Subprocess("zmqbus broker", _broker_argv(), _BROKER_READY, None)
    if kind == "zmqbus-curve":
        return _curve_broker()
    if kind == "zmqbus-metrics":
        return _metrics_broker()
    if kind == "zmqbus-ipc":
        return _ipc_broker()
    if kind == "zmqbus-sync-normal":
        return _stream_broker("normal")
    if kind == "zmqbus-sync-full":
        return _stream_broker("full")
    if kind == "nats":
        return _nats_server(jetstream=False)
    if kind == "nats-js":
        return _nats_server(jetstream=True)
    if kind == "redis":
        port = _free_port()
        argv = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            # A subscriber that falls behind is not cut off (the default cuts at
            # 32 MB); the runs bound how far behind it can get.
            "--client-output-buffer-limit",
            "pubsub 0 0 0",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        server = _Subprocess(
            "redis-server",
            argv,
            re.compile(r"(Ready to accept connections)"),
            f"redis://127.0.0.1:{port}/0",
            stream="stdout",
        )
        return server
    if kind == "streamer":
        return _Helper("pyzmq streamer", "streamer", system)
    if kind == "forwarder":
        return _Helper("pyzmq forwarder", "forwarder", system)
    raise ValueError(f"unknown server kind {kind!r}")


def _wait_port(hostport: str, timeout: float = 10.0) -> None:
    host, _, port = hostport.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), 1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
