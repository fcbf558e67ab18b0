"""Reading activities from an upstream that misbehaves in ways the simulator will not: an
activity that cannot be used, and what the reads ask for."""

from __future__ import annotations

import time

import aiohttp

from control_room.app import Service
from tests.conftest import TOKEN, ServiceFactory, connect, nothing_more, receive_json
from tests.fake_upstream import FakeUpstream

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = int(time.time())


def at(seconds_ago: int, nanos: str = "") -> str:
    """A time just before now (a working session that old is not stalled)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - seconds_ago))
    return stamp + (f".{nanos}" if nanos else "") + "Z"


T0 = at(30)
T1 = at(20, "000000001")
T2 = at(10)


def progress(aid: str, when: str, title: str) -> dict[str, object]:
    return {
        "name": f"sessions/1/activities/{aid}",
        "id": aid,
        "createTime": when,
        "originator": "agent",
        "progressUpdated": {"title": title},
    }


async def poll(service: Service) -> None:
    assert service.poller is not None
    await service.poller.poll_once()


async def test_an_unusable_activity_is_skipped_and_the_others_are_announced(
    http: aiohttp.ClientSession, make_fake_service: ServiceFactory, fake: FakeUpstream
) -> None:
    fake.add(1)
    fake.update("1", state="IN_PROGRESS", updateTime=T0)
    fake.activities["1"] = [progress("a0", T0, "Read the code")]
    service = await make_fake_service()
    assert fake.activity_queries == [{"pageSize": "100"}]  # the baseline: its whole timeline
    ws = await connect(http, service, "?activities=1")

    fake.update("1", updateTime=T2)
    fake.activities["1"] = [
        progress("a1", T1, "Write the test"),
        b'{"id": "bad", "createTime": 5, "progressUpdated": {}}',  # createTime not a string
        progress("a2", T2, "Fix the bug"),
    ]
    await poll(service)
    assert fake.activity_queries[-1] == {"pageSize": "100", "filter": f'create_time>"{T0}"'}
    assert (await receive_json(ws))["type"] == "updated"
    first, second = await receive_json(ws), await receive_json(ws)
    assert [first["activity"]["title"], second["activity"]["title"]] == [
        "Write the test",
        "Fix the bug",
    ]
    await nothing_more(ws)
    async with http.get(service.url + "/metrics", headers=AUTH) as resp:
        assert "control_room_activities_skipped_total 1.0" in await resp.text()


async def test_activities_the_upstream_failed_to_filter_are_not_announced_again(
    http: aiohttp.ClientSession, make_fake_service: ServiceFactory, fake: FakeUpstream
) -> None:
    fake.add(1)
    fake.update("1", state="IN_PROGRESS", updateTime=T1)
    fake.activities["1"] = [progress("a0", T0, "Read the code"), progress("a1", T1, "Test")]
    service = await make_fake_service()
    ws = await connect(http, service, "?activities=1")
    fake.update("1", updateTime=T2)
    fake.activities["1"].append(progress("a2", T2, "Fix"))  # the filter is ignored
    await poll(service)
    assert fake.activity_queries[-1]["filter"] == f'create_time>"{T1}"'
    assert (await receive_json(ws))["type"] == "updated"
    assert (await receive_json(ws))["activity"]["id"] == "a2"
    await nothing_more(ws)
