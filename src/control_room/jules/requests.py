"""Requests made to the Jules API, counted by kind: the budget the poller lives within.

Every request that leaves for the upstream is counted once per attempt (a retry is a
request too: it costs the same quota), under one of `REQUEST_KINDS` (the same names the
simulator counts by, so the two can be compared). `RequestCounter` keeps the totals and a
sliding one-minute window for `/api/stats`; the metric `upstream_requests_total{kind}` is
fed through its `listener`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

RequestKind = Literal[
    "list_first_page",
    "list_next_page",
    "get_session",
    "list_activities",
    "get_activity",
    "create",
    "approve",
    "message",
    "archive",
    "unarchive",
    "delete",
    "list_sources",
]
LIST_FIRST_PAGE: Final = "list_first_page"  # GET /sessions without a pageToken
LIST_NEXT_PAGE: Final = "list_next_page"  # GET /sessions with a pageToken
GET_SESSION: Final = "get_session"
LIST_ACTIVITIES: Final = "list_activities"  # one page of GET /sessions/{id}/activities
GET_ACTIVITY: Final = "get_activity"
REQUEST_KINDS: Final[tuple[RequestKind, ...]] = RequestKind.__args__  # type: ignore[attr-defined]
"""Every kind, in the order `/api/stats` lists them."""

WINDOW_S: Final = 60.0
"""The budget is stated per minute (issue 12: at most 60 requests a minute at 2,500
sessions), so `/api/stats` shows the last minute."""

Listener = Callable[[RequestKind], None]


class RequestCounter:
    """Requests by kind: totals since start, and those of the last `WINDOW_S` seconds.

    The window keeps one timestamp per request (at 60 a minute, 60 floats); it is trimmed
    as it is read or written, so it never holds more than a minute of requests.
    """

    def __init__(
        self, listener: Listener | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.totals: dict[RequestKind, int] = dict.fromkeys(REQUEST_KINDS, 0)
        self._recent: deque[tuple[float, RequestKind]] = deque()
        self._listener = listener
        self._clock = clock

    def count(self, kind: RequestKind) -> None:
        """Record one request of `kind` now."""
        self.totals[kind] += 1
        now = self._clock()
        self._recent.append((now, kind))
        self._trim(now)
        if self._listener is not None:
            self._listener(kind)

    def _trim(self, now: float) -> None:
        recent = self._recent
        while recent and recent[0][0] <= now - WINDOW_S:
            recent.popleft()

    def last_minute(self) -> dict[RequestKind, int]:
        """Requests of the last minute by kind (every kind, zero or not)."""
        self._trim(self._clock())
        counts: dict[RequestKind, int] = dict.fromkeys(REQUEST_KINDS, 0)
        for _, kind in self._recent:
            counts[kind] += 1
        return counts
