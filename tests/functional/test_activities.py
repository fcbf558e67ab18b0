"""Activities, pushed: read from the simulated Jules over HTTP, announced once, resumable,
served whole over REST; and the stall flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator, SimulatorServer
from tests.conftest import (
    MS,
    TOKEN,
    ServiceFactory,
    connect,
    nothing_more,
    receive_json,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def sim() -> Simulator:
    """A simulator whose activities answer at once (the transient 404 has its own test)."""
    return Simulator(seed=1, activities_not_found_for=0)


async def poll(service: Service) -> None:
    assert service.poller is not None
    await service.poller.poll_once()


async def messages_until_quiet(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    """Every message until none arrives for a moment."""
    got = []
    while True:
        try:
            got.append(await receive_json(ws, 100 * MS))
        except TimeoutError:
            return got


async def get(http: aiohttp.ClientSession, service: Service, path: str, status: int = 200) -> Any:
    async with http.get(service.url + path, headers=AUTH) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


def kinds(messages: list[Any]) -> list[tuple[str, str]]:
    return [
        (m["type"], m["activity"]["kind"] if m["type"] == "activity" else m["sessionId"])
        for m in messages
    ]


async def test_activities_reach_subscribers_after_the_delta_and_never_the_default_stream(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    s = sim.create(state="QUEUED")
    await poll(service)
    plain = await connect(http, service)
    subscribed = await connect(http, service, "?activities=1")
    sim.set_state(s["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)

    delta, activity = await receive_json(subscribed), await receive_json(subscribed)
    assert (delta["type"], delta["after"]["state"]) == ("updated", "AWAITING_PLAN_APPROVAL")
    assert set(activity) == {"type", "sessionId", "activity", "timestamp", "seq"}
    assert (activity["type"], activity["sessionId"], activity["seq"]) == ("activity", s["id"], 1)
    generated = sim.activities(s["id"])[-1]
    assert activity["activity"]["id"] == generated["id"]
    assert activity["activity"]["kind"] == "planGenerated"
    steps = generated["planGenerated"]["plan"]["steps"]
    assert [st["title"] for st in activity["activity"]["plan"]["steps"]] == [
        st["title"] for st in steps
    ]
    assert (await receive_json(plain))["type"] == "updated"
    await nothing_more(plain)
    await nothing_more(subscribed)
    assert service.broker.position.activities_seq == 1


async def test_the_baseline_reads_timelines_but_announces_nothing_old(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    working = sim.create(state="IN_PROGRESS")
    done = sim.create(state="COMPLETED")
    service = await make_service()
    ws = await connect(http, service, "?activities=1")
    await poll(service)
    await nothing_more(ws)
    assert service.broker.position.activities_seq == 0
    # The working session's timeline was read whole at the baseline, and is served from memory.
    timeline = service.state.peek_timeline(working["id"])
    assert timeline is not None and timeline.complete
    assert [a.id for a in timeline.activities] == [a["id"] for a in sim.activities(working["id"])]
    # A finished one costs nothing until it moves.
    assert service.state.peek_timeline(done["id"]) is None
    assert sim.requests["list_activities"] == 1


async def test_a_finished_session_that_gets_a_message_announces_only_what_is_new(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    done = sim.create(state="COMPLETED")
    old = len(sim.activities(done["id"]))
    service = await make_service()
    ws = await connect(http, service, "?activities=1")
    sim.send_message(done["id"], "One more thing: add a changelog entry")
    await poll(service)
    got = await messages_until_quiet(ws)
    assert kinds(got) == [("updated", done["id"]), ("activity", "userMessaged")]
    assert got[0]["before"]["state"] == "COMPLETED" and got[0]["after"]["state"] == "IN_PROGRESS"
    assert got[1]["activity"]["message"] == "One more thing: add a changelog entry"
    assert len(sim.activities(done["id"])) == old + 1
    assert sim.requests["list_activities"] == 1  # read from its last update on, once


async def test_a_new_session_announces_every_activity_after_its_creation(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    ws = await connect(http, service, "?activities=1")
    s = sim.create(state="IN_PROGRESS", require_plan_approval=True)
    await poll(service)
    got = await messages_until_quiet(ws)
    expected = [a["id"] for a in sim.activities(s["id"])]
    assert got[0]["type"] == "created"
    assert [m["activity"]["id"] for m in got[1:]] == expected
    assert [m["seq"] for m in got[1:]] == list(range(1, len(expected) + 1))
    assert len(expected) >= 3  # planGenerated, planApproved, progressUpdated


async def test_a_command_reads_the_new_activities_at_once(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    s = sim.create(state="AWAITING_PLAN_APPROVAL")
    await poll(service)
    ws = await connect(http, service, "?activities=1")
    async with http.post(service.url + f"/api/sessions/{s['id']}:approvePlan", headers=AUTH) as r:
        assert r.status == 200, await r.text()
    got = await messages_until_quiet(ws)  # no poll in between
    assert kinds(got) == [("updated", s["id"]), ("activity", "planApproved")]
    assert got[1]["activity"]["originator"] == "user"


async def test_a_failed_activity_read_publishes_the_delta_and_is_read_again_next_poll(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    s = sim.create(state="QUEUED")
    await poll(service)
    ws = await connect(http, service, "?activities=1")
    sim.faults.fail(3, 503, only="list_activities")  # every try of one read
    sim.set_state(s["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    assert kinds(await messages_until_quiet(ws)) == [("updated", s["id"])]
    assert service.poller is not None and service.poller.activity_reads_due == 1
    await poll(service)  # nothing changed upstream: the due read alone
    assert kinds(await messages_until_quiet(ws)) == [("activity", "planGenerated")]
    await poll(service)
    await nothing_more(ws)  # read once, announced once
    metrics = await metrics_text(http, service)
    assert 'control_room_activity_reads_total{outcome="failed"} 1.0' in metrics


async def metrics_text(http: aiohttp.ClientSession, service: Service) -> str:
    async with http.get(service.url + "/metrics", headers=AUTH) as resp:
        return await resp.text()


class Clock:
    """A hand-moved clock for the simulator."""

    def __init__(self) -> None:
        self.now = 1_767_268_800.0

    def __call__(self) -> float:
        return self.now


async def test_the_transient_404_after_a_create_is_read_again_not_an_error(
    http: aiohttp.ClientSession, make_service: ServiceFactory
) -> None:
    clock = Clock()
    sim = Simulator(seed=2, clock=clock, activities_not_found_for=0.5)
    async with SimulatorServer(sim, "sim-key") as upstream:
        service = await make_service(jules_api_base=upstream.base_url)
        ws = await connect(http, service, "?activities=1")
        s = sim.create(state="AWAITING_PLAN_APPROVAL")
        await poll(service)
        assert kinds(await messages_until_quiet(ws)) == [("created", s["id"])]
        assert service.state.health.reasons() == []  # not a fault
        url = f"{service.url}/api/sessions/{s['id']}/activities"
        async with http.get(url, headers=AUTH) as resp:
            page = await resp.json()
            assert (resp.status, resp.headers["Retry-After"]) == (200, "1")
        assert (page["activities"], page["pending"]) == ([], True)  # empty for now, not for good
        clock.now += 1  # the window is over
        await poll(service)
        got = await messages_until_quiet(ws)
        assert [m["activity"]["id"] for m in got] == [a["id"] for a in sim.activities(s["id"])]
        metrics = await metrics_text(http, service)
        assert 'control_room_activity_reads_total{outcome="not_found_yet"} 1.0' in metrics
        await service.stop()


async def test_resume_of_the_activities_channel_is_exact(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    a, b = sim.create(state="QUEUED"), sim.create(state="QUEUED")
    await poll(service)
    ws = await connect(http, service, "?activities=1")
    sim.set_state(a["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    seen = await messages_until_quiet(ws)
    last_seq = max(m["seq"] for m in seen if m["type"] != "activity")
    last_activity = max(m["seq"] for m in seen if m["type"] == "activity")
    epoch = service.broker.position.epoch
    await ws.close()

    sim.set_state(b["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    sim.approve_plan(a["id"])
    await poll(service)
    query = f"?activities=1&since={last_seq}&activitiesSince={last_activity}&epoch={epoch}"
    resumed = await connect(http, service, query)
    missed = await messages_until_quiet(resumed)
    # Each channel's history is replayed in order (sessions first, then activities).
    assert kinds(missed) == [
        ("updated", b["id"]),
        ("updated", a["id"]),
        ("activity", "planGenerated"),
        ("activity", "planApproved"),
    ]
    assert [m["seq"] for m in missed] == [
        last_seq + 1,
        last_seq + 2,
        last_activity + 1,
        last_activity + 2,
    ]
    assert [m["sessionId"] for m in missed[2:]] == [b["id"], a["id"]]
    sim.set_state(b["id"], "IN_PROGRESS")
    await poll(service)
    live = await messages_until_quiet(resumed)
    assert live[0]["type"] == "updated" and live[1]["seq"] == last_activity + 3


async def test_a_restart_with_a_store_announces_only_what_happened_while_down(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator, tmp_path: Path
) -> None:
    s = sim.create(state="AWAITING_PLAN_APPROVAL")
    first = await make_service(persist=True, data_dir=tmp_path)
    sim.approve_plan(s["id"])
    await poll(first)
    position = first.broker.position
    assert position.activities_seq == 1  # planApproved
    await first.stop()

    sim.set_state(s["id"], "IN_PROGRESS")  # one progressUpdated while the service is down
    second = await make_service(persist=True, data_dir=tmp_path)  # its first poll is done
    assert second.broker.position.activities_seq == 2
    query = (
        f"?activities=1&since={position.seq}&activitiesSince={position.activities_seq}"
        f"&epoch={position.epoch}"
    )
    resumed = await connect(http, second, query)
    missed = await messages_until_quiet(resumed)
    assert kinds(missed) == [("updated", s["id"]), ("activity", "progressUpdated")]
    assert missed[1]["activity"]["id"] == sim.activities(s["id"])[-1]["id"]
    await poll(second)
    await nothing_more(resumed)


async def test_rest_serves_a_timeline_in_pages_and_an_activity_with_its_whole_patch(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    s = sim.create(state="COMPLETED")  # finished: its timeline is not held yet
    await poll(service)
    expected = sim.activities(s["id"])
    ids: list[str] = []
    token = ""
    while True:
        page = await get(
            http, service, f"/api/sessions/{s['id']}/activities?pageSize=2&pageToken={token}"
        )
        assert page["sessionId"] == s["id"]
        assert page["activitiesSeq"] == service.broker.position.activities_seq
        ids += [a["id"] for a in page["activities"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert ids == [a["id"] for a in expected]
    assert sim.requests["list_activities"] == 1  # read once, whole, then kept
    again = await get(http, service, f"/api/sessions/{s['id']}/activities")
    assert [a["id"] for a in again["activities"]] == ids
    assert sim.requests["list_activities"] == 1

    done = next(a for a in expected if "sessionCompleted" in a)
    detail = await get(http, service, f"/api/sessions/{s['id']}/activities/{done['id']}")
    patch = done["artifacts"][0]["changeSet"]["gitPatch"]
    assert detail["activity"]["kind"] == "sessionCompleted"
    assert detail["patches"][0]["unidiffPatch"] == patch["unidiffPatch"]
    summary = detail["activity"]["artifacts"][0]["changeSet"]
    assert summary["files"] and "unidiffPatch" not in summary  # pushed: summaries only

    await get(http, service, "/api/sessions/404/activities", 404)
    await get(http, service, f"/api/sessions/{s['id']}/activities/{'f' * 32}", 404)
    await get(http, service, f"/api/sessions/{s['id']}/activities?pageSize=0", 400)
    await get(http, service, f"/api/sessions/{s['id']}/activities?pageToken=x", 400)
    async with http.get(service.url + f"/api/sessions/{s['id']}/activities") as resp:
        assert resp.status == 401


async def test_a_quiet_working_session_is_flagged_stalled_then_cleared_when_it_moves(
    http: aiohttp.ClientSession, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One hand-moved clock for Jules and for the poller: the flag depends on nothing else.
    clock = Clock()
    sim = Simulator(seed=4, clock=clock, activities_not_found_for=0)
    async with SimulatorServer(sim, "sim-key") as upstream:
        service = await make_service(jules_api_base=upstream.base_url, stall_after=300.0)
        assert service.poller is not None
        monkeypatch.setattr(service.poller, "_clock", clock)
        ws = await connect(http, service, "?activities=1")
        s = sim.create(state="IN_PROGRESS")
        await poll(service)
        created = [m for m in await messages_until_quiet(ws) if m["type"] == "created"]
        assert "stalledSince" not in created[0]["after"]

        clock.now += 301  # five minutes and a second with nothing new
        await poll(service)
        [flagged] = await messages_until_quiet(ws)
        assert flagged["type"] == "updated" and "stalledSince" not in flagged["before"]
        assert flagged["after"]["stalledSince"] == s["updateTime"] == flagged["after"]["updatedAt"]
        await poll(service)
        await nothing_more(ws)  # still stalled: no new delta

        sim.set_state(s["id"], "IN_PROGRESS")  # one more step of work
        await poll(service)
        cleared, activity = await messages_until_quiet(ws)
        assert cleared["type"] == "updated" and "stalledSince" not in cleared["after"]
        assert activity["activity"]["kind"] == "progressUpdated"
        await service.stop()
