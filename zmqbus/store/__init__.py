"""Storage of durable streams: messages, dedup ids and consumer states.

``open_store(data_dir)`` gives a ``Store``: memory streams always, file streams
(SQLite, WAL mode) when given a data_dir. The interface is in ``base``; the
backends in ``memory`` and ``sqlite``. The store is sans-IO apart from its
database file: it touches no socket.
"""

from __future__ import annotations

from .base import (
    MAX_MSG_ID_BYTES,
    ConsumerState,
    Discard,
    Retention,
    Storage,
    Store,
    StoreCorrupt,
    StoredMessage,
    StoreError,
    Stream,
    StreamConfig,
    StreamFull,
    SubjectFilter,
)
from .composite import CompositeStore, open_store
from .memory import MemoryStore, MemoryStream
from .sqlite import SqliteStore, SqliteStream

__all__ = [
    "MAX_MSG_ID_BYTES",
    "CompositeStore",
    "ConsumerState",
    "Discard",
    "MemoryStore",
    "MemoryStream",
    "Retention",
    "SqliteStore",
    "SqliteStream",
    "Storage",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoredMessage",
    "Stream",
    "StreamConfig",
    "StreamFull",
    "SubjectFilter",
    "open_store",
]
