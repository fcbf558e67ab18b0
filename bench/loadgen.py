"""The load generator: one process holding many WebSocket clients, measuring on the client side.

Run by `bench.run` as `python -m bench.loadgen --url ws://... --token T --clients N`, in
processes of its own (never the server's), optionally with `--variant` (how the clients ask
for messages: plain, deflate, msgpack, patch, batch, or a mix of four) and `--views N`
(clients spread over N distinct subscriptions, see `view_params`). It speaks a line
protocol on stdin/stdout:

    READY {"connected": ..., "failed": ..., "connect_s": ...}   once every client tried
    COUNT                                                        (stdin) how far along?
    COUNT <deliveries>                                           answer
    STOP                                                         (stdin) measurement over
    RESULT {...}                                                 the figures, then exit

Clients use picows (a Cython WebSocket client: a few microseconds per frame), answer pings
(the servers' heartbeats) and decode each message just enough to read the title
`bench <cid> <time_ns>` that the upstream or the broadcast server stamped: the latency of
one delivery is the client's receive time minus that stamp (one machine, one clock).
Compressed frames (RSV1) are inflated first, binary frames are MessagePack, a JSON Patch
delta carries the title in its `/title` operation and a `batch` message one delivery per
delta in it, so every variant is counted the same way. A client closed by the server
before STOP counts as cut. The process leaves by itself after `--max-seconds`, whatever
happens.
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
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
import picows

from bench.workload import VIEW_MODES, view_params
from control_room.tasks import run_loop

CONNECT_CONCURRENCY: Final = 64
"""Handshakes in flight per process: the servers' accept backlogs are 100-511, and a SYN
dropped on a full backlog waits a whole second for its retransmission."""
CONNECT_ATTEMPTS: Final = 3  # a refused connect (backlog full) is retried before it counts
CONNECT_RETRY_S: Final = 0.2
HANDSHAKE_TIMEOUT_S: Final = 30.0  # a busy server answers 10,000 handshakes in a few seconds
MAX_SECONDS: Final = 600.0  # the whole suite must finish in ten minutes; never outlive it
FILES_WANTED: Final = 20_000  # sockets held by one process, plus a margin
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024  # a snapshot of tens of thousands of sessions

MSGPACK_PROTOCOL: Final = "control-room.v1+msgpack"
DEFLATE_OFFER: Final = "permessage-deflate"  # what browsers and Node `ws` offer, bare
SYNC_TAIL: Final = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: appended before inflating

VARIANTS: Final = ("plain", "deflate", "msgpack", "patch", "batch", "mix")
MIX: Final = ("plain", "deflate", "msgpack", "patch+batch")
"""What `--variant mix` cycles through, client by client: four distinct wire variants."""


@dataclass(frozen=True, slots=True)
class ClientVariant:
    """How one client asks for its messages (the default: the seed's JSON text frames)."""

    deflate: bool = False
    msgpack: bool = False
    patch: bool = False
    batch: bool = False

    @classmethod
    def named(cls, name: str) -> ClientVariant:
        """`plain`, `deflate`, `msgpack`, `patch`, `batch`, or several joined by `+`."""
        parts = set(name.split("+")) - {"plain"}
        unknown = parts - {"deflate", "msgpack", "patch", "batch"}
        if unknown:
            raise ValueError(f"unknown variant part(s): {', '.join(sorted(unknown))}")
        return cls(
            deflate="deflate" in parts,
            msgpack="msgpack" in parts,
            patch="patch" in parts,
            batch="batch" in parts,
        )


def variant_for(variant: str, index: int) -> ClientVariant:
    """The variant of the `index`-th client of a process run with `--variant variant`."""
    if variant == "mix":
        return ClientVariant.named(MIX[index % len(MIX)])
    return ClientVariant.named(variant)


SPREADS: Final = ("cycle", "block")


def spread_index(spread: str, index: int, clients: int, kinds: int) -> int:
    """Which view or mix variant the `index`-th client to connect takes, as an index that
    `view_params` and `variant_for` reduce modulo their count (`kinds` the larger of them).

    `cycle`: one of each in turn, as clients of a real service arrive; `block`: the first
    `clients / kinds` take the first, and so on, so each group's clients are neighbours in
    connection order (and in the server's memory).
    """
    if spread == "cycle":
        return index
    if spread == "block":
        return index * kinds // max(clients, 1)
    raise ValueError(f"unknown spread {spread!r}; expected one of {', '.join(SPREADS)}")


def connect_request(
    url: str, token: str, variant: ClientVariant, view: list[tuple[str, str]]
) -> tuple[str, list[tuple[str, str]]]:
    """The URL (with the variant's and view's query) and the extra headers of one client."""
    query = list(view)
    if variant.patch:
        query.append(("updates", "patch"))
    if variant.batch:
        query.append(("batch", "1"))
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query)
    protocols = f"{MSGPACK_PROTOCOL}, bearer.{token}" if variant.msgpack else f"bearer.{token}"
    headers = [("Sec-WebSocket-Protocol", protocols)]
    if variant.deflate:
        headers.append(("Sec-WebSocket-Extensions", DEFLATE_OFFER))
    return url, headers


