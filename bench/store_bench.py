"""Persisting one poll of 1,000 deltas: SQLite (goal <= 50 ms) and PostgreSQL.

    python -m bench.store_bench [--runs 30] [--deltas 1000] [--sessions 10000] [--json]

Each run saves one batch the way the poller does (deltas appended, the changed snapshot
rows replaced, the position moved, one transaction) on a store that already holds a 10,000
session snapshot and the runs before it. Timed is `await store.save(...)` alone: the batch
is encoded before, as in the service. Reading 10,000 deltas back (what a resuming client's
replay asks the store for) is timed too. PostgreSQL comes from BENCH_DATABASE_URL or
TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test), in a schema of its
own that is dropped afterwards; without a server its rows say why they are missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec

from control_room.broker.base import Batch
from control_room.broker.memory import MemoryBroker
from control_room.diff import diff
from control_room.models import Approval, JulesSession, Position, PullRequest, Snapshot
from control_room.store import sqlite as sqlite_module
from control_room.store.base import Store
from control_room.store.postgres import PostgresStore
from control_room.store.sqlite import SqliteStore

GOAL_MS: Final = 50.0  # issue 3: persisting a poll of 1,000 deltas on SQLite
WARMUP_RUNS: Final = 3  # first saves warm the page cache and asyncpg's statement cache
READ_DELTAS: Final = 10_000  # a resuming client's replay, the other figure
DEFAULT_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
STATES: Final = ("PLANNING", "IN_PROGRESS", "AWAITING_USER_FEEDBACK", "COMPLETED")


@dataclass
class Row:
    """One line of the table."""

    backend: str
    operation: str
    runs: int
    median_ms: float | None
    p95_ms: float | None
    note: str = ""


def session(i: int, state: str) -> JulesSession:
    """A session the size of a real one (~600 bytes encoded, a pull request on some)."""
    sid = f"{10**18 + i * 7919}"
    return JulesSession(
        id=sid,
        repository=f"acme/service-{i % 40}",
        branch="main",
        title=f"Fix the flaky integration test in module {i} and add a regression test",
        state=state,
        planStatus="in_progress",
        approval=Approval(state="approved", approvedAt="2026-01-01T00:00:00.000Z"),
        participants=(),
        createdAt="2026-01-01T00:00:00.000000Z",
        updatedAt=f"2026-01-01T{i % 24:02}:00:00.000000Z",
        url=f"https://jules.google.com/session/{sid}",
        pullRequest=PullRequest(url=f"https://github.com/acme/service/pull/{i}", title="Fix")
        if i % 3 == 0
        else None,
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def measure(
    backend: str, store: Store, *, runs: int, deltas: int, sessions: int
) -> list[Row]:
    """Baseline, then `runs` timed saves of `deltas` updates each, then one timed read."""
    await store.open()
    broker = MemoryBroker(1, Position("bench", 0))
    snapshot: Snapshot = {str(i): session(i, "QUEUED") for i in range(sessions)}
    snapshot = {s.id: s for s in snapshot.values()}
    started = time.perf_counter()
    await store.save(Batch([]), snapshot, broker.position)
    baseline_ms = (time.perf_counter() - started) * 1000
    ids = list(snapshot)
    timings: list[float] = []
    for run in range(WARMUP_RUNS + runs):
        nxt = dict(snapshot)
        for k in range(deltas):
            i = (run * deltas + k) % sessions
            nxt[ids[i]] = session(i, STATES[run % len(STATES)])
        batch = Batch(broker.stamp(diff(snapshot, nxt), "2026-01-01T00:00:00.000Z"))
        position = Position(broker.position.epoch, batch.last_seq)
        started = time.perf_counter()
        await store.save(batch, nxt, position)
        elapsed = (time.perf_counter() - started) * 1000
        await broker.publish(batch)
        snapshot = nxt
        if run >= WARMUP_RUNS:
            timings.append(elapsed)
    reads: list[float] = []
    since = max(0, broker.position.seq - READ_DELTAS)
    for _ in range(5):
        started = time.perf_counter()
        entries = await store.history(since)
        reads.append((time.perf_counter() - started) * 1000)
        assert len(entries) == min(READ_DELTAS, broker.position.seq)
    await store.close()
    payload = sum(len(e.payload) for e in batch.entries) // len(batch.entries)
    return [
        Row(
            backend,
            f"save one poll of {deltas:,} deltas",
            runs,
            statistics.median(timings),
            percentile(timings, 0.95),
            f"~{payload} B/delta; {sessions:,} sessions stored",
        ),
        Row(backend, f"baseline: {sessions:,} sessions", 1, baseline_ms, baseline_ms),
        Row(
            backend,
            f"read {len(entries):,} deltas (replay)",
            len(reads),
            statistics.median(reads),
            percentile(reads, 0.95),
        ),
    ]


@asynccontextmanager
async def postgres_url() -> AsyncIterator[str]:
    """A fresh schema on the benchmark server, dropped afterwards."""
    base = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL", DEFAULT_URL)
    schema = f"cr_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base, timeout=3)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        parts = urlsplit(base)
        query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
        yield urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def on_sqlite(synchronous: str, **kw: int) -> list[Row]:
    """SQLite in a temporary DATA_DIR with the given `synchronous` setting."""
    original = sqlite_module.SYNCHRONOUS
    sqlite_module.SYNCHRONOUS = synchronous  # type: ignore[misc]
    try:
        with tempfile.TemporaryDirectory(prefix="store-bench-") as data_dir:
            name = "sqlite" if synchronous == original else f"sqlite synchronous={synchronous}"
            return await measure(name, SqliteStore(Path(data_dir)), **kw)
    finally:
        sqlite_module.SYNCHRONOUS = original  # type: ignore[misc]


async def on_postgres(**kw: int) -> list[Row]:
    """PostgreSQL, or a row saying why not."""
    try:
        async with postgres_url() as url:
            return await measure("postgresql", PostgresStore(url), **kw)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return [Row("postgresql", "save one poll", 0, None, None, f"skipped: {exc}")]


def table(rows: list[Row]) -> str:
    """A small fixed-width table."""
    head = ("backend", "operation", "runs", "median ms", "p95 ms", "note")
    cells = [
        (
            r.backend,
            r.operation,
            str(r.runs),
            "-" if r.median_ms is None else f"{r.median_ms:.1f}",
            "-" if r.p95_ms is None else f"{r.p95_ms:.1f}",
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    lines = [
        "  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in [head, *cells]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def run_all(runs: int, deltas: int, sessions: int) -> list[Row]:
    """Every backend in turn (one at a time: they share the machine's disk)."""
    kw = {"runs": runs, "deltas": deltas, "sessions": sessions}
    steps: list[Callable[[], Awaitable[list[Row]]]] = [
        lambda: on_sqlite(sqlite_module.SYNCHRONOUS, **kw),
        lambda: on_sqlite("NORMAL", **kw),
        lambda: on_postgres(**kw),
    ]
    rows: list[Row] = []
    for step in steps:
        rows.extend(await step())
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and the verdict; exit 1 when SQLite misses the goal."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--deltas", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args(argv)
    rows = asyncio.run(run_all(args.runs, args.deltas, args.sessions))
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode([asdict(r) for r in rows]) + b"\n")
    else:
        print(table(rows))
    sqlite = rows[0]
    met = sqlite.median_ms is not None and sqlite.median_ms <= GOAL_MS
    if not args.json:
        print(
            f"\ngoal: a poll of 1,000 deltas persisted in <= {GOAL_MS:.0f} ms on SQLite: "
            f"{'met' if met else 'MISSED'} (median {sqlite.median_ms:.1f} ms, "
            f"p95 {sqlite.p95_ms:.1f} ms)"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
