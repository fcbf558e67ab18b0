"""Three nodes as real processes: the leader killed and paused under a burst of changes.

Every client on a surviving node must see every seq exactly once, in order, and clients on
different nodes must see the same messages. The takeover time is measured and printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from control_room.jules.simulator import Simulator, SimulatorServer
from tests.cluster.nodes import NodeProcess, cluster_env, leader_of
from tests.conftest import API_KEY, MS, TOKEN

LEASE_MS = 1_000  # takeover within a second (the default is ten)
POLL_MS = 100
BURST_S = 0.02  # a change every 20 ms: about five per poll


class Client:
    """A WebSocket client on one node that records every message."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.messages: list[dict[str, Any]] = []
        self.raw: dict[int, bytes] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self, http: aiohttp.ClientSession) -> None:
        url = f"ws://127.0.0.1:{self.node.port}/?snapshot=1"
        async with http.ws_connect(url, protocols=(f"bearer.{TOKEN}",)) as ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                message = msgspec.json.decode(msg.data)
                self.messages.append(message)
                if "seq" in message and message["type"] != "snapshot":
                    self.raw.setdefault(message["seq"], msg.data.encode())

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages if m["type"] in ("created", "updated", "deleted")]

    @property
    def start(self) -> int:
        return int(self.messages[0]["seq"])  # the snapshot's


@pytest.fixture
async def upstream_for_nodes(sim: Simulator) -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim, API_KEY) as server:
        yield server


async def burst(sim: Simulator, stop: asyncio.Event) -> int:
    """Change the account every BURST_S until told to stop; how many changes."""
    made = 0
    while not stop.is_set():
        if made % 3 == 0 or not len(sim):
            sim.create()
        else:
            sim.tick()
        made += 1
        await asyncio.sleep(BURST_S)
    return made


async def test_killing_and_pausing_the_leader_loses_and_repeats_nothing(
    http: aiohttp.ClientSession,
    sim: Simulator,
    upstream_for_nodes: SimulatorServer,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    env = cluster_env(
        token=TOKEN,
        api_key=API_KEY,
        upstream=upstream_for_nodes.base_url,
        redis_url=redis_url,
        prefix=redis_prefix,
        LEASE_MS=str(LEASE_MS),
        POLL_INTERVAL_MS=str(POLL_MS),
    )
    nodes = [NodeProcess(f"node-{i}", env, tmp_path) for i in (1, 2, 3)]
    for node in nodes:
        node.start()
    try:
        for node in nodes:
            await node.wait_ready(http)
        leader = await leader_of(http, nodes, TOKEN)
        survivors = [n for n in nodes if n is not leader]
        clients = [Client(n) for n in survivors]
        for client in clients:
            client.task = asyncio.create_task(client.run(http))
        async with asyncio.timeout(5):
            while not all(c.messages for c in clients):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        stop = asyncio.Event()
        changes = asyncio.create_task(burst(sim, stop))
        await asyncio.sleep(600 * MS)
        leader.signal(signal.SIGKILL)  # kill -9 in the middle of the burst
        killed = time.monotonic()
        second = await leader_of(http, survivors, TOKEN, within=10 * LEASE_MS / 1000)
        takeover = time.monotonic() - killed
        await asyncio.sleep(600 * MS)

        # A paused leader (SIGSTOP) loses its lease; woken up, it must not publish anything.
        second.signal(signal.SIGSTOP)
        paused = time.monotonic()
        third = await leader_of(http, [n for n in survivors if n is not second], TOKEN)
        pause_takeover = time.monotonic() - paused
        await asyncio.sleep(300 * MS)
        second.signal(signal.SIGCONT)
        await asyncio.sleep(600 * MS)
        stop.set()
        made = await changes

        # Let the last changes through, then every client must hold the same, whole stream.
        await asyncio.sleep(3 * POLL_MS / 1000)
        final = (await third.stats(http, TOKEN))["position"]["seq"]
        async with asyncio.timeout(5):
            while not all(c.seqs and c.seqs[-1] >= final for c in clients):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        print(
            f"\ntakeover after kill -9: {takeover:.2f} s; after SIGSTOP: {pause_takeover:.2f} s;"
            f" {made} upstream changes, {final} deltas"
        )
        for client in clients:
            start = client.start
            assert client.seqs == list(range(start + 1, client.seqs[-1] + 1)), (
                f"{client.node.name}: a gap or a repeat"
            )
        common = set(clients[0].raw) & set(clients[1].raw)
        assert len(common) > 10
        assert all(clients[0].raw[s] == clients[1].raw[s] for s in common)
        assert takeover < (LEASE_MS + 2 * POLL_MS) / 1000 + 1.0
        stats = await second.stats(http, TOKEN)
        assert stats["cluster"]["isLeader"] is False and stats["cluster"]["leader"] == third.name
        assert "Stopped leading" in second.log.read_text()
        for node in nodes:
            # Once a node knows its id, every line it writes carries it (`make cluster` runs
            # the nodes in one terminal).
            lines = [msgspec.json.decode(line) for line in node.log.read_text().splitlines()]
            listening = next(
                i for i, line in enumerate(lines) if line["msg"] == "Service listening"
            )
            assert {line.get("nodeId") for line in lines[listening:]} == {node.name}
    finally:
        for client in clients if "clients" in locals() else []:
            if client.task is not None:
                client.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await client.task
        for node in nodes:
            node.stop()
