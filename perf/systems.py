"""The systems under test, their roles, and what each needs installed.

A *role* is a function ``(Spec, Ctl) -> None`` run in a worker process. Scenarios
ask for roles by name; a system without a role is left out of that scenario (shown
as "n/a"), so giving a system a new capability is one function registered here.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass

from perf.harness import RoleFn
from zmqbus import Bus  # request/reply is measured when the installed zmqbus has it

__all__ = [
    "NATS_JS",
    "PEERS",
    "STREAM_FACES",
    "STREAM_SYSTEMS",
    "SYSTEMS",
    "ZMQBUS",
    "ZMQBUS_AIO",
    "ZMQBUS_CURVE",
    "ZMQBUS_IPC",
    "ZMQBUS_METRICS",
    "ZMQBUS_SYNC_FULL",
    "ZMQBUS_SYNC_NORMAL",
    "ZMQBUS_VARIANTS",
    "System",
    "Variant",
    "missing",
    "role_function",
    "suite_missing",
]


@dataclass(frozen=True)
class System:
    key: str
    label: str  # column heading
    # What perf.servers starts: zmqbus | zmqbus-curve | zmqbus-metrics |
    # zmqbus-sync-normal | zmqbus-sync-full | nats | nats-js | redis | streamer | forwarder.
    server: str
    roles: dict[str, str]  # role -> "module:function"
    binaries: tuple[tuple[str, str], ...] = ()  # (program, how to install it)
    modules: tuple[tuple[str, str], ...] = ()  # (import name, how to install it)
    per_run_server: bool = False  # a fresh server for every run (cheap Python helpers)

    def has(self, role: str) -> bool:
        return role in self.roles


_PIP = "pip install -e '.[perf]'"

# The two faces of the bus under test: both are "zmqbus", neither is a peer.
ZMQBUS = "zmqbus"  # the threaded ``zmqbus.Bus``: the face every "zmqbus ÷ peer" ratio uses
ZMQBUS_AIO = "zmqbus-aio"  # the asyncio ``zmqbus.aio.Bus`` on uvloop
# The threaded face again, to a broker with CURVE on: only ever compared with ZMQBUS.
ZMQBUS_CURVE = "zmqbus-curve"
# The threaded face again, to a broker serving Prometheus metrics (``--metrics``) that
# the suite scrapes once a second: only ever compared with ZMQBUS.
ZMQBUS_METRICS = "zmqbus-metrics"
# The threaded face again, to the same broker bound on ipc:// (a Unix domain socket):
# only ever compared with ZMQBUS.
ZMQBUS_IPC = "zmqbus-ipc"
# Durable streams (issue 15): the threaded face to a broker with a store directory,
# its commits synced as each ``--sync`` setting says, against NATS JetStream (file
# storage). They take part in the stream scenarios only, and only those.
ZMQBUS_SYNC_NORMAL = "zmqbus-sync-normal"
ZMQBUS_SYNC_FULL = "zmqbus-sync-full"
NATS_JS = "nats-js"
STREAM_FACES = (ZMQBUS_SYNC_NORMAL, ZMQBUS_SYNC_FULL)
STREAM_SYSTEMS = (*STREAM_FACES, NATS_JS)


def _aio_has_request() -> bool:
    try:
        from zmqbus import aio
    except ImportError:
        return False
    return hasattr(aio.Bus, "request")


@dataclass(frozen=True)
class Variant:
    """zmqbus with one broker setting changed, measured in the same run as plain zmqbus
    and compared only with it: a "<name> cost" table (perf.report.variant_cost)."""

    system: str  # the system key
    name: str  # what changes, as the tables say it: "CURVE", "metrics"
    field: str  # the JSON's names: ``ratios_<field>`` per scenario, ``<field>_cost`` rows
    # (scenario key, figure key) -> (">=" or "<=", variant ÷ plain): the goal.
    goals: tuple[tuple[tuple[str, str], tuple[str, float]], ...] = ()
    what: str = ""  # one sentence for the table's introduction


# Every variant of zmqbus, in the order runs rotate through them after zmqbus.
ZMQBUS_VARIANTS: tuple[Variant, ...] = (
    Variant(
        ZMQBUS_CURVE,
        "CURVE",
        "curve",
        # The CURVE issue: encryption may cost at most 30% of fire-and-forget throughput.
        ((("ff", "rate"), (">=", 0.70)),),
        "the threaded `Bus` to a broker with CURVE on (its key pair and one user, "
        "generated for the run)",
    ),
    Variant(
        ZMQBUS_METRICS,
        "metrics",
        "metrics",
        # The metrics issue asks that collecting cost the hot path nothing measurable:
        # no threshold to check, the ratio is read against the per-run range (noise).
        (),
        "the threaded `Bus` to a broker started with `--metrics 127.0.0.1:0`, its "
        "`/metrics` fetched once a second by a thread of the suite while the broker runs",
    ),
    Variant(
        ZMQBUS_IPC,
        "ipc",
        "ipc",
        # Issue 17 asks that ipc:// for same-host buses be measured: no threshold.
        (),
        "the threaded `Bus` to the same broker bound on `ipc://` (a Unix domain socket) "
        "instead of tcp on loopback, as buses on the broker's own host may connect",
    ),
)

SYSTEMS: dict[str, System] = {
    s.key: s
    for s in (
        System(
            "zmqbus",
            "zmqbus",
            "zmqbus",
            {
                "sink": "perf.sys_zmqbus:sink",
                "source": "perf.sys_zmqbus:source",
                "confirmer": "perf.sys_zmqbus:confirmer",
                "pinger": "perf.sys_zmqbus:pinger",
                "filler": "perf.sys_zmqbus:filler",
                **({"reqrep": "perf.sys_zmqbus:reqrep"} if hasattr(Bus, "request") else {}),
            },
        ),
        System(
            ZMQBUS_CURVE,
            "zmqbus (CURVE)",
            "zmqbus-curve",  # keys and a user made for it (perf.servers)
            {
                # The threaded roles themselves: the server's keys reach them in Spec.curve.
                "sink": "perf.sys_zmqbus:sink",
                "source": "perf.sys_zmqbus:source",
                "confirmer": "perf.sys_zmqbus:confirmer",
                "pinger": "perf.sys_zmqbus:pinger",
                **({"reqrep": "perf.sys_zmqbus:reqrep"} if hasattr(Bus, "request") else {}),
                # No filler: it speaks the wire protocol on raw sockets without CURVE.
            },
        ),
        System(
            ZMQBUS_IPC,
            "zmqbus (ipc)",
            "zmqbus-ipc",  # --bind ipc://<a fresh directory>/broker (perf.servers)
            {
                "sink": "perf.sys_zmqbus:sink",
                "source": "perf.sys_zmqbus:source",
                "confirmer": "perf.sys_zmqbus:confirmer",
                "pinger": "perf.sys_zmqbus:pinger",
                **({"reqrep": "perf.sys_zmqbus:reqrep"} if hasattr(Bus, "request") else {}),
            },
        ),
        System(
            ZMQBUS_METRICS,
            "zmqbus (metrics)",
            "zmqbus-metrics",  # --metrics 127.0.0.1:0, scraped once a second (perf.servers)
            {
                # The threaded roles themselves, to a broker that also serves /metrics.
                "sink": "perf.sys_zmqbus:sink",
                "source": "perf.sys_zmqbus:source",
                "confirmer": "perf.sys_zmqbus:confirmer",
                "pinger": "perf.sys_zmqbus:pinger",
                "filler": "perf.sys_zmqbus:filler",
                **({"reqrep": "perf.sys_zmqbus:reqrep"} if hasattr(Bus, "request") else {}),
            },
            modules=(("prometheus_client", "pip install -e '.[metrics]'"),),
        ),
        System(
            ZMQBUS_AIO,
            "zmqbus (asyncio)",
            "zmqbus",  # the same broker process as the threaded face
            {
                "sink": "perf.sys_zmqbus_aio:sink",
                "source": "perf.sys_zmqbus_aio:source",
                "confirmer": "perf.sys_zmqbus_aio:confirmer",
                "pinger": "perf.sys_zmqbus_aio:pinger",
                "filler": "perf.sys_zmqbus_aio:filler",
                **({"reqrep": "perf.sys_zmqbus_aio:reqrep"} if _aio_has_request() else {}),
            },
            modules=(
                ("zmqbus.aio", "a zmqbus with its asyncio face (zmqbus.aio)"),
                ("uvloop", _PIP),
            ),
        ),
        System(
            "zmq-pushpull",
            "pyzmq PUSH/PULL",
            "streamer",
            {
                "sink": "perf.sys_zmq:pp_sink",
                "source": "perf.sys_zmq:pp_source",
                "streamer": "perf.sys_zmq:streamer",
            },
            per_run_server=True,
        ),
        System(
            "zmq-router",
            "pyzmq DEALER/ROUTER",
            "forwarder",
            {
                "sink": "perf.sys_zmq:rt_sink",
                "source": "perf.sys_zmq:rt_source",
                "confirmer": "perf.sys_zmq:rt_confirmer",
                "pinger": "perf.sys_zmq:rt_pinger",
                "reqrep": "perf.sys_zmq:reqrep",
                "forwarder": "perf.sys_zmq:forwarder",
            },
            per_run_server=True,
        ),
        System(
            "nats",
            "NATS (nats-py)",
            "nats",
            {
                "sink": "perf.sys_nats:sink",
                "source": "perf.sys_nats:source",
                "confirmer": "perf.sys_nats:confirmer",
                "pinger": "perf.sys_nats:pinger",
                "reqrep": "perf.sys_nats:reqrep",
                "filler": "perf.sys_nats:filler",
            },
            binaries=(("nats-server", "apt-get install -y nats-server"),),
            modules=(("nats", _PIP + "  (or: pip install nats-py)"), ("uvloop", _PIP)),
        ),
        System(
            "redis",
            "Redis (redis-py)",
            "redis",
            {
                "sink": "perf.sys_redis:sink",
                "source": "perf.sys_redis:source",
                "confirmer": "perf.sys_redis:confirmer",
                "pinger": "perf.sys_redis:pinger",
                "filler": "perf.sys_redis:filler",
            },
            binaries=(("redis-server", "apt-get install -y redis-server"),),
            modules=(("redis", _PIP), ("hiredis", _PIP + "  (or: pip install hiredis)")),
        ),
        *(
            System(
                key,
                label,
                key,  # a broker with a store directory of its own (perf.servers)
                {
                    # The confirmer itself: Spec.extra names the stream it adds and fills.
                    "stream_publisher": "perf.sys_zmqbus:confirmer",
                    "stream_filler": "perf.sys_zmqbus:stream_filler",
                    "stream_consumer": "perf.sys_zmqbus:stream_consumer",
                },
            )
            for key, label in (
                (ZMQBUS_SYNC_NORMAL, "zmqbus (sync normal)"),
                (ZMQBUS_SYNC_FULL, "zmqbus (sync full)"),
            )
        ),
        System(
            NATS_JS,
            "NATS JetStream (nats-py)",
            NATS_JS,  # nats-server -js, file storage in a temporary directory
            {
                "stream_publisher": "perf.sys_nats:stream_publisher",
                "stream_filler": "perf.sys_nats:stream_filler",
                "stream_consumer": "perf.sys_nats:stream_consumer",
            },
            binaries=(("nats-server", "apt-get install -y nats-server"),),
            modules=(("nats", _PIP + "  (or: pip install nats-py)"), ("uvloop", _PIP)),
        ),
    )
}

# Every pub/sub system but zmqbus itself, through either face and in any variant
# (CURVE, metrics): the peers of the main table (the stream systems have a table of
# their own).
PEERS = [
    k
    for k in SYSTEMS
    if k not in (ZMQBUS, ZMQBUS_AIO, *(v.system for v in ZMQBUS_VARIANTS), *STREAM_SYSTEMS)
]


def missing(key: str) -> list[str]:
    """What ``key`` lacks on this machine, each with how to install it ([] if nothing)."""
    system = SYSTEMS[key]
    out: list[str] = []
    for program, how in system.binaries:
        if shutil.which(program) is None:
            out.append(f"{program} not found on PATH; install it with: {how}")
    for module, how in system.modules:
        if importlib.util.find_spec(module) is None:
            out.append(f"Python package {module!r} not installed; install it with: {how}")
    return out


def suite_missing() -> list[str]:
    """What the suite itself lacks (HDR histograms, charts), with how to install it."""
    return [
        f"Python package {module!r} not installed; install it with: {_PIP}"
        for module in ("hdrh", "matplotlib")
        if importlib.util.find_spec(module) is None
    ]


def role_function(system: str, role: str) -> RoleFn:
    target = SYSTEMS[system].roles[role]
    module_name, _, func = target.partition(":")
    fn: RoleFn = getattr(importlib.import_module(module_name), func)
    return fn
