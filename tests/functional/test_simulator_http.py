"""The simulator over real HTTP: a server on 127.0.0.1:0 and a real aiohttp client."""

from __future__ import annotations

import asyncio
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
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    REQUEST_KINDS,
    Simulator,
    SimulatorServer,
    serve_simulator,
)
from control_room.jules.types import ListSessionsResponse, Session
from tests.conftest import MS

KEY: Final = "test-key"
NOT_FOUND: Final = "Requested entity was not found."


@pytest.fixture
def sim() -> Simulator:
    return Simulator(42, activities_not_found_for=0)


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
    client: aiohttp.ClientSession, server: SimulatorServer, page_size: int, **params: str
) -> list[list[str]]:
    """Every page of the listing, as lists of ids."""
    pages: list[list[str]] = []
    token = ""
    while True:
        query = params | {"pageSize": str(page_size)} | ({"pageToken": token} if token else {})
        status, body = await get_json(client, f"{server.base_url}/sessions", **query)
        assert status == 200, body
        page = msgspec.convert(body, DecodedPage)
        pages.append([s.session_id for s in page.sessions])
        token = page.nextPageToken
        if not token:
            return pages


async def all_activities(
    client: aiohttp.ClientSession, url: str, **params: str
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        status, body = await get_json(client, url, **query)
        assert status == 200, body
        seen += body.get("activities", [])
        if "nextPageToken" not in body:
            return seen
        query = params | {"pageToken": body["nextPageToken"]}


def assert_envelope(body: dict[str, Any], code: int, status: str) -> None:
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert body["error"]["message"]


def violated_field(body: dict[str, Any]) -> str:
    (detail,) = body["error"]["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    (violation,) = detail["fieldViolations"]
    return str(violation["field"])


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
    assert violated_field(body) == "page_size"


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


@pytest.mark.parametrize("archived", ["archived = true", "archived=true", ' archived = "TRUE" '])
async def test_archived_sessions_are_hidden_unless_the_filter_asks_for_them(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession, archived: str
) -> None:
    keep = [s["id"] for s in sim.bulk_create(3)]
    hidden = [s["id"] for s in sim.bulk_create(3)]
    for sid in hidden:
        sim.archive(sid)
    assert await walk(client, server, 2) == [keep[::-1][:2], keep[::-1][2:]]
    assert await walk(client, server, 2, filter=archived) == [hidden[::-1][:2], hidden[::-1][2:]]
    assert await walk(client, server, 10, filter="archived = false") == [keep[::-1]]
    status, one = await get_json(client, f"{server.base_url}/sessions/{hidden[0]}")
    assert status == 200
    assert msgspec.convert(one, Session).archived is True


@pytest.mark.parametrize("bad", ["archived", "archived = maybe", "state = COMPLETED", "x ="])
async def test_a_malformed_sessions_filter_is_invalid_argument(
    server: SimulatorServer, client: aiohttp.ClientSession, bad: str
) -> None:
    status, body = await get_json(client, f"{server.base_url}/sessions", filter=bad)
    assert status == 400
    assert_envelope(body, 400, "INVALID_ARGUMENT")
    assert violated_field(body) == "filter"


# --- Auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Goog-Api-Key": "wrong"}])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sessions"),
        ("GET", "/sessions/1"),
        ("POST", "/sessions"),
        ("DELETE", "/sessions/1"),
        ("POST", "/sessions/1:approvePlan"),
        ("POST", "/sessions/1:archive"),
        ("GET", "/sessions/1/activities"),
        ("GET", "/sessions/1/activities/2"),
        ("GET", "/sources"),
        ("GET", "/sources/github/acme/web-app"),
        ("GET", "/nowhere"),
    ],
)
async def test_every_call_needs_the_api_key_and_gets_googles_misleading_401(
    sim: Simulator, server: SimulatorServer, headers: dict[str, str], method: str, path: str
) -> None:
    async with (
        aiohttp.ClientSession(headers=headers) as anonymous,
        anonymous.request(method, server.base_url + path, json={"prompt": "x"}) as resp,
    ):
        assert resp.status == 401
        body = await resp.json()
    assert_envelope(body, 401, "UNAUTHENTICATED")
    assert body["error"]["message"].startswith("API keys are not supported by this API.")
    (info,) = body["error"]["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "CREDENTIALS_MISSING"
    assert sim.requests.total() == 1
    assert len(sim) == 0


async def test_stats_need_the_key_too(server: SimulatorServer) -> None:
    async with aiohttp.ClientSession() as anonymous, anonymous.get(server.stats_url) as resp:
        assert resp.status == 401


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
    assert body["error"]["message"] == NOT_FOUND


async def test_delete_removes_the_session_for_good(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=COMPLETED)["id"]
    url = f"{server.base_url}/sessions/{sid}"
    async with client.delete(url) as resp:
        assert (resp.status, await resp.json()) == (200, {})
    assert len(sim) == 0
    assert (await get_json(client, url))[0] == 404
    async with client.delete(url) as resp:
        assert resp.status == 404
    assert sim.requests["delete"] == 2


async def test_create_session_on_a_connected_source(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    request = {
        "prompt": "Add a README",
        "sourceContext": {
            "source": "sources/github/acme/web-app",
            "githubRepoContext": {"startingBranch": "develop"},
        },
    }
    status, body = await post_json(client, f"{server.base_url}/sessions", request)
    assert status == 200
    session = msgspec.convert(body, Session)
    assert session.state == QUEUED
    assert session.title == "Add a README"
    assert session.sourceContext is not None
    assert session.sourceContext.source == "sources/github/acme/web-app"
    assert body["prompt"] == "Add a README"
    assert "automationMode" not in body
    _, listing = await get_json(client, f"{server.base_url}/sessions")
    assert listing["sessions"][0]["id"] == session.id
    assert sim.requests.create_calls == 1
    # Without AUTO_CREATE_PR there is no pull request, the change set is the output.
    (output,) = sim.set_state(session.id, COMPLETED)["outputs"]
    assert output["changeSet"]["source"] == "sources/github/acme/web-app"
    approved = next(a for a in sim.activities(session.id) if "planApproved" in a)
    assert approved["originator"] == "system"  # approval is not required by default


async def test_create_with_auto_create_pr_opens_a_pull_request_on_completion(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    request = {
        "prompt": "Fix it",
        "title": "The fix",
        "automationMode": "AUTO_CREATE_PR",
        "requirePlanApproval": True,
        "sourceContext": {"source": "sources/github/globex/infra"},
    }
    status, body = await post_json(client, f"{server.base_url}/sessions", request)
    assert status == 200
    assert body["title"] == "The fix"
    assert body["sourceContext"]["githubRepoContext"]["startingBranch"] == "main"
    done = sim.set_state(body["id"], COMPLETED)
    (output,) = done["outputs"]
    assert output["pullRequest"]["url"].startswith("https://github.com/globex/infra/pull/")
    approved = next(a for a in sim.activities(body["id"]) if "planApproved" in a)
    assert approved["originator"] == "user"  # it asked for approval, the user gave it


async def test_create_without_a_source_makes_a_repoless_session(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    status, body = await post_json(client, f"{server.base_url}/sessions", {"prompt": "Explain"})
    assert status == 200
    assert "sourceContext" not in body


async def test_create_on_a_source_that_is_not_connected_is_not_found(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    request = {"prompt": "x", "sourceContext": {"source": "sources/github/no/such"}}
    status, body = await post_json(client, f"{server.base_url}/sessions", request)
    assert status == 404
    assert_envelope(body, 404, "NOT_FOUND")
    assert len(sim) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "session.prompt"),
        ({"prompt": ""}, "session.prompt"),
        ({"prompt": 3}, "session.prompt"),
        ({"prompt": "x", "sourceContext": {"source": "github/octo/cat"}}, "source"),
        ({"prompt": "x", "title": ["no"]}, "session.title"),
        ({"prompt": "x", "requirePlanApproval": "yes"}, "session.require_plan_approval"),
        ({"prompt": "x", "automationMode": "MANUAL"}, "session.automation_mode"),
        ({"prompt": "x", "repo": "acme/web-app"}, "session.repo"),
        ({"prompt": "x", "sourceContext": {"repo": "a/b"}}, "session.source_context.repo"),
        (["prompt"], None),
    ],
)
async def test_create_refuses_a_bad_body(
    sim: Simulator,
    server: SimulatorServer,
    client: aiohttp.ClientSession,
    body: object,
    field: str | None,
) -> None:
    status, answer = await post_json(client, f"{server.base_url}/sessions", body)
    assert status == 400
    assert_envelope(answer, 400, "INVALID_ARGUMENT")
    if field is not None:
        assert violated_field(answer).endswith(field)
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
    assert sim.requests["approve"] == 3


async def test_send_message(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=AWAITING_USER_FEEDBACK)["id"]
    url = f"{server.base_url}/sessions/{sid}:sendMessage"
    status, body = await post_json(client, url, {"message": "wrong field"})
    assert status == 400
    assert_envelope(body, 400, "INVALID_ARGUMENT")
    assert 'Unknown name "message"' in body["error"]["message"]
    status, body = await post_json(client, url, {"prompt": "  "})
    assert status == 400
    assert sim.get(sid)["state"] == AWAITING_USER_FEEDBACK
    assert await post_json(client, url, {"prompt": "Yes, keep it"}) == (200, {})
    assert sim.get(sid)["state"] == IN_PROGRESS
    assert sim.activities(sid)[-1]["userMessaged"] == {"userMessage": "Yes, keep it"}


async def test_a_message_sets_a_completed_session_moving_but_a_failed_one_refuses_it(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    done = sim.create(state=COMPLETED)["id"]
    body = {"prompt": "One more thing"}
    assert await post_json(client, f"{server.base_url}/sessions/{done}:sendMessage", body) == (
        200,
        {},
    )
    assert sim.get(done)["state"] == IN_PROGRESS
    failed = sim.create(state=FAILED)["id"]
    status, answer = await post_json(
        client, f"{server.base_url}/sessions/{failed}:sendMessage", body
    )
    assert status == 400
    assert_envelope(answer, 400, "FAILED_PRECONDITION")


async def test_archive_and_unarchive(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=COMPLETED)["id"]
    url = f"{server.base_url}/sessions/{sid}"
    assert await post_json(client, f"{url}:archive") == (200, {})
    assert await post_json(client, f"{url}:archive") == (200, {})  # idempotent
    assert await walk(client, server, 10) == [[]]
    assert await walk(client, server, 10, filter="archived = true") == [[sid]]
    assert await post_json(client, f"{url}:unarchive", {}) == (200, {})
    assert await walk(client, server, 10) == [[sid]]
    assert (await post_json(client, f"{url}:archive", {"force": True}))[0] == 400
    assert (await post_json(client, f"{server.base_url}/sessions/404:archive"))[0] == 404
    assert (sim.requests["archive"], sim.requests["unarchive"]) == (4, 1)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sessions/1:approve"),
        ("POST", "/sessions/1"),
        ("GET", "/sessions/1:approvePlan"),
        ("DELETE", "/sessions/1:archive"),
        ("DELETE", "/sessions"),
        ("PUT", "/sessions/1"),
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
    assert sim.requests["unknown"] == 1


# --- Activities ----------------------------------------------------------------------------------


async def test_activities_are_listed_oldest_first_and_paged(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    sim.approve_plan(sid)
    sim.send_message(sid, "hurry")
    url = f"{server.base_url}/sessions/{sid}/activities"
    seen = await all_activities(client, url, pageSize="2")
    assert seen == sim.activities(sid)
    assert [
        next(k for k in ("planGenerated", "planApproved", "userMessaged") if k in a) for a in seen
    ] == [
        "planGenerated",
        "planApproved",
        "userMessaged",
    ]
    assert seen[-1]["userMessaged"] == {"userMessage": "hurry"}
    assert (await get_json(client, f"{server.base_url}/sessions/404/activities"))[0] == 404


async def test_activities_page_size_defaults_to_50_and_is_coerced_to_100(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=IN_PROGRESS)["id"]
    for n in range(120):
        sim.send_message(sid, f"note {n}")
    url = f"{server.base_url}/sessions/{sid}/activities"
    _, default = await get_json(client, url)
    _, big = await get_json(client, url, pageSize="1000")
    assert len(default["activities"]) == 50
    assert len(big["activities"]) == 100
    assert len(await all_activities(client, url, pageSize="1000")) == len(sim.activities(sid))


async def test_the_create_time_filter_returns_only_newer_activities(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    url = f"{server.base_url}/sessions/{sid}/activities"
    first = await all_activities(client, url)
    last_seen = first[-1]["createTime"]
    after = {"filter": f'create_time > "{last_seen}"'}
    assert await all_activities(client, url, **after) == []
    sim.approve_plan(sid)
    sim.send_message(sid, "go")
    newer = await all_activities(client, url, pageSize="1", **after)
    assert newer == sim.activities(sid)[len(first) :]
    assert len(newer) == 2
    # The session's updateTime is what says there is something new to fetch.
    assert sim.get(sid)["updateTime"] == newer[-1]["createTime"]


@pytest.mark.parametrize("bad", ['create_time > "yesterday"', "create_time", "state = x"])
async def test_a_malformed_activities_filter_is_invalid_argument(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession, bad: str
) -> None:
    sid = sim.create()["id"]
    url = f"{server.base_url}/sessions/{sid}/activities"
    status, body = await get_json(client, url, filter=bad)
    assert status == 400
    assert_envelope(body, 400, "INVALID_ARGUMENT")


async def test_one_activity_by_id(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create(state=COMPLETED)["id"]
    last = sim.activities(sid)[-1]
    url = f"{server.base_url}/sessions/{sid}/activities"
    assert await get_json(client, f"{url}/{last['id']}") == (200, last)
    assert last["sessionCompleted"] == {}
    assert last["artifacts"][0]["changeSet"]["gitPatch"]["unidiffPatch"]
    status, body = await get_json(client, f"{url}/{'0' * 32}")
    assert (status, body["error"]["message"]) == (404, NOT_FOUND)


class ManualClock:
    """A clock the test moves by hand: the 404 window is then exact, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_activities_of_a_new_session_answer_404_for_a_moment(
    client: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    sim = Simulator(1, clock=clock, activities_not_found_for=3.0)
    async with SimulatorServer(sim, KEY) as server:
        request = {"prompt": "x", "requirePlanApproval": True}
        status, session = await post_json(client, f"{server.base_url}/sessions", request)
        assert status == 200
        sim.set_state(session["id"], AWAITING_PLAN_APPROVAL)  # it has a plan to show
        url = f"{server.base_url}/sessions/{session['id']}/activities"
        (plan,) = sim.activities(session["id"])
        for path in (url, f"{url}/{plan['id']}"):
            status, body = await get_json(client, path)
            assert (status, body["error"]["message"]) == (404, NOT_FOUND)
        clock.now += 2.9
        assert (await get_json(client, url))[0] == 404
        clock.now += 0.1
        assert await get_json(client, url) == (200, {"activities": [plan]})
        assert await get_json(client, f"{url}/{plan['id']}") == (200, plan)


# --- Sources -------------------------------------------------------------------------------------


async def test_sources_are_listed_paged_and_filtered_by_name(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    url = f"{server.base_url}/sources"
    names: list[str] = []
    params = {"pageSize": "4"}
    while True:
        status, body = await get_json(client, url, **params)
        assert status == 200
        names += [s["name"] for s in body["sources"]]
        if "nextPageToken" not in body:
            break
        params = {"pageSize": "4", "pageToken": body["nextPageToken"]}
    assert names == [s["name"] for s in sim.sources()]
    assert len(names) > 4
    wanted = 'name = "sources/github/acme/mobile" OR name = "sources/github/globex/infra"'
    _, body = await get_json(client, url, filter=wanted)
    assert [s["name"] for s in body["sources"]] == [
        "sources/github/acme/mobile",
        "sources/github/globex/infra",
    ]
    assert body["sources"][0]["githubRepo"]["isPrivate"] is True
    status, body = await get_json(client, url, filter="name ~ x")
    assert status == 400
    assert sim.requests["list_sources"] == len(names) // 4 + 3


async def test_one_source_by_name(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    status, body = await get_json(client, f"{server.base_url}/sources/github/acme/web-app")
    assert status == 200
    assert body == sim.source("sources/github/acme/web-app")
    assert body["githubRepo"]["defaultBranch"] == {"displayName": "main"}
    status, body = await get_json(client, f"{server.base_url}/sources/github/no/such")
    assert (status, body["error"]["message"]) == (404, NOT_FOUND)


# --- Accounting ----------------------------------------------------------------------------------


async def test_requests_are_counted_by_kind_and_served_as_stats(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sim.bulk_create(40)
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    base = server.base_url
    await walk(client, server, 30)
    await get_json(client, f"{base}/sessions/{sid}")
    await get_json(client, f"{base}/sessions/{sid}/activities")
    aid = sim.activities(sid)[0]["id"]
    await get_json(client, f"{base}/sessions/{sid}/activities/{aid}")
    await post_json(client, f"{base}/sessions", {"prompt": "x"})
    await post_json(client, f"{base}/sessions/{sid}:approvePlan")
    await post_json(client, f"{base}/sessions/{sid}:sendMessage", {"prompt": "y"})
    await post_json(client, f"{base}/sessions/{sid}:archive")
    await post_json(client, f"{base}/sessions/{sid}:unarchive")
    await get_json(client, f"{base}/sources")
    await get_json(client, f"{base}/sources/github/acme/mobile")
    async with client.delete(f"{base}/sessions/{sid}"):
        pass
    await get_json(client, f"{base}/what")
    expected = dict.fromkeys(REQUEST_KINDS, 1) | {"list_next_page": 1}
    assert sim.requests.as_dict() == expected
    status, stats = await get_json(client, server.stats_url)
    assert status == 200
    assert stats["requests"] == expected  # reading the stats is not a request to count
    assert stats["requestsTotal"] == len(REQUEST_KINDS)
    assert stats["sessions"] == len(sim) == 41
    assert sum(stats["states"].values()) == 41


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


async def test_a_fault_for_activities_leaves_the_listing_alone(
    sim: Simulator, server: SimulatorServer, client: aiohttp.ClientSession
) -> None:
    sid = sim.create()["id"]
    sim.faults.fail(status=503, only="list_activities")
    assert (await get_json(client, f"{server.base_url}/sessions"))[0] == 200
    url = f"{server.base_url}/sessions/{sid}/activities"
    assert (await get_json(client, url))[0] == 503
    assert (await get_json(client, url))[0] == 200


# --- Running -------------------------------------------------------------------------------------


async def test_server_exposes_its_port_and_urls(server: SimulatorServer) -> None:
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1alpha"
    assert server.stats_url == f"http://127.0.0.1:{server.port}/_sim/stats"


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


async def serving(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5000 * MS
    while True:
        try:
            status, body = await get_json(client, url)
        except aiohttp.ClientConnectionError:
            assert time.monotonic() < deadline, "serve_simulator did not start"
            await asyncio.sleep(10 * MS)
            continue
        assert status == 200
        return body


async def test_serve_simulator_serves_a_populated_board_until_cancelled(
    client: aiohttp.ClientSession,
) -> None:
    port = free_port()
    task = asyncio.create_task(serve_simulator("127.0.0.1", port, KEY, seed=3, tick_interval=0.5))
    body = await serving(client, f"http://127.0.0.1:{port}/v1alpha/sessions")
    assert body["sessions"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_serve_simulator_serves_a_large_account(client: aiohttp.ClientSession) -> None:
    port = free_port()
    task = asyncio.create_task(
        serve_simulator(
            "127.0.0.1", port, KEY, seed=3, tick_interval=None, large_account=120, active=4
        )
    )
    body = await serving(client, f"http://127.0.0.1:{port}/v1alpha/sessions")
    assert len(body["sessions"]) == 30
    assert body["nextPageToken"]
    _, stats = await get_json(client, f"http://127.0.0.1:{port}/_sim/stats")
    assert stats["sessions"] == 120
    assert stats["inFlight"] == 4
    assert stats["states"]["COMPLETED"] > 100
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
