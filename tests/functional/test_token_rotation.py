"""Several tokens, rotated through LOCAL_TOKEN_FILE: revoked clients are closed with 4001."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.secret import fingerprint
from control_room.ws.connection import Connection
from tests.conftest import API_KEY, ServiceFactory, receive_json
from tests.functional.serve import Serve
from tests.functional.test_lifecycle import wait_until as until
from tests.unit.test_secret import _bump as write

OLD = "old-token-0123456789abcdef"
NEW = "new-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789"


async def open_ws(
    http: aiohttp.ClientSession, service: Service, token: str
) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(service.ws_url, protocols=("control-room.v1", f"bearer.{token}"))


async def test_a_token_removed_from_the_file_closes_its_clients_and_no_others(
    make_service: ServiceFactory,
    sim: Simulator,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = tmp_path / "tokens"
    write(tokens, f"# two tokens while clients move over\n{OLD}\n{NEW}\n")
    ro = tmp_path / "readonly"
    write(ro, f"{VIEWER}\n")
    service = await make_service(
        local_token="", local_token_file=tokens, local_readonly_token_file=ro
    )
    assert service.poller is not None
    old_ws = await open_ws(http, service, OLD)
    new_ws = await open_ws(http, service, NEW)
    viewer_ws = await open_ws(http, service, VIEWER)
    await until(lambda: len(service.hub) == 3)
    principals = {c.principal for c in service.hub.connections.values()}
    assert {(p.fingerprint, p.read_only) for p in principals if p is not None} == {
        (fingerprint(OLD), False),
        (fingerprint(NEW), False),
        (fingerprint(VIEWER), True),
    }

    write(tokens, f"{NEW}\n")
    with caplog.at_level(logging.INFO, logger="control_room"):
        service.reload_secrets()  # SIGHUP; the watcher does the same within a second
    closed = await asyncio.wait_for(old_ws.receive(), 2)
    assert (closed.type, closed.data, closed.extra) == (
        aiohttp.WSMsgType.CLOSE,
        4001,
        "token_revoked",
    )
    await until(lambda: len(service.hub) == 2)

    created = sim.create()
    await service.poller.poll_once()
    assert (await receive_json(new_ws))["sessionId"] == created["id"]
    assert (await receive_json(viewer_ws))["sessionId"] == created["id"]

    async with http.get(
        service.url + "/api/stats", headers={"Authorization": f"Bearer {OLD}"}
    ) as resp:
        assert resp.status == 401
    async with http.get(
        service.url + "/api/stats", headers={"Authorization": f"Bearer {NEW}"}
    ) as resp:
        assert resp.status == 200
    assert service.metrics.token_revocations._value.get() == 1
    await until(
        lambda: service.metrics.connections_closed.labels("token_revoked")._value.get() == 1
    )
    revoked = [r for r in caplog.records if r.getMessage() == "Closed clients of a revoked token"]
    assert [(r.fingerprint, r.clientCount) for r in revoked] == [(fingerprint(OLD), 1)]  # type: ignore[attr-defined]
    assert OLD not in caplog.text and NEW not in caplog.text
    await new_ws.close()
    await viewer_ws.close()


async def test_the_file_watcher_alone_revokes_within_a_second(
    make_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    write(tokens, f"{OLD}\n{NEW}\n")
    service = await make_service(local_token="", local_token_file=tokens)
    old_ws = await open_ws(http, service, OLD)
    write(tokens, f"{NEW}\n")
    closed = await asyncio.wait_for(old_ws.receive(), 3)  # SECRET_POLL_S is 1 s
    assert closed.data == 4001


async def test_a_file_that_becomes_unusable_keeps_the_tokens_in_force(
    make_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    write(tokens, f"{OLD}\n")
    service = await make_service(local_token="", local_token_file=tokens)
    ws = await open_ws(http, service, OLD)
    write(tokens, "# emptied by mistake\n")
    service.reload_secrets()
    write(tokens, "not/a token\n")
    service.reload_secrets()
    assert len(service.hub) == 1 and not ws.closed
    async with http.get(
        service.url + "/api/stats", headers={"Authorization": f"Bearer {OLD}"}
    ) as resp:
        assert resp.status == 200
    await ws.close()


async def test_sighup_rereads_the_token_file_of_a_real_serve(
    upstream: SimulatorServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{OLD}\n{NEW}\n")
    serve = Serve(
        {
            "LOCAL_TOKEN_FILE": str(tokens),
            "JULES_API_KEY": API_KEY,
            "JULES_API_BASE": upstream.base_url,
        }
    ).start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"ws://127.0.0.1:{serve.port}/"
            old_ws = await http.ws_connect(url, protocols=("control-room.v1", f"bearer.{OLD}"))
            new_ws = await http.ws_connect(url, protocols=("control-room.v1", f"bearer.{NEW}"))
            # Same size, same mtime: only SIGHUP (a forced re-read) can notice the change.
            st = tokens.stat()
            tokens.write_text(f"{NEW}\n{NEW}\n")  # OLD and NEW have the same length
            os.utime(tokens, ns=(st.st_atime_ns, st.st_mtime_ns))
            serve.proc.send_signal(signal.SIGHUP)
            closed = await asyncio.wait_for(old_ws.receive(), 5)
            assert (closed.data, closed.extra) == (4001, "token_revoked")
            assert not new_ws.closed
            await new_ws.close()
        serve.wait_for('"msg":"Closed clients of a revoked token"')
        line = next(x for x in serve.lines() if x["msg"] == "Closed clients of a revoked token")
        assert line["fingerprint"] == fingerprint(OLD)
    finally:
        assert serve.stop() == 0
    assert OLD not in serve.stderr and NEW not in serve.stderr


async def test_a_token_revoked_during_the_handshake_is_closed_as_soon_as_it_opens(
    make_service: ServiceFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = tmp_path / "tokens"
    write(tokens, f"{OLD}\n{NEW}\n")
    service = await make_service(local_token="", local_token_file=tokens)
    adopt = Connection.adopt

    def revoking_adopt(self: Connection, transport: asyncio.Transport) -> None:
        write(tokens, f"{NEW}\n")
        service.reload_secrets()  # the reload lands as the 101 is written
        adopt(self, transport)

    monkeypatch.setattr(Connection, "adopt", revoking_adopt)
    ws = await open_ws(http, service, OLD)
    closed = await asyncio.wait_for(ws.receive(), 2)
    assert (closed.data, closed.extra) == (4001, "token_revoked")
    assert len(service.hub) == 0
