"""What a bus's socket monitor says of failed handshakes (CURVE, ZAP).

libzmq retries a refused handshake for ever, silently; the monitor is the only
place the refusal shows. Each bus socket gets a ``HandshakeWatch``; its
driver polls ``socket`` (or watches ``fd``) and hands ``failures()`` to the
core, which fails the connect with ``AuthenticationError``.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple, cast

import zmq

__all__ = ["Failure", "HandshakeWatch", "reason"]

_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HEAD = struct.Struct("=HI")
_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)


def reason(event: int, value: int, *, curve: bool) -> str:
    """Words for a failed handshake's monitor ``event`` and its ``value``."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400:
            return "the broker refused this client's key (ZAP 400)"
        return f"the broker's authentication failed (ZAP {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MISMATCH:
        if curve:
            return "the broker does not use CURVE: pass no server_key or key"
        return "the broker requires CURVE: pass server_key and key"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"the handshake failed (ZMTP protocol error 0x{value:x})"
    if curve:
        return "the CURVE handshake failed: is server_key the broker's public key?"
    return "the handshake failed: does the broker require CURVE (server_key and key)?"


class Failure(NamedTuple):
    """One failed handshake: why, and whether the broker's ZAP refused the
    client (its key is no user's: retrying cannot help until that changes)."""

    reason: str
    refused: bool


class HandshakeWatch:
    """The failed-handshake events of one socket, read without blocking."""

    def __init__(self, context: zmq.Context[Any], sock: zmq.Socket[Any], *, curve: bool) -> None:
        # An endpoint of its own: pyzmq's default names it by id(), which a new
        # socket can take while the old monitor's endpoint is still bound.
        endpoint = f"inproc://zmqbus-handshake-{os.urandom(8).hex()}"
        sock.monitor(endpoint, _EVENTS)
        self._curve = curve
        self.socket: zmq.Socket[bytes] = context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        # A read that finds nothing arms the descriptor: libzmq signals it only
        # for a message that comes after one.
        self.failures()

    @property
    def fd(self) -> int:
        """A descriptor readable (edge-triggered) when events may wait."""
        return cast(int, self.socket.getsockopt(zmq.FD))

    def failures(self) -> list[Failure]:
        """Every failure reported since the last call."""
        out: list[Failure] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            event, value = _HEAD.unpack_from(frames[0])
            refused = event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            out.append(Failure(reason(event, value, curve=self._curve), refused))

    def close(self) -> None:
        """Close the monitor's end (the watched socket is closed by its owner)."""
        self.socket.close(0)
