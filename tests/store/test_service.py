"""A service with PERSIST=1, on each backend: restarts, store outages, history from the store."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator
from control_room.store import common
from tests.conftest import (
    API_KEY,
    TOKEN,
    ServiceFactory,
    connect,
    nothing_more,
    receive_json,
    receive_n,
)
from tests.store.conftest import Backend

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A locked or vanished database fails a save in a fraction of a second, not seconds."""
    monkeypatch.setattr("control_room.store.sqlite.BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr("control_room.store.postgres.STORE_TIMEOUT_S", 1.0)


async def get_json(
    http: aiohttp.ClientSession, service: Service, path: str, status: int = 200
) -> Any:
    async with http.get(service.url + path, headers=AUTH) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def poll(service: Service) -> None:
    assert service.poller is not None
    await service.poller.poll_once()


async def test_a_restart_continues_the_stream_and_reports_downtime_changes(
    backend: Backend,
    make_service: ServiceFactory,
    sim: Simulator,
    http: aiohttp.ClientSession,
) -> None:
    a, b = sim.create(title="a")["id"], sim.create(title="b")["id"]
    first = await make_service(**backend.service_settings())
    ws = await connect(http, first)
    sim.set_state(a, "PLANNING")
    await poll(first)
    [seen] = await receive_n(ws, 1)
    before = await get_json(http, first, "/api/sessions")
    assert (seen["seq"], before["seq"]) == (1, 1)
    await first.stop()

    # While the service is down, the upstream moves on.
    c = sim.create(title="c")["id"]
    sim.delete(b)
    sim.set_state(a, "IN_PROGRESS")

    second = await make_service(**backend.service_settings())  # its first poll is done
    after = await get_json(http, second, "/api/sessions")
    assert after["epoch"] == before["epoch"]
    assert after["seq"] == 4
    assert {s["id"] for s in after["sessions"]} == {a, c}

    resumed = await connect(http, second, f"?since=1&epoch={before['epoch']}")
    missed = await receive_n(resumed, 3)
    assert [(d["seq"], d["type"], d["sessionId"]) for d in missed] == sorted(
        [(2, "deleted", b), (3, "created", c), (4, "updated", a)]
    )
    assert (missed[2]["before"]["state"], missed[2]["after"]["state"]) == (
        "PLANNING",
        "IN_PROGRESS",
    )
    await nothing_more(resumed)
    # Live deltas follow the replay, numbered on.
    sim.set_state(c, "PLANNING")
    await poll(second)
    [live] = await receive_n(resumed, 1)
    assert (live["seq"], live["sessionId"]) == (5, c)


async def test_a_restart_with_no_downtime_changes_publishes_nothing(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for _ in range(5):
        sim.create()
    first = await make_service(**backend.service_settings())
    before = await get_json(http, first, "/api/sessions")
    await first.stop()
    second = await make_service(**backend.service_settings())
    after = await get_json(http, second, "/api/sessions")
    assert (after["epoch"], after["seq"]) == (before["epoch"], 0)
    assert after["sessions"] == before["sessions"]  # no flood of `created`


async def test_history_older_than_memory_is_read_from_the_store(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    service = await make_service(history_size=2, **backend.service_settings())
    ids = [sim.create()["id"] for _ in range(5)]
    await poll(service)  # seqs 1..5; memory keeps 4, 5

    page = await get_json(http, service, "/api/deltas?since=0")
    assert [d["seq"] for d in page["deltas"]] == [1, 2, 3, 4, 5]
    assert [d["sessionId"] for d in page["deltas"]] == sorted(ids)
    one = await get_json(http, service, f"/api/deltas?since=0&sessionId={ids[0]}")
    assert [d["sessionId"] for d in one["deltas"]] == [ids[0]]
    ws = await connect(http, service, f"?since=1&epoch={page['epoch']}")
    assert [d["seq"] for d in await receive_n(ws, 4)] == [2, 3, 4, 5]
    await nothing_more(ws)


async def test_history_pruned_from_the_store_is_gone(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    service = await make_service(history_size=2, **backend.service_settings())
    for _ in range(5):
        sim.create()
    await poll(service)
    assert service.store is not None
    assert await service.store.prune(0.0, keep_at_most=3) == 2  # 1, 2 go; 3..5 stay

    gone = await get_json(http, service, "/api/deltas?since=1", status=410)
    assert (gone["error"], gone["oldestSeq"]) == ("gone", 3)
    kept = await get_json(http, service, "/api/deltas?since=2")
    assert [d["seq"] for d in kept["deltas"]] == [3, 4, 5]
    ws = await connect(http, service, f"?since=1&epoch={kept['epoch']}")
    [reset] = await receive_n(ws, 1)
    assert (reset["type"], reset["seq"], reset["reason"]) == ("reset", 5, "history_expired")


async def test_a_replay_too_long_to_be_worth_it_gets_a_reset(
    backend: Backend,
    make_service: ServiceFactory,
    sim: Simulator,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("control_room.broker.memory.MAX_REPLAY_FROM_OLDER", 3)
    service = await make_service(history_size=1, **backend.service_settings())
    for _ in range(5):
        sim.create()
    await poll(service)
    epoch = service.broker.position.epoch
    far = await connect(http, service, f"?since=1&epoch={epoch}")
    [reset] = await receive_n(far, 1)
    assert (reset["type"], reset["seq"], reset["reason"]) == ("reset", 5, "too_far_behind")
    near = await connect(http, service, f"?since=2&epoch={epoch}")
    assert [d["seq"] for d in await receive_n(near, 3)] == [3, 4, 5]
    # A page of /api/deltas has a limit, so it is never refused for being far behind.
    page = await get_json(http, service, "/api/deltas?since=0")
    assert [d["seq"] for d in page["deltas"]] == [1, 2, 3, 4, 5]


async def test_a_store_outage_holds_deltas_back_and_the_service_recovers(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    a = sim.create()["id"]
    service = await make_service(**backend.service_settings())
    ws = await connect(http, service)
    async with backend.unavailable():
        sim.set_state(a, "PLANNING")
        b = sim.create()["id"]
        await poll(service)
        await poll(service)  # still down: still held back, still running
        await nothing_more(ws)
        health = await get_json(http, service, "/healthz")
        assert (health["status"], health["reasons"]) == ("degraded", ["store_unavailable"])
        stats = await get_json(http, service, "/api/stats")  # the detail needs the token
        assert "StoreError" in stats["upstream"]["storeError"]
        ready = await get_json(http, service, "/readyz", status=503)
        assert ready["reasons"] == ["store_unavailable"]
        stalled = await get_json(http, service, "/api/sessions")
        assert (stalled["seq"], len(stalled["sessions"])) == (0, 1)  # the last persisted state
    sim.set_state(a, "AWAITING_PLAN_APPROVAL")
    await poll(service)
    # One poll's worth, diffed against the last persisted snapshot: nothing lost, in order.
    deltas = await receive_n(ws, 2)
    assert [d["seq"] for d in deltas] == [1, 2]
    assert [(d["sessionId"], d["type"]) for d in deltas] == sorted([(a, "updated"), (b, "created")])
    updated = next(d for d in deltas if d["sessionId"] == a)
    assert (updated["before"]["state"], updated["after"]["state"]) == (
        "QUEUED",
        "AWAITING_PLAN_APPROVAL",
    )
    assert (await get_json(http, service, "/healthz"))["status"] == "ok"
    await get_json(http, service, "/readyz")
    # And what was held back is durable: a restart finds it.
    await service.stop()
    again = await make_service(**backend.service_settings())
    assert (await get_json(http, again, "/api/sessions"))["seq"] == 2


async def test_old_history_answers_503_while_the_database_is_down(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    if backend.name == "sqlite":
        pytest.skip("a SQLite write lock does not stop WAL readers: history stays readable")
    service = await make_service(history_size=1, **backend.service_settings())
    for _ in range(3):
        sim.create()
    await poll(service)
    async with backend.unavailable():
        async with http.get(service.url + "/api/deltas?since=0", headers=AUTH) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert (await resp.json())["error"] == "store_unavailable"
        recent = await get_json(http, service, "/api/deltas?since=2")  # memory still answers
        assert [d["seq"] for d in recent["deltas"]] == [3]
    assert len((await get_json(http, service, "/api/deltas?since=0"))["deltas"]) == 3


async def test_a_resume_needing_the_unreachable_store_is_asked_to_retry_not_reset(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    if backend.name == "sqlite":
        pytest.skip("a SQLite write lock does not stop WAL readers: history stays readable")
    service = await make_service(history_size=1, **backend.service_settings())
    for _ in range(3):
        sim.create()
    await poll(service)
    epoch = service.broker.position.epoch
    async with backend.unavailable():
        ws = await connect(http, service, f"?since=0&epoch={epoch}")
        closed = await ws.receive()
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1013)  # try again later
    assert service.metrics.connections_closed.labels("history_unavailable")._value.get() == 1
    ws = await connect(http, service, f"?since=0&epoch={epoch}")  # the store is back
    assert [(await receive_json(ws))["seq"] for _ in range(3)] == [1, 2, 3]


async def test_serve_refuses_a_schema_newer_than_it_knows(
    backend: Backend, tmp_path: Path, sim: Simulator
) -> None:
    store = await backend.make()
    await store.open()
    await store.close()
    await backend.set_schema_version(common.SCHEMA_VERSION + 1)
    env = {
        **os.environ,
        "LOCAL_TOKEN": TOKEN,
        "JULES_API_KEY": API_KEY,
        "JULES_API_BASE": "http://127.0.0.1:9/v1alpha",  # never reached
        "PORT": "0",
        "PERSIST": "1",
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": backend.service_settings().get("database_url", ""),
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("control-room")),
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    newer = common.SCHEMA_VERSION + 1
    assert lines[0].startswith(
        f"control-room: store error: database schema version {newer} is newer"
    )


async def test_activities_held_back_by_a_store_outage_are_announced_once_it_recovers(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.activities_not_found_for = 0
    done = sim.create(state="COMPLETED")["id"]
    service = await make_service(**backend.service_settings())
    ws = await connect(http, service, "?activities=1")
    async with backend.unavailable():
        sim.send_message(done, "Also add a changelog entry")
        await poll(service)  # read, but the store refused the batch: nothing published
        await nothing_more(ws)
    await poll(service)
    delta, activity = await receive_n(ws, 2)
    assert (delta["type"], delta["after"]["state"]) == ("updated", "IN_PROGRESS")
    assert (activity["type"], activity["seq"]) == ("activity", 1)
    assert activity["activity"]["message"] == "Also add a changelog entry"
    await poll(service)
    await nothing_more(ws)  # read again after the outage, announced once
    await service.stop()
    again = await make_service(**backend.service_settings())
    assert again.broker.position.activities_seq == 1  # the activities channel persisted
