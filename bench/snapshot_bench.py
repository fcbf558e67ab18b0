"""A 10.5 MB snapshot to a client reading 1 MB/s, while deltas are published (issue 13 §5).

`python -m bench.snapshot_bench [--json]` starts `bench.broadcast_server` (the real service,
a stub upstream of 6,000 sessions with long titles: a snapshot of ~10.5 MB) in its own
process, and connects one raw WebSocket client with `?snapshot=1` that reads at most
1 MB/s through a small receive buffer, so most of the snapshot has to wait in the service,
ten times over its slow-consumer limit (1 MiB) and for longer than the old 5 s cut.

While the snapshot is on its way the server publishes 100 deltas (20/s, held for the client
meanwhile); once it has arrived, 100 more (live). The client checks that the snapshot
arrived whole (every session), that it was not cut, and that all 200 deltas followed in
order (`seq` from the snapshot's plus one, no gap, no repeat). Run once uncompressed and
once with permessage-deflate offered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import struct
import sys
import time
import zlib
from typing import Any, Final

import aiohttp
import msgspec

from bench.run import free_port, status_kib
from control_room.tasks import run_loop

TOKEN: Final = "bench-token.with.dots"
SESSIONS: Final = 6_000  # issue 13's account
TITLE_BYTES: Final = 1_405  # with the rest of a mapped session, ~1.75 KB each: ~10.5 MB
READ_RATE: Final = 1_000_000  # bytes per second: issue 13's slow reader
RECV_BUFFER: Final = 64 * 1024  # the client's SO_RCVBUF: the rest must wait in the service
READ_CHUNK: Final = 16 * 1024
PUBLISH_RATE: Final = 20  # deltas per second, one per broadcast
PUBLISH_COUNT: Final = 100  # per run: one run during the snapshot, one after
HEARTBEAT_MS: Final = 30_000  # the default: a 10 s transfer sees no ping
START_TIMEOUT_S: Final = 60.0  # the server maps 6,000 sessions before it listens
PROBE_EVERY_S: Final = 0.01  # how often the event loop's responsiveness is sampled
RECEIVE_TIMEOUT_S: Final = 60.0  # at 1 MB/s the snapshot takes ~11 s; far past it, it failed
SYNC_TAIL: Final = b"\x00\x00\xff\xff"


class Cut(Exception):
    """The server closed the connection (or sent a close frame)."""


class SlowClient:
    """A raw WebSocket client that reads at most READ_RATE bytes a second."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = 0
        self.started = time.monotonic()
        self.deflate = False

    @classmethod
    async def connect(cls, port: int, query: str, *, deflate: bool) -> SlowClient | None:
        """Connect and upgrade; None while the service is not ready (503)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
        key = base64.b64encode(os.urandom(16)).decode()
        extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        writer.write(
            (
                f"GET /{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bearer.{TOKEN}\r\n"
                f"{extension}\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 503"):
            writer.close()
            return None
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"upgrade refused: {head[:200]!r}")
        client = cls(reader, writer)
        client.deflate = b"permessage-deflate" in head.lower()
        return client

    async def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            step = min(n, READ_CHUNK)
            try:
                chunk = await self.reader.readexactly(step)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise Cut("connection closed by the server") from None
            chunks.append(chunk)
            n -= step
            self.received += step
            ahead = self.received / READ_RATE - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        return b"".join(chunks)

    async def message(self) -> tuple[Any, int]:
        """The next data message, decoded, and its size on the wire (pings are skipped)."""
        while True:
            first, second = await self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._read(8))
            payload = await self._read(length)
            opcode = first & 0x0F
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                raise Cut(f"close frame {code} {payload[2:].decode(errors='replace')}")
            if opcode in (0x9, 0xA):
                continue  # a ping: the transfer is shorter than a heartbeat, never answered
            if first & 0x40:  # RSV1: compressed on its own (no context takeover)
                payload = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + SYNC_TAIL)
            return msgspec.json.decode(payload), length


async def one(deflate: bool) -> dict[str, Any]:
    """Start a server, send the snapshot to a slow client while publishing; the figures."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "LOCAL_TOKEN": TOKEN,
        "LOG_LEVEL": "warning",
        "HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.broadcast_server",
        "--rate",
        str(PUBLISH_RATE),
        "--count",
        str(PUBLISH_COUNT),
        "--sessions",
        str(SESSIONS),
        "--title-bytes",
        str(TITLE_BYTES),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    try:
        line = await asyncio.wait_for(server.stdout.readline(), START_TIMEOUT_S)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"server did not start: {line!r}")
        figures = await asyncio.wait_for(transfer(server, port, deflate), RECEIVE_TIMEOUT_S)
        figures["server_peak_rss_mib"] = status_kib(server.pid, "VmHWM") / 1024
        return figures
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()


