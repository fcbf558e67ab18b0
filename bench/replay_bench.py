"""Replay to a resuming client (issue 3): 10,000 deltas after `since`, timed at the client.

Starts `bench.broadcast_server` (the real service, stub upstream) in its own process,
publishes N deltas of ~1 KB, then connects a client with `?since=0&epoch=<epoch>` and times
from the start of the connection to the last replayed delta. Two sources of history:
`memory` (the ring, HISTORY_SIZE ≥ N) and `sqlite` (PERSIST=1 with a ring of 100, so the
replay is read from the store). Goal: ≤ 1 s.

    python -m bench.replay_bench [--deltas 10000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Final

import aiohttp

TOKEN: Final = "replay-bench-token"
GOAL_S: Final = 1.0
PUBLISH_WAIT_S: Final = 60.0  # publishing 10,000 deltas takes well under a second here
RECEIVE_TIMEOUT_S: Final = 10.0  # one replay; far above the goal, so a failure is visible


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def position(http: aiohttp.ClientSession, base: str) -> tuple[str, int]:
    """The service's (epoch, seq)."""
    async with http.get(
        f"{base}/api/deltas?since=0&limit=0", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        body = await resp.json()
    return body["epoch"], body["seq"]


async def one_source(source: str, deltas: int, runs: int) -> dict[str, Any]:
    """Publish `deltas` into a fresh server and time `runs` full replays."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "PORT": str(port),
            "LOCAL_TOKEN": TOKEN,
            "LOG_LEVEL": os.environ.get("REPLAY_BENCH_LOG_LEVEL", "warning"),
            "HISTORY_SIZE": str(deltas) if source == "memory" else "100",
            "PERSIST": "1" if source == "sqlite" else "0",
            "DATA_DIR": data_dir,
        }
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.broadcast_server",
            "--rate",
            "1000000",
            "--count",
            str(deltas),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        assert server.stdout is not None
        try:
            line = await asyncio.wait_for(server.stdout.readline(), 30)
            assert line.startswith(b"READY"), line
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                await asyncio.sleep(0.5)  # the baseline poll
                server.send_signal(signal.SIGUSR2)
                deadline = time.monotonic() + PUBLISH_WAIT_S
                while (await position(http, base))[1] < deltas:
                    if time.monotonic() > deadline:
                        raise TimeoutError("publishing did not finish")
                    await asyncio.sleep(0.05)
                epoch, _ = await position(http, base)
                times = [await replay_once(http, port, epoch, deltas) for _ in range(runs)]
        finally:
            server.send_signal(signal.SIGTERM)
            await server.wait()
    return {
        "source": source,
        "deltas": deltas,
        "runs": runs,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "goal_s": GOAL_S,
        "met": max(times) <= GOAL_S,
    }


async def replay_once(http: aiohttp.ClientSession, port: int, epoch: str, deltas: int) -> float:
    """Connect with since=0 and time until the last replayed delta arrives, checking order."""
    started = time.perf_counter()
    url = f"ws://127.0.0.1:{port}/?since=0&epoch={epoch}"
    async with http.ws_connect(url, protocols=(f"bearer.{TOKEN}",), max_msg_size=0) as ws:
        expected = 1
        while expected <= deltas:
            try:
                msg = await asyncio.wait_for(ws.receive(), RECEIVE_TIMEOUT_S)
            except TimeoutError:
                raise TimeoutError(f"replay stalled after {expected - 1} deltas") from None
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"replay interrupted: {msg.type}")
            seq = json.loads(msg.data)["seq"]
            if seq != expected:
                raise RuntimeError(f"replay out of order: got {seq}, expected {expected}")
            expected += 1
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run both sources; print a table (or JSON rows); exit 1 when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    async def run() -> list[dict[str, Any]]:
        return [await one_source(s, args.deltas, args.runs) for s in ("memory", "sqlite")]

    rows = asyncio.run(run())
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'history':<8} {'deltas':>7} {'runs':>4} {'median s':>9} {'max s':>7}  goal")
        for r in rows:
            verdict = "met" if r["met"] else "NOT MET"
            print(
                f"{r['source']:<8} {r['deltas']:>7,} {r['runs']:>4} {r['median_s']:>9.3f}"
                f" {r['max_s']:>7.3f}  ≤ {GOAL_S:.0f} s {verdict}"
            )
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
