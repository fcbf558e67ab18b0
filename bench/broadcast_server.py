"""Bench-only server: the control room with a stub upstream, deltas published at a fixed rate.

This is the "broadcast alone" workload: the real Service (handshake, hub, heartbeat,
connections, broker) with nothing upstream. On SIGUSR2 it publishes `--count` deltas of
about 1 KB at `--rate` per second, one batch per delta, exactly as the poller does after a
diff: `broker.stamp(changes, timestamp)`, `Batch(deltas)`, `await broker.publish(batch)`. Each
delta's `after.title` is `bench <cid> <time_ns>`, stamped just before it is stamped and
published, so clients measure publish -> delivery latency.

Configured like `control-room serve` (PORT, LOCAL_TOKEN, HEARTBEAT_INTERVAL_MS, LOG_LEVEL,
LOG_FORMAT, MAX_BUFFER_BYTES from the environment); stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import time
from typing import Any, Final

import msgspec

from control_room import config
from control_room import logging as logs
from control_room.app import Service
from control_room.broker.base import Batch
from control_room.jules.activities import ActivityListing
from control_room.jules.client import FirstPage
from control_room.jules.types import Session
from control_room.models import Approval, Change, JulesSession, Position, PullRequest
from control_room.poller import iso_now
from control_room.store.base import Store
from control_room.tasks import run_loop

NO_POLL_S: Final = 3600.0  # the stub upstream never changes; one baseline poll is enough
SESSION_ID: Final = "10000000042"
PR_TITLE: Final = "Keep the snapshot when a later page fails, and confirm deletions with a GET"
"""Padding that brings one `updated` delta (before + after) to about 1 KB on the wire."""


class StubUpstream:
    """An upstream with no sessions: the baseline poll succeeds and nothing ever changes."""

    async def list_sessions(self) -> list[Any]:
        """Every session (raw JSON, or decoded in older versions of the client): none."""
        return []

    async def list_first_page(self) -> FirstPage:
        """The first page of no sessions: a complete listing."""
        return FirstPage([], more=False)

    async def get_session(self, session_id: str) -> Session | None:
        """No session exists."""
        return None

    async def list_activities(self, session_id: str, after: str | None) -> ActivityListing | None:
        """No session, so no activities."""
        return None

    async def get_activity(self, session_id: str, activity_id: str) -> msgspec.Raw | None:
        """No session, so no activity."""
        return None


def bench_session(title: str, state: str) -> JulesSession:
    """A realistic mapped session carrying `title`."""
    return JulesSession(
        id=SESSION_ID,
        repository="acme/widgets",
        branch="main",
        title=title,
        state=state,
        planStatus="in_progress" if state == "IN_PROGRESS" else "pending",
        approval=Approval(state="approved", approvedAt="2025-11-10T12:05:00.000000Z"),
        participants=(),
        createdAt="2025-11-10T12:00:00.000000Z",
        updatedAt="2025-11-10T12:05:00.000000Z",
        url=f"https://jules.google.com/session/{SESSION_ID}",
        pullRequest=PullRequest(url="https://github.com/acme/widgets/pull/42", title=PR_TITLE),
    )


class Publisher:
    """Publishes numbered, stamped deltas into the service's broker on a fixed schedule."""

    def __init__(self, service: Service, rate: float, count: int) -> None:
        self._service = service
        self._period = 1 / rate
        self._count = count
        self._cid = 0
        self._before = bench_session("bench 0 0", "PLANNING")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin one run of `count` deltas, unless one is already going."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def next_batch(self) -> Batch:
        """Stamp one delta, the way the poller stamps a diff."""
        self._cid += 1
        after = bench_session(f"bench {self._cid} {time.time_ns()}", "IN_PROGRESS")
        broker = self._service.broker
        deltas = broker.stamp([Change("updated", SESSION_ID, self._before, after)], iso_now())
        self._before = after
        return Batch(deltas)

    async def publish_one(self) -> None:
        """Stamp and publish one delta (no store: nothing to persist first)."""
        await self._service.broker.publish(self.next_batch())

    async def persist_and_publish_one(self, store: Store) -> None:
        """With PERSIST=1: commit the delta and the snapshot first, as the poller does."""
        batch = self.next_batch()
        position = Position(self._service.broker.position.epoch, batch.last_seq)
        await store.save(batch, {SESSION_ID: self._before}, position)
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


async def serve(rate: float, count: int) -> None:
    """Run the service until SIGTERM/SIGINT; SIGUSR2 starts a publishing run."""
    settings = config.load(dotenv=None, require_upstream=False)
    logs.configure(settings.log_level, settings.log_format)
    settings = dataclasses.replace(settings, poll_interval=NO_POLL_S)
    service = Service(settings, upstream=StubUpstream())
    publisher = Publisher(service, rate, count)
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
    parser.add_argument("--rate", type=float, default=20.0, help="deltas per second")
    parser.add_argument("--count", type=int, default=100, help="deltas per SIGUSR2")
    args = parser.parse_args(argv)
    coro = serve(args.rate, args.count)
    run_loop(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
