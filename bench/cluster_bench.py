"""Scale-out figures (issue 14): the Redis hop's latency, fan-out cost over nodes, takeover.

    python -m bench.cluster_bench [--json]

0. The Redis hop at the broker alone: 500 one-delta batches published one by one; the time
   from `publish` to the delivery to a sink, on the publishing node and on a second one
   (memory broker: the same, within one process).
1. Latency of the Redis hop end to end: ~1 KB deltas published at 20/s (bench.broadcast_server, one
   delta per batch, its time stamped in the title) to 100 clients; single process (memory
   broker) against a two-node cluster (the publishing leader and a follower, 100 clients on
   each). Goal: p99 at most 10 ms above the single process.
2. Fan-out cost: the same deltas to 2,000 clients on one node against 1,000 clients on each of
   two nodes; server CPU per 100,000 deliveries, Redis's CPU counted with the cluster's.
3. Takeover: two `control-room serve` nodes on the bench upstream (a change every 50 ms),
   LEASE_MS=3000 and POLL_INTERVAL_MS=500; the leader is killed with SIGKILL and the time to
   the next delta at a client of the survivor is taken, three times. Goal: at most the lease
   plus one poll interval.

Redis is REDIS_URL, or the server on 127.0.0.1:6379, or a private `redis-server`; each run
uses a key prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bench.broadcast_server import bench_session
from bench.loadgen import raise_file_limit
from bench.run import (
    LOGS,
    PUBLISH_COUNT,
    TOKEN,
    Server,
    Suite,
    cpu_times,
    drain,
    free_port,
    pct,
    server_for,
    start_clients,
    start_upstream,
    stop_clients,
    summarise,
    upstream_run,
)
from control_room.broker.base import Batch
from control_room.broker.memory import MemoryBroker
from control_room.broker.redis import RedisBroker, drop_cluster
from control_room.leader import Lease
from control_room.metrics import ClusterMetrics
from control_room.models import Change
from control_room.poller import iso_now
from control_room.tasks import run_loop

LATENCY_CLIENTS: Final = 100
FANOUT_CLIENTS: Final = 2_000
TAKEOVER_RUNS: Final = 3
TAKEOVER_LEASE_MS: Final = 3_000  # short enough for three runs, long enough to be a lease
TAKEOVER_POLL_MS: Final = 500
CHANGE_PERIOD_MS: Final = 50  # the upstream changes this often while the leader dies
CHANGE_PERIODS: Final = 1_200  # a minute of changes: longer than the three kills take
GOAL_EXTRA_P99_MS: Final = 10.0
WINDOW_S: Final = PUBLISH_COUNT / 20.0  # bench.run publishes PUBLISH_COUNT at 20 per second
LEAD_TIMEOUT_S: Final = 15.0
HOP_PUBLISHES: Final = 500  # enough for a p99
HOP_GAP_S: Final = 0.005  # between publishes: the reader is idle in XREAD, as in service


async def redis_url(directory: str) -> tuple[str, subprocess.Popen[bytes] | None]:
    """REDIS_URL, the local Redis, or a private one started in `directory`."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        await client.ping()
        return url, None
    except Exception:
        pass
    finally:
        await client.aclose()
    port = free_port()
    proc = start_redis(port, directory)
    await asyncio.sleep(0.3)
    return f"redis://127.0.0.1:{port}/0", proc


def start_redis(port: int, directory: str) -> subprocess.Popen[bytes]:
    """A private redis-server without persistence."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", ""],
        stdout=subprocess.DEVNULL,
    )


async def redis_pid(url: str) -> int | None:
    """The Redis server's pid, when it runs on this machine."""
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
        pid = int(info["process_id"])
        return pid if local(pid) else None
    finally:
        await client.aclose()


def local(pid: int) -> bool:
    """True when the process runs on this machine (its CPU time can be read)."""
    return Path(f"/proc/{pid}").exists()


async def wipe(url: str, prefix: str) -> None:
    """Delete a run's keys."""
    await drop_cluster(url, prefix)


async def stats(port: int) -> Any:
    """A node's /api/stats."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{port}/api/stats", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp,
    ):
        return msgspec.json.decode(await resp.read())


async def wait_leading(port: int, within: float = LEAD_TIMEOUT_S) -> None:
    """Wait until the node on `port` says it leads."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, KeyError):
            if (await stats(port))["cluster"]["isLeader"]:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the node on port {port} did not lead within {within:.0f} s")


