"""Operator calls that need no channel: ask a broker for its statistics."""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from . import protocol as p
from ._endpoints import connect_endpoint
from ._handshake import HandshakeWatch
from ._wire import recv_frames, send_frames
from .errors import AuthenticationError, ConnectTimeout, ProtocolError
from .keys import load_keypair, load_public_key

__all__ = ["broker_stats"]


def broker_stats(
    address: str,
    *,
    timeout: float = 5.0,
    context: zmq.Context[Any] | None = None,
    server_key: bytes | str | os.PathLike[str] | None = None,
    key: tuple[bytes | str, bytes | str] | bytes | str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The broker's counters (peers, channels, subscriptions, queue groups,
    messages in/out, drops, errors by code) via the STATS command; a user
    without admin sees its own channel's counts only. ``server_key`` and
    ``key``: for a broker with CURVE, as ``Bus`` takes them.

    Raises ``ConnectTimeout`` if no answer comes within ``timeout`` seconds,
    ``AuthenticationError`` if the broker refuses the key.
    """
    endpoint = connect_endpoint(address)
    curve = None
    if server_key is not None or key is not None:
        if server_key is None or key is None:
            raise ValueError("CURVE needs both server_key and key")
        public, secret = load_keypair(key, "key")
        curve = (load_public_key(server_key, "server_key"), public, secret)
    ctx = context if context is not None else zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
    watch = HandshakeWatch(ctx, sock, curve=curve is not None)
    try:
        sock.connect(endpoint)
        send_frames(sock, [p.H_STATS, b"", b"\x01"])
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(watch.socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if sock in ready:
                break
            failures = watch.failures() if watch.socket in ready else []
            if failures:
                raise AuthenticationError(endpoint, failures[0].reason)
            if not ready:
                raise ConnectTimeout(endpoint, timeout)
        reply = p.parse_broker(recv_frames(sock))
    finally:
        sock.close(0)
        watch.close()
    if isinstance(reply, p.Error):
        raise ProtocolError(reply.code, reply.text)
    if not isinstance(reply, p.StatsReply):
        raise ProtocolError(p.ErrorCode.UNKNOWN_COMMAND, "unexpected answer to STATS")
    stats = p.unpack_stats(reply.body)
    errors = stats.get("errors")
    if isinstance(errors, dict):
        stats["errors"] = {int(k): v for k, v in errors.items()}
    return stats
