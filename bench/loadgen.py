"""The load generator: one process holding many WebSocket clients, measuring on the client side.

Run by `bench.run` as `python -m bench.loadgen --url ws://... --token T --clients N`, in
processes of its own (never the server's). It speaks a line protocol on stdin/stdout:

    READY {"connected": ..., "failed": ..., "connect_s": ...}   once every client tried
    COUNT                                                        (stdin) how far along?
    COUNT <deliveries>                                           answer
    STOP                                                         (stdin) measurement over
    RESULT {...}                                                 the figures, then exit

Clients use picows (a Cython WebSocket client: a few microseconds per frame), answer pings
(the servers' heartbeats) and decode each text message just enough to read the title
`bench <cid> <time_ns>` that the upstream or the broadcast server stamped: the latency of
one delivery is the client's receive time minus that stamp (one machine, one clock). A
client closed by the server before STOP counts as cut. The process leaves by itself after
`--max-seconds`, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import resource
import sys
import time
from array import array
from typing import Any, Final

import msgspec
import picows

from control_room.tasks import run_loop

CONNECT_CONCURRENCY: Final = 64
"""Handshakes in flight per process: the servers' accept backlogs are 100-511, and a SYN
dropped on a full backlog waits a whole second for its retransmission."""
CONNECT_ATTEMPTS: Final = 3  # a refused connect (backlog full) is retried before it counts
CONNECT_RETRY_S: Final = 0.2
HANDSHAKE_TIMEOUT_S: Final = 30.0  # a busy server answers 10,000 handshakes in a few seconds
MAX_SECONDS: Final = 600.0  # the whole suite must finish in ten minutes; never outlive it
FILES_WANTED: Final = 20_000  # sockets held by one process, plus a margin


class _Title(msgspec.Struct):
    title: str = ""


class _Message(msgspec.Struct):
    """The only part of a delta the load generator reads: the new title."""

    after: _Title | None = None


_decode: Final = msgspec.json.Decoder(_Message).decode


class Stats:
    """What every client of this process received, merged as it arrives."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.payload_bytes = 0
        self.other = 0
        self.latencies_us = array("I")
        self.per_change: dict[int, list[int]] = {}  # cid -> [deliveries, max latency µs]
        self.cut = 0
        self.close_codes: dict[str, int] = {}
        self.stopping = False
        self.first_ns = 0
        self.last_ns = 0

    def on_text(self, payload: memoryview) -> None:
        """Account for one text message received now."""
        now = time.time_ns()
        try:
            message = _decode(payload)
        except msgspec.DecodeError:
            self.other += 1
            return
        after = message.after
        if after is None or not after.title.startswith("bench "):
            self.other += 1
            return
        _, cid_text, ns_text = after.title.split(" ", 2)
        cid = int(cid_text)
        latency = max(now - int(ns_text), 0) // 1000
        self.deliveries += 1
        self.payload_bytes += len(payload)
        self.latencies_us.append(min(latency, 0xFFFFFFFF))
        entry = self.per_change.get(cid)
        if entry is None:
            self.per_change[cid] = [1, latency]
        else:
            entry[0] += 1
            if latency > entry[1]:
                entry[1] = latency
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now

    def result(self) -> dict[str, Any]:
        """The figures, JSON-ready (latencies packed as base64 of little-endian uint32)."""
        return {
            "deliveries": self.deliveries,
            "payload_bytes": self.payload_bytes,
            "other": self.other,
            "cut": self.cut,
            "close_codes": self.close_codes,
            "per_change": {str(k): v for k, v in self.per_change.items()},
            "latencies_us": base64.b64encode(self.latencies_us.tobytes()).decode(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }


STATS: Final = Stats()


class Client(picows.WSListener):
    """One connection: counts what it receives, notices being cut."""

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        """Text frames are deltas (or snapshots); a close frame is answered and counted."""
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT:
            STATS.on_text(frame.get_payload_as_memoryview())
        elif kind == picows.WSMsgType.CLOSE:
            code = str(frame.get_close_code())
            STATS.close_codes[code] = STATS.close_codes.get(code, 0) + 1
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        """Before STOP, losing the connection means the server cut this client."""
        if not STATS.stopping:
            STATS.cut += 1


def raise_file_limit(wanted: int = FILES_WANTED) -> int:
    """Raise RLIMIT_NOFILE towards `wanted` (bounded by the hard limit); return the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _connect(url: str, token: str, gate: asyncio.Semaphore) -> picows.WSTransport | str:
    headers = [("Sec-WebSocket-Protocol", f"bearer.{token}")]
    error = "unknown"
    async with gate:
        for _ in range(CONNECT_ATTEMPTS):
            try:
                transport, _listener = await picows.ws_connect(
                    Client,
                    url,
                    extra_headers=headers,
                    websocket_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                    enable_auto_pong=True,
                )
                return transport
            except Exception as exc:  # refused, reset, timed out: retried, then counted
                error = type(exc).__name__
                await asyncio.sleep(CONNECT_RETRY_S)
    return error


async def _commands() -> None:
    """Answer COUNT until STOP (or end of input); stdin is read without a thread."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).strip()
        if line == b"COUNT":
            print(f"COUNT {STATS.deliveries}", flush=True)
        elif line == b"STOP" or not line:
            return


async def run(url: str, token: str, clients: int, max_seconds: float) -> None:
    """Connect, say READY, wait for STOP (or the deadline), say RESULT, leave."""
    raise_file_limit()
    started = time.perf_counter()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    outcomes = await asyncio.gather(*(_connect(url, token, gate) for _ in range(clients)))
    transports = [o for o in outcomes if not isinstance(o, str)]
    errors: dict[str, int] = {}
    for o in outcomes:
        if isinstance(o, str):
            errors[o] = errors.get(o, 0) + 1
    ready = {
        "connected": len(transports),
        "failed": clients - len(transports),
        "errors": errors,
        "connect_s": round(time.perf_counter() - started, 3),
    }
    print("READY " + json.dumps(ready), flush=True)
    remaining = max(max_seconds - (time.perf_counter() - started), 1.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_commands(), remaining)
    STATS.stopping = True
    result = STATS.result()
    result["connected"] = len(transports)
    print("RESULT " + json.dumps(result), flush=True)
    for transport in transports:
        transport.disconnect(graceful=False)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    args = parser.parse_args(argv)
    coro = run(args.url, args.token, args.clients, args.max_seconds)
    run_loop(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