def cluster_env(url: str, prefix: str, node: str, **extra: str) -> dict[str, str]:
    """The environment that makes a server a cluster member."""
    return {"REDIS_URL": url, "REDIS_PREFIX": prefix, "NODE_ID": node, **extra}


async def broadcast_run(
    nodes: list[Server], clients: list[int], redis: int | None
) -> dict[str, Any]:
    """Clients on each node; one publishing run on the first; figures per node and CPU."""
    workers_by_node = []
    connected_by_node = []
    for server, n in zip(nodes, clients, strict=True):
        workers, connected = await start_clients(f"ws://127.0.0.1:{server.port}/", n)
        workers_by_node.append(workers)
        connected_by_node.append(connected)
    await asyncio.sleep(0.5)
    pids = [s.pid for s in nodes] + ([redis] if redis is not None else [])
    before = [sum(cpu_times(pid)) for pid in pids]
    nodes[0].signal(signal.SIGUSR2)
    await asyncio.sleep(WINDOW_S)
    everyone = [w for ws in workers_by_node for w in ws]
    await drain(everyone, PUBLISH_COUNT * sum(connected_by_node))
    after = [sum(cpu_times(pid)) for pid in pids]
    per_node = []
    for workers, connected in zip(workers_by_node, connected_by_node, strict=True):
        results = await stop_clients(workers)
        per_node.append(summarise(results, 1, PUBLISH_COUNT, connected, WINDOW_S))
    deliveries = sum(f["deliveries"] for f in per_node)
    cpu = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "per_node": per_node,
        "deliveries": deliveries,
        "cpu_nodes_s": sum(cpu[: len(nodes)]),
        "cpu_redis_s": sum(cpu[len(nodes) :]),
        "cpu_per_100k": sum(cpu) / deliveries * 100_000 if deliveries else 0.0,
    }


async def broadcast_cluster(url: str, prefix: str, clients: list[int], tag: str) -> dict[str, Any]:
    """A publishing leader and, if asked, a follower; clients on each."""
    leader = server_for("control-room", "publish", "", cluster_env(url, prefix, "leader", _TAG=tag))
    nodes = [leader]
    try:
        await leader.start()
        await wait_leading(leader.port)
        if len(clients) > 1:
            follower = server_for(
                "control-room",
                "poll",
                "http://127.0.0.1:9/v1alpha",  # never polled: the publisher leads
                cluster_env(url, prefix, "follower", _TAG=f"{tag}-follower"),
            )
            nodes.append(follower)
            await follower.start()
        return await broadcast_run(nodes, clients, await redis_pid(url))
    finally:
        for server in nodes:
            await server.stop()
        await wipe(url, prefix)


async def broadcast_single(clients: int, tag: str) -> dict[str, Any]:
    """The memory broker: one process."""
    server = server_for("control-room", "publish", "", {"_TAG": tag})
    try:
        await server.start()
        await asyncio.sleep(0.5)
        return await broadcast_run([server], [clients], None)
    finally:
        await server.stop()


