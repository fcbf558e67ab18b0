"""Pure parsing of the WebSocket URL's query: resume position, snapshot, subscription."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from control_room.views import DEFAULT_VIEW, BadFilter, View

VIEW_PARAMETERS: Final = {
    "sessionId": "sessionIds",
    "repository": "repositories",
    "state": "states",
}
"""Query parameter -> subscription field: each repeatable, or a comma-separated list."""

AHEAD_OF_SERVER: Final = "ahead_of_server"
"""The reset's (and /api/deltas' 410's) reason for a `since` ahead of the server in its
epoch: the server lost history the client saw (e.g. a store restored from a backup)."""


class BadParameter(ValueError):
    """A query parameter is malformed; the message says which and why."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


@dataclass(frozen=True)
class StreamRequest:
    """What a connecting client asked for: nothing (live only), a snapshot, or a resume."""

    since: int | None = None
    epoch: str | None = None
    snapshot: bool = False
    view: View = DEFAULT_VIEW
    activities_since: int | None = None
    patch: bool = False
    """`updates=patch`: `updated` deltas as JSON Patch operations."""
    batch: bool = False
    """`batch=1`: each poll's messages as one `batch` message."""


MAX_INTEGER_DIGITS: Final = 18
"""Digits in an integer parameter (`since`, `activitiesSince`, `limit`, `pageSize`,
`pageToken`): 18 digits stay below 2**63, what the stores' BIGINT columns hold, and a
sequence number will not pass 10**18 in the life of any deployment."""


def parse_seq(name: str, raw: str) -> int:
    """A non-negative integer written in plain ASCII digits.

    Python's int() also takes `+5`, `5_0`, surrounding spaces and other scripts' digits
    (full-width `１`): none is what a client means to send, so all are refused.
    """
    if not (0 < len(raw) <= MAX_INTEGER_DIGITS and raw.isascii() and raw.isdigit()):
        raise BadParameter(
            name, f"expected a non-negative integer of at most {MAX_INTEGER_DIGITS} digits"
        )
    return int(raw)


def _all(query: Mapping[str, str], name: str) -> list[str] | None:
    """Every value of a repeatable parameter, commas splitting too; None when absent."""
    getall = getattr(query, "getall", None)
    raw: list[str] = (
        getall(name, []) if getall is not None else [query[name]] if name in query else []
    )
    if not raw:
        return None
    return [part for value in raw for part in value.split(",")]


def _flag(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name, "").strip().lower()
    if raw not in ("", "0", "1", "true", "false"):
        raise BadParameter(name, "expected 1 or 0 (or true or false)")
    return raw in ("1", "true")


def _updates(query: Mapping[str, str]) -> bool:
    """`updates=patch` (True) or `updates=full` / absent (False)."""
    raw = query.get("updates", "").strip().lower()
    if raw not in ("", "full", "patch"):
        raise BadParameter("updates", "expected full or patch")
    return raw == "patch"


def parse_view(query: Mapping[str, str]) -> View:
    """The subscription asked for at connect time (no parameters: the default stream)."""
    filters = {field: _all(query, name) for name, field in VIEW_PARAMETERS.items()}
    activities = _flag(query, "activities")
    if activities is False and all(v is None for v in filters.values()):
        return DEFAULT_VIEW
    try:
        return View.of(
            session_ids=filters["sessionIds"],
            repositories=filters["repositories"],
            states=filters["states"],
            activities=activities,
        )
    except BadFilter as exc:
        name = next(n for n, f in VIEW_PARAMETERS.items() if f == exc.field)
        raise BadParameter(name, exc.problem) from None


def parse_stream_request(query: Mapping[str, str]) -> StreamRequest:
    """Validate `since`, `epoch` and `snapshot`; BadParameter names the culprit.

    A `since` ahead of the stream is not an error: the server may be behind the client
    (a store restored from a backup), and the handler answers it with a reset, as it does
    a `since` from another epoch.
    """
    snapshot = _flag(query, "snapshot")
    view = parse_view(query)
    patch, batch = _updates(query), _flag(query, "batch")
    since_raw = query.get("since")
    epoch = query.get("epoch") or None
    activities_raw = query.get("activitiesSince")
    activities_since = None
    if activities_raw is not None:
        if not view.activities:
            raise BadParameter("activitiesSince", "given without activities=1")
        if since_raw is None:
            raise BadParameter("activitiesSince", "given without since")
        activities_since = parse_seq("activitiesSince", activities_raw)
    if since_raw is None:
        if epoch is not None:
            raise BadParameter("epoch", "given without since")
        return StreamRequest(snapshot=snapshot, view=view, patch=patch, batch=batch)
    if snapshot:
        raise BadParameter("snapshot", "cannot be combined with since")
    since = parse_seq("since", since_raw)
    return StreamRequest(
        since=since,
        epoch=epoch,
        snapshot=False,
        view=view,
        activities_since=activities_since,
        patch=patch,
        batch=batch,
    )
