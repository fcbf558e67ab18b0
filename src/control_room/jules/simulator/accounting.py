"""Requests the simulated API received, counted by kind, for tests and the request-budget bench."""

from __future__ import annotations

from collections import Counter
from typing import Final

# Request kinds: the keys of `RequestCounts`, one per call of the API (one place, so a typo
# cannot make a new kind appear). Every request counts under exactly one kind.
LIST_FIRST_PAGE: Final = "list_first_page"  # GET /sessions without a pageToken: a walk begins
LIST_NEXT_PAGE: Final = "list_next_page"  # GET /sessions with a pageToken
GET_SESSION: Final = "get_session"
CREATE: Final = "create"
APPROVE: Final = "approve"  # :approvePlan
MESSAGE: Final = "message"  # :sendMessage
ARCHIVE: Final = "archive"
UNARCHIVE: Final = "unarchive"
DELETE: Final = "delete"
LIST_ACTIVITIES: Final = "list_activities"
GET_ACTIVITY: Final = "get_activity"
LIST_SOURCES: Final = "list_sources"
GET_SOURCE: Final = "get_source"
UNKNOWN: Final = "unknown"  # a path or method the API does not have

REQUEST_KINDS: Final = (
    LIST_FIRST_PAGE,
    LIST_NEXT_PAGE,
    GET_SESSION,
    CREATE,
    APPROVE,
    MESSAGE,
    ARCHIVE,
    UNARCHIVE,
    DELETE,
    LIST_ACTIVITIES,
    GET_ACTIVITY,
    LIST_SOURCES,
    GET_SOURCE,
    UNKNOWN,
)


class RequestCounts(Counter[str]):
    """Requests received, by kind (`REQUEST_KINDS`), counted on arrival, before the key check.

    A `Counter`: `counts["list_activities"]`, `counts.total()` for every request,
    `counts.as_dict()` for a JSON-able copy with every kind. The `*_calls` properties are the
    names wave 1's tests read.
    """

    def as_dict(self) -> dict[str, int]:
        """Every kind, zero or not, in `REQUEST_KINDS` order."""
        return {kind: self[kind] for kind in REQUEST_KINDS}

    def reset(self) -> None:
        """Zero every count."""
        self.clear()

    @property
    def list_calls(self) -> int:
        """Walks of the listing begun (GET /sessions without a pageToken)."""
        return self[LIST_FIRST_PAGE]

    @property
    def page_calls(self) -> int:
        """GET /sessions requests, first page or not."""
        return self[LIST_FIRST_PAGE] + self[LIST_NEXT_PAGE]

    @property
    def get_calls(self) -> int:
        """GET /sessions/{id} requests."""
        return self[GET_SESSION]

    @property
    def create_calls(self) -> int:
        """POST /sessions requests."""
        return self[CREATE]

    @property
    def action_calls(self) -> int:
        """:approvePlan and :sendMessage requests."""
        return self[APPROVE] + self[MESSAGE]

    @property
    def activity_calls(self) -> int:
        """Requests for activities, listings and single ones."""
        return self[LIST_ACTIVITIES] + self[GET_ACTIVITY]
