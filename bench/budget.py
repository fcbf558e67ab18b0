"""The request budget (issue 12 §5): a real service polling a large simulated account.

    python -m bench.budget [--minutes 3] [--sessions 2500] [--active 20]
                           [--activity-interval 30] [--json-out PATH]

The simulated Jules API (`Simulator.large_account`: 2,500 sessions, 94 % COMPLETED, 20 in
flight, one step per `--activity-interval` seconds each, about two steps in three adding
an activity) runs in this process, ticking every 0.25 s; the control room runs as its own
process (`control-room serve`) with the real settings: POLL_INTERVAL_MS=5000 and
FULL_LISTING_INTERVAL=60s, in real time. A WebSocket client subscribed to activities
receives everything. The run starts half a listing cycle after the baseline. Every few seconds a
finished session beyond the first page is changed (renamed), as a user tidying old sessions
would; each rename also costs one activity read, shown apart.

Measured over the run (after the service's baseline):
- requests to Jules per minute, by kind, as the simulator counted them (the ground truth;
  the service's own count in /api/stats is shown beside it), over whole cycles of
  complete listings (`--minutes` is rounded to a number of 55 s cycles);
- the latency of every change, from the simulator's change (its `updateTime`, or the
  activity's `createTime`: the simulator's clock is this machine's) to the client's receipt:
  changes to active sessions (goal p99 <= POLL_INTERVAL_MS + 1 s) and to finished ones
  (goal p99 <= 60 s);
- whether every activity created during the run (but its last 70 s, which a finished
  session's activity may take to arrive) was announced exactly once.

Today's figure (the wave-1 design) is arithmetic, not measured: every page every poll is
ceil(2,500 / 100) = 25 pages x 12 polls = 300 requests a minute before any activity is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from control_room import rfc3339
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.tasks import run_loop

ROOT: Final = Path(__file__).resolve().parent.parent
LOGS: Final = ROOT / "bench" / "results" / "logs"
TOKEN: Final = "bench-token.with.dots"
API_KEY: Final = "bench-key"
POLL_MS: Final = 5_000  # the real default: the goal is stated for it
FULL_LISTING_S: Final = 60  # the real default
TICK_S: Final = 0.25  # the simulator's account tick (control-room simulate's default)
PAGE_SIZE: Final = 100
GOAL_REQUESTS_PER_MINUTE: Final = 60
GOAL_ACTIVE_S: Final = POLL_MS / 1000 + 1
GOAL_FINISHED_S: Final = 60.0
FINISHED_CHANGE_EVERY_S: Final = 5.0  # ~24 samples of the 60 s path in a 3-minute run
FINISHED_MARGIN_S: Final = FULL_LISTING_S + 2 * POLL_MS / 1000
CYCLE_S: Final = FULL_LISTING_S - POLL_MS / 1000
"""How often the service lists every page with these settings (schedule.py: a listing
ends within FULL_LISTING_INTERVAL of the previous one's start, on a poll's tick: 55 s)."""
WARMUP_S: Final = CYCLE_S / 2
"""The run starts half a cycle after the service's baseline and lasts whole cycles, so it
holds exactly one complete listing per cycle, none straddling its ends."""
START_TIMEOUT_S: Final = 60.0
FINISHED_STATES: Final = frozenset({"COMPLETED", "FAILED", "PAUSED"})
"""Read by the complete listing only (schedule.py): the 60 s class."""


def free_port() -> int:
    """A port nothing listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def seconds(text: str) -> float:
    """An RFC 3339 time as Unix seconds, to the nanosecond."""
    found = rfc3339.instant(text)
    if found is None:
        raise ValueError(f"not a time: {text!r}")
    return found[0] + found[1] / 1e9


