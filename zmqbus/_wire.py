"""Multipart send/receive without pyzmq's per-call overheads.

``send_multipart``/``recv_multipart`` combine enum flags on every frame;
with the flags precomputed as ints, the same zmq calls cost a third as much
on the hot path. Sends go straight to the Cython ``send`` of pyzmq's backend
where ``_fastpath`` finds it usable: the ``zmq.Socket.send`` wrapper only adds
routing-id/group handling (unused here) and costs as much again as the send
itself. Semantics are libzmq's: a
multipart message is queued or delivered whole, so once its first frame went
through, the rest cannot block or fail with EAGAIN.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Container, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, cast

import zmq

from ._edge import peer_address
from ._fastpath import socket_calls
from .protocol import H_HELLO, H_STATS, MAX_FRAMES

if TYPE_CHECKING:
    from ._client import ClientCore

__all__ = [
    "DRAIN_MESSAGES",
    "DRAIN_SECONDS",
    "FORWARD_BYTES",
    "Misframed",
    "dealer",
    "drain",
    "get_option",
    "recv_counted",
    "recv_frames",
    "recv_routed",
    "send_frames",
    "send_queue",
    "send_routed",
    "split_messages",
]

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)
_MORE_NOBLOCK = _MORE | _NOBLOCK
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# The identity frame and the most frames any command has.
_MAX_ROUTED = 1 + MAX_FRAMES
_SRCFD = int(zmq.SRCFD)
# Commands whose source the broker reads: the connection a HELLO joins on, and
# the user a STATS asks as.
_SOURCED = frozenset((H_HELLO, H_STATS))
# From this size a forwarded body is shared with libzmq, not copied (pyzmq's own
# threshold for sending without a copy).
FORWARD_BYTES = 65536
# Unbound, called as _send(sock, data, flags): bytes are copied into the message.
_send, _get = socket_calls(zmq)
# get_option(sock, option): ``sock.getsockopt(option)`` for an int option, cheaper.
get_option = _get

log = logging.getLogger("zmqbus.client")

# A drain reads at most this many messages, for at most this long (seconds): a
# run of big batches must not hold back a driver's deadlines (heartbeats) or,
# on an event loop, its other callbacks.
DRAIN_MESSAGES = 256
DRAIN_SECONDS = 0.005


def send_frames(sock: zmq.Socket[Any], frames: Sequence[bytes]) -> None:
    """Send ``frames`` as one message without blocking; ``zmq.Again`` if the
    socket cannot take it now (then nothing was sent)."""
    send = _send
    last = len(frames) - 1
    send(sock, frames[0], _MORE_NOBLOCK if last else _NOBLOCK)
    for i in range(1, last):
        send(sock, frames[i], _MORE)
    if last:
        send(sock, frames[last], 0)


def send_queue(
    sock: zmq.Socket[Any], out: deque[list[bytes]], join: Callable[[deque[list[bytes]]], None]
) -> None:
    """Send the messages of ``out`` in order without blocking, calling
    ``join(out)`` before each (it may merge the front into one batch), until
    ``out`` is empty or the socket refuses one: that one stays first."""
    while out:
        join(out)
        try:
            send_frames(sock, out[0])
        except zmq.Again:
            return
        out.popleft()


def send_routed(sock: zmq.Socket[Any], ident: bytes, frames: Sequence[bytes]) -> None:
    """Send ``[ident, *frames]`` on a ROUTER without blocking; ``zmq.Again``
    (queue full) or EHOSTUNREACH (with ROUTER_MANDATORY) before anything is sent.
    A queue found full is asked again once, after libzmq's pending commands."""
    send = _send
    try:
        send(sock, ident, _MORE_NOBLOCK)
    except zmq.Again:
        # A peer that drained its queue says so in a command to this socket, and a
        # send processes commands only now and then (a recv that finds a message
        # waiting, never): a drained queue can still look full. Reading EVENTS
        # processes them; without it, such a peer lost the next message too.
        _get(sock, _EVENTS)
        send(sock, ident, _MORE_NOBLOCK)
    last = len(frames) - 1
    for i in range(last):
        send(sock, frames[i], _MORE)
    send(sock, frames[last], 0)


def _rest(recv: Any, frame: Any, frames: list[bytes]) -> list[bytes]:
    # The frames after ``frame`` (already appended), each checked for more.
    while frame.more:
        frame = recv(0, copy=False)
        frames.append(frame.bytes)
    return frames


