"""SIGKILL while deltas flow: after a restart on the same store, a resuming client misses none.

`control-room serve` runs as a real process (PERSIST=1) against the simulator served by this
test; a real WebSocket client follows it, resumes with `?since=&epoch=` after the kill, and
checks every delta against the state it holds, so a gap or a repeat cannot go unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import pytest

from control_room.jules.simulator import Simulator, SimulatorServer
from tests.conftest import API_KEY, MS, TOKEN, nothing_more
from tests.store.conftest import Backend

CONTROL_ROOM: Final = str(Path(sys.executable).with_name("control-room"))
STARTUP_TIMEOUT_S: Final = 20.0  # a cold interpreter import on a loaded CI machine
SEEN_BEFORE_KILL: Final = 40  # enough deltas that the kill lands mid-stream, not at rest
STATES: Final = ("PLANNING", "AWAITING_PLAN_APPROVAL", "IN_PROGRESS", "COMPLETED", "FAILED")


class ServeProcess:
    """`control-room serve` as a child process; its port is read from its first log lines."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[bytes] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Spawn and wait until it listens; the port."""
        self.proc = await asyncio.create_subprocess_exec(
            CONTROL_ROOM,
            "serve",
            env=self.env,
            cwd=self.cwd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(port))
        return await asyncio.wait_for(port, STARTUP_TIMEOUT_S)

    async def _read(self, port: asyncio.Future[int]) -> None:
        # Drained to the end, always: a full pipe would stall the server's logging.
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line)
            if not port.done() and b'"Service listening"' in line:
                port.set_result(int(msgspec.json.decode(line)["port"]))
        if not port.done():
            port.set_exception(RuntimeError(b"".join(self.log).decode(errors="replace")))

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, no buffer is flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def close(self) -> None:
        """Stop it if still running."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._reader


@pytest.fixture
async def serve(
    backend: Backend, upstream: SimulatorServer, tmp_path: Path
) -> AsyncIterator[list[ServeProcess]]:
    """Start servers on one store (call `start(...)` on `serve_env`); all killed at the end."""
    started: list[ServeProcess] = []
    yield started
    for server in started:
        await server.close()


def serve_env(backend: Backend, upstream: SimulatorServer, data_dir: Path) -> dict[str, str]:
    """PERSIST=1 on the test's store, polling the simulator every 20 ms."""
    settings = backend.service_settings()
    return {
        **os.environ,
        "LOCAL_TOKEN": TOKEN,
        "JULES_API_KEY": API_KEY,
        "JULES_API_BASE": upstream.base_url,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "POLL_INTERVAL_MS": "20",
        "PERSIST": "1",
        "DATA_DIR": str(settings.get("data_dir", data_dir)),
        "DATABASE_URL": settings.get("database_url", ""),
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
    }


