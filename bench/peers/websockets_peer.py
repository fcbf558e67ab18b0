"""The minimal Python peer: poll Jules, diff dicts, and `websockets.broadcast()` each delta.

What a Python developer writes first with the `websockets` library: the stdlib `json`,
plain dicts, the control room's mapping table, one `json.dumps` per delta and
`broadcast()` to every connection (websockets frames the message once per connection and
writes without waiting; it has no backpressure limit, so slow clients are left to its
keepalive: a ping every HEARTBEAT_INTERVAL_MS, closed when the pong is that late). No
compression, like the other servers. The token check happens before the upgrade.

Configured by the same environment as the control room (PORT, LOCAL_TOKEN,
JULES_API_BASE, JULES_API_KEY, POLL_INTERVAL_MS, HEARTBEAT_INTERVAL_MS) plus
BENCH_MODE=publish, PUBLISH_RATE and PUBLISH_COUNT for the broadcast-alone workload
(SIGUSR2 starts a run, as with the other servers). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import http
import json
import os
import signal
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

MAX_PAGES: Final = 2_000  # stops a nextPageToken loop
PLAN_STATUS: Final = {
    "QUEUED": "pending",
    "PLANNING": "pending",
    "AWAITING_PLAN_APPROVAL": "pending",
    "IN_PROGRESS": "in_progress",
    "AWAITING_USER_FEEDBACK": "in_progress",
    "PAUSED": "in_progress",
    "ACTIVE": "in_progress",
    "COMPLETED": "succeeded",
    "FAILED": "failed",
}
BEFORE_APPROVAL: Final = {"STATE_UNSPECIFIED", "QUEUED", "PLANNING", "AWAITING_PLAN_APPROVAL"}
PAST_APPROVAL: Final = {"IN_PROGRESS", "AWAITING_USER_FEEDBACK", "PAUSED", "COMPLETED", "ACTIVE"}
PR_TITLE: Final = "Keep the snapshot when a later page fails, and confirm deletions with a GET"

Session = dict[str, Any]
CLIENTS: set[ServerConnection] = set()


def now_iso() -> str:
    """ISO 8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def repository_of(source: str) -> str:
    """`sources/github/owner/repo` -> `owner/repo`."""
    for prefix in ("sources/github/", "sources/"):
        if source.startswith(prefix):
            return source[len(prefix) :]
    return source


def approval_of(raw: Session, previous: Session | None) -> dict[str, str]:
    """The control room's approval rule, on dicts."""
    state = raw.get("state", "STATE_UNSPECIFIED")
    if state in BEFORE_APPROVAL:
        return {"state": "pending"}
    if state in PAST_APPROVAL:
        if previous is None:
            return {"state": "approved"}
        if previous["approval"]["state"] == "approved":
            return dict(previous["approval"])
        if raw.get("updateTime"):
            return {"state": "approved", "approvedAt": raw["updateTime"]}
        return {"state": "approved"}
    return dict(previous["approval"]) if previous is not None else {"state": "pending"}


def map_session(raw: Session, previous: Session | None) -> Session:
    """Jules Session dict -> JulesSession dict."""
    context = raw.get("sourceContext") or {}
    repo_context = context.get("githubRepoContext") or {}
    out: Session = {
        "id": raw.get("id") or raw.get("name", "").rpartition("/")[2],
        "repository": repository_of(context.get("source", "")),
        "branch": repo_context.get("startingBranch", ""),
        "title": raw.get("title", ""),
        "state": raw.get("state", "STATE_UNSPECIFIED"),
        "planStatus": PLAN_STATUS.get(raw.get("state", ""), "pending"),
        "approval": approval_of(raw, previous),
        "participants": [],
        "createdAt": raw.get("createTime", ""),
        "updatedAt": raw.get("updateTime", ""),
        "url": raw.get("url", ""),
    }
    for output in raw.get("outputs") or ():
        pr = output.get("pullRequest")
        if pr and pr.get("url"):
            out["pullRequest"] = {"url": pr["url"], "title": pr.get("title", "")}
            break
    return out


def map_listing(listing: Iterable[Session], previous: dict[str, Session]) -> dict[str, Session]:
    """Map every session of a complete listing."""
    current: dict[str, Session] = {}
    for raw in listing:
        if raw.get("archived"):
            continue
        mapped = map_session(raw, previous.get(raw.get("id", "")))
        current.setdefault(mapped["id"], mapped)
    return current


def diff(previous: dict[str, Session], current: dict[str, Session]) -> list[Session]:
    """created / updated / deleted deltas, by id."""
    timestamp = now_iso()
    deltas: list[Session] = [
        {"type": "deleted", "sessionId": sid, "before": before, "timestamp": timestamp}
        for sid, before in previous.items()
        if sid not in current
    ]
    for sid, after in current.items():
        before = previous.get(sid)
        if before is None:
            deltas.append(
                {"type": "created", "sessionId": sid, "after": after, "timestamp": timestamp}
            )
        elif before != after:
            deltas.append(
                {
                    "type": "updated",
                    "sessionId": sid,
                    "before": before,
                    "after": after,
                    "timestamp": timestamp,
                }
            )
    return deltas


