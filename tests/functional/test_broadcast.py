"""Deltas from upstream changes to every client: kinds, order, seq, and REST consistency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import msgspec

from control_room.app import Service
from control_room.jules.activities import ActivityListing
from control_room.jules.client import FirstPage, JulesClient
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.jules.types import RawSession, Session, session_decoder
from tests.conftest import (
    API_KEY,
    TOKEN,
    ServiceFactory,
    connect,
    nothing_more,
    receive_json,
    receive_n,
    settings,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def rest_sessions(http: aiohttp.ClientSession, service: Service) -> dict[str, Any]:
    async with http.get(service.url + "/api/sessions", headers=AUTH) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


def upstream_ids(sim: Simulator) -> set[str]:
    return {s["id"] for s in sim.sessions_newest_first()}


async def test_created_updated_deleted_reach_every_client(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    clients = [await connect(http, service) for _ in range(3)]
    created = sim.create(repo="acme/api", title="Add retries")
    await service.poller.poll_once()
    sim.set_state(created["id"], "PLANNING")
    await service.poller.poll_once()
    sim.delete(created["id"])
    await service.poller.poll_once()
    received = [await receive_n(ws, 3) for ws in clients]
    assert all(r == received[0] for r in received)  # the very same deltas, byte for byte
    first, second, third = received[0]
    assert (first["type"], first["after"]["title"], first["after"]["repository"]) == (
        "created",
        "Add retries",
        "acme/api",
    )
    assert second["type"] == "updated"
    assert (second["before"]["state"], second["after"]["state"]) == ("QUEUED", "PLANNING")
    assert third["type"] == "deleted" and third["before"]["state"] == "PLANNING"
    assert [d["seq"] for d in received[0]] == [1, 2, 3]
    for ws in clients:
        await nothing_more(ws)
        await ws.close()


async def test_first_poll_is_a_baseline_not_a_flood(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    sim.bulk_create(20)
    service = await make_service()
    ws = await connect(http, service)
    assert service.poller is not None
    await service.poller.poll_once()
    await nothing_more(ws)
    body = await rest_sessions(http, service)
    assert len(body["sessions"]) == 20 and body["seq"] == 0


async def test_no_change_means_no_delta(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    sim.create()
    await service.poller.poll_once()
    ws = await connect(http, service)
    for _ in range(3):
        await service.poller.poll_once()
    await nothing_more(ws)


async def test_change_on_the_last_of_three_pages_is_one_update_and_no_deletion(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    sessions = sim.bulk_create(250)
    service = await make_service()
    assert service.poller is not None
    await service.poller.poll_once()
    ws = await connect(http, service)
    oldest = min(sessions, key=lambda s: s["createTime"])  # newest first: on the last page
    sim.update(oldest["id"], title="Changed on page three")
    sim.requests.reset()
    await service.poller.poll_once()
    assert sim.requests.page_calls == 3
    delta = await receive_json(ws)
    assert (delta["type"], delta["sessionId"]) == ("updated", oldest["id"])
    assert delta["after"]["title"] == "Changed on page three"
    await nothing_more(ws)
    assert len((await rest_sessions(http, service))["sessions"]) == 250


async def test_seq_strictly_increases_across_many_polls(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    before = service.broker.position.seq
    for _ in range(15):
        sim.tick()
        await service.poller.poll_once()
    published = service.broker.position.seq - before
    assert published > 10
    seqs = [d["seq"] for d in await receive_n(ws, published)]
    assert seqs == list(range(before + 1, before + published + 1))
    await nothing_more(ws)


async def test_rest_snapshot_plus_later_deltas_reproduce_the_upstream(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    for _ in range(5):
        sim.tick()
    await service.poller.poll_once()
    ws = await connect(http, service)
    snapshot = await rest_sessions(http, service)
    state = {s["id"]: s for s in snapshot["sessions"]}
    seq = snapshot["seq"]
    for _ in range(20):
        sim.tick()
        await service.poller.poll_once()
    published = service.broker.position.seq - seq
    for delta in await receive_n(ws, published):
        assert delta["seq"] > seq
        if delta["type"] == "deleted":
            del state[delta["sessionId"]]
        else:
            state[delta["sessionId"]] = delta["after"]
    assert set(state) == upstream_ids(sim)
    final = await rest_sessions(http, service)
    assert state == {s["id"]: s for s in final["sessions"]}
    for s in sim.sessions_newest_first():
        assert state[s["id"]]["state"] == s["state"]
        assert state[s["id"]]["updatedAt"] == s["updateTime"]


class PageShift:
    """A real client whose listings can miss a session, as when a page boundary shifts
    between two page requests (the simulator's cursors never do that, real APIs might)."""

    def __init__(self, client: JulesClient) -> None:
        self.client = client
        self.hide: set[str] = set()

    async def list_pages(
        self, page_budget: float | None = None
    ) -> AsyncGenerator[list[RawSession], None]:
        async for page in self.client.list_pages(page_budget):
            yield [raw for raw in page if session_decoder.decode(raw).id not in self.hide]

    async def list_first_page(self, page_budget: float | None = None) -> FirstPage:
        page = await self.client.list_first_page(page_budget)
        kept = [raw for raw in page.sessions if session_decoder.decode(raw).id not in self.hide]
        return FirstPage(kept, page.more)

    async def get_session(self, session_id: str, deadline: float | None = None) -> Session | None:
        return await self.client.get_session(session_id)

    async def list_activities(self, session_id: str, after: str | None) -> ActivityListing | None:
        return await self.client.list_activities(session_id, after)

    async def get_activity(self, session_id: str, activity_id: str) -> msgspec.Raw | None:
        return await self.client.get_activity(session_id, activity_id)


async def test_a_session_missing_from_one_listing_is_checked_before_it_is_deleted(
    http: aiohttp.ClientSession, upstream: SimulatorServer, sim: Simulator
) -> None:
    kept = sim.create(title="still here")
    gone = sim.create(title="really deleted")
    shifting = PageShift(JulesClient(http, upstream.base_url, API_KEY))
    async with Service(settings(jules_api_base=upstream.base_url), upstream=shifting) as service:
        assert service.poller is not None
        await service.poller.poll_once()
        ws = await connect(http, service)
        shifting.hide = {kept["id"]}
        sim.delete(gone["id"])
        await service.poller.poll_once()
        delta = await receive_json(ws)
        assert (delta["type"], delta["sessionId"]) == ("deleted", gone["id"])
        await nothing_more(ws)
        assert kept["id"] in service.poller.sessions
        sim.archive(kept["id"])  # archived sessions are hidden: that deletion is real
        shifting.hide = set()
        await service.poller.poll_once()
        delta = await receive_json(ws)
        assert (delta["type"], delta["sessionId"]) == ("deleted", kept["id"])
        await ws.close()


async def test_slow_upstream_does_not_delay_clients_or_block_the_loop(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    sim.faults.delay(0.2, n=1)
    poll = asyncio.create_task(service.poller.poll_once())
    # While the poll waits on the upstream, the service still answers.
    async with http.get(service.url + "/healthz") as resp:
        assert resp.status == 200
    await poll
    await nothing_more(ws)
