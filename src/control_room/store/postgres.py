"""The PostgreSQL store (DATABASE_URL): the same tables as SQLite, through an asyncpg pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import asyncpg

from control_room import logging as logs
from control_room.broker.base import SESSIONS, Batch, Channel, Entry, HistoryGone
from control_room.models import Position, Snapshot
from control_room.store import common as c
from control_room.store.base import Loaded, StoreError

POOL_SIZE: Final = 4
"""One save, one prune chunk and a couple of history reads at once; more would only queue
inside the database, since saves are serialised by the poller anyway."""
STORE_TIMEOUT_S: Final = 5.0
"""A statement (or getting a connection) slower than this means the database is in trouble:
the save fails, the poller holds the deltas back and retries next poll instead of hanging."""
CLOSE_TIMEOUT_S: Final = 2.0  # waiting longer for a hung query to finish only delays shutdown

log = logs.get("store")

DB_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

T = TypeVar("T")

STALE_CONNECTION: Final = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    ConnectionError,
)
"""Failures of a pooled connection that died while idle: the next one may well work."""

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: deltas (append-only), the snapshot, webhook cursors. Payloads are the exact bytes
    # clients received, so replay sends them unchanged (jsonb would reorder keys).
    (
        """CREATE TABLE deltas (
            seq bigint PRIMARY KEY,
            session_id text NOT NULL,
            ts double precision NOT NULL,
            payload bytea NOT NULL
        )""",
        "CREATE INDEX deltas_by_session ON deltas (session_id, seq)",
        """CREATE TABLE snapshot (
            session_id text PRIMARY KEY,
            body bytea NOT NULL
        )""",
        """CREATE TABLE webhook_cursors (
            endpoint text PRIMARY KEY,
            seq bigint NOT NULL
        )""",
    ),
    # 2: the activities channel's history, with each activity's routing tag; both logs
    # get the same columns so one statement serves either.
    (
        "ALTER TABLE deltas ADD COLUMN repository text, ADD COLUMN state text",
        """CREATE TABLE activity_log (
            seq bigint PRIMARY KEY,
            session_id text NOT NULL,
            ts double precision NOT NULL,
            payload bytea NOT NULL,
            repository text,
            state text
        )""",
        "CREATE INDEX activity_log_by_session ON activity_log (session_id, seq)",
    ),
)
assert len(MIGRATIONS) == c.SCHEMA_VERSION

# Two instances starting at once must not both migrate; the lock is per schema.
_MIGRATION_LOCK: Final = (
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.control_room'))"
)
_SET_META: Final = (
    "INSERT INTO meta (key, value) VALUES ($1, $2)"
    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)


@contextmanager
def _translated() -> Iterator[None]:
    """Database and network failures become StoreError (HistoryGone passes through)."""
    try:
        yield
    except DB_ERRORS as exc:
        raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc


class PostgresStore:
    """A Store in PostgreSQL; the schema is the connection's (set `search_path` in the URL)."""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self._url = url
        self._timeout = timeout if timeout is not None else STORE_TIMEOUT_S
        self._pool: Any = None  # asyncpg.Pool; asyncpg ships no type hints

    @property
    def _connections(self) -> Any:
        if self._pool is None:
            raise StoreError("postgresql: the store is not open")
        return self._pool.acquire(timeout=self._timeout)

    # -- open --

    async def open(self) -> Loaded | None:
        """Create or migrate the schema; the saved state, or None for a new store."""
        with _translated():
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
            await self._migrate()
            return await self._load()

    async def _migrate(self) -> None:
        async with self._connections as con, con.transaction():
            await con.execute(_MIGRATION_LOCK)
            await con.execute(
                "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)"
            )
            found = int(await _meta(con, c.META_SCHEMA_VERSION) or 0)
            c.check_version(found)
            for version in range(found + 1, c.SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await con.execute(statement)
                await con.execute(_SET_META, c.META_SCHEMA_VERSION, str(version))
                log.info("Store schema migrated", extra={"version": version})

    async def _load(self) -> Loaded | None:
        async with self._connections as con, con.transaction(isolation="repeatable_read"):
            epoch = await _meta(con, c.META_EPOCH)
            if epoch is None:
                return None
            seq = int(await _meta(con, c.META_SEQ) or 0)
            activities_seq = int(await _meta(con, c.META_ACTIVITIES_SEQ) or 0)
            rows = await con.fetch("SELECT session_id, body FROM snapshot")
        sessions = {r["session_id"]: c.decode_session(r["body"]) for r in rows}
        return Loaded(Position(epoch, seq, activities_seq), sessions)

    # -- save --

    async def _twice(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`; if its pooled connection had died while idle, once more.

        After the database restarts (or kills our sessions) the pool still holds
        connections that fail on first use, before any statement runs, so nothing was
        done and the retry is safe: the pool replaces them all, and the next try gets a
        fresh one. Any other failure propagates at once.
        """
        try:
            return await operation()
        except StoreError as exc:
            if not isinstance(exc.__cause__, STALE_CONNECTION) or self._pool is None:
                raise
            await self._pool.expire_connections()
            return await operation()

    async def save(self, batch: Batch, sessions: Snapshot, position: Position) -> None:
        """Append the batch and replace the snapshot atomically; raise StoreError on failure."""
        await self._twice(lambda: self._save(batch, sessions, position))

    async def _save(self, batch: Batch, sessions: Snapshot, position: Position) -> None:
        entries = batch.entries
        now = time.time()
        with _translated():
            async with self._connections as con, con.transaction():
                overwritten: list[str] = []
                for log_ in c.LOGS:
                    logged = c.channel_entries(batch, log_.channel)
                    replaced = await con.fetch(
                        f"DELETE FROM {log_.table} WHERE seq >= $1 RETURNING session_id",
                        c.first_seq_to_write(logged, c.channel_seq(position, log_.channel)),
                    )
                    if log_.channel == SESSIONS:
                        overwritten = [r["session_id"] for r in replaced]
                    if logged:
                        # One statement per channel: arrays in, rows out, one round trip.
                        rows = [c.log_row(e, now) for e in logged]
                        await con.execute(
                            f"INSERT INTO {log_.table}"
                            " (seq, session_id, ts, payload, repository, state)"
                            " SELECT s, i, $3, p, r, st FROM unnest($1::bigint[], $2::text[],"
                            " $4::bytea[], $5::text[], $6::text[]) AS t(s, i, p, r, st)",
                            [r[0] for r in rows],
                            [r[1] for r in rows],
                            now,
                            [r[3] for r in rows],
                            [r[4] for r in rows],
                            [r[5] for r in rows],
                        )
                baseline = not entries and not batch.activities
                if entries:
                    upserts, deletes = c.changed_rows(batch, sessions, overwritten)
                elif baseline:  # the whole snapshot
                    upserts, deletes = c.snapshot_rows(sessions), []
                else:
                    upserts, deletes = [], []
                if baseline:
                    await con.execute("DELETE FROM snapshot")
                elif deletes:
                    await con.execute("DELETE FROM snapshot WHERE session_id = ANY($1)", deletes)
                if upserts:
                    await con.execute(
                        "INSERT INTO snapshot (session_id, body)"
                        " SELECT * FROM unnest($1::text[], $2::bytea[])"
                        " ON CONFLICT (session_id) DO UPDATE SET body = EXCLUDED.body",
                        [sid for sid, _ in upserts],
                        [body for _, body in upserts],
                    )
                await con.executemany(
                    _SET_META,
                    [
                        (c.META_EPOCH, position.epoch),
                        (c.META_SEQ, str(position.seq)),
                        (c.META_ACTIVITIES_SEQ, str(position.activities_seq)),
                    ],
                )

    # -- history --

    async def history(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries of `channel` after `since`, oldest first; HistoryGone when pruned.

        Tried twice when the pooled connection turns out dead (see `_twice`).
        """
        return await self._twice(lambda: self._history(since, limit, session_id, channel))

    async def _history(
        self, since: int, limit: int | None, session_id: str | None, channel: Channel
    ) -> list[Entry]:
        log_ = c.LOG_OF[channel]
        query = (
            f"SELECT seq, session_id, payload, repository, state FROM {log_.table} WHERE seq > $1"
        )
        args: list[object] = [since]
        if session_id is not None:
            query += " AND session_id = $2"
            args.append(session_id)
        query += " ORDER BY seq"
        if limit is not None:
            query += f" LIMIT ${len(args) + 1}"
            args.append(limit)
        with _translated():
            async with (
                self._connections as con,
                con.transaction(isolation="repeatable_read", readonly=True),
            ):
                pruned = int(await _meta(con, log_.pruned_key) or 0)
                if since < pruned:
                    raise HistoryGone(c.HISTORY_EXPIRED, pruned + 1)
                rows = await con.fetch(query, *args)
        return [
            c.history_entry(
                channel, r["seq"], r["session_id"], r["payload"], r["repository"], r["state"]
            )
            for r in rows
        ]

    # -- prune --

    async def prune(self, older_than: float, keep_at_most: int) -> int:
        """Drop events older than the timestamp (unix s) or beyond the row cap, on every
        channel; how many."""
        removed = 0
        for log_ in c.LOGS:
            removed += await self._prune(log_, older_than, keep_at_most)
        return removed

    async def _prune(self, log_: c.ChannelLog, older_than: float, keep_at_most: int) -> int:
        with _translated():
            async with self._connections as con, con.transaction(isolation="repeatable_read"):
                pruned = int(await _meta(con, log_.pruned_key) or 0)
                last = int(await _meta(con, log_.seq_key) or 0)
                # Walks the primary key from the oldest row to the first young one: reads
                # only rows about to go, with no index on ts to slow every save.
                young = await con.fetchval(
                    f"SELECT seq FROM {log_.table} WHERE seq > $1 AND ts >= $2"
                    " ORDER BY seq LIMIT 1",
                    pruned,
                    older_than,
                )
            by_age = young - 1 if young is not None else last
            cut = max(by_age, last - keep_at_most)
            removed = 0
            while pruned < cut:  # chunk by chunk, each its own short transaction
                step = min(cut, pruned + c.PRUNE_CHUNK)
                async with self._connections as con, con.transaction():
                    status = await con.execute(f"DELETE FROM {log_.table} WHERE seq <= $1", step)
                    await con.execute(_SET_META, log_.pruned_key, str(step))
                removed += int(status.split()[-1])
                pruned = step
        return removed

    # -- webhook cursors --

    async def webhook_cursor(self, endpoint: str) -> int | None:
        """The seq of the last delta delivered (or given up) to `endpoint`; None if new."""
        with _translated():
            async with self._connections as con:
                seq = await con.fetchval(
                    "SELECT seq FROM webhook_cursors WHERE endpoint = $1", endpoint
                )
        return None if seq is None else int(seq)

    async def set_webhook_cursor(self, endpoint: str, seq: int) -> None:
        """Record that every delta up to `seq` is done with for `endpoint`."""
        with _translated():
            async with self._connections as con:
                await con.execute(
                    "INSERT INTO webhook_cursors (endpoint, seq) VALUES ($1, $2)"
                    " ON CONFLICT (endpoint) DO UPDATE SET seq = EXCLUDED.seq",
                    endpoint,
                    seq,
                )

    # -- close --

    async def close(self) -> None:
        """Release connections."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except (TimeoutError, *DB_ERRORS):
            pool.terminate()


async def _meta(con: Any, key: str) -> str | None:
    value = await con.fetchval("SELECT value FROM meta WHERE key = $1", key)
    return None if value is None else str(value)
