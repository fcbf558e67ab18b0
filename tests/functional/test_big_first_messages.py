"""A snapshot of megabytes reaches a slow reader whole; a reader that stops is still cut."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import msgspec
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator
from control_room.ws import handler
from tests.conftest import MS, TOKEN, ServiceFactory

LIMIT = 256 * 1024  # the slow-consumer limit: the snapshot is many times larger
SESSIONS = 1_500
TITLE = "t" * 4_000  # ~4.5 KB a session: a snapshot of ~6.7 MB
"""More than the kernel's socket buffers on loopback (4 MB) can take at once from a client
that reads slowly: the rest must wait in the service, over the slow-consumer limit."""


class SlowReader:
    """A raw WebSocket client that reads at most `rate` bytes a second."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.rate = 4_000_000.0

    @classmethod
    async def connect(cls, service: Service, query: str) -> SlowReader:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", service.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bearer.{TOKEN}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            step = min(n, 16 * 1024)
            chunks.append(await self.reader.readexactly(step))
            n -= step
            await asyncio.sleep(step / self.rate)
        return b"".join(chunks)

    async def message(self) -> Any:
        first, second = await self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read(8))
        payload = await self._read(length)
        assert first & 0x0F in (1, 9), first  # text (or a ping)
        return msgspec.json.decode(payload) if first & 0x0F == 1 else {"type": "ping"}


async def big_service(make_service: ServiceFactory, sim: Simulator, title: str) -> Service:
    for session in sim.bulk_create(SESSIONS):
        sim.update(session["id"], title=title)
    return await make_service(max_buffer_bytes=LIMIT)


async def test_a_snapshot_many_times_the_limit_reaches_a_slow_reader_whole(
    make_service: ServiceFactory, sim: Simulator
) -> None:
    service = await big_service(make_service, sim, TITLE)
    assert service.poller is not None
    client = await SlowReader.connect(service, "?snapshot=1")
    changed = next(iter(service.state.sessions))
    sim.set_state(changed, "FAILED")
    reading = asyncio.create_task(client.message())
    await asyncio.sleep(50 * MS)  # the snapshot is on its way: publish during it
    await service.poller.poll_once()
    snapshot = await asyncio.wait_for(reading, 30)
    assert snapshot["type"] == "snapshot"
    assert len(snapshot["sessions"]) == SESSIONS
    delta = await asyncio.wait_for(client.message(), 5)
    assert (delta["type"], delta["sessionId"], delta["seq"]) == ("updated", changed, 1)
    assert service.metrics.connections_closed.labels("backpressure_limit")._value.get() == 0
    client.writer.close()


async def test_a_reader_that_stops_during_its_snapshot_is_cut(
    make_service: ServiceFactory, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler, "CATCH_UP_STALL_S", 300 * MS)
    service = await big_service(make_service, sim, TITLE)
    client = await SlowReader.connect(service, "?snapshot=1")  # then never reads
    for _ in range(500):
        if service.metrics.connections_closed.labels("backpressure_limit")._value.get():
            break
        await asyncio.sleep(10 * MS)
    assert service.metrics.connections_closed.labels("backpressure_limit")._value.get() == 1
    assert len(service.hub) == 0
    client.writer.close()
