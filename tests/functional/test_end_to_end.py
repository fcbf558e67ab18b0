"""The issue's definition of done: `serve` pointed at `simulate`, real clients in other
processes (Node's `ws` library and Python's `websockets`) see created/updated/deleted."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

NODE_DIR = Path(__file__).parents[1] / "node"
TOKEN = "e2e.token.with.dots"
KEY = "e2e-sim-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for_port(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
async def served() -> AsyncIterator[str]:
    """`control-room simulate` (ticking fast) and `control-room serve` as real processes."""
    sim_port, port = free_port(), free_port()
    cli = [sys.executable, "-m", "control_room.cli"]
    simulate = await asyncio.create_subprocess_exec(
        *cli,
        "simulate",
        "--port",
        str(sim_port),
        "--api-key",
        KEY,
        "--seed",
        "7",
        "--tick",
        "0.1",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "PORT": str(port),
        "LOCAL_TOKEN": TOKEN,
        "JULES_API_KEY": KEY,
        "JULES_API_BASE": f"http://127.0.0.1:{sim_port}/v1alpha",
        "POLL_INTERVAL_MS": "50",
        "LOG_LEVEL": "warning",
    }
    serve = await asyncio.create_subprocess_exec(
        *cli, "serve", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for_port(sim_port, simulate)
        await wait_for_port(port, serve)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        for proc in (serve, simulate):
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


async def test_python_websockets_client_sees_every_kind(served: str) -> None:
    kinds: set[str] = set()
    seqs: list[int] = []
    async with websockets.connect(served, subprotocols=[f"bearer.{TOKEN}"]) as ws:  # type: ignore[list-item]
        while kinds != {"created", "updated", "deleted"}:
            delta = json.loads(await asyncio.wait_for(ws.recv(), 20))
            kinds.add(delta["type"])
            seqs.append(delta["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.skipif(
    (shutil.which("node") is None or not (NODE_DIR / "node_modules" / "ws").is_dir())
    and not os.environ.get("CI"),
    reason="Node.js or tests/node/node_modules missing (make setup installs them)",
)
async def test_node_ws_client_sees_every_kind(served: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "client.mjs"),
        "ws",
        served,
        TOKEN,
        "200",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    kinds: set[str] = set()
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).startswith(b"open bearer.")
        while kinds != {"created", "updated", "deleted"}:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, "the Node client exited early"
            kinds.add(json.loads(line)["type"])
    finally:
        proc.kill()
        await proc.wait()
