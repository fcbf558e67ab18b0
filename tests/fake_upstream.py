"""A scriptable fake Jules API on 127.0.0.1: the exact faulty answers the simulator won't give.

It serves `GET /v1alpha/sessions` with offset-based page tokens (as many paged APIs do, and
as the simulator's keyset cursors do not: an offset listing is what tears when the list
shifts between two pages) and `GET /v1alpha/sessions/{id}`, over real HTTP. A test scripts
what the next requests get: `list_replies` (one per page request, in order) and
`get_replies[id]` (one per GET of that id) hold `Reply`s, or None for "answer normally";
`activities[id]` is the one page a session's activities list answers (entries as JSON, or
raw bytes for entries that are not valid activities); without one, the API's 404;
`after_page[n]` runs once right after page `n` (0-based) has been served, to change the
sessions between two pages of one listing; `page_replies[n]` answers page `n` of every
listing while it is set (a page that keeps failing or hanging); `fail_with`, when set,
answers every listing request with `fail_with(key it was sent)` (an upstream that echoes
the key in its errors).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import msgspec
from aiohttp import web

PREFIX: Final = "/v1alpha"
MAX_PAGE_SIZE: Final = 100
NOT_FOUND_BODY: Final = {"error": {"code": 404, "message": "Not found.", "status": "NOT_FOUND"}}

Resource = dict[str, Any]


@dataclass
class Reply:
    """One scripted answer: a status and a JSON body (or raw bytes), after `hang` seconds.

    `normal`: after the hang, answer as the fake would have anyway (a slow answer).
    """

    status: int = 200
    json: object = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    normal: bool = False

    def response(self) -> web.Response:
        raw = self.body if self.body is not None else msgspec.json.encode(self.json)
        headers = {"Content-Type": "application/json", **self.headers}
        return web.Response(status=self.status, body=raw, headers=headers)


def session(sid: str, **fields: Any) -> Resource:
    """A plausible Jules session in the wire shape."""
    base: Resource = {
        "name": f"sessions/{sid}",
        "id": sid,
        "title": f"Session {sid}",
        "sourceContext": {
            "source": "sources/github/acme/api",
            "githubRepoContext": {"startingBranch": "main"},
        },
        "state": "QUEUED",
        "url": f"https://jules.google.com/session/{sid}",
        "createTime": "2026-01-01T00:00:00Z",
        "updateTime": "2026-01-01T00:00:00Z",
    }
    base.update(fields)
    return base


def unauthorized() -> Reply:
    """Google's answer to a rejected key."""
    return Reply(
        401,
        {"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}},
    )


class FakeUpstream:
    """The fake's state and script; `async with` binds it to a free port on 127.0.0.1."""

    def __init__(self, api_key: str = "fake-key") -> None:
        self.key = api_key
        self.sessions: list[Resource] = []  # listing order: newest first
        self.list_replies: deque[Reply | None] = deque()
        self.get_replies: dict[str, deque[Reply | None]] = defaultdict(deque)
        self.after_page: dict[int, Callable[[], None]] = {}
        self.page_replies: dict[int, Reply] = {}
        self.page_size: int | None = None  # serve pages of this size, whatever was asked
        self.hidden: set[str] = set()  # listed as if absent; a GET still finds them
        self.keys_seen: list[str] = []
        self.list_calls = 0  # listings started (first-page requests)
        self.get_calls: list[str] = []
        self.activities: dict[str, list[object]] = {}
        self.activity_queries: list[dict[str, str]] = []
        self.fail_with: Callable[[str], Reply] | None = None
        self._page_index = 0
        app = web.Application()
        app.router.add_get(PREFIX + "/sessions", self._list)
        app.router.add_get(PREFIX + "/sessions/{id}", self._get)
        app.router.add_get(PREFIX + "/sessions/{id}/activities", self._activities)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        self.port = 0

    # -- state --

    def add(self, n: int, start: int = 1) -> list[Resource]:
        """`n` sessions with ids `start`..`start+n-1`, the highest id newest (listed first)."""
        made = [session(str(i)) for i in range(start, start + n)]
        self.sessions[:0] = reversed(made)
        return made

    def delete(self, *ids: str) -> None:
        """Remove sessions: the listing and GET no longer find them."""
        gone = set(ids)
        self.sessions = [s for s in self.sessions if s["id"] not in gone]

    def update(self, sid: str, **fields: Any) -> Resource:
        """Replace fields of one session (a new version, at the same place)."""
        for i, s in enumerate(self.sessions):
            if s["id"] == sid:
                self.sessions[i] = {**s, **fields}
                return self.sessions[i]
        raise KeyError(sid)

    def find(self, sid: str) -> Resource | None:
        """The session with that id, if it exists."""
        return next((s for s in self.sessions if s["id"] == sid), None)

    # -- HTTP --

    @property
    def base_url(self) -> str:
        """What the service is configured with (JULES_API_BASE)."""
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    async def _scripted(self, reply: Reply | None) -> web.Response | None:
        if reply is None:
            return None
        if reply.hang:
            await asyncio.sleep(reply.hang)
        return None if reply.normal else reply.response()

    async def _list(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("pageToken", "")
        if not token:
            self.list_calls += 1
            self._page_index = 0
        index = self._page_index
        self._page_index += 1
        self.keys_seen.append(request.headers.get("X-Goog-Api-Key", ""))
        if self.fail_with is not None:
            return self.fail_with(self.keys_seen[-1]).response()
        if request.headers.get("X-Goog-Api-Key") != self.key:
            return unauthorized().response()
        reply = self.list_replies.popleft() if self.list_replies else None
        scripted = await self._scripted(self.page_replies.get(index, reply))
        if scripted is None:
            size = self.page_size or min(int(request.query.get("pageSize") or 30), MAX_PAGE_SIZE)
            offset = int(token.removeprefix("o") or 0)
            listed = [s for s in self.sessions if s["id"] not in self.hidden]
            page = listed[offset : offset + size]
            body: Resource = {"sessions": page} if page else {}
            if offset + size < len(listed):
                body["nextPageToken"] = f"o{offset + size}"
            scripted = Reply(json=body).response()
        hook = self.after_page.pop(index, None)
        if hook is not None:
            hook()
        return scripted

    async def _get(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        self.get_calls.append(sid)
        if request.headers.get("X-Goog-Api-Key") != self.key:
            return unauthorized().response()
        queue = self.get_replies.get(sid)
        scripted = await self._scripted(queue.popleft() if queue else None)
        if scripted is not None:
            return scripted
        found = self.find(sid)
        return Reply(json=found).response() if found else Reply(404, NOT_FOUND_BODY).response()

    async def _activities(self, request: web.Request) -> web.StreamResponse:
        self.activity_queries.append(dict(request.query))
        entries = self.activities.get(request.match_info["id"])
        if entries is None:
            return Reply(404, NOT_FOUND_BODY).response()
        parts = [e if isinstance(e, bytes) else msgspec.json.encode(e) for e in entries]
        return Reply(body=b'{"activities": [' + b",".join(parts) + b"]}").response()

    async def __aenter__(self) -> FakeUpstream:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()
