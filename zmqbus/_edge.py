"""The broker's edge: what libzmq tells of connections before any message.

A thread of its own answers ZAP (RFC 27) for the broker's ROUTER, giving each
connection a tag no other connection has (its ZAP User-Id, which libzmq then
stamps on every message from it), and relays the socket monitor's accepted
and disconnected events, each with the peer's address, to the broker loop.
Both arrive at the loop as messages on its ROUTER, from the routing id
``edge_id``, so that the loop still blocks on its one socket.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zmq
from zmq.utils import z85

from .keys import load_public_key
from .users import ANONYMOUS, User

__all__ = [
    "ACCEPTED",
    "CLOSED",
    "ZAP_ENDPOINT",
    "Edge",
    "Registry",
    "decode_event",
    "peer_address",
    "still_open",
]

log = logging.getLogger("zmqbus.broker")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"zmqbus"
ACCEPTED = b"accepted"
CLOSED = b"closed"
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED
_HEAD = struct.Struct("=HI")  # a monitor event's first frame: event, value
# Events the relay holds for a loop that is busy: past it the edge waits.
_RELAY_HWM = 100_000


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket | None]:
    # The socket object of a descriptor libzmq owns (None if it is no socket);
    # detached after, so that closing it never closes libzmq's descriptor.
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        yield None
        return
    try:
        yield sock
    finally:
        sock.detach()


def _name(sock: socket.socket) -> str:
    name = sock.getpeername()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return name if isinstance(name, str) else ""


def peer_address(fd: int) -> str | None:
    """The address of the peer connected on descriptor ``fd`` (``"host:port"``;
    ``""`` for an unnamed one), or None if ``fd`` is no connected socket."""
    with _borrowed(fd) as sock:
        if sock is None:
            return None
        try:
            return _name(sock)
        except OSError:
            return None


# The peer shut its side (FIN), the connection broke, or it was shut down here.
_ENDING = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def still_open(fd: int, address: str) -> bool:
    """True if ``fd`` is a connection to ``address`` that neither end has
    begun to close. libzmq reports a connection's end before it closes the
    descriptor: such a connection, whose peer hung up, is not open."""
    if peer_address(fd) != address:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN | _ENDING)
    return not any(events & _ENDING for _, events in poller.poll(0))


def shut_down(fd: int, address: str) -> bool:
    """Shut down the connection on ``fd`` if it still goes to ``address``;
    libzmq then sees it end and closes it. False if ``fd`` is another's now."""
    with _borrowed(fd) as sock:
        if sock is None:
            return False
        try:
            if _name(sock) != address:
                return False
            sock.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False


def decode_event(frames: list[bytes]) -> tuple[bytes, int, str]:
    """An event relayed by the edge: (ACCEPTED or CLOSED, fd, address)."""
    kind, fd, address = frames
    return kind, int.from_bytes(fd, "little", signed=True), address.decode("utf-8", "replace")


