"""The set of connected clients: fan-out of each batch, heartbeat, and cutting slow consumers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from control_room import logging as logs
from control_room.auth import TokenSet
from control_room.broker.base import Batch
from control_room.metrics import Metrics
from control_room.ws.connection import Connection
from control_room.ws.frames import PING_FRAME, close_frame

GOING_AWAY: Final = 1001
TOKEN_REVOKED: Final = 4001
"""Close code for a client whose token a reload removed (4000-4999: application codes)."""

log = logs.get("ws")


class Hub:
    """Every live connection of this process; a broker sink.

    `deliver` writes the batch's frames (built once) to each client in turn and never
    awaits, so one slow client cannot delay the others. A client whose pending bytes are
    over the limit *before* a write is cut: checking before, not after, gives the kernel a
    chance to take a burst from a client that is reading, as Node's `bufferedAmount` check
    does.
    """

    def __init__(self, metrics: Metrics, *, max_buffer_bytes: int) -> None:
        self._metrics = metrics
        self._max_buffer = max_buffer_bytes
        self.connections: dict[int, Connection] = {}
        self.broadcasts = 0
        self.messages_sent = 0
        self.bytes_sent = 0

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        """Start delivering to `conn`."""
        self.connections[conn.id] = conn
        self._metrics.connections_active.set(len(self.connections))

    def remove(self, conn: Connection) -> None:
        """Stop delivering to `conn` (it closed or was cut)."""
        if self.connections.pop(conn.id, None) is not None:
            self._metrics.connections_active.set(len(self.connections))

    def deliver(self, batch: Batch) -> None:
        """Hand the batch to every client: same bytes, no await, cut those over the limit."""
        started = time.perf_counter()
        frames = batch.frames
        count = len(batch.entries)
        size = len(frames)
        limit = self._max_buffer
        delivered = 0
        slow: list[Connection] = []
        for conn in self.connections.values():
            if conn.catching_up:
                conn.held(batch)
                if conn.pending_bytes > limit:
                    slow.append(conn)
                continue
            transport = conn.transport
            if transport.get_write_buffer_size() > limit:
                slow.append(conn)
                continue
            if transport.is_closing():
                continue
            conn.write(frames, count)
            delivered += 1
        for conn in slow:
            self.cut_slow(conn)
        self.broadcasts += 1
        self.messages_sent += delivered * count
        self.bytes_sent += delivered * size
        metrics = self._metrics
        metrics.messages_sent.inc(delivered * count)
        metrics.bytes_sent.inc(delivered * size)
        metrics.broadcast_duration.observe(time.perf_counter() - started)
        client_count = len(self.connections)
        logging_info = log.isEnabledFor(logging.INFO)
        for delta, entry in zip(batch.deltas, batch.entries, strict=True):
            metrics.payload_size.observe(len(entry.payload))
            if not logging_info:
                continue
            log.info(
                "Broadcasting session delta",
                extra={
                    "type": delta.type,
                    "sessionId": delta.sessionId,
                    "seq": delta.seq,
                    "clientCount": client_count,
                    "payloadSize": len(entry.payload),
                },
            )

    def cut_slow(self, conn: Connection) -> None:
        """Terminate a client that is not reading fast enough."""
        log.warning(
            "Terminating slow consumer",
            extra={
                "clientId": conn.id,
                "bufferedAmount": conn.pending_bytes,
                "reason": "backpressure_limit",
            },
        )
        conn.terminate("backpressure_limit")
        self.remove(conn)

    def heartbeat(self) -> None:
        """One heartbeat tick: cut who did not answer the last ping, ping the others."""
        pinged = 0
        for conn in list(self.connections.values()):
            if not conn.alive:
                log.warning(
                    "Terminating dead connection",
                    extra={"clientId": conn.id, "reason": "heartbeat_timeout"},
                )
                conn.terminate("heartbeat_timeout")
                self.remove(conn)
                continue
            if conn.pending_bytes > self._max_buffer:
                self.cut_slow(conn)
                continue
            conn.alive = False
            if not conn.transport.is_closing():
                conn.transport.write(PING_FRAME)
                pinged += 1
        self._metrics.heartbeat_pings.inc(pinged)

    async def run_heartbeat(self, interval: float) -> None:
        """Tick the heartbeat every `interval` seconds, forever."""
        while True:
            await asyncio.sleep(interval)
            self.heartbeat()

    def revoke(self, valid: TokenSet) -> int:
        """Close (4001 `token_revoked`) every client whose principal is not in `valid`.

        Clients of the remaining tokens are untouched. Returns how many were closed; one
        warning line per revoked token, naming its fingerprint and count.
        """
        frame = close_frame(TOKEN_REVOKED, "token_revoked")
        closed: dict[str, int] = {}
        for conn in list(self.connections.values()):
            principal = conn.principal
            if principal is None or principal in valid:
                continue
            conn.close(frame, "token_revoked")
            self.remove(conn)
            closed[principal.fingerprint] = closed.get(principal.fingerprint, 0) + 1
        for fingerprint, count in closed.items():
            log.warning(
                "Closed clients of a revoked token",
                extra={"fingerprint": fingerprint, "clientCount": count, "code": TOKEN_REVOKED},
            )
        return sum(closed.values())

    def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        """Say goodbye to every client with a close frame (1001 on shutdown)."""
        frame = close_frame(code, reason)
        for conn in list(self.connections.values()):
            conn.close(frame, "shutdown")
