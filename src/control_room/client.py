"""An async client for the control room: sessions, a resumable stream, commands.

It speaks only the public protocol (REST with a bearer header, the WebSocket with the token
as a subprotocol) and the typed wire structs of `control_room.messages`, so it is what any
script would write; the terminal commands are built on it::

    async with ControlRoomClient("http://127.0.0.1:3001", token) as client:
        listing = await client.sessions()
        stream = client.deltas(since=listing.seq, epoch=listing.epoch)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                ...

The stream reconnects by itself (exponential backoff with jitter), resumes from the last
position it saw on each channel (session deltas and, when asked for, activities), drops
duplicates, and yields a `Reset` when the server cannot replay what was missed: the caller
then reloads. Commands (`approve_plan`, `create_session`, ...) go over the stream's socket
while one is open, answered by a `result` matched by id, and over REST otherwise; a refusal
raises a `CommandFailed` subclass carrying the protocol's error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import aiohttp
import msgspec
from yarl import URL

from control_room import logging as logs
from control_room.auth import APP_PROTOCOL, BEARER_PREFIX, MSGPACK_PROTOCOL
from control_room.backoff import backoff_delay, parse_retry_after
from control_room.jules.actions import Source
from control_room.messages import (
    TOKEN_REVOKED,
    ActivityDetail,
    ActivityMessage,
    ActivityPage,
    ApprovePlan,
    ArchivedSessions,
    ArchiveSession,
    Command,
    CreateSession,
    DeleteSession,
    Envelope,
    ErrorCode,
    ResetMessage,
    ResultMessage,
    SendMessage,
    SessionList,
    SnapshotMessage,
    Subscribe,
    Subscription,
    UnarchiveSession,
)
from control_room.models import JulesSession, Position, SessionDelta

RECONNECT_BASE_S: Final = 0.25  # a restarting server is back within a second or so
RECONNECT_CAP_S: Final = 10.0  # someone watching a side terminal should not wait longer
STABLE_CONNECTION_S: Final = 5.0  # a connection that lived this long resets the backoff
HEARTBEAT_S: Final = 30.0  # ping this often; no pong within half of it means a dead link
CONNECT_TIMEOUT_S: Final = 10.0  # a handshake on a healthy service takes milliseconds
CLOSE_TIMEOUT_S: Final = 2.0  # a live server answers a close at once; a dead one can't stall us
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024  # a snapshot of ~50k sessions; deltas are KBs
NOT_READY_WAIT_S: Final = 10.0  # `sessions()` waits this long for a new service's first poll
NOT_READY_RETRY_CAP_S: Final = 2.0  # ...asking again at least this often
COMMAND_TIMEOUT_S: Final = 60.0
"""How long a command waits for its answer: the service gives Jules 20 s per action, then
re-reads the session (a page read of up to 15 s, retried): a late answer beats a duplicate."""
DEFLATE_WINDOW_BITS: Final = 15  # zlib's largest window: offered as browsers offer it
ACTIVITY_PAGE_SIZE: Final = 100  # the service's default page: a typical session's timeline

Encoding = Literal["json", "msgpack"]
_T = TypeVar("_T")

log = logs.get("client")


class ControlRoomError(Exception):
    """Base class of everything this client raises on purpose."""


class Unauthorized(ControlRoomError):
    """The service rejected the token (HTTP 401); retrying would not help."""


class TokenRevoked(Unauthorized):
    """The service closed the stream with 4001: the token was removed from those in force.

    Reconnecting with it would only get a 401; the user needs a new token.
    """


class BadRequest(ControlRoomError):
    """The service rejected the request's parameters (HTTP 400), e.g. a malformed `since`."""


class Unavailable(ControlRoomError):
    """A call could not be answered: service unreachable, not ready, or failing."""


