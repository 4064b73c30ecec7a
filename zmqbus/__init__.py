"""zmqbus: a pub/sub message bus on ZeroMQ and msgpack.

A ROUTER broker routes by channel ID and topic; ``Bus`` clients on DEALER
sockets publish, subscribe (NATS-style wildcards) and confirm delivery.
"""

from ._version import __version__
from .broker import Broker
from .bus import Bus, Consumer, Subscription
from .errors import (
    AuthenticationError,
    BusClosed,
    ConnectTimeout,
    ConsumerNotFound,
    HandlerError,
    LimitReached,
    MessageTooLarge,
    NoResponders,
    PermissionDenied,
    ProtocolError,
    PublishTimeout,
    RateLimited,
    ReentrantPublish,
    RequestTimeout,
    StreamError,
    StreamExists,
    StreamNotFound,
    SubscriptionClosed,
    WrongEventLoop,
    ZmqbusError,
)
from .limits import Limits
from .message import Message, PublishResult
from .streams import ConsumerInfo, StreamInfo
from .users import User

__all__ = [
    "AuthenticationError",
    "Broker",
    "Bus",
    "BusClosed",
    "ConnectTimeout",
    "Consumer",
    "ConsumerInfo",
    "ConsumerNotFound",
    "HandlerError",
    "LimitReached",
    "Limits",
    "Message",
    "MessageTooLarge",
    "NoResponders",
    "PermissionDenied",
    "ProtocolError",
    "PublishResult",
    "PublishTimeout",
    "RateLimited",
    "ReentrantPublish",
    "RequestTimeout",
    "StreamError",
    "StreamExists",
    "StreamInfo",
    "StreamNotFound",
    "Subscription",
    "SubscriptionClosed",
    "User",
    "WrongEventLoop",
    "ZmqbusError",
    "__version__",
]