class _Clock:
    """A sink that notes when each batch is delivered."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def deliver(self, batch: Batch) -> None:
        self.at[batch.first_seq] = time.perf_counter()


async def broker_hop(url: str, prefix: str) -> dict[str, Any]:
    """Publish -> delivery at the broker alone (no WebSocket): memory against Redis, on the
    publishing node and on a second node (another connection in this process)."""
    changes = [Change("updated", "s", bench_session("a", "PLANNING"), bench_session("b", "X"))]
    memory = MemoryBroker(1000)
    memory_clock = _Clock()
    memory.add_sink(memory_clock)
    started: dict[int, float] = {}
    for _ in range(HOP_PUBLISHES):
        batch = Batch(memory.stamp(changes, iso_now()))
        started[batch.first_seq] = time.perf_counter()
        await memory.publish(batch)
    figures: dict[str, Any] = {"memory": _hop(started, memory_clock)}
    metrics = ClusterMetrics(CollectorRegistry())
    leader = RedisBroker(url, prefix, 1000, metrics)
    follower = RedisBroker(url, prefix, 1000, ClusterMetrics(CollectorRegistry()))
    leader_clock, follower_clock = _Clock(), _Clock()
    leader.add_sink(leader_clock)
    follower.add_sink(follower_clock)
    await leader.start()
    await follower.start()
    try:
        lease = Lease(leader.redis, leader.keys, "bench", 30.0)
        leader.token = await lease.acquire()
        started = {}
        for _ in range(HOP_PUBLISHES):
            batch = Batch(leader.stamp(changes, iso_now()))
            started[batch.first_seq] = time.perf_counter()
            await leader.publish(batch)
            await asyncio.sleep(HOP_GAP_S)
        await asyncio.sleep(0.2)
        figures["redis_leader"] = _hop(started, leader_clock)
        figures["redis_follower"] = _hop(started, follower_clock)
    finally:
        await leader.stop()
        await follower.stop()
        await wipe(url, prefix)
    return figures


def _hop(started: dict[int, float], clock: _Clock) -> dict[str, float]:
    hops = sorted((clock.at[s] - t) * 1000 for s, t in started.items() if s in clock.at)
    return {"p50_ms": pct(hops, 0.5), "p99_ms": pct(hops, 0.99), "n": len(hops)}


class Arrivals:
    """A WebSocket client that notes when each delta arrives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: list[tuple[float, int]] = []  # (monotonic, seq)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            url = f"ws://127.0.0.1:{self.port}/"
            async with http.ws_connect(url, protocols=(f"bearer.{TOKEN}",)) as ws:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        return
                    message = json.loads(msg.data)
                    if "seq" in message:
                        self.times.append((time.monotonic(), int(message["seq"])))


async def takeover(url: str, suite: Suite) -> dict[str, Any]:
    """Kill the leader under changes; the time to the next delta on the survivor."""
    figures: list[float] = []
    prefix = f"bench-{secrets.token_hex(4)}"
    extra = {"LEASE_MS": str(TAKEOVER_LEASE_MS), "POLL_INTERVAL_MS": str(TAKEOVER_POLL_MS)}
    names = ["a", "b"]
    servers = {
        n: server_for(
            "control-room",
            "poll",
            suite.upstream_base,
            cluster_env(url, prefix, n, _TAG=f"takeover-{n}", **extra),
        )
        for n in names
    }
    try:
        for server in servers.values():
            await server.start()
        # One run of changes for all the kills (the upstream takes one run at a time).
        await upstream_run(suite.upstream_control, 1, CHANGE_PERIOD_MS, CHANGE_PERIODS)
        for _ in range(TAKEOVER_RUNS):
            leader = await leading_one(servers)
            survivor = next(s for s in servers.values() if s is not leader)
            client = Arrivals(survivor.port)
            client.task = asyncio.create_task(client.run())
            await asyncio.sleep(1.0)
            leader.signal(signal.SIGKILL)
            killed = time.monotonic()
            last_seq = client.times[-1][1] if client.times else 0
            deadline = killed + 3 * TAKEOVER_LEASE_MS / 1000
            while time.monotonic() < deadline:
                later = [t for t, seq in client.times if t > killed and seq > last_seq]
                if later:
                    figures.append(later[0] - killed)
                    break
                await asyncio.sleep(0.01)
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await client.task
            await leader.stop()
            await leader.start()  # back as a follower for the next run
            await asyncio.sleep(0.5)
    finally:
        for server in servers.values():
            await server.stop()
        await wipe(url, prefix)
    return {
        "lease_ms": TAKEOVER_LEASE_MS,
        "poll_ms": TAKEOVER_POLL_MS,
        "takeover_s": figures,
        "goal_s": (TAKEOVER_LEASE_MS + TAKEOVER_POLL_MS) / 1000,
    }


async def leading_one(servers: dict[str, Server]) -> Server:
    """The server that leads now."""
    deadline = time.monotonic() + LEAD_TIMEOUT_S
    while time.monotonic() < deadline:
        for server in servers.values():
            with contextlib.suppress(aiohttp.ClientError, KeyError):
                if (await stats(server.port))["cluster"]["isLeader"]:
                    return server
        await asyncio.sleep(0.05)
    raise RuntimeError("no node leads")


