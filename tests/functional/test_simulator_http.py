"""The simulator over real HTTP: a server on 127.0.0.1:0 and a real aiohttp client."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import msgspec
import pytest

from control_room.jules.simulator import (
    AWAITING_PLAN_APPROVAL,
    AWAITING_USER_FEEDBACK,
    IN_PROGRESS,
    QUEUED,
    Simulator,
    SimulatorServer,
    serve_simulator,
)
from control_room.jules.types import ListSessionsResponse, Session

KEY: Final = "test-key"
# Time unit for waits; raise TEST_TIME_SCALE on a slow machine.
MS: Final = 0.001 * float(os.environ.get("TEST_TIME_SCALE", "1"))


@pytest.fixture
def sim() -> Simulator:
    return Simulator(42)


@pytest.fixture
async def server(sim: Simulator) -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim, KEY) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"X-Goog-Api-Key": KEY}) as session:
        yield session


async def get_json(
    client: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, dict[str, Any]]:
    async with client.get(url, params=params) as resp:
        return resp.status, await resp.json()


async def post_json(
    client: aiohttp.ClientSession, url: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    async with client.post(url, json=body) as resp:
        return resp.status, await resp.json()


class DecodedPage(msgspec.Struct):
    """A listing page with its sessions decoded (the service keeps them raw)."""

    sessions: list[Session] = []
    nextPageToken: str = ""


async def walk(
    client: aiohttp.ClientSession, server: SimulatorServer, page_size: int
) -> list[list[str]]:
    """Every page of the listing, as lists of ids."""
    pages: list[list[str]] = []
    token = ""
    while True:
        params = {"pageSize": str(page_size)} | ({"pageToken": token} if token else {})
        status, body = await get_json(client, f"{server.base_url}/sessions", **params)
        assert status == 200, body
        page = msgspec.convert(body, DecodedPage)
        pages.append([s.session_id for s in page.sessions])
        token = page.nextPageToken
        if not token:
            return pages


def assert_envelope(body: dict[str, Any], code: int, status: str) -> None:
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert body["error"]["message"]


# --- Listing -------------------------------------------------------------------------------------


async def test_paging_returns_every_session_exactly_once(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.bulk_create(250)
    pages = await walk(client, server, 100)
    assert [len(p) for p in pages] == [100, 100, 50]
    seen = [sid for page in pages for sid in page]
    assert seen == [s["id"] for s in sim.sessions_newest_first()]
    assert len(set(seen)) == 250
    assert sim.requests.list_calls == 1
    assert sim.requests.page_calls == 3


async def test_page_size_defaults_to_30_and_is_coerced_to_100(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.bulk_create(150)
    _, default = await get_json(client, f"{server.base_url}/sessions")
    _, big = await get_json(client, f"{server.base_url}/sessions", pageSize="500")
    assert len(default["sessions"]) == 30
    assert len(big["sessions"]) == 100
    assert big["nextPageToken"]


@pytest.mark.parametrize("size", ["-1", "abc", "2.5"])
async def test_bad_page_size_is_invalid_argument(
    server: SimulatorServer, client: aiohttp.ClientSession, size: str
) -> None:
    status, body = await get_json(client, f"{server.base_url}/sessions", pageSize=size)
    assert status == 400
    assert_envelope(body, 400, "INVALID_ARGUMENT")


async def test_bad_page_token_is_invalid_argument(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.bulk_create(5)
    status, body = await get_json(client, f"{server.base_url}/sessions", pageToken="bogus!")
    assert status == 400
    assert_envelope(body, 400, "INVALID_ARGUMENT")


async def test_empty_account_answers_an_empty_object(
    server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    assert await get_json(client, f"{server.base_url}/sessions") == (200, {})


async def test_archived_sessions_are_hidden_from_the_listing_but_readable(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    keep, hide = sim.create()["id"], sim.create()["id"]
    sim.archive(hide)
    _, listing = await get_json(client, f"{server.base_url}/sessions")
    assert [s["id"] for s in listing["sessions"]] == [keep]
    status, one = await get_json(client, f"{server.base_url}/sessions/{hide}")
    assert status == 200
    assert msgspec.convert(one, Session).archived is True


# --- Auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Goog-Api-Key": "wrong"}])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sessions"),
        ("GET", "/sessions/1"),
        ("POST", "/sessions"),
        ("POST", "/sessions/1:approvePlan"),
        ("GET", "/sessions/1/activities"),
        ("GET", "/nowhere"),
    ],
)
async def test_every_call_needs_the_api_key(
    sim: Simulator, server: SimulatorServer, headers: dict[str, str], method: str, path: str
) -> None:
    async with (
        aiohttp.ClientSession(headers=headers) as anonymous,
        anonymous.request(method, server.base_url + path, json={"prompt": "x"}) as resp,
    ):
        assert resp.status == 401
        assert_envelope(await resp.json(), 401, "UNAUTHENTICATED")
    assert sim.requests.total == 1
    assert len(sim) == 0


# --- One session and actions ---------------------------------------------------------------------


async def test_get_one_session_and_404_for_unknown(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create()["id"]
    status, body = await get_json(client, f"{server.base_url}/sessions/{sid}")
    assert status == 200
    assert body == sim.get(sid)
    status, body = await get_json(client, f"{server.base_url}/sessions/999")
    assert status == 404
    assert_envelope(body, 404, "NOT_FOUND")


async def test_create_session(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    request = {
        "prompt": "Add a README",
        "sourceContext": {
            "source": "sources/github/octo/cat",
            "githubRepoContext": {"startingBranch": "dev"},
        },
    }
    status, body = await post_json(client, f"{server.base_url}/sessions", request)
    assert status == 200
    session = msgspec.convert(body, Session)
    assert session.state == QUEUED
    assert session.title == "Add a README"
    assert session.sourceContext is not None
    assert session.sourceContext.source == "sources/github/octo/cat"
    assert body["prompt"] == "Add a README"
    _, listing = await get_json(client, f"{server.base_url}/sessions")
    assert listing["sessions"][0]["id"] == session.id
    assert sim.requests.create_calls == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": 3},
        {"prompt": "x", "sourceContext": {"source": "github/octo/cat"}},
        {"prompt": "x", "title": ["no"]},
        ["prompt"],
    ],
)
async def test_create_refuses_a_bad_body(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession, body: object
) -> None:
    status, answer = await post_json(client, f"{server.base_url}/sessions", body)
    assert status == 400
    assert_envelope(answer, 400, "INVALID_ARGUMENT")
    assert len(sim) == 0


async def test_create_refuses_a_body_that_is_not_json(
    server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{server.base_url}/sessions", data=b"{nope") as resp:
        assert resp.status == 400
        assert_envelope(await resp.json(), 400, "INVALID_ARGUMENT")


async def test_approve_plan(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    assert await post_json(client, f"{server.base_url}/sessions/{sid}:approvePlan") == (200, {})
    assert sim.get(sid)["state"] == IN_PROGRESS
    status, body = await post_json(client, f"{server.base_url}/sessions/{sid}:approvePlan")
    assert status == 400
    assert_envelope(body, 400, "FAILED_PRECONDITION")
    status, body = await post_json(client, f"{server.base_url}/sessions/404:approvePlan")
    assert status == 404
    assert sim.requests.action_calls == 3


async def test_send_message(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=AWAITING_USER_FEEDBACK)["id"]
    url = f"{server.base_url}/sessions/{sid}:sendMessage"
    status, body = await post_json(client, url, {"message": "wrong field"})
    assert status == 400
    assert_envelope(body, 400, "INVALID_ARGUMENT")
    assert sim.get(sid)["state"] == AWAITING_USER_FEEDBACK
    assert await post_json(client, url, {"prompt": "Yes, keep it"}) == (200, {})
    assert sim.get(sid)["state"] == IN_PROGRESS


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sessions/1:approve"),
        ("POST", "/sessions/1"),
        ("GET", "/sessions/1:approvePlan"),
        ("DELETE", "/sessions"),
        ("GET", "/nowhere"),
    ],
)
async def test_unknown_methods_are_not_found(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession, method: str, path: str
) -> None:
    sim.create()
    async with client.request(method, server.base_url + path, json={}) as resp:
        assert resp.status == 404
        assert_envelope(await resp.json(), 404, "NOT_FOUND")


async def test_activities_are_listed_oldest_first_and_paged(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    sim.approve_plan(sid)
    sim.send_message(sid, "hurry")
    url = f"{server.base_url}/sessions/{sid}/activities"
    seen: list[dict[str, Any]] = []
    params = {"pageSize": "2"}
    while True:
        status, body = await get_json(client, url, **params)
        assert status == 200
        seen += body["activities"]
        if "nextPageToken" not in body:
            break
        params = {"pageSize": "2", "pageToken": body["nextPageToken"]}
    assert seen == sim.activities(sid)
    assert len(seen) >= 4
    assert seen[-1]["userMessaged"] == {"userMessage": "hurry"}
    assert all(a["name"].startswith(f"sessions/{sid}/activities/") for a in seen)
    status, body = await get_json(client, f"{server.base_url}/sessions/404/activities")
    assert status == 404


# --- Faults --------------------------------------------------------------------------------------


async def test_fail_answers_the_google_envelope_then_recovers(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.faults.fail(2, status=503)
    url = f"{server.base_url}/sessions"
    for _ in range(2):
        status, body = await get_json(client, url)
        assert status == 503
        assert_envelope(body, 503, "UNAVAILABLE")
    assert await get_json(client, url) == (200, {})
    assert sim.requests.page_calls == 3


@pytest.mark.parametrize(("retry_after", "header"), [(7, "7"), (None, None)])
async def test_rate_limit_is_resource_exhausted_with_retry_after(
    sim: Simulator,
    server: SimulatorServer,
    client: aiohttp.ClientSession,
    retry_after: int | None,
    header: str | None,
) -> None:
    sim.faults.rate_limit(retry_after=retry_after)
    async with client.get(f"{server.base_url}/sessions") as resp:
        assert resp.status == 429
        assert resp.headers.get("Retry-After") == header
        assert_envelope(await resp.json(), 429, "RESOURCE_EXHAUSTED")


async def test_garbage_is_a_200_that_is_not_json(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.bulk_create(3)
    sim.faults.garbage()
    async with client.get(f"{server.base_url}/sessions") as resp:
        assert resp.status == 200
        raw = await resp.read()
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(raw)
    status, body = await get_json(client, f"{server.base_url}/sessions")
    assert status == 200
    assert len(body["sessions"]) == 3


async def test_wrong_shape_is_json_that_is_not_a_listing(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.faults.wrong_shape()
    async with client.get(f"{server.base_url}/sessions") as resp:
        assert resp.status == 200
        raw = await resp.read()
    assert msgspec.json.decode(raw) == {"sessions": "oops"}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=ListSessionsResponse)


async def test_delay_answers_late_but_correctly(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.create()
    sim.faults.delay(100 * MS)
    started = time.monotonic()
    status, body = await get_json(client, f"{server.base_url}/sessions")
    assert time.monotonic() - started >= 100 * MS
    assert status == 200
    assert len(body["sessions"]) == 1


async def test_a_delay_longer_than_the_client_waits_times_it_out(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.faults.delay(2000 * MS)
    with pytest.raises(TimeoutError):
        await client.get(
            f"{server.base_url}/sessions", timeout=aiohttp.ClientTimeout(total=50 * MS)
        )
    assert await get_json(client, f"{server.base_url}/sessions") == (200, {})


async def test_fail_page_fails_only_the_last_page(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.bulk_create(250)
    sim.faults.fail_page(2)
    url = f"{server.base_url}/sessions"
    status, first = await get_json(client, url, pageSize="100")
    assert status == 200
    status, second = await get_json(client, url, pageSize="100", pageToken=first["nextPageToken"])
    assert status == 200
    last_token = second["nextPageToken"]
    status, body = await get_json(client, url, pageSize="100", pageToken=last_token)
    assert status == 500
    assert_envelope(body, 500, "INTERNAL")
    status, body = await get_json(client, url, pageSize="100", pageToken=last_token)
    assert status == 200
    assert len(body["sessions"]) == 50
    assert "nextPageToken" not in body
    # The fault is spent: a whole new walk goes through.
    assert [len(p) for p in await walk(client, server, 100)] == [100, 100, 50]
    assert sim.requests.list_calls == 2
    assert sim.requests.page_calls == 7


async def test_faults_hit_any_route_in_the_order_armed(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create()["id"]
    sim.faults.fail(status=500)
    sim.faults.rate_limit()
    status, _ = await get_json(client, f"{server.base_url}/sessions/{sid}")
    assert status == 500
    status, _ = await post_json(client, f"{server.base_url}/sessions", {"prompt": "x"})
    assert status == 429
    assert len(sim) == 1
    sim.faults.fail(5)
    sim.faults.clear()
    status, _ = await get_json(client, f"{server.base_url}/sessions/{sid}")
    assert status == 200


# --- Running -------------------------------------------------------------------------------------


async def test_server_exposes_its_port_and_base_url(server: SimulatorServer) -> None:
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1alpha"


async def test_server_ticks_the_simulator_in_the_background(
    client: aiohttp.ClientSession,
) -> None:
    sim = Simulator(1)
    async with SimulatorServer(sim, KEY, tick_interval=5 * MS) as server:
        deadline = time.monotonic() + 5000 * MS
        while sim.tick_count < 10:
            assert time.monotonic() < deadline, "the simulator did not tick"
            await asyncio.sleep(5 * MS)
        status, body = await get_json(client, f"{server.base_url}/sessions")
    assert status == 200
    assert body.get("sessions")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_simulator_serves_a_populated_board_until_cancelled(
    client: aiohttp.ClientSession,
) -> None:
    port = free_port()
    task = asyncio.create_task(serve_simulator("127.0.0.1", port, KEY, seed=3, tick_interval=0.5))
    url = f"http://127.0.0.1:{port}/v1alpha/sessions"
    deadline = time.monotonic() + 5000 * MS
    body: dict[str, Any] = {}
    while True:
        try:
            status, body = await get_json(client, url)
            break
        except aiohttp.ClientConnectionError:
            assert time.monotonic() < deadline, "serve_simulator did not start"
            await asyncio.sleep(10 * MS)
    assert status == 200
    assert body["sessions"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
