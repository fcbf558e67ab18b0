"""The simulator over HTTP: the real API's paths, checks and Google error envelope, in aiohttp.

Every request under `/v1alpha` is counted by kind on arrival (`sim.requests`), then needs the
API key, then takes the next armed fault (`sim.faults`), then is answered from the engine.
Errors are Google's envelope `{"error": {"code", "message", "status", "details"?}}`:

- 400 INVALID_ARGUMENT: a bad body, page size, page token or filter, an unknown JSON field
  (Google's JSON parsing refuses them: a client sending `{"message"}` to `:sendMessage` learns
  at once), a bad `automationMode`; `details` carry a `google.rpc.BadRequest` field violation.
- 400 FAILED_PRECONDITION: `:approvePlan` when no plan awaits approval; `:sendMessage` to a
  FAILED session.
- 401 UNAUTHENTICATED: a missing or wrong key, with the real API's misleading message and a
  `google.rpc.ErrorInfo` (`reason: CREDENTIALS_MISSING`).
- 404 NOT_FOUND, "Requested entity was not found.": an unknown session, activity or source,
  a session created less than `sim.activities_not_found_for` seconds ago (its activities),
  an unknown path or method. Creating a session on a source that is not connected is a 404
  too: the session names an entity that does not exist (a malformed source name is a 400).

`GET /_sim/stats` (outside `/v1alpha`, not counted, no faults, key required) answers
`sim.stats()`: request counts by kind and what the simulator holds.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import msgspec
from aiohttp import web

from control_room.jules.simulator import accounting as kinds
from control_room.jules.simulator.content import SOURCE_PREFIX, Resource
from control_room.jules.simulator.engine import AUTO_CREATE_PR, Simulator
from control_room.jules.simulator.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from control_room.jules.simulator.faults import GARBAGE_BODY, GARBAGE_CONTENT_TYPE, Fault
from control_room.jules.simulator.filters import (
    archived_filter,
    create_time_filter,
    name_filter,
)
from control_room.jules.simulator.paging import (
    ACTIVITIES,
    DEFAULT_ACTIVITY_PAGE_SIZE,
    DEFAULT_PAGE_SIZE,
    DEFAULT_SOURCE_PAGE_SIZE,
    MAX_ACTIVITY_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_SOURCE_PAGE_SIZE,
    SESSIONS,
    SOURCES,
    decode_page_token,
    encode_page_token,
    parse_page_size,
)

API_PREFIX: Final = "/v1alpha"
API_KEY_HEADER: Final = "X-Goog-Api-Key"
STATS_PATH: Final = "/_sim/stats"

GOOGLE_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# The texts Google's front end answers with, word for word where we know them.
NOT_FOUND_MESSAGE: Final = "Requested entity was not found."
UNAUTHENTICATED_MESSAGE: Final = (
    "API keys are not supported by this API. Expected OAuth2 access token or other "
    "authentication credentials that assert a principal. "
    "See https://cloud.google.com/docs/authentication"
)
QUOTA_MESSAGE: Final = "Quota exceeded for requests per minute."
FAULT_MESSAGES: Final = {
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "The request timed out.",
}
SERVICE: Final = "jules.googleapis.com"
ERROR_INFO: Final = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST: Final = "type.googleapis.com/google.rpc.BadRequest"
AUTOMATION_MODES: Final = frozenset({"AUTOMATION_MODE_UNSPECIFIED", AUTO_CREATE_PR})
AUTOMATION_MODE_TYPE: Final = "type.googleapis.com/google.labs.jules.v1alpha.AutomationMode"

# The fields Google's JSON parsing knows, per message; any other is a 400.
SESSION_FIELDS: Final = frozenset(
    {
        "name",
        "id",
        "prompt",
        "title",
        "sourceContext",
        "requirePlanApproval",
        "automationMode",
        "state",
        "url",
        "outputs",
        "createTime",
        "updateTime",
        "archived",
    }
)
SOURCE_CONTEXT_FIELDS: Final = frozenset(
    {"source", "githubRepoContext", "workingBranch", "environmentVariablesEnabled"}
)
GITHUB_REPO_CONTEXT_FIELDS: Final = frozenset({"startingBranch"})
SEND_MESSAGE_FIELDS: Final = frozenset({"prompt"})
EMPTY_FIELDS: Final = frozenset[str]()

# Route names; the request kind of most is fixed, the list and actions depend on the request.
_ROUTE_KINDS: Final = {
    "get": kinds.GET_SESSION,
    "delete": kinds.DELETE,
    "create": kinds.CREATE,
    "activities": kinds.LIST_ACTIVITIES,
    "activity": kinds.GET_ACTIVITY,
    "sources": kinds.LIST_SOURCES,
    "source": kinds.GET_SOURCE,
}
_ACTION_KINDS: Final = {
    "approvePlan": kinds.APPROVE,
    "sendMessage": kinds.MESSAGE,
    "archive": kinds.ARCHIVE,
    "unarchive": kinds.UNARCHIVE,
}

_encode: Final = msgspec.json.Encoder().encode


class _ApiError(Exception):
    def __init__(
        self,
        code: int,
        message: str,
        status: str | None = None,
        details: list[Resource] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or GOOGLE_STATUS.get(code, "UNKNOWN")
        self.details = details


def error_envelope(
    code: int, message: str, status: str | None = None, details: list[Resource] | None = None
) -> Resource:
    """Google's error envelope: `{"error": {"code", "message", "status", "details"?}}`."""
    error: Resource = {
        "code": code,
        "message": message,
        "status": status or GOOGLE_STATUS.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _error_info(reason: str) -> Resource:
    return {"@type": ERROR_INFO, "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": SERVICE}}  # fmt: skip


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encode(body), status=status, content_type="application/json", headers=headers
    )


