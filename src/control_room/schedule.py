"""Pure planning of a poll's session reads, on a request budget.

Listing every page every poll costs `pages x polls`: 25 pages x 12 polls = 300 requests a
minute at 2,500 sessions, almost all of them re-reading sessions that finished weeks ago.
So a poll reads:

- the **first page** (the newest 100 sessions, where new and working sessions are) every
  `POLL_INTERVAL_MS`. Without a next page it *is* a complete listing;
- a **complete listing** (every page, with the torn-listing checks) often enough that it
  ends within `FULL_LISTING_INTERVAL` of the previous one's start: any change to an older
  session reaches clients within it, and only a complete listing may delete;
- each **hot** session beyond the first page on its own (`GET /sessions/{id}`), so that an
  older session someone is working on again is as fresh as a new one.

Temperatures: a session is *finished* (COMPLETED, FAILED), *warm* (PAUSED: it never resumes
on its own; or flagged stalled: nothing has happened for STALL_AFTER), or *hot* (every other
state, unknown ones included: the API is alpha, and a state we do not know may be one where
Jules works). Finished and warm sessions are read by the complete listing only.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Final

from control_room import rfc3339
from control_room.models import JulesSession

FINISHED_STATES: Final = frozenset({"COMPLETED", "FAILED"})
"""Nothing happens to these unless someone sends a message (a complete listing sees it)."""
WARM_STATES: Final = frozenset({"PAUSED"})
"""PAUSED sessions mostly died mid-work and never resume on their own: a GET every poll
for each would cost 12 requests a minute forever, for a change a complete listing sees
within FULL_LISTING_INTERVAL anyway."""
MAX_HOT_GETS: Final = 8
"""Hot sessions beyond the first page read one by one per poll. Each costs 12 requests a
minute at a 5 s poll; usually there are one or two (an old session given a follow-up).
Beyond eight, the most recently updated are read and the others wait for the complete
listing (logged): a budget of ~60 requests a minute cannot afford more."""
LOOKAHEAD_SHARE: Final = 0.25
"""How far ahead a complete listing is planned: one poll interval, but at most a quarter of
FULL_LISTING_INTERVAL (with a poll interval longer than that, as in tests that poll on
demand, the listing is planned a quarter interval ahead)."""


def is_finished(session: JulesSession) -> bool:
    """True for COMPLETED and FAILED sessions."""
    return session.state in FINISHED_STATES


def is_hot(session: JulesSession) -> bool:
    """True when the session may change at any moment: neither finished, PAUSED nor stalled."""
    state = session.state
    return (
        state not in FINISHED_STATES and state not in WARM_STATES and session.stalledSince is None
    )


class ListingSchedule:
    """When the next complete listing is due. Times are monotonic seconds.

    A complete listing runs on a poll's tick, so it is planned one poll ahead: it runs on
    the last tick at which it still *ends* within FULL_LISTING_INTERVAL of the previous
    one's start (judged by how long that one took). Every page is then read again, and its
    changes published, within FULL_LISTING_INTERVAL of its previous read: with a 5 s poll
    and a 60 s interval, every 55 s.
    """

    def __init__(self, full_interval: float, poll_interval: float) -> None:
        self.full_interval = full_interval
        self._lookahead = min(poll_interval, full_interval * LOOKAHEAD_SHARE)
        self.last_complete: float | None = None
        self.last_duration = 0.0
        self._retry_at: float | None = None  # a cut-short listing is tried again from then

    def complete_due(self, now: float) -> bool:
        """True when this poll must list every page (always before the first complete one)."""
        if self.last_complete is None:
            return True
        if self._retry_at is not None:
            return now >= self._retry_at
        next_one_ends = now - self.last_complete + self._lookahead + self.last_duration
        return next_one_ends > self.full_interval

    def listed_completely(self, started: float, ended: float) -> None:
        """Record a complete listing that ran from `started` to `ended` (published)."""
        self.last_complete = started
        self.last_duration = max(0.0, ended - started)
        self._retry_at = None

    def listing_failed(self, now: float, retry_in: float) -> None:
        """A complete listing was cut short by a failed page: the polls of the next
        `retry_in` seconds read the first page only, then one lists every page again."""
        self._retry_at = now + retry_in


def hot_beyond(
    sessions: Mapping[str, JulesSession], listed: Container[str], limit: int = MAX_HOT_GETS
) -> tuple[list[str], list[str]]:
    """Hot sessions that a partial listing did not show: (to read now, left for later).

    At most `limit` are read, the most recently updated first (they are the likeliest to
    change again); the rest are left to the next complete listing.
    """
    hot = [s for sid, s in sessions.items() if sid not in listed and is_hot(s)]
    if len(hot) <= limit:
        return [s.id for s in hot], []
    hot.sort(key=_recency, reverse=True)
    return [s.id for s in hot[:limit]], [s.id for s in hot[limit:]]


def _recency(session: JulesSession) -> tuple[int, int]:
    return rfc3339.instant(session.updatedAt) or (0, 0)