async def main_async(as_json: bool) -> None:
    """Every scale-out figure; a table (or JSON) on stdout."""
    raise_file_limit()
    LOGS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cr-bench-redis-") as directory:
        url, own = await redis_url(directory)
        try:
            prefix = f"bench-{secrets.token_hex(4)}"
            report["broker_hop"] = await broker_hop(url, prefix + "-hop")
            report["latency_single"] = await broadcast_single(LATENCY_CLIENTS, "hop-single")
            report["latency_cluster"] = await broadcast_cluster(
                url, prefix, [LATENCY_CLIENTS, LATENCY_CLIENTS], "hop-cluster"
            )
            report["fanout_single"] = await broadcast_single(FANOUT_CLIENTS, "fan-single")
            half = FANOUT_CLIENTS // 2
            report["fanout_cluster"] = await broadcast_cluster(
                url, prefix + "-f", [half, half], "fan-cluster"
            )
            suite = Suite(servers=[], fanout_ns=[], broadcast_ns=[], idle_ns=[], diff_sizes=[])
            upstream = await start_upstream(suite)
            try:
                report["takeover"] = await takeover(url, suite)
            finally:
                upstream.send_signal(signal.SIGTERM)
                await upstream.wait()
        finally:
            if own is not None:
                own.terminate()
                own.wait()
    print(json.dumps(report, indent=1) if as_json else table(report))


def table(report: dict[str, Any]) -> str:
    """The figures as Markdown."""
    hop = report["broker_hop"]
    lines = [
        f"Publish -> delivered, the broker alone ({hop['memory']['n']} one-delta batches):",
        "",
        "| broker | delivered on | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for label, where, key in (
        ("memory", "the process", "memory"),
        ("Redis", "the leader", "redis_leader"),
        ("Redis", "another node", "redis_follower"),
    ):
        f = hop[key]
        lines.append(f"| {label} | {where} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} |")
    lines.append("")
    single = report["latency_single"]["per_node"][0]
    leader, follower = report["latency_cluster"]["per_node"]
    lines += [
        "Latency, publish -> client, ~1 KB deltas at 20/s, 100 clients per node:",
        "",
        "| broker | clients on | p50 ms | p99 ms | max ms | p99 over single | delivered |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, where, f in (
        ("memory (one process)", "the node", single),
        ("Redis (two nodes)", "the leader", leader),
        ("Redis (two nodes)", "the follower", follower),
    ):
        extra = f["lat_p99_ms"] - single["lat_p99_ms"]
        lines.append(
            f"| {label} | {where} | {f['lat_p50_ms']:.2f} | {f['lat_p99_ms']:.2f} "
            f"| {f['lat_max_ms']:.2f} | {extra:+.2f} | {f['delivered']:.2%} |"
        )
    one, two = report["fanout_single"], report["fanout_cluster"]
    lines += [
        "",
        f"Fan-out cost, {FANOUT_CLIENTS:,} clients, {PUBLISH_COUNT} deltas:",
        "",
        "| layout | deliveries | CPU nodes s | CPU Redis s | CPU per 100k deliveries s |"
        " p99 ms (worst node) |",
        "|---|---|---|---|---|---|",
    ]
    for label, f in (
        (f"one node x {FANOUT_CLIENTS:,}", one),
        (f"two nodes x {FANOUT_CLIENTS // 2:,}", two),
    ):
        worst = max(n["lat_p99_ms"] for n in f["per_node"])
        lines.append(
            f"| {label} | {f['deliveries']:,} | {f['cpu_nodes_s']:.2f} | {f['cpu_redis_s']:.3f} "
            f"| {f['cpu_per_100k']:.2f} | {worst:.1f} |"
        )
    t = report["takeover"]
    runs = sorted(t["takeover_s"])
    lines += [
        "",
        f"Takeover after kill -9 of the leader (LEASE_MS={t['lease_ms']},"
        f" POLL_INTERVAL_MS={t['poll_ms']}; goal <= {t['goal_s']:.1f} s):",
        "",
        "| runs | min s | median s | max s |",
        "|---|---|---|---|",
        f"| {len(runs)} | {runs[0]:.2f} | {pct(runs, 0.5):.2f} | {runs[-1]:.2f} |"
        if runs
        else "| 0 | - | - | - |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    run_loop(main_async(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
