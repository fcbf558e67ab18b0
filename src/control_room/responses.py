"""The JSON error answers shared by the REST routes and the WebSocket handshake."""

from __future__ import annotations

import math
from typing import Final

from aiohttp import web

from control_room.health import UpstreamHealth

RETRY_BEFORE_FIRST_POLL_S: Final = 2  # the first poll usually lands within a second or two
MAX_NOT_READY_RETRY_AFTER_S: Final = 10
"""A client told to come back later never waits longer than this: the upstream may recover
(or a rotated key take effect) well before the poller's own backoff ends."""


def json_error(status: int, error: str, **fields: object) -> web.Response:
    """A JSON error body, the only kind this service answers with."""
    return web.json_response({"error": error, **fields}, status=status)


def not_ready(health: UpstreamHealth) -> web.Response:
    """503 with Retry-After: nothing consistent can be served before the first poll.

    Only ever sent after the client's token was checked: the body names the upstream's
    host and the OS's reason (`{"error": "not_ready", "message": "waiting for the Jules
    API: connection refused to 127.0.0.1:9; retrying in 8 s", "upstream": {"reason",
    "detail", "retryInSeconds", "consecutiveFailures"}}`).
    """
    why = health.not_ready()
    retry = why.retry_in
    response = json_error(
        503,
        "not_ready",
        message=why.message,
        upstream={
            "reason": why.reason,
            "detail": why.detail,
            "retryInSeconds": round(retry, 1) if retry is not None else None,
            "consecutiveFailures": why.consecutive_failures,
        },
    )
    after = RETRY_BEFORE_FIRST_POLL_S if retry is None else math.ceil(retry)
    response.headers["Retry-After"] = str(min(max(after, 1), MAX_NOT_READY_RETRY_AFTER_S))
    return response
