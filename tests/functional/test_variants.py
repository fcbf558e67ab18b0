"""Wire variants against a real server: JSON Patch updates and batching, at connect or later."""

from __future__ import annotations

import aiohttp
import jsonpatch

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import connect, receive_json


async def test_patch_clients_rebuild_exactly_what_full_clients_see(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    session = sim.create(state="QUEUED")
    await service.poller.poll_once()
    full = await connect(http, service, "?snapshot=1")
    patched = await connect(http, service, "?snapshot=1&updates=patch")
    snapshot = (await receive_json(patched))["sessions"]
    await receive_json(full)
    copy = {s["id"]: s for s in snapshot}[session["id"]]
    for state in ("PLANNING", "AWAITING_PLAN_APPROVAL", "IN_PROGRESS"):
        sim.set_state(session["id"], state)
        await service.poller.poll_once()
        whole, patch = await receive_json(full), await receive_json(patched)
        assert set(patch) == {"type", "sessionId", "patch", "timestamp", "seq"}
        assert (patch["type"], patch["seq"]) == ("updated", whole["seq"])
        copy = jsonpatch.apply_patch(copy, patch["patch"])
        assert copy == whole["after"]


async def test_batch_clients_get_one_message_per_poll(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service, "?batch=1")
    made = [sim.create() for _ in range(3)]
    await service.poller.poll_once()
    message = await receive_json(ws)
    assert message["type"] == "batch"
    assert [d["sessionId"] for d in message["deltas"]] == sorted(m["id"] for m in made)
    assert [d["seq"] for d in message["deltas"]] == [1, 2, 3]


async def test_subscribe_switches_to_patch_and_batch(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    session = sim.create()
    await service.poller.poll_once()
    ws = await connect(http, service)
    await ws.send_json({"type": "subscribe", "id": 1, "updates": "patch", "batch": True})
    result = await receive_json(ws)
    assert (
        result["ok"]
        and result["subscription"]
        == {
            "activities": False,
            "updates": "patch",
            "batch": True,
        }
    ) or result["subscription"] == {"updates": "patch", "batch": True}
    sim.set_state(session["id"], "PLANNING")
    await service.poller.poll_once()
    message = await receive_json(ws)
    assert message["type"] == "batch"
    (update,) = message["deltas"]
    assert {"op": "replace", "path": "/state", "value": "PLANNING"} in update["patch"]
