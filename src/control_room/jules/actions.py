"""Commands sent to Jules on a user's behalf: approve, message, create, archive, delete;
and the on-demand reads behind the dashboard's forms (sources, archived sessions).

Unlike reads, these are never retried automatically: a `POST :sendMessage` whose answer was
lost may well have been delivered, and sending it twice is worse than saying it failed.
Failures raise UpstreamError with the upstream's status and message (Google's envelope),
which the command layer turns into error codes.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

import aiohttp
import msgspec

from control_room.jules.client import (
    Key,
    UpstreamError,
    describe_failure,
    error_message,
    key_reader,
    redact_key,
    where,
)
from control_room.jules.mapping import map_session
from control_room.jules.requests import (
    LIST_FIRST_PAGE,
    LIST_NEXT_PAGE,
    RequestCounter,
    RequestKind,
)
from control_room.jules.types import ListSessionsResponse, session_decoder
from control_room.messages import ArchivedSessions, CreateSession
from control_room.models import JulesSession

ACTION_TIMEOUT_S: Final = 20.0
"""A command waits longer than a poll's page (15 s): creating a session can take Jules a
few seconds, and a user who clicked is better served by a late success than a retry."""
SOURCES_PAGE_SIZE: Final = 100  # the API's maximum
MAX_SOURCE_PAGES: Final = 20  # 2,000 repositories: far beyond a person's; stops a token loop
ARCHIVED_FILTER: Final = "archived = true"
"""sessions.list's one working filter: archived sessions are hidden without it."""


