"""Durable state: deltas (append-only), the current snapshot, the epoch and the last seq."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from control_room import logging as logs
from control_room.config import Settings
from control_room.store.base import Store, StoreError

PRUNE_INTERVAL_S: Final = 300.0
"""Retention is counted in days: pruning five minutes late keeps five minutes more, which
costs nothing, and each prune then deletes a few minutes of rows in one short chunk."""
MAX_STORED_DELTAS: Final = 1_000_000
"""The row cap beside DELTA_RETENTION's age: about 1 GB at ~1 KB a delta. A week of 1,000
sessions each changing every ten minutes is ~1M deltas, so only an account far busier than
that (or a runaway upstream) is cut by count before age; the disk stays bounded either way."""

log = logs.get("store")


def create_store(settings: Settings) -> Store:
    """The store the settings ask for: PostgreSQL with DATABASE_URL, else SQLite in DATA_DIR.

    Nothing is opened here; `await store.open()` connects, migrates and loads.
    """
    if settings.database_url:
        from control_room.store.postgres import PostgresStore  # asyncpg loads only if used

        return PostgresStore(settings.database_url)
    from control_room.store.sqlite import SqliteStore

    return SqliteStore(settings.data_dir)


async def prune_forever(
    store: Store,
    retention: float,
    *,
    interval: float = PRUNE_INTERVAL_S,
    keep_at_most: int = MAX_STORED_DELTAS,
) -> None:
    """Prune by age and row cap now, then every `interval`; failures are logged, not raised."""
    while True:
        try:
            removed = await store.prune(time.time() - retention, keep_at_most)
        except StoreError as exc:
            log.warning("Store prune failed; retrying later", extra={"error": str(exc)})
        else:
            if removed:
                log.info("Store pruned", extra={"removed": removed})
        await asyncio.sleep(interval)