class _Title(msgspec.Struct):
    title: str = ""


class _Op(msgspec.Struct):
    path: str = ""
    value: Any = None


class _Message(msgspec.Struct):
    """The only parts of a message the load generator reads: where the new title is."""

    after: _Title | None = None
    patch: list[_Op] | None = None
    deltas: list[_Message] | None = None


_json_decode: Final = msgspec.json.Decoder(_Message).decode
_msgpack_decode: Final = msgspec.msgpack.Decoder(_Message).decode


def titles(message: _Message) -> Iterator[str]:
    """The new titles a message carries: one per delta (a batch holds several)."""
    if message.deltas is not None:
        for delta in message.deltas:
            yield from titles(delta)
    elif message.after is not None:
        yield message.after.title
    elif message.patch is not None:
        for op in message.patch:
            if op.path == "/title" and isinstance(op.value, str):
                yield op.value


def decode(payload: bytes | memoryview, *, binary: bool) -> _Message:
    """A message's title-bearing parts (MessagePack when binary); msgspec.DecodeError."""
    return _msgpack_decode(payload) if binary else _json_decode(payload)


def inflate(payload: bytes | memoryview, inflater: Any | None = None) -> bytes:
    """One permessage-deflate message's payload (RFC 7692 7.2.2): with a fresh inflater
    (the server compressed it on its own) unless the connection keeps one."""
    if inflater is None:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data: bytes = inflater.decompress(bytes(payload) + SYNC_TAIL)
    return data


class Stats:
    """What every client of this process received, merged as it arrives."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.payload_bytes = 0
        self.wire_bytes = 0
        self.messages = 0
        self.compressed = 0
        self.other = 0
        self.latencies_us = array("I")
        self.per_change: dict[int, list[int]] = {}  # cid -> [deliveries, max latency µs]
        self.cut = 0
        self.close_codes: dict[str, int] = {}
        self.negotiated: dict[str, int] = {}
        self.stopping = False
        self.first_ns = 0
        self.last_ns = 0

    def on_text(self, payload: bytes | memoryview) -> None:
        """Account for one uncompressed JSON text message received now."""
        self.on_message(payload, len(payload), binary=False)

    def on_message(
        self, payload: bytes | memoryview, wire: int, *, binary: bool, compressed: bool = False
    ) -> None:
        """Account for one message received now: `payload` decoded from `wire` bytes.

        Every `bench` title in it is one delivery; `wire` is added once per message that
        held at least one, so wire bytes ÷ deliveries is what a delivery cost on the wire.
        """
        now = time.time_ns()
        try:
            found = [t for t in titles(decode(payload, binary=binary)) if t.startswith("bench ")]
        except msgspec.DecodeError:
            self.other += 1
            return
        if not found:
            self.other += 1
            return
        self.messages += 1
        self.compressed += compressed
        self.wire_bytes += wire
        self.payload_bytes += len(payload)
        for title in found:
            self._delivery(title, now)

    def _delivery(self, title: str, now: int) -> None:
        _, cid_text, ns_text = title.split(" ", 2)
        cid = int(cid_text)
        latency = max(now - int(ns_text), 0) // 1000
        self.deliveries += 1
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
            "wire_bytes": self.wire_bytes,
            "messages": self.messages,
            "compressed": self.compressed,
            "other": self.other,
            "cut": self.cut,
            "close_codes": self.close_codes,
            "negotiated": self.negotiated,
            "per_change": {str(k): v for k, v in self.per_change.items()},
            "latencies_us": base64.b64encode(self.latencies_us.tobytes()).decode(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }


STATS: Final = Stats()


def negotiated(headers: Any) -> tuple[str, bool, bool]:
    """From a 101's headers: (variant label, deflate accepted, server keeps its context)."""
    extensions = ",".join(headers.getall("Sec-WebSocket-Extensions", []))
    deflate = "permessage-deflate" in extensions.lower()
    takeover = deflate and "server_no_context_takeover" not in extensions.lower()
    protocol = headers.get("Sec-WebSocket-Protocol", "")
    parts = ["msgpack"] if protocol == MSGPACK_PROTOCOL else []
    if deflate:
        parts.append("deflate" if not takeover else "deflate-takeover")
    return "+".join(parts) or "plain", deflate, takeover


