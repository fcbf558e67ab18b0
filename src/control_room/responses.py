"""The JSON error answers shared by the REST routes and the WebSocket handshake."""

from __future__ import annotations

from typing import Final

from aiohttp import web

RETRY_BEFORE_FIRST_POLL_S: Final = 2  # the first poll usually lands within a second or two


def json_error(status: int, error: str, **fields: object) -> web.Response:
    """A JSON error body, the only kind this service answers with."""
    return web.json_response({"error": error, **fields}, status=status)


def not_ready() -> web.Response:
    """503 with Retry-After: nothing consistent can be served before the first poll."""
    response = json_error(503, "not_ready", message="the first poll has not completed")
    response.headers["Retry-After"] = str(RETRY_BEFORE_FIRST_POLL_S)
    return response
