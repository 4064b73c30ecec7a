"""File streams in one SQLite database (WAL mode) in a data_dir: the durable backend.

Layout: a ``streams`` table (config and running numbers of each stream), a
``consumers`` table (encoded consumer states) and, per stream, a message table
``m<id>`` keyed by seq and a dedup table ``d<id>`` (seq, time, msg_id, with a
unique index on msg_id). Nothing per message is kept in Python: the running
numbers live in the stream objects and are written to ``streams`` in the same
transaction as the messages they count.

Writes run inside one open transaction (``BEGIN IMMEDIATE`` at the first
write) that ``commit()`` ends. The connection holds the database in exclusive
locking mode, so a second process opening the same data_dir gets a
``StoreError`` instead of two writers; the OS drops the lock when the process
dies, kill -9 included.
"""

from __future__ import annotations

import builtins
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgpack  # type: ignore[import-untyped]

from ._common import StoreBase, StreamBase
from .base import StoreCorrupt, StoredMessage, StoreError, StreamConfig, SubjectFilter

__all__ = ["APPLICATION_ID", "DB_FILENAME", "SCHEMA_VERSION", "SqliteStore", "SqliteStream"]

log = logging.getLogger("zmqbus.store")

#: The database file's name in the data_dir.
DB_FILENAME = "streams.sqlite3"
#: ``PRAGMA application_id`` of a zmqbus store ("zbst").
APPLICATION_ID = 0x7A627374
#: ``PRAGMA user_version`` of the layout this module writes.
SCHEMA_VERSION = 1
#: SQLite's page cache (KiB): the memory the store holds whatever the stream sizes.
CACHE_KIB = 16384
#: WAL pages (4 KiB each) written before a checkpoint copies them into the database.
WAL_CHECKPOINT_PAGES = 4000

