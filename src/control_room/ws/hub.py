"""The set of connected clients: fan-out of each batch, heartbeat, and cutting slow consumers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from control_room import logging as logs
from control_room.auth import TokenSet
from control_room.broker.base import Batch
from control_room.messages import TOKEN_REVOKED
from control_room.metrics import Metrics
from control_room.ws.connection import Connection
from control_room.ws.frames import PING_FRAME, close_frame
from control_room.ws.prepared import Key, batch_frames

GOING_AWAY: Final = 1001

log = logs.get("ws")


class Hub:
    """Every live connection of this process; a broker sink.

    Clients are grouped by what they share (view and wire variant). `deliver` builds the
    batch's frames once per group that has clients and writes them to each client in turn,
    never awaiting, so one slow client cannot delay the others. A client whose pending bytes are
    over the limit *before* a write is cut: checking before, not after, gives the kernel a
    chance to take a burst from a client that is reading, as Node's `bufferedAmount` check
    does.
    """

    def __init__(self, metrics: Metrics, *, max_buffer_bytes: int) -> None:
        self._metrics = metrics
        self._max_buffer = max_buffer_bytes
        self.connections: dict[int, Connection] = {}
        self.groups: dict[Key, dict[int, Connection]] = {}
        self.broadcasts = 0
        self.messages_sent = 0
        self.bytes_sent = 0

    @property
    def max_buffer(self) -> int:
        """Bytes a client may leave unread before it is cut (MAX_BUFFER_BYTES)."""
        return self._max_buffer

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        """Start delivering to `conn`."""
        self.connections[conn.id] = conn
        self.groups.setdefault(conn.key, {})[conn.id] = conn
        self._metrics.connections_active.set(len(self.connections))

    def remove(self, conn: Connection) -> None:
        """Stop delivering to `conn` (it closed or was cut)."""
        if self.connections.pop(conn.id, None) is not None:
            self._leave_group(conn)
            self._metrics.connections_active.set(len(self.connections))

    def regroup(self, conn: Connection, key: Key) -> None:
        """Deliver to `conn` under another view or variant from the next batch on."""
        if conn.id in self.connections:
            self._leave_group(conn)
            self.groups.setdefault(key, {})[conn.id] = conn
        conn.key = key

    def _leave_group(self, conn: Connection) -> None:
        group = self.groups.get(conn.key)
        if group is not None:
            group.pop(conn.id, None)
            if not group:
                del self.groups[conn.key]

    def deliver(self, batch: Batch) -> None:
        """Hand the batch to every client: same bytes, no await, cut those over the limit."""
        started = time.perf_counter()
        limit = self._max_buffer
        messages = sent = 0
        slow: list[Connection] = []
        for key, group in self.groups.items():
            frames, count = batch_frames(batch, key)
            if not count:
                continue
            size = len(frames)
            for conn in group.values():
                if conn.catching_up:
                    conn.held(batch)
                    if conn.held_bytes > limit:
                        slow.append(conn)
                    continue
                transport = conn.transport
                if transport.get_write_buffer_size() > limit:
                    slow.append(conn)
                    continue
                if not conn.open:  # closing: its close frame is out, nothing follows it
                    continue
                conn.write(frames, count)
                messages += count
                sent += size
        for conn in slow:
            self.cut_slow(conn)
        self.broadcasts += 1
        self.messages_sent += messages
        self.bytes_sent += sent
        metrics = self._metrics
        metrics.messages_sent.inc(messages)
        metrics.bytes_sent.inc(sent)
        metrics.broadcast_duration.observe(time.perf_counter() - started)
        client_count = len(self.connections)
        logging_info = log.isEnabledFor(logging.INFO)
        for entry in batch.events:
            metrics.payload_size.observe(len(entry.payload))
            if not logging_info:
                continue
            log.info(
                "Broadcasting session delta"
                if entry.channel == "sessions"
                else "Broadcasting activity",
                extra={
                    "type": entry.type,
                    "sessionId": entry.session_id,
                    "seq": entry.seq,
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
            pending = conn.held_bytes if conn.catching_up else conn.pending_bytes
            if pending > self._max_buffer:
                self.cut_slow(conn)
                continue
            conn.alive = False
            if conn.open:
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

    def close_all(
        self,
        code: int = GOING_AWAY,
        reason: str = "server shutting down",
        label: str = "shutdown",
    ) -> None:
        """Say goodbye to every client with a close frame (1001 on shutdown); `label` is
        the close reason counted in metrics and logs."""
        frame = close_frame(code, reason)
        for conn in list(self.connections.values()):
            # No lingering for answers: the service is going away, and its loop with it.
            conn.close(frame, label, linger=False)
