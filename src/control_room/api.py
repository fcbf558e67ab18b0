"""REST routes on the service's port: thin reads of the state, broker, hub and metrics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_room import logging as logs
from control_room.auth import Principal
from control_room.broker.base import Broker, BrokerUnavailable, HistoryGone
from control_room.commands import Caller, Commands, upstream_message
from control_room.health import REDIS_UNAVAILABLE, STORE_UNAVAILABLE
from control_room.jules.actions import Source
from control_room.jules.activities import ActivityListing, BadActivity, decode_activity, patches_of
from control_room.jules.client import UpstreamError
from control_room.jules.requests import RequestCounter
from control_room.messages import (
    ActivityDetail,
    ActivityPage,
    ArchivedSessions,
    BadMessage,
    Command,
    CreateSession,
    SessionList,
    decode_command,
)
from control_room.metrics import Metrics
from control_room.models import Activity, encode
from control_room.poller import Poller
from control_room.responses import json_error, not_ready
from control_room.server.guard import Guard
from control_room.state import State
from control_room.store.base import StoreError
from control_room.ws.hub import Hub
from control_room.ws.params import AHEAD_OF_SERVER, BadParameter, parse_seq

TIMELINE_PENDING_RETRY_S: Final = 1
"""Jules' 404 on a new session's activities lasts well under a second or two."""
RETRY_STORE_S: Final = 5  # a store outage is retried by the poller each interval, too
MAX_DELTAS_PER_PAGE: Final = 1_000  # one response stays a few MB at most
DEFAULT_ACTIVITIES_PER_PAGE: Final = 100  # a whole timeline of a typical session
MAX_ACTIVITIES_PER_PAGE: Final = 500
DEFAULT_ARCHIVED_PER_PAGE: Final = 30  # a panel's worth; "Load more" reads on
MAX_ARCHIVED_PER_PAGE: Final = 100  # Jules' own maximum pageSize for sessions.list
MAX_PAGE_TOKEN_CHARS: Final = 1_024
"""Jules' page tokens are opaque and short (tens of characters); a longer one is not one
of theirs, and is refused before it costs a request."""
"""An activity is at most a few KB pushed (patches are cut to file summaries), so a page
stays around a megabyte at most."""
ACTIVITY_ID: Final = re.compile(r"[A-Za-z0-9_.~-]{1,128}")
"""Jules activity ids are 32 hex characters; anything that could change the upstream path
(`/`, `..` as a whole, `%`) is refused before a request is made."""
JSON: Final = "application/json"


class TimelineReader(Protocol):
    """Where whole timelines and single activities are read from (the Jules client)."""

    async def list_activities(self, session_id: str, after: str | None) -> ActivityListing | None:
        """Every activity after `after` (all when None); None when Jules has none yet."""

    async def get_activity(self, session_id: str, activity_id: str) -> msgspec.Raw | None:
        """One raw activity; None when it does not exist."""


PRINCIPAL: Final = web.RequestKey("principal", Principal)  # who a request is, for commands
SESSION_ACTIONS: Final = {
    "approvePlan": "approvePlan",
    "sendMessage": "sendMessage",
    "archive": "archiveSession",
    "unarchive": "unarchiveSession",
}
"""REST custom methods (`/api/sessions/{id}:<action>`) -> the command they run."""
ERROR_STATUS: Final[dict[str, int]] = {
    "bad_message": 400,
    "unknown_type": 400,
    "invalid_argument": 400,
    "not_found": 404,
    "failed_precondition": 409,
    "forbidden": 403,
    "rate_limited": 429,
    "upstream_unavailable": 502,
    "internal": 500,
}
"""The HTTP status of each command error code on the REST side."""

log = logs.get("api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    """A response from JSON already encoded (by msgspec, once)."""
    return web.Response(body=body, status=status, content_type=JSON)


class Api:
    """The REST endpoints; each checks the bearer token itself unless it is public."""

    def __init__(
        self,
        *,
        guard: Guard,
        state: State,
        broker: Broker,
        hub: Hub,
        metrics: Metrics,
        metrics_public: bool,
        stats_extra: Callable[[], dict[str, object]] | None = None,
        commands: Commands | None = None,
        sources: Callable[[], Awaitable[list[Source]]] | None = None,
        archived: Callable[[int, str | None], Awaitable[ArchivedSessions]] | None = None,
        timelines: TimelineReader | None = None,
        requests: RequestCounter | None = None,
        poller: Callable[[], Poller | None] = lambda: None,
    ) -> None:
        self._commands = commands
        self._timelines = timelines
        self._requests = requests
        self._poller = poller
        self._sources = sources
        self._archived = archived
        self._guard = guard
        self._state = state  # a follower node has no poller: everything reads the state
        self._broker = broker
        self._hub = hub
        self._metrics = metrics
        self._metrics_public = metrics_public
        self._stats_extra = stats_extra
        self._started = time.time()
        # One read of a session's whole timeline at a time, however many ask for it.
        self._timeline_reads: dict[str, asyncio.Task[list[Activity] | None]] = {}

    def routes(self) -> list[web.RouteDef]:
        """The route table."""
        a = self._authed
        return [
            web.get("/api/sessions", a(self.sessions)),
            # Before `{id}`: routes match in order, and Jules' ids are digits.
            web.get("/api/sessions/archived", a(self.archived_sessions)),
            web.get("/api/sessions/{id}", a(self.session)),
            web.get("/api/sessions/{id}/activities", a(self.activities)),
            web.get("/api/sessions/{id}/activities/{activity_id}", a(self.activity)),
            web.get("/api/deltas", a(self.deltas)),
            web.get("/api/stats", a(self.stats)),
            web.post("/api/sessions", a(self.create_session)),
            # `{id}:approvePlan` is one path segment (Google's custom-method style).
            web.post("/api/sessions/{id_action}", a(self.session_action)),
            web.delete("/api/sessions/{id}", a(self.delete_session)),
            web.get("/api/sources", a(self.list_sources)),
            web.get("/api/me", a(self.me)),
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
            request[PRINCIPAL] = auth  # commands check its rights
            return await handler(request)

        return guarded

    async def sessions(self, request: web.Request) -> web.StreamResponse:
        """The current snapshot and the position it corresponds to."""
        if not self._state.ready:
            return not_ready(self._state.health)
        position = self._broker.position  # read together with sessions: no await between
        body = SessionList(
            sessions=list(self._state.sessions.values()),
            seq=position.seq,
            epoch=position.epoch,
            activitiesSeq=position.activities_seq,
        )
        return json_bytes(encode(body))

    async def session(self, request: web.Request) -> web.StreamResponse:
        """One session by id; 503 `not_ready` before the first complete listing (an id not
        yet known is not yet a 404)."""
        if not self._state.ready:
            return not_ready(self._state.health)
        sid = request.match_info["id"]
        found = self._state.sessions.get(sid)
        if found is None:
            return json_error(404, "not_found", message="no such session")
        return json_bytes(encode(found))

    async def activities(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/sessions/{id}/activities?pageSize=&pageToken=`: the session's timeline,
        oldest first, paged (`ActivityPage`).

        Served from memory when the whole timeline is held; otherwise read whole from Jules
        (every page), kept, and served. `activitiesSeq` is the activities channel's position
        the page was read at: apply live `activity` messages after it, skipping ids already
        in the timeline. 404 for an unknown session, 400 for a bad parameter, 502 when Jules
        cannot be read.
        """
        sid = request.match_info["id"]
        state = self._state
        if not state.ready:
            return not_ready(state.health)
        if sid not in state.sessions:
            return json_error(404, "not_found", message="no such session")
        try:
            size = parse_seq(
                "pageSize", request.query.get("pageSize", str(DEFAULT_ACTIVITIES_PER_PAGE))
            )
            offset = parse_seq("pageToken", request.query.get("pageToken") or "0")
        except BadParameter as exc:
            return json_error(400, "bad_request", parameter=exc.parameter, message=str(exc))
        if not 1 <= size <= MAX_ACTIVITIES_PER_PAGE:
            return json_error(
                400,
                "bad_request",
                parameter="pageSize",
                message=f"pageSize: expected an integer from 1 to {MAX_ACTIVITIES_PER_PAGE}",
            )
        timeline = state.peek_timeline(sid)
        pending = False
        if timeline is not None and timeline.complete:
            activities = timeline.activities
        else:
            try:
                read = await self._read_timeline(sid)
            except UpstreamError as exc:
                return json_error(502, "upstream_unavailable", message=upstream_message(exc))
            if sid not in state.sessions:
                return json_error(404, "not_found", message="no such session")
            activities = read or []
            pending = read is None
        # Read together with the activities, with no await between: a consistent pair.
        position = self._broker.position
        end = offset + size
        page = ActivityPage(
            sessionId=sid,
            activities=activities[offset:end],
            nextPageToken=str(end) if end < len(activities) else None,
            activitiesSeq=position.activities_seq,
            pending=pending,
        )
        response = json_bytes(encode(page))
        if pending:
            response.headers["Retry-After"] = str(TIMELINE_PENDING_RETRY_S)
        return response

    async def _read_timeline(self, sid: str) -> list[Activity] | None:
        """A session's whole timeline read from Jules and kept in the state; None when Jules
        has none yet (404 right after a create). Concurrent callers share one read."""
        task = self._timeline_reads.get(sid)
        if task is None:
            task = asyncio.create_task(self._fetch_timeline(sid))
            self._timeline_reads[sid] = task
            task.add_done_callback(lambda done: self._timeline_read_done(sid, done))
        return await asyncio.shield(task)

    def _timeline_read_done(self, sid: str, task: asyncio.Task[list[Activity] | None]) -> None:
        self._timeline_reads.pop(sid, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a read whose callers all left logs nothing

    async def _fetch_timeline(self, sid: str) -> list[Activity] | None:
        if self._timelines is None:
            raise UpstreamError("network", "no upstream to read timelines from")
        listing = await self._timelines.list_activities(sid, None)
        if listing is None:
            return None
        if sid not in self._state.sessions:
            return listing.activities
        timeline = self._state.adopt_timeline(sid, listing.activities)
        # A timeline longer than the state keeps is served from this read, whole.
        return timeline.activities if timeline.complete else listing.activities

    async def activity(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/sessions/{id}/activities/{activityId}`: one activity, read from Jules,
        with its whole patches (`ActivityDetail`). 404 for an unknown session or activity,
        502 when Jules cannot be read or sends an unusable activity."""
        sid, aid = request.match_info["id"], request.match_info["activity_id"]
        if sid not in self._state.sessions:
            return json_error(404, "not_found", message="no such session")
        if self._timelines is None:
            return json_error(503, "commands_unavailable", message="no upstream to ask")
        if not ACTIVITY_ID.fullmatch(aid) or aid in (".", ".."):
            return json_error(404, "not_found", message="no such activity")
        try:
            raw = await self._timelines.get_activity(sid, aid)
        except UpstreamError as exc:
            return json_error(502, "upstream_unavailable", message=upstream_message(exc))
        if raw is None:
            return json_error(404, "not_found", message="no such activity in this session")
        try:
            activity = decode_activity(raw, sid)
        except BadActivity as exc:
            return json_error(502, "upstream_bad_response", message=f"Jules sent {exc}")
        detail = ActivityDetail(sessionId=sid, activity=activity, patches=patches_of(raw))
        return json_bytes(encode(detail))

    async def _run(self, request: web.Request, command: Command) -> web.StreamResponse:
        if self._commands is None:
            return json_error(503, "commands_unavailable", message="no upstream to send to")
        principal = request[PRINCIPAL]
        caller = Caller(read_only=principal.read_only, name=f"rest {principal.fingerprint}")
        result = await self._commands.run(caller, command)
        if result.error is not None:
            status = ERROR_STATUS.get(result.error.code, 400)
            return json_error(status, result.error.code, message=result.error.message)
        if result.session is None:
            return web.Response(status=204)
        return json_bytes(
            encode(result.session), 201 if isinstance(command, CreateSession) else 200
        )

    async def _command(
        self, request: web.Request, kind: str, fields: dict[str, object]
    ) -> web.StreamResponse:
        """Decode a REST body into the same command the WebSocket takes, then run it."""
        body: object = {}
        if request.can_read_body:
            raw = await request.read()
            try:
                body = msgspec.json.decode(raw) if raw.strip() else {}
            except msgspec.DecodeError:
                return json_error(400, "bad_message", message="the body is not valid JSON")
        if not isinstance(body, dict):
            return json_error(400, "bad_message", message="the body must be a JSON object")
        try:
            command = decode_command(encode({**body, **fields, "type": kind}))
        except BadMessage as exc:
            return json_error(400, exc.code, message=str(exc))
        return await self._run(request, command)

    async def create_session(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/sessions` with `{prompt, repository?, branch?, title?, ...}`."""
        return await self._command(request, "createSession", {})

    async def session_action(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/sessions/{id}:approvePlan` (`:sendMessage`, `:archive`, `:unarchive`)."""
        sid, _, action = request.match_info["id_action"].partition(":")
        kind = SESSION_ACTIONS.get(action)
        if kind is None:
            known = ", ".join(f":{a}" for a in SESSION_ACTIONS)
            return json_error(404, "not_found", message=f"no such action; known: {known}")
        return await self._command(request, kind, {"sessionId": sid})

    async def delete_session(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /api/sessions/{id}`."""
        return await self._command(
            request, "deleteSession", {"sessionId": request.match_info["id"]}
        )

    async def me(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/me`: what the presented token may do, so a client can hide controls it
        would be refused (never the token or its fingerprint). `{"readOnly": bool,
        "commands": bool}`: `commands` is true when this token's commands would run (the
        service has an upstream to send them to, and the token is not read-only)."""
        principal = request[PRINCIPAL]
        may_command = self._commands is not None and not principal.read_only
        body = {"readOnly": principal.read_only, "commands": may_command}
        return json_bytes(encode(body))

    async def list_sources(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/sources`: the repositories Jules can work on (for the create form)."""
        if self._sources is None:
            return json_error(503, "commands_unavailable", message="no upstream to ask")
        try:
            sources = await self._sources()
        except UpstreamError as exc:
            return json_error(502, "upstream_unavailable", message=upstream_message(exc))
        return json_bytes(encode({"sources": sources}))

    async def archived_sessions(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/sessions/archived?pageSize=&pageToken=`: one page of the archived
        sessions, read from Jules on each call (`ArchivedSessions`); they are not polled.

        400 for a bad parameter, 502 when Jules cannot be read, 503 without an upstream.
        """
        if self._archived is None:
            return json_error(503, "commands_unavailable", message="no upstream to ask")
        try:
            size = parse_seq(
                "pageSize", request.query.get("pageSize", str(DEFAULT_ARCHIVED_PER_PAGE))
            )
        except BadParameter as exc:
            return json_error(400, "bad_request", parameter=exc.parameter, message=str(exc))
        if not 1 <= size <= MAX_ARCHIVED_PER_PAGE:
            return json_error(
                400,
                "bad_request",
                parameter="pageSize",
                message=f"pageSize: expected an integer from 1 to {MAX_ARCHIVED_PER_PAGE}",
            )
        token = request.query.get("pageToken") or None
        if token is not None and (
            len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii() or not token.isprintable()
        ):
            return json_error(
                400,
                "bad_request",
                parameter="pageToken",
                message="pageToken: expected a nextPageToken from an earlier page",
            )
        try:
            page = await self._archived(size, token)
        except UpstreamError as exc:
            return json_error(502, "upstream_unavailable", message=upstream_message(exc))
        return json_bytes(encode(page))

    async def deltas(self, request: web.Request) -> web.StreamResponse:
        """History after `since`, oldest first; 410 when `since` is older than retained."""
        position = self._broker.position
        try:
            since = parse_seq("since", request.query.get("since", "0"))
            limit = parse_seq("limit", request.query.get("limit", str(MAX_DELTAS_PER_PAGE)))
        except BadParameter as exc:
            return json_error(400, "bad_request", parameter=exc.parameter, message=str(exc))
        if since > position.seq:
            await self._broker.reach(since)  # a lagging cluster node catches up first
            position = self._broker.position
        if since > position.seq:
            # The server is behind the client (a store restored from a backup): what the
            # client holds cannot be trusted, so it reloads, as for expired history.
            return json_error(
                410,
                "gone",
                reason=AHEAD_OF_SERVER,
                oldestSeq=position.seq + 1,
                epoch=position.epoch,
                seq=position.seq,
                message=f"since {since} is ahead of the server (seq {position.seq});"
                " reload /api/sessions",
            )
        session_id = request.query.get("sessionId")
        if session_id is not None and not session_id.strip():
            return json_error(
                400, "bad_request", parameter="sessionId", message="sessionId: must not be empty"
            )
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
        except BrokerUnavailable:
            response = json_error(
                503, "redis_unavailable", message="history is in Redis, which is not answering"
            )
            response.headers["Retry-After"] = str(RETRY_STORE_S)
            return response
        except StoreError as exc:
            # Older history lives only in the store: not gone, just unreachable for now.
            log.warning("History read failed; store unavailable", extra={"error": str(exc)})
            response = json_error(
                503, "store_unavailable", message="history older than memory needs the store"
            )
            response.headers["Retry-After"] = str(RETRY_STORE_S)
            return response
        # Payloads are already JSON: splice them instead of decoding and encoding again.
        head = encode(
            {"epoch": position.epoch, "seq": position.seq, "activitiesSeq": position.activities_seq}
        )[:-1]
        body = head + b',"deltas":[' + b",".join(e.payload for e in entries) + b"]}"
        return json_bytes(body)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness, always 200: `ok`, or `degraded` with the reasons (stable names, no text).

        Unauthenticated, so it carries no error text, no host name and no counts of
        sessions or clients (how much the account holds, how many watch it): those are in
        the logs and in /api/stats.
        """
        h = self._state.health
        now = time.time()
        reasons = h.reasons(now)
        body = {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "upstream": {
                "lastSuccess": h.last_success,
                "consecutiveFailures": h.consecutive_failures,
                "retryInSeconds": _rounded(h.retry_in(now)),
                "nextPollAt": h.next_poll_at,
                "lastPollSeconds": _rounded(h.last_poll_seconds),
            },
        }
        return json_bytes(encode(body))

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """200 once the first poll succeeded and the store (if any) is writable; else 503.

        The 503 names only reasons (no error text): this route needs no token.
        """
        h = self._state.health
        if not h.baseline_done:  # and why not: the upstream's failure, the store's
            return json_error(503, "not_ready", reasons=h.reasons())
        if h.store_error is not None:
            return json_error(503, "not_ready", reasons=[STORE_UNAVAILABLE])
        if h.broker_error is not None:  # a cluster node cut off from Redis hears of nothing
            return json_error(503, "not_ready", reasons=[REDIS_UNAVAILABLE])
        return json_bytes(encode({"status": "ready"}))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Prometheus text exposition."""
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """A human-readable view of the service: position, upstream, clients, totals."""
        now = time.time()
        h = self._state.health
        requests = self._requests
        poller = self._poller()  # None on a follower node: the leader polls
        position = self._broker.position
        hub = self._hub
        body: dict[str, object] = {
            "uptimeSeconds": round(now - self._started, 3),
            "position": {
                "epoch": position.epoch,
                "seq": position.seq,
                "activitiesSeq": position.activities_seq,
            },
            "upstream": {
                "reasons": h.reasons(now),
                "lastSuccess": h.last_success,
                "lastError": h.last_error,
                "lastErrorKind": h.last_error_kind,
                "lastErrorTime": h.last_error_time,
                "consecutiveFailures": h.consecutive_failures,
                "retryInSeconds": _rounded(h.retry_in(now)),
                "lastPollSeconds": _rounded(h.last_poll_seconds),
                "sessionsTracked": h.sessions,
                "undecodableSessions": h.undecodable,
                "unconfirmedSessions": h.unconfirmed,
                "incompleteListing": h.listing_cut,
                "storeError": h.store_error,
                "requestsLastMinute": requests.last_minute() if requests is not None else None,
                "requestsTotal": requests.totals if requests is not None else None,
            },
            "polling": None
            if poller is None
            else {
                "pollIntervalSeconds": h.interval,
                "fullListingIntervalSeconds": poller.full_listing_interval,
                "lastCompleteListing": poller.last_complete_listing,
                "hotSessionsRead": poller.hot_read,
                "hotSessionsDeferred": poller.hot_deferred,
                "activityReadsDue": poller.activity_reads_due,
                "stalledSessions": sum(
                    1 for s in self._state.sessions.values() if s.stalledSince is not None
                ),
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