async def watch_loop(port: int, worst: list[float], stop: asyncio.Event) -> None:
    """Ask `/healthz` every PROBE_EVERY_S until `stop`; keep the slowest answer (seconds):
    how long the service's event loop was busy with something else, at most."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            started = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                await response.read()
            worst[0] = max(worst[0], time.perf_counter() - started)
            await asyncio.sleep(PROBE_EVERY_S)


async def transfer(server: asyncio.subprocess.Process, port: int, deflate: bool) -> dict[str, Any]:
    """The measurement proper, against a started server."""
    client = None
    while client is None:  # the baseline poll maps 6,000 sessions first
        client = await SlowClient.connect(port, "?snapshot=1", deflate=deflate)
        if client is None:
            await asyncio.sleep(0.1)
    connected = time.monotonic()
    client.writer.close()  # that one only waited for readiness: the measured one follows
    stop, worst = asyncio.Event(), [0.0]
    watcher = asyncio.create_task(watch_loop(port, worst, stop))
    await asyncio.sleep(0.2)  # the watcher's connection is open and answering
    worst[0] = 0.0
    client = await SlowClient.connect(port, "?snapshot=1", deflate=deflate)
    assert client is not None
    connected = time.monotonic()
    server.send_signal(signal.SIGUSR2)  # 100 deltas while the snapshot is on its way
    figures: dict[str, Any] = {"deflate": client.deflate, "cut": False, "reason": ""}
    seqs: list[int] = []
    first_seq = 0
    try:
        snapshot, wire = await client.message()
        took = time.monotonic() - connected
        arrived_ns = time.time_ns()
        figures.update(
            type=snapshot.get("type"),
            sessions=len(snapshot.get("sessions", ())),
            whole=snapshot.get("type") == "snapshot" and len(snapshot["sessions"]) == SESSIONS,
            snapshot_bytes=len(msgspec.json.encode(snapshot)),
            wire_bytes=wire,
            seconds=took,
            rate_mb_s=client.received / took / 1e6,
        )
        first_seq = snapshot["seq"] + 1
        held = 0
        while len(seqs) < 2 * PUBLISH_COUNT:
            delta, _ = await client.message()
            seqs.append(delta["seq"])
            stamped_ns = int(delta["after"]["title"].split()[2])
            if stamped_ns < arrived_ns:  # published while the snapshot was on its way
                held += 1
                figures["longest_held_s"] = max(
                    figures.get("longest_held_s", 0.0), (arrived_ns - stamped_ns) / 1e9
                )
            figures["held"] = held
            if len(seqs) == PUBLISH_COUNT:  # the first run is over: 100 more, live
                server.send_signal(signal.SIGUSR2)
    except Cut as exc:
        figures.update(cut=True, reason=str(exc))
    finally:
        client.writer.close()
        stop.set()
        await watcher
    figures["loop_stall_ms"] = worst[0] * 1000
    figures.update(
        deltas=len(seqs),
        in_order=seqs == list(range(first_seq, first_seq + len(seqs))) if seqs else False,
        total_seconds=time.monotonic() - connected,
    )
    return figures


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as text."""
    lines = [
        f"{'client':<20} {'sessions':>8} {'snapshot MB':>11} {'on the wire MB':>14}"
        f" {'seconds':>7} {'MB/s':>5} {'cut':>4} {'whole':>5} {'deltas after':>12} {'in order':>8}"
        f" {'held':>4} {'longest held s':>14} {'server peak RSS MiB':>19}"
        f" {'slowest /healthz ms':>19}"
    ]
    for r in rows:
        name = "1 MB/s, deflate" if r["deflate"] else "1 MB/s, plain"
        if "seconds" not in r:
            lines.append(f"{name:<20} cut before the snapshot arrived: {r['reason']}")
            continue
        lines.append(
            f"{name:<20} {r['sessions']:>8,} {r['snapshot_bytes'] / 1e6:>11.2f}"
            f" {r['wire_bytes'] / 1e6:>14.2f} {r['seconds']:>7.1f} {r['rate_mb_s']:>5.2f}"
            f" {'yes' if r['cut'] else 'no':>4} {'yes' if r['whole'] else 'NO':>5}"
            f" {r['deltas']:>12} {'yes' if r['in_order'] else 'NO':>8}"
            f" {r.get('held', 0):>4} {r.get('longest_held_s', 0):>14.1f}"
            f" {r.get('server_peak_rss_mib', 0):>19.0f} {r.get('loop_stall_ms', 0):>19.0f}"
        )
    lines.append(
        f"({PUBLISH_COUNT} deltas published at {PUBLISH_RATE}/s from the connect, {PUBLISH_COUNT}"
        " more once those arrived; `held`: published before the snapshot had arrived, so held"
        f" for the client meanwhile; client SO_RCVBUF {RECV_BUFFER // 1024} KiB;"
        " slow-consumer limit 1 MiB; `/healthz` asked every 10 ms during the transfer: its"
        " slowest answer is how long the event loop was kept from every other client)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run plain and deflate; print a table (or JSON rows); exit 1 when a snapshot failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    async def run() -> list[dict[str, Any]]:
        return [await one(deflate) for deflate in (False, True)]

    rows = run_loop(run())
    print(json.dumps(rows) if args.json else table(rows))
    ok = all(
        r.get("whole") and not r["cut"] and r["in_order"] and r["deltas"] == 2 * PUBLISH_COUNT
        for r in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
