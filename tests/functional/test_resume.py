"""Positions, resume, reset and snapshot-on-connect (in-memory history)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import TOKEN, ServiceFactory, connect, nothing_more, receive_json, receive_n

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def changes(service: Service, sim: Simulator, n: int) -> None:
    """Publish exactly n deltas (one created session per poll)."""
    assert service.poller is not None
    for _ in range(n):
        sim.create()
        await service.poller.poll_once()


async def test_sessions_carry_the_position(http: aiohttp.ClientSession, service: Service) -> None:
    async with http.get(service.url + "/api/sessions", headers=AUTH) as resp:
        body = await resp.json()
    assert set(body) == {"sessions", "seq", "epoch", "activitiesSeq"}
    assert body["epoch"] == service.broker.position.epoch


async def test_resume_replays_exactly_what_was_missed_then_goes_live(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    ws = await connect(http, service)
    await changes(service, sim, 2)
    seen = await receive_n(ws, 2)
    await ws.close()
    await changes(service, sim, 5)
    epoch = service.broker.position.epoch
    ws = await connect(http, service, f"?since={seen[-1]['seq']}&epoch={epoch}")
    replayed = await receive_n(ws, 5)
    assert [d["seq"] for d in replayed] == [3, 4, 5, 6, 7]
    await changes(service, sim, 1)
    assert (await receive_json(ws))["seq"] == 8
    await nothing_more(ws)


async def test_resume_during_concurrent_publishing_has_no_gap_and_no_duplicate(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    service = await make_service()
    await changes(service, sim, 300)
    epoch = service.broker.position.epoch
    # Slow the store-less history read down by publishing while clients resume.
    publisher = asyncio.create_task(changes(service, sim, 30))
    clients = [await connect(http, service, f"?since={k * 10}&epoch={epoch}") for k in range(5)]
    await publisher
    final = service.broker.position.seq
    for k, ws in enumerate(clients):
        seqs = [d["seq"] for d in await receive_n(ws, final - k * 10)]
        assert seqs == list(range(k * 10 + 1, final + 1))
        await nothing_more(ws, 0.02)


async def test_stale_epoch_gets_a_reset_then_live_deltas(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    await changes(service, sim, 2)
    ws = await connect(http, service, "?since=1&epoch=an-older-epoch")
    reset = await receive_json(ws)
    assert reset == {
        "type": "reset",
        "epoch": service.broker.position.epoch,
        "seq": 2,
        "reason": "epoch_changed",
    }
    await changes(service, sim, 1)
    assert (await receive_json(ws))["seq"] == 3


async def test_resume_older_than_history_gets_a_reset(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    service = await make_service(history_size=5)
    await changes(service, sim, 10)
    epoch = service.broker.position.epoch
    ws = await connect(http, service, f"?since=2&epoch={epoch}")
    reset = await receive_json(ws)
    assert (reset["type"], reset["reason"], reset["seq"]) == ("reset", "history_expired", 10)
    async with http.get(service.url + "/api/deltas?since=2", headers=AUTH) as resp:
        assert resp.status == 410
        body = await resp.json()
        assert body["error"] == "gone" and body["oldestSeq"] == 6


async def test_a_client_ahead_of_the_server_gets_a_reset_not_an_error(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    # As after the store was restored from a backup: same epoch, the server back at seq 2.
    await changes(service, sim, 2)
    epoch = service.broker.position.epoch
    for query in (f"?since=4&epoch={epoch}", "?since=4"):
        ws = await connect(http, service, query)
        assert await receive_json(ws) == {
            "type": "reset",
            "epoch": epoch,
            "seq": service.broker.position.seq,
            "reason": "ahead_of_server",
        }
        await changes(service, sim, 1)
        assert (await receive_json(ws))["seq"] == service.broker.position.seq  # then live
        await ws.close()
    seq = service.broker.position.seq
    async with http.get(f"{service.url}/api/deltas?since={seq + 5}", headers=AUTH) as resp:
        assert resp.status == 410
        body = await resp.json()
    assert (body["error"], body["reason"]) == ("gone", "ahead_of_server")
    assert (body["epoch"], body["seq"], body["oldestSeq"]) == (epoch, seq, seq + 1)
    resets = service.metrics.registry.get_sample_value(
        "control_room_resume_total", {"outcome": "ahead_of_server"}
    )
    assert resets == 2


async def test_snapshot_on_connect_then_every_later_delta(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    for _ in range(5):
        sim.tick()
    await service.poller.poll_once()
    publisher = asyncio.create_task(_tick_and_poll(service, sim, 15))
    ws = await connect(http, service, "?snapshot=1")
    snapshot = await receive_json(ws)
    assert snapshot["type"] == "snapshot"
    state: dict[str, Any] = {s["id"]: s for s in snapshot["sessions"]}
    await publisher
    for delta in await receive_n(ws, service.broker.position.seq - snapshot["seq"]):
        assert delta["seq"] > snapshot["seq"]
        if delta["type"] == "deleted":
            del state[delta["sessionId"]]
        else:
            state[delta["sessionId"]] = delta["after"]
    assert set(state) == {s["id"] for s in sim.sessions_newest_first()}
    assert state == _as_json(service)


async def _tick_and_poll(service: Service, sim: Simulator, n: int) -> None:
    assert service.poller is not None
    for _ in range(n):
        sim.tick()
        await service.poller.poll_once()


def _as_json(service: Service) -> dict[str, Any]:
    import msgspec

    assert service.poller is not None
    return {
        k: msgspec.json.decode(msgspec.json.encode(v)) for k, v in service.poller.sessions.items()
    }


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?since=abc", "since"),
        ("?snapshot=please", "snapshot"),
        ("?since=1&snapshot=1", "snapshot"),
    ],
)
async def test_bad_parameters_get_400_before_upgrade(
    http: aiohttp.ClientSession, service: Service, query: str, parameter: str
) -> None:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": f"bearer.{TOKEN}",
    }
    async with http.get(service.url + "/" + query, headers=headers) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert (body["error"], body["parameter"]) == ("bad_request", parameter)


async def test_deltas_endpoint_filters_and_limits(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    first = sim.create()
    await service.poller.poll_once()
    await changes(service, sim, 3)
    sim.set_state(first["id"], "PLANNING")
    await service.poller.poll_once()
    async with http.get(service.url + "/api/deltas?since=0", headers=AUTH) as resp:
        body = await resp.json()
    assert [d["seq"] for d in body["deltas"]] == [1, 2, 3, 4, 5]
    assert body["seq"] == 5 and body["epoch"] == service.broker.position.epoch
    url = f"{service.url}/api/deltas?since=0&sessionId={first['id']}"
    async with http.get(url, headers=AUTH) as resp:
        assert [d["seq"] for d in (await resp.json())["deltas"]] == [1, 5]
    async with http.get(service.url + "/api/deltas?since=1&limit=2", headers=AUTH) as resp:
        assert [d["seq"] for d in (await resp.json())["deltas"]] == [2, 3]
    async with http.get(service.url + "/api/deltas?since=x", headers=AUTH) as resp:
        assert resp.status == 400


async def test_client_without_parameters_gets_only_deltas(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    await changes(service, sim, 2)
    ws = await connect(http, service)
    await nothing_more(ws)
    await changes(service, sim, 1)
    assert (await receive_json(ws))["type"] == "created"
