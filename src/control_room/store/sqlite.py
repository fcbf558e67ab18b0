"""The embedded store: one SQLite file in DATA_DIR, in WAL mode, written off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

from control_room import logging as logs
from control_room.broker.base import SESSIONS, Batch, Channel, Entry, HistoryGone
from control_room.models import Position, Snapshot
from control_room.store import common as c
from control_room.store.base import Loaded, StoreError

DB_FILE: Final = "control-room.sqlite3"
BUSY_TIMEOUT_MS: Final = 5_000
"""How long a write waits for a lock held by another connection (a backup, an operator's
`sqlite3` shell) before the save fails; the poller then holds the deltas back and retries
next poll, so a short wait is enough and a poll is never stuck behind someone else."""
SYNCHRONOUS: Final = "FULL"
"""fsync the WAL at every commit. NORMAL survives a crash of the process but may lose the
last commits on power loss, and those deltas may already have reached clients: the issue
promises a delta a client has seen is never lost, and FULL still saves 1,000 deltas well
inside the 50 ms budget (see bench/store_bench.py)."""

log = logs.get("store")

T = TypeVar("T")

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: deltas (append-only, seq is the rowid), the snapshot, webhook cursors.
    (
        """CREATE TABLE deltas (
            seq INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            ts REAL NOT NULL,
            payload BLOB NOT NULL
        )""",
        "CREATE INDEX deltas_by_session ON deltas (session_id, seq)",
        """CREATE TABLE snapshot (
            session_id TEXT PRIMARY KEY,
            body BLOB NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE webhook_cursors (
            endpoint TEXT PRIMARY KEY,
            seq INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 2: the activities channel's history, with each activity's routing tag; both logs
    # get the same columns so one statement serves either.
    (
        "ALTER TABLE deltas ADD COLUMN repository TEXT",
        "ALTER TABLE deltas ADD COLUMN state TEXT",
        """CREATE TABLE activity_log (
            seq INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            ts REAL NOT NULL,
            payload BLOB NOT NULL,
            repository TEXT,
            state TEXT
        )""",
        "CREATE INDEX activity_log_by_session ON activity_log (session_id, seq)",
    ),
)
assert len(MIGRATIONS) == c.SCHEMA_VERSION


class SqliteStore:
    """A Store in one SQLite file; every call runs on one thread of its own, in order."""

    def __init__(self, data_dir: Path, *, busy_timeout_ms: int | None = None) -> None:
        self.path = data_dir / DB_FILE
        self._busy_timeout_ms = busy_timeout_ms if busy_timeout_ms is not None else BUSY_TIMEOUT_MS
        # One thread owns the connection: sqlite3 objects stay on the thread that made them,
        # and calls are serialised, so a save never interleaves with a prune chunk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("sqlite: the store is not open")
        return self._db

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        db = self._conn
        db.execute(f"BEGIN {mode}")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- open --

    async def open(self) -> Loaded | None:
        """Create or migrate the schema; the saved state, or None for a new store."""
        return await self._run(self._open)

    def _open(self) -> Loaded | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"sqlite: cannot create {self.path.parent}: {exc}") from exc
        db = self._db = sqlite3.connect(self.path, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"sqlite: could not enable WAL mode on {self.path} (got {mode})")
        db.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        self._migrate()
        return self._load()

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                " WITHOUT ROWID"
            )
            found = int(self._meta(c.META_SCHEMA_VERSION) or 0)
        c.check_version(found)
        for version in range(found + 1, c.SCHEMA_VERSION + 1):
            with self._transaction() as db:
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)
                self._set_meta(c.META_SCHEMA_VERSION, str(version))
            log.info("Store schema migrated", extra={"path": str(self.path), "version": version})

    def _load(self) -> Loaded | None:
        with self._transaction("DEFERRED") as db:
            epoch = self._meta(c.META_EPOCH)
            if epoch is None:
                return None
            seq = int(self._meta(c.META_SEQ) or 0)
            activities_seq = int(self._meta(c.META_ACTIVITIES_SEQ) or 0)
            rows = db.execute("SELECT session_id, body FROM snapshot").fetchall()
        sessions = {sid: c.decode_session(body) for sid, body in rows}
        return Loaded(Position(epoch, seq, activities_seq), sessions)

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- save --

    async def save(self, batch: Batch, sessions: Snapshot, position: Position) -> None:
        """Append the batch and replace the snapshot atomically; raise StoreError on failure."""
        await self._run(self._save, batch, sessions, position)

    def _save(self, batch: Batch, sessions: Snapshot, position: Position) -> None:
        now = time.time()
        with self._transaction() as db:
            overwritten: list[str] = []
            for log_ in c.LOGS:
                entries = c.channel_entries(batch, log_.channel)
                first = c.first_seq_to_write(entries, c.channel_seq(position, log_.channel))
                replaced = db.execute(
                    f"DELETE FROM {log_.table} WHERE seq >= ? RETURNING session_id", (first,)
                ).fetchall()
                if log_.channel == SESSIONS:
                    overwritten = [sid for (sid,) in replaced]
                db.executemany(
                    f"INSERT INTO {log_.table}"
                    " (seq, session_id, ts, payload, repository, state) VALUES (?, ?, ?, ?, ?, ?)",
                    [c.log_row(e, now) for e in entries],
                )
            if batch.entries:
                upserts, deletes = c.changed_rows(batch, sessions, overwritten)
                db.executemany("DELETE FROM snapshot WHERE session_id = ?", [(d,) for d in deletes])
            elif not batch.activities:  # a baseline: the whole snapshot
                upserts = c.snapshot_rows(sessions)
                db.execute("DELETE FROM snapshot")
            else:
                upserts = []
            db.executemany(
                "INSERT OR REPLACE INTO snapshot (session_id, body) VALUES (?, ?)", upserts
            )
            self._set_meta(c.META_EPOCH, position.epoch)
            self._set_meta(c.META_SEQ, str(position.seq))
            self._set_meta(c.META_ACTIVITIES_SEQ, str(position.activities_seq))

    # -- history --

    async def history(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries of `channel` after `since`, oldest first; HistoryGone when pruned."""
        return await self._run(self._history, since, limit, session_id, channel)

    def _history(
        self, since: int, limit: int | None, session_id: str | None, channel: Channel
    ) -> list[Entry]:
        log_ = c.LOG_OF[channel]
        columns = "seq, session_id, payload, repository, state"
        with self._transaction("DEFERRED") as db:
            pruned = int(self._meta(log_.pruned_key) or 0)
            if since < pruned:
                raise HistoryGone(c.HISTORY_EXPIRED, pruned + 1)
            query = f"SELECT {columns} FROM {log_.table} WHERE seq > ?"
            args: list[object] = [since]
            if session_id is not None:
                query += " AND session_id = ?"
                args.append(session_id)
            query += " ORDER BY seq LIMIT ?"
            args.append(-1 if limit is None else limit)  # SQLite: a negative LIMIT is none
            rows = db.execute(query, args).fetchall()
        return [c.history_entry(channel, *row) for row in rows]

    # -- prune --

    async def prune(self, older_than: float, keep_at_most: int) -> int:
        """Drop events older than the timestamp (unix s) or beyond the row cap, on every
        channel; how many."""
        removed = 0
        for log_ in c.LOGS:
            pruned, cut = await self._run(self._prune_bounds, log_, older_than, keep_at_most)
            while pruned < cut:  # chunk by chunk, so a save can slip in between
                step = min(cut, pruned + c.PRUNE_CHUNK)
                removed += await self._run(self._prune_through, log_, step)
                pruned = step
        return removed

    def _prune_bounds(
        self, log_: c.ChannelLog, older_than: float, keep_at_most: int
    ) -> tuple[int, int]:
        """(pruned so far, the seq to prune through): always a prefix, so history stays whole."""
        with self._transaction("DEFERRED") as db:
            pruned = int(self._meta(log_.pruned_key) or 0)
            last = int(self._meta(log_.seq_key) or 0)
            # Scans in seq order from the oldest row and stops at the first young one: it
            # reads only rows about to be deleted, with no index on ts to slow every save.
            row = db.execute(
                f"SELECT seq FROM {log_.table} WHERE seq > ? AND ts >= ? ORDER BY seq LIMIT 1",
                (pruned, older_than),
            ).fetchone()
        by_age = row[0] - 1 if row is not None else last
        return pruned, max(by_age, last - keep_at_most)

    def _prune_through(self, log_: c.ChannelLog, seq: int) -> int:
        with self._transaction() as db:
            removed = db.execute(f"DELETE FROM {log_.table} WHERE seq <= ?", (seq,)).rowcount
            self._set_meta(log_.pruned_key, str(seq))
        return removed

    # -- webhook cursors --

    async def webhook_cursor(self, endpoint: str) -> int | None:
        """The seq of the last delta delivered (or given up) to `endpoint`; None if new."""
        return await self._run(self._webhook_cursor, endpoint)

    def _webhook_cursor(self, endpoint: str) -> int | None:
        row = self._conn.execute(
            "SELECT seq FROM webhook_cursors WHERE endpoint = ?", (endpoint,)
        ).fetchone()
        return None if row is None else int(row[0])

    async def set_webhook_cursor(self, endpoint: str, seq: int) -> None:
        """Record that every delta up to `seq` is done with for `endpoint`."""
        await self._run(self._set_webhook_cursor, endpoint, seq)

    def _set_webhook_cursor(self, endpoint: str, seq: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO webhook_cursors (endpoint, seq) VALUES (?, ?)",
                (endpoint, seq),
            )

    # -- close --

    async def close(self) -> None:
        """Release connections."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
