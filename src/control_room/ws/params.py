"""Pure parsing of the WebSocket URL's query: resume position and snapshot request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

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


def parse_seq(name: str, raw: str) -> int:
    """A non-negative integer sequence number."""
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(name, f"expected a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise BadParameter(name, f"expected a non-negative integer, got {raw!r}")
    return value


def parse_stream_request(query: Mapping[str, str]) -> StreamRequest:
    """Validate `since`, `epoch` and `snapshot`; BadParameter names the culprit.

    A `since` ahead of the stream is not an error: the server may be behind the client
    (a store restored from a backup), and the handler answers it with a reset, as it does
    a `since` from another epoch.
    """
    snapshot_raw = query.get("snapshot", "").strip().lower()
    if snapshot_raw not in ("", "0", "1", "true", "false"):
        raise BadParameter("snapshot", f"expected 1 or 0, got {snapshot_raw!r}")
    snapshot = snapshot_raw in ("1", "true")
    since_raw = query.get("since")
    epoch = query.get("epoch") or None
    if since_raw is None:
        if epoch is not None:
            raise BadParameter("epoch", "given without since")
        return StreamRequest(snapshot=snapshot)
    if snapshot:
        raise BadParameter("snapshot", "cannot be combined with since")
    since = parse_seq("since", since_raw)
    return StreamRequest(since=since, epoch=epoch, snapshot=False)
