"""The page's protocol edge cases, against a scripted server: duplicates, gaps, a bad resume,
and what it says when the service answers 503 `not_ready`, another error, or nothing at all.

The real service never sends a duplicate or skips a seq on one connection, so these cases
need a server that misbehaves on purpose. It is still a real HTTP and WebSocket server on
loopback serving the real page; only its script is fixed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from control_room.app import STATIC_DIR
from tests.browser.conftest import LOOP, module_loop
from tests.conftest import TOKEN

pytestmark = [pytest.mark.browser, LOOP]

EPOCH = "scripted"
TIMEOUT_MS = 5000


def session(sid: str, state: str, updated: str) -> dict[str, Any]:
    """A session in the service's wire shape."""
    return {
        "id": sid,
        "repository": "acme/api",
        "branch": "main",
        "title": f"Session {sid}",
        "state": state,
        "planStatus": "pending",
        "approval": {"state": "pending"},
        "participants": [],
        "createdAt": "2025-01-01T00:00:00Z",
        "updatedAt": updated,
        "url": f"https://jules.google.com/session/{sid}",
    }


def updated(seq: int, sid: str, before: str, after: str) -> dict[str, Any]:
    """An `updated` delta."""
    stamp = f"2025-01-01T00:00:{seq:02d}Z"
    return {
        "type": "updated",
        "sessionId": sid,
        "before": session(sid, before, "2025-01-01T00:00:00Z"),
        "after": session(sid, after, stamp),
        "timestamp": stamp,
        "seq": seq,
    }


def activity(seq: int, sid: str, aid: str) -> dict[str, Any]:
    """An `activity` message: the agent's progress, number `seq` on the activities channel."""
    stamp = f"2025-01-01T00:01:{seq:02d}Z"
    return {
        "type": "activity",
        "sessionId": sid,
        "activity": {
            "id": aid,
            "sessionId": sid,
            "kind": "progressUpdated",
            "originator": "agent",
            "createdAt": stamp,
            "title": f"Step {aid}",
        },
        "timestamp": stamp,
        "seq": seq,
    }


TIMELINE_IDS = "id => (window.controlRoom.timelines.get(id)?.list ?? []).map(a => a.id)"


Script = Callable[[web.WebSocketResponse, dict[str, str]], Awaitable[None]]