def publish(delta: Session) -> None:
    """Serialise once, hand to every connection."""
    broadcast(CLIENTS, json.dumps(delta, separators=(",", ":")))


async def list_sessions(http_session: aiohttp.ClientSession, base: str, key: str) -> list[Session]:
    """Every page of the listing."""
    sessions: list[Session] = []
    token = ""
    for _ in range(MAX_PAGES):
        params = {"pageSize": "100"}
        if token:
            params["pageToken"] = token
        async with http_session.get(
            f"{base}/sessions", params=params, headers={"X-Goog-Api-Key": key}
        ) as resp:
            resp.raise_for_status()
            page = json.loads(await resp.read())
        sessions.extend(page.get("sessions", ()))
        token = page.get("nextPageToken", "")
        if not token:
            return sessions
    raise RuntimeError("too many pages")


async def poll_forever(base: str, key: str, interval: float) -> None:
    """Poll, diff, broadcast; the first listing is the baseline."""
    snapshot: dict[str, Session] | None = None
    async with aiohttp.ClientSession() as http_session:
        while True:
            try:
                current = map_listing(await list_sessions(http_session, base, key), snapshot or {})
                if snapshot is not None:
                    for delta in diff(snapshot, current):
                        publish(delta)
                snapshot = current
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                print(f"poll failed: {exc!r}", file=sys.stderr)
            await asyncio.sleep(interval)


def bench_session(title: str, state: str) -> Session:
    """The ~1 KB delta's session, as the other servers build it."""
    return {
        "id": "10000000042",
        "repository": "acme/widgets",
        "branch": "main",
        "title": title,
        "state": state,
        "planStatus": "in_progress" if state == "IN_PROGRESS" else "pending",
        "approval": {"state": "approved", "approvedAt": "2025-11-10T12:05:00.000000Z"},
        "participants": [],
        "createdAt": "2025-11-10T12:00:00.000000Z",
        "updatedAt": "2025-11-10T12:05:00.000000Z",
        "url": "https://jules.google.com/session/10000000042",
        "pullRequest": {"url": "https://github.com/acme/widgets/pull/42", "title": PR_TITLE},
    }


class Publisher:
    """SIGUSR2: publish `count` deltas at `rate` per second."""

    def __init__(self, rate: float, count: int) -> None:
        self.period = 1 / rate
        self.count = count
        self.cid = 0
        self.before = bench_session("bench 0 0", "PLANNING")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin a run unless one is going."""
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        """One run on a fixed schedule."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self.count):
            delay = start + i * self.period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.cid += 1
            after = bench_session(f"bench {self.cid} {time.time_ns()}", "IN_PROGRESS")
            publish(
                {
                    "type": "updated",
                    "sessionId": after["id"],
                    "before": self.before,
                    "after": after,
                    "timestamp": now_iso(),
                }
            )
            self.before = after


async def handler(ws: ServerConnection) -> None:
    """Hold the connection until it closes; messages from clients are ignored."""
    CLIENTS.add(ws)
    try:
        async for _ in ws:
            pass
    except Exception:  # a connection closing abnormally is a normal way out
        pass
    finally:
        CLIENTS.discard(ws)


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    env = os.environ
    token = env.get("LOCAL_TOKEN", "")
    heartbeat = int(env.get("HEARTBEAT_INTERVAL_MS", "30000")) / 1000

    def authorise(connection: ServerConnection, request: Request) -> Response | None:
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        if any(p.strip() == f"bearer.{token}" for p in offered.split(",")):
            return None
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, '{"error":"unauthorized"}\n')

    def select(connection: ServerConnection, offered: Any) -> Any:
        return next((p for p in offered if p.startswith("bearer.")), None)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server: Server
        async with serve(
            handler,
            env.get("HOST", "127.0.0.1"),
            int(env.get("PORT", "3001")),
            process_request=authorise,
            select_subprotocol=select,
            compression=None,
            ping_interval=heartbeat,
            ping_timeout=heartbeat,
            max_size=64 * 1024,
        ) as server:
            print(f"READY {next(iter(server.sockets)).getsockname()[1]}", flush=True)
            task: asyncio.Task[None] | None = None
            if env.get("BENCH_MODE", "poll") == "publish":
                publisher = Publisher(
                    float(env.get("PUBLISH_RATE", "20")), int(env.get("PUBLISH_COUNT", "100"))
                )
                loop.add_signal_handler(signal.SIGUSR2, publisher.start)
            else:
                task = asyncio.create_task(
                    poll_forever(
                        env.get("JULES_API_BASE", "").rstrip("/"),
                        env.get("JULES_API_KEY", ""),
                        int(env.get("POLL_INTERVAL_MS", "5000")) / 1000,
                    )
                )
            await stop.wait()
            if task is not None:
                task.cancel()

    try:
        import uvloop  # the control room runs on uvloop; give the peer the same loop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
