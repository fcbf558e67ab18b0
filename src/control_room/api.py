"""REST routes on the service's port: thin reads of the poller, broker, hub and metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_room import logging as logs
from control_room.auth import Principal
from control_room.broker.base import Broker, HistoryGone
from control_room.metrics import Metrics
from control_room.models import encode
from control_room.poller import Poller
from control_room.responses import json_error, not_ready
from control_room.server.guard import Guard
from control_room.store.base import StoreError
from control_room.ws.hub import Hub
from control_room.ws.params import BadParameter, parse_seq

RETRY_STORE_S: Final = 5  # a store outage is retried by the poller each interval, too
MAX_DELTAS_PER_PAGE: Final = 1_000  # one response stays a few MB at most
JSON: Final = "application/json"

log = logs.get("api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    """A response from JSON already encoded (by msgspec, once)."""
    return web.Response(body=body, status=status, content_type=JSON)


class Api:
    """The REST endpoints; each checks the bearer token itself unless it is public."""

    def __init__(
        self,
        *,
        guard: Guard,
        poller: Poller,
        broker: Broker,
        hub: Hub,
        metrics: Metrics,
        metrics_public: bool,
        stats_extra: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self._guard = guard
        self._poller = poller
        self._broker = broker
        self._hub = hub
        self._metrics = metrics
        self._metrics_public = metrics_public
        self._stats_extra = stats_extra
        self._started = time.time()

    def routes(self) -> list[web.RouteDef]:
        """The route table."""
        a = self._authed
        return [
            web.get("/api/sessions", a(self.sessions)),
            web.get("/api/sessions/{id}", a(self.session)),
            web.get("/api/deltas", a(self.deltas)),
            web.get("/api/stats", a(self.stats)),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics if self._metrics_public else a(self.metrics)),
        ]

    def _authed(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            # Checked on every request against the tokens in force: a revoked token is
            # refused at once. 429/401 come from the guard (Retry-After, WWW-Authenticate).
            auth = self._guard.rest(request)
            if not isinstance(auth, Principal):
                return auth
            return await handler(request)

        return guarded

    async def sessions(self, request: web.Request) -> web.StreamResponse:
        """The current snapshot and the position it corresponds to."""
        if not self._poller.ready:
            return not_ready()
        position = self._broker.position  # read together with sessions: no await between
        body = {
            "sessions": list(self._poller.sessions.values()),
            "seq": position.seq,
            "epoch": position.epoch,
        }
        return json_bytes(encode(body))

    async def session(self, request: web.Request) -> web.StreamResponse:
        """One session by id."""
        sid = request.match_info["id"]
        found = self._poller.sessions.get(sid)
        if found is None:
            return json_error(404, "not_found", message=f"no session {sid!r}")
        return json_bytes(encode(found))

    async def deltas(self, request: web.Request) -> web.StreamResponse:
        """History after `since`, oldest first; 410 when `since` is older than retained."""
        position = self._broker.position
        try:
            since = parse_seq("since", request.query.get("since", "0"))
            limit = parse_seq("limit", request.query.get("limit", str(MAX_DELTAS_PER_PAGE)))
        except BadParameter as exc:
            return json_error(400, "bad_request", parameter=exc.parameter, message=str(exc))
        if since > position.seq:
            return json_error(
                400,
                "bad_request",
                parameter="since",
                message=f"since: {since} is ahead of the stream (seq {position.seq})",
            )
        session_id = request.query.get("sessionId") or None
        try:
            entries = await self._broker.history(since, min(limit, MAX_DELTAS_PER_PAGE), session_id)
        except HistoryGone as exc:
            return json_error(
                410,
                "gone",
                reason=exc.reason,
                oldestSeq=exc.oldest_seq,
                epoch=position.epoch,
                seq=position.seq,
                message="since is older than the retained history; reload /api/sessions",
            )
        except StoreError as exc:
            # Older history lives only in the store: not gone, just unreachable for now.
            log.warning("History read failed; store unavailable", extra={"error": str(exc)})
            response = json_error(
                503, "store_unavailable", message="history older than memory needs the store"
            )
            response.headers["Retry-After"] = str(RETRY_STORE_S)
            return response
        # Payloads are already JSON: splice them instead of decoding and encoding again.
        head = encode({"epoch": position.epoch, "seq": position.seq})[:-1]
        body = head + b',"deltas":[' + b",".join(e.payload for e in entries) + b"]}"
        return json_bytes(body)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness, with the upstream's state: `ok` or `degraded` (still 200)."""
        h = self._poller.health
        body = {
            "status": "degraded" if h.degraded else "ok",
            "upstream": {
                "lastSuccess": h.last_success,
                "lastError": h.last_error,
                "consecutiveFailures": h.consecutive_failures,
                "sessions": h.sessions,
                "nextPollAt": h.next_poll_at,
            },
            "store": {"error": h.store_error},
            "clients": len(self._hub),
        }
        return json_bytes(encode(body))

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """200 once the first poll succeeded and the store (if any) is writable."""
        reason: str | None = None
        if not self._poller.ready:
            reason = "the first poll has not completed"
        elif self._poller.health.store_error is not None:
            reason = f"store: {self._poller.health.store_error}"
        if reason is not None:
            return json_error(503, "not_ready", message=reason)
        return json_bytes(encode({"status": "ready"}))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Prometheus text exposition."""
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """A human-readable view of the service: position, upstream, clients, totals."""
        now = time.time()
        h = self._poller.health
        position = self._broker.position
        hub = self._hub
        body: dict[str, object] = {
            "uptimeSeconds": round(now - self._started, 3),
            "position": {"epoch": position.epoch, "seq": position.seq},
            "upstream": {
                "lastSuccess": h.last_success,
                "lastError": h.last_error,
                "lastErrorTime": h.last_error_time,
                "consecutiveFailures": h.consecutive_failures,
                "sessionsTracked": h.sessions,
            },
            "clients": [
                {
                    "id": c.id,
                    "remote": c.remote,
                    "connectedSince": c.connected_at,
                    "connectedSeconds": round(now - c.connected_at, 3),
                    "messagesSent": c.messages_sent,
                    "bytesSent": c.bytes_sent,
                    "bytesPending": c.pending_bytes,
                }
                for c in hub.connections.values()
            ],
            "broadcast": {
                "broadcasts": hub.broadcasts,
                "messagesSent": hub.messages_sent,
                "bytesSent": hub.bytes_sent,
            },
        }
        if self._stats_extra is not None:
            body.update(self._stats_extra())
        return json_bytes(encode(body))
