"""REST on the same port: auth, JSON errors, one session, health."""

from __future__ import annotations

import aiohttp
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import TOKEN, connect

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", ["/api/sessions", "/api/sessions/x", "/api/deltas", "/api/stats"])
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
async def test_api_needs_the_bearer_token(
    http: aiohttp.ClientSession, service: Service, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with http.get(service.url + path, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
        assert body["error"] == "unauthorized"
        assert "Authorization: Bearer <token>" in body["message"] or "not valid" in body["message"]
        assert TOKEN not in await resp.text()


async def test_one_session_by_id_and_404_json_when_unknown(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    created = sim.create(repo="acme/api")
    await service.poller.poll_once()
    async with http.get(f"{service.url}/api/sessions/{created['id']}", headers=AUTH) as resp:
        body = await resp.json()
        assert (body["id"], body["repository"]) == (created["id"], "acme/api")
    async with http.get(f"{service.url}/api/sessions/nope", headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


async def test_unknown_paths_and_methods_answer_json(
    http: aiohttp.ClientSession, service: Service
) -> None:
    async with http.get(service.url + "/no/such/thing") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    async with http.put(service.url + "/api/sessions", headers=AUTH) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"] == "method_not_allowed"


async def test_healthz_reports_the_upstream_without_auth(
    http: aiohttp.ClientSession, service: Service
) -> None:
    ws = await connect(http, service)
    async with http.get(service.url + "/healthz") as resp:
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["upstream"]["consecutiveFailures"] == 0
    assert body["upstream"]["lastSuccess"] is not None
    # No token, so no counts: how many sessions and clients is the authenticated
    # /api/stats' to tell.
    assert "clients" not in body
    assert not {"sessions", "undecodableSessions", "unconfirmedSessions"} & set(body["upstream"])
    await ws.close()


async def test_stats_lists_clients_and_totals(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await http.ws_connect(service.ws_url, protocols=(f"bearer.{TOKEN}",))
    sim.create()
    await service.poller.poll_once()
    await ws.receive()
    async with http.get(service.url + "/api/stats", headers=AUTH) as resp:
        body = await resp.json()
    assert body["position"]["seq"] == 1
    (client,) = body["clients"]
    assert client["messagesSent"] == 1 and client["bytesSent"] > 100
    assert body["broadcast"]["messagesSent"] == 1
    await ws.close()
