"""SQLite and PostgreSQL give identical results for the same sequence of polls."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_room.app import Service
from control_room.broker.base import HistoryGone
from control_room.jules.simulator import Simulator
from control_room.models import Snapshot
from control_room.store.base import Store
from tests.conftest import TOKEN, ServiceFactory
from tests.store.conftest import PostgresBackend, SqliteBackend
from tests.store.timeline import Timeline, session

pytestmark = pytest.mark.postgres

STATES = ("QUEUED", "PLANNING", "IN_PROGRESS", "COMPLETED", "FAILED")


def polls(seed: int, count: int) -> list[Snapshot]:
    """A seeded walk of snapshots: sessions appear, change state and vanish."""
    rng = random.Random(seed)
    current: Snapshot = {}
    walk: list[Snapshot] = []
    serial = 0
    for _ in range(count):
        nxt = dict(current)
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.4 or not nxt:
                serial += 1
                sid = f"s{serial:04}"
                nxt[sid] = session(sid)
            elif roll < 0.85:
                sid = rng.choice(sorted(nxt))
                nxt[sid] = session(sid, rng.choice(STATES), title=f"t{rng.randint(0, 9)}")
            else:
                del nxt[rng.choice(sorted(nxt))]
        if nxt != current:
            walk.append(nxt)
            current = nxt
    return walk


async def observe(store: Store) -> list[Any]:
    """Everything a reader can learn from a store."""
    seen: list[Any] = []
    for since in (0, 5, 17, 40):
        for session_id in (None, "s0003"):
            for limit in (None, 7):
                try:
                    entries = await store.history(since, limit, session_id)
                    seen.append([(e.seq, e.session_id, e.payload) for e in entries])
                except HistoryGone as exc:
                    seen.append(("gone", exc.reason, exc.oldest_seq))
    return seen


async def run(store: Store, reopen: Store) -> list[Any]:
    """The same polls, prunes and reopen on one store; what each step answered."""
    results: list[Any] = [await store.open()]
    t = Timeline(store, epoch="same-epoch")
    await t.baseline({"s0000": session("s0000")})
    t.sessions = {"s0000": session("s0000")}
    for i, snapshot in enumerate(polls(seed=42, count=60)):
        await t.poll(snapshot)
        if i == 30:
            results.append(await store.prune(0.0, keep_at_most=50))
    await store.set_webhook_cursor("https://hooks.example/a", 12)
    results.append(await observe(store))
    results.append(await store.prune(0.0, keep_at_most=30))
    results.append(await observe(store))
    results.append(await reopen.open())
    results.append(await reopen.webhook_cursor("https://hooks.example/a"))
    results.append(await observe(reopen))
    return results


async def test_the_same_polls_give_the_same_answers(
    tmp_path: Path, pg_backend: PostgresBackend
) -> None:
    sqlite = SqliteBackend(tmp_path)
    try:
        on_sqlite = await run(await sqlite.make(), await sqlite.make())
    finally:
        await sqlite.close()
    on_postgres = await run(await pg_backend.make(), await pg_backend.make())
    assert on_sqlite == on_postgres
    assert on_sqlite[-3] is not None and on_sqlite[-3].position.seq > 100  # it did run


async def deltas_of(http: aiohttp.ClientSession, service: Service) -> list[Any]:
    """The service's whole history, without the wall-clock timestamps."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(service.url + "/api/deltas?since=0", headers=auth) as resp:
        assert resp.status == 200
        body = await resp.json()
    return [{k: v for k, v in d.items() if k != "timestamp"} for d in body["deltas"]]


async def test_services_on_either_backend_publish_the_same_deltas(
    tmp_path: Path,
    pg_backend: PostgresBackend,
    make_service: ServiceFactory,
    sim: Simulator,
    http: aiohttp.ClientSession,
) -> None:
    sqlite = SqliteBackend(tmp_path)
    for _ in range(10):
        sim.create()
    on_sqlite = await make_service(history_size=5, **sqlite.service_settings())
    on_postgres = await make_service(history_size=5, **pg_backend.service_settings())
    for _ in range(15):
        sim.tick()
        for service in (on_sqlite, on_postgres):
            assert service.poller is not None
            await service.poller.poll_once()
    # history_size=5: most of this history comes back from each store.
    assert await deltas_of(http, on_sqlite) == await deltas_of(http, on_postgres)
    assert len(await deltas_of(http, on_sqlite)) > 5
    assert on_sqlite.poller is not None and on_postgres.poller is not None
    assert on_sqlite.poller.sessions == on_postgres.poller.sessions