def _error(error: _ApiError, headers: dict[str, str] | None = None) -> web.Response:
    envelope = error_envelope(error.code, error.message, error.status, error.details)
    return _json(envelope, error.code, headers)


def _invalid(exc: InvalidArgument) -> _ApiError:
    details = None
    if exc.field is not None:
        violation = {"field": exc.field, "description": str(exc)}
        details = [{"@type": BAD_REQUEST, "fieldViolations": [violation]}]
    return _ApiError(400, str(exc), details=details)


UNAUTHENTICATED: Final = _ApiError(
    401, UNAUTHENTICATED_MESSAGE, details=[_error_info("CREDENTIALS_MISSING")]
)


def _fault_response(fault: Fault) -> web.Response | None:
    if fault.kind == "fail":
        message = FAULT_MESSAGES.get(fault.status, "Injected failure.")
        return _error(_ApiError(fault.status, message))
    if fault.kind == "rate_limit":
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        error = _ApiError(429, QUOTA_MESSAGE, details=[_error_info("RATE_LIMIT_EXCEEDED")])
        return _error(error, headers)
    if fault.kind == "garbage":
        return web.Response(body=GARBAGE_BODY, headers={"Content-Type": GARBAGE_CONTENT_TYPE})
    if fault.kind == "wrong_shape":
        return _json(fault.body)
    return None  # delay: answered normally, late


def _listing(field: str, items: list[Resource], next_page_token: str | None) -> web.Response:
    """A list response as Google writes it: empty parts left out (an empty list is `{}`)."""
    body: Resource = {}
    if items:
        body[field] = items
    if next_page_token is not None:
        body["nextPageToken"] = next_page_token
    return _json(body)


def _cursor(query: Mapping[str, str], kind: str) -> tuple[int, int, str]:
    """The `pageToken` as (page index, position, key); (0, 0, "") for the first page."""
    token = query.get("pageToken", "")
    return decode_page_token(token, kind) if token else (0, 0, "")


def _kind_of(request: web.Request) -> str:
    """The request kind to count (see `accounting`)."""
    name = request.match_info.route.name
    if name == "list":
        return kinds.LIST_NEXT_PAGE if request.query.get("pageToken") else kinds.LIST_FIRST_PAGE
    if name == "action":
        _, _, action = request.match_info["id_action"].partition(":")
        return _ACTION_KINDS.get(action, kinds.UNKNOWN)
    if name in ("get", "delete") and ":" in request.match_info["id_action"]:
        return kinds.UNKNOWN
    return _ROUTE_KINDS.get(name or "", kinds.UNKNOWN)


def _check_fields(body: Resource, known: frozenset[str], message: str) -> None:
    for key in body:
        if key not in known:
            raise InvalidArgument(
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{message}': "
                "Cannot find field.",
                field=f"{message}.{key}" if message else key,
            )


