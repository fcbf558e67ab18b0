"""`GET /api/sessions/archived`: Jules' archived sessions, read on demand, page by page."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from control_room import api
from control_room.app import Service
from control_room.client import ControlRoomClient, UpstreamUnavailable
from control_room.jules.simulator import Simulator
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def archived(
    http: aiohttp.ClientSession, service: Service, **query: str
) -> tuple[int, dict[str, Any]]:
    url = service.url + "/api/sessions/archived"
    async with http.get(url, params=query, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def test_archived_sessions_are_listed_mapped_and_the_others_are_not(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    kept = sim.create(repo="acme/web-app", title="Stays")
    gone = sim.create(repo="acme/api", title="Put away", state="COMPLETED")
    sim.archive(gone["id"])
    status, body = await archived(http, service)
    assert status == 200
    assert body["nextPageToken"] is None
    [session] = body["sessions"]
    assert (session["id"], session["title"], session["repository"], session["state"]) == (
        gone["id"],
        "Put away",
        "acme/api",
        "COMPLETED",
    )
    assert session["updatedAt"]
    assert kept["id"] not in {s["id"] for s in body["sessions"]}


async def test_archived_sessions_page_with_the_token_jules_gives(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    ids = set()
    for _ in range(5):
        created = sim.create()
        sim.archive(created["id"])
        ids.add(created["id"])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        query = {"pageSize": "2"} | ({"pageToken": token} if token else {})
        status, body = await archived(http, service, **query)
        assert status == 200
        assert len(body["sessions"]) <= 2
        seen.extend(s["id"] for s in body["sessions"])
        pages += 1
        token = body["nextPageToken"]
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids)  # each once, none missed


async def test_an_unarchived_session_leaves_the_archive_and_returns_to_the_listing(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    created = sim.create()
    sim.archive(created["id"])
    await service.poller.poll_once()
    assert created["id"] not in service.state.sessions
    url = f"{service.url}/api/sessions/{created['id']}:unarchive"
    async with http.post(url, headers=AUTH) as resp:
        assert resp.status in (200, 204)
    _, body = await archived(http, service)
    assert body["sessions"] == []
    await service.poller.poll_once()
    assert created["id"] in service.state.sessions


async def test_a_failing_upstream_is_502_with_what_jules_said(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    sim.faults.fail(status=500, only="list_first_page")
    status, body = await archived(http, service)
    assert status == 502
    assert body["error"] == "upstream_unavailable"
    assert body["message"].startswith("Jules answered: ")


async def test_an_unreachable_upstream_is_502_saying_jules_did_not_answer(
    http: aiohttp.ClientSession, make_service: Any
) -> None:
    service: Service = await make_service(jules_api_base="http://127.0.0.1:9/v1alpha")
    status, body = await archived(http, service)
    assert status == 502
    assert body["error"] == "upstream_unavailable"
    assert body["message"].startswith("Jules did not answer: ")


async def test_the_archive_needs_a_token_and_a_read_only_one_may_read_it(
    http: aiohttp.ClientSession, make_service: Any, sim: Simulator
) -> None:
    created = sim.create()
    sim.archive(created["id"])
    service: Service = await make_service(local_readonly_token="viewer-token-0123456789")
    url = service.url + "/api/sessions/archived"
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, headers={"Authorization": "Bearer wrong-token-0123456789"}) as resp:
        assert resp.status == 401
    viewer = {"Authorization": "Bearer viewer-token-0123456789"}
    async with http.get(url, headers=viewer) as resp:
        assert resp.status == 200
        assert [s["id"] for s in (await resp.json())["sessions"]] == [created["id"]]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": str(api.MAX_ARCHIVED_PER_PAGE + 1)}, "pageSize"),
        ({"pageSize": "<script>"}, "pageSize"),
        ({"pageSize": "+5"}, "pageSize"),
        ({"pageToken": "x" * (api.MAX_PAGE_TOKEN_CHARS + 1)}, "pageToken"),
        ({"pageToken": "<script>\n"}, "pageToken"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter_without_echoing_it(
    http: aiohttp.ClientSession,
    service: Service,
    sim: Simulator,
    query: dict[str, str],
    parameter: str,
) -> None:
    before = sim.requests.as_dict()
    status, body = await archived(http, service, **query)
    assert status == 400
    assert (body["error"], body["parameter"]) == ("bad_request", parameter)
    assert "<script>" not in body["message"] and "xxxx" not in body["message"]
    assert sim.requests.as_dict() == before  # refused before it cost a request


async def test_the_python_client_reads_the_archive_page_by_page(
    service: Service, sim: Simulator
) -> None:
    for _ in range(3):
        sim.archive(sim.create()["id"])
    async with ControlRoomClient(service.url, TOKEN) as client:
        first = await client.archived_sessions(page_size=2)
        assert len(first.sessions) == 2 and first.nextPageToken
        rest = await client.archived_sessions(first.nextPageToken, page_size=2)
        assert len(rest.sessions) == 1 and rest.nextPageToken is None
        sim.faults.fail(status=503, only="list_first_page")
        with pytest.raises(UpstreamUnavailable):
            await client.archived_sessions()
