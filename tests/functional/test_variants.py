"""Wire variants against a real server: JSON Patch updates and batching, at connect or later."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

import aiohttp
import jsonpatch
import msgspec
import pytest
import websockets

from control_room.app import Service
from control_room.jules.simulator import Simulator
from control_room.ws import handler
from tests.conftest import TOKEN, ServiceFactory, connect, receive_json
from tests.functional.test_end_to_end import NODE_DIR


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


BIG_TITLE = "Refactor the poller so that no failed page ever deletes anything " * 20


async def sessions_with_big_deltas(service: Service, sim: Simulator, n: int = 3) -> list[str]:
    """Create `n` sessions whose deltas are ~3 KB, well over the compression threshold."""
    assert service.poller is not None
    made = [sim.create(title=BIG_TITLE)["id"] for _ in range(n)]
    await service.poller.poll_once()
    return made


@pytest.mark.skipif(
    (shutil.which("node") is None or not (NODE_DIR / "node_modules" / "ws").is_dir())
    and not os.environ.get("CI"),
    reason="Node.js or tests/node/node_modules missing (make setup installs them)",
)
@pytest.mark.parametrize("flavour", ["ws", "browser"])
async def test_node_clients_negotiate_deflate_and_read_compressed_deltas(
    service: Service, sim: Simulator, flavour: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        str(NODE_DIR / "client.mjs"),
        flavour,
        service.ws_url,
        TOKEN,
        "3",
        "app",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    if "NO_WEBSOCKET" in line:
        proc.kill()
        pytest.skip("this Node.js has no WebSocket client")
    assert line.startswith("open control-room.v1 permessage-deflate"), line
    made = await sessions_with_big_deltas(service, sim)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    deltas = [json.loads(x) for x in out.decode().splitlines()]
    assert sorted(d["sessionId"] for d in deltas) == sorted(made)
    assert all(d["after"]["title"] == BIG_TITLE for d in deltas)


async def test_python_websockets_with_deflate_and_msgpack_both_ways(
    service: Service, sim: Simulator
) -> None:
    async with websockets.connect(
        service.ws_url,
        subprotocols=["control-room.v1+msgpack", f"bearer.{TOKEN}"],  # type: ignore[list-item]
        compression="deflate",
    ) as ws:
        assert ws.subprotocol == "control-room.v1+msgpack"
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
        made = await sessions_with_big_deltas(service, sim, 1)
        frame = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(frame, bytes)  # binary frames
        delta = msgspec.msgpack.decode(frame)
        assert (delta["type"], delta["sessionId"]) == ("created", made[0])
        assert delta["after"]["title"] == BIG_TITLE
        # A command of our own, compressed by the client, in MessagePack.
        # (Padded with a long, compressible filter: commands refuse fields they do not take.)
        ids = [f"{i:0>40}" for i in range(50)]
        command = {"type": "subscribe", "id": "m1", "states": ["QUEUED"], "sessionIds": ids}
        await ws.send(msgspec.msgpack.encode(command))
        result = msgspec.msgpack.decode(await asyncio.wait_for(ws.recv(), 5))
        assert (result["type"], result["id"], result["ok"]) == ("result", "m1", True)


async def test_aiohttp_client_with_deflate_reads_compressed_and_plain_frames(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    # Deltas of big sessions (~3 KB) are compressed, small ones (~0.6 KB) are not.
    service = await make_service(compression_min_bytes=2_000)
    ws = await http.ws_connect(
        service.ws_url, protocols=("control-room.v1", f"bearer.{TOKEN}"), compress=15
    )
    assert ws.compress == 15
    made = await sessions_with_big_deltas(service, sim, 1)
    assert (await receive_json(ws))["sessionId"] == made[0]
    small = sim.create(title="tiny")
    await service.poller.poll_once()
    assert (await receive_json(ws))["sessionId"] == small["id"]
    await ws.close()


async def test_compression_off_negotiates_nothing(
    make_service: ServiceFactory, sim: Simulator
) -> None:
    service = await make_service(compression=False)
    async with websockets.connect(
        service.ws_url,
        subprotocols=["control-room.v1", f"bearer.{TOKEN}"],  # type: ignore[list-item]
        compression="deflate",
    ) as ws:
        assert ws.protocol.extensions == []
        made = await sessions_with_big_deltas(service, sim, 1)
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["sessionId"] == made[0]


async def test_a_reconnect_storm_encodes_and_compresses_each_views_snapshot_once(
    service: Service, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service.poller is not None
    for _ in range(5):
        sim.create(title=BIG_TITLE)
    await service.poller.poll_once()
    framed: list[int] = []
    real = handler.single_off_loop

    async def counting(message: bytes, variant: Any) -> bytes:
        framed.append(len(message))
        return await real(message, variant)

    monkeypatch.setattr(handler, "single_off_loop", counting)

    async def snapshot() -> Any:
        async with websockets.connect(
            service.ws_url + "?snapshot=1",
            subprotocols=["control-room.v1", f"bearer.{TOKEN}"],  # type: ignore[list-item]
            compression="deflate",
        ) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

    got = await asyncio.gather(*(snapshot() for _ in range(20)))
    assert all(len(s["sessions"]) == 5 for s in got)
    assert len(framed) == 1  # twenty clients of one view and variant: one compression
