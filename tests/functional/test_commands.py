"""Commands over the WebSocket and REST: answered by id, acted on at once, errors typed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from control_room.app import Service
from control_room.commands import Commands
from control_room.jules.simulator import Simulator
from control_room.ws import handler
from tests.conftest import MS, TOKEN, connect, nothing_more, receive_json
from tests.functional.test_client_input import closed_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def until_result(
    ws: aiohttp.ClientWebSocketResponse, id: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The result for `id`, and the other messages that arrived before it."""
    others: list[dict[str, Any]] = []
    while True:
        message = await receive_json(ws)
        if message.get("type") == "result" and message.get("id") == id:
            return message, others
        others.append(message)


async def test_approve_plan_is_answered_and_its_delta_arrives_without_waiting_for_a_poll(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    ws = await connect(http, service)
    started = time.perf_counter()
    await ws.send_json({"type": "approvePlan", "id": 1, "sessionId": waiting["id"]})
    result, before = await until_result(ws, 1)
    assert result["ok"] is True
    assert result["session"]["id"] == waiting["id"]
    assert result["session"]["state"] != "AWAITING_PLAN_APPROVAL"
    deltas = before or [await receive_json(ws)]
    assert (deltas[0]["type"], deltas[0]["sessionId"]) == ("updated", waiting["id"])
    assert time.perf_counter() - started < 1.0  # the poll interval is an hour in tests
    await service.poller.poll_once()  # the next listing does not announce it twice
    await nothing_more(ws)


async def test_create_session_answers_with_the_new_session_and_everyone_sees_it(
    http: aiohttp.ClientSession, service: Service
) -> None:
    watcher = await connect(http, service)
    ws = await connect(http, service)
    await ws.send_json(
        {"type": "createSession", "id": "c", "prompt": "Add a README", "repository": "acme/web-app"}
    )
    result, _ = await until_result(ws, "c")
    assert result["ok"] is True
    created = result["session"]
    assert created["repository"] == "acme/web-app"
    delta = await receive_json(watcher)
    assert (delta["type"], delta["sessionId"]) == ("created", created["id"])


@pytest.mark.parametrize(
    ("message", "code", "id"),
    [
        ("{not json", "bad_message", None),
        ('["subscribe"]', "bad_message", None),
        ('{"type": "launchMissiles", "id": 3}', "unknown_type", 3),
        ('{"type": "approvePlan", "id": "x"}', "invalid_argument", "x"),
        ('{"type": "sendMessage", "id": 4, "sessionId": "1", "prompt": 5}', "invalid_argument", 4),
        (
            '{"type": "sendMessage", "id": 5, "sessionId": "1", "prompt": "  "}',
            "invalid_argument",
            5,
        ),
        ('{"type": "approvePlan", "id": 6, "sessionId": "404404"}', "not_found", 6),
        (
            '{"type": "createSession", "id": 7, "prompt": "x", "repository": "no/such"}',
            "not_found",
            7,
        ),
        (
            '{"type": "createSession", "id": 8, "prompt": "x", "repository": "nosuch"}',
            "invalid_argument",
            8,
        ),
    ],
)
async def test_bad_commands_get_a_typed_error_and_the_connection_stays(
    http: aiohttp.ClientSession, service: Service, sim: Simulator, message: str, code: str, id: Any
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    await ws.send_str(message)
    result, _ = await until_result(ws, id)
    assert (result["ok"], result["error"]["code"]) == (False, code), result
    assert result["error"]["message"]
    created = sim.create()
    await service.poller.poll_once()
    assert (await receive_json(ws))["sessionId"] == created["id"]


async def test_an_upstream_precondition_failure_is_failed_precondition(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    busy = sim.create(state="IN_PROGRESS")
    await service.poller.poll_once()
    ws = await connect(http, service)
    await ws.send_json({"type": "approvePlan", "id": 9, "sessionId": busy["id"]})
    result, _ = await until_result(ws, 9)
    assert result["error"]["code"] == "failed_precondition"
    assert "IN_PROGRESS" in result["error"]["message"]


async def test_a_flood_of_messages_is_rate_limited_then_closed_with_1008(
    http: aiohttp.ClientSession, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler, "COMMAND_BURST", 3)
    monkeypatch.setattr(handler, "COMMAND_FLOOD_LIMIT", 5)
    ws = await connect(http, service)
    for i in range(20):
        await ws.send_json({"type": "subscribe", "id": i})
    codes = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 2000 * MS)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        result = msg.json()
        codes.append(result["ok"] or result["error"]["code"])
    assert codes[:3] == [True, True, True]
    assert codes[3:] == ["rate_limited"] * 4
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1008
    await closed_for(service, "command_flood")


async def test_rest_commands_run_the_same_code(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    url = service.url + "/api/sessions"
    async with http.post(f"{url}/{waiting['id']}:approvePlan", headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == waiting["id"]
    assert service.state.sessions[waiting["id"]].state != "AWAITING_PLAN_APPROVAL"
    async with http.post(f"{url}/{waiting['id']}:approvePlan", headers=AUTH) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"] == "failed_precondition"
    async with http.post(url, json={"prompt": "Write docs"}, headers=AUTH) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["id"] in service.state.sessions
    async with http.post(url, json={"title": "no prompt"}, headers=AUTH) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert (body["error"], "prompt" in body["message"]) == ("invalid_argument", True)
    async with http.post(f"{url}/{created['id']}:explode", headers=AUTH) as resp:
        assert resp.status == 404
    async with http.post(url, data=b"[1, 2]", headers=AUTH) as resp:
        assert resp.status == 400
    async with http.post(f"{url}/{created['id']}:sendMessage", json={"prompt": "hi"}) as resp:
        assert resp.status == 401  # commands need the token like everything else


async def test_a_read_only_token_reads_and_subscribes_but_its_commands_are_forbidden(
    http: aiohttp.ClientSession, make_service: Any, sim: Simulator
) -> None:
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    service: Service = await make_service(local_readonly_token="viewer-token-0123456789")
    ws = await http.ws_connect(
        service.ws_url, protocols=("control-room.v1", "bearer.viewer-token-0123456789")
    )
    await ws.send_json({"type": "subscribe", "id": 1, "states": ["AWAITING_PLAN_APPROVAL"]})
    result, _ = await until_result(ws, 1)
    assert result["ok"] is True
    await ws.send_json({"type": "approvePlan", "id": 2, "sessionId": waiting["id"]})
    result, _ = await until_result(ws, 2)
    assert (result["ok"], result["error"]["code"]) == (False, "forbidden")
    viewer = {"Authorization": "Bearer viewer-token-0123456789"}
    url = f"{service.url}/api/sessions/{waiting['id']}:approvePlan"
    async with http.post(url, headers=viewer) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "forbidden"
    async with http.get(service.url + "/api/sessions", headers=viewer) as resp:
        assert resp.status == 200
    assert sim.get(waiting["id"])["state"] == "AWAITING_PLAN_APPROVAL"  # nothing reached Jules


async def test_me_says_whether_the_token_may_send_commands(
    http: aiohttp.ClientSession, make_service: Any
) -> None:
    service: Service = await make_service(local_readonly_token="viewer-token-0123456789")
    async with http.get(service.url + "/api/me", headers=AUTH) as resp:
        assert await resp.json() == {"readOnly": False, "commands": True}
    viewer = {"Authorization": "Bearer viewer-token-0123456789"}
    async with http.get(service.url + "/api/me", headers=viewer) as resp:
        body = await resp.json()
    assert body == {"readOnly": True, "commands": False}
    assert "viewer" not in str(body)


async def test_a_bug_in_a_command_still_answers_internal_and_the_connection_stays(
    http: aiohttp.ClientSession,
    service: Service,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert service.poller is not None

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug in a command")

    monkeypatch.setattr(Commands, "run", broken)
    ws = await connect(http, service)
    await ws.send_json({"type": "approvePlan", "id": "b", "sessionId": "1"})
    result, _ = await until_result(ws, "b")
    assert (result["ok"], result["error"]["code"]) == (False, "internal")
    created = sim.create()
    await service.poller.poll_once()
    assert (await receive_json(ws))["sessionId"] == created["id"]
