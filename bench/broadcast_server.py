"""Bench-only server: the control room with a stub upstream, deltas published at a fixed rate.

This is the "broadcast alone" workload: the real Service (handshake, hub, heartbeat,
connections, broker) with nothing upstream. On SIGUSR2 it publishes `--count` batches at
`--rate` per second, exactly as the poller does after a diff: `broker.stamp(changes,
timestamp)`, `Batch(deltas)`, `await broker.publish(batch)`. A batch holds one `updated`
delta of about 1 KB per repository (`--repositories`, default 1: one delta per batch), each
for a session of its own in `bench.workload.repository(j)`, so subscribers filtering by
repository each admit a share. Each delta's `after.title` is `bench <cid> <time_ns>`
(`cid` counts deltas from 1), stamped just before it is published, so clients measure
publish -> delivery latency.

`--sessions N --title-bytes B` give the stub upstream N sessions with titles of B
characters, which the baseline poll takes as the current state: a big snapshot for
clients that connect with `?snapshot=1` (6,000 sessions of ~1.75 KB: ~10.5 MB).

Configured like `control-room serve` (PORT, LOCAL_TOKEN, HEARTBEAT_INTERVAL_MS, LOG_LEVEL,
LOG_FORMAT, MAX_BUFFER_BYTES from the environment); stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import re
import signal
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any, Final

import msgspec

from bench.upstream import make_session
from bench.workload import repository
from control_room import config
from control_room import logging as logs
from control_room.app import Service
from control_room.broker.base import Batch
from control_room.jules.activities import ActivityListing
from control_room.jules.client import FirstPage
from control_room.jules.simulator.content import TASKS
from control_room.jules.types import Session
from control_room.models import Approval, Change, JulesSession, Position, PullRequest
from control_room.poller import iso_now
from control_room.store.base import Store
from control_room.tasks import run_loop

NO_POLL_S: Final = 3600.0  # the stub upstream never changes; one baseline poll is enough
SESSION_ID: Final = "10000000042"  # the session of repository 0; repository j's is +j
PR_TITLE: Final = "Keep the snapshot when a later page fails, and confirm deletions with a GET"
"""Padding that brings one `updated` delta (before + after) to about 1 KB on the wire."""


class StubUpstream:
    """An upstream whose sessions never change: the baseline poll succeeds, then nothing.

    Holds no sessions unless given some (raw JSON, as the Jules client returns them).
    """

    def __init__(self, sessions: list[bytes] | None = None) -> None:
        self._sessions = sessions or []

    async def list_pages(self, page_budget: float | None = None) -> AsyncGenerator[list[Any], None]:
        """Every session as raw JSON, on one page."""
        yield list(self._sessions)

    async def list_first_page(self, page_budget: float | None = None) -> FirstPage:
        """The first page of no sessions: a complete listing."""
        return FirstPage([], more=False)

    async def get_session(self, session_id: str, deadline: float | None = None) -> Session | None:
        """No session exists."""
        return None

    async def list_activities(self, session_id: str, after: str | None) -> ActivityListing | None:
        """No session, so no activities."""
        return None

    async def get_activity(self, session_id: str, activity_id: str) -> msgspec.Raw | None:
        """No session, so no activity."""
        return None


VOCABULARY: Final = tuple(
    sorted({w for t in TASKS for w in re.findall(r"[\w'-]+", f"{t.title} {t.prompt}")})
)
"""Words of the simulator's task prompts: what long generated titles are made of."""


def prose(rng: random.Random, length: int) -> str:
    """About `length` characters of words from the simulator's task prompts, picked at random:
    text that compresses like prose (a run of one letter would compress to nothing)."""
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(VOCABULARY)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def upstream_sessions(count: int, title_bytes: int) -> list[bytes]:
    """`count` raw Jules sessions (the bench upstream's shape) with titles of `title_bytes`."""
    now = time.time_ns()
    rng = random.Random(count)
    sessions = []
    for i in range(count):
        raw = make_session(i, now - i * 1_000_000_000)
        raw["title"] = f"session {i}: {prose(rng, title_bytes)}" if title_bytes else raw["title"]
        sessions.append(msgspec.json.encode(raw))
    return sessions