def recv_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """Receive one whole message without blocking; ``zmq.Again`` if none is waiting."""
    # Frame.more reads the flag libzmq already has; getsockopt(RCVMORE) costs a
    # second call per frame through pyzmq's option handling (about 35% slower).
    recv = sock.recv
    frame = recv(_NOBLOCK, copy=False)
    return _rest(recv, frame, [frame.bytes])


def recv_routed(
    sock: zmq.Socket[Any],
    forward: frozenset[bytes] = frozenset(),
    sources: dict[bytes, tuple[int, str | None, str | None]] | None = None,
    watched: Container[bytes] = (),
) -> list[bytes]:
    """Receive one whole message on a ROUTER, the identity frame first, waiting
    up to the socket's RCVTIMEO (``zmq.Again`` once it passed; -1 waits forever).
    A ROUTER always follows the identity with the peer's frames, so the identity
    alone needs no more-flag check. The last frame of a message whose header
    is in ``forward``, if FORWARD_BYTES or longer, stays the ``zmq.Frame``
    libzmq filled: a buffer that ``len()``, joins and sends like bytes, passed
    on without a copy. For a HELLO or STATS, and a message from an identity
    in ``watched``, ``sources[identity]`` is set to where it came from (see
    ``source``)."""
    recv = sock.recv
    ident = recv(0)
    frame = recv(0, copy=False)
    head = frame.bytes
    if sources is not None and (head in _SOURCED or ident in watched):
        sources[ident] = source(frame, address=head == H_HELLO)
    frames = [ident, head]
    keep = head in forward
    while frame.more:
        frame = recv(0, copy=False)
        if len(frames) >= _MAX_ROUTED:
            # Past any command's frame count: dropped unread, so a hostile
            # message of many big frames costs one frame of Python memory. The
            # extra empty frame keeps the count wrong, whatever was dropped.
            if len(frames) == _MAX_ROUTED:
                frames.append(b"")
            continue
        if keep and not frame.more and len(frame) >= FORWARD_BYTES:
            # Copying a body of a MiB into fresh memory costs ~0.6 ms (page
            # faults); sharing libzmq's buffer costs nothing but its reference.
            frames.append(cast(bytes, frame))
        else:
            frames.append(frame.bytes)
    return frames


def source(frame: zmq.Frame, *, address: bool) -> tuple[int, str | None, str | None]:
    """Where ``frame`` came from: (its connection's descriptor, -1 for none;
    the peer's address if ``address``, else None; its connection's ZAP
    User-Id, None without one)."""
    try:
        fd = frame.get(_SRCFD)
    except zmq.ZMQError:  # inproc: no descriptor
        return -1, None, None
    try:
        tag: str | None = cast(str, frame.get("User-Id"))
    except zmq.ZMQError:  # no ZAP handler gave one
        tag = None
    return fd, peer_address(fd) if address else None, tag


