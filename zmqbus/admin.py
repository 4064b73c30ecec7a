"""Operator calls that need no channel: ask a broker for its statistics."""

from __future__ import annotations

from typing import Any

import zmq

from . import protocol as p
from ._endpoints import connect_endpoint
from ._wire import recv_frames, send_frames
from .errors import ConnectTimeout, ProtocolError

__all__ = ["broker_stats"]


def broker_stats(
    address: str, *, timeout: float = 5.0, context: zmq.Context[Any] | None = None
) -> dict[str, Any]:
    """The broker's counters (peers, channels, subscriptions, queue groups,
    messages in/out, drops, errors by code) via the STATS command.

    Raises ``ConnectTimeout`` if no answer comes within ``timeout`` seconds.
    """
    endpoint = connect_endpoint(address)
    ctx = context if context is not None else zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        send_frames(sock, [p.H_STATS, b"", b"\x01"])
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise ConnectTimeout(endpoint, timeout)
        reply = p.parse_broker(recv_frames(sock))
    finally:
        sock.close(0)
    if isinstance(reply, p.Error):
        raise ProtocolError(reply.code, reply.text)
    if not isinstance(reply, p.StatsReply):
        raise ProtocolError(p.ErrorCode.UNKNOWN_COMMAND, "unexpected answer to STATS")
    stats = p.unpack_stats(reply.body)
    errors = stats.get("errors")
    if isinstance(errors, dict):
        stats["errors"] = {int(k): v for k, v in errors.items()}
    return stats
