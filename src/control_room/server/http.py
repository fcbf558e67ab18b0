"""aiohttp's server with the front door's rules: a connection cap, a request-head deadline,
and answers to malformed requests that never repeat what was sent.

`FrontRunner` is `web.AppRunner` serving through `FrontServer`, a `web.Server` that
counts its connections and, past `max_connections`, hands a new connection a `Refusal`
(a canned 503 with Retry-After, sent without parsing anything) instead of an HTTP
handler. The handler class, `FrontHandler`, is aiohttp's own with one method replaced:
`handle_error`, whose stock 400 body and log line quote the offending request line or
header, tokens included.

The request-head deadline is aiohttp's keep-alive timer: since aiohttp 3.14.4 it starts
when a connection is accepted, and closes the connection if no complete request head
has arrived when it fires (a client sending nothing, or half a line, is dropped); after
each response it runs again as the keep-alive idle limit. A WebSocket upgrade is one
request head, so the deadline covers the handshake too; once upgraded, the timer is
cancelled and the heartbeat watches the client. No object is added per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, cast

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from control_room import logging as logs
from control_room.metrics import Metrics
from control_room.server.listener import OVER_CAPACITY_RETRY_S, refusal_response

REQUEST_HEAD_TIMEOUT_S: Final = 15.0
"""A client has this long from connecting (or from its previous response) to send a
complete request head, WebSocket upgrades included. Browsers send theirs at once; 15 s
leaves a slow mobile link room while an idle or slowloris socket is gone in seconds."""
REFUSAL_LINGER_S: Final = 2.0
"""How long a refused connection may take to read its 503 and hang up: closing sooner,
with its request unread, would reset the connection and lose the answer."""
REFUSAL_LOG_INTERVAL_S: Final = 10.0
"""At most one warning per 10 s while connections are refused, with the count."""
MAX_LINE_BYTES: Final = 8190
"""aiohttp's limits on a request line and on one header, named in the 400's message."""

OVER_CAPACITY_RESPONSE: Final = refusal_response("max_connections", OVER_CAPACITY_RETRY_S)

log = logs.get("server")


def _nothing() -> None:
    """A release for a connection no server counted."""


def _describe(exc: HttpProcessingError) -> str:
    """What was wrong with a malformed request, in words that quote nothing from it."""
    if isinstance(exc, LineTooLong):
        return f"a request line or header is longer than {MAX_LINE_BYTES} bytes"
    if isinstance(exc, InvalidURLError):
        return "the request target holds a character that is not allowed"
    if isinstance(exc, BadHttpMethod):
        return "the request line's method is not HTTP (is this TLS sent to a plain port?)"
    if isinstance(exc, BadStatusLine):
        return "the request line is malformed"
    if isinstance(exc, PayloadEncodingError):
        return "the request body is malformed"
    return "a header is malformed (a name or value holds a character that is not allowed)"


def _json(status: int, body: dict[str, Any]) -> web.Response:
    response = web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )
    response.force_close()
    return response


class FrontHandler(RequestHandler):
    """aiohttp's connection handler, answering malformed requests without quoting them, and
    handing an upgraded socket over to its new owner."""

    __slots__ = ()

    def detach(self) -> tuple[asyncio.Transport, bytes, Callable[[], None]]:
        """Give up the connection without closing it (a WebSocket takes the socket).

        Returns the transport, any bytes the client sent after its request head, and a
        function to call when the socket finally closes: the connection keeps its place
        under MAX_CONNECTIONS until then. aiohttp forgets the connection at once: no timer,
        no task and no request object stays alive for it. The handler that calls this must
        return a response that writes nothing.
        """
        transport = self.transport
        assert transport is not None, "detach() on a closed connection"
        tail, self._message_tail = self._message_tail, b""
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        self._keepalive = False
        # With no transport and the connection marked closed, aiohttp's loop for it ends
        # after this request without writing or closing anything.
        self._force_close = True
        self.transport = None
        manager = self._manager
        release: Callable[[], None] = _nothing
        if isinstance(manager, FrontServer):
            release = manager.detached(self)
        return transport, tail, release

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON error for a request that could not be handled; one log line, no echo.

        A malformed request (`HttpProcessingError`) is the client's doing: an info line
        naming the error class. Anything else is ours: an error line with the traceback.
        """
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("response already sent; cannot send an error after it")
        manager = self._manager
        if isinstance(exc, HttpProcessingError) and status < 500:
            if isinstance(manager, FrontServer):
                manager.metrics.http_bad_requests.inc()
            log.info(
                "Malformed HTTP request refused",
                extra={"remote": request.remote, "error": type(exc).__name__, "status": status},
            )
            return _json(
                status, {"error": "bad_request", "message": f"malformed request: {_describe(exc)}"}
            )
        if status == 504:
            return _json(504, {"error": "timeout", "message": "the request took too long"})
        log.error("Request failed", extra={"remote": request.remote}, exc_info=exc)
        return _json(500, {"error": "internal_error", "message": "the service failed; see its log"})


