"""The in-memory broker: a counter, a bounded ring of history, and a set of local sinks."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from itertools import islice
from typing import Final

from control_room.broker.base import Batch, Entry, HistoryGone, Sink
from control_room.models import Change, Position, SessionDelta

MAX_REPLAY_FROM_OLDER: Final = 100_000
"""A full replay (no limit) reaching further back than this is answered with a reset: the
client reloading the snapshot (10,000 sessions, a few MB) is cheaper than reading and
sending 100,000 deltas (~100 MB), and the store's row cap is ten times that."""

OlderHistory = Callable[[int, int | None, str | None], Awaitable[list[Entry]]]
"""Where history older than the ring is read (a store's `history`): since, limit, session."""


def new_epoch() -> str:
    """A fresh, opaque name for a new unbroken history."""
    return secrets.token_hex(6)


class MemoryBroker:
    """Single-process broker; history survives as long as the process (a ring of `size`)."""

    def __init__(
        self,
        history_size: int,
        start: Position | None = None,
        *,
        older: OlderHistory | None = None,
    ) -> None:
        self._position = start or Position(new_epoch(), 0)
        self._ring: deque[Entry] = deque(maxlen=history_size)
        self._sinks: list[Sink] = []
        self._older = older

    @property
    def position(self) -> Position:
        """The epoch and the seq of the last published delta."""
        return self._position

    @property
    def oldest_seq(self) -> int:
        """The seq before which history is lost (replay can start from `oldest_seq - 1`)."""
        return self._ring[0].seq if self._ring else self._position.seq + 1

    def reset(self, start: Position) -> None:
        """Adopt a position loaded from a store; memory history before it is dropped."""
        self._position = start
        self._ring.clear()

    def stamp(self, changes: Sequence[Change], timestamp: str) -> list[SessionDelta]:
        """Number changes from the current position, without publishing them."""
        seq = self._position.seq
        return [
            SessionDelta(
                type=c.type,
                sessionId=c.sessionId,
                before=c.before,
                after=c.after,
                timestamp=timestamp,
                seq=seq + i,
            )
            for i, c in enumerate(changes, start=1)
        ]

    def publish(self, batch: Batch) -> None:
        """Append to history and deliver to every sink, in one synchronous step."""
        if not batch.entries:
            return
        if batch.first_seq != self._position.seq + 1:
            raise ValueError(f"seq {batch.first_seq} does not follow {self._position.seq}")
        self._ring.extend(batch.entries)
        self._position = Position(self._position.epoch, batch.last_seq)
        for sink in self._sinks:
            sink.deliver(batch)

    def add_sink(self, sink: Sink) -> None:
        """Deliver every later batch to `sink`."""
        self._sinks.append(sink)

    def history_now(
        self, since: int, limit: int | None = None, session_id: str | None = None
    ) -> list[Entry]:
        """Entries after `since`, synchronously (a consistent read with no await)."""
        if since > self._position.seq:
            raise ValueError(f"since={since} is ahead of the stream (seq {self._position.seq})")
        if since < self.oldest_seq - 1:
            raise HistoryGone("history_expired", self.oldest_seq)
        # The ring holds consecutive seqs, so the start is found by arithmetic, not search.
        start = since - self.oldest_seq + 1 if self._ring else 0
        entries: Sequence[Entry] = list(islice(self._ring, max(start, 0), None))
        if session_id is not None:
            entries = [e for e in entries if e.session_id == session_id]
        return list(entries[:limit]) if limit is not None else list(entries)

    async def history(
        self, since: int, limit: int | None = None, session_id: str | None = None
    ) -> list[Entry]:
        """Entries after `since`, oldest first; HistoryGone when `since` is no longer kept.

        The ring answers when it reaches back to `since`; older requests go to `older` (the
        store), which raises HistoryGone only when it has pruned them too.
        """
        upto = self._position.seq
        if self._older is None or since >= self.oldest_seq - 1 or since > upto:
            return self.history_now(since, limit, session_id)
        if limit is None and upto - since > MAX_REPLAY_FROM_OLDER:
            raise HistoryGone("too_far_behind", upto - MAX_REPLAY_FROM_OLDER + 1)
        entries = await self._older(since, limit, session_id)
        # The store may already hold a poll that is persisted but not yet published: leave
        # it out, so no reader is ever ahead of the stream (it arrives live instead).
        entries = [e for e in entries if e.seq <= upto]
        if session_id is None and (limit is None or limit > 0) and not _contiguous(entries, since):
            # A hole in the store (rows lost or never written) must not become a silent gap
            # in a client's stream: say history is gone, and the client reloads.
            raise HistoryGone("history_expired", entries[0].seq if entries else upto + 1)
        return entries


def _contiguous(entries: Sequence[Entry], since: int) -> bool:
    """True when entries are since+1, since+2, ... with no hole."""
    return bool(entries) and entries[0].seq == since + 1 and entries[-1].seq == since + len(entries)