async def _read_object(request: web.Request, *, required: bool) -> Resource:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise InvalidArgument("Request body is required.")
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidArgument("Invalid JSON payload received. Body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("Invalid JSON payload received. Expected an object.")
    return body


def _optional(body: Resource, key: str, kind: type, field: str) -> object:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise InvalidArgument(f"Invalid value at '{field}': {value!r}.", field=field)
    return value


def _source_of(context: object) -> tuple[str | None, str | None]:
    """`sourceContext` -> (source name, starting branch); (None, None) for a repoless session."""
    if context is None:
        return None, None
    if not isinstance(context, dict):
        raise InvalidArgument("sourceContext must be an object.", field="session.source_context")
    _check_fields(context, SOURCE_CONTEXT_FIELDS, "session.source_context")
    source = context.get("source")
    repo = source.removeprefix(SOURCE_PREFIX) if isinstance(source, str) else ""
    owner, _, name = repo.partition("/")
    if not source or not source.startswith(SOURCE_PREFIX) or not owner or not name or "/" in name:
        raise InvalidArgument(
            f"sourceContext.source must be sources/github/{{owner}}/{{repo}}, not {source!r}.",
            field="session.source_context.source",
        )
    github = context.get("githubRepoContext") or {}
    if not isinstance(github, dict):
        raise InvalidArgument(
            "githubRepoContext must be an object.", field="session.source_context"
        )
    _check_fields(github, GITHUB_REPO_CONTEXT_FIELDS, "session.source_context.github_repo_context")
    branch = _optional(github, "startingBranch", str, "session.source_context.github_repo_context")
    return source, (branch or None) if isinstance(branch, str) else None


class _Api:
    """The route handlers, bound to one simulator and key."""

    def __init__(self, sim: Simulator, api_key: str) -> None:
        self.sim = sim
        self._key = api_key.encode()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count, check the key, apply the next fault, and turn errors into Google's envelope."""
        internal = request.path.startswith("/_sim/")
        kind = _kind_of(request)
        if not internal:
            self.sim.requests[kind] += 1
        given = request.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(given, self._key):
            return _error(UNAUTHENTICATED)
        if not internal:
            fault = self.sim.faults.take(kind)
            if fault is not None:
                if fault.kind == "delay":
                    await asyncio.sleep(fault.seconds)
                else:
                    response = _fault_response(fault)
                    if response is not None:
                        return response
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error(exc)
        except NotFound:
            return _error(_ApiError(404, NOT_FOUND_MESSAGE))
        except FailedPrecondition as exc:
            return _error(_ApiError(400, str(exc), "FAILED_PRECONDITION"))
        except InvalidArgument as exc:
            return _error(_invalid(exc))
        except web.HTTPException as exc:  # routing: unknown path or method
            # Google answers an unknown method on a known path as an unknown resource.
            code = 404 if exc.status in (404, 405) else exc.status
            return _error(_ApiError(code, NOT_FOUND_MESSAGE if code == 404 else exc.reason))

    # -- sessions --

    async def list_sessions(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions: one page, newest first; `filter=archived = true` lists the archived."""
        query = request.query
        size = parse_page_size(query.get("pageSize"), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        archived = archived_filter(query.get("filter"))
        page_index, neg_ns, sid = _cursor(query, SESSIONS)
        fault = self.sim.faults.take_page(page_index)
        if fault is not None:
            response = _fault_response(fault)
            if response is not None:
                return response
        after = (neg_ns, sid) if page_index else None
        sessions, resume = self.sim.list_page(size, after, archived=archived)
        token = encode_page_token(SESSIONS, page_index + 1, *resume) if resume else None
        return _listing("sessions", sessions, token)

    def _session_id(self, request: web.Request) -> str:
        value = request.match_info["id_action"]
        if ":" in value:
            raise _ApiError(404, NOT_FOUND_MESSAGE)
        return value

    async def get_session(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions/{id}."""
        return _json(self.sim.get(self._session_id(request)))

    async def delete_session(self, request: web.Request) -> web.StreamResponse:
        """DELETE /sessions/{id}: gone for good; answers `{}`."""
        self.sim.delete(self._session_id(request))
        return _json({})

    async def create_session(self, request: web.Request) -> web.StreamResponse:
        """POST /sessions: the new session (QUEUED)."""
        body = await _read_object(request, required=True)
        _check_fields(body, SESSION_FIELDS, "session")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgument("prompt is required.", field="session.prompt")
        title = _optional(body, "title", str, "session.title")
        approval = _optional(body, "requirePlanApproval", bool, "session.require_plan_approval")
        mode = body.get("automationMode", "AUTOMATION_MODE_UNSPECIFIED")
        if mode not in AUTOMATION_MODES:
            raise InvalidArgument(
                f"Invalid value at 'session.automation_mode' ({AUTOMATION_MODE_TYPE}), {mode!r}",
                field="session.automation_mode",
            )
        source, branch = _source_of(body.get("sourceContext"))
        if source is not None:
            self.sim.source(source)  # SourceNotFound: 404
        session = self.sim.create(
            repo=source.removeprefix(SOURCE_PREFIX) if source is not None else None,
            branch=branch,
            title=title if isinstance(title, str) and title else None,
            prompt=prompt,
            require_plan_approval=approval is True,
            auto_create_pr=mode == AUTO_CREATE_PR,
            repoless=source is None,
            attended=True,
        )
        return _json(session)

    async def session_action(self, request: web.Request) -> web.StreamResponse:
        """POST /sessions/{id}:approvePlan, :sendMessage, :archive, :unarchive; answers `{}`."""
        session_id, _, action = request.match_info["id_action"].partition(":")
        if action == "sendMessage":
            body = await _read_object(request, required=True)
            _check_fields(body, SEND_MESSAGE_FIELDS, "")
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidArgument("prompt is required.", field="prompt")
            self.sim.send_message(session_id, prompt)
            return _json({})
        if action not in ("approvePlan", "archive", "unarchive"):
            raise _ApiError(404, NOT_FOUND_MESSAGE)
        # These take an empty body ("The request body must be empty"); `{}` is empty too.
        _check_fields(await _read_object(request, required=False), EMPTY_FIELDS, "")
        if action == "approvePlan":
            self.sim.approve_plan(session_id)
        elif action == "archive":
            self.sim.archive(session_id)
        else:
            self.sim.unarchive(session_id)
        return _json({})

    # -- activities --

    async def list_activities(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions/{id}/activities: oldest first, paged, `filter=create_time>"..."`."""
        query = request.query
        size = parse_page_size(
            query.get("pageSize"), DEFAULT_ACTIVITY_PAGE_SIZE, MAX_ACTIVITY_PAGE_SIZE
        )
        bound = create_time_filter(query.get("filter"))
        # Activities are append-only, so a position in the list is a stable cursor.
        page_index, start, _ = _cursor(query, ACTIVITIES)
        activities, resume = self.sim.activity_page(
            request.match_info["id"], size, start, after=bound
        )
        token = encode_page_token(ACTIVITIES, page_index + 1, resume) if resume else None
        return _listing("activities", activities, token)

    async def get_activity(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions/{id}/activities/{activityId}."""
        info = request.match_info
        return _json(self.sim.activity(info["id"], info["activity_id"]))

    # -- sources --

    async def list_sources(self, request: web.Request) -> web.StreamResponse:
        """GET /sources: the connected repositories, paged, `filter=name="sources/..."`."""
        query = request.query
        size = parse_page_size(
            query.get("pageSize"), DEFAULT_SOURCE_PAGE_SIZE, MAX_SOURCE_PAGE_SIZE
        )
        names = name_filter(query.get("filter"))
        page_index, start, _ = _cursor(query, SOURCES)
        sources = self.sim.sources(names)
        end = start + size
        token = encode_page_token(SOURCES, page_index + 1, end) if end < len(sources) else None
        return _listing("sources", sources[start:end], token)

    async def get_source(self, request: web.Request) -> web.StreamResponse:
        """GET /sources/{name...}, e.g. /sources/github/acme/web-app."""
        return _json(self.sim.source(f"sources/{request.match_info['name']}"))

    # -- the simulator's own --

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """GET /_sim/stats: request counts by kind and what the simulator holds."""
        return _json(self.sim.stats())


def create_app(sim: Simulator, api_key: str) -> web.Application:
    """The simulator's HTTP app: the Jules API under `/v1alpha`, and `GET /_sim/stats`."""
    if not api_key:
        raise ValueError("the simulator needs a non-empty API key")
    api = _Api(sim, api_key)
    app = web.Application(middlewares=[api.middleware])
    sessions = f"{API_PREFIX}/sessions"
    app.router.add_get(sessions, api.list_sessions, name="list")
    app.router.add_post(sessions, api.create_session, name="create")
    # `{id}:approvePlan` is one path segment; aiohttp cannot split it, so the handler does.
    app.router.add_get(sessions + "/{id_action}", api.get_session, name="get")
    app.router.add_delete(sessions + "/{id_action}", api.delete_session, name="delete")
    app.router.add_post(sessions + "/{id_action}", api.session_action, name="action")
    app.router.add_get(sessions + "/{id}/activities", api.list_activities, name="activities")
    app.router.add_get(
        sessions + "/{id}/activities/{activity_id}", api.get_activity, name="activity"
    )
    app.router.add_get(f"{API_PREFIX}/sources", api.list_sources, name="sources")
    app.router.add_get(f"{API_PREFIX}/sources/{{name:.+}}", api.get_source, name="source")
    app.router.add_get(STATS_PATH, api.stats, name="stats")
    return app