class Misframed(Exception):
    """``recv_counted`` read more than one message: ``messages`` are those
    messages in order (the first malformed), each to be handled alone."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        super().__init__(f"{len(messages)} messages read as one")
        self.messages = messages


def recv_counted(sock: zmq.Socket[Any], counts: Mapping[bytes, int]) -> list[bytes]:
    """Receive one whole message without blocking (``zmq.Again`` if none is
    waiting), trusting its header frame for the frame count.

    A message whose first frame is a key of ``counts`` is read as that many
    frames, only the last checked for more: a more-flag costs a pyzmq receiver
    as much as four frames, so this halves a delivery's cost. Extra frames are
    read too (the parser refuses the message; the next one starts clean). A
    message shorter than its header says cannot make the read block: it ends
    where nothing more waits. If more messages wait, its count runs into the
    next one; that shows as a frame after the first that is itself a known
    header (only a 4-byte frame is looked up), or as a wrong frame count, and
    then the frames are split where a run of whole messages ends them: raised
    as ``Misframed``, so that the next message is not lost with the bad one.
    Any other message is read frame by frame.
    """
    recv = sock.recv
    head = recv(_NOBLOCK)
    frames = [head]
    n = counts.get(head)
    if n is None:
        if not _get(sock, _RCVMORE):
            return frames
        frame = recv(0, copy=False)
        frames.append(frame.bytes)
        return _rest(recv, frame, frames)
    suspect = False
    try:
        for _ in range(n - 2):
            data = recv(_NOBLOCK)
            frames.append(data)
            if len(data) == 4 and data in counts:
                suspect = True
        frame = recv(_NOBLOCK, copy=False)
    except zmq.Again:
        # Shorter than its header says, and nothing follows it (libzmq hands a
        # message over whole): it ended here.
        return frames
    frames.append(frame.bytes)
    if frame.more:
        _rest(recv, frame, frames)
        suspect = True
    # The last frame needs no look: a message has at least two frames, so none
    # can start there.
    if suspect:
        messages = split_messages(frames, counts)
        if len(messages) > 1:
            raise Misframed(messages)
    return frames


def split_messages(frames: list[bytes], counts: Mapping[bytes, int]) -> list[list[bytes]]:
    """``frames`` read as one message, split where a run of whole messages
    (each a known header and that header's frame count) ends them: the frames
    before the earliest such run, then each message of the run. Without such
    a run, ``[frames]``."""
    total = len(frames)
    for start in range(1, total):
        if frames[start] not in counts:
            continue
        bounds = [start]
        at = start
        while at < total:
            size = counts.get(frames[at])
            if size is None:
                break
            at += size
            bounds.append(at)
        if at == total:
            pieces = [frames[:start]]
            pieces.extend(frames[a:b] for a, b in pairwise(bounds))
            return pieces
    return [frames]


def dealer(
    context: zmq.Context[Any],
    endpoint: str,
    hwm: int,
    max_frame: int = -1,
    *,
    curve: tuple[bytes, bytes, bytes] | None = None,
    before_connect: Callable[[zmq.Socket[bytes]], object] | None = None,
) -> zmq.Socket[bytes]:
    """A bus's DEALER, connected to ``endpoint``: no linger (close() flushes by
    protocol, with DISCONNECT), high-water marks of ``hwm`` messages, and
    frames longer than ``max_frame`` octets refused (-1: any): libzmq then
    drops the connection. ``curve``: (the broker's public key, this client's
    public and secret keys), Z85. ``before_connect(sock)`` runs just before
    the connect (to watch its first handshake). A bad endpoint raises
    ``ValueError``."""
    sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    # Before connect: a connection takes the socket's options as it is made.
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
    if before_connect is not None:
        before_connect(sock)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ValueError(f"cannot connect to {endpoint!r}: {exc}") from None
    return sock


class DealerOwner:
    """What owns a bus's DEALER (the threaded face's I/O thread, the asyncio
    face): how it opens one, in one place. The owner sets the fields and
    watches each socket's handshakes (``_watch_handshakes``)."""

    _ctx: zmq.Context[Any]
    _endpoint: str
    _hwm: int
    _curve: tuple[bytes, bytes, bytes] | None
    _core: ClientCore

    def _watch_handshakes(self, sock: zmq.Socket[bytes]) -> None:
        raise NotImplementedError

    def _dealer(self) -> zmq.Socket[bytes]:
        # Each socket's handshakes are watched from before its connect.
        return dealer(
            self._ctx,
            self._endpoint,
            self._hwm,
            self._core.max_frame,
            curve=self._curve,
            before_connect=self._watch_handshakes,
        )


def drain(
    sock: zmq.Socket[Any],
    counts: Mapping[bytes, int],
    receive: Callable[[list[bytes]], object],
    *,
    waiting: bool = False,
    full: Callable[[], bool] | None = None,
) -> bool:
    """Hand each message waiting on a bus's DEALER (read as by ``recv_counted``)
    to ``receive``, within ``DRAIN_MESSAGES`` and ``DRAIN_SECONDS``; return True
    if the budget ran out or ``full()`` said to stop (more may wait).
    ``waiting``: a poll has just said a message waits. A message ``receive``
    raises on is logged and skipped.

    It stops on finding the socket empty, which also leaves an edge-triggered
    ``zmq.FD`` ready to signal the next arrival."""
    # Ask EVENTS before reading only where a message is likely not to wait: first
    # (unless a poll said one does) and after the first one. A read that finds
    # none raises zmq.Again (~8 us), EVENTS costs ~3 us, and a lone message is
    # the common case when latency matters.
    if not waiting and not _get(sock, _EVENTS) & _POLLIN:
        return False
    clock = time.monotonic
    until = clock() + DRAIN_SECONDS
    for i in range(DRAIN_MESSAGES):
        if i == 1 and not _get(sock, _EVENTS) & _POLLIN:
            return False
        if i and clock() > until:
            return True
        # Checked before every message: one message can make thousands of ACKs.
        if full is not None and full():
            return True
        try:
            frames = recv_counted(sock, counts)
        except zmq.Again:
            return False
        except Misframed as exc:
            for message in exc.messages:
                _hand(receive, message)
            continue
        try:
            receive(frames)
        except Exception:
            log.exception("error handling a message from the broker")
    return True


def _hand(receive: Callable[[list[bytes]], object], frames: list[bytes]) -> None:
    try:
        receive(frames)
    except Exception:
        log.exception("error handling a message from the broker")