@dataclass
class Observed:
    """What the client received, classified."""

    t0: float
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"active": [], "finished": []}
    )
    activity_ids: Counter[str] = field(default_factory=Counter)
    states: dict[str, str] = field(default_factory=dict)
    changed_from: dict[str, tuple[str, float]] = field(default_factory=dict)
    deltas: int = 0
    activities: int = 0

    def take(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        if kind == "snapshot":
            self.states = {s["id"]: s["state"] for s in message["sessions"]}
        elif kind in ("created", "updated"):
            self.deltas += 1
            after, before = message["after"], message.get("before")
            sid = message["sessionId"]
            self.states[sid] = after["state"]
            was = before["state"] if before else "NEW"
            self.changed_from[sid] = (was, now)
            if before is None or before["updatedAt"] != after["updatedAt"]:
                self._latency("finished" if was in FINISHED_STATES else "active", after, now)
        elif kind == "deleted":
            self.deltas += 1
            self.states.pop(message["sessionId"], None)
        elif kind == "activity":
            self.activities += 1
            sid, activity = message["sessionId"], message["activity"]
            self.activity_ids[activity["id"]] += 1
            was, when = self.changed_from.get(sid, ("", 0.0))
            state = was if now - when < 1.0 else self.states.get(sid, "")
            when_made = seconds(activity["createdAt"])
            if when_made >= self.t0:
                klass = "finished" if state in FINISHED_STATES else "active"
                self.latencies[klass].append(now - when_made)

    def _latency(self, klass: str, after: dict[str, Any], now: float) -> None:
        made = seconds(after["updatedAt"])
        if made >= self.t0:
            self.latencies[klass].append(now - made)


async def receive(ws: aiohttp.ClientWebSocketResponse, seen: Observed) -> None:
    """Take every message until the socket closes."""
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            seen.take(json.loads(msg.data), time.time())


async def rename_finished(sim: Simulator, until: float, rng: random.Random) -> int:
    """Every few seconds, rename a finished session beyond the first page; how many."""
    done = 0
    while time.time() < until:
        await asyncio.sleep(FINISHED_CHANGE_EVERY_S)
        old = [
            s["id"]
            for s in sim.sessions_newest_first()[PAGE_SIZE:]
            if s["state"] in ("COMPLETED", "FAILED")
        ]
        sim.update(rng.choice(old), title=f"Renamed by the budget bench ({done})")
        done += 1
    return done


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


async def wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError("the service did not become ready; see its log")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the account, the service and the client; the figures."""
    sim = Simulator.large_account(
        args.sessions, args.active, seed=args.seed, activity_interval=args.activity_interval
    )
    cycles = max(1, round(args.minutes * 60 / CYCLE_S))
    duration = cycles * CYCLE_S
    async with SimulatorServer(sim, API_KEY, tick_interval=TICK_S) as upstream:
        port = free_port()
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOCAL_TOKEN": TOKEN,
            "JULES_API_KEY": API_KEY,
            "JULES_API_BASE": upstream.base_url,
            "POLL_INTERVAL_MS": str(POLL_MS),
            "FULL_LISTING_INTERVAL": f"{FULL_LISTING_S}s",
            "LOG_LEVEL": "info",
            "LOG_FORMAT": "json",
        }
        LOGS.mkdir(parents=True, exist_ok=True)
        log_path = LOGS / "budget-service.log"
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "control_room.cli",
                "serve",
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, url)
                ws = await http.ws_connect(
                    f"ws://127.0.0.1:{port}/?activities=1&snapshot=1",
                    protocols=(f"bearer.{TOKEN}",),
                    max_msg_size=0,
                )
                seen = Observed(time.time())
                reader = asyncio.create_task(receive(ws, seen))
                await asyncio.sleep(WARMUP_S)
                t0 = time.time()
                sim.requests.reset()
                cpu0 = cpu_seconds(proc.pid)
                seen.t0 = t0
                seen.latencies = {"active": [], "finished": []}
                end = t0 + duration
                renamer = asyncio.create_task(
                    rename_finished(sim, end - FINISHED_MARGIN_S, random.Random(args.seed))
                )
                await asyncio.sleep(duration)
                requests = sim.requests.as_dict()
                cpu = cpu_seconds(proc.pid) - cpu0
                async with http.get(
                    url + "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as resp:
                    stats = await resp.json()
                renamed = await renamer
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await ws.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        # Every activity old enough to have reached the client by the end, whatever its
        # session: one of a finished session waits for a complete listing.
        created = {
            a["id"]: (s["id"], a, seconds(a["createTime"]))
            for s in sim.sessions_newest_first()
            for a in sim.activities(s["id"])
        }
        expected = {
            aid for aid, (_, _, when) in created.items() if t0 <= when <= end - FINISHED_MARGIN_S
        }
    minutes = duration / 60
    per_minute = {k: v / minutes for k, v in requests.items() if v}
    received = set(seen.activity_ids)
    missing = [
        {
            "sessionId": created[aid][0],
            "description": created[aid][1].get("description"),
            "secondsBeforeEnd": round(end - created[aid][2], 1),
        }
        for aid in sorted(expected - received)
    ]
    return {
        "minutes": minutes,
        "cycles": cycles,
        "sessions": args.sessions,
        "active_sessions": args.active,
        "activity_interval_s": args.activity_interval,
        "poll_interval_ms": POLL_MS,
        "full_listing_interval_s": FULL_LISTING_S,
        "requests_per_minute": sum(requests.values()) / minutes,
        # Each rename of a finished session costs one activity read (its updatedAt moved).
        "rename_reads_per_minute": renamed / minutes,
        "requests_per_minute_by_kind": per_minute,
        "service_requests_last_minute": stats["upstream"]["requestsLastMinute"],
        "wave1_requests_per_minute": math.ceil(args.sessions / PAGE_SIZE) * 60_000 // POLL_MS,
        "active": {
            "n": len(seen.latencies["active"]),
            "p50_s": pct(seen.latencies["active"], 50),
            "p99_s": pct(seen.latencies["active"], 99),
            "max_s": max(seen.latencies["active"], default=math.nan),
        },
        "finished": {
            "n": len(seen.latencies["finished"]),
            "p50_s": pct(seen.latencies["finished"], 50),
            "p99_s": pct(seen.latencies["finished"], 99),
            "max_s": max(seen.latencies["finished"], default=math.nan),
            "renamed": renamed,
        },
        "activities": {
            "expected": len(expected),
            "announced": len(expected & received),
            "missing": len(expected - received),
            "missing_detail": missing[:10],
            "duplicated": sum(1 for n in seen.activity_ids.values() if n > 1),
        },
        "deltas_received": seen.deltas,
        "service_cpu_s_per_minute": cpu / minutes,
        "stats": stats.get("polling", {}),
    }


def report(f: dict[str, Any]) -> str:
    """The figures as a text table."""
    rpm = f["requests_per_minute"]
    act, fin, acts = f["active"], f["finished"], f["activities"]
    lines = [
        f"Budget: {f['sessions']:,} sessions, {f['active_sessions']} in flight (one step per"
        f" ~{f['activity_interval_s']:g} s each), POLL_INTERVAL_MS={f['poll_interval_ms']},"
        f" FULL_LISTING_INTERVAL={f['full_listing_interval_s']}s, {f['minutes']:.2f} min real time"
        f" ({f['cycles']} complete-listing cycles of {CYCLE_S:g} s)",
        "",
        f"{'figure':<52} {'goal':>14} {'measured':>22} verdict",
        f"{'requests to Jules per minute':<52} {'<= 60':>14} {rpm:>22.1f} "
        + ("met" if rpm <= GOAL_REQUESTS_PER_MINUTE else "NOT MET"),
        f"{'  without the reads caused by the bench renaming':<52} {'':>14}"
        f" {rpm - f['rename_reads_per_minute']:>22.1f}",
        f"{'  wave-1 design (every page every poll, computed)':<52} {'':>14}"
        f" {f['wave1_requests_per_minute']:>22}",
        f"{'active session change -> client, p99 (s)':<52} {f'<= {GOAL_ACTIVE_S:g}':>14}"
        f" {act['p99_s']:>22.2f} " + ("met" if act["p99_s"] <= GOAL_ACTIVE_S else "NOT MET"),
        f"{'finished session change -> client, p99 (s)':<52} {f'<= {GOAL_FINISHED_S:g}':>14}"
        f" {fin['p99_s']:>22.2f} " + ("met" if fin["p99_s"] <= GOAL_FINISHED_S else "NOT MET"),
        f"{'activities announced exactly once':<52} {'all':>14}"
        f" {acts['announced']:>10} of {acts['expected']:<8}"
        + (" met" if not acts["missing"] and not acts["duplicated"] else " NOT MET"),
        "",
        "requests per minute by kind (simulator's count; service's own last minute):",
    ]
    service = f["service_requests_last_minute"]
    for kind, n in sorted(f["requests_per_minute_by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<20} {n:7.1f}   (service: {service.get(kind, 0)})")
    lines += [
        "",
        f"active changes:   n={act['n']}, p50 {act['p50_s']:.2f} s, p99 {act['p99_s']:.2f} s,"
        f" max {act['max_s']:.2f} s",
        f"finished changes: n={fin['n']} ({fin['renamed']} renamed by the bench),"
        f" p50 {fin['p50_s']:.2f} s, p99 {fin['p99_s']:.2f} s, max {fin['max_s']:.2f} s",
        f"activities: {acts['missing']} missing, {acts['duplicated']} announced twice;"
        f" deltas received: {f['deltas_received']}"
        + "".join(f"\n  missing: {m}" for m in acts.get("missing_detail", ())),
        f"service CPU: {f['service_cpu_s_per_minute']:.2f} s per minute",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the run")
    parser.add_argument("--sessions", type=int, default=2500)
    parser.add_argument("--active", type=int, default=20, help="sessions in flight")
    parser.add_argument(
        "--activity-interval", type=float, default=30.0, help="seconds per step of a session"
    )
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    figures = run_loop(measure(args))
    print(report(figures), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