_SCHEMA = (
    # AUTOINCREMENT: a deleted stream's id, and so its table names, are never reused.
    """CREATE TABLE streams (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        config BLOB NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE consumers (
        stream INTEGER NOT NULL,
        name TEXT NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (stream, name)) WITHOUT ROWID""",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

# SQLite's primary result codes that are not about the database's health.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13

# Rows fetched per step when walking from the head: small first, as dropping
# one message to make room is the common case, then growing.
_HEAD_CHUNKS = (4, 64, 1024)


def _stream_ddl(sid: int) -> tuple[str, ...]:
    # body last: a row's other columns stay on its b-tree page when a large body overflows.
    return (
        f"""CREATE TABLE m{sid} (
            seq INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            size INTEGER NOT NULL,
            topic BLOB NOT NULL,
            msg_id BLOB NOT NULL,
            body BLOB NOT NULL)""",
        f"CREATE TABLE d{sid} (seq INTEGER PRIMARY KEY, time REAL NOT NULL, msg_id BLOB NOT NULL)",
        f"CREATE UNIQUE INDEX d{sid}_msg_id ON d{sid} (msg_id)",
    )


class SqliteStream(StreamBase):
    """A file stream: its rows in tables ``m<id>`` and ``d<id>`` of the store's database."""

    _db_errors = (sqlite3.Error,)

    def __init__(
        self,
        store: SqliteStore,
        sid: int,
        config: StreamConfig,
        *,
        first_seq: int,
        last_seq: int,
        messages: int,
        nbytes: int,
    ) -> None:
        super().__init__(
            config, first_seq=first_seq, last_seq=last_seq, messages=messages, nbytes=nbytes
        )
        self._store = store
        self._db = store._conn
        self.sid = sid
        m, d = f"m{sid}", f"d{sid}"
        cols = "seq, topic, body, msg_id, time"
        self._q_insert = (
            f"INSERT INTO {m} (seq, time, size, topic, msg_id, body) VALUES (?,?,?,?,?,?)"
        )
        self._q_get = f"SELECT {cols} FROM {m} WHERE seq = ?"
        self._q_head = f"SELECT seq, size, time FROM {m} WHERE seq >= ? ORDER BY seq LIMIT ?"
        self._q_next = f"SELECT seq, time FROM {m} WHERE seq >= ? ORDER BY seq LIMIT 1"
        self._q_size = f"SELECT size FROM {m} WHERE seq = ?"
        self._q_del_one = f"DELETE FROM {m} WHERE seq = ?"
        self._q_del_below = f"DELETE FROM {m} WHERE seq < ?"
        self._q_del_all = f"DELETE FROM {m}"
        self._q_scan = f"SELECT {cols} FROM {m} WHERE seq >= ? ORDER BY seq LIMIT ?"
        self._q_scan_match = (
            f"SELECT {cols} FROM {m} WHERE seq >= ? AND zb_match(topic) ORDER BY seq LIMIT ?"
        )
        self._q_newest = f"SELECT {cols} FROM {m} ORDER BY seq DESC LIMIT 1"
        self._q_newest_match = (
            f"SELECT {cols} FROM {m} WHERE zb_match(topic) ORDER BY seq DESC LIMIT 1"
        )
        self._q_id = f"SELECT seq, time FROM {d} WHERE msg_id = ?"
        # Inserts the id, or takes over its entry if that is from before the
        # cutoff; changes nothing (rowcount 0) for a live duplicate.
        self._q_id_claim = (
            f"INSERT INTO {d} (seq, time, msg_id) VALUES (?,?,?) ON CONFLICT (msg_id) "
            f"DO UPDATE SET seq = excluded.seq, time = excluded.time WHERE {d}.time <= ?"
        )
        self._q_id_keep = f"SELECT seq FROM {d} WHERE time > ? ORDER BY seq LIMIT 1"
        self._q_id_first = f"SELECT seq FROM {d} ORDER BY seq LIMIT 1"
        self._q_id_del_below = f"DELETE FROM {d} WHERE seq < ?"
        self._q_id_del_all = f"DELETE FROM {d}"

    def _write(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        # fetchall steps the statement to its end, so none stays open across calls.
        rows = self._db.execute(sql, params).fetchall()
        return rows[0] if rows else None

    def _changed(self) -> None:
        self._store._dirty.add(self)

    def _failed(self, exc: Exception, what: str) -> StoreError:
        return self._store._failed(exc, f"stream {self.config.name!r}: {what}")

    def _where(self) -> str:
        return f"stream {self.config.name!r} in {self._store.path}"

    def _insert(
        self,
        seq: int,
        topic: builtins.bytes,
        body: builtins.bytes,
        msg_id: builtins.bytes,
        now: float,
        size: int,
    ) -> None:
        self._write()
        self._db.execute(self._q_insert, (seq, now, size, topic, msg_id, body))

    def _fetch(self, seq: int) -> StoredMessage | None:
        row = self._one(self._q_get, (seq,))
        return StoredMessage(*row) if row is not None else None

    def _iter_head(self) -> Iterator[tuple[int, int, float]]:
        seq = self._first
        step = 0
        while True:
            n = _HEAD_CHUNKS[min(step, len(_HEAD_CHUNKS) - 1)]
            step += 1
            rows = self._db.execute(self._q_head, (seq, n)).fetchall()
            yield from rows
            if len(rows) < n:
                return
            seq = rows[-1][0] + 1

    def _next_entry(self, seq: int) -> tuple[int, float] | None:
        row = self._one(self._q_next, (seq,))
        return (row[0], row[1]) if row is not None else None

    def _delete_below(self, seq: int) -> None:
        self._write()
        self._db.execute(self._q_del_below, (seq,))

    def _delete_one(self, seq: int) -> int | None:
        row = self._one(self._q_size, (seq,))
        if row is None:
            return None
        self._write()
        self._db.execute(self._q_del_one, (seq,))
        size: int = row[0]
        return size

    def _delete_all(self) -> None:
        self._write()
        self._db.execute(self._q_del_all)

    def _scan(self, start: int, limit: int, match: SubjectFilter) -> list[StoredMessage]:
        if match.everything:
            rows = self._db.execute(self._q_scan, (start, limit)).fetchall()
        else:
            self._store._match = match
            rows = self._db.execute(self._q_scan_match, (start, limit)).fetchall()
        return list(map(StoredMessage._make, rows))

    def _newest(self, match: SubjectFilter) -> StoredMessage | None:
        if match.everything:
            row = self._one(self._q_newest, ())
        else:
            self._store._match = match
            row = self._one(self._q_newest_match, ())
        return StoredMessage(*row) if row is not None else None

    def _lookup_id(self, msg_id: builtins.bytes) -> tuple[int, float] | None:
        row = self._one(self._q_id, (msg_id,))
        return (row[0], row[1]) if row is not None else None

    def _claim_id(self, msg_id: builtins.bytes, seq: int, now: float, cutoff: float) -> int | None:
        self._write()
        if self._db.execute(self._q_id_claim, (seq, now, msg_id, cutoff)).rowcount:
            return None
        seq_seen: int = self._one(self._q_id, (msg_id,))[0]
        return seq_seen

    def _forget_ids(self, cutoff: float) -> None:
        # Walks from the oldest id and stops at the first one to keep: cost
        # in proportion to what is deleted.
        keep = self._one(self._q_id_keep, (cutoff,))
        first = self._one(self._q_id_first, ())
        if first is None or (keep is not None and keep[0] <= first[0]):
            return
        self._write()
        if keep is None:
            self._db.execute(self._q_id_del_all)
        else:
            self._db.execute(self._q_id_del_below, (keep[0],))

    def _consumer_blobs(self) -> list[builtins.bytes]:
        rows = self._db.execute(
            "SELECT state FROM consumers WHERE stream = ? ORDER BY name", (self.sid,)
        ).fetchall()
        return [row[0] for row in rows]

    def _put_consumer(self, name: str, blob: builtins.bytes) -> None:
        self._write()
        self._db.execute(
            "INSERT OR REPLACE INTO consumers (stream, name, state) VALUES (?,?,?)",
            (self.sid, name, blob),
        )

    def _drop_consumer(self, name: str) -> bool:
        self._write()
        cur = self._db.execute(
            "DELETE FROM consumers WHERE stream = ? AND name = ?", (self.sid, name)
        )
        return cur.rowcount > 0


class SqliteStore(StoreBase[SqliteStream]):
    """A store of file streams (``storage="file"``) in ``data_dir/streams.sqlite3``.

    ``sync`` is SQLite's ``synchronous`` setting: "normal" makes a commit safe
    from the process dying, "full" also from the machine losing power (an
    fsync per commit). Opening creates the directory if missing and raises
    ``StoreCorrupt`` (naming the path) if it cannot be used, or ``StoreError``
    if another process holds the database.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], *, sync: Literal["normal", "full"] = "normal"
    ) -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', got {sync!r}")
        raw = os.fspath(data_dir)
        if not isinstance(raw, str):
            raise TypeError(f"data_dir must be a str or path, not {type(data_dir).__name__}")
        if not raw:
            raise ValueError("data_dir must not be empty (None: memory streams only)")
        self.data_dir = Path(raw)
        self.path = self.data_dir / DB_FILENAME
        self.sync = sync
        self._streams: dict[str, SqliteStream] = {}
        self._dirty: set[SqliteStream] = set()
        self._match = SubjectFilter(None)  # the filter zb_match() applies in this statement
        self._dead: str | None = None  # why the store is unusable, once it is
        self._closed = False
        self._conn = self._connect()
        try:
            self._load()
        except BaseException:
            self._conn.close()
            raise
        log.info("opened %s: %d file stream(s), sync=%s", self.path, len(self._streams), sync)

    # -- opening ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        d, path = self.data_dir, self.path
        try:
            if d.exists() and not d.is_dir():
                raise StoreCorrupt(f"data_dir {d} is not a directory")
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.R_OK | os.W_OK | os.X_OK):
                raise StoreCorrupt(f"data_dir {d} is not readable and writable by this process")
            if path.exists():
                if not path.is_file():
                    raise StoreCorrupt(f"{path} is not a regular file")
                if not os.access(path, os.R_OK | os.W_OK):
                    raise StoreCorrupt(f"{path} is not readable and writable by this process")
        except OSError as exc:
            raise StoreCorrupt(f"cannot use data_dir {d}: {exc.strerror or exc}") from exc
        try:
            # timeout=0: a database held by another process is an error at once, not a wait.
            conn = sqlite3.connect(
                path,
                timeout=0,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=512,
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc
        try:
            self._setup(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc, "open") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        # Exclusive before WAL: the WAL index then lives in heap memory, not in
        # a shared-memory file, and no other process can open the database.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
        if str(mode).lower() != "wal":
            raise StoreCorrupt(f"{self.path}: SQLite refused WAL mode (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
        # Dedup ids are random keys: each commit dirties index pages all over.
        # A larger page cache than the default 2 MiB, and checkpoints every
        # 16 MiB of WAL rather than 4 MiB, measured about 1.4x the appends/s.
        conn.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        # Bounds the WAL file left after a checkpoint (bytes).
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock, held until close
        app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
        version = conn.execute("PRAGMA user_version").fetchall()[0][0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchall()[0][0]
        if app_id == 0 and version == 0 and tables == 0:
            for sql in _SCHEMA:
                conn.execute(sql)
            log.info("created store %s", self.path)
        elif app_id != APPLICATION_ID:
            raise StoreCorrupt(f"{self.path} is an SQLite database but not a zmqbus store")
        elif version != SCHEMA_VERSION:
            raise StoreCorrupt(
                f"{self.path} has store layout version {version}; this zmqbus reads "
                f"version {SCHEMA_VERSION}"
            )
        conn.execute("COMMIT")
        conn.create_function("zb_match", 1, self._zb_match)

    def _zb_match(self, topic: bytes) -> bool:
        return self._match(topic)

    def _load(self) -> None:
        try:
            rows = self._conn.execute(
                "SELECT id, name, config, last_seq, messages, bytes FROM streams ORDER BY id"
            ).fetchall()
            for sid, name, blob, last, messages, nbytes in rows:
                try:
                    config = StreamConfig.from_dict(msgpack.unpackb(blob, raw=False))
                except Exception as exc:
                    raise StoreCorrupt(
                        f"{self.path}: stream {name!r} has an unreadable config: {exc}"
                    ) from None
                if config.name != name or config.storage != "file":
                    raise StoreCorrupt(f"{self.path}: stream {name!r} has a mismatched config")
                first, last = self._bounds(sid, last)
                self._streams[name] = SqliteStream(
                    self,
                    sid,
                    config,
                    first_seq=first,
                    last_seq=last,
                    messages=messages,
                    nbytes=nbytes,
                )
        except sqlite3.Error as exc:
            raise self._error(exc, "load streams") from exc

    def _bounds(self, sid: int, last: int) -> tuple[int, int]:
        # Two queries: SQLite answers a lone min() or max() from the b-tree's
        # edge, but scans for both in one.
        lo = self._conn.execute(f"SELECT min(seq) FROM m{sid}").fetchall()[0][0]
        hi = self._conn.execute(f"SELECT max(seq) FROM m{sid}").fetchall()[0][0]
        if hi is not None and hi > last:
            raise StoreCorrupt(f"{self.path}: stream table m{sid} holds seq {hi} past last_seq")
        return (lo if lo is not None else last + 1), last

    # -- failures -----------------------------------------------------------------

    def _error(self, exc: sqlite3.Error, what: str) -> StoreError:
        """The store error for an SQLite error in ``what``."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreError(
                f"{self.path} is locked: is another process using data_dir {self.data_dir}? "
                f"({what}: {exc})"
            )
        if primary == _SQLITE_FULL:
            return StoreError(f"{self.path}: disk full ({what}: {exc})")
        return StoreCorrupt(f"{self.path}: {what} failed: {exc}")

    def _failed(self, exc: Exception, what: str) -> StoreError:
        """Roll back to the last commit and reload the running numbers; the
        error to raise for ``exc``."""
        err = (
            self._error(exc, what)
            if isinstance(exc, sqlite3.Error)
            else StoreError(f"{self.path}: {what}: {exc!r}")
        )
        try:
            if self._conn.in_transaction:
                log.error("%s; rolling back to the last commit", err)
                self._conn.execute("ROLLBACK")
            else:
                log.error("%s", err)
            self._reload()
        except (sqlite3.Error, StoreError) as again:
            self._break(f"{self.path} is unusable: {err}; then: {again}")
        return err

    def _reload(self) -> None:
        self._dirty.clear()
        for stream in list(self._streams.values()):
            row = stream._one(
                "SELECT last_seq, messages, bytes FROM streams WHERE id = ?", (stream.sid,)
            )
            if row is None:
                raise StoreCorrupt(f"{self.path}: stream {stream.config.name!r} vanished")
            last, stream._messages, stream._bytes = row
            stream._first, stream._last = self._bounds(stream.sid, last)
            stream._head_time = None
            stream._prune_at = float("-inf")

    def _break(self, reason: str) -> None:
        log.error("%s", reason)
        self._dead = reason
        for stream in self._streams.values():
            stream._dead = reason

    def _live(self) -> None:
        super()._live()
        if self._dead is not None:
            raise StoreCorrupt(self._dead)

    # -- the Store interface ----------------------------------------------------------

    def create_stream(self, config: StreamConfig) -> SqliteStream:
        """See ``Store.create_stream``; only ``storage="file"`` configs. Commits."""
        existing = self._existing(config, "file", "an SQLite store")
        if existing is not None:
            return existing
        blob = msgpack.packb(config.to_dict(), use_bin_type=True)
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "INSERT INTO streams (name, config) VALUES (?, ?)", (config.name, blob)
            )
            sid = cur.lastrowid
            assert sid is not None
            for sql in _stream_ddl(sid):
                self._conn.execute(sql)
            self._commit()
        except sqlite3.Error as exc:
            raise self._failed(exc, f"create stream {config.name!r}") from exc
        stream = self._streams[config.name] = SqliteStream(
            self, sid, config, first_seq=1, last_seq=0, messages=0, nbytes=0
        )
        log.info("created file stream %r in %s", config.name, self.path)
        return stream

    def delete_stream(self, name: str) -> bool:
        """See ``Store.delete_stream``. Commits."""
        self._live()
        stream = self._streams.get(name)
        if stream is None:
            return False
        sid = stream.sid
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(f"DROP TABLE m{sid}")
            self._conn.execute(f"DROP TABLE d{sid}")
            self._conn.execute("DELETE FROM consumers WHERE stream = ?", (sid,))
            self._conn.execute("DELETE FROM streams WHERE id = ?", (sid,))
            self._dirty.discard(stream)
            self._commit()
        except sqlite3.Error as exc:
            raise self._failed(exc, f"delete stream {name!r}") from exc
        del self._streams[name]
        stream._dead = f"stream {name!r} was deleted"
        log.info("deleted file stream %r from %s", name, self.path)
        return True

    def _commit(self) -> None:
        conn = self._conn
        if not conn.in_transaction:
            return
        for s in self._dirty:
            conn.execute(
                "UPDATE streams SET last_seq = ?, messages = ?, bytes = ? WHERE id = ?",
                (s._last, s._messages, s._bytes, s.sid),
            )
        conn.execute("COMMIT")
        self._dirty.clear()

    def commit(self) -> None:
        """See ``Store.commit``. On failure everything since the last commit is
        rolled back and a ``StoreError`` raised."""
        self._live()
        try:
            self._commit()
        except sqlite3.Error as exc:
            raise self._failed(exc, "commit") from exc

    def close(self) -> None:
        """Commit what is staged and close the database; idempotent."""
        if self._closed:
            return
        err: StoreError | None = None
        try:
            if self._dead is None:
                self._commit()
        except sqlite3.Error as exc:
            err = self._error(exc, "commit at close")
            log.error("%s", err)
        finally:
            self._closed = True
            for stream in self._streams.values():
                stream._dead = "store is closed"
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                err = err or self._error(exc, "close")
        log.info("closed %s", self.path)
        if err is not None:
            raise err
