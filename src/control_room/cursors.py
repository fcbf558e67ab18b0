"""Pure bookkeeping of each session's activities: which to read this poll, which are new.

Jules pushes nothing, and reading every session's activities every poll would cost one
request per session per poll. Jules moves a session's `updateTime` with every new activity,
so activities are read only for a session that was created, or whose `updatedAt` moved,
or that a command touched, and then only the newer ones (`filter=create_time>` the
newest already read). Each followed session has a `Cursor`:

- `after`: read only activities created after this (None: from the beginning, which makes
  the session's timeline complete);
- `through`: activities created at or before this are not announced (None: every one is).
  It is the `updatedAt` this service last published for the session: what happened up to
  then was either announced already or happened before this service was watching.

How a cursor starts decides what a session's first read announces:

| the session | after | through | announced |
|---|---|---|---|
| created (first seen after the baseline) | None | None | all |
| working at the first poll (timeline read) | None | its updatedAt | later ones |
| not working, no cursor, updatedAt moved | old updatedAt | old updatedAt | all read |
| working, no cursor, updatedAt moved | None | old updatedAt | later ones |

A cursor moves only when the poll that read it was published (`advance`), so a poll that
fails to publish reads and announces the same activities again next time. A read that
fails, or a 404 within NOT_FOUND_GRACE_S of first sight (Jules answers 404 for a moment
after a create), stays due and is read again next poll; a failing one backs off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from control_room import rfc3339
from control_room.backoff import backoff_delay
from control_room.jules.activities import ActivityListing
from control_room.models import Activity, Change, JulesSession
from control_room.schedule import is_hot

READS_PER_POLL: Final = 32
"""Activity reads per poll at most. A burst (a script creating 100 sessions, a baseline of
many working sessions) is read over a few polls instead of one poll that overruns its
interval; sessions that changed this poll are read first."""
NOT_FOUND_GRACE_S: Final = 60.0
"""How long after first sight a 404 on a session's activities is believed to be Jules'
transient one (the simulator's lasts 0.5 s; the real API's is unmeasured). Later, a 404
means the session is gone, and a complete listing will say so; the read is dropped."""
BEFORE_THE_PLAN: Final = frozenset({"QUEUED", "PLANNING"})
"""States in which Jules writes no activity (its first is the plan). A session that moves
into one is not read: a read would come back empty, and two such reads per new session are
an eighth of the budget. Nothing is lost by not reading: the cursor stays where it was, so
the next read (the plan) brings whatever there is. A command's re-read is not skipped."""
RETRY_CAP_S: Final = 60.0
"""A session whose activities keep failing is retried at most this far apart (it is read
again at once whenever it changes)."""


@dataclass(slots=True)
class Cursor:
    """Where one session's activities stand; see the module's table."""

    after: str | None
    through: str | None
    first_seen: float  # monotonic seconds
    failures: int = 0
    retry_at: float = 0.0  # monotonic seconds; a due read waits until then


@dataclass(frozen=True, slots=True)
class Read:
    """One session's activities to read this poll."""

    session_id: str
    after: str | None
    through: str | None

    @property
    def whole(self) -> bool:
        """True when the read starts at the beginning: the timeline it gives is complete."""
        return self.after is None


def _moved(change: Change) -> bool:
    """True for a creation, and for an update whose `updatedAt` moved (not a flag alone)."""
    if change.before is None:
        return change.after is not None
    return change.after is not None and change.after.updatedAt != change.before.updatedAt