class Client(picows.WSListener):
    """One connection: counts what it receives, notices being cut."""

    def __init__(self) -> None:
        self._inflater: Any | None = None  # only when the server keeps its deflate context

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        """Note what the server accepted (a fresh inflater per message unless takeover)."""
        label, _deflate, takeover = negotiated(transport.response.headers)
        STATS.negotiated[label] = STATS.negotiated.get(label, 0) + 1
        if takeover:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        """Data frames are deltas (or snapshots); a close frame is answered and counted."""
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT or kind == picows.WSMsgType.BINARY:
            payload: bytes | memoryview = frame.get_payload_as_memoryview()
            wire = len(payload)
            compressed = frame.rsv1
            if compressed:
                payload = inflate(payload, self._inflater)
            binary = kind == picows.WSMsgType.BINARY
            STATS.on_message(payload, wire, binary=binary, compressed=compressed)
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


async def connect(
    url: str, headers: list[tuple[str, str]], gate: asyncio.Semaphore
) -> picows.WSTransport | str:
    """One client, connected (retried on refusal), or the name of the error that stopped it."""
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
                    max_frame_size=MAX_FRAME_BYTES,
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


async def run(
    url: str,
    token: str,
    clients: int,
    max_seconds: float,
    *,
    variant: str = "plain",
    views: int = 0,
    view_mode: str = "all",
    spread: str = "cycle",
) -> None:
    """Connect, say READY, wait for STOP (or the deadline), say RESULT, leave.

    `views` 0 keeps every client on the default stream (no subscription).
    """
    raise_file_limit()
    started = time.perf_counter()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    order = [spread_index(spread, i, clients, max(views, len(MIX))) for i in range(clients)]
    requests = [
        connect_request(
            url,
            token,
            variant_for(variant, j),
            view_params(view_mode, views, j) if views else [],
        )
        for j in order
    ]
    outcomes = await asyncio.gather(*(connect(u, h, gate) for u, h in requests))
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
        "negotiated": STATS.negotiated,
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
    parser.add_argument(
        "--variant",
        default="plain",
        help=f"{', '.join(VARIANTS)}, or parts joined by + (e.g. patch+batch)",
    )
    parser.add_argument("--views", type=int, default=0, help="distinct views (0: no filter)")
    parser.add_argument("--view-mode", choices=VIEW_MODES, default="all")
    parser.add_argument("--spread", choices=SPREADS, default="cycle")
    args = parser.parse_args(argv)
    if args.variant != "mix":
        try:
            ClientVariant.named(args.variant)
        except ValueError as exc:
            parser.error(str(exc))
    coro = run(
        args.url,
        args.token,
        args.clients,
        args.max_seconds,
        variant=args.variant,
        views=args.views,
        view_mode=args.view_mode,
        spread=args.spread,
    )
    run_loop(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
