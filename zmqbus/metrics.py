"""Prometheus metrics of a broker: ``Broker(metrics="host:port")`` serves them
at ``http://host:port/metrics``. A collector reads the broker's counters when
scraped, under the broker's lock (nothing is counted on the hot path for it),
into a registry of the broker's own. Needs ``prometheus_client``
(``pip install 'zmqbus[metrics]'``); docs/metrics.md describes every metric.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ._version import __version__
from .protocol import ErrorCode

try:
    from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "zmqbus metrics need prometheus_client: pip install 'zmqbus[metrics]'",
        name="prometheus_client",
    ) from exc

if TYPE_CHECKING:
    from ._routing import BrokerState
    from ._streams import Streams

__all__ = ["BROKER_COUNTERS", "STREAM_COUNTERS", "BrokerCollector", "MetricsServer"]

log = logging.getLogger("zmqbus.metrics")

# Seconds a scraper's connection may take to send its request.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Family:
    # A counter family: its samples are counters of BrokerState ("broker") or
    # of Streams ("streams"), as (source, counter key, label value).
    name: str  # without _total: prometheus_client adds it
    help: str
    sources: tuple[tuple[str, str, str], ...]
    label: str = ""


def _single(name: str, help: str, source: str, key: str) -> _Family:
    return _Family(name, help, ((source, key, ""),))


# Every counter of BrokerState.counters and Streams.counters, as exported.
COUNTER_FAMILIES: tuple[_Family, ...] = (
    _single(
        "zmqbus_messages_received",
        "Messages read from peers (a BATCH counts as one).",
        "broker",
        "messages_in",
    ),
    _single(
        "zmqbus_messages_sent",
        "Messages handed to ZeroMQ for peers (a BROKER_BATCH counts as one; DROPPED notices "
        "and messages the socket refused do not count).",
        "broker",
        "messages_out",
    ),
    _single(
        "zmqbus_messages_published",
        "Messages published and routed (each batch entry counts; throttled and duplicate "
        "stream messages do not).",
        "broker",
        "published",
    ),
    _single(
        "zmqbus_deliveries",
        "Deliveries made: one per published message and subscribing peer.",
        "broker",
        "delivered",
    ),
    _single("zmqbus_requests", "REQUESTs routed.", "broker", "requests"),
    _single("zmqbus_replies", "REPLYs passed on to their requester.", "broker", "replies"),
    _single("zmqbus_batches_received", "BATCHes accepted from peers.", "broker", "batches_in"),
    _single("zmqbus_batches_sent", "BROKER_BATCHes made for peers.", "broker", "broker_batches"),
    _Family(
        "zmqbus_dropped",
        "Messages the broker dropped, by reason: hwm (the peer's queue was full), "
        "unroutable (its connection was gone), rate_limit (an unconfirmed publish over "
        "its user's rate), reply_lost (a reply no one could be sent).",
        (
            ("broker", "dropped_hwm", "hwm"),
            ("broker", "unroutable", "unroutable"),
            ("broker", "throttled", "rate_limit"),
            ("broker", "replies_lost", "reply_lost"),
        ),
        "reason",
    ),
    _single(
        "zmqbus_commands_dropped",
        "Commands lost on their way to a peer (queue full or connection gone), each "
        "command of a BROKER_BATCH counted; replies held for a retry are not.",
        "broker",
        "dropped_out",
    ),
    _single(
        "zmqbus_dropped_notices", "DROPPED notices sent to peers.", "broker", "dropped_notices"
    ),
    _single(
        "zmqbus_replies_held",
        "Replies a full queue refused, held to be sent again.",
        "broker",
        "replies_held",
    ),
    _single(
        "zmqbus_confirmations_expired",
        "Confirmed deliveries expired unACKed past max_pending_per_peer.",
        "broker",
        "expired_confirmations",
    ),
    _Family(
        "zmqbus_forged",
        "Replies, ACKs and stream acks refused (401) because their token was not made "
        "for the peer that sent them, by kind.",
        (
            ("broker", "forged_replies", "reply"),
            ("broker", "forged_acks", "ack"),
            ("streams", "forged_stream_acks", "stream_ack"),
        ),
        "kind",
    ),
    _Family(
        "zmqbus_stale",
        "Replies, ACKs and stream acks that came too late (or twice) and were ignored, by kind.",
        (
            ("broker", "stale_replies", "reply"),
            ("broker", "stale_acks", "ack"),
            ("streams", "late_stream_acks", "stream_ack"),
        ),
        "kind",
    ),
    _single("zmqbus_heartbeats_received", "HEARTBEATs from peers.", "broker", "heartbeats_in"),
    _single(
        "zmqbus_heartbeats_sent",
        "BROKER_HEARTBEATs sent to peers that asked for them.",
        "broker",
        "heartbeats_out",
    ),
    _single(
        "zmqbus_idle_probes",
        "BROKER_HEARTBEATs sent to probe silent peers without heartbeats.",
        "broker",
        "idle_probes",
    ),
    _single("zmqbus_subscribes", "Subscriptions opened.", "broker", "subscribes"),
    _single(
        "zmqbus_unsubscribes", "Subscriptions closed by UNSUBSCRIBE.", "broker", "unsubscribes"
    ),
    _single("zmqbus_peers_joined", "Peers joined (HELLO accepted).", "broker", "connects"),
    _single("zmqbus_peers_left", "Peers gone, for whatever reason.", "broker", "disconnects"),
    _Family(
        "zmqbus_peers_dropped",
        "Peers the broker dropped, by reason: expired (silent past their heartbeat "
        "liveness), vanished (their connection closed), takeover (another connection "
        "used their routing id), revoked (their user was removed or changed).",
        (
            ("broker", "expired", "expired"),
            ("broker", "vanished", "vanished"),
            ("broker", "takeovers", "takeover"),
            ("broker", "revoked_peers", "revoked"),
        ),
        "reason",
    ),
    _single(
        "zmqbus_connections_accepted",
        "Connections the transport accepted.",
        "broker",
        "connections_accepted",
    ),
    _single("zmqbus_connections_closed", "Connections that ended.", "broker", "connections_closed"),
    _single(
        "zmqbus_unjoined_connections_closed",
        "Connections the broker closed for having no joined peer (hello_timeout_seconds, "
        "max_connections).",
        "broker",
        "unjoined_closed",
    ),
    _single(
        "zmqbus_stale_close_events",
        "Close events ignored because their descriptor already served another connection.",
        "broker",
        "stale_closes",
    ),
    _single(
        "zmqbus_auth_refused",
        "Connections refused at the CURVE handshake (unknown key).",
        "broker",
        "auth_refused",
    ),
    _single(
        "zmqbus_internal_errors",
        "Messages whose handling failed inside the broker (answered with 500).",
        "broker",
        "internal_errors",
    ),
    _single(
        "zmqbus_stream_stored",
        "Messages stored in streams (duplicates not counted).",
        "streams",
        "stored",
    ),
    _single(
        "zmqbus_stream_duplicates",
        "Messages a stream had already stored within its duplicate_window: not stored again.",
        "streams",
        "duplicates",
    ),
    _single(
        "zmqbus_stream_full",
        "Messages refused (429) by a full stream with discard=new.",
        "streams",
        "stream_full",
    ),
    _single(
        "zmqbus_store_errors",
        "Failures of the stream store (answered with 507).",
        "streams",
        "store_errors",
    ),
    _single(
        "zmqbus_stream_deliveries",
        "Stream messages delivered to consumers, redeliveries included.",
        "streams",
        "stream_deliveries",
    ),
    _Family(
        "zmqbus_stream_acks",
        "Stream acks settling or returning a message, by kind: ack, nak, term.",
        (
            ("streams", "stream_acks", "ack"),
            ("streams", "naks", "nak"),
            ("streams", "terminated", "term"),
        ),
        "kind",
    ),
    _single(
        "zmqbus_stream_ack_timeouts",
        "Stream deliveries not acked within their ack_wait.",
        "streams",
        "ack_timeouts",
    ),
    _single(
        "zmqbus_stream_dead_letters",
        "Stream messages sent to their consumer's dead_letter topic after max_deliver.",
        "streams",
        "dead_letters",
    ),
    _single(
        "zmqbus_stream_max_deliver_reached",
        "Stream messages given up after max_deliver deliveries, with no dead_letter topic.",
        "streams",
        "max_deliver_terminated",
    ),
)

# The counters of BrokerState that are the sum of a family labelled by code or
# user, exported as that family only.
SUMMED = frozenset(("errors", "denied", "rate_limited"))
BROKER_COUNTERS = (
    frozenset(key for f in COUNTER_FAMILIES for src, key, _ in f.sources if src == "broker")
    | SUMMED
)
STREAM_COUNTERS = frozenset(
    key for f in COUNTER_FAMILIES for src, key, _ in f.sources if src == "streams"
)

# Gauges of the broker as a whole: (name, help).
GAUGES: tuple[tuple[str, str], ...] = (
    ("zmqbus_peers", "Peers joined now."),
    ("zmqbus_channels", "Channels open now."),
    ("zmqbus_subscriptions", "Open subscriptions (sids) over all channels."),
    ("zmqbus_queue_groups", "Queue groups over all channels."),
    ("zmqbus_connections", "Open connections, joined or not."),
    ("zmqbus_unjoined_connections", "Open connections with no joined peer."),
    ("zmqbus_pending_confirmations", "Confirmed publishes still waiting for ACKs."),
    ("zmqbus_topic_cache_bytes", "Bytes the topic-to-targets caches hold."),
    ("zmqbus_max_peers", "The max_peers limit in force."),
    ("zmqbus_max_connections", "The max_connections limit in force."),
    ("zmqbus_max_channels", "The max_channels limit in force."),
    ("zmqbus_max_streams", "The max_streams limit in force."),
    ("zmqbus_topic_cache_limit_bytes", "The topic_cache_bytes limit in force."),
    ("zmqbus_streams", "Durable streams now."),
)

# Gauges per stream (label stream): (name, help).
STREAM_GAUGES: tuple[tuple[str, str], ...] = (
    ("zmqbus_stream_messages", "Messages a stream holds."),
    ("zmqbus_stream_bytes", "Bytes a stream holds (topic and body of each message)."),
    ("zmqbus_stream_last_seq", "The last sequence a stream gave a message."),
    ("zmqbus_stream_consumers", "Consumers of a stream, durable and ephemeral."),
    (
        "zmqbus_stream_ack_pending",
        "Messages delivered by a stream's consumers (or due again) and not yet settled.",
    ),
)


@dataclass
class _StreamRow:
    messages: int
    nbytes: int
    last_seq: int
    consumers: int = 0
    ack_pending: int = 0


@dataclass
class _Snapshot:
    counters: dict[str, int] = field(default_factory=dict)
    stream_counters: dict[str, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    denied: dict[str, int] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    streams: dict[str, _StreamRow] = field(default_factory=dict)
    redelivered: dict[str, int] = field(default_factory=dict)
    # (channel UUID, peers, subscriptions), with metrics_per_channel only.
    channels: list[tuple[str, int, int]] = field(default_factory=list)


class BrokerCollector(Collector):
    """The metrics of one broker's state, read when collected (see docs/metrics.md).
    ``per_channel`` adds gauges labelled by channel UUID, whose number is unbounded."""

    def __init__(self, *, per_channel: bool = False) -> None:
        self.per_channel = per_channel
        self._lock: threading.Lock | None = None
        self._state: BrokerState | None = None  # None: not watching, collects nothing
        # Redeliveries are counted per consumer, which can go away: their
        # totals by stream are kept here, from each consumer's count last seen.
        self._streams: Streams | None = None
        self._seen: dict[int, int] = {}
        self._redelivered: dict[str, int] = {}

    def watch(self, state: BrokerState, lock: threading.Lock) -> None:
        """Read ``state`` under ``lock`` from now on."""
        self._lock = lock
        with lock:
            self._state = state

    def unwatch(self) -> None:
        """Stop reading the state: collect() yields nothing until watch() again."""
        if self._lock is not None:
            with self._lock:
                self._state = None

    def describe(self) -> Iterable[Metric]:
        """The families collect() yields, without samples (for the registry)."""
        return list(self._families(_Snapshot()))

    def collect(self) -> Iterator[Metric]:
        """Every family, from one snapshot taken under the broker's lock."""
        lock = self._lock
        if lock is None:
            return
        with lock:
            state = self._state
            if state is None:
                return
            snap = self._take(state)
        yield from self._families(snap)

    def _take(self, state: BrokerState) -> _Snapshot:
        # Copies only: the families are made after the lock is let go.
        limits = state.limits
        streams = state.streams
        rows: dict[str, _StreamRow] = {}
        for held in streams.by_channel.values():
            for stream in held:
                rows[stream.config.name] = _StreamRow(
                    stream.messages, stream.bytes, stream.last_seq
                )
        if streams is not self._streams:
            # Started again: the consumers are new objects, counting from 0.
            self._streams = streams
            self._seen = {}
        seen: dict[int, int] = {}
        redelivered = self._redelivered
        for cid, consumer in streams.consumers.items():
            name = consumer.stream.config.name
            row = rows.get(name)
            if row is None:
                continue
            row.consumers += 1
            row.ack_pending += len(consumer.state.pending)
            seen[cid] = consumer.redelivered
            gained = consumer.redelivered - self._seen.get(cid, 0)
            if gained > 0:
                redelivered[name] = redelivered.get(name, 0) + gained
        self._seen = seen
        self._redelivered = {name: redelivered.get(name, 0) for name in rows}
        channels = state.channels
        snap = _Snapshot(
            counters=dict(state.counters),
            stream_counters=dict(streams.counters),
            errors=dict(state.errors),
            refused=dict(state.refused),
            denied=dict(state.denied),
            rate_limited=dict(state.rate_limited),
            gauges={
                "zmqbus_peers": len(state.peers),
                "zmqbus_channels": len(channels),
                "zmqbus_subscriptions": state.subscription_count(),
                "zmqbus_queue_groups": sum(len(c.groups) for c in channels.values()),
                "zmqbus_connections": len(state.connections),
                "zmqbus_unjoined_connections": state.connections.unjoined,
                "zmqbus_pending_confirmations": state.pending_confirmations,
                # What STATS reports as topic_cache_bytes.
                "zmqbus_topic_cache_bytes": state._budget.used,
                "zmqbus_max_peers": limits.max_peers,
                "zmqbus_max_connections": limits.max_connections,
                "zmqbus_max_channels": limits.max_channels,
                "zmqbus_max_streams": limits.max_streams,
                "zmqbus_topic_cache_limit_bytes": limits.topic_cache_bytes,
                "zmqbus_streams": len(rows),
            },
            streams=rows,
            redelivered=dict(self._redelivered),
        )
        if self.per_channel:
            snap.channels = [
                (str(uuid.UUID(bytes=c.id)), len(c.peers), c.nsubs) for c in channels.values()
            ]
        return snap

    def _families(self, snap: _Snapshot) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "zmqbus_build_info", "The zmqbus version of the broker (always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        sources = {"broker": snap.counters, "streams": snap.stream_counters}
        for fam in COUNTER_FAMILIES:
            labels = [fam.label] if fam.label else None
            counter = CounterMetricFamily(fam.name, fam.help, labels=labels)
            for source, key, value in fam.sources:
                counter.add_metric([value] if fam.label else [], sources[source].get(key, 0))
            yield counter
        errors = CounterMetricFamily(
            "zmqbus_protocol_errors",
            "ERROR replies the broker made, by code (docs/protocol.md, Error codes).",
            labels=["code"],
        )
        for code in sorted({int(c) for c in ErrorCode} | set(snap.errors)):
            errors.add_metric([str(code)], snap.errors.get(code, 0))
        yield errors
        for name, help, label, counts in (
            (
                "zmqbus_refused",
                "Requests refused (or confirmations expired) at a limit, by its name.",
                "limit",
                snap.refused,
            ),
            (
                "zmqbus_denied",
                "Requests refused for want of a permission (401), by user.",
                "user",
                snap.denied,
            ),
            (
                "zmqbus_rate_limited",
                "Publishes and requests over their user's rate (refused or dropped), by user.",
                "user",
                snap.rate_limited,
            ),
        ):
            yield _labelled(CounterMetricFamily(name, help, labels=[label]), counts)
        # Counters this module does not know yet (tests/test_metrics.py fails on
        # them): exported all the same, rather than lost.
        for name, counts, known in (
            ("zmqbus_broker_other", snap.counters, BROKER_COUNTERS),
            ("zmqbus_stream_other", snap.stream_counters, STREAM_COUNTERS),
        ):
            other = {k: n for k, n in counts.items() if k not in known}
            if other:
                help = "Counters without a metric of their own."
                yield _labelled(CounterMetricFamily(name, help, labels=["counter"]), other)
        for name, help in GAUGES:
            yield GaugeMetricFamily(name, help, snap.gauges.get(name, 0), unit=_unit(name))
        for name, help in STREAM_GAUGES:
            gauge = GaugeMetricFamily(name, help, labels=["stream"], unit=_unit(name))
            for stream, row in sorted(snap.streams.items()):
                gauge.add_metric([stream], _stream_value(name, row))
            yield gauge
        yield _labelled(
            CounterMetricFamily(
                "zmqbus_stream_redelivered",
                "Stream messages delivered again (after a nak, an ack timeout or their "
                "consumer's bus leaving), by stream; counted when scraped, so a consumer "
                "deleted between two scrapes loses what it did since the first.",
                labels=["stream"],
            ),
            snap.redelivered,
        )
        if self.per_channel:
            peers = GaugeMetricFamily(
                "zmqbus_channel_peers", "Peers joined on a channel.", labels=["channel"]
            )
            subs = GaugeMetricFamily(
                "zmqbus_channel_subscriptions",
                "Open subscriptions (sids) on a channel.",
                labels=["channel"],
            )
            for channel, npeers, nsubs in sorted(snap.channels):
                peers.add_metric([channel], npeers)
                subs.add_metric([channel], nsubs)
            yield peers
            yield subs


