"""Authentication before upgrade and subprotocol selection, with several real clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import TOKEN, connect, receive_json


async def test_valid_token_is_accepted_and_bearer_entry_is_echoed(
    http: aiohttp.ClientSession, service: Service
) -> None:
    ws = await connect(http, service)
    assert ws.protocol == f"bearer.{TOKEN}"
    await ws.close()


async def test_app_protocol_is_selected_when_offered(
    http: aiohttp.ClientSession, service: Service
) -> None:
    ws = await connect(http, service, protocols=("control-room.v1", f"bearer.{TOKEN}"))
    assert ws.protocol == "control-room.v1"
    await ws.close()


@pytest.mark.parametrize(
    "protocols",
    [(), ("bearer.wrong",), ("control-room.v1",), (f"bearer.{TOKEN}x",), ("bearer.test-token",)],
)
async def test_missing_or_wrong_token_gets_401_json_and_no_upgrade(
    http: aiohttp.ClientSession, service: Service, protocols: tuple[str, ...]
) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    headers["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    if protocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    async with http.get(service.url + "/", headers=headers) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"] == "unauthorized"
        assert "bearer.<token>" in body["message"] or "not valid" in body["message"]
        assert TOKEN not in await resp.text()
    assert len(service.hub) == 0


async def test_websockets_library_client_receives_deltas(service: Service, sim: Simulator) -> None:
    assert service.poller is not None
    async with websockets.connect(service.ws_url, subprotocols=[f"bearer.{TOKEN}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == f"bearer.{TOKEN}"
        await _wait_for_clients(service, 1)
        created = sim.create(repo="acme/api", title="From websockets")
        await service.poller.poll_once()
        delta = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert (delta["type"], delta["sessionId"]) == ("created", created["id"])


async def test_websockets_library_client_with_bad_token_is_refused(service: Service) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with websockets.connect(service.ws_url, subprotocols=["bearer.nope"]):  # type: ignore[list-item]
            pass
    assert err.value.response.status_code == 401


async def _wait_for_clients(service: Service, n: int) -> None:
    for _ in range(200):
        if len(service.hub) >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{n} clients never registered")


NODE_DIR = Path(__file__).parents[1] / "node"
NODE_READY = shutil.which("node") is not None and (NODE_DIR / "node_modules" / "ws").is_dir()


@pytest.mark.skipif(
    not NODE_READY and not os.environ.get("CI"),
    reason="Node.js or tests/node/node_modules missing (make setup installs them)",
)
@pytest.mark.parametrize("flavour", ["ws", "browser"])
async def test_node_clients_connect_and_receive_every_kind(
    service: Service, sim: Simulator, flavour: str
) -> None:
    """The `ws` library as the issue writes it, and the browser API (Node's own WebSocket),
    which fails a handshake that offered protocols and got none selected."""
    assert service.poller is not None
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        str(NODE_DIR / "client.mjs"),
        flavour,
        service.ws_url,
        TOKEN,
        "3",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    if b"NO_WEBSOCKET" in line:
        proc.kill()
        pytest.skip("this Node.js has no WebSocket client")
    assert line.strip() == f"open bearer.{TOKEN}".encode()
    created = sim.create(repo="acme/api", title="From Node")
    await service.poller.poll_once()
    sim.set_state(created["id"], "PLANNING")
    await service.poller.poll_once()
    sim.delete(created["id"])
    await service.poller.poll_once()
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    kinds = [json.loads(x)["type"] for x in out.decode().splitlines()]
    assert kinds == ["created", "updated", "deleted"]


async def test_delta_fields_are_exactly_the_seeds(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    created = sim.create(repo="acme/api", title="Shape")
    await service.poller.poll_once()
    delta = await receive_json(ws)
    assert set(delta) == {"type", "sessionId", "after", "timestamp", "seq"}
    assert delta["timestamp"].endswith("Z")
    assert set(delta["after"]) >= {
        "id",
        "repository",
        "branch",
        "planStatus",
        "approval",
        "participants",
        "createdAt",
    }
    sim.delete(created["id"])
    await service.poller.poll_once()
    deleted = await receive_json(ws)
    assert set(deleted) == {"type", "sessionId", "before", "timestamp", "seq"}
    await ws.close()