class Edge:
    """ZAP handler and monitor relay for one broker ROUTER (see the module)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        registry: Registry | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._ctx = context
        self._registry = registry
        # Called (on this thread) for each refused key before ZAP answers, so
        # the refusal is counted by the time the client learns of it.
        self._on_refused = on_refused
        self._next_tag = 0
        self._addresses: dict[int, str] = {}  # open descriptor -> peer address
        self._skipped: set[int] = set()  # accepted, not relayed: their close is not either
        self._zap: zmq.Socket[bytes] | None = context.socket(zmq.ROUTER)
        self._zap.setsockopt(zmq.LINGER, 0)
        try:
            self._zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            # Another handler serves this context (another broker in it).
            log.warning(
                "no ZAP handler of its own (%s): a routing id claimed after its peer's "
                "connection ended is told apart from it by the disconnect event alone",
                exc,
            )
            self._zap.close(0)
            self._zap = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._relay: zmq.Socket[bytes] | None = None
        self._thread: threading.Thread | None = None

    @property
    def registry(self) -> Registry | None:
        """The users ZAP admits; replaced whole (one assignment) on a reload."""
        return self._registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        self._registry = registry

    @property
    def tags(self) -> bool:
        """True if each connection's messages carry a tag of its own (ZAP)."""
        return self._zap is not None

    def start(self, router: zmq.Socket[bytes], loop_endpoint: str, edge_id: bytes) -> None:
        """Watch ``router`` (call from the thread that owns it, before its
        loop runs) and relay to ``loop_endpoint`` as ``edge_id``."""
        self._monitor = router.get_monitor_socket(_EVENTS)
        relay = self._relay = self._ctx.socket(zmq.DEALER)
        relay.setsockopt(zmq.LINGER, 0)
        relay.setsockopt(zmq.SNDHWM, _RELAY_HWM)
        relay.setsockopt(zmq.ROUTING_ID, edge_id)
        relay.connect(loop_endpoint)
        self._thread = threading.Thread(target=self._run, name="zmqbus-edge", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (it does once the ROUTER is closed)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Close the sockets if the thread never ran."""
        if self._thread is None and self._zap is not None:
            self._zap.close(0)
            self._zap = None

    def _run(self) -> None:
        monitor, relay, zap = self._monitor, self._relay, self._zap
        assert monitor is not None and relay is not None
        poller = zmq.Poller()
        poller.register(monitor, zmq.POLLIN)
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        try:
            while True:
                # Blocks until a handshake or a connection event: idle costs nothing.
                ready = dict(poller.poll())
                try:
                    if zap is not None and zap in ready:
                        self._answer(zap)
                    if monitor in ready and not self._relay_event(monitor, relay):
                        break
                except zmq.ContextTerminated:
                    raise
                except Exception:
                    # Every handshake waits on this thread: it must go on.
                    log.exception("broker edge: an event could not be handled")
        except zmq.ContextTerminated:
            pass
        finally:
            monitor.close(0)
            relay.close(0)
            if zap is not None:
                zap.close(0)

    def _relay_event(self, monitor: zmq.Socket[bytes], relay: zmq.Socket[bytes]) -> bool:
        # Every event waiting, in order: a connection accepted and closed
        # within them is never relayed, as its descriptor may be another's by
        # now, and the address read for it would be that other's.
        events: list[tuple[int, int]] = []
        while True:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            events.append(_HEAD.unpack_from(frames[0]))
        gone = {fd for event, fd in events if event == zmq.EVENT_DISCONNECTED}
        for i, (event, fd) in enumerate(events):
            if event == zmq.EVENT_MONITOR_STOPPED:
                return False
            if event == zmq.EVENT_ACCEPTED:
                if fd in gone and any(
                    e == zmq.EVENT_DISCONNECTED and f == fd for e, f in events[i + 1 :]
                ):
                    self._skipped.add(fd)
                    continue
                address = peer_address(fd)
                if address is None:
                    self._skipped.add(fd)  # gone already: its DISCONNECTED follows
                    continue
                self._addresses[fd] = address
                self._send(relay, ACCEPTED, fd, address)
            elif fd in self._skipped:
                self._skipped.discard(fd)
            else:
                address = self._addresses.pop(fd, None)
                if address is not None:
                    self._send(relay, CLOSED, fd, address)
        return True

    def _send(self, relay: zmq.Socket[bytes], kind: bytes, fd: int, address: str) -> None:
        try:
            # Never blocking: with the loop gone (stopping) a send would wait forever.
            relay.send_multipart(
                [kind, fd.to_bytes(4, "little", signed=True), address.encode()], zmq.NOBLOCK
            )
        except zmq.Again:
            # The loop has stopped, or is 100,000 events behind.
            log.debug("broker edge: connection event dropped, the loop is not reading")

    def _answer(self, zap: zmq.Socket[bytes]) -> None:
        # A ZAP request: [sender, b"", version, request id, domain, address,
        # identity, mechanism, credentials...]; see RFC 27.
        frames = zap.recv_multipart()
        if len(frames) < 8 or frames[2] != b"1.0":
            log.warning("malformed ZAP request dropped")
            return
        sender, _, version, request_id, _, address, _, mechanism = frames[:8]
        registry = self._registry
        user = registry.anonymous if registry is not None else None
        if mechanism == b"CURVE":
            key = z85.encode(frames[8]) if len(frames) > 8 and len(frames[8]) == 32 else b""
            user = registry.by_key.get(key) if registry is not None else None
            if user is None:
                text = key.decode("ascii")
                # The public key only: it names the client and is no secret.
                log.warning(
                    "refused a connection from %s: CURVE public key %s is no user's",
                    address.decode("utf-8", "replace"),
                    text,
                )
                if self._on_refused is not None:
                    self._on_refused()
                zap.send_multipart(
                    [sender, b"", version, request_id, b"400", b"unknown key", b"", b""]
                )
                return
        self._next_tag += 1
        # Unique per connection, and naming its user: "<n>:<user name>".
        tag = f"{self._next_tag}:{user.name if user is not None else ANONYMOUS}"
        zap.send_multipart([sender, b"", version, request_id, b"200", b"OK", tag.encode(), b""])


class Registry:
    """A broker's users by public key and by name, as ZAP and HELLO look them
    up. ``secure``: the broker runs CURVE (every user but ``"anonymous"``
    needs a key); otherwise only ``"anonymous"`` may be given. Without an
    ``"anonymous"`` user, one with every permission and ``admin`` stands in
    (peers on inproc, which has no handshake, are it too)."""

    def __init__(self, users: Iterable[User] | None, *, secure: bool) -> None:
        self.by_name: dict[str, User] = {}
        self.by_key: dict[bytes, User] = {}
        for user in users or ():
            if not isinstance(user, User):
                raise TypeError(f"users must be zmqbus.User, not {type(user).__name__}")
            if user.name in self.by_name:
                raise ValueError(f"two users named {user.name!r}")
            self.by_name[user.name] = user
            if user.name == ANONYMOUS:
                continue
            if not secure:
                raise ValueError(
                    f"user {user.name!r} has a key, but the broker has no secret_key: "
                    "without CURVE only 'anonymous' can be told apart"
                )
            assert user.public_key is not None  # checked by User
            key = load_public_key(user.public_key, f"user {user.name!r}: public_key")
            if key in self.by_key:
                raise ValueError(f"users {self.by_key[key].name!r} and {user.name!r} share a key")
            self.by_key[key] = user
        self.anonymous = self.by_name.get(ANONYMOUS) or User(ANONYMOUS, admin=True, streams=True)

    def revoked(self, new: Registry) -> set[str]:
        """Names of the users that ``new`` drops, or gives another key or other
        rights: their connections must not outlive the change."""
        keys = {user.name: key for key, user in self.by_key.items()}
        new_keys = {user.name: key for key, user in new.by_key.items()}
        out = {
            name
            for name, user in self.by_name.items()
            if name not in new.by_name
            or keys.get(name) != new_keys.get(name)
            or not user.same_rights(new.by_name[name])
        }
        if not self.anonymous.same_rights(new.anonymous):
            out.add(ANONYMOUS)
        return out

    def user(self, name: str | None) -> User:
        """The user called ``name`` (None, or one no longer known: anonymous)."""
        if name is None:
            return self.anonymous
        return self.by_name.get(name, self.anonymous)
