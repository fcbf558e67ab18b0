"""`make cluster`: Redis, the simulated Jules API and three nodes on consecutive ports.

Redis is the one at REDIS_URL (default 127.0.0.1:6379), started from a temporary directory
when nothing answers there. Each node is a `control-room serve` process; its dashboard URL is
printed. Ctrl-C stops everything this command started. Try `kill -9` on the leader's pid (the
`leader` line of /api/stats, or the log) and watch another node take over within the lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from control_room.broker.redis import Keys, drop_cluster
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.tasks import run_loop

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
PREFIX: Final = "control-room-dev"  # wiped at start and at exit: every run is a fresh history
NODES: Final = 3
POLL_INTERVAL_MS: Final = 1_000  # the demo's pace: the board feels live
TICK_S: Final = 2.0  # simulated sessions move every couple of seconds
WARMUP_SESSIONS: Final = 8
STOP_TIMEOUT_S: Final = 5.0


async def _answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


def _start_redis(url: str, directory: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("make cluster: no Redis at REDIS_URL and no redis-server to start one")
    port = url.rsplit(":", 1)[-1].split("/")[0]
    return subprocess.Popen(
        [binary, "--port", port, "--bind", "127.0.0.1", "--dir", directory, "--save", ""],
        stdout=subprocess.DEVNULL,
    )


async def main(args: argparse.Namespace) -> int:
    """Run the cluster until SIGINT/SIGTERM; 1 when a node died by itself."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    token = secrets.token_urlsafe(24)
    api_key = secrets.token_urlsafe(16)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="cr-cluster-") as directory:
        redis_proc = None
        if not await _answers(url):
            redis_proc = _start_redis(url, directory)
            for _ in range(100):
                if await _answers(url):
                    break
                await asyncio.sleep(0.05)
        await drop_cluster(url, PREFIX)
        sim = Simulator(args.seed)
        for _ in range(60):
            if len(sim) >= WARMUP_SESSIONS:
                break
            sim.tick()
        nodes: list[asyncio.subprocess.Process] = []
        died = False
        async with SimulatorServer(sim, api_key, tick_interval=TICK_S) as upstream:
            try:
                for i in range(args.nodes):
                    env = {
                        **os.environ,
                        "LOCAL_TOKEN": token,
                        "JULES_API_KEY": api_key,
                        "JULES_API_BASE": upstream.base_url,
                        "REDIS_URL": url,
                        "REDIS_PREFIX": PREFIX,
                        "PORT": str(args.port + i),
                        "NODE_ID": f"node-{i + 1}",
                        "POLL_INTERVAL_MS": str(POLL_INTERVAL_MS),
                        "LOG_FORMAT": "console",
                    }
                    nodes.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "control_room.cli",
                            "serve",
                            env=env,
                            stdin=subprocess.DEVNULL,
                        )
                    )
                _announce(args.port, token, nodes, url, redis_proc is not None, Keys(PREFIX))
                died = await _until_stopped_or_a_node_dies(stop, nodes, args.port)
            finally:
                for proc in nodes:
                    with contextlib.suppress(ProcessLookupError):  # it may have exited
                        proc.terminate()
                for proc in nodes:
                    try:
                        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
                    except TimeoutError:
                        proc.kill()
                with contextlib.suppress(RedisError, OSError):
                    await drop_cluster(url, PREFIX)
                if redis_proc is not None:
                    redis_proc.terminate()
                    redis_proc.wait()
    return 1 if died else 0


async def _until_stopped_or_a_node_dies(
    stop: asyncio.Event, nodes: Sequence[asyncio.subprocess.Process], first_port: int
) -> bool:
    """Wait for Ctrl-C; a node that exits by itself (its port taken, say) stops the rest,
    with one line saying which, rather than a cluster running a node short."""
    waits = {asyncio.ensure_future(proc.wait()): i for i, proc in enumerate(nodes)}
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
    for future in (stopping, *waits):
        if future not in done:
            future.cancel()
    died = False
    for future in done:
        if future in waits:
            died = True
            i = waits[future]
            print(
                f"make cluster: node-{i + 1} (port {first_port + i}) exited with code"
                f" {future.result()}; stopping the others (a taken port? try"
                " `python -m control_room.devcluster --port 3101`)",
                file=sys.stderr,
                flush=True,
            )
    return died


def _announce(
    port: int,
    token: str,
    nodes: Sequence[asyncio.subprocess.Process],
    url: str,
    started_redis: bool,
    keys: Keys,
) -> None:
    lines = ["", "  Jules Control Room cluster (simulated Jules API)"]
    lines.append(f"  Redis     : {url}{' (started for this run)' if started_redis else ''}")
    for i, proc in enumerate(nodes):
        lines.append(
            f"  node-{i + 1}    : http://127.0.0.1:{port + i}/#token={token}  (pid {proc.pid})"
        )
    lines.append(f"  Leader    : GET /api/stats on any node, or redis-cli GET '{keys.leader}'")
    lines.append(f"  Token     : {token}")
    lines.append("  Stop with Ctrl-C.\n")
    print("\n".join(lines), flush=True)


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m control_room.devcluster`."""
    parser = argparse.ArgumentParser(prog="make cluster", description=__doc__)
    parser.add_argument("--port", type=int, default=3001, help="the first node's port")
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument("--seed", type=int, default=secrets.randbelow(1_000_000))
    sys.exit(run_loop(main(parser.parse_args(argv))))


if __name__ == "__main__":
    run()