def bench_session(title: str, state: str, index: int = 0) -> JulesSession:
    """A realistic mapped session of repository `index` carrying `title`."""
    session_id = str(int(SESSION_ID) + index)
    repo = repository(index)
    return JulesSession(
        id=session_id,
        repository=repo,
        branch="main",
        title=title,
        state=state,
        planStatus="in_progress" if state == "IN_PROGRESS" else "pending",
        approval=Approval(state="approved", approvedAt="2025-11-10T12:05:00.000000Z"),
        participants=(),
        createdAt="2025-11-10T12:00:00.000000Z",
        updatedAt="2025-11-10T12:05:00.000000Z",
        url=f"https://jules.google.com/session/{session_id}",
        pullRequest=PullRequest(url=f"https://github.com/{repo}/pull/42", title=PR_TITLE),
    )


class Publisher:
    """Publishes numbered, stamped deltas into the service's broker on a fixed schedule."""

    def __init__(self, service: Service, rate: float, count: int, repositories: int = 1) -> None:
        self._service = service
        self._period = 1 / rate
        self._count = count
        self._cid = 0
        self._before = [bench_session("bench 0 0", "PLANNING", j) for j in range(repositories)]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin one run of `count` deltas, unless one is already going."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def next_batch(self) -> Batch:
        """Stamp one delta per repository, the way the poller stamps a diff."""
        changes = []
        for j, before in enumerate(self._before):
            self._cid += 1
            after = bench_session(f"bench {self._cid} {time.time_ns()}", "IN_PROGRESS", j)
            changes.append(Change("updated", after.id, before, after))
            self._before[j] = after
        deltas = self._service.broker.stamp(changes, iso_now())
        return Batch(deltas)

    async def publish_one(self) -> None:
        """Stamp and publish one batch (no store: nothing to persist first)."""
        await self._service.broker.publish(self.next_batch())

    async def persist_and_publish_one(self, store: Store) -> None:
        """With PERSIST=1: commit the batch and the snapshot first, as the poller does."""
        batch = self.next_batch()
        position = Position(self._service.broker.position.epoch, batch.last_seq)
        await store.save(batch, {s.id: s for s in self._before}, position)
        await self._service.broker.publish(batch)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self._count):
            delay = start + i * self._period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            store = self._service.store
            if store is None:
                await self.publish_one()
            else:
                await self.persist_and_publish_one(store)


async def serve(
    rate: float, count: int, repositories: int = 1, sessions: int = 0, title_bytes: int = 0
) -> None:
    """Run the service until SIGTERM/SIGINT; SIGUSR2 starts a publishing run."""
    settings = config.load(dotenv=None, require_upstream=False)
    logs.configure(settings.log_level, settings.log_format)
    settings = dataclasses.replace(settings, poll_interval=NO_POLL_S)
    upstream = StubUpstream(upstream_sessions(sessions, title_bytes))
    service = Service(settings, upstream=upstream)
    publisher = Publisher(service, rate, count, repositories)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, publisher.start)
    await service.start()
    print(f"READY {service.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="batches per second")
    parser.add_argument("--count", type=int, default=100, help="batches per SIGUSR2")
    parser.add_argument(
        "--repositories", type=int, default=1, help="deltas per batch, one per repository"
    )
    parser.add_argument("--sessions", type=int, default=0, help="sessions upstream (snapshot)")
    parser.add_argument("--title-bytes", type=int, default=0, help="their titles' length")
    args = parser.parse_args(argv)
    coro = serve(args.rate, args.count, args.repositories, args.sessions, args.title_bytes)
    run_loop(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
