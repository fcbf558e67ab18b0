"""The in-memory broker: counters, a bounded ring of history per channel, local sinks."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from itertools import islice
from typing import Final

from control_room.broker.base import (
    ACTIVITIES,
    SESSIONS,
    Batch,
    Channel,
    Entry,
    HistoryGone,
    Sink,
    stamp_activity_list,
    stamp_changes,
)
from control_room.messages import ActivityMessage
from control_room.models import Activity, Change, Position, SessionDelta

MAX_REPLAY_FROM_OLDER: Final = 100_000
"""A full replay (no limit) reaching further back than this is answered with a reset: the
client reloading the snapshot (10,000 sessions, a few MB) is cheaper than reading and
sending 100,000 deltas (~100 MB), and the store's row cap is ten times that."""

OlderHistory = Callable[[int, int | None, str | None, Channel], Awaitable[list[Entry]]]
"""Where history older than the ring is read (a store's `history`)."""


def new_epoch() -> str:
    """A fresh, opaque name for a new unbroken history."""
    return secrets.token_hex(6)


class _Ring:
    """One channel's recent history: consecutive seqs, oldest first, bounded."""

    __slots__ = ("entries", "seq")

    def __init__(self, size: int, seq: int) -> None:
        self.entries: deque[Entry] = deque(maxlen=size)
        self.seq = seq

    @property
    def oldest_seq(self) -> int:
        return self.entries[0].seq if self.entries else self.seq + 1

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        self.entries.extend(entries)
        self.seq = entries[-1].seq

    def after(self, since: int, limit: int | None, session_id: str | None) -> list[Entry]:
        # The ring holds consecutive seqs, so the start is found by arithmetic, not search.
        start = since - self.oldest_seq + 1 if self.entries else 0
        entries: Sequence[Entry] = list(islice(self.entries, max(start, 0), None))
        if session_id is not None:
            entries = [e for e in entries if e.session_id == session_id]
        return list(entries[:limit]) if limit is not None else list(entries)


class MemoryBroker:
    """Single-process broker; history survives as long as the process (rings of `size`)."""

    def __init__(
        self,
        history_size: int,
        start: Position | None = None,
        *,
        older: OlderHistory | None = None,
    ) -> None:
        start = start or Position(new_epoch(), 0)
        self._size = history_size
        self._epoch = start.epoch
        self._rings = {
            SESSIONS: _Ring(history_size, start.seq),
            ACTIVITIES: _Ring(history_size, start.activities_seq),
        }
        self._sinks: list[Sink] = []
        self._older = older

    @property
    def position(self) -> Position:
        """The epoch and the last seq of each channel."""
        return Position(self._epoch, self._rings[SESSIONS].seq, self._rings[ACTIVITIES].seq)

    @property
    def oldest_seq(self) -> int:
        """The sessions seq before which memory history is lost."""
        return self._rings[SESSIONS].oldest_seq

    def reset(self, start: Position) -> None:
        """Adopt a position loaded from a store; memory history before it is dropped."""
        self._epoch = start.epoch
        self._rings = {
            SESSIONS: _Ring(self._size, start.seq),
            ACTIVITIES: _Ring(self._size, start.activities_seq),
        }

    def stamp(self, changes: Sequence[Change], timestamp: str) -> list[SessionDelta]:
        """Number changes from the current position, without publishing them."""
        return stamp_changes(changes, timestamp, self._rings[SESSIONS].seq)

    def stamp_activities(
        self, activities: Sequence[Activity], timestamp: str
    ) -> list[ActivityMessage]:
        """Number activities on their own channel, without publishing them."""
        return stamp_activity_list(activities, timestamp, self._rings[ACTIVITIES].seq)

    async def publish(self, batch: Batch) -> None:
        """Append to history and deliver to every sink, in one step (it never suspends)."""
        if not batch:
            return
        sessions, activities = self._rings[SESSIONS], self._rings[ACTIVITIES]
        # Check both before changing either: a bad batch leaves the broker as it was.
        for ring, entries, name in (
            (sessions, batch.entries, SESSIONS),
            (activities, batch.activities, ACTIVITIES),
        ):
            if entries and entries[0].seq != ring.seq + 1:
                raise ValueError(f"{name} seq {entries[0].seq} does not follow {ring.seq}")
        sessions.append(batch.entries)
        activities.append(batch.activities)
        for sink in self._sinks:
            sink.deliver(batch)

    def add_sink(self, sink: Sink) -> None:
        """Deliver every later batch to `sink` (in the order sinks were added)."""
        self._sinks.append(sink)

    async def reach(self, seq: int, activities_seq: int | None = None) -> None:
        """Nothing to wait for: one process delivers as it publishes."""

    def history_now(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries after `since`, synchronously (a consistent read with no await)."""
        ring = self._rings[channel]
        if since > ring.seq:
            raise ValueError(f"since={since} is ahead of the {channel} stream (seq {ring.seq})")
        if since < ring.oldest_seq - 1:
            raise HistoryGone("history_expired", ring.oldest_seq)
        return ring.after(since, limit, session_id)

    async def history(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries after `since`, oldest first; HistoryGone when `since` is no longer kept.

        The ring answers when it reaches back to `since`; older requests go to `older` (the
        store), which raises HistoryGone only when it has pruned them too.
        """
        ring = self._rings[channel]
        upto = ring.seq
        if self._older is None or since >= ring.oldest_seq - 1 or since > upto:
            return self.history_now(since, limit, session_id, channel)
        if limit is None and upto - since > MAX_REPLAY_FROM_OLDER:
            raise HistoryGone("too_far_behind", upto - MAX_REPLAY_FROM_OLDER + 1)
        entries = await self._older(since, limit, session_id, channel)
        # The store may already hold a poll that is persisted but not yet published: leave
        # it out, so no reader is ever ahead of the stream (it arrives live instead).
        entries = [e for e in entries if e.seq <= upto]
        if session_id is None and (limit is None or limit > 0) and not contiguous(entries, since):
            # A hole in the store (rows lost or never written) must not become a silent gap
            # in a client's stream: say history is gone, and the client reloads.
            raise HistoryGone("history_expired", entries[0].seq if entries else upto + 1)
        return entries


def contiguous(entries: Sequence[Entry], since: int) -> bool:
    """True when entries are since+1, since+2, ... with no hole."""
    return bool(entries) and entries[0].seq == since + 1 and entries[-1].seq == since + len(entries)