class Cursors:
    """Every followed session's cursor, and the reads still due from earlier polls."""

    def __init__(self, interval: float) -> None:
        self._interval = interval  # the poll period: the first retry's delay
        self._cursors: dict[str, Cursor] = {}
        self._due: dict[str, None] = {}  # an ordered set: first due, first read

    def __len__(self) -> int:
        return len(self._cursors)

    @property
    def due(self) -> int:
        """Reads waiting for a later poll (failed, not found yet, deferred)."""
        return len(self._due)

    def last_activity(self, session_id: str) -> str | None:
        """The `createTime` of the newest activity read for the session, if any."""
        cursor = self._cursors.get(session_id)
        return cursor.after if cursor is not None else None

    def forget(self, session_id: str) -> None:
        """The session is gone: drop its cursor and any due read."""
        self._cursors.pop(session_id, None)
        self._due.pop(session_id, None)

    def plan(
        self,
        changes: Sequence[Change],
        sessions: Mapping[str, JulesSession],
        now: float,
        *,
        touched: Iterable[str] = (),
        follow: Iterable[str] = (),
        limit: int = READS_PER_POLL,
        include_due: bool = True,
    ) -> list[Read]:
        """This poll's reads, at most `limit`: sessions created or moved in `changes` (unless
        they are still BEFORE_THE_PLAN), then
        those `touched` by a command, then those due from earlier polls, then `follow`ed
        sessions never read (their timelines). What does not fit stays due. Without
        `include_due`, only `changes` and `touched` are read (a command's quick re-read).

        `sessions` is the snapshot after this poll; `now` is monotonic seconds.
        """
        wanted: dict[str, None] = {}
        for change in changes:
            sid = change.sessionId
            if change.after is None:
                self.forget(sid)
            elif _moved(change):
                self._start(sid, change.before, now)
                if change.after.state not in BEFORE_THE_PLAN:
                    wanted[sid] = None
        for sid in touched:
            session = sessions.get(sid)
            if session is not None:
                self._start(sid, session, now)
                wanted[sid] = None
        for sid in list(self._due) if include_due else ():
            cursor = self._cursors.get(sid)
            if cursor is None or sid not in sessions:
                self.forget(sid)
            elif cursor.retry_at <= now:
                wanted[sid] = None
        for sid in follow:
            session = sessions.get(sid)
            if (
                session is not None
                and sid not in self._cursors
                and session.state not in BEFORE_THE_PLAN
            ):
                self._start(sid, session, now)
                wanted[sid] = None
        reads: list[Read] = []
        for sid in wanted:
            if len(reads) >= limit:
                self._due[sid] = None
                continue
            cursor = self._cursors[sid]
            reads.append(Read(sid, cursor.after, cursor.through))
        return reads

    def _start(self, sid: str, before: JulesSession | None, now: float) -> None:
        """A cursor for a session that has none (see the module's table)."""
        if sid in self._cursors:
            return
        if before is None:
            cursor = Cursor(None, None, now)
        elif is_hot(before):
            cursor = Cursor(None, before.updatedAt or None, now)
        else:
            bound = before.updatedAt or None
            cursor = Cursor(bound, bound, now)
        self._cursors[sid] = cursor

    @staticmethod
    def new_activities(read: Read, listing: ActivityListing) -> list[Activity]:
        """The activities of `listing` to announce: those created after the read's bounds
        (to the nanosecond; one whose time does not parse counts as new)."""
        fresh: list[Activity] = []
        for activity in listing.activities:
            if read.after is not None and rfc3339.later(activity.createdAt, read.after) is False:
                continue  # the upstream should have filtered it out
            if (
                read.through is not None
                and rfc3339.later(activity.createdAt, read.through) is False
            ):
                continue
            fresh.append(activity)
        return fresh

    def advance(self, read: Read, listing: ActivityListing) -> None:
        """The read was published: move the cursor past what it listed; nothing is due."""
        cursor = self._cursors.get(read.session_id)
        if cursor is None:
            return
        if listing.newest_time is not None:
            cursor.after = listing.newest_time
        cursor.failures = 0
        cursor.retry_at = 0.0
        self._due.pop(read.session_id, None)

    def again(self, reads: Iterable[Read]) -> None:
        """The reads were not published (the store refused): read them again next poll."""
        for read in reads:
            if read.session_id in self._cursors:
                self._due[read.session_id] = None

    def failed(self, read: Read, now: float) -> None:
        """The read failed: read it again, backing off while it keeps failing."""
        cursor = self._cursors.get(read.session_id)
        if cursor is None:
            return
        cursor.failures += 1
        cap = max(RETRY_CAP_S, self._interval)
        cursor.retry_at = now + backoff_delay(cursor.failures, self._interval, cap) - self._interval
        self._due[read.session_id] = None

    def not_found(self, read: Read, now: float) -> bool:
        """Jules said 404. True (read again next poll) within NOT_FOUND_GRACE_S of first
        sight; False after it (the read is dropped: the session looks gone)."""
        cursor = self._cursors.get(read.session_id)
        if cursor is None:
            return False
        if now - cursor.first_seen < NOT_FOUND_GRACE_S:
            self._due[read.session_id] = None
            return True
        self._due.pop(read.session_id, None)
        return False
