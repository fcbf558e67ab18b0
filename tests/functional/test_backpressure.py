"""Slow consumers are cut at the buffer limit; readers are never cut, even by a burst."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import aiohttp
from websockets.frames import Frame, Opcode

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.conftest import MS, TOKEN, ServiceFactory, connect, receive_n

LIMIT = 64 * 1024
BIG_TITLE = "x" * 40_000  # each delta of a retitled session carries it twice (before, after)


async def open_non_reading_client(service: Service) -> socket.socket:
    """A raw client that completes the handshake and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up quickly
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", service.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: bearer.{TOKEN}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = await loop.sock_recv(sock, 1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def churn(
    service: Service,
    sim: Simulator,
    ids: list[str],
    rounds: int,
    reader: aiohttp.ClientWebSocketResponse | None = None,
) -> list[dict[str, object]]:
    """Retitle every session each round; with a reader, read each poll before the next, as a
    client on another machine would between polls (here client and server share one CPU)."""
    assert service.poller is not None
    received = []
    for r in range(rounds):
        for sid in ids:
            sim.update(sid, title=f"{r}{BIG_TITLE}")
        await service.poller.poll_once()
        if reader is not None:
            received.extend(await receive_n(reader, len(ids)))
    return received


async def test_slow_consumer_is_terminated_and_fast_ones_get_everything(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    ids = [s["id"] for s in sim.bulk_create(5)]
    service = await make_service(max_buffer_bytes=LIMIT)
    fast = await connect(http, service)
    slow = await open_non_reading_client(service)
    try:
        deltas = await churn(service, sim, ids, rounds=40, reader=fast)  # ~16 MB each
        assert [d["seq"] for d in deltas] == list(range(1, 201))
        assert len(service.hub) == 1  # the slow one was cut, the fast one stays
        cut = service.metrics.connections_closed.labels("backpressure_limit")._value.get()
        assert cut == 1
    finally:
        slow.close()


async def test_a_burst_bigger_than_the_limit_does_not_cut_a_reading_client(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    ids = [s["id"] for s in sim.bulk_create(30)]
    service = await make_service(max_buffer_bytes=LIMIT)
    ws = await connect(http, service)
    received = asyncio.create_task(receive_n(ws, 30 * 3))
    await churn(service, sim, ids, rounds=3)  # each poll: 30 deltas, ~2.4 MB at once
    assert len(await received) == 90
    assert len(service.hub) == 1
    assert service.metrics.connections_closed.labels("backpressure_limit")._value.get() == 0


async def test_a_client_flooding_pings_it_never_reads_the_pongs_of_is_cut(
    make_service: ServiceFactory,
) -> None:
    """Pongs count against MAX_BUFFER_BYTES like everything else a client is sent."""
    service = await make_service(max_buffer_bytes=LIMIT)
    sock = await open_non_reading_client(service)
    loop = asyncio.get_running_loop()
    ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True)
    try:
        for _ in range(400):  # ~50 KB of pings a round, ~20 MB of pongs in all
            if service.metrics.connections_closed.labels("backpressure_limit")._value.get():
                break
            try:
                await loop.sock_sendall(sock, ping * 400)
            except OSError:  # cut: the server reset the connection
                break
        for _ in range(200):
            if service.metrics.connections_closed.labels("backpressure_limit")._value.get():
                break
            await asyncio.sleep(10 * MS)
    finally:
        sock.close()
    assert service.metrics.connections_closed.labels("backpressure_limit")._value.get() == 1
