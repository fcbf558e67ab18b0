"""A minimal, fast Jules list API for benchmarks: every change's time is stamped in its title.

`python -m bench.upstream --port 0` serves `GET /v1alpha/sessions` (paged, newest first),
`GET /v1alpha/sessions/{id}` and its (empty) `/activities` over a fixed pool of sessions, and
prints `READY <port>`.
Pages are encoded once and cached until the next change, so the upstream costs next to
nothing while the servers under test poll it.

Changes happen only on request: `POST /bench/run {"k", "period_ms", "periods"}` changes
`k` sessions every period, `periods` times, then stops by itself. Each change gets a
number (`cid`) and the wall-clock time at which it was made, written into the session's
title as `bench <cid> <time_ns>`: a client that receives the delta computes the latency
from the upstream change to itself. Sessions are changed in rotation through the pool, so
no session changes twice within `pool / k` periods and no poll can coalesce two changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web

from control_room.tasks import run_loop

DEFAULT_SESSIONS: Final = 250  # three pages of 100: paging is exercised on every poll
MAX_PAGE_SIZE: Final = 100  # the Jules API's own maximum
MAX_PERIODS: Final = 10_000  # a run stops by itself; this bounds a mistyped request
MIN_PERIOD_MS: Final = 5  # below this the timer, not the servers, is what is measured
API_KEY_HEADER: Final = "X-Goog-Api-Key"
PROMPT: Final = (
    "Refactor the session poller so that a failed page never produces deletions; "
    "add tests for paging while the list shifts, and document the retry policy. "
) * 3  # a realistic prompt weighs a few hundred bytes: every poll carries it

_encoder: Final = msgspec.json.Encoder()


def iso(ns: int) -> str:
    """RFC 3339 UTC with microseconds, the way Jules writes times."""
    return (
        datetime.fromtimestamp(ns / 1e9, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def make_session(index: int, created_ns: int) -> dict[str, Any]:
    """One plausible Jules Session resource; every fifth one has a pull request."""
    sid = f"{10_000_000_000 + index:d}"
    stamp = iso(created_ns)
    outputs: list[dict[str, Any]] = []
    if index % 5 == 0:
        outputs.append(
            {
                "pullRequest": {
                    "url": f"https://github.com/acme/widgets/pull/{index}",
                    "title": f"Fix flaky poller test #{index}",
                    "description": "Keeps the snapshot when a page fails.",
                }
            }
        )
    return {
        "name": f"sessions/{sid}",
        "id": sid,
        "prompt": PROMPT,
        "title": "bench 0 0",
        "sourceContext": {
            "source": f"sources/github/acme/repo-{index % 17}",
            "githubRepoContext": {"startingBranch": "main"},
        },
        "state": "IN_PROGRESS",
        "url": f"https://jules.google.com/session/{sid}",
        "outputs": outputs,
        "createTime": stamp,
        "updateTime": stamp,
    }


class Pool:
    """The sessions, their cached pages, and the log of the changes made to them."""

    def __init__(self, size: int) -> None:
        now = time.time_ns()
        # Newest first, as the real API lists them: index 0 was created last.
        self.sessions = [make_session(i, now - i * 1_000_000_000) for i in range(size)]
        self.by_id = {s["id"]: s for s in self.sessions}
        self._pages: dict[tuple[int, int], bytes] = {}
        self._cursor = 0
        self.next_cid = 1
        self.running = False
        self.runs = 0

    def page(self, size: int, index: int) -> bytes:
        """The encoded page `index` of `size` sessions (cached until the next change)."""
        key = (size, index)
        body = self._pages.get(key)
        if body is None:
            start = index * size
            chunk = self.sessions[start : start + size]
            page: dict[str, Any] = {"sessions": chunk} if chunk else {}
            if start + size < len(self.sessions):
                page["nextPageToken"] = str(index + 1)
            body = self._pages[key] = _encoder.encode(page)
        return body

    def change(self, k: int) -> None:
        """Change the next `k` sessions of the rotation, stamping each with its time."""
        for _ in range(k):
            session = self.sessions[self._cursor]
            self._cursor = (self._cursor + 1) % len(self.sessions)
            ns = time.time_ns()
            session["title"] = f"bench {self.next_cid} {ns}"
            session["updateTime"] = iso(ns)
            self.next_cid += 1
        self._pages.clear()

    async def run(self, k: int, period: float, periods: int) -> None:
        """Change `k` sessions every `period` seconds, `periods` times, on a fixed schedule."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for i in range(periods):
                delay = start + i * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.change(k)
        finally:
            self.running = False


def create_app(pool: Pool, api_key: str) -> web.Application:
    """The Jules-shaped routes plus the `/bench/` control routes."""
    tasks: set[asyncio.Task[None]] = set()

    def authorised(request: web.Request) -> bool:
        return request.headers.get(API_KEY_HEADER) == api_key

    async def list_sessions(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response(
                {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status=401
            )
        try:
            size = min(int(request.query.get("pageSize", "30")), MAX_PAGE_SIZE)
            index = int(request.query.get("pageToken", "0") or "0")
        except ValueError:
            return web.json_response(
                {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, status=400
            )
        return web.Response(body=pool.page(max(size, 1), index), content_type="application/json")

    async def get_session(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response(
                {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status=401
            )
        session = pool.by_id.get(request.match_info["sid"])
        if session is None:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND"}}, status=404)
        return web.Response(body=_encoder.encode(session), content_type="application/json")

    async def list_activities(request: web.Request) -> web.Response:
        # The pool's sessions have no activities: the control room reads them for every
        # session that moved (one small request each), as it does against Jules.
        if not authorised(request):
            return web.json_response(
                {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status=401
            )
        if request.match_info["sid"] not in pool.by_id:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND"}}, status=404)
        return web.Response(body=b"{}", content_type="application/json")

    async def start_run(request: web.Request) -> web.Response:
        spec = await request.json()
        k = int(spec["k"])
        period_ms = max(float(spec["period_ms"]), MIN_PERIOD_MS)
        periods = min(int(spec["periods"]), MAX_PERIODS)
        if pool.running:
            return web.json_response({"error": "a run is in progress"}, status=409)
        if not 0 < k <= len(pool.sessions):
            return web.json_response({"error": "k out of range"}, status=400)
        pool.running = True
        pool.runs += 1
        first = pool.next_cid
        task = asyncio.create_task(pool.run(k, period_ms / 1000, periods))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.json_response({"first_cid": first, "changes": k * periods})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(
            {"running": pool.running, "next_cid": pool.next_cid, "runs": pool.runs}
        )

    app = web.Application()
    app.router.add_get("/v1alpha/sessions", list_sessions)
    app.router.add_get("/v1alpha/sessions/{sid}", get_session)
    app.router.add_get("/v1alpha/sessions/{sid}/activities", list_activities)
    app.router.add_post("/bench/run", start_run)
    app.router.add_get("/bench/status", status)
    return app


async def serve(host: str, port: int, sessions: int, api_key: str) -> None:
    """Serve until SIGTERM/SIGINT (or the parent closes our stdin)."""
    pool = Pool(sessions)
    runner = web.AppRunner(create_app(pool, api_key), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None)  # asyncio's and uvloop's Server
    assert sockets, "the site has no listening socket"
    print(f"READY {sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS)
    parser.add_argument("--api-key", default="bench-key")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port, args.sessions, args.api_key)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
