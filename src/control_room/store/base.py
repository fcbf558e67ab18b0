"""The store interface, shared by the SQLite and PostgreSQL backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from control_room.broker.base import SESSIONS, Batch, Channel, Entry
from control_room.models import Position, Snapshot


class StoreError(Exception):
    """The store could not do what was asked (disk full, database down, ...)."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of this service."""


@dataclass(frozen=True)
class Loaded:
    """What a store hands back at start-up."""

    position: Position
    sessions: Snapshot


class Store(Protocol):
    """Persists each poll's deltas and snapshot in one transaction, before clients see them."""

    async def open(self) -> Loaded | None:
        """Create or migrate the schema; the saved state, or None for a new store."""

    async def save(self, batch: Batch, sessions: Snapshot, position: Position) -> None:
        """Append the batch (both channels) and update the snapshot atomically.

        A batch with neither deltas nor activities is a baseline: the snapshot is replaced
        whole. Raises StoreError on failure.
        """

    async def history(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries of `channel` after `since`, oldest first; HistoryGone when pruned."""

    async def prune(self, older_than: float, keep_at_most: int) -> int:
        """Drop events older than the timestamp (unix s) or beyond the row cap on each
        channel; how many."""

    async def webhook_cursor(self, endpoint: str) -> int | None:
        """The seq of the last delta delivered (or given up) to `endpoint`; None if new."""

    async def set_webhook_cursor(self, endpoint: str, seq: int) -> None:
        """Record that every delta up to `seq` is done with for `endpoint`."""

    async def close(self) -> None:
        """Release connections."""
