"""Bounded connections: the cap's 503, the request-head deadline, running out of descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from control_room.jules.simulator import Simulator
from control_room.server import http as front
from tests.conftest import MS, TOKEN, ServiceFactory, receive_json
from tests.functional.serve import Serve, body_of, header_of, raw_request, status_of, upgrade

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


async def test_past_the_cap_new_clients_get_503_and_existing_ones_keep_their_deltas(
    make_service: ServiceFactory, sim: Simulator
) -> None:
    service = await make_service(max_connections=3)
    assert service.poller is not None
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(service.ws_url, protocols=("control-room.v1", f"bearer.{TOKEN}"))
        idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(2)]
        try:
            await asyncio.sleep(20 * MS)
            answer = await asyncio.to_thread(raw_request, service.port, HEALTHZ)
            assert status_of(answer) == 503
            assert header_of(answer, "Retry-After") == "10"
            assert body_of(answer)["error"] == "over_capacity"
            created = sim.create()
            await service.poller.poll_once()
            assert (await receive_json(ws))["sessionId"] == created["id"]
            assert service.metrics.server_refused.labels("max_connections")._value.get() == 1
        finally:
            for sock in idle:
                sock.close()
        await asyncio.sleep(20 * MS)
        answer = await asyncio.to_thread(raw_request, service.port, HEALTHZ)
        assert status_of(answer) == 200
        await ws.close()


@pytest.fixture
def short_head_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    deadline = 200 * MS
    monkeypatch.setattr(front, "REQUEST_HEAD_TIMEOUT_S", deadline)
    return deadline


@pytest.mark.parametrize("sent", [b"", b"GET /api/ses", b"GET / HTTP/1.1\r\nHost: x\r\n"])
async def test_a_connection_without_a_complete_request_head_is_closed(
    make_service: ServiceFactory, short_head_deadline: float, sent: bytes
) -> None:
    service = await make_service()
    sock = socket.create_connection(("127.0.0.1", service.port))
    with sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert await asyncio.to_thread(closed_within, sock, 10 * short_head_deadline)
        assert time.monotonic() - started >= short_head_deadline * 0.8


async def test_a_slowloris_trickle_does_not_extend_the_deadline(
    make_service: ServiceFactory, short_head_deadline: float
) -> None:
    service = await make_service()

    def trickle() -> float:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", service.port)) as sock:
            try:
                for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 1000:
                    sock.sendall(bytes([byte]))
                    time.sleep(short_head_deadline / 10)
            except (BrokenPipeError, ConnectionResetError):
                pass
            closed_within(sock, 10 * short_head_deadline)
        return time.monotonic() - started

    assert await asyncio.to_thread(trickle) < 5 * short_head_deadline


async def test_an_upgraded_client_outlives_the_head_deadline(
    make_service: ServiceFactory, short_head_deadline: float, sim: Simulator
) -> None:
    service = await make_service()
    assert service.poller is not None
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(service.ws_url, protocols=(f"bearer.{TOKEN}",))
        await asyncio.sleep(2.5 * short_head_deadline)
        created = sim.create()
        await service.poller.poll_once()
        assert (await receive_json(ws))["sessionId"] == created["id"]
        await ws.close()


def _limit_files(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


NO_UVLOOP = (
    "-c",
    "import sys; sys.modules['uvloop'] = None; "  # ImportError: run_loop falls back to asyncio
    "from control_room.cli import main; sys.exit(main(['serve']))",
)


@contextlib.contextmanager
def exhausted(serve: Serve, count: int) -> Iterator[list[socket.socket]]:
    """`count` idle connections to the service, closed afterwards."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                socks.append(socket.create_connection(("127.0.0.1", serve.port), timeout=1))
            except OSError:
                break
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_running_out_of_descriptors_neither_spins_nor_floods_the_log(loop: str) -> None:
    """The file limit at 64 and the cap above it: descriptors run out before the cap."""
    serve = Serve(
        {
            "LOCAL_TOKEN": TOKEN,
            "JULES_API_KEY": "k",
            "JULES_API_BASE": "http://127.0.0.1:9/v1alpha",
            "POLL_INTERVAL_MS": "60000",
            "MAX_CONNECTIONS": "1000",
        },
        argv=NO_UVLOOP if loop == "asyncio" else ("-m", "control_room.cli", "serve"),
        preexec=_limit_files(64),
    ).start()
    try:
        with exhausted(serve, 120) as socks:
            assert len(socks) >= 100  # the kernel's queue takes what the service cannot
            time.sleep(0.2)
            size_before = len(serve.stderr)
            cpu_before = _cpu_seconds(serve.proc.pid)
            time.sleep(0.6)
            busy = _cpu_seconds(serve.proc.pid) - cpu_before
            # Before the shedding listener, asyncio's loop used ~25 % of a core here.
            assert busy < 0.06, f"{loop}: {busy:.2f} s of CPU in 0.6 s while out of descriptors"
            assert len(serve.stderr) - size_before < 2_000
            shed = [x for x in serve.lines() if x["msg"].startswith("Out of file descriptors")]
            assert len(shed) <= 1
        time.sleep(0.2)
        answer = raw_request(serve.port, HEALTHZ)
        assert status_of(answer) == 200
    finally:
        assert serve.stop() == 0
    assert "Traceback" not in serve.stderr
    serve.lines()


def test_the_default_cap_comes_from_the_file_limit() -> None:
    serve = Serve(
        {
            "LOCAL_TOKEN": TOKEN,
            "JULES_API_KEY": "k",
            "JULES_API_BASE": "http://127.0.0.1:9/v1alpha",
            "POLL_INTERVAL_MS": "60000",
        },
        preexec=_limit_files(96),
    ).start()
    try:
        listening = next(x for x in serve.lines() if x["msg"] == "Service listening")
        assert (listening["fileLimit"], listening["maxConnections"]) == (96, 48)
        assert "MAX_CONNECTIONS" not in serve.stderr  # the default fits: no warning
        with exhausted(serve, 48):
            time.sleep(0.1)
            answer = raw_request(
                serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode())
            )
            assert status_of(answer) == 503
            assert header_of(answer, "Retry-After") == "10"
        serve.wait_for("Connection limit reached")
    finally:
        assert serve.stop() == 0


def test_a_cap_beyond_the_file_limit_is_a_warning_at_start_up() -> None:
    serve = Serve(
        {
            "LOCAL_TOKEN": TOKEN,
            "JULES_API_KEY": "k",
            "JULES_API_BASE": "http://127.0.0.1:9/v1alpha",
            "POLL_INTERVAL_MS": "60000",
            "MAX_CONNECTIONS": "500",
        },
        preexec=_limit_files(96),
    ).start()
    try:
        warnings = [x for x in serve.lines() if x["msg"].startswith("MAX_CONNECTIONS is more")]
        assert [
            (w["level"], w["maxConnections"], w["fileLimit"], w["allowed"]) for w in warnings
        ] == [("warning", 500, 96, 48)]
    finally:
        assert serve.stop() == 0
