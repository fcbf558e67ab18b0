"""Subscriptions: filtered views at connect time and by message, consistent and resumable."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import aiohttp
from websockets.frames import Frame, Opcode

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import MS, TOKEN, connect, nothing_more, receive_json


async def test_a_state_view_gets_entries_and_departures_as_created_and_deleted(
    http: aiohttp.ClientSession, make_service: object, sim: Simulator
) -> None:
    a, b = sim.create(state="QUEUED"), sim.create(state="IN_PROGRESS")
    service: Service = await make_service()  # type: ignore[operator]
    assert service.poller is not None
    view = await connect(http, service, "?snapshot=1&state=IN_PROGRESS")
    everything = await connect(http, service)
    snapshot = await receive_json(view)
    assert [s["id"] for s in snapshot["sessions"]] == [b["id"]]

    sim.set_state(a["id"], "IN_PROGRESS")
    await service.poller.poll_once()
    entered = await receive_json(view)
    assert (entered["type"], entered["sessionId"]) == ("created", a["id"])
    assert "before" not in entered
    plain = await receive_json(everything)
    assert (plain["type"], plain["seq"]) == ("updated", entered["seq"])  # same numbering

    sim.set_state(b["id"], "COMPLETED")
    await service.poller.poll_once()
    left = await receive_json(view)
    assert (left["type"], left["sessionId"], left["before"]["state"]) == (
        "deleted",
        b["id"],
        "IN_PROGRESS",
    )
    assert "after" not in left
    await receive_json(everything)

    other = sim.create(state="QUEUED")  # never in the view
    await service.poller.poll_once()
    await nothing_more(view)
    assert (await receive_json(everything))["sessionId"] == other["id"]


async def test_subscribe_replaces_the_view_and_answers_with_its_snapshot(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    x, y = sim.create(repo="acme/api"), sim.create(repo="acme/web")
    await service.poller.poll_once()
    ws = await connect(http, service)
    await ws.send_json({"type": "subscribe", "id": "s1", "repositories": ["acme/web"]})
    result = await receive_json(ws)
    assert (result["type"], result["id"], result["ok"]) == ("result", "s1", True)
    assert [s["id"] for s in result["sessions"]] == [y["id"]]
    assert result["seq"] == service.broker.position.seq
    assert result["subscription"] == {"repositories": ["acme/web"]}

    sim.set_state(x["id"], "PLANNING")
    sim.set_state(y["id"], "PLANNING")
    await service.poller.poll_once()
    delta = await receive_json(ws)
    assert (delta["type"], delta["sessionId"]) == ("updated", y["id"])
    await nothing_more(ws)


async def test_a_bad_subscription_is_refused_and_the_old_view_stays(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service, "?state=QUEUED")
    await ws.send_json({"type": "subscribe", "id": 7, "states": "QUEUED"})  # not a list
    result = await receive_json(ws)
    assert (result["id"], result["ok"], result["error"]["code"]) == (7, False, "invalid_argument")
    assert "states" in result["error"]["message"]
    created = sim.create(state="QUEUED")
    await service.poller.poll_once()
    assert (await receive_json(ws))["sessionId"] == created["id"]


async def test_a_filtered_resume_gets_exactly_what_its_view_missed(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    a, b = sim.create(state="QUEUED"), sim.create(state="QUEUED")
    await service.poller.poll_once()
    since = service.broker.position.seq
    epoch = service.broker.position.epoch
    sim.set_state(a["id"], "IN_PROGRESS")  # enters the view
    await service.poller.poll_once()
    sim.set_state(b["id"], "PLANNING")  # never in it
    await service.poller.poll_once()
    sim.set_state(a["id"], "COMPLETED")  # leaves it
    await service.poller.poll_once()
    ws = await connect(http, service, f"?state=IN_PROGRESS&since={since}&epoch={epoch}")
    first, second = await receive_json(ws), await receive_json(ws)
    assert [(m["type"], m["sessionId"]) for m in (first, second)] == [
        ("created", a["id"]),
        ("deleted", a["id"]),
    ]
    assert first["seq"] < second["seq"] <= service.broker.position.seq
    await nothing_more(ws)


async def test_the_default_stream_is_unchanged_by_filtered_clients(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    plain = await connect(http, service)
    filtered = [await connect(http, service, f"?repository=acme/none{i}") for i in range(5)]
    created = [sim.create() for _ in range(3)]
    await service.poller.poll_once()
    got = [await receive_json(plain) for _ in created]
    assert [m["seq"] for m in got] == [1, 2, 3]
    assert {m["sessionId"] for m in got} == {c["id"] for c in created}
    assert all(set(m) == {"type", "sessionId", "after", "timestamp", "seq"} for m in got)
    for ws in filtered:
        await nothing_more(ws, 10 * MS)


async def test_bad_view_parameters_are_refused_before_the_upgrade(
    http: aiohttp.ClientSession, service: Service
) -> None:
    from tests.conftest import TOKEN

    async with http.get(
        service.ws_url.replace("ws", "http", 1) + "?activitiesSince=3&since=0",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": f"bearer.{TOKEN}",
        },
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["parameter"] == "activitiesSince"


async def test_a_subscribe_sent_with_the_upgrade_is_answered_after_the_snapshot(
    service: Service, sim: Simulator
) -> None:
    """A client may pipeline a command right behind its upgrade request: the answer must not
    overtake the snapshot it replaces."""
    assert service.poller is not None
    for _ in range(3):
        sim.create()
    await service.poller.poll_once()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    key = base64.b64encode(os.urandom(16)).decode()
    subscribe = Frame(Opcode.TEXT, b'{"type":"subscribe","id":1,"sessionIds":["nope"]}')
    writer.write(
        (
            "GET /?snapshot=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: control-room.v1, bearer.{TOKEN}\r\n\r\n"
        ).encode()
        + subscribe.serialize(mask=True)  # in the same write as the request
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 101")
    first, second = [await asyncio.wait_for(read_frame(reader), 2) for _ in range(2)]
    assert (first["type"], len(first["sessions"])) == ("snapshot", 3)
    assert (second["type"], second["id"], second["sessions"]) == ("result", 1, [])
    writer.close()


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """One unmasked server text frame, decoded."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    assert first & 0x0F == 0x1
    return json.loads(await reader.readexactly(length))
