"""Connection and process lifecycle: clean closes, junk, oversized messages, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.ws.handler import WebSocketEndpoint
from tests.conftest import API_KEY, MS, TOKEN, ServiceFactory, connect, receive_json


async def wait_until(predicate: object, within: float = 2000 * MS) -> None:
    assert callable(predicate)
    for _ in range(int(within / (5 * MS))):
        if predicate():
            return
        await asyncio.sleep(5 * MS)
    raise AssertionError("condition never became true")


async def test_clean_disconnect_removes_the_client(
    http: aiohttp.ClientSession, service: Service
) -> None:
    ws = await connect(http, service)
    await wait_until(lambda: len(service.hub) == 1)
    await ws.close()
    await wait_until(lambda: len(service.hub) == 0)
    assert service.metrics.connections_closed.labels("normal")._value.get() == 1


async def test_junk_from_clients_is_answered_and_the_stream_goes_on(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    await ws.send_str("{not json")
    await ws.send_bytes(b"\x00\xff" * 100)
    for _ in range(2):
        answer = await receive_json(ws)
        assert answer["type"] == "result"
        assert (answer["id"], answer["ok"], answer["error"]["code"]) == (None, False, "bad_message")
    created = sim.create()
    await service.poller.poll_once()
    assert (await receive_json(ws))["sessionId"] == created["id"]
    await ws.close()


async def test_a_message_over_64_kib_closes_with_1009(
    http: aiohttp.ClientSession, service: Service
) -> None:
    ws = await connect(http, service)
    await ws.send_str("x" * (64 * 1024 + 1))
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1009
    await wait_until(lambda: len(service.hub) == 0)
    assert service.metrics.connections_closed.labels("message_too_big")._value.get() == 1


async def test_client_that_vanishes_mid_stream_is_cleaned_up(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    await wait_until(lambda: len(service.hub) == 1)
    transport = ws._response.connection.transport if ws._response.connection else None
    assert transport is not None
    transport.abort()  # no close frame: the network just went away
    await wait_until(lambda: len(service.hub) == 0)
    sim.create()
    await service.poller.poll_once()  # broadcasting to nobody must not fail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_sigterm_closes_clients_with_1001_and_exits_0(
    http: aiohttp.ClientSession, upstream: SimulatorServer, sim: Simulator
) -> None:
    sim.bulk_create(3)
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "LOCAL_TOKEN": TOKEN,
        "JULES_API_KEY": API_KEY,
        "JULES_API_BASE": upstream.base_url,
        "POLL_INTERVAL_MS": "100",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "control_room.cli",
        "serve",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(200):
            try:
                url = f"ws://127.0.0.1:{port}/"
                ws = await http.ws_connect(url, protocols=(f"bearer.{TOKEN}",))
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            proc.kill()
            assert proc.stderr is not None
            raise AssertionError(f"server never came up: {(await proc.stderr.read())[-2000:]!r}")
        proc.send_signal(signal.SIGTERM)
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
        assert TOKEN not in logs and API_KEY not in logs
        assert '"msg":"WebSocket client connected"' in logs
        assert '"clientCount":1' in logs
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_taken_port_is_one_clear_line_and_exit_1(upstream: SimulatorServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **os.environ,
            "PORT": str(taken.getsockname()[1]),
            "LOCAL_TOKEN": TOKEN,
            "JULES_API_KEY": API_KEY,
            "JULES_API_BASE": upstream.base_url,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "control_room.cli",
            "serve",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines  # no traceback, no unclosed-session warning
    assert "address already in use" in lines[0].lower()


async def test_a_crash_in_one_connection_handler_leaves_the_server_serving(
    http: aiohttp.ClientSession,
    service: Service,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert service.poller is not None
    await service.poller.poll_once()
    sim.create()
    await service.poller.poll_once()

    async def broken_catch_up(*args: object) -> None:
        raise RuntimeError("a bug in one connection's handler")

    monkeypatch.setattr(WebSocketEndpoint, "_catch_up", broken_catch_up)
    epoch = service.broker.position.epoch
    victim = await connect(http, service, f"?since=0&epoch={epoch}")
    msg = await asyncio.wait_for(victim.receive(), 2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert "WebSocket handler failed" in caplog.text
    await wait_until(lambda: len(service.hub) == 0)
    assert service.metrics.connections_closed.labels("error")._value.get() == 1

    healthy = await connect(http, service)
    created = sim.create()
    await service.poller.poll_once()
    assert (await receive_json(healthy))["sessionId"] == created["id"]


async def test_a_stop_right_after_a_wake_does_not_wait_for_the_poll_interval(
    make_service: ServiceFactory,
) -> None:
    # A key reload (SIGHUP) wakes the poller; a SIGTERM just after must still stop it at
    # once. On Python 3.11, wait_for swallowed a cancel that landed with the wake, and the
    # poller waited out its interval (an hour here).
    service = await make_service()
    assert service.poller is not None
    service.poller.wake()
    stopping = asyncio.create_task(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5000 * MS)
    assert stopping in done
