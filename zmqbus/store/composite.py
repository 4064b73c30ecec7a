"""``open_store``: one Store over both backends, dispatching by ``config.storage``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .base import Store, StoreError, Stream, StreamConfig
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["CompositeStore", "open_store"]


class CompositeStore:
    """Memory streams always; file streams when opened with a data_dir. Stream
    names are unique across both kinds."""

    def __init__(self, memory: MemoryStore, file: SqliteStore | None) -> None:
        self.memory = memory
        self.file = file

    @property
    def data_dir(self) -> Path | None:
        """The data_dir of the file streams, or None."""
        return self.file.data_dir if self.file is not None else None

    @property
    def path(self) -> Path | None:
        """The database file of the file streams, or None."""
        return self.file.path if self.file is not None else None

    def create_stream(self, config: StreamConfig) -> Stream:
        """See ``Store.create_stream``. ``StoreError`` for a file stream without a data_dir."""
        if not isinstance(config, StreamConfig):
            raise TypeError(f"expected a StreamConfig, not {type(config).__name__}")
        if config.storage == "file":
            if self.file is None:
                raise StoreError("file streams need a data_dir (Broker(data_dir=...) / --data-dir)")
            if self.memory.stream(config.name) is not None:
                raise ValueError(f"stream {config.name!r} exists with another config")
            return self.file.create_stream(config)
        if self.file is not None and self.file.stream(config.name) is not None:
            raise ValueError(f"stream {config.name!r} exists with another config")
        return self.memory.create_stream(config)

    def stream(self, name: str) -> Stream | None:
        """See ``Store.stream``."""
        found = self.memory.stream(name)
        if found is None and self.file is not None:
            return self.file.stream(name)
        return found

    def streams(self) -> list[Stream]:
        """See ``Store.streams``."""
        out: list[Stream] = [*self.memory.streams()]
        if self.file is not None:
            out.extend(self.file.streams())
        return sorted(out, key=lambda s: s.config.name)

    def delete_stream(self, name: str) -> bool:
        """See ``Store.delete_stream``."""
        if self.memory.delete_stream(name):
            return True
        return self.file is not None and self.file.delete_stream(name)

    def commit(self) -> None:
        """See ``Store.commit``."""
        self.memory.commit()
        if self.file is not None:
            self.file.commit()

    def close(self) -> None:
        """See ``Store.close``."""
        self.memory.close()
        if self.file is not None:
            self.file.close()


def open_store(
    data_dir: str | os.PathLike[str] | None, *, sync: Literal["normal", "full"] = "normal"
) -> Store:
    """A store of memory streams and, with ``data_dir``, file streams in one
    SQLite database there (WAL mode; ``sync`` is "normal" or "full"), loaded
    with the file streams and consumer states it holds. ``StoreCorrupt`` (naming
    the path) if the data_dir or database cannot be used."""
    if sync not in ("normal", "full"):
        raise ValueError(f"sync must be 'normal' or 'full', got {sync!r}")
    file = SqliteStore(data_dir, sync=sync) if data_dir is not None else None
    return CompositeStore(MemoryStore(), file)
