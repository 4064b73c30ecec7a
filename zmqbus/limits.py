"""The broker's bounds on what peers may make it hold and do."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Limits", "queue_messages", "raise_fd_limit"]

log = logging.getLogger("zmqbus.broker")

# File descriptors kept back from peers: the broker's own sockets, libzmq's
# internal pipes, logging and the listening socket itself.
FD_RESERVE = 64
# What a frame may carry beyond max_message_size (libzmq drops a connection past it).
FRAME_ENVELOPE = 65536


@dataclass(frozen=True)
class Limits:
    """Per-peer and global bounds of a broker; each reached one is refused with
    an ERROR (429 LIMIT_REACHED for one peer's or one channel's bound, 503
    CAPACITY for the broker's) and counted in STATS under ``limits``.

    Every field is a positive int. The defaults fit one broker serving a few
    thousand peers in a few GiB; raise them for more.
    """

    #: Joined peers at once; a HELLO beyond it gets 503. The broker also keeps
    #: this under its file descriptor limit (see ``raise_fd_limit``).
    max_peers: int = 10_000
    #: Open connections, joined or not; past it the oldest unjoined ones are
    #: closed. Kept under the file descriptor limit, as ``max_peers`` is.
    max_connections: int = 12_000
    #: Seconds a connection may stay open without a joined peer (before its
    #: HELLO, or after its peer left); then the broker closes it.
    hello_timeout_seconds: int = 10
    #: Channels at once; a HELLO that would open one more gets 503.
    max_channels: int = 10_000
    #: Open subscriptions (sids) of one peer; a SUBSCRIBE beyond it gets 429.
    max_subscriptions_per_peer: int = 10_000
    #: Open subscriptions of one channel, over all its peers; 429 beyond it.
    max_subscriptions_per_channel: int = 100_000
    #: Tokens of one SUBSCRIBE pattern (``a.*.>`` has 3); 429 beyond it.
    max_pattern_tokens: int = 16
    #: Confirmed deliveries one peer has not ACKed yet; beyond it the oldest
    #: expires into its publisher's result as an error.
    max_pending_per_peer: int = 10_000
    #: Bytes of the per-channel topic-to-targets caches, over all channels.
    topic_cache_bytes: int = 64 << 20
    #: STATS one peer (or one unjoined connection) may ask per second; the
    #: first past it gets 429, the rest of that second no answer.
    stats_per_second: int = 10
    #: Bytes the broker lets queue to one peer (and from one peer before it is
    #: read): libzmq bounds its queues by messages, so the broker sets its
    #: high-water marks to this over the largest frame (max_message_size +
    #: 64 KiB), when that is under ``hwm``.
    max_queued_bytes: int = 1 << 30
    #: Seconds a peer that asked for no heartbeats may stay silent before the
    #: broker probes its connection with a BROKER_HEARTBEAT (a vanished one
    #: then fails the send and is forgotten).
    idle_probe_seconds: int = 60
    #: Durable streams at once, over all channels; a stream add beyond it gets 429.
    max_streams: int = 1_000
    #: Consumers (durable and ephemeral) of one stream; 429 beyond it.
    max_consumers: int = 1_000
    #: The largest ``max_ack_pending`` a consumer may ask for: what one
    #: consumer may hold delivered and unacknowledged at once.
    max_ack_pending: int = 100_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int:
                raise TypeError(f"Limits.{f.name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"Limits.{f.name} must be at least 1, not {value}")

    def replace(self, **changes: Any) -> Limits:
        """A copy with ``changes`` applied (checked as the constructor checks)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, int]:
        """Every bound by name, as STATS reports them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def queue_messages(limits: Limits, max_message_size: int, hwm: int) -> int:
    """The high-water mark (messages) that keeps one peer's queue within
    ``limits.max_queued_bytes`` when every frame is as large as allowed."""
    frame = max_message_size + FRAME_ENVELOPE
    return max(1, min(hwm, limits.max_queued_bytes // frame))


def raise_fd_limit() -> int:
    """Raise this process's soft file descriptor limit to its hard limit where
    the platform allows; returns the soft limit now in force (0: unknown)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit to %d: %s", hard, exc)
    elif hard == resource.RLIM_INFINITY and soft == resource.RLIM_INFINITY:
        return 0
    return soft