class Source(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """A repository Jules can work on, as the create form needs it."""

    name: str
    repository: str
    defaultBranch: str | None = None
    branches: tuple[str, ...] = ()
    isPrivate: bool | None = None


class _Branch(msgspec.Struct, frozen=True):
    displayName: str | None = None


class _GithubRepo(msgspec.Struct, frozen=True):
    owner: str | None = None
    repo: str | None = None
    isPrivate: bool | None = None
    defaultBranch: _Branch | None = None
    branches: list[_Branch] | None = None


class _Source(msgspec.Struct, frozen=True):
    name: str | None = None
    id: str | None = None
    githubRepo: _GithubRepo | None = None


class _SourcesPage(msgspec.Struct, frozen=True):
    sources: list[_Source] | None = None
    nextPageToken: str | None = None


_sources_decoder: Final = msgspec.json.Decoder(_SourcesPage)
_list_decoder: Final = msgspec.json.Decoder(ListSessionsResponse)


def _source(raw: _Source) -> Source | None:
    repo = raw.githubRepo
    if not raw.name:
        return None
    if repo is None or not repo.owner or not repo.repo:
        return Source(name=raw.name, repository=raw.name.removeprefix("sources/"))
    return Source(
        name=raw.name,
        repository=f"{repo.owner}/{repo.repo}",
        defaultBranch=repo.defaultBranch.displayName if repo.defaultBranch else None,
        branches=tuple(b.displayName for b in repo.branches or () if b.displayName),
        isPrivate=repo.isPrivate,
    )


def create_body(request: CreateSession) -> dict[str, object]:
    """The `sessions.create` body for a command (repository `owner/repo` -> its source)."""
    body: dict[str, object] = {"prompt": request.prompt}
    if request.title:
        body["title"] = request.title
    if request.repository:
        context: dict[str, object] = {"source": f"sources/github/{request.repository}"}
        if request.branch:
            context["githubRepoContext"] = {"startingBranch": request.branch}
        body["sourceContext"] = context
    if request.requirePlanApproval is not None:
        body["requirePlanApproval"] = request.requirePlanApproval
    if request.autoCreatePullRequest:
        body["automationMode"] = "AUTO_CREATE_PR"
    return body


class JulesActions:
    """Sends commands to Jules with the shared aiohttp session; the key is read per call."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        key: Key,
        requests: RequestCounter | None = None,
    ) -> None:
        self._http = http
        self._requests = requests if requests is not None else RequestCounter()
        self._base = base_url.rstrip("/")
        self._key = key_reader(key)
        self.where = where(base_url)
        self._timeout = aiohttp.ClientTimeout(total=ACTION_TIMEOUT_S)

    async def _call(
        self,
        method: str,
        path: str,
        request: RequestKind,
        body: dict[str, object] | None = None,
        params: dict[str, str] | None = None,
    ) -> bytes:
        url = self._base + path
        self._requests.count(request)
        key = self._key()
        try:
            return await self._call_once(method, url, key, body, params)
        except UpstreamError as exc:
            raise exc.without_key(key) from None  # an upstream may echo the key it was sent

    async def _call_once(
        self,
        method: str,
        url: str,
        key: str,
        body: dict[str, object] | None,
        params: dict[str, str] | None,
    ) -> bytes:
        headers = {"X-Goog-Api-Key": key, "Accept": "application/json"}
        try:
            async with self._http.request(
                method,
                url,
                params=params,
                json=body if body is not None else ({} if method == "POST" else None),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,  # the key must never follow a redirect elsewhere
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            kind, detail = describe_failure(exc, self.where, ACTION_TIMEOUT_S)
            raise UpstreamError(kind, detail) from None
        if 200 <= status < 300:
            return data
        kind = {401: "unauthorized", 403: "unauthorized", 429: "rate_limited"}.get(
            status, "server_error" if status >= 500 else "client_error"
        )
        message, api_status = error_message(data, key)
        raise UpstreamError(kind, message or f"HTTP {status}", status=status, api_status=api_status)

    @staticmethod
    def _path(session_id: str, action: str = "") -> str:
        return f"/sessions/{quote(session_id, safe='')}{action}"

    async def approve_plan(self, session_id: str) -> None:
        """`POST /sessions/{id}:approvePlan`."""
        await self._call("POST", self._path(session_id, ":approvePlan"), "approve")

    async def send_message(self, session_id: str, prompt: str) -> None:
        """`POST /sessions/{id}:sendMessage` with `{"prompt"}`."""
        await self._call(
            "POST", self._path(session_id, ":sendMessage"), "message", {"prompt": prompt}
        )

    async def create_session(self, request: CreateSession) -> JulesSession:
        """`POST /sessions`; the new session, mapped."""
        data = await self._call("POST", "/sessions", "create", create_body(request))
        try:
            session = session_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            detail = redact_key(f"created session did not decode: {exc}", self._key())
            raise UpstreamError("bad_response", detail) from None
        if not session.session_id:
            raise UpstreamError("bad_response", "created session has no id")
        return map_session(session)

    async def archive_session(self, session_id: str) -> None:
        """`POST /sessions/{id}:archive`."""
        await self._call("POST", self._path(session_id, ":archive"), "archive")

    async def unarchive_session(self, session_id: str) -> None:
        """`POST /sessions/{id}:unarchive`."""
        await self._call("POST", self._path(session_id, ":unarchive"), "unarchive")

    async def delete_session(self, session_id: str) -> None:
        """`DELETE /sessions/{id}`."""
        await self._call("DELETE", self._path(session_id), "delete")

    async def list_sources(self) -> list[Source]:
        """Every source (`GET /sources`, all pages)."""
        sources: list[Source] = []
        token = ""
        for _ in range(MAX_SOURCE_PAGES):
            params = {"pageSize": str(SOURCES_PAGE_SIZE)}
            if token:
                params["pageToken"] = token
            data = await self._call("GET", "/sources", "list_sources", params=params)
            try:
                page = _sources_decoder.decode(data)
            except msgspec.MsgspecError as exc:
                detail = redact_key(f"sources did not decode: {exc}", self._key())
                raise UpstreamError("bad_response", detail) from None
            sources.extend(s for s in map(_source, page.sources or ()) if s is not None)
            token = page.nextPageToken or ""
            if not token:
                break
        return sources

    async def list_archived(
        self, page_size: int, page_token: str | None = None
    ) -> ArchivedSessions:
        """One page of the archived sessions (`GET /sessions?filter=archived = true`),
        mapped; an entry that does not decode or names no session is left out."""
        params = {"pageSize": str(page_size), "filter": ARCHIVED_FILTER}
        if page_token:
            params["pageToken"] = page_token
        # Counted as the listing's own kinds: the same request, to the same quota.
        kind: RequestKind = LIST_NEXT_PAGE if page_token else LIST_FIRST_PAGE
        data = await self._call("GET", "/sessions", kind, params=params)
        try:
            page = _list_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            detail = redact_key(f"archived sessions did not decode: {exc}", self._key())
            raise UpstreamError("bad_response", detail) from None
        sessions: list[JulesSession] = []
        for raw in page.sessions or ():
            try:
                session = session_decoder.decode(raw)
            except msgspec.MsgspecError:
                continue
            if session.session_id and not session.identity_conflict:
                sessions.append(map_session(session))
        return ArchivedSessions(sessions=sessions, nextPageToken=page.nextPageToken or None)
