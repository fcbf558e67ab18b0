"""Polling on a request budget, against the simulated Jules over HTTP: the first page every
poll, every page once per FULL_LISTING_INTERVAL, working sessions beyond page 1 read on
their own, deletions only from complete listings, and every request counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from control_room import poller as poller_module
from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import MS, TOKEN, ServiceFactory, connect, nothing_more, receive_json

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FULL = 1500 * MS
"""The test's FULL_LISTING_INTERVAL: long enough that the polls right after the baseline are
partial even on a loaded machine, short enough to wait for the next complete listing."""


@pytest.fixture
def sim() -> Simulator:
    return Simulator(seed=3, activities_not_found_for=0)


def first_page_only(sim: Simulator) -> bool:
    r = sim.requests
    return r["list_first_page"] == 1 and r["list_next_page"] == 0


async def poll(service: Service) -> None:
    assert service.poller is not None
    await service.poller.poll_once()


async def drain(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    got = []
    while True:
        try:
            got.append(await receive_json(ws, 100 * MS))
        except TimeoutError:
            return got


async def until_complete_listing(
    service: Service, sim: Simulator, ws: aiohttp.ClientWebSocketResponse
) -> list[Any]:
    """Poll until a poll lists every page; what it published. The polls before it must
    read the first page only and publish nothing."""
    deadline = time.monotonic() + 20 * FULL
    while time.monotonic() < deadline:
        sim.requests.reset()
        await poll(service)
        if not first_page_only(sim):
            return await drain(ws)
        await nothing_more(ws, 0)
        await asyncio.sleep(50 * MS)
    pytest.fail("no complete listing")


async def test_a_change_on_page_20_arrives_with_the_next_complete_listing(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    sim.bulk_create(2000, state="COMPLETED")
    service = await make_service(full_listing_interval=FULL)
    started = time.monotonic()
    ws = await connect(http, service)
    oldest = sim.sessions_newest_first()[-1]["id"]  # the last entry of page 20
    sim.update(oldest, title="Renamed weeks later")
    sim.requests.reset()
    await poll(service)
    assert first_page_only(sim)  # one request, not twenty
    await nothing_more(ws)

    [delta] = await until_complete_listing(service, sim, ws)
    assert (delta["sessionId"], delta["after"]["title"]) == (oldest, "Renamed weeks later")
    assert sim.requests["list_next_page"] == 19
    assert time.monotonic() - started >= FULL * 0.5  # not before its time


async def test_a_partial_listing_never_deletes_a_complete_one_does(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    sim.bulk_create(150, state="COMPLETED")
    service = await make_service(full_listing_interval=FULL)
    ws = await connect(http, service)
    listed = sim.sessions_newest_first()
    newest, oldest = listed[0]["id"], listed[-1]["id"]
    sim.delete(newest)  # gone from page 1 (the page now starts one session later)
    sim.delete(oldest)  # gone from page 2, which a partial listing does not read
    sim.requests.reset()
    await poll(service)
    assert first_page_only(sim)
    await nothing_more(ws)
    assert {newest, oldest} <= service.state.sessions.keys()

    deleted = await until_complete_listing(service, sim, ws)
    assert sorted((d["type"], d["sessionId"]) for d in deleted) == sorted(
        [("deleted", newest), ("deleted", oldest)]
    )


async def test_working_sessions_beyond_page_1_are_read_on_their_own_up_to_a_cap(
    http: aiohttp.ClientSession,
    make_service: ServiceFactory,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poller_module, "MAX_HOT_GETS", 1)
    sim.bulk_create(150, state="COMPLETED")
    service = await make_service(full_listing_interval=FULL)
    ws = await connect(http, service, "?activities=1")
    old = [s["id"] for s in sim.sessions_newest_first()[-2:]]  # both on page 2
    sim.send_message(old[0], "Please also update the README")
    sim.send_message(old[1], "And bump the version")  # moved last: read first
    sim.requests.reset()
    await poll(service)
    assert first_page_only(sim)  # they were finished: nothing reads them before the listing
    await nothing_more(ws)

    reopened = await until_complete_listing(service, sim, ws)
    assert sorted(m["type"] for m in reopened) == ["activity", "activity", "updated", "updated"]

    sim.set_state(old[0], "IN_PROGRESS")
    sim.set_state(old[1], "IN_PROGRESS")
    sim.requests.reset()
    await poll(service)
    assert sim.requests["get_session"] == 1  # the cap: the most recently updated one
    assert first_page_only(sim)
    got = await drain(ws)
    assert [(m["type"], m["sessionId"]) for m in got] == [
        ("updated", old[1]),
        ("activity", old[1]),
    ]
    assert got[1]["activity"]["kind"] == "progressUpdated"
    assert service.poller is not None
    assert (service.poller.hot_read, service.poller.hot_deferred) == (1, 1)

    # The other waits for the complete listing; nothing is lost.
    later = await until_complete_listing(service, sim, ws)
    assert [(m["type"], m["sessionId"]) for m in later] == [
        ("updated", old[0]),
        ("activity", old[0]),
    ]


async def test_every_request_to_jules_is_counted_by_kind(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    before = dict(service.requests.totals)  # the baseline's
    sim.requests.reset()
    s = sim.create(state="QUEUED")
    await poll(service)
    sim.set_state(s["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    async with http.post(service.url + f"/api/sessions/{s['id']}:approvePlan", headers=AUTH) as r:
        assert r.status == 200
    async with http.get(service.url + "/api/stats", headers=AUTH) as resp:
        stats = await resp.json()
    ours = {k: v - before[k] for k, v in stats["upstream"]["requestsTotal"].items()}
    theirs = sim.requests.as_dict()
    assert {k: v for k, v in ours.items() if v} == {k: v for k, v in theirs.items() if v}
    assert ours["list_activities"] >= 2 and ours["approve"] == 1
    minute = stats["upstream"]["requestsLastMinute"]
    assert minute["list_first_page"] == ours["list_first_page"] + before["list_first_page"]
    assert stats["polling"]["fullListingIntervalSeconds"] == service.settings.full_listing_interval
    async with http.get(service.url + "/metrics", headers=AUTH) as resp:
        metrics = await resp.text()
    total = stats["upstream"]["requestsTotal"]["list_first_page"]
    assert f'control_room_upstream_requests_total{{kind="list_first_page"}} {total}.0' in metrics
    assert 'control_room_upstream_requests_total{kind="approve"} 1.0' in metrics