class ScriptedServer:
    """Serves the real page, answers REST with a fixed snapshot, and runs `script` per socket."""

    def __init__(self, script: Script, *, refuse_resume: bool = False) -> None:
        self.script = script
        self.refuse_resume = refuse_resume
        self.connections: list[dict[str, str]] = []
        self.url = ""
        self.sessions_answer: Callable[[], web.Response] | None = None
        """Makes what GET /api/sessions answers (to a good token) instead of the snapshot."""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind to an ephemeral loopback port."""
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/api/sessions", self._sessions)
        app.router.add_static("/static/", STATIC_DIR)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Close everything."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sessions(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.sessions_answer is not None:
            return self.sessions_answer()
        sessions = [session("a", "QUEUED", "2025-01-01T00:00:00Z")]
        return web.json_response({"sessions": sessions, "seq": 5, "epoch": EPOCH})

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.FileResponse(STATIC_DIR / "index.html")
        if f"bearer.{TOKEN}" not in request.headers.get("Sec-WebSocket-Protocol", ""):
            return web.json_response({"error": "unauthorized"}, status=401)
        query = dict(request.query)
        self.connections.append(query)
        if self.refuse_resume and "since" in query:  # as the service does for a bad position
            return web.json_response({"error": "bad_request", "parameter": "since"}, status=400)
        ws = web.WebSocketResponse(protocols=("control-room.v1",))
        await ws.prepare(request)
        await self.script(ws, query)
        async for _ in ws:  # keep the socket open until the page leaves
            pass
        return ws


@module_loop
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedServer]]]:
    """Start scripted servers; all are stopped at the end of the test."""
    servers: list[ScriptedServer] = []

    async def start(script: Script, **options: bool) -> ScriptedServer:
        server = ScriptedServer(script, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def test_duplicates_are_dropped_and_a_gap_resumes_from_the_last_good_seq(
    page: Page, scripted: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    async def script(ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        if query.get("snapshot") == "1":
            snapshot = [session("a", "QUEUED", "2025-01-01T00:00:00Z")]
            await ws.send_json({"type": "snapshot", "epoch": EPOCH, "seq": 5, "sessions": snapshot})
            await ws.send_json(updated(6, "a", "QUEUED", "PLANNING"))
            await ws.send_json(updated(6, "a", "QUEUED", "PLANNING"))  # duplicate
            await ws.send_json(updated(8, "a", "AWAITING_PLAN_APPROVAL", "IN_PROGRESS"))  # gap
        elif query.get("since") == "6" and query.get("epoch") == EPOCH:
            await ws.send_json(updated(7, "a", "PLANNING", "AWAITING_PLAN_APPROVAL"))
            await ws.send_json(updated(8, "a", "AWAITING_PLAN_APPROVAL", "IN_PROGRESS"))

    server = await scripted(script)
    await page.goto(f"{server.url}/#token={TOKEN}")

    dashboard = page.get_by_test_id("dashboard")
    await expect(dashboard).to_have_attribute("data-seq", "8", timeout=TIMEOUT_MS)
    state = page.locator('tr[data-session-id="a"] [data-field="state"]')
    await expect(state).to_have_attribute("data-value", "IN_PROGRESS")
    stats = await page.evaluate("window.controlRoom.stream.stats")
    assert stats["duplicates"] == 1
    assert stats["gaps"] == 1
    assert server.connections == [
        {"snapshot": "1", "activities": "1"},
        {"since": "6", "epoch": EPOCH, "activities": "1"},
    ]
    # Each delta reached the feed once: 6, 7, 8 (not the duplicate, not 8 twice).
    seqs = await page.eval_on_selector_all(
        '[data-testid="feed-item"]', "items => items.map(i => i.dataset.seq)"
    )
    assert seqs == ["8", "7", "6"]


async def test_reset_reloads_the_snapshot_and_keeps_the_live_deltas_after_it(
    page: Page, scripted: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    first = asyncio.Event()

    async def script(ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        if query.get("snapshot") == "1" and not first.is_set():
            first.set()
            snapshot = [session("old", "QUEUED", "2025-01-01T00:00:00Z")]
            await ws.send_json(
                {
                    "type": "snapshot",
                    "epoch": "old",
                    "seq": 40,
                    "sessions": snapshot,
                    "activitiesSeq": 7,
                }
            )
            await ws.close()  # the "restart"
        elif query.get("since") == "40" and query.get("epoch") == "old":
            await ws.send_json(
                {"type": "reset", "epoch": EPOCH, "seq": 4, "reason": "epoch", "activitiesSeq": 20}
            )
            # Live messages keep coming while the page reloads: 5 is in its reload, 6 is not;
            # activity 20 is at the reset's position (already counted), 21 is new.
            await ws.send_json(updated(5, "a", "QUEUED", "QUEUED"))
            await ws.send_json(activity(20, "a", "before-the-reset"))
            await ws.send_json(updated(6, "a", "QUEUED", "PLANNING"))
            await ws.send_json(activity(21, "a", "after-the-reset"))

    server = await scripted(script)
    await page.goto(f"{server.url}/#token={TOKEN}")

    dashboard = page.get_by_test_id("dashboard")
    await expect(dashboard).to_have_attribute("data-epoch", EPOCH, timeout=TIMEOUT_MS)
    await expect(dashboard).to_have_attribute("data-seq", "6")
    await expect(page.locator('tr[data-session-id="old"]')).to_have_count(0)
    state = page.locator('tr[data-session-id="a"] [data-field="state"]')
    await expect(state).to_have_attribute("data-value", "PLANNING")
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    stats = await page.evaluate("window.controlRoom.stream.stats")
    assert stats["resets"] == 1
    assert stats["duplicates"] == 1  # seq 5 was already in the reloaded snapshot
    assert stats["activityDuplicates"] == 1  # activity 20 is at the reset's position
    assert await page.evaluate(TIMELINE_IDS, "a") == ["after-the-reset"]
    assert server.connections == [
        {"snapshot": "1", "activities": "1"},
        {"since": "40", "epoch": "old", "activities": "1", "activitiesSince": "7"},
    ]


async def test_activities_drop_duplicates_and_a_gap_resumes_both_channels(
    page: Page, scripted: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    """The activities channel has its own seq: the same rules, and resume says both."""

    async def script(ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        if query.get("snapshot") == "1":
            snapshot = [session("a", "IN_PROGRESS", "2025-01-01T00:00:00Z")]
            await ws.send_json(
                {
                    "type": "snapshot",
                    "epoch": EPOCH,
                    "seq": 5,
                    "sessions": snapshot,
                    "activitiesSeq": 10,
                }
            )
            await ws.send_json(activity(11, "a", "one"))
            await ws.send_json(updated(6, "a", "IN_PROGRESS", "IN_PROGRESS"))
            await ws.send_json(activity(11, "a", "one"))  # duplicate
            await ws.send_json(activity(13, "a", "three"))  # gap: 12 is missing
        elif query.get("activitiesSince") == "11":
            await ws.send_json(activity(12, "a", "two"))
            await ws.send_json(activity(13, "a", "three"))

    server = await scripted(script)
    await page.goto(f"{server.url}/#token={TOKEN}")

    await page.wait_for_function(
        "() => (window.controlRoom?.timelines.get('a')?.list.length ?? 0) === 3",
        timeout=TIMEOUT_MS,
    )
    assert await page.evaluate(TIMELINE_IDS, "a") == ["one", "two", "three"]
    stats = await page.evaluate("window.controlRoom.stream.stats")
    assert stats["activityDuplicates"] == 1
    assert stats["activityGaps"] == 1
    assert stats["activities"] == 3
    assert server.connections == [
        {"snapshot": "1", "activities": "1"},
        {"since": "6", "epoch": EPOCH, "activities": "1", "activitiesSince": "11"},
    ]


async def test_a_refused_resume_falls_back_to_a_snapshot(
    page: Page, scripted: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    snapshots = 0

    async def script(ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        nonlocal snapshots
        snapshots += 1
        state = "QUEUED" if snapshots == 1 else "PLANNING"
        snapshot = [session("a", state, f"2025-01-01T00:00:0{snapshots}Z")]
        await ws.send_json({"type": "snapshot", "epoch": EPOCH, "seq": 5, "sessions": snapshot})
        if snapshots == 1:
            await ws.close()

    server = await scripted(script, refuse_resume=True)
    await page.goto(f"{server.url}/#token={TOKEN}")

    state = page.locator('tr[data-session-id="a"] [data-field="state"]')
    await expect(state).to_have_attribute("data-value", "PLANNING", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    assert server.connections == [
        {"snapshot": "1", "activities": "1"},
        # Refused once: perhaps a 503 that has ended since (a restarted service's first
        # poll), so the resume is tried again; refused twice: a snapshot.
        {"since": "5", "epoch": EPOCH, "activities": "1"},
        {"since": "5", "epoch": EPOCH, "activities": "1"},
        {"snapshot": "1", "activities": "1"},
    ]


# The 503 of a service whose upstream refuses connections (issue 9's body), and the older
# body without `upstream`: the page must read both.
UPSTREAM_DOWN = {
    "error": "not_ready",
    "message": "waiting for the Jules API: connection refused to 127.0.0.1:9; retrying in 8 s",
    "upstream": {
        "reason": "upstream_network",
        "detail": "connection refused to 127.0.0.1:9",
        "retryInSeconds": 8.0,
        "consecutiveFailures": 3,
    },
}
FIRST_POLL = {"error": "not_ready", "message": "the first poll has not completed"}


def not_ready(body: dict[str, Any], retry_after: str) -> Callable[[], web.Response]:
    """A 503 as the service sends it (a new response each time: one cannot be sent twice)."""
    return lambda: web.json_response(body, status=503, headers={"Retry-After": retry_after})


async def test_the_page_says_why_it_is_not_live(
    page: Page, scripted: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    """Waiting for Jules, an error answer, an unreachable service: each said as it is."""

    async def script(ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        snapshot = [session("a", "QUEUED", "2025-01-01T00:00:00Z")]
        await ws.send_json({"type": "snapshot", "epoch": EPOCH, "seq": 5, "sessions": snapshot})

    server = await scripted(script)
    server.sessions_answer = not_ready(UPSTREAM_DOWN, "8")
    await page.goto(f"{server.url}/#token={TOKEN}")

    connection = page.get_by_test_id("connection")
    banner = page.get_by_test_id("connection-banner")
    await expect(connection).to_have_attribute("data-state", "waiting", timeout=TIMEOUT_MS)
    await expect(connection).to_contain_text("Waiting for Jules")
    await expect(banner).to_have_text(
        re.compile(
            r"^\s*Connected to the control room; waiting for the Jules API: "
            r"connection refused to 127\.0\.0\.1:9, retrying in [4-8] s\s*$"
        )
    )
    await expect(banner).to_have_attribute("data-cause", "upstream")
    assert server.connections == [], "no socket is tried while the service is not ready"

    # An older service says only `message`, with its own Retry-After.
    server.sessions_answer = not_ready(FIRST_POLL, "2")
    await page.get_by_test_id("retry").click()
    await expect(banner).to_contain_text(
        "waiting for the Jules API: the first poll has not completed, retrying in"
    )

    # Any other answer is not "waiting": it names the status and the service's message.
    server.sessions_answer = lambda: web.json_response(
        {"error": "internal", "message": "the store is read-only"}, status=500
    )
    await page.get_by_test_id("retry").click()
    await expect(banner).to_contain_text(
        "The control room answered HTTP 500: the store is read-only, retrying in"
    )
    # Retried on the page's own backoff, and never called "offline": the service answers.
    await page.wait_for_function("() => window.controlRoom.stream.stats.reconnects >= 6")
    await expect(connection).to_have_attribute("data-state", "reconnecting")

    # Ready again: live, and the banner is gone. (Not a click: after an error the page
    # retries on its own short test backoff, so the button comes and goes.)
    server.sessions_answer = None
    await page.evaluate("window.controlRoom.stream.retryNow()")
    await expect(connection).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
    await expect(banner).to_be_hidden()
    await expect(page.get_by_test_id("session-row")).to_have_count(1)

    # The service goes away: the page says it cannot reach it (not "waiting for Jules").
    await server.stop()
    await expect(banner).to_contain_text(
        f"Cannot reach the control room at {server.url.removeprefix('http://')}",
        timeout=TIMEOUT_MS,
    )
    await expect(banner).to_have_attribute("data-cause", "unreachable")
