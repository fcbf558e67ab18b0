"""The current picture, fed by published batches: sessions by id, timelines, readiness.

A broker sink, added before the hub, so by the time any client is handed a batch the state
already includes it: a snapshot read afterwards is consistent with the stream's position.
The WebSocket handler and the REST API read it; nothing reads the poller. A follower node
(scale-out) feeds its state from the shared stream the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from control_room import rfc3339
from control_room.broker.base import Batch
from control_room.health import UpstreamHealth
from control_room.models import Activity, JulesSession

MAX_TIMELINES: Final = 500
"""Sessions whose activities are kept in memory (least recently used first out). The
sessions being worked on (tens) and those a user opened fit; a finished session's timeline
is read again from the store or from Jules when someone asks for it."""
MAX_TIMELINE_ACTIVITIES: Final = 2_000
"""Activities kept per session (the newest). Real sessions have tens to a few hundred."""


@dataclass
class Timeline:
    """One session's activities, oldest first.

    `complete` is true when it holds every activity since the session began (it was read
    from the beginning and then followed); otherwise it holds only those seen since this
    service started following the session, and a reader must fetch the rest.
    """

    activities: list[Activity] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    complete: bool = False

    def add(self, activity: Activity) -> bool:
        """Append an activity not seen before; False for a duplicate."""
        if activity.id in self.ids:
            return False
        self.ids.add(activity.id)
        self.activities.append(activity)
        if len(self.activities) > MAX_TIMELINE_ACTIVITIES:
            dropped = self.activities.pop(0)
            self.ids.discard(dropped.id)
            self.complete = False
        return True


class State:
    """Sessions by id, in-memory timelines, and whether a first complete listing was seen."""

    def __init__(self) -> None:
        self.sessions: dict[str, JulesSession] = {}
        self.ready = False
        self.health = UpstreamHealth()
        """How the upstream and the store are doing (the poller keeps it current)."""
        self._timelines: OrderedDict[str, Timeline] = OrderedDict()

    def load(self, sessions: Mapping[str, JulesSession]) -> None:
        """Adopt a whole snapshot (a baseline, or what a store kept)."""
        self.sessions = dict(sessions)

    def deliver(self, batch: Batch) -> None:
        """Apply a published batch: deltas to the sessions, activities to the timelines."""
        sessions = self.sessions
        for delta in batch.deltas:
            if delta.after is None:
                sessions.pop(delta.sessionId, None)
                self._timelines.pop(delta.sessionId, None)
            else:
                sessions[delta.sessionId] = delta.after
        if batch.activities:
            for message in batch.activity_messages:
                self.timeline(message.sessionId).add(message.activity)

    def timeline(self, session_id: str) -> Timeline:
        """The session's timeline (created empty and incomplete when not held)."""
        found = self._timelines.get(session_id)
        if found is None:
            found = self._timelines[session_id] = Timeline()
            while len(self._timelines) > MAX_TIMELINES:
                self._timelines.popitem(last=False)
        else:
            self._timelines.move_to_end(session_id)
        return found

    def peek_timeline(self, session_id: str) -> Timeline | None:
        """The session's timeline if held, without creating one."""
        return self._timelines.get(session_id)

    def adopt_timeline(self, session_id: str, activities: Iterable[Activity]) -> Timeline:
        """Record a session's whole history, read from its beginning; keeps live additions."""
        timeline = self.timeline(session_id)
        fresh = Timeline(complete=True)
        for activity in sorted(activities, key=_created):
            fresh.add(activity)
        for activity in timeline.activities:
            fresh.add(activity)
        fresh.activities.sort(key=_created)
        self._timelines[session_id] = fresh
        return fresh


def _created(activity: Activity) -> tuple[int, int]:
    # By instant, not by text: `...:00Z` sorts after `...:00.5Z` as text. Stable, so equal
    # or unreadable times keep Jules' own order (oldest first).
    return rfc3339.instant(activity.createdAt) or (0, 0)
