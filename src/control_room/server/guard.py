"""The checks every protected request passes, in order: throttle, origin, token.

`Guard.websocket` and `Guard.rest` return the authenticated principal or the error
response to send: 429 (this address presented wrong tokens too often; before the token is
even looked at), 403 (an upgrade from a page on another origin), 401 (no token, a wrong
one, or one in the wrong place; the message says where tokens go and never repeats what
was sent).

Only a presented token that is wrong counts against the address's throttle, and only a
request that presents one is throttled. A request with no token, or with something
token-like where tokens are never read (`?token=`, `Bearer <t>` as a subprotocol), tests
no secret: it gets the helpful 401 every time and costs no more than `/healthz`, so it
is neither counted nor bounded. Counting it let a browser loading pages, a tool probing
without a token or a dashboard reconnecting before its user typed the token use up the
address's bucket and lock the legitimate user out with 429 (review of issue 10).
"""

from __future__ import annotations

from typing import Final, Protocol

from aiohttp import web

from control_room import logging as logs
from control_room.auth import (
    Principal,
    TokenSet,
    WebSocketAuth,
    bearer_auth,
    bearer_credential,
    misplaced_token,
    offered_protocols,
    unauthorized_message,
    websocket_auth,
    websocket_credential,
)
from control_room.metrics import Metrics
from control_room.responses import json_error
from control_room.server.origin import OriginPolicy
from control_room.server.throttle import FailureThrottle

WWW_AUTHENTICATE: Final = 'Bearer realm="control-room"'

log = logs.get("auth")


class TokenSource(Protocol):
    """Whatever holds the tokens in force (`tokens.Tokens`)."""

    @property
    def current(self) -> TokenSet:
        """The tokens valid now."""


class Guard:
    """Throttle, origin and token checks for WebSocket upgrades and REST requests."""

    def __init__(
        self,
        tokens: TokenSource,
        metrics: Metrics,
        *,
        throttle: FailureThrottle | None = None,
        origins: OriginPolicy | None = None,
    ) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self.throttle = throttle if throttle is not None else FailureThrottle()
        self.origins = origins if origins is not None else OriginPolicy()

    def websocket(self, request: web.Request) -> WebSocketAuth | web.Response:
        """Authenticate an upgrade, or the 429/403/401 response refusing it."""
        offers = offered_protocols(request.headers.getall("Sec-WebSocket-Protocol", ()))
        authorization = request.headers.get("Authorization")
        presented = websocket_credential(offers, authorization) is not None
        throttled = self._throttled(request, "websocket") if presented else None
        if throttled is not None:
            self._metrics.connections_rejected.labels("throttled").inc()
            return throttled
        if not self.origins.allows(request.headers.get("Origin"), request.host):
            self._metrics.connections_rejected.labels("forbidden_origin").inc()
            log.info(
                "WebSocket upgrade refused",
                extra={"reason": "forbidden_origin", "remote": request.remote},
            )
            return json_error(
                403,
                "forbidden_origin",
                message="pages on this origin may not open the stream; the service allows "
                "its own origin and those listed in ALLOWED_ORIGINS",
            )
        result = websocket_auth(offers, authorization, self._tokens.current)
        if result is not None:
            return result
        self._metrics.connections_rejected.labels("unauthorized").inc()
        misplaced = misplaced_token(
            offers=offers, authorization=authorization, query=request.query, websocket=True
        )
        return self._unauthorized(request, "websocket", presented, misplaced)

    def valid(self, principal: Principal) -> bool:
        """True while `principal`'s token is still in force (a reload may have removed it)."""
        return principal in self._tokens.current

    def rest(self, request: web.Request) -> Principal | web.Response:
        """Authenticate a REST request by its bearer header, or the 429/401 refusing it."""
        authorization = request.headers.get("Authorization")
        presented = bearer_credential(authorization) is not None
        throttled = self._throttled(request, "rest") if presented else None
        if throttled is not None:
            return throttled
        principal = bearer_auth(authorization, self._tokens.current)
        if principal is not None:
            return principal
        misplaced = misplaced_token(
            offers=offered_protocols(request.headers.getall("Sec-WebSocket-Protocol", ())),
            authorization=authorization,
            query=request.query,
            websocket=False,
        )
        response = self._unauthorized(request, "rest", presented, misplaced)
        challenge = f'{WWW_AUTHENTICATE}, error="invalid_token"' if presented else WWW_AUTHENTICATE
        response.headers["WWW-Authenticate"] = challenge
        return response

    def _throttled(self, request: web.Request, transport: str) -> web.Response | None:
        wait = self.throttle.retry_after(request.remote)
        if wait is None:
            return None
        self._metrics.auth_throttled.labels(transport).inc()
        response = json_error(
            429,
            "too_many_requests",
            message=f"too many failed authentications from this address; retry in {wait} s",
        )
        response.headers["Retry-After"] = str(wait)
        return response

    def _unauthorized(
        self, request: web.Request, transport: str, presented: bool, misplaced: str | None
    ) -> web.Response:
        self._metrics.auth_failures.labels(transport).inc()
        reason = "invalid" if presented else "misplaced" if misplaced else "missing"
        log.info(
            "Authentication failed",
            extra={"transport": transport, "reason": reason, "remote": request.remote},
        )
        # Only a wrong token is a guess; see the module's docstring for why nothing else counts.
        if presented and self.throttle.failed(request.remote):
            log.warning(
                "Too many failed authentications; throttling the address",
                extra={
                    "remote": request.remote,
                    "burst": self.throttle.burst,
                    "refillSeconds": self.throttle.refill_s,
                },
            )
        message = unauthorized_message(
            presented=presented, misplaced=misplaced, websocket=transport == "websocket"
        )
        return json_error(401, "unauthorized", message=message)
