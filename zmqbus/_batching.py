"""The batches the broker builds: runs of its messages to one peer joined into
BROKER_BATCHes, and the batches a run of unconfirmed publishes fans out to."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from . import protocol as p
from ._channel import Channel
from ._fastpath import compiled, twin
from ._peer import Peer

__all__ = ["BROKER_BATCH_BYTES", "Outgoing", "coalesce", "fan_out", "publish_batch_messages"]

# One message for the socket: the peer's identity and the frames.
Outgoing = tuple[bytes, list[bytes]]

# Bytes of entries in one BROKER_BATCH the broker builds: small enough to add
# no latency, and under pyzmq's copy threshold (64 KiB): a frame at or over it
# is sent zero-copy, through a garbage-collector thread that halved throughput
# in about half of the fire-and-forget runs measured.
BROKER_BATCH_BYTES = 60 * 1024
MAX_ENTRIES = p.MAX_BATCH_ENTRIES
_COALESCE = frozenset(p.header(c) for c in p.BROKER_ENTRY_FRAMES)


def coalesce(out: Sequence[Outgoing], peers: Mapping[bytes, Peer]) -> tuple[list[Outgoing], int]:
    """``out`` with each run of two or more DELIVER, ROUTED, ACKED, ASK and
    ANSWER messages to a peer that asked for ``batch_commands`` joined into
    BROKER_BATCHes, in their order among that peer's other messages; and how
    many BROKER_BATCHes that made."""
    runs: dict[bytes, list[list[bytes]]] = {}
    result: list[Outgoing] = []
    made = 0
    for item in out:
        ident, frames = item
        if frames[0] in _COALESCE:
            peer = peers.get(ident)
            if peer is not None and peer.batch_commands:
                run = runs.get(ident)
                if run is None:
                    runs[ident] = [frames]
                else:
                    run.append(frames)
                continue
        elif runs:
            # Any other message to the peer ends its run: the run goes first.
            run = runs.pop(ident, None)
            if run is not None:
                made += _emit_run(ident, run, result)
        result.append(item)
    for ident, run in runs.items():
        made += _emit_run(ident, run, result)
    return result, made


def _emit_run(ident: bytes, run: list[list[bytes]], result: list[Outgoing]) -> int:
    if len(run) == 1:
        result.append((ident, run[0]))
        return 0
    pack = p.pack_command_entry
    channel = run[0][1]
    parts: list[bytes] = []
    size = 0
    made = 0
    for frames in run:
        entry = pack(frames)
        if parts and (size + len(entry) > BROKER_BATCH_BYTES or len(parts) == MAX_ENTRIES):
            result.append((ident, [p.H_BROKER_BATCH, channel, b"".join(parts)]))
            made += 1
            parts = []
            size = 0
        parts.append(entry)
        size += len(entry)
    result.append((ident, [p.H_BROKER_BATCH, channel, b"".join(parts)]))
    return made + 1


def publish_batch_messages(
    frame: bytes,
    batch_size: Callable[[int], None],
    max_size: int,
    valid_topics: Container[bytes],
    check: Callable[[bytes, bytes], None],
) -> list[tuple[bytes, bytes]]:
    """The (topic, body) messages of a PUBLISH_BATCH entries frame, checked:
    ``batch_size`` is given their count, then ``check`` each message whose
    body is over ``max_size`` or whose topic is not in ``valid_topics``; each
    raises what it refuses, as ``unpack_publish_entries`` does."""
    entries = p.unpack_publish_entries(frame)
    batch_size(len(entries))
    for topic, body, _ in entries:
        if len(body) > max_size or topic not in valid_topics:
            check(topic, body)
    return [(topic, body) for topic, body, _ in entries]


def fan_out(
    channel: Channel,
    messages: Sequence[tuple[bytes, ...]],
    peers: Mapping[bytes, Peer],
    out: list[Outgoing],
) -> tuple[int, int]:
    """Route unconfirmed, checked (topic, body) ``messages`` on ``channel`` into
    ``out``, in order. Each target gets its share as BROKER_BATCHes if it asked
    for batch_commands, else as DELIVER_BATCHes if it asked for batch, else as
    DELIVERs. Returns how many deliveries, and how many BROKER_BATCHes, that is;
    each target's own count (``Peer.msgs_out``) grows by its share."""
    chid = channel.id
    destinations = channel.destinations
    deliver_entry = p.pack_unconfirmed_deliver_entry
    # target -> [bytes so far, entries...]: one pending batch per target.
    runs: dict[bytes, list[Any]] = {}
    n = 0
    made = 0
    for topic, body in messages:
        publish_entry = None
        for target, sids in destinations(topic):
            n += 1
            to = peers[target]
            if to.batch_commands:
                entry = deliver_entry(topic, body, sids)
            elif to.batch and len(sids) <= p.MAX_ENTRY_SIDS_BYTES:
                if publish_entry is None:
                    publish_entry = p.pack_publish_entry(topic, body)
                entry = p.pack_deliver_entry(sids, publish_entry)
            else:
                # No batches, or too many sids for a DELIVER_BATCH entry's 16-bit
                # sids-length: a DELIVER, after the entries before it (order kept).
                run = runs.pop(target, None)
                if run is not None:
                    made += _run_batch(to, chid, run, out)
                out.append((target, [p.H_DELIVER, chid, b"", topic, body, sids]))
                to.msgs_out += 1
                continue
            run = runs.get(target)
            if run is None:
                runs[target] = [len(entry), entry]
            elif run[0] + len(entry) > BROKER_BATCH_BYTES or len(run) > MAX_ENTRIES:
                made += _run_batch(to, chid, run, out)
                runs[target] = [len(entry), entry]
            else:
                run[0] += len(entry)
                run.append(entry)
    for target, run in runs.items():
        made += _run_batch(peers[target], chid, run, out)
    return n, made


def _run_batch(to: Peer, chid: bytes, run: list[Any], out: list[Outgoing]) -> int:
    # A pending run as one batch of the kind ``to`` asked for; 1 if a BROKER_BATCH.
    # Its deliveries are counted to the peer here, once a batch, not once an entry.
    to.msgs_out += len(run) - 1
    if to.batch_commands:
        out.append((to.ident, [p.H_BROKER_BATCH, chid, b"".join(run[1:])]))
        return 1
    out.append((to.ident, [p.H_DELIVER_BATCH, chid, b"".join(run[1:])]))
    return 0


_compiled = compiled()
if _compiled is not None:
    _compiled.configure_fan_out(BROKER_BATCH_BYTES, MAX_ENTRIES)
fan_out = twin(fan_out)
publish_batch_messages = twin(publish_batch_messages)
