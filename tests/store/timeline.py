"""Batches built the way the poller builds them: diff two snapshots, stamp, then publish."""

from __future__ import annotations

from control_room.broker.base import Batch
from control_room.broker.memory import MemoryBroker
from control_room.diff import diff
from control_room.messages import ActivityMessage
from control_room.models import Activity, JulesSession, Position, Snapshot
from control_room.store.base import Store
from tests.factories import session

__all__ = ["Timeline", "session", "sessions"]

TIMESTAMP = "2026-01-01T00:00:00.000Z"


def sessions(*items: JulesSession) -> Snapshot:
    """A snapshot of these sessions."""
    return {s.id: s for s in items}


class Timeline:
    """A stream of polls against one store: each step saves, then publishes, like the poller."""

    def __init__(self, store: Store, epoch: str = "epoch-1", start: int = 0) -> None:
        self.store = store
        self.broker = MemoryBroker(1_000_000, Position(epoch, start))
        self.sessions: Snapshot = {}
        self.batches: list[Batch] = []

    @property
    def position(self) -> Position:
        """Where the stream is."""
        return self.broker.position

    async def baseline(self, snapshot: Snapshot) -> None:
        """Save a first listing whole (an empty batch)."""
        self.sessions = dict(snapshot)
        await self.store.save(Batch([]), self.sessions, self.position)

    def stamp(self, snapshot: Snapshot) -> Batch:
        """The batch that turns the current snapshot into this one (not saved)."""
        return Batch(self.broker.stamp(diff(self.sessions, snapshot), TIMESTAMP))

    async def poll(self, snapshot: Snapshot) -> Batch:
        """Save the changes to `snapshot`, then publish them."""
        batch = self.stamp(snapshot)
        position = Position(self.position.epoch, batch.last_seq, self.position.activities_seq)
        await self.store.save(batch, snapshot, position)
        self.sessions = dict(snapshot)
        await self.broker.publish(batch)
        self.batches.append(batch)
        return batch

    async def activities(self, *session_ids: str) -> Batch:
        """Save and publish one new activity for each session (sessions unchanged)."""
        start = self.position.activities_seq
        messages = [
            (
                ActivityMessage(
                    sessionId=sid,
                    activity=Activity(
                        id=f"act-{start + i}",
                        sessionId=sid,
                        kind="progressUpdated",
                        originator="agent",
                        createdAt=TIMESTAMP,
                        title=f"step {start + i}",
                    ),
                    timestamp=TIMESTAMP,
                    seq=start + i,
                ),
                ("acme/api", self.sessions[sid].state if sid in self.sessions else "QUEUED"),
            )
            for i, sid in enumerate(session_ids, start=1)
        ]
        batch = Batch([], messages)
        position = Position(self.position.epoch, self.position.seq, start + len(messages))
        await self.store.save(batch, self.sessions, position)
        await self.broker.publish(batch)
        self.batches.append(batch)
        return batch
