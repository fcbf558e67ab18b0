"""`make bench`: the whole benchmark suite, the control room and its peers in the same run.

Workloads (all on 127.0.0.1; every loop bounded in count and time):
  fanout     upstream changes K sessions every period; servers poll (100 ms), diff and
             broadcast to N clients; latency from the upstream change to each client.
  broadcast  ~1 KB deltas published straight into the broadcast at a fixed rate.
  idle       RSS per idle authenticated connection, heartbeat running.
  diff       diff + mapping of 10,000 and 50,000 sessions with 1 % changed.
  store      `bench.store_bench` and `bench.replay_bench` (persistence and replay figures).
  cluster    `bench.cluster_bench`: the Redis hop, fan-out over two nodes, takeover.
  variants   wire variants and views at 1,000 clients (`bench.variants`, issues 12 and 13).
  wire       MessagePack vs JSON, deflate: encode time and bytes (`bench.wire_bench`).
  snapshot   a 10.5 MB snapshot to a client reading 1 MB/s (`bench.snapshot_bench`).

Servers: `control-room` (this project; `bench.broadcast_server` for the broadcast
workload), `node-ws` (the seed's design in Node `ws`, bench/peers/node-ws) and
`websockets` (bench/peers/websockets_peer.py). Every figure is also given as a ratio to
`node-ws` measured in the same run. Clients are `bench.loadgen` processes.

Writes bench/results/latest.json and latest.md and prints the tables.
`--quick` runs a shorter suite; `--profile` records a py-spy profile of the control room
under the 1,000-client fan-out instead of running the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec

from bench.loadgen import raise_file_limit
from control_room.tasks import run_loop

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = ROOT / "bench" / "results"
LOGS: Final = RESULTS / "logs"
NODE_PEER: Final = ROOT / "bench" / "peers" / "node-ws"
WS_PEER: Final = ROOT / "bench" / "peers" / "websockets_peer.py"
PY: Final = sys.executable

TOKEN: Final = "bench-token.with.dots"
API_KEY: Final = "bench-key"
SERVERS: Final = ("control-room", "node-ws", "websockets")
REFERENCE: Final = "node-ws"

# --- fan-out: the latency goal is stated for a 100 ms poll ---
POLL_MS: Final = 100
FANOUT_K: Final = 5  # sessions changed per period: one poll carries a batch of deltas
FANOUT_PERIOD_MS: Final = 250  # 20 deltas/s; at 5,000 clients 100,000 deliveries/s
FANOUT_PERIODS: Final = 20  # 5 s of changes, 100 changes
UPSTREAM_SESSIONS: Final = 250  # three pages per poll; each session changes every 12.5 s
# --- broadcast alone ---
PUBLISH_RATE: Final = 20.0  # deltas per second, one batch each
PUBLISH_COUNT: Final = 100  # 5 s per run
# --- idle connections ---
IDLE_HEARTBEAT_MS: Final = 2_000  # so heartbeat rounds run while RSS is measured
IDLE_SETTLE_S: Final = 4.5  # > 2 heartbeats: every client has been pinged and answered
IDLE_POLL_MS: Final = 1_000
# --- diff + mapping ---
DIFF_SIZES: Final = (10_000, 50_000)
DIFF_CHANGED: Final = 0.01
DIFF_REPEATS: Final = {10_000: 40, 50_000: 10}  # enough for a p95; the peers are slow
DIFF_TIMEOUT_S: Final = 120.0

QUIET_S: Final = 1.5  # no delivery for this long after the last change: the rest is lost
DRAIN_MAX_S: Final = 20.0  # a server this far behind has failed the run anyway
DRAIN_POLL_S: Final = 0.1
SETTLE_S: Final = 0.5  # after the clients are connected, before measuring
START_TIMEOUT_S: Final = 20.0  # a server that does not listen by then is broken
READY_TIMEOUT_S: Final = 120.0  # 10,000 handshakes on a busy 2-core machine
STOP_TIMEOUT_S: Final = 10.0
STORE_TIMEOUT_S: Final = 240.0  # the persistence bench's own budget within the ten minutes
BUDGET_OVERHEAD_S: Final = 120.0  # the budget bench's start, baseline and shutdown, at most
BUDGET_JSON: Final = RESULTS / "budget.json"
CLIENTS_PER_WORKER: Final = 2_500  # one load-generator process per this many clients
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
PROFILE_RATE_HZ: Final = 1000  # the service is busy a few % of the time: sample densely


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    """A port nothing listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM it when the suite's process dies (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def wait_port(port: int, within: float = START_TIMEOUT_S) -> None:
    """Wait until something accepts TCP connections on the port."""
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


