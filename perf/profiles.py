"""Message counts and durations: the full run and the quick smoke run.

The full profile keeps the issue's minimums: every latency percentile comes from at
least 20,000 samples after warm-up, in each of at least 3 runs. Fire-and-forget
counts stay at or below the 100,000-message high-water marks of the zmqbus and
pyzmq sockets, so a run that loses messages has really overrun something.

The durable-stream scenarios (issue 15) keep that issue's counts in the full profile:
a backlog of 100,000 messages to consume, 1,000,000 stored messages to replay and to
measure the broker's memory with. Filling 1,000,000 messages takes the zmqbus broker
most of a minute per run, so ``python -m perf --stream-count N`` stores N instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FULL", "QUICK", "Profile"]


@dataclass(frozen=True)
class Profile:
    name: str
    runs: int
    ff_count: int  # 1 -> 1 fire-and-forget
    confirm_count: int  # confirmed one at a time (its latencies are the round trip figures)
    confirm_warmup: int
    pipelined_count: int
    window: int  # pipelined confirmations outstanding
    wide_count: int  # pipelined with a wide window: throughput, not the round trip, limits
    wide_window: int
    fanout_count: int  # per subscriber, 10 subscribers
    fanout_sinks: int
    fanin_count: int  # per publisher, 4 publishers
    fanin_sources: int
    latency_count: int  # ping-pong samples recorded (after warm-up)
    latency_warmup: int
    payload_counts: dict[int, int] = field(default_factory=dict)  # size -> messages
    routing_levels: tuple[int, ...] = ()
    routing_channels: int = 1000
    routing_count: int = 50_000
    max_seconds: float = 20.0  # a source stops after this long, whatever its count
    routing_max_seconds: float = 5.0
    run_timeout: float = 120.0  # a run that takes longer fails
    # Durable streams (issue 15), 100-byte messages, zmqbus vs NATS JetStream.
    stream_pub_count: int = 0  # stored publishes one at a time (their round trips)
    stream_pub_warmup: int = 0
    stream_pipe_count: int = 0  # stored publishes with ``stream_window`` outstanding
    stream_window: int = 1_000
    stream_backlog: int = 0  # stored messages a durable consumer then reads and acks
    stream_replay_count: int = 0  # stored messages read back from the first
    stream_rss_count: int = 0  # stored messages the broker's memory is measured with
    stream_ack_pending: int = 1_000  # a consumer's unacknowledged deliveries at most


FULL = Profile(
    name="full",
    runs=3,
    ff_count=50_000,
    confirm_count=20_000,
    confirm_warmup=1_000,
    pipelined_count=20_000,
    window=16,
    wide_count=50_000,
    wide_window=1_000,
    fanout_count=5_000,
    fanout_sinks=10,
    fanin_count=12_500,
    fanin_sources=4,
    latency_count=20_000,
    latency_warmup=1_000,
    payload_counts={16: 50_000, 1024: 30_000, 65536: 3_000, 1 << 20: 200},
    routing_levels=(10, 1_000, 100_000),
    routing_channels=1_000,
    routing_count=20_000,
    max_seconds=30.0,
    routing_max_seconds=4.0,
    run_timeout=180.0,
    stream_pub_count=10_000,
    stream_pub_warmup=500,
    stream_pipe_count=50_000,
    stream_backlog=100_000,
    stream_replay_count=1_000_000,
    stream_rss_count=1_000_000,
)

QUICK = Profile(
    name="quick",
    runs=1,
    ff_count=5_000,
    confirm_count=500,
    confirm_warmup=50,
    pipelined_count=2_000,
    window=16,
    wide_count=5_000,
    wide_window=1_000,
    fanout_count=500,
    fanout_sinks=10,
    fanin_count=1_000,
    fanin_sources=4,
    latency_count=1_000,
    latency_warmup=100,
    payload_counts={16: 5_000, 1024: 5_000, 65536: 500, 1 << 20: 20},
    routing_levels=(10, 1_000),
    routing_channels=100,
    routing_count=5_000,
    max_seconds=10.0,
    routing_max_seconds=2.0,
    run_timeout=60.0,
    stream_pub_count=100,
    stream_pub_warmup=10,
    stream_pipe_count=2_000,
    stream_backlog=2_000,
    stream_replay_count=2_000,
    stream_rss_count=2_000,
)