class NotReady(Unavailable):
    """The service answered 503: it is up, but has nothing consistent to serve yet.

    `reason` is the service's own message (e.g. `waiting for the Jules API: connection
    refused to 127.0.0.1:9; retrying in 8 s`); `retry_after` its Retry-After in seconds.
    """

    def __init__(self, message: str, reason: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class CommandTimeout(Unavailable):
    """No answer to a command within COMMAND_TIMEOUT_S; it may or may not have been done."""


class ConnectionLost(Unavailable):
    """The socket closed before a command's answer; it may or may not have been done."""


class CommandFailed(ControlRoomError):
    """The service (or Jules through it) refused a call: `code` is the protocol's error code
    (`not_found`, `forbidden`, ...), `message` its sentence for humans.

    Raised as the subclass for the code: InvalidArgument, NotFound, FailedPrecondition,
    Forbidden, RateLimited, UpstreamUnavailable; this class itself for any other code.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(CommandFailed):
    """`invalid_argument` (also `bad_message`, `unknown_type`): the call itself is wrong."""


class NotFound(CommandFailed):
    """`not_found`: no such session (or activity, or repository)."""


class FailedPrecondition(CommandFailed):
    """`failed_precondition`: not in a state that allows it (no plan awaiting approval...)."""


class Forbidden(CommandFailed):
    """`forbidden`: the token may not do this (a read-only token sending a command)."""


class RateLimited(CommandFailed):
    """`rate_limited`: too many commands (or Jules answered 429); slow down and retry."""


class UpstreamUnavailable(CommandFailed):
    """`upstream_unavailable`: Jules could not be reached or failed; retry later."""


ERRORS: Final[Mapping[str, type[CommandFailed]]] = {
    "bad_message": InvalidArgument,
    "unknown_type": InvalidArgument,
    "invalid_argument": InvalidArgument,
    "bad_request": InvalidArgument,
    "not_found": NotFound,
    "failed_precondition": FailedPrecondition,
    "forbidden": Forbidden,
    "rate_limited": RateLimited,
    "upstream_unavailable": UpstreamUnavailable,
    "upstream_bad_response": UpstreamUnavailable,
}
"""The exception for each error code (the protocol's, and the REST-only ones)."""
STATUS_CODES: Final[Mapping[int, ErrorCode]] = {
    400: "invalid_argument",
    403: "forbidden",
    404: "not_found",
    409: "failed_precondition",
    429: "rate_limited",
    502: "upstream_unavailable",
}
"""The code of an HTTP error whose body is not one of the service's JSON errors."""


def command_error(code: str, message: str) -> CommandFailed:
    """The CommandFailed subclass for an error code."""
    return ERRORS.get(code, CommandFailed)(code, message)


Snapshot = SnapshotMessage
"""Every session of the view at a position: first, when the stream was opened with
`snapshot`; `activitiesSeq` with activities (the wire struct of `control_room.messages`)."""
Reset = ResetMessage
"""The missed events cannot be replayed: reload. `reason`: `epoch_changed` (the service
restarted without its history), `history_expired`, `too_far_behind`, `ahead_of_server`
(the service is behind the position given, e.g. its store was restored from a backup)."""

Event = SessionDelta | ActivityMessage | SnapshotMessage | ResetMessage
"""What the stream yields: a session delta, an activity (with `activities`), or a
snapshot/reset telling where the stream stands."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the stream, decoded, with the exact bytes the server sent: a `str`
    of JSON, or `bytes` of MessagePack (`encoding="msgpack"`)."""

    event: Event
    raw: str | bytes


@dataclass(frozen=True, slots=True)
class Connected:
    """The stream is (again) connected; `attempt` counts the failures just before it."""

    url: str
    position: Position | None
    attempt: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The stream lost (or could not open) its connection and will try again."""

    reason: str
    attempt: int
    retry_in: float
    was_connected: bool


ConnectionStatus = Connected | Disconnected
StatusCallback = Callable[[ConnectionStatus], None]

_EVENT_TYPES: Final[Mapping[str, type[Event] | type[ResultMessage]]] = {
    "created": SessionDelta,
    "updated": SessionDelta,
    "deleted": SessionDelta,
    "activity": ActivityMessage,
    "snapshot": SnapshotMessage,
    "reset": ResetMessage,
    "result": ResultMessage,
}
_json_kind: Final = msgspec.json.Decoder(Envelope)
_msgpack_kind: Final = msgspec.msgpack.Decoder(Envelope)
_json_decoders: Final[Mapping[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(kind) for name, kind in _EVENT_TYPES.items()
}
_msgpack_decoders: Final[Mapping[str, msgspec.msgpack.Decoder[Any]]] = {
    name: msgspec.msgpack.Decoder(kind) for name, kind in _EVENT_TYPES.items()
}
_json_encoder: Final = msgspec.json.Encoder()
_msgpack_encoder: Final = msgspec.msgpack.Encoder()


def decode_message(raw: str | bytes, *, binary: bool = False) -> Event | ResultMessage | None:
    """Decode one server message (JSON, or MessagePack when `binary`); None for a type this
    client does not know. Raises msgspec.DecodeError (ValidationError) when malformed."""
    if binary:
        data = raw.encode() if isinstance(raw, str) else raw
        msgpack_decoder = _msgpack_decoders.get(_msgpack_kind.decode(data).type)
        return msgpack_decoder.decode(data) if msgpack_decoder is not None else None
    json_decoder = _json_decoders.get(_json_kind.decode(raw).type)
    return json_decoder.decode(raw) if json_decoder is not None else None


def decode_event(raw: str | bytes, *, binary: bool = False) -> Event | None:
    """Decode one stream message; None for a type this client does not know (or a result)."""
    decoded = decode_message(raw, binary=binary)
    return None if isinstance(decoded, ResultMessage) else decoded


def as_json(message: Message) -> str:
    """The message as JSON text: the raw text as sent, or MessagePack converted."""
    if isinstance(message.raw, str):
        return message.raw
    return _json_encoder.encode(msgspec.msgpack.decode(message.raw)).decode()


class _Retry(Exception):
    """A failure worth another attempt; the message says why, for the status line."""


class _Closed:
    """Queued by a connection's reader after its last message."""


_CLOSED: Final = _Closed()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        why = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused: HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_reason(ws: aiohttp.ClientWebSocketResponse) -> str:
    code = ws.close_code
    error = ws.exception()
    if error is not None:
        return _describe(error)
    if code is None or code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
        return "closed without a close frame"
    if code == aiohttp.WSCloseCode.GOING_AWAY:
        return "server going away (1001)"
    return f"server closed the connection ({code})"


def _view_query(view: Subscription) -> list[tuple[str, str]]:
    """A view as connect-time query parameters (an empty filter: one empty value)."""
    query: list[tuple[str, str]] = []
    for name, values in (
        ("sessionId", view.sessionIds),
        ("repository", view.repositories),
        ("state", view.states),
    ):
        if values is None:
            continue
        if values:
            query.extend((name, v) for v in values)
        else:
            query.append((name, ""))  # a filter that lets nothing through
    if view.activities:
        query.append(("activities", "1"))
    return query


def _filtered(view: Subscription) -> bool:
    return not (view.sessionIds is None and view.repositories is None and view.states is None)


def _listed(values: Iterable[str] | None) -> list[str] | None:
    if isinstance(values, str):
        raise TypeError("give a list of values, not one string")
    return None if values is None else list(values)


class ControlRoomClient:
    """The control room over HTTP and WebSocket; use as `async with`.

    `url` is the service's base URL (`http://host:port`; `ws://` works too). Pass a
    `session` to share an aiohttp ClientSession; otherwise the client opens its own.
    `on_status` is called on every connection change of a stream (also logged).
    `encoding="msgpack"` asks for MessagePack binary frames (same typed events); `compress`
    offers permessage-deflate (the service compresses only messages worth it). One stream
    at a time per client.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        on_status: StatusCallback | None = None,
        backoff_base: float = RECONNECT_BASE_S,
        backoff_cap: float = RECONNECT_CAP_S,
        heartbeat: float = HEARTBEAT_S,
        rng: random.Random | None = None,
        encoding: Encoding = "json",
        compress: bool = True,
        command_timeout: float = COMMAND_TIMEOUT_S,
    ) -> None:
        base = URL(url)
        if base.scheme in ("ws", "wss"):
            base = base.with_scheme("http" if base.scheme == "ws" else "https")
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
        if not token:
            raise ValueError("a token is required")
        if encoding not in ("json", "msgpack"):
            raise ValueError(f"encoding is json or msgpack, got {encoding!r}")
        self._base = base.with_query(None).with_fragment(None)
        self._token = token
        self._own_session = session is None
        self._http = session
        self._on_status = on_status
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._heartbeat = heartbeat
        self._rng = rng
        self._binary = encoding == "msgpack"
        self._compress = compress
        self._command_timeout = command_timeout
        self._view = Subscription()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[ResultMessage], Subscribe | None]] = {}
        self.position: Position | None = None
        """The last position the stream reached (None before it learns one): the epoch, the
        sessions channel's `seq` and the activities channel's (`activities_seq`)."""

    async def __aenter__(self) -> ControlRoomClient:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        if self._own_session and self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def url(self) -> str:
        """The service's base URL."""
        return str(self._base)

    @property
    def ws_url(self) -> str:
        """The WebSocket URL (the service's root path, ws:// or wss://)."""
        scheme = "wss" if self._base.scheme == "https" else "ws"
        return str(self._endpoint("/").with_scheme(scheme))

    @property
    def view(self) -> Subscription:
        """The stream's current subscription (what `subscribe` last set, or the stream's)."""
        return self._view

    @property
    def stream_open(self) -> bool:
        """Whether a stream's socket is connected now (commands then go over it)."""
        return self._ws is not None and not self._ws.closed

    @property
    def negotiated(self) -> tuple[str | None, str | None]:
        """What the open stream's handshake settled: (subprotocol, extension), e.g.
        `("control-room.v1+msgpack", "permessage-deflate; client_no_context_takeover")`;
        (None, None) with no stream open."""
        ws = self._ws
        if ws is None or ws.closed:
            return None, None
        deflate = None
        if ws.compress:
            deflate = "permessage-deflate" + (
                "; client_no_context_takeover" if ws.client_notakeover else ""
            )
        return ws.protocol, deflate

    def _endpoint(self, path: str) -> URL:
        return self._base.with_path(self._base.path.rstrip("/") + path)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use the client as `async with ControlRoomClient(...)`")
        return self._http

    # -- REST ---------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """One REST call with the bearer header: (status, body).

        Unauthorized on 401, NotReady on a 503 `not_ready`, Unavailable when the service
        cannot be reached; every other status is the caller's to judge.
        """
        headers = {"Authorization": f"Bearer {self._token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session().request(
                method,
                self._endpoint(path),
                params=query,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=CONNECT_TIMEOUT_S if method == "GET" else self._command_timeout
                ),
            ) as resp:
                data = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(_describe(exc)) from exc
        if status == 401:
            raise Unauthorized(f"{self.url} rejected the token (HTTP 401)")
        if status == 503:
            code, message = _error_of(data)
            if code == "not_ready":
                reason = message or "service not ready"
                wait = parse_retry_after(retry_after)
                raise NotReady(f"{self.url} is not ready: {reason}", reason, wait)
            raise Unavailable(f"{self.url}{path}: {message or 'service unavailable'} (HTTP 503)")
        return status, data

    async def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """A REST call whose errors are CommandFailed subclasses by their code."""
        status, data = await self._request(method, path, query, body)
        if status >= 400:
            code, message = _error_of(data)
            code = code or STATUS_CODES.get(status, "internal")
            raise command_error(code, message or f"{method} {path} answered HTTP {status}")
        return status, data

    async def _get(self, path: str, query: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """GET a stream-related path; BadRequest (the service's reason) on 400."""
        status, body = await self._request("GET", path, query)
        if status == 400:
            raise BadRequest(_error_of(body)[1] or f"{path}: bad request (HTTP 400)")
        return status, body

    async def sessions(
        self,
        wait_ready: float = NOT_READY_WAIT_S,
        on_not_ready: Callable[[NotReady], None] | None = None,
    ) -> SessionList:
        """Every session and its position (`GET /api/sessions`).

        A service that has not finished its first poll answers 503 with the reason (say,
        the Jules API refuses connections); this calls `on_not_ready` with each such answer,
        asks again for up to `wait_ready` seconds, then raises the last one as NotReady.
        Unavailable when the service cannot be reached or answers something unexpected.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ready
        while True:
            try:
                status, body = await self._get("/api/sessions")
            except NotReady as exc:
                if on_not_ready is not None:
                    on_not_ready(exc)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                pause = min(exc.retry_after or NOT_READY_RETRY_CAP_S, NOT_READY_RETRY_CAP_S)
                await asyncio.sleep(min(pause, remaining))
                continue
            if status != 200:
                raise Unavailable(f"{self.url}/api/sessions answered HTTP {status}")
            return self._decode(body, SessionList, "/api/sessions")

    def _decode(self, body: bytes, kind: type[_T], path: str) -> _T:
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.DecodeError as exc:
            raise Unavailable(f"{self.url}{path}: unexpected body: {exc}") from exc

    async def session(self, session_id: str) -> JulesSession:
        """One session (`GET /api/sessions/{id}`); NotFound when the service has none."""
        path = f"/api/sessions/{_segment(session_id)}"
        _, body = await self._call("GET", path)
        return self._decode(body, JulesSession, path)

    async def activity_page(
        self, session_id: str, page_token: str | None = None, page_size: int | None = None
    ) -> ActivityPage:
        """One page of a session's timeline, oldest first (`GET .../activities`).

        Follow `nextPageToken` for the next page. `activitiesSeq` is the activities
        channel's position the page was read at: apply live activities after it, skipping
        ids already held. NotFound for an unknown session; UpstreamUnavailable when Jules
        cannot be read.
        """
        path = f"/api/sessions/{_segment(session_id)}/activities"
        query = {"pageSize": str(page_size or ACTIVITY_PAGE_SIZE)}
        if page_token:
            query["pageToken"] = page_token
        _, body = await self._call("GET", path, query)
        return self._decode(body, ActivityPage, path)

    async def activities(self, session_id: str) -> ActivityPage:
        """A session's whole timeline, every page read: one ActivityPage with all the
        activities, oldest first, and the first page's `activitiesSeq` (the earliest, so
        live activities after it cover everything not in the timeline)."""
        first = page = await self.activity_page(session_id)
        activities = list(page.activities)
        while page.nextPageToken:
            page = await self.activity_page(session_id, page.nextPageToken)
            activities.extend(page.activities)
        return ActivityPage(
            sessionId=first.sessionId, activities=activities, activitiesSeq=first.activitiesSeq
        )

    async def activity(self, session_id: str, activity_id: str) -> ActivityDetail:
        """One activity with its whole patches (`GET .../activities/{activityId}`):
        `activity`, and `patches` [{source, unidiffPatch, baseCommitId,
        suggestedCommitMessage}]. NotFound for an unknown session or activity;
        UpstreamUnavailable when Jules cannot be read."""
        path = f"/api/sessions/{_segment(session_id)}/activities/{_segment(activity_id)}"
        _, body = await self._call("GET", path)
        return self._decode(body, ActivityDetail, path)

    async def sources(self) -> list[Source]:
        """The repositories Jules can work on (`GET /api/sources`), for `create_session`."""
        _, body = await self._call("GET", "/api/sources")
        return self._decode(body, dict[str, list[Source]], "/api/sources").get("sources", [])

    async def archived_sessions(
        self, page_token: str | None = None, page_size: int | None = None
    ) -> ArchivedSessions:
        """One page of the archived sessions, newest first (`GET /api/sessions/archived`),
        read from Jules on each call; pass `nextPageToken` back for the next page.
        UpstreamUnavailable when Jules cannot be read."""
        query: dict[str, str] = {}
        if page_size is not None:
            query["pageSize"] = str(page_size)
        if page_token:
            query["pageToken"] = page_token
        path = "/api/sessions/archived"
        _, body = await self._call("GET", path, query)
        return self._decode(body, ArchivedSessions, path)

    async def me(self) -> dict[str, bool]:
        """What this token may do (`GET /api/me`): `{"readOnly": bool, "commands": bool}`
        (`commands`: whether this token's commands would run: not read-only, and the service can
        reach Jules' command API)."""
        _, body = await self._call("GET", "/api/me")
        return self._decode(body, dict[str, bool], "/api/me")

    # -- commands -----------------------------------------------------------------------

    async def approve_plan(self, session_id: str) -> JulesSession | None:
        """Approve the plan the session awaits; the session after it (None if unknown yet).

        FailedPrecondition when no plan awaits approval; NotFound, Forbidden (read-only
        token), RateLimited, UpstreamUnavailable; CommandTimeout or ConnectionLost when the
        answer never came (the command may have been done).
        """
        return (await self._command(ApprovePlan(sessionId=session_id))).session

    async def send_message(self, session_id: str, text: str) -> JulesSession | None:
        """Send the agent a message (an answer to its question, or new instructions); the
        session after it. InvalidArgument for an empty text; errors as `approve_plan`."""
        return (await self._command(SendMessage(sessionId=session_id, prompt=text))).session

    async def create_session(
        self,
        prompt: str,
        repository: str | None = None,
        branch: str | None = None,
        title: str | None = None,
        require_plan_approval: bool | None = None,
        auto_create_pr: bool | None = None,
    ) -> JulesSession:
        """Start a session on `repository` (`owner/repo`; None: no repository) and return it.

        Unset options are Jules' defaults. InvalidArgument for an empty prompt or a
        malformed repository, NotFound for a repository Jules cannot work on (see
        `sources()`); errors as `approve_plan`.
        """
        command = CreateSession(
            prompt=prompt,
            repository=repository,
            branch=branch,
            title=title,
            requirePlanApproval=require_plan_approval,
            autoCreatePullRequest=auto_create_pr,
        )
        result = await self._command(command)
        if result.session is None:
            raise Unavailable("the service created a session but did not return it")
        return result.session

    async def archive(self, session_id: str) -> None:
        """Archive a session (Jules hides it from its listing: it leaves the control room)."""
        await self._command(ArchiveSession(sessionId=session_id))

    async def unarchive(self, session_id: str) -> JulesSession | None:
        """Bring an archived session back; the session after it."""
        return (await self._command(UnarchiveSession(sessionId=session_id))).session

    async def delete(self, session_id: str) -> None:
        """Delete a session for good."""
        await self._command(DeleteSession(sessionId=session_id))

    async def subscribe(
        self,
        *,
        session_ids: Iterable[str] | None = None,
        repositories: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        activities: bool = False,
    ) -> SnapshotMessage:
        """Replace the open stream's view; the new view's snapshot, taken in the same step.

        Filters: None means no filter on that field, an empty list lets nothing through.
        Replace your picture with the snapshot's sessions: the stream goes on with the first
        events after its position, and reconnects with the new view. Needs an open stream
        (FailedPrecondition otherwise); InvalidArgument for an unusable filter.
        """
        view = Subscription(
            sessionIds=_listed(session_ids),
            repositories=_listed(repositories),
            states=_listed(states),
            activities=activities,
        )
        if not self.stream_open:
            raise FailedPrecondition(
                "failed_precondition", "subscribe needs an open stream; give the view to deltas()"
            )
        command = Subscribe(
            sessionIds=view.sessionIds,
            repositories=view.repositories,
            states=view.states,
            activities=view.activities,
        )
        result = await self._command(command)
        return SnapshotMessage(
            epoch=result.epoch or "",
            seq=result.seq or 0,
            sessions=result.sessions or [],
            activitiesSeq=result.activitiesSeq,
        )

    async def _command(self, command: Command) -> ResultMessage:
        """Run a command over the open socket, else over REST; the successful result."""
        ws = self._ws
        if ws is not None and not ws.closed:
            result = await self._over_socket(ws, command)
            if result.error is not None:
                raise command_error(result.error.code, result.error.message)
            return result
        if isinstance(command, Subscribe):
            raise FailedPrecondition("failed_precondition", "subscribe needs an open stream")
        return await self._over_rest(command)

    async def _over_socket(
        self, ws: aiohttp.ClientWebSocketResponse, command: Command
    ) -> ResultMessage:
        id = next(self._ids)
        command = msgspec.structs.replace(command, id=id)
        answer: asyncio.Future[ResultMessage] = asyncio.get_running_loop().create_future()
        self._pending[id] = (answer, command if isinstance(command, Subscribe) else None)
        try:
            if self._binary:
                await ws.send_bytes(_msgpack_encoder.encode(command))
            else:
                await ws.send_str(_json_encoder.encode(command).decode())
            async with asyncio.timeout(self._command_timeout):
                return await answer
        except TimeoutError:
            raise CommandTimeout(
                f"no answer to {type(command).__name__} within {self._command_timeout:g} s;"
                " it may or may not have been done"
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise ConnectionLost(f"could not send the command: {_describe(exc)}") from exc
        finally:
            self._pending.pop(id, None)

    async def _over_rest(self, command: Command) -> ResultMessage:
        body = _json_encoder.encode(command)
        if isinstance(command, CreateSession):
            _, data = await self._call("POST", "/api/sessions", body=body)
        elif isinstance(command, DeleteSession):
            await self._call("DELETE", f"/api/sessions/{_segment(command.sessionId)}")
            return ResultMessage(id=None, ok=True)
        else:
            assert isinstance(command, _SessionCommand)
            action = _REST_ACTIONS[type(command)]
            path = f"/api/sessions/{_segment(command.sessionId)}:{action}"
            _, data = await self._call("POST", path, body=body)
        session = self._decode(data, JulesSession, "/api/sessions") if data else None
        return ResultMessage(id=None, ok=True, session=session)

    def _answered(self, result: ResultMessage) -> None:
        """A `result` arrived: settle the command waiting for it.

        A successful subscribe moves the position to the result's, here, in stream order:
        events still queued from before the switch are then dropped as already covered by
        the new snapshot, and reconnects use the new view.
        """
        id = result.id
        pending = self._pending.pop(id, None) if isinstance(id, int) else None
        if pending is None:
            log.debug("Result for no pending command skipped")
            return
        answer, subscribe = pending
        if subscribe is not None and result.ok and result.epoch is not None:
            self._view = Subscription(
                sessionIds=subscribe.sessionIds,
                repositories=subscribe.repositories,
                states=subscribe.states,
                activities=subscribe.activities,
            )
            self.position = Position(result.epoch, result.seq or 0, result.activitiesSeq or 0)
        if not answer.done():
            answer.set_result(result)

    # -- the stream ---------------------------------------------------------------------

    async def _locate(self, since: int | None) -> Position:
        """Where to resume: `since` (now when None) in the service's current epoch.

        Deltas carry no epoch, yet a stream must know it to resume safely after a restart;
        `/api/deltas?limit=0` tells it. Its answer holds the epoch and the current seq both
        when `since` is replayable (200) and when it is not (410: too old, or ahead of a
        server restored from a backup): the WebSocket then sends a `reset`, which the
        stream yields, so the caller reloads and carries on.
        """
        query = {"since": str(since or 0), "limit": "0"}
        try:
            status, body = await self._get("/api/deltas", query)
        except Unavailable as exc:  # NotReady included
            raise _Retry(str(exc)) from exc
        if status not in (200, 410):
            raise _Retry(f"/api/deltas answered HTTP {status}")
        try:
            found = msgspec.json.decode(body, type=Position)
        except msgspec.DecodeError as exc:
            raise _Retry(f"/api/deltas: unexpected body: {exc}") from exc
        return Position(found.epoch, found.seq if since is None else since)

    def _query(self, position: Position | None) -> list[tuple[str, str]]:
        """The stream's query: resume from `position`, or a snapshot when None; the view."""
        view = self._view
        if position is None:
            query = [("snapshot", "1")]
        else:
            query = [("since", str(position.seq)), ("epoch", position.epoch)]
            if view.activities:
                query.append(("activitiesSince", str(position.activities_seq)))
        return query + _view_query(view)

    async def _connect(self, query: Sequence[tuple[str, str]]) -> aiohttp.ClientWebSocketResponse:
        """Open the WebSocket with `query`."""
        app = MSGPACK_PROTOCOL if self._binary else APP_PROTOCOL
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await self._session().ws_connect(
                    self.ws_url,
                    params=query,
                    protocols=(app, f"{BEARER_PREFIX}{self._token}"),
                    heartbeat=self._heartbeat,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                    autoclose=True,
                    autoping=True,
                    # aiohttp honours the server's client_no_context_takeover: each command
                    # it sends is compressed on its own, as the server expects.
                    compress=DEFLATE_WINDOW_BITS if self._compress else 0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise Unauthorized(f"{self.url} rejected the token (HTTP 401)") from None
            if exc.status == 400:
                raise BadRequest(await self._why_refused(query)) from None
            raise _Retry(_describe(exc)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Retry(_describe(exc)) from exc

    async def _why_refused(self, query: Sequence[tuple[str, str]]) -> str:
        """The service's own reason for refusing a stream request with HTTP 400.

        A client cannot read the body of a refused upgrade, so the same position is asked of
        `/api/deltas`, which checks `since` the same way and says what is wrong with it.
        """
        asked = "&".join(f"{k}={v}" for k, v in query)
        fallback = f"the service rejected the stream request ?{asked} (HTTP 400)"
        since = dict(query).get("since")
        if since is None:
            return fallback
        try:
            await self._get("/api/deltas", {"since": since, "limit": "0"})
        except BadRequest as exc:
            return str(exc)
        except Unavailable:
            pass
        return fallback

    async def messages(
        self,
        since: int | None = None,
        epoch: str | None = None,
        snapshot: bool = False,
        *,
        activities_since: int | None = None,
        session_ids: Iterable[str] | None = None,
        repositories: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        activities: bool = False,
    ) -> AsyncGenerator[Message, None]:
        """Every message of the stream, decoded, with its raw bytes; reconnects forever.

        With no position the stream starts now; `since` (and its `epoch`, if known) resumes
        after that seq; `snapshot` makes the first message a `Snapshot`. The view: filters
        on `session_ids`, `repositories`, `states` (None: no filter), and `activities` for
        the activities channel (then resuming needs `activities_since` too; starting now
        takes a snapshot for the channel's position, yielded only if asked for). Events at
        or before the last position are dropped. Raises Unauthorized or BadRequest, never
        retried; ValueError for arguments that do not go together.
        """
        if since is not None and since < 0:
            raise ValueError(f"since must be a non-negative seq, got {since}")
        if epoch is not None and since is None:
            raise ValueError("epoch is only meaningful with since")
        if snapshot and since is not None:
            raise ValueError("snapshot and since cannot be combined")
        if activities_since is not None and not (activities and since is not None):
            raise ValueError("activities_since needs activities and since")
        if activities and since is not None and activities_since is None:
            raise ValueError("resuming with activities needs activities_since too")
        if activities_since is not None and activities_since < 0:
            raise ValueError(f"activities_since must be a non-negative seq, got {activities_since}")
        self._view = Subscription(
            sessionIds=_listed(session_ids),
            repositories=_listed(repositories),
            states=_listed(states),
            activities=activities,
        )
        self.position = (
            Position(epoch, since, activities_since or 0)
            if epoch is not None and since is not None
            else None
        )
        # Starting now with activities: a snapshot is the one answer that carries both
        # channels' positions (GET /api/deltas knows only the sessions channel's).
        show_snapshot = snapshot
        snapshot = snapshot or (activities and since is None)
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            position = self.position
            connected_at: float | None = None
            try:
                if position is None and not snapshot:
                    position = self.position = await self._locate(since)
                ws = await self._connect(self._query(position))
            except _Retry as exc:
                reason = str(exc)
            else:
                connected_at = loop.time()
                self._ws = ws
                # Starting from a snapshot, the position is known once it has arrived: say
                # "connected" then, with the position, rather than "from now" before it.
                announced = position is not None
                if announced:
                    self._status(Connected(self.ws_url, position, failures))
                try:
                    async with ws, contextlib.aclosing(self._read(ws)) as reading:
                        async for message in reading:
                            if not announced:
                                announced = True
                                self._status(Connected(self.ws_url, self.position, failures))
                            if isinstance(message.event, SnapshotMessage) and not show_snapshot:
                                continue
                            yield message
                finally:
                    self._ws = None
                    self._abandon()
                if ws.close_code == TOKEN_REVOKED:
                    raise TokenRevoked(
                        f"{self.url} closed the stream: the token was revoked (close code"
                        f" {TOKEN_REVOKED})"
                    )
                reason = _close_reason(ws)
                if loop.time() - connected_at >= STABLE_CONNECTION_S:
                    failures = 0
            snapshot = snapshot and self.position is None  # a snapshot is asked for once
            failures += 1
            delay = backoff_delay(failures, self._backoff_base, self._backoff_cap, self._rng)
            self._status(Disconnected(reason, failures, delay, connected_at is not None))
            await asyncio.sleep(delay)

    def _abandon(self) -> None:
        """The socket is gone: commands still waiting on it will get no answer."""
        pending, self._pending = self._pending, {}
        for answer, _ in pending.values():
            if not answer.done():
                answer.set_exception(
                    ConnectionLost(
                        "the connection closed before the answer;"
                        " the command may or may not have been done"
                    )
                )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> AsyncGenerator[Message, None]:
        """The connection's events in order, each past the position; duplicates dropped.

        A task reads the socket all the time (so a command's result is seen even while the
        caller is busy with an event, or awaiting that very command) and queues the events.
        """
        queue: asyncio.Queue[Message | _Closed] = asyncio.Queue()
        reader = asyncio.create_task(self._pump(ws, queue), name="control-room-client-reader")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Closed):
                    return
                if self._advance(item.event):
                    yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _pump(
        self, ws: aiohttp.ClientWebSocketResponse, queue: asyncio.Queue[Message | _Closed]
    ) -> None:
        """Decode every message of the socket: results settle commands, events are queued."""
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    raw: str | bytes = msg.data
                    binary = False
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    raw, binary = msg.data, True
                else:
                    continue  # pings are answered by aiohttp
                try:
                    decoded = decode_message(raw, binary=binary)
                except msgspec.DecodeError as exc:  # ValidationError included
                    log.warning("Undecodable message skipped", extra={"error": str(exc)})
                    continue
                if decoded is None:
                    log.debug("Unknown message type skipped")
                elif isinstance(decoded, ResultMessage):
                    self._answered(decoded)
                else:
                    queue.put_nowait(Message(decoded, raw))
        finally:
            queue.put_nowait(_CLOSED)

    def _advance(self, event: Event) -> bool:
        """Move the position past `event`; False for a duplicate that must be dropped.

        Each channel keeps its own numbering: session deltas move `seq`, activities move
        `activities_seq`. A filtered view sees gaps in both (other sessions' events) and
        they are not losses.
        """
        position = self.position
        if isinstance(event, SnapshotMessage | ResetMessage):
            self.position = Position(event.epoch, event.seq, event.activitiesSeq or 0)
            return True
        if position is None:
            return True  # cannot happen with this protocol: events follow a position
        if isinstance(event, ActivityMessage):
            if event.seq <= position.activities_seq:
                log.debug("Duplicate activity dropped", extra={"seq": event.seq})
                return False
            self.position = Position(position.epoch, position.seq, event.seq)
            return True
        if event.seq <= position.seq:
            log.debug("Duplicate delta dropped", extra={"seq": event.seq})
            return False
        if event.seq != position.seq + 1 and not _filtered(self._view):
            gap = {"expected": position.seq + 1, "got": event.seq}
            log.warning("Gap in the delta stream", extra=gap)
        self.position = Position(position.epoch, event.seq, position.activities_seq)
        return True

    async def deltas(
        self,
        since: int | None = None,
        epoch: str | None = None,
        snapshot: bool = False,
        *,
        activities_since: int | None = None,
        session_ids: Iterable[str] | None = None,
        repositories: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        activities: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """The stream's events (deltas, activities, Snapshot/Reset); see `messages`."""
        stream = self.messages(
            since,
            epoch,
            snapshot,
            activities_since=activities_since,
            session_ids=session_ids,
            repositories=repositories,
            states=states,
            activities=activities,
        )
        async with contextlib.aclosing(stream) as messages:
            async for message in messages:
                yield message.event

    def _status(self, status: ConnectionStatus) -> None:
        if isinstance(status, Connected):
            pos = status.position
            log.info(
                "Stream connected",
                extra={
                    "url": status.url,
                    "attempt": status.attempt,
                    "epoch": pos.epoch if pos else None,
                    "since": pos.seq if pos else None,
                },
            )
        else:
            log.info(
                "Stream disconnected",
                extra={
                    "reason": status.reason,
                    "attempt": status.attempt,
                    "retryIn": round(status.retry_in, 3),
                },
            )
        if self._on_status is not None:
            self._on_status(status)


_SessionCommand = ApprovePlan | SendMessage | ArchiveSession | UnarchiveSession
_REST_ACTIONS: Final[Mapping[type[Command], str]] = {
    ApprovePlan: "approvePlan",
    SendMessage: "sendMessage",
    ArchiveSession: "archive",
    UnarchiveSession: "unarchive",
}
"""The REST custom method (`/api/sessions/{id}:<action>`) of each session command."""


def _segment(value: str) -> str:
    """An id as one path segment: anything that would change the path is refused here."""
    if not value or "/" in value or value in (".", ".."):
        raise InvalidArgument("invalid_argument", f"not an id: {value!r}")
    return value


def _error_of(body: bytes) -> tuple[str, str]:
    """(`error`, `message`) of one of the service's JSON error bodies; ("", "") if not one.

    The service's error body (`{"error": code, "message": ...}`, built by its
    `responses.json_error`) has no struct in `messages` to decode it with.
    """
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "", ""
    if not isinstance(parsed, dict):
        return "", ""
    code, message = parsed.get("error"), parsed.get("message")
    return (
        code if isinstance(code, str) else "",
        message if isinstance(message, str) else "",
    )