class Refusal(asyncio.Protocol):
    """A connection past the cap: a canned 503 at once, its request drained, then closed."""

    __slots__ = ("_timer",)

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Answer, say no more will be written, and give the client a moment to hang up."""
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check.
        transport = cast(asyncio.Transport, transport)
        transport.write(OVER_CAPACITY_RESPONSE)
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        """The request is read and dropped, so closing does not reset the connection."""

    def eof_received(self) -> bool:
        """The client hung up: close (returning False lets the transport close itself)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the linger timer."""
        if self._timer is not None:
            self._timer.cancel()


class FrontServer(web.Server):
    """`web.Server` with a cap on open connections; connections past it are refused."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        loop: asyncio.AbstractEventLoop,
        max_connections: int,
        metrics: Metrics,
        **handler_kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=request_factory, loop=loop, **handler_kwargs)
        self._front_loop = loop
        self._handler_kwargs = handler_kwargs
        self.max_connections = max_connections
        self.metrics = metrics
        self.open_connections = 0
        self._refusals = logs.Occasional(REFUSAL_LOG_INTERVAL_S)
        metrics.server_connections.set_function(lambda: self.open_connections)
        metrics.server_max_connections.set(max_connections)

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        """A handler for the new connection, or a `Refusal` when the cap is reached.

        Counted here rather than in `connection_made`, so connections accepted in one
        burst (one event-loop iteration) cannot overshoot the cap.
        """
        if self.open_connections >= self.max_connections:
            self._refuse()
            return Refusal()
        self.open_connections += 1
        return FrontHandler(self, loop=self._front_loop, **self._handler_kwargs)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Forget the connection (each handler reports its loss exactly once)."""
        self.open_connections -= 1
        super().connection_lost(handler, exc)

    def detached(self, handler: RequestHandler) -> Callable[[], None]:
        """`handler` gave its socket away: forget it, keep its slot until `release()`."""
        self._connections.pop(handler, None)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_connections -= 1

        return release

    def _refuse(self) -> None:
        self.metrics.server_refused.labels("max_connections").inc()
        refused = self._refusals.count()
        if refused is not None:
            log.warning(
                "Connection limit reached; refusing new connections with 503",
                extra={"maxConnections": self.max_connections, "refused": refused},
            )


class FrontRunner(web.AppRunner):
    """`web.AppRunner` whose server is a `FrontServer` with the front door's settings."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        metrics: Metrics,
        shutdown_timeout: float = 60.0,
    ) -> None:
        super().__init__(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self._max_connections = max_connections
        self._metrics = metrics

    async def _make_server(self) -> web.Server:
        # The stock server first: it runs the application's start-up and carries the
        # request handler and factory, which the front server then uses as they are.
        stock = await super()._make_server()
        return FrontServer(
            stock.request_handler,
            request_factory=stock.request_factory,
            loop=asyncio.get_running_loop(),
            max_connections=self._max_connections,
            metrics=self._metrics,
            keepalive_timeout=REQUEST_HEAD_TIMEOUT_S,
            access_log=None,  # the service logs what matters itself, structured
        )
