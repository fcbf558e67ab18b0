"""Cluster nodes as real processes (`control-room serve`), for failover tests and the bench."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec

from tests.redis_server import free_port

START_TIMEOUT_S: Final = 20.0  # a node imports, connects to Redis and binds in about a second
STOP_TIMEOUT_S: Final = 5.0


class NodeProcess:
    """One `control-room serve` process of a cluster, its log in `log`."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port), "NODE_ID": name}
        self.cwd = cwd
        self.log = cwd / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process (readiness is `wait_ready`)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control_room.cli", "serve"],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        """Wait until /readyz answers 200."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready:\n{self.tail()}")
            await asyncio.sleep(0.05)

    async def stats(self, http: aiohttp.ClientSession, token: str) -> Any:
        """Its /api/stats."""
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(self.url + "/api/stats", headers=headers) as resp:
            return msgspec.json.decode(await resp.read())

    def signal(self, sig: int) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused), then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def tail(self, lines: int = 30) -> str:
        """The end of its log."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def cluster_env(
    *, token: str, api_key: str, upstream: str, redis_url: str, prefix: str, **extra: str
) -> dict[str, str]:
    """The environment of every node of one cluster."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PERSIST", "NOTIFY_"))
    }
    env.update(
        LOCAL_TOKEN=token,
        JULES_API_KEY=api_key,
        JULES_API_BASE=upstream,
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


async def leader_of(
    http: aiohttp.ClientSession, nodes: Sequence[NodeProcess], token: str, within: float = 20.0
) -> NodeProcess:
    """The node whose /api/stats says it leads (waits for one)."""
    deadline = time.monotonic() + within
    while True:
        for node in nodes:
            with contextlib.suppress(aiohttp.ClientError):
                if (await node.stats(http, token))["cluster"]["isLeader"]:
                    return node
        if time.monotonic() > deadline:
            raise AssertionError("no node leads:\n" + "\n".join(n.tail(10) for n in nodes))
        await asyncio.sleep(0.02)