class Server:
    """A server under test, in its own process, its output going to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.port = int(env["PORT"])
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start it and wait until it listens."""
        LOGS.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                preexec_fn=die_with_parent,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            await wait_port(self.port)
        except RuntimeError:
            await self.stop()
            raise RuntimeError(f"{self.name} did not start; see {self.log}") from None

    def signal(self, sig: int) -> None:
        """Send a signal (SIGUSR2 starts a publishing run)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def server_for(name: str, mode: str, upstream_base: str, env_extra: dict[str, str]) -> Server:
    """The command line and environment of one server for one workload."""
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOCAL_TOKEN": TOKEN,
        "JULES_API_KEY": API_KEY,
        "JULES_API_BASE": upstream_base,
        "POLL_INTERVAL_MS": str(POLL_MS),
        # Every page every poll, as the peers list: the fan-out workloads change sessions on
        # every page (the request budget has its own benchmark, bench/budget.py).
        "FULL_LISTING_INTERVAL": f"{POLL_MS / 1000}s",
        "HEARTBEAT_INTERVAL_MS": "30000",
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "BENCH_MODE": mode,
        "PUBLISH_RATE": str(PUBLISH_RATE),
        "PUBLISH_COUNT": str(PUBLISH_COUNT),
        **env_extra,
    }
    argv: list[str]
    if name == "control-room":
        if mode == "publish":
            rate, count = env["PUBLISH_RATE"], env["PUBLISH_COUNT"]
            argv = [PY, "-m", "bench.broadcast_server", "--rate", rate, "--count", count]
        else:
            argv = [PY, "-m", "control_room.cli", "serve"]
    elif name == "node-ws":
        argv = [shutil.which("node") or "node", str(NODE_PEER / "server.js")]
    elif name == "websockets":
        argv = [PY, str(WS_PEER)]
    else:
        raise ValueError(name)
    tag = env_extra.get("_TAG", mode)
    return Server(name, argv, env, LOGS / f"{name}-{tag}.log")


class Worker:
    """One load-generator process (bench.loadgen)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ready: dict[str, Any] = {}

    @classmethod
    async def start(cls, url: str, clients: int, args: Sequence[str] = ()) -> Worker:
        """Spawn it; READY is awaited separately so workers connect in parallel.

        `args` are more `bench.loadgen` options (`--variant`, `--views`, ...)."""
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--token",
            TOKEN,
            "--clients",
            str(clients),
            *args,
            preexec_fn=die_with_parent,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return cls(proc)

    async def _line(self, prefix: str, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within
        while True:
            line = await asyncio.wait_for(
                self.proc.stdout.readline(), max(deadline - time.monotonic(), 0.1)
            )
            if not line:
                raise RuntimeError(f"load generator exited before {prefix}")
            text = line.decode()
            if text.startswith(prefix + " "):
                value: dict[str, Any] = json.loads(text[len(prefix) + 1 :])
                return value

    async def wait_ready(self) -> dict[str, Any]:
        """READY: how many clients connected, how many failed."""
        self.ready = await self._line("READY", READY_TIMEOUT_S)
        return self.ready

    async def count(self) -> int:
        """How many deliveries this worker's clients have received so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"COUNT\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), STOP_TIMEOUT_S)
        return int(line.split()[1])

    async def stop(self) -> dict[str, Any]:
        """STOP, then RESULT."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"STOP\n")
        with contextlib.suppress(ConnectionError):
            await self.proc.stdin.drain()
        result = await self._line("RESULT", 60)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        return result

    def kill(self) -> None:
        """Leave now."""
        if self.proc.returncode is None:
            self.proc.kill()


async def start_clients(url: str, n: int, args: Sequence[str] = ()) -> tuple[list[Worker], int]:
    """Spread `n` clients over load-generator processes; wait until all tried to connect."""
    count = max(1, -(-n // CLIENTS_PER_WORKER))
    shares = [n // count + (1 if i < n % count else 0) for i in range(count)]
    workers = [await Worker.start(url, share, args) for share in shares]
    try:
        readies = await asyncio.gather(*(w.wait_ready() for w in workers))
    except BaseException:
        for w in workers:
            w.kill()
        raise
    return workers, sum(r["connected"] for r in readies)


async def drain(workers: Sequence[Worker], expected: int) -> float:
    """Wait until every delivery arrived, or none arrived for QUIET_S (or DRAIN_MAX_S).

    A slow server is given the time to finish: what it never delivers is loss, what it
    delivers late shows in the latencies. Returns the seconds waited.
    """
    started = time.monotonic()
    last_total, last_change = -1, started
    while True:
        total = sum(await asyncio.gather(*(w.count() for w in workers)))
        now = time.monotonic()
        if total != last_total:
            last_total, last_change = total, now
        if total >= expected or now - last_change > QUIET_S or now - started > DRAIN_MAX_S:
            return now - started
        await asyncio.sleep(DRAIN_POLL_S)


async def stop_clients(workers: Sequence[Worker]) -> list[dict[str, Any]]:
    """STOP every worker, gather the results."""
    return list(await asyncio.gather(*(w.stop() for w in workers)))


# ----------------------------------------------------------------------------- figures


def pct(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted values; 0 for none."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summarise(
    results: Sequence[dict[str, Any]],
    first_cid: int,
    changes: int,
    connected: int,
    window: float,
    share: float = 1.0,
) -> dict[str, Any]:
    """Client-side figures of one run: delivered fraction, latencies, cuts.

    `share` is the fraction of the changes each client's view admits (1: all of them)."""
    last_cid = first_cid + changes - 1
    per_change: dict[int, list[int]] = {}
    lat = array("I")
    cut = 0
    other = 0
    payload = 0
    codes: Counter[str] = Counter()
    for r in results:
        raw = array("I")
        raw.frombytes(base64.b64decode(r["latencies_us"]))
        lat.extend(raw)
        cut += r["cut"]
        other += r["other"]
        payload += r["payload_bytes"]
        codes.update(r["close_codes"])
        for cid_text, (count, worst) in r["per_change"].items():
            cid = int(cid_text)
            if not first_cid <= cid <= last_cid:
                continue
            entry = per_change.setdefault(cid, [0, 0])
            entry[0] += count
            entry[1] = max(entry[1], worst)
    deliveries = sum(c for c, _ in per_change.values())
    expected = round(changes * connected * share)
    ordered = sorted(lat)
    last = sorted(w for _, w in per_change.values())
    return {
        "connected": connected,
        "changes": changes,
        "deliveries": deliveries,
        "expected": expected,
        "delivered": deliveries / expected if expected else 0.0,
        "deliveries_per_s": deliveries / window if window else 0.0,
        "cut": cut,
        "close_codes": dict(codes),
        "unexpected_messages": other,
        "payload_bytes": payload / len(lat) if len(lat) else 0,
        "lat_p50_ms": pct(ordered, 0.50) / 1000,
        "lat_p99_ms": pct(ordered, 0.99) / 1000,
        "lat_max_ms": (ordered[-1] if ordered else 0) / 1000,
        "last_p50_ms": pct(last, 0.50) / 1000,
        "last_p99_ms": pct(last, 0.99) / 1000,
        "last_max_ms": (last[-1] if last else 0) / 1000,
    }


def wire_figures(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bytes on the wire per delivery (frame payloads as received, compressed or not), the
    same uncompressed, and what the clients' handshakes negotiated, over every client."""
    deliveries = sum(r["deliveries"] for r in results)
    wire = sum(r.get("wire_bytes", 0) for r in results)
    payload = sum(r["payload_bytes"] for r in results)
    negotiated: Counter[str] = Counter()
    for r in results:
        negotiated.update(r.get("negotiated", {}))
    return {
        "wire_bytes_per_delivery": wire / deliveries if deliveries else 0.0,
        "payload_bytes_per_delivery": payload / deliveries if deliveries else 0.0,
        "compressed_messages": sum(r.get("compressed", 0) for r in results),
        "negotiated": dict(negotiated),
    }


def with_cpu(
    figures: dict[str, Any],
    n: int,
    user: float,
    system: float,
    elapsed: float,
    hwm: int,
    *,
    extra: int = 0,
) -> dict[str, Any]:
    """Add the server's CPU and memory figures to the clients' ones."""
    cpu = user + system
    deliveries = figures["deliveries"] + extra
    figures.update(
        clients=n,
        cpu_s=cpu,
        cpu_user_s=user,
        cpu_sys_s=system,
        cpu_per_100k=cpu / deliveries * 100_000 if deliveries else 0.0,
        cpu_util=cpu / elapsed if elapsed else 0.0,
        peak_rss_mib=hwm / 1024,
    )
    return figures


# ----------------------------------------------------------------------------- workloads


@dataclass
class Suite:
    """Options and shared state of one run."""

    servers: list[str]
    fanout_ns: list[int]
    broadcast_ns: list[int]
    idle_ns: list[int]
    diff_sizes: list[int]
    texts: set[str] = field(
        default_factory=lambda: {"store", "replay", "cluster", "wire", "snapshot"}
    )  # TEXT_BENCHES to run
    budget_minutes: float = 3.0  # 0: no request-budget run
    variant_rounds: int = 0  # 0: no variants section
    variant_fanout: bool = True
    upstream_base: str = ""
    upstream_control: str = ""
    notes: list[str] = field(default_factory=list)


def note_shortfall(suite: Suite, label: str, connected: int, wanted: int) -> None:
    """Say so in the report when not every client could connect."""
    if connected < wanted:
        suite.notes.append(f"{label}: only {connected:,} of {wanted:,} clients connected")


async def upstream_run(control: str, k: int, period_ms: float, periods: int) -> tuple[int, int]:
    """Ask the bench upstream to start changing sessions; returns (first cid, changes)."""
    async with aiohttp.ClientSession() as http:
        spec = {"k": k, "period_ms": period_ms, "periods": periods}
        async with http.post(f"{control}/run", json=spec) as resp:
            resp.raise_for_status()
            body = await resp.json()
    return int(body["first_cid"]), int(body["changes"])


@dataclass(frozen=True)
class Load:
    """How a run's clients subscribe and what the server publishes (default: the seed's).

    `loadgen`: more `bench.loadgen` options; `env`: more server environment;
    `repositories`: deltas per broadcast, one per repository (the broadcast server only);
    `share`: the fraction of the published deltas each client's view admits.
    """

    tag: str = ""
    loadgen: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    repositories: int = 1
    share: float = 1.0


SEED_LOAD: Final = Load()


async def traffic(
    suite: Suite,
    name: str,
    n: int,
    mode: str,
    *,
    profile: Path | None = None,
    workload: Load = SEED_LOAD,
) -> dict[str, Any]:
    """One fan-out (`poll`) or broadcast-alone (`publish`) run of `n` clients, plus a probe.

    The probe is one more client, in a process of its own, connected after the others: the
    servers that keep their clients in insertion order (the control room, node-ws) serve
    it last, and its process has nothing else to read, so its latency is the server's own
    "last client" time without the load generator's queueing.
    """
    tag = f"{mode}-{n}" + (f"-{workload.tag}" if workload.tag else "")
    server = server_for(name, mode, suite.upstream_base, {"_TAG": tag, **dict(workload.env)})
    if name == "control-room" and mode == "publish" and workload.repositories != 1:
        server.argv += ["--repositories", str(workload.repositories)]
    await server.start()
    workers: list[Worker] = []
    spy: asyncio.subprocess.Process | None = None
    try:
        await asyncio.sleep(SETTLE_S)  # the baseline poll
        url = f"ws://127.0.0.1:{server.port}/"
        workers, connected = await start_clients(url, n, workload.loadgen)
        note_shortfall(suite, f"{name} {mode} {n:,}", connected, n)
        probe, probed = await start_clients(url, 1, workload.loadgen)
        workers += probe
        await asyncio.sleep(SETTLE_S)
        if mode == "poll":
            window = FANOUT_PERIODS * FANOUT_PERIOD_MS / 1000
        else:
            window = PUBLISH_COUNT / PUBLISH_RATE
        if profile is not None:
            spy = await start_profiler(server.pid, profile, window + 1)
        (user0, sys0), t0 = cpu_times(server.pid), time.perf_counter()
        load0 = sum(sum(cpu_times(w.proc.pid)) for w in workers)
        if mode == "poll":
            first, changes = await upstream_run(
                suite.upstream_control, FANOUT_K, FANOUT_PERIOD_MS, FANOUT_PERIODS
            )
        else:
            # Each server numbers its own deltas from 1; a run publishes PUBLISH_COUNT.
            server.signal(signal.SIGUSR2)
            first, changes = 1, PUBLISH_COUNT * workload.repositories
        await asyncio.sleep(window)
        await drain(workers, round(changes * (connected + probed) * workload.share))
        user1, sys1 = cpu_times(server.pid)
        elapsed = time.perf_counter() - t0
        load = sum(sum(cpu_times(w.proc.pid)) for w in workers) - load0
        hwm = status_kib(server.pid, "VmHWM")
        results = await stop_clients(workers)
        workers = []
        if spy is not None:
            await spy.wait()
    finally:
        for w in workers:
            w.kill()
        await server.stop()
    figures = summarise(results[:-1], first, changes, connected, window, workload.share)
    alone = summarise(results[-1:], first, changes, probed, window, workload.share)
    figures.update(wire_figures(results))
    figures.update(
        probe_p50_ms=alone["lat_p50_ms"],
        probe_p99_ms=alone["lat_p99_ms"],
        probe_max_ms=alone["lat_max_ms"],
        probe_delivered=alone["delivered"],
        loadgen_cpu_s=load,
        elapsed_s=elapsed,
    )
    # The probe's deliveries cost the server CPU too: count them in the denominator.
    return with_cpu(figures, n, user1 - user0, sys1 - sys0, elapsed, hwm, extra=alone["deliveries"])


async def fanout(suite: Suite, name: str, n: int) -> dict[str, Any]:
    """Upstream change -> poll -> diff -> broadcast to `n` clients."""
    return await traffic(suite, name, n, "poll")


async def broadcast(suite: Suite, name: str, n: int) -> dict[str, Any]:
    """~1 KB deltas published straight into the broadcast, to `n` clients."""
    return await traffic(suite, name, n, "publish")


async def idle(suite: Suite, name: str, n: int) -> dict[str, Any]:
    """RSS per idle authenticated connection, heartbeat running."""
    extra = {
        "_TAG": f"idle-{n}",
        "HEARTBEAT_INTERVAL_MS": str(IDLE_HEARTBEAT_MS),
        "POLL_INTERVAL_MS": str(IDLE_POLL_MS),
    }
    server = server_for(name, "poll", suite.upstream_base, extra)
    await server.start()
    workers: list[Worker] = []
    try:
        await asyncio.sleep(max(SETTLE_S, 2 * IDLE_POLL_MS / 1000))
        rss0 = status_kib(server.pid, "VmRSS")
        started = time.perf_counter()
        workers, connected = await start_clients(f"ws://127.0.0.1:{server.port}/", n)
        connect_s = time.perf_counter() - started
        note_shortfall(suite, f"{name} idle {n:,}", connected, n)
        await asyncio.sleep(IDLE_SETTLE_S)
        rss1 = status_kib(server.pid, "VmRSS")
        hwm = status_kib(server.pid, "VmHWM")
        results = await stop_clients(workers)
        workers = []
    finally:
        for w in workers:
            w.kill()
        await server.stop()
    cut = sum(r["cut"] for r in results)
    return {
        "clients": n,
        "connected": connected,
        "still_connected": connected - cut,
        "connect_s": connect_s,
        "rss_before_mib": rss0 / 1024,
        "rss_after_mib": rss1 / 1024,
        "peak_rss_mib": hwm / 1024,
        "kib_per_conn": (rss1 - rss0) / connected if connected else 0.0,
    }


def diff_data(n: int, directory: Path) -> tuple[Path, Path]:
    """A listing of `n` sessions and the same listing with 1 % of them changed, as files."""
    from bench.upstream import make_session

    now = time.time_ns()
    base = [make_session(i, now - i * 1_000_000_000) for i in range(n)]
    changed = [dict(s) for s in base]
    step = round(1 / DIFF_CHANGED)
    for i in range(0, n, step):
        changed[i]["title"] = f"bench {i} {now}"
        changed[i]["state"] = "COMPLETED"
        changed[i]["updateTime"] = "2030-01-01T00:00:00.000000Z"
    encoder = msgspec.json.Encoder()
    base_path = directory / f"diff-base-{n}.json"
    changed_path = directory / f"diff-changed-{n}.json"
    base_path.write_bytes(encoder.encode(base))
    changed_path.write_bytes(encoder.encode(changed))
    return base_path, changed_path


async def diffmap(name: str, n: int, base_path: Path, changed_path: Path) -> dict[str, Any]:
    """Diff + mapping of one server's design, in a fresh process of its own."""
    repeats = DIFF_REPEATS.get(n, 10)
    files = (str(base_path), str(changed_path), str(repeats))
    if name == "node-ws":
        argv = [shutil.which("node") or "node", str(NODE_PEER / "diffbench.js"), *files]
    else:
        argv = [PY, "-m", "bench.diffmap", name, *files]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=die_with_parent
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), DIFF_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[1]} exited {proc.returncode}")
    figures: dict[str, Any] = json.loads(out)
    figures.update(sessions=n, repeats=repeats)
    return figures


# ----------------------------------------------------------------------------- profile


async def start_profiler(pid: int, out: Path, seconds: float) -> asyncio.subprocess.Process:
    """py-spy record on the server for `seconds` (raw collapsed stacks)."""
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
    return await asyncio.create_subprocess_exec(
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(round(seconds)),
        "--rate",
        str(PROFILE_RATE_HZ),
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frame(frame: str, *, line: bool) -> str:
    """`Hub.deliver (control_room/ws/hub.py:75)` -> `Hub.deliver (hub.py:75)` (or no line)."""
    name, _, where = frame.partition(" (")
    path, _, number = where.rstrip(")").rpartition(":")
    short = path.rsplit("/", 1)[-1] or where.rstrip(")")
    return f"{name} ({short}:{number})" if line and number else f"{name} ({short})"


def profile_summary(raw: Path, top: int = 20) -> str:
    """Self time by line, inclusive time by function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for text in raw.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_frame(frames[-1], line=True)] += count
        for name in {_frame(f, line=False) for f in frames}:
            inclusive[name] += count
    lines = [f"samples: {total} (py-spy, idle excluded)", "", "self time, by line:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive time, by function:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in inclusive.most_common(top + 10)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def ratio(value: float, reference: float) -> str:
    """`value / reference` as `0.42×`, or `n/a`."""
    if not reference or value is None:
        return "n/a"
    return f"{value / reference:.2f}×"


def machine() -> dict[str, str]:
    """What this ran on."""
    info: dict[str, str] = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = f"{int(mem) / 1024 / 1024:.1f}"
    info["kernel"] = platform.release()
    node = shutil.which("node")
    if node:
        info["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("aiohttp", "msgspec", "uvloop", "websockets", "picows"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    lock = NODE_PEER / "package-lock.json"
    if lock.is_file():
        info["ws"] = json.loads(lock.read_text())["packages"]["node_modules/ws"]["version"]
    return info


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table."""
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def traffic_table(data: dict[str, dict[str, dict[str, Any]]], ns: Sequence[int]) -> list[str]:
    """Fan-out or broadcast figures: one row per (clients, server), ratios to node-ws."""
    header = [
        "clients", "server", "deliveries/s", "delivered", "cut", "p50 ms", "p99 ms", "max ms",
        "last-client p99 ms", "probe p99 ms", "CPU s /100k", "kernel", "CPU ×node",
        "p99 ×node", "peak RSS MiB", "server CPU", "loadgen CPU",
    ]  # fmt: skip
    rows: list[list[object]] = []
    for n in ns:
        ref = data.get(REFERENCE, {}).get(str(n), {})
        for name in SERVERS:
            f = data.get(name, {}).get(str(n))
            if f is None:
                continue
            if "error" in f:
                rows.append([n, name, f"error: {f['error']}", *[""] * 14])
                continue
            rows.append(
                [
                    f"{n:,}",
                    name,
                    f"{f['deliveries_per_s']:,.0f}",
                    f"{f['delivered']:.2%}",
                    f["cut"],
                    f"{f['lat_p50_ms']:.1f}",
                    f"{f['lat_p99_ms']:.1f}",
                    f"{f['lat_max_ms']:.1f}",
                    f"{f['last_p99_ms']:.1f}",
                    f"{f['probe_p99_ms']:.1f}",
                    f"{f['cpu_per_100k']:.3f}",
                    f"{f['cpu_sys_s'] / f['cpu_s']:.0%}" if f["cpu_s"] else "",
                    ratio(f["cpu_per_100k"], ref.get("cpu_per_100k", 0)),
                    ratio(f["lat_p99_ms"], ref.get("lat_p99_ms", 0)),
                    f"{f['peak_rss_mib']:.0f}",
                    f"{f['cpu_util']:.0%}",
                    f"{f['loadgen_cpu_s'] / f['elapsed_s']:.0%}" if f["elapsed_s"] else "",
                ]
            )
    return table(header, rows)


def idle_table(data: dict[str, dict[str, dict[str, Any]]], ns: Sequence[int]) -> list[str]:
    """Idle connection figures."""
    header = ["connections", "server", "held", "connect s", "RSS before MiB",
              "RSS after MiB", "KiB / connection", "×node"]  # fmt: skip
    rows: list[list[object]] = []
    for n in ns:
        ref = data.get(REFERENCE, {}).get(str(n), {})
        for name in SERVERS:
            f = data.get(name, {}).get(str(n))
            if f is None:
                continue
            if "error" in f:
                rows.append([n, name, f"error: {f['error']}", *[""] * 5])
                continue
            rows.append(
                [
                    f"{n:,}",
                    name,
                    f"{f['still_connected']:,}",
                    f"{f['connect_s']:.1f}",
                    f"{f['rss_before_mib']:.1f}",
                    f"{f['rss_after_mib']:.1f}",
                    f"{f['kib_per_conn']:.1f}",
                    ratio(f["kib_per_conn"], ref.get("kib_per_conn", 0)),
                ]
            )
    return table(header, rows)


def diff_table(data: dict[str, dict[str, dict[str, Any]]], sizes: Sequence[int]) -> list[str]:
    """Diff + mapping figures."""
    header = ["sessions", "server", "changes", "median ms", "p95 ms", "×node", "parse ms"]
    rows: list[list[object]] = []
    for n in sizes:
        ref = data.get(REFERENCE, {}).get(str(n), {})
        for name in SERVERS:
            f = data.get(name, {}).get(str(n))
            if f is None:
                continue
            if "error" in f:
                rows.append([n, name, f"error: {f['error']}", "", "", "", ""])
                continue
            rows.append(
                [
                    f"{n:,}",
                    name,
                    f["changes"],
                    f"{f['median_ms']:.2f}",
                    f"{f['p95_ms']:.2f}",
                    ratio(f["median_ms"], ref.get("median_ms", 0)),
                    f"{f.get('decode_median_ms', 0):.1f}",
                ]
            )
    return table(header, rows)


def goals(report: dict[str, Any]) -> list[list[object]]:
    """Every goal of issues 2 and 6 with the measured figure and a verdict."""
    rows: list[list[object]] = []

    def goal(figure: str, target: str, measured: str, met: bool) -> None:
        rows.append([figure, target, measured, "met" if met else "**not met**"])

    def usable(f: dict[str, Any] | None) -> bool:
        return bool(f) and "error" not in (f or {})

    fan = report["fanout"]
    ours = fan.get("control-room", {}).get("1000")
    node = fan.get(REFERENCE, {}).get("1000")
    if usable(ours) and usable(node):
        assert ours is not None and node is not None
        r = ours["cpu_per_100k"] / node["cpu_per_100k"] if node["cpu_per_100k"] else 0.0
        goal(
            "server CPU per delivery, fan-out to 1,000 clients",
            "≤ 1.0× node-ws",
            f"{ours['cpu_per_100k']:.3f} s/100k = {r:.2f}× node-ws ({node['cpu_per_100k']:.3f})",
            r <= 1.0,
        )
        p99, node_p99 = ours["last_p99_ms"], node["last_p99_ms"]
        goal(
            "upstream change → last client, p99, 1,000 clients, 100 ms poll",
            f"≤ node-ws and ≤ {POLL_MS + 50} ms",
            f"{p99:.1f} ms (node-ws {node_p99:.1f} ms; probe {ours['probe_p99_ms']:.1f} ms)",
            p99 <= node_p99 and p99 <= POLL_MS + 50,
        )
    runs = [f for f in fan.get("control-room", {}).values() if usable(f)]
    if runs:
        worst = min(f["delivered"] for f in runs)
        cuts = sum(f["cut"] for f in runs)
        goal(
            "deliveries completed under load (every fan-out run)",
            "100 %, no fast client cut",
            f"{worst:.2%} in the worst run, {cuts} cut",
            worst >= 1.0 and cuts == 0,
        )
    idle_ours = report["idle"].get("control-room", {})
    per_conn = [f["kib_per_conn"] for f in idle_ours.values() if usable(f)]
    if per_conn:
        goal(
            "RSS per idle connection (no compression)",
            "≤ 16 KiB",
            f"{max(per_conn):.1f} KiB (worst of {len(per_conn)} runs)",
            max(per_conn) <= 16,
        )
    big = idle_ours.get("10000")
    if usable(big):
        assert big is not None
        goal(
            "concurrent connections held by one process, heartbeat running",
            "10,000",
            f"{big['still_connected']:,} held",
            big["still_connected"] >= 10_000,
        )
        node_big = report["idle"].get(REFERENCE, {}).get("10000")
        node_kib = f"; node-ws {node_big['kib_per_conn']:.1f}" if usable(node_big) else ""
        goal(
            "RSS per idle connection at 10,000, heartbeat running (issue 13)",
            "≤ 8 KiB",
            f"{big['kib_per_conn']:.1f} KiB{node_kib}",
            big["kib_per_conn"] <= 8,
        )
    d = report["diff"].get("control-room", {}).get("10000")
    if usable(d):
        assert d is not None
        goal(
            "diff + mapping, 10,000 sessions, 1 % changed",
            "≤ 10 ms",
            f"{d['median_ms']:.2f} ms median, {d['p95_ms']:.2f} ms p95",
            d["median_ms"] <= 10,
        )
    b = report["broadcast"].get("control-room", {}).get("1000")
    if usable(b):
        assert b is not None
        goal(
            "one ~1 KB delta → 1,000 clients: last client after publish, p99 (issue 2)",
            "≤ 50 ms",
            f"{b['last_p99_ms']:.1f} ms (probe {b['probe_p99_ms']:.1f} ms)",
            b["last_p99_ms"] <= 50,
        )
    budget = report.get("budget_figures")
    if budget:
        rpm = budget["requests_per_minute"]
        goal(
            "requests to Jules per minute, 2,500 sessions, 20 active (issue 12)",
            "≤ 60",
            f"{rpm:.1f} (wave-1 design: {budget['wave1_requests_per_minute']})",
            rpm <= 60,
        )
        active, finished = budget["active"]["p99_s"], budget["finished"]["p99_s"]
        goal(
            "active session change → client, p99, 5 s poll (issue 12)",
            "≤ 6 s",
            f"{active:.2f} s (n={budget['active']['n']})",
            active <= 6,
        )
        goal(
            "finished session change → client, p99 (issue 12)",
            "≤ 60 s",
            f"{finished:.2f} s (n={budget['finished']['n']})",
            finished <= 60,
        )
    if report.get("variants"):
        from bench import variants

        for figure, target, measured, met in variants.goals(report["variants"]):
            goal(figure, target, measured, met)
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown: machine, tables, goals."""
    m = report["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {report['started']} in {report['duration_s']:.0f} s: `{report['command']}`.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()),
        "",
        "## Goals",
        "",
        *table(["figure", "goal", "measured", "verdict"], goals(report)),
        "",
        f"## End-to-end fan-out (poll {POLL_MS} ms, {FANOUT_K} sessions changed every "
        f"{FANOUT_PERIOD_MS} ms, {FANOUT_PERIODS * FANOUT_K} changes)",
        "",
        *traffic_table(report["fanout"], report["options"]["fanout_ns"]),
        "",
        f"## Broadcast alone ({PUBLISH_COUNT} deltas of ~1 KB at {PUBLISH_RATE:g}/s)",
        "",
        *traffic_table(report["broadcast"], report["options"]["broadcast_ns"]),
        "",
        f"## Idle connections (heartbeat every {IDLE_HEARTBEAT_MS} ms)",
        "",
        *idle_table(report["idle"], report["options"]["idle_ns"]),
        "",
        "## Diff + mapping (1 % changed)",
        "",
        *diff_table(report["diff"], report["options"]["diff_sizes"]),
        "",
    ]
    if report.get("variants"):
        from bench import variants

        lines += variants.markdown(report["variants"])
    titles = {
        "store": "Persistence",
        "replay": "Replay to a resuming client",
        "cluster": "Scale-out",
        "budget": "Requests to Jules (issue 12)",
        "wire": "MessagePack vs JSON, and deflate, per message",
        "snapshot": "A big snapshot to a slow reader",
    }
    for key, module in TEXT_BENCHES:
        if report.get(key):
            text = report[key].rstrip()
            lines += [f"## {titles[key]} ({module})", "", "```text", text, "```", ""]
    if report["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def node_ready(notes: list[str]) -> bool:
    """Node and the `ws` package are there (npm ci from the lockfile when needed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        notes.append("node-ws peer skipped: no `node` on PATH")
        return False
    if not (NODE_PEER / "node_modules" / "ws").is_dir():
        if npm is None:
            notes.append("node-ws peer skipped: no `npm` to install `ws`")
            return False
        done = subprocess.run(
            [npm, "ci", "--silent", "--no-audit", "--no-fund"],
            cwd=NODE_PEER,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            notes.append("node-ws peer skipped: `npm ci` failed")
            return False
    return True


async def start_upstream(suite: Suite) -> asyncio.subprocess.Process:
    """The bench upstream, in its own process."""
    port = free_port()
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / "upstream.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "bench.upstream",
            "--port",
            str(port),
            "--sessions",
            str(UPSTREAM_SESSIONS),
            "--api-key",
            API_KEY,
            preexec_fn=die_with_parent,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    await wait_port(port)
    suite.upstream_base = f"http://127.0.0.1:{port}/v1alpha"
    suite.upstream_control = f"http://127.0.0.1:{port}/bench"
    return proc


async def guarded(label: str, notes: list[str], run: Callable[[], Any]) -> dict[str, Any]:
    """Run one measurement; an error becomes a figure that says so, not a crashed suite."""
    print(f"  {label} ...", end="", flush=True)
    started = time.perf_counter()
    try:
        figures: dict[str, Any] = await run()
    except Exception as exc:  # one broken server or run must not lose the others' figures
        notes.append(f"{label}: {type(exc).__name__}: {exc}")
        print(f" error: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}"}
    print(f" {time.perf_counter() - started:.1f} s", flush=True)
    return figures


async def run_suite(suite: Suite, command: str) -> dict[str, Any]:
    """Every workload for every server; the report."""
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "started": started_at,
        "command": command,
        "machine": machine(),
        "options": {
            "fanout_ns": suite.fanout_ns,
            "broadcast_ns": suite.broadcast_ns,
            "idle_ns": suite.idle_ns,
            "diff_sizes": suite.diff_sizes,
            "servers": suite.servers,
        },
        "fanout": {},
        "broadcast": {},
        "idle": {},
        "diff": {},
        "notes": suite.notes,
    }
    notes = suite.notes

    if suite.diff_sizes:
        print("diff + mapping", flush=True)
        tmp = RESULTS / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for n in suite.diff_sizes:
            paths = diff_data(n, tmp)
            for name in suite.servers:

                async def one(
                    name: str = name, n: int = n, paths: tuple[Path, Path] = paths
                ) -> dict[str, Any]:
                    return await diffmap(name, n, *paths)

                report["diff"].setdefault(name, {})[str(n)] = await guarded(
                    f"{name} {n:,} sessions", notes, one
                )
        shutil.rmtree(tmp, ignore_errors=True)

    upstream = await start_upstream(suite)
    try:
        for title, key, ns, fn in (
            ("end-to-end fan-out", "fanout", suite.fanout_ns, fanout),
            ("broadcast alone", "broadcast", suite.broadcast_ns, broadcast),
            ("idle connections", "idle", suite.idle_ns, idle),
        ):
            if not ns:
                continue
            print(title, flush=True)
            for n in ns:
                for name in suite.servers:

                    async def measure(fn: Any = fn, name: str = name, n: int = n) -> dict[str, Any]:
                        result: dict[str, Any] = await fn(suite, name, n)
                        return result

                    report[key].setdefault(name, {})[str(n)] = await guarded(
                        f"{name} {n:,} clients", notes, measure
                    )
        if suite.variant_rounds:
            from bench import variants

            print("wire variants and views", flush=True)
            report["variants"] = await variants.measure(
                suite, suite.variant_rounds, fanout=suite.variant_fanout
            )
    finally:
        upstream.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(upstream.wait(), STOP_TIMEOUT_S)
        if upstream.returncode is None:
            upstream.kill()

    for key, module in TEXT_BENCHES:
        if key == "budget":
            if suite.budget_minutes:
                BUDGET_JSON.unlink(missing_ok=True)
                args = ["--minutes", f"{suite.budget_minutes:g}", "--json-out", str(BUDGET_JSON)]
                timeout = suite.budget_minutes * 60 + BUDGET_OVERHEAD_S
                await text_bench(report, notes, key, module, args, timeout)
                if BUDGET_JSON.is_file():
                    report["budget_figures"] = json.loads(BUDGET_JSON.read_text())
        elif key in suite.texts and (ROOT / "bench" / f"{module.rpartition('.')[2]}.py").is_file():
            await text_bench(report, notes, key, module)
    report["duration_s"] = time.perf_counter() - t0
    return report


TEXT_BENCHES: Final = (
    ("store", "bench.store_bench"),  # persisting a poll, reading history back (issue 3)
    ("replay", "bench.replay_bench"),  # 10,000 deltas replayed to a resuming client (issue 3)
    ("cluster", "bench.cluster_bench"),  # Redis hop, fan-out over nodes, takeover (issue 14)
    ("budget", "bench.budget"),  # requests to Jules at 2,500 sessions, in real time (issue 12)
    ("wire", "bench.wire_bench"),  # MessagePack vs JSON, deflate: time and bytes (issue 13)
    ("snapshot", "bench.snapshot_bench"),  # 10.5 MB snapshot to a 1 MB/s reader (issue 13)
)
"""Benchmarks that print their own table; their output is copied into the report."""


async def text_bench(
    report: dict[str, Any],
    notes: list[str],
    key: str,
    module: str,
    args: Sequence[str] = (),
    limit_s: float = STORE_TIMEOUT_S,
) -> None:
    """Run one table-printing benchmark module and keep what it printed."""
    print(f"{key} ({module})", flush=True)
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        module,
        *args,
        preexec_fn=die_with_parent,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        notes.append(f"{module} stopped after {limit_s:.0f} s")
        return
    report[key] = out.decode()
    if proc.returncode != 0:
        notes.append(f"{module} exited {proc.returncode}: {err.decode()[-500:]}")


async def profile_only(suite: Suite) -> None:
    """py-spy the control room under the 1,000-client fan-out; print where the time goes."""
    upstream = await start_upstream(suite)
    raw = RESULTS / "profile-fanout-1000.txt"
    try:
        figures = await traffic(suite, "control-room", 1000, "poll", profile=raw)
    finally:
        upstream.send_signal(signal.SIGTERM)
        await upstream.wait()
    summary = profile_summary(raw)
    (RESULTS / "profile-fanout-1000-summary.txt").write_text(summary + "\n")
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    print(summary)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter suite (no 5,000/10,000)")
    parser.add_argument(
        "--only",
        default="",
        help="comma list: fanout,broadcast,idle,diff,store,cluster,budget,variants,wire,snapshot",
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=3.0, help="length of the request-budget run"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="rounds of the variants section (default 3, quick 1)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma list of servers")
    parser.add_argument("--profile", action="store_true", help="py-spy the 1,000-client fan-out")
    args = parser.parse_args(argv)

    raise_file_limit()
    big = not args.quick
    suite = Suite(
        servers=[s for s in args.servers.split(",") if s in SERVERS],
        fanout_ns=[100, 1000, 5000] if big else [100, 1000],
        broadcast_ns=[1000, 5000] if big else [1000],
        idle_ns=[1000, 10_000] if big else [1000],
        diff_sizes=list(DIFF_SIZES) if big else [10_000],
        budget_minutes=args.budget_minutes if big else min(args.budget_minutes, 2.0),
        variant_rounds=args.rounds or (3 if big else 1),
        variant_fanout=big,
    )
    if args.only:
        wanted = set(args.only.split(","))
        suite.variant_rounds = suite.variant_rounds if "variants" in wanted else 0
        suite.fanout_ns = suite.fanout_ns if "fanout" in wanted else []
        suite.broadcast_ns = suite.broadcast_ns if "broadcast" in wanted else []
        suite.idle_ns = suite.idle_ns if "idle" in wanted else []
        suite.diff_sizes = suite.diff_sizes if "diff" in wanted else []
        # `store` keeps its old meaning (persistence and replay figures).
        suite.texts = {
            k for k in suite.texts if k in wanted or (k == "replay" and "store" in wanted)
        }
        suite.budget_minutes = suite.budget_minutes if "budget" in wanted else 0.0
    if "node-ws" in suite.servers and not node_ready(suite.notes):
        suite.servers.remove("node-ws")
    RESULTS.mkdir(parents=True, exist_ok=True)
    runner = run_loop
    if args.profile:
        runner(profile_only(suite))
        return 0
    command = "python -m bench.run" + ("" if argv is None else " " + " ".join(argv))
    if argv is None and len(sys.argv) > 1:
        command = "python -m bench.run " + " ".join(sys.argv[1:])
    report = runner(run_suite(suite, command))
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / "latest.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
