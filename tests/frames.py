"""Frames for the tests that drive ``BrokerState`` and ``ClientCore`` in memory.

One builder per client command, each returning the frames of one whole message
(header and channel first), built with ``zmqbus.protocol``: ``p.encode`` of its
command dataclass, or its ``H_*`` headers and ``pack_*`` helpers. A test names
only what it cares about; the defaults fill the rest (channel ``A``, ref
``b"s"``/``b"u"``/``b"q"``/``b"d"`` by command, a sid derived from the pattern).
Malformed frames are best written out in the test that sends them.

Not for tests/test_raw_dealer.py: that file is written from docs/protocol.md
alone, without ``zmqbus.protocol``, as an independent check of the spec; frames
built here would check the code against itself.
"""

from __future__ import annotations

import zlib
from typing import Any

from zmqbus import protocol as p
from zmqbus._routing import BrokerState

A = b"A" * 16
B = b"B" * 16

Frames = list[bytes]
# A subscription for ``joined``: a pattern (its sid from ``sid_of``), or
# (pattern, sid) or (pattern, sid, queue), sid as in ``subscribe``.
Sub = str | tuple[str, int | bytes | None] | tuple[str, int | bytes | None, str]


def _utf8(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


# --- sids --------------------------------------------------------------------------


def sid(n: int) -> bytes:
    """Subscription id ``n`` as the wire carries it: 4 bytes, big-endian."""
    return n.to_bytes(p.SID_BYTES, "big")


S1, S2 = sid(1), sid(2)


def sid_of(pattern: str, queue: str = "") -> bytes:
    """The sid a subscription gets unless the test chooses one: the same
    pattern and queue always give the same sid, so subscribing twice is the
    idempotent repeat and ``unsubscribe(pattern)`` finds it."""
    return zlib.crc32(f"{pattern}\0{queue}".encode()).to_bytes(p.SID_BYTES, "big")


# --- client commands ---------------------------------------------------------------


def hello(ch: bytes = A, client: str = "test", **fields: Any) -> Frames:
    """HELLO with body ``{"client": client, **fields}`` (``batch=``,
    ``batch_commands=``, ``heartbeat=``...); a field given as None is left out."""
    extra = {k: v for k, v in fields.items() if v is not None}
    return p.encode(p.Hello(ch, p.pack_hello(client, **extra)))


def subscribe(
    pattern: str,
    sid: int | bytes | None = None,
    queue: str = "",
    *,
    ch: bytes = A,
    ref: bytes = b"s",
) -> Frames:
    """SUBSCRIBE; ``sid`` as an int, as its 4 bytes, or None for ``sid_of(pattern, queue)``."""
    if sid is None:
        raw = sid_of(pattern, queue)
    elif isinstance(sid, int):
        raw = sid.to_bytes(p.SID_BYTES, "big")
    else:
        raw = sid
    return p.encode(p.Subscribe(ch, ref, raw, pattern.encode(), queue.encode()))


def unsubscribe(*patterns: str, ch: bytes = A, ref: bytes = b"u", sids: bytes = b"") -> Frames:
    """UNSUBSCRIBE of ``sids`` (packed) and then the default sid of each pattern."""
    packed = sids + b"".join(sid_of(pattern) for pattern in patterns)
    return p.encode(p.Unsubscribe(ch, ref, packed))


def publish(topic: str | bytes, body: bytes = b"body", ch: bytes = A, ref: bytes = b"") -> Frames:
    """PUBLISH; unconfirmed unless given a ``ref``."""
    return p.encode(p.Publish(ch, ref, _utf8(topic), body))


def request(topic: str | bytes, body: bytes = b"body", ch: bytes = A, ref: bytes = b"q") -> Frames:
    return p.encode(p.Request(ch, ref, _utf8(topic), body))


def reply(token: bytes, body: bytes = b"reply", ch: bytes = A) -> Frames:
    return p.encode(p.Reply(ch, token, body))


def ack(token: bytes, body: bytes | None = None, ch: bytes = A) -> Frames:
    """ACK of ``token``; the body defaults to one delivered, none dropped."""
    return p.encode(p.Ack(ch, token, p.pack_ack(1, 0) if body is None else body))


def disconnect(ch: bytes = A, ref: bytes = b"d") -> Frames:
    return p.encode(p.Disconnect(ch, ref))


# --- batches -----------------------------------------------------------------------


def publish_entries(*pairs: tuple[str | bytes, bytes]) -> bytes:
    """The entries frame of a PUBLISH_BATCH carrying (topic, body) pairs."""
    return b"".join(p.pack_publish_entry(_utf8(topic), body) for topic, body in pairs)


def publish_batch(*pairs: tuple[str | bytes, bytes], ch: bytes = A) -> Frames:
    """PUBLISH_BATCH: unconfirmed publishes of (topic, body) pairs."""
    return p.encode(p.PublishBatch(ch, publish_entries(*pairs)))


def batch(*messages: Frames, ch: bytes = A) -> Frames:
    """BATCH of whole client messages (each header and channel first)."""
    return p.encode(p.Batch(ch, b"".join(p.pack_command_entry(m) for m in messages)))


def broker_batch(*messages: Frames, ch: bytes = A) -> Frames:
    """BROKER_BATCH of whole broker messages, as a client receives it."""
    return p.encode(p.BrokerBatch(ch, b"".join(p.pack_command_entry(m) for m in messages)))


# --- what a BrokerState sends --------------------------------------------------------


def take(state: BrokerState) -> list[tuple[bytes, p.BrokerCommand]]:
    """Parse what the broker would send now (``take_outgoing``); every frame list must be valid."""
    return [(ident, p.parse_broker(frames)) for ident, frames in state.take_outgoing()]


def joined(
    state: BrokerState, ident: bytes, *subs: Sub, ch: bytes = A, **hello_fields: Any
) -> None:
    """``ident`` says HELLO on ``ch`` (with ``hello_fields``) and subscribes to
    ``subs``. The outbox must be empty before: afterwards it must hold exactly
    the WELCOME and one OK per subscription, and is emptied."""
    state.handle(ident, hello(ch, **hello_fields))
    for sub in subs:
        if isinstance(sub, str):
            state.handle(ident, subscribe(sub, ch=ch))
        else:
            state.handle(ident, subscribe(*sub, ch=ch))
    out = take(state)
    assert out, "no WELCOME"
    (to, welcome), oks = out[0], out[1:]
    assert to == ident and isinstance(welcome, p.Welcome) and welcome.channel == ch, out[0]
    assert oks == [(ident, p.Ok(ch, b"s"))] * len(subs), oks


def welcome_of(state: BrokerState) -> dict[str, Any]:
    """The body of the WELCOME last queued."""
    (_, frames) = state.outbox[-1]
    cmd = p.parse_broker(frames)
    assert isinstance(cmd, p.Welcome)
    return p.unpack_welcome(cmd.body)
