"""What the threaded and the asyncio faces share: the subscription's public
attributes and the bus's argument checks, encoding and properties. Each face
adds only its own way of waiting and of running handlers."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from . import _validate
from . import protocol as p
from ._client import ClientCore
from ._endpoints import connect_endpoint
from .errors import MessageTooLarge, ReentrantPublish
from .topics import matches, validate_topic

__all__ = ["BusBase", "SubscriptionBase", "parse_channel"]

# (bus, subscription) whose handlers this thread or task runs: each dispatcher, a
# thread or a task of its own, sets it once. A task a handler starts inherits it,
# and waiting on it from the handler would stall just the same.
_dispatching: ContextVar[tuple[object, SubscriptionBase] | None] = ContextVar(
    "zmqbus_dispatching", default=None
)


def parse_channel(channel_id: object) -> uuid.UUID:
    """A ``uuid.UUID`` from a UUID or its string form; ``ValueError`` otherwise."""
    if isinstance(channel_id, uuid.UUID):
        return channel_id
    if isinstance(channel_id, str):
        try:
            return uuid.UUID(channel_id)
        except ValueError:
            raise ValueError(f"channel_id is not a UUID string: {channel_id!r}") from None
    raise ValueError(
        f"channel_id must be a uuid.UUID or UUID string, not {type(channel_id).__name__}"
    )


class SubscriptionBase:
    """State and read-only attributes of a subscription, on either face."""

    def __init__(self, pattern: str, maxsize: int, handler: Any, queue: str) -> None:
        self._pattern = pattern
        self._queue = queue
        self._maxsize = maxsize
        self._handler = handler
        # A handler subscription buffers (message, ack id) pairs, for the ACK after
        # its handler; a queue subscription, ACKed on arrival, just the messages:
        # one object fewer per buffered message for the cyclic GC to count and scan.
        self._buf: deque[Any] = deque()
        self._ended = False
        self._abort = False
        self._dropped = 0
        self._received = 0
        self._in_handler = False  # set by the dispatcher around each handler call

    def _dispatching_for(self, bus: object) -> None:
        """Mark this thread or task as the dispatcher of this subscription."""
        _dispatching.set((bus, self))

    @property
    def pattern(self) -> str:
        """The subscribed topic pattern."""
        return self._pattern

    @property
    def queue(self) -> str | None:
        """The queue group this subscription belongs to, or None."""
        return self._queue or None

    @property
    def dropped(self) -> int:
        """Messages dropped: because the buffer was full, or at the broker because
        this bus read too slowly (reported by the broker once it can)."""
        return self._dropped

    @property
    def received(self) -> int:
        """Messages taken into the buffer (not counting drops)."""
        return self._received

    @property
    def closed(self) -> bool:
        """True once the subscription has ended (buffered messages may remain)."""
        return self._ended

    def __len__(self) -> int:
        """Messages buffered now."""
        return len(self._buf)

    def __repr__(self) -> str:
        kind = "handler" if self._handler else "queue"
        state = "ended" if self._ended else "active"
        name = type(self).__module__.removeprefix("zmqbus.") + "." + type(self).__name__
        return f"<{name} {self._pattern!r} {kind} {state} dropped={self._dropped}>"


class BusBase:
    """Arguments, encoding and properties of a bus, on either face."""

    def __init__(
        self,
        address: str,
        channel_id: uuid.UUID | str,
        *,
        close_timeout: float,
        heartbeat: float,
        client_name: str,
        on_disconnected: Callable[[], Any] | None,
        on_reconnected: Callable[[], Any] | None,
    ) -> None:
        self._channel = parse_channel(channel_id)
        self._endpoint = connect_endpoint(address)
        self._close_timeout = _validate.timeout(close_timeout, "close_timeout")
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)) or heartbeat < 0:
            raise ValueError("heartbeat must be a non-negative number of seconds (0: off)")
        self._callbacks = {"disconnected": on_disconnected, "reconnected": on_reconnected}
        self._core = ClientCore(self._channel.bytes, client_name=client_name, heartbeat=heartbeat)
        self._core.send_reply = self._send_reply
        self._closed = False
        self._topics: dict[str, bytes] = {}
        self._max_size = 0

    @property
    def channel_id(self) -> uuid.UUID:
        """The channel this bus publishes and subscribes on."""
        return self._channel

    @property
    def address(self) -> str:
        """The broker endpoint."""
        return self._endpoint

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return self._closed

    @property
    def state(self) -> str:
        """``"connected"``, ``"reconnecting"`` (the broker was lost; the bus is
        rejoining by itself and will restore its subscriptions) or ``"closed"``."""
        if self._closed:
            return "closed"
        return "connected" if self._core.state == "ready" else "reconnecting"

    @property
    def max_message_size(self) -> int:
        """The broker's limit on an encoded message body, from the handshake."""
        return self._max_size

    def __repr__(self) -> str:
        name = type(self).__module__.removeprefix("zmqbus.") + "." + type(self).__name__
        return f"<{name} {self._endpoint} channel={self._channel} {self.state}>"

    def _topic_bytes(self, topic: str) -> bytes:
        topic_b = self._topics.get(topic)
        if topic_b is None:
            topic_b = validate_topic(topic).encode()
            if len(self._topics) < 4096:
                self._topics[topic] = topic_b
        return topic_b

    def _refuse_own_wait(self, topic: str) -> None:
        """Raise ``ReentrantPublish`` when a handler of this bus makes a confirmed
        publish its own subscription would receive: it could not be confirmed
        before that handler returns, and the handler is waiting for it."""
        current = _dispatching.get()
        if current is None or current[0] is not self:
            return
        sub = current[1]
        if sub._in_handler and not sub._ended and matches(sub._pattern, topic):
            raise ReentrantPublish(sub._pattern, topic)

    def _encode(self, payload: object, headers: object) -> bytes:
        data = _validate.payload(payload)
        hdrs = _validate.headers(headers)
        body = p.pack_message(p.new_message_id(), time.time_ns(), hdrs, data)
        if len(body) > self._max_size:
            raise MessageTooLarge(len(body), self._max_size)
        return body

    def _send_reply(self, token: bytes, body: bytes) -> None:
        raise NotImplementedError