def _labelled(family: CounterMetricFamily, counts: dict[str, int]) -> CounterMetricFamily:
    for key in sorted(counts):
        family.add_metric([key], counts[key])
    return family


def _unit(name: str) -> str:
    return "bytes" if name.endswith("_bytes") else ""


def _stream_value(name: str, row: _StreamRow) -> int:
    return {
        "zmqbus_stream_messages": row.messages,
        "zmqbus_stream_bytes": row.nbytes,
        "zmqbus_stream_last_seq": row.last_seq,
        "zmqbus_stream_consumers": row.consumers,
        "zmqbus_stream_ack_pending": row.ack_pending,
    }[name]


# --- the HTTP server ----------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6; port 0: any free one) or a bare
    port, which means ``127.0.0.1``: the (host, port) to bind. ValueError for
    anything else."""
    if not isinstance(address, str):
        raise TypeError(f"metrics must be a str 'host:port', not {type(address).__name__}")
    host, sep, port = address.strip().rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"metrics must be 'host:port' (port 0: any free one) or a port, not {address!r}"
        )
    return host, int(port)


class _Server(ThreadingMixIn, WSGIServer):
    # A scrape per thread: a slow scraper holds up neither the others nor stop().
    daemon_threads = True
    # handle_request() waits no longer than this (see MetricsServer._serve).
    timeout = 0.5

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics connection from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _app(registry: CollectorRegistry) -> WSGIApplication:
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"zmqbus metrics are at /metrics\n"]
        try:
            out: Iterable[bytes] = metrics(environ, start_response)
        except Exception:
            log.exception("metrics scrape failed")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"the scrape failed: see the broker's log\n"]
        return out

    return app


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class MetricsServer:
    """``http://host:port/metrics`` for one broker, from ``start`` to ``stop``,
    from a registry of its own (``registry``): the broker's metrics and the
    process's (``process_*``)."""

    def __init__(self, address: str, *, per_channel: bool = False) -> None:
        self._host, self._port = parse_address(address)
        self.registry = CollectorRegistry()
        self.collector = BrokerCollector(per_channel=per_channel)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._address: str | None = None

    @property
    def address(self) -> str:
        """The bound ``host:port`` (the real port), e.g. ``127.0.0.1:9464``."""
        if self._address is None:
            raise RuntimeError("metrics are not served: the broker is not started")
        return self._address

    def start(self, state: BrokerState, lock: threading.Lock) -> None:
        """Bind and serve ``state``'s metrics, read under ``lock``; raises
        OSError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("metrics already served")
        family = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
        server = make_server(
            self._host,
            self._port,
            _app(self.registry),
            server_class=_Server6 if family == socket.AF_INET6 else _Server,
            handler_class=_Handler,
        )
        self.collector.watch(state, lock)
        host, port = server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._server = server
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, args=(server, self._wake[0]), name="zmqbus-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics", self._address)
        if not _loopback(self._host):
            log.warning(
                "metrics on %s can be read by anyone who reaches it: the endpoint has no "
                "authentication (bind it to loopback or firewall it)",
                self._address,
            )

    def stop(self) -> None:
        """Stop serving and close the listening socket (its port is free once
        this returns). Idempotent."""
        server, thread, wake = self._server, self._thread, self._wake
        if server is None or thread is None or wake is None:
            return
        wake[1].send(b"x")
        thread.join()
        server.server_close()
        for sock in wake:
            sock.close()
        self._server = self._thread = self._wake = None
        # Scrapes still running see nothing of a broker that is going away.
        self.collector.unwatch()
        log.info("metrics on %s stopped", self._address)

    @staticmethod
    def _serve(server: _Server, wake: socket.socket) -> None:
        # Blocks until a scraper connects or stop() writes to ``wake``: never polls.
        with selectors.DefaultSelector() as selector:
            selector.register(server.socket, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is wake for key, _ in events):
                    return
                server.handle_request()  # accepts, and serves it on a thread of its own