class Follower:
    """A client's view: the sessions it holds, checked against every delta it applies."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.epoch: str = snapshot["epoch"]
        self.seq: int = snapshot["seq"]
        self.first_seq = self.seq
        self.sessions: dict[str, Any] = {s["id"]: s for s in snapshot["sessions"]}
        self.applied: list[dict[str, Any]] = []

    def apply(self, delta: dict[str, Any]) -> None:
        """Apply one delta; fail on a gap, a repeat, or a `before` that is not what we hold."""
        assert delta.get("type") != "reset", delta
        assert delta["seq"] == self.seq + 1, f"expected seq {self.seq + 1}, got {delta['seq']}"
        sid = delta["sessionId"]
        if delta["type"] == "created":
            assert sid not in self.sessions
        else:
            assert self.sessions.get(sid) == delta["before"], f"missed a change of {sid}"
        if delta["type"] == "deleted":
            del self.sessions[sid]
        else:
            self.sessions[sid] = delta["after"]
        self.seq = delta["seq"]
        self.applied.append(delta)


async def follow(ws: aiohttp.ClientWebSocketResponse, follower: Follower, until: int) -> None:
    """Apply deltas until `until` of them arrived in total, or the socket closes."""
    while len(follower.applied) < until:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return
        follower.apply(msgspec.json.decode(msg.data))


async def churn(sim: Simulator, rng: random.Random) -> None:
    """Keep the upstream changing: create, move and delete sessions, forever."""
    while True:
        ids = [s["id"] for s in sim.sessions_newest_first()]
        roll = rng.random()
        if roll < 0.3 or len(ids) < 5:
            sim.create()
        elif roll < 0.85:
            sim.set_state(rng.choice(ids), rng.choice(STATES))
        else:
            sim.delete(rng.choice(ids))
        await asyncio.sleep(3 * MS)


async def wait_ready(http: aiohttp.ClientSession, port: int) -> None:
    """Until /readyz says the first poll is done (a snapshot before it would be empty)."""
    for _ in range(1000):
        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(10 * MS)
    pytest.fail("the server never became ready")


async def connect(http: aiohttp.ClientSession, port: int, query: str) -> Any:
    return await http.ws_connect(
        f"ws://127.0.0.1:{port}/{query}", protocols=(f"bearer.{TOKEN}",), autoping=True
    )


async def test_a_sigkilled_server_resumes_every_unseen_delta_exactly_once(
    backend: Backend,
    upstream: SimulatorServer,
    sim: Simulator,
    serve: list[ServeProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    for _ in range(20):
        sim.create()
    env = serve_env(backend, upstream, tmp_path / "data")

    first = ServeProcess(env, tmp_path)
    serve.append(first)
    port = await first.start()
    await wait_ready(http, port)
    ws = await connect(http, port, "?snapshot=1")
    snapshot = msgspec.json.decode((await ws.receive()).data)
    assert snapshot["type"] == "snapshot"
    follower = Follower(snapshot)

    churner = asyncio.create_task(churn(sim, random.Random(7)))
    try:
        await asyncio.wait_for(follow(ws, follower, SEEN_BEFORE_KILL), 20)
        await first.kill()  # while the upstream keeps changing and polls keep landing
        await asyncio.wait_for(follow(ws, follower, 10**9), 5)  # whatever was in flight
    finally:
        churner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await churner
    seen_before_restart = len(follower.applied)
    assert seen_before_restart >= SEEN_BEFORE_KILL

    # While the server is down, the upstream moves on.
    # Sessions the client knows (the churn may have made others the dying server never saw).
    ids = sorted(s["id"] for s in sim.sessions_newest_first() if s["id"] in follower.sessions)
    made = sim.create(title="made while down")["id"]
    sim.delete(ids[0])
    moved_to = "FAILED" if sim.get(ids[1])["state"] == "PAUSED" else "PAUSED"  # a real change
    sim.set_state(ids[1], moved_to)

    second = ServeProcess(env, tmp_path)
    serve.append(second)
    port = await second.start()
    resumed = await connect(http, port, f"?since={follower.seq}&epoch={follower.epoch}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    final: dict[str, Any] = {}
    for _ in range(1000):  # until the restarted server has polled the downtime changes
        async with http.get(f"http://127.0.0.1:{port}/api/sessions", headers=auth) as resp:
            if resp.status == 200:
                final = await resp.json()
                if made in {s["id"] for s in final["sessions"]}:
                    break
        await asyncio.sleep(10 * MS)
    assert final["epoch"] == follower.epoch  # the same history, continued
    await asyncio.wait_for(
        follow(resumed, follower, seen_before_restart + final["seq"] - follower.seq), 10
    )

    # Every seq from the snapshot on arrived once, each consistent with the one before.
    seqs = [d["seq"] for d in follower.applied]
    assert seqs == list(range(follower.first_seq + 1, final["seq"] + 1))
    after_restart = {(d["type"], d["sessionId"]) for d in follower.applied[seen_before_restart:]}
    assert {("created", made), ("deleted", ids[0]), ("updated", ids[1])} <= after_restart
    assert follower.sessions == {s["id"]: s for s in final["sessions"]}
    assert set(follower.sessions) == {s["id"] for s in sim.sessions_newest_first()}
    assert follower.sessions[ids[1]]["state"] == moved_to
    await nothing_more(resumed)
