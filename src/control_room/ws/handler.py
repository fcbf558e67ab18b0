"""The WebSocket endpoint: auth before upgrade, snapshot or resume, then the read loop."""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, hdrs, web

from control_room import logging as logs
from control_room.auth import WebSocketAuth
from control_room.broker.base import Broker, HistoryGone
from control_room.metrics import Metrics
from control_room.models import encode
from control_room.poller import Poller
from control_room.responses import json_error, not_ready
from control_room.server.guard import Guard
from control_room.ws.connection import Connection
from control_room.ws.frames import close_frame, text_frame
from control_room.ws.hub import TOKEN_REVOKED, Hub
from control_room.ws.params import BadParameter, StreamRequest, parse_stream_request

MAX_CLIENT_MESSAGE_BYTES: Final = 64 * 1024  # clients send nothing yet; 64 KiB is generous
REPLAY_CHUNK_BYTES: Final = 256 * 1024  # write replay in slices, waiting for each to drain
HANDSHAKE_TIMEOUT_S: Final = 10.0  # closing handshake wait; a client that vanished won't reply

log = logs.get("ws")


class WebSocketEndpoint:
    """Accepts clients on `/` and hands them to the hub."""

    def __init__(
        self, guard: Guard, hub: Hub, broker: Broker, poller: Poller, metrics: Metrics
    ) -> None:
        self._guard = guard
        logs.drop_protocol_mismatch_warnings()
        self._hub = hub
        self._broker = broker
        self._poller = poller
        self._metrics = metrics

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, validate the query, upgrade, then read until the client goes."""
        auth = self._guard.websocket(request)
        if not isinstance(auth, WebSocketAuth):
            return auth  # 429, 403 or 401, counted and logged by the guard
        try:
            wanted = parse_stream_request(request.query, self._broker.position)
        except BadParameter as exc:
            self._metrics.connections_rejected.labels("bad_request").inc()
            return json_error(400, "bad_request", parameter=exc.parameter, message=str(exc))
        if wanted.snapshot and not self._poller.ready:
            # An empty snapshot now would never be corrected: the first poll is a baseline
            # and publishes nothing. Ask the client to come back, as GET /api/sessions does.
            return not_ready()
        transport = request.transport
        if transport is None:  # the client left during the handshake
            return web.Response(status=499)
        ws = web.WebSocketResponse(
            # The guard chose the subprotocol from every offer line (RFC 6455: one list);
            # aiohttp would read only the first line, so it is told none and the choice is
            # set here (its "no overlap" warning is dropped by the logging setup).
            protocols=(),
            autoping=False,
            compress=False,  # frames are built once and shared; deflate would forbid that
            max_msg_size=MAX_CLIENT_MESSAGE_BYTES,
            timeout=HANDSHAKE_TIMEOUT_S,
        )
        if auth.protocol is not None:
            ws.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = auth.protocol
        await ws.prepare(request)
        peer = request.remote or "?"
        conn = Connection(transport, peer, auth.principal)
        if not self._guard.valid(auth.principal):  # revoked while the 101 was being sent
            conn.close(close_frame(TOKEN_REVOKED, "token_revoked"), "token_revoked")
            self._metrics.connections_closed.labels("token_revoked").inc()
            return ws
        replay = self._attach(conn, wanted)
        self._metrics.connections_accepted.inc()
        log.info(
            "WebSocket client connected",
            extra={"clientId": conn.id, "remote": peer, "clientCount": len(self._hub)},
        )
        try:
            if replay is not None:
                await self._replay(conn, replay)
            await self._read(ws, conn)
        except ConnectionError:  # the client vanished mid-write: ordinary, no traceback
            conn.close_reason = conn.close_reason or "connection_reset"
        except Exception:
            conn.close_reason = conn.close_reason or "error"
            log.exception("WebSocket handler failed", extra={"clientId": conn.id})
        finally:
            self._hub.remove(conn)
            if not ws.closed and not transport.is_closing():
                transport.close()
            reason = conn.close_reason or "normal"
            self._metrics.connections_closed.labels(reason).inc()
            log.info(
                "WebSocket client disconnected",
                extra={"clientId": conn.id, "reason": reason, "clientCount": len(self._hub)},
            )
        return ws

    def _attach(self, conn: Connection, wanted: StreamRequest) -> int | None:
        """Register the client; with no await here, nothing is published in between.

        Returns the seq to replay after, when history has to be fetched first.
        """
        position = self._broker.position
        if wanted.snapshot:
            message = {
                "type": "snapshot",
                "epoch": position.epoch,
                "seq": position.seq,
                "sessions": list(self._poller.sessions.values()),
            }
            conn.write(text_frame(encode(message)), 1)
        elif wanted.since is not None:
            if wanted.epoch not in (None, position.epoch):
                self._reset(conn, "epoch_changed")
            elif wanted.since < position.seq:
                conn.hold()
                self._hub.add(conn)
                return wanted.since
            else:
                self._metrics.replays.labels("recovered").inc()
        self._hub.add(conn)
        return None

    def _reset(self, conn: Connection, reason: str) -> None:
        position = self._broker.position
        message = {"type": "reset", "epoch": position.epoch, "seq": position.seq, "reason": reason}
        conn.write(text_frame(encode(message)), 1)
        self._metrics.replays.labels(reason).inc()

    async def _replay(self, conn: Connection, since: int) -> None:
        """Send history after `since` in drained slices, then release held live batches."""
        try:
            entries = await self._broker.history(since)
        except HistoryGone as exc:
            self._reset(conn, exc.reason)
            conn.release(self._broker.position.seq)  # live deltas after the reset's seq
            return
        last = since
        chunk: list[bytes] = []
        size = 0
        for entry in entries:
            frame = text_frame(entry.payload)
            chunk.append(frame)
            size += len(frame)
            last = entry.seq
            if size >= REPLAY_CHUNK_BYTES:
                if not await self._write_drained(conn, chunk):
                    return
                chunk, size = [], 0
        if chunk and not await self._write_drained(conn, chunk):
            return
        conn.release(last)
        self._metrics.replays.labels("recovered").inc()

    @staticmethod
    async def _write_drained(conn: Connection, frames: list[bytes]) -> bool:
        if not conn.open:
            return False
        conn.write(b"".join(frames), len(frames))
        # Let the kernel take this slice before the next: replay never floods the buffer.
        # A transport exposes no event for "buffer below N", so poll it briefly.
        while conn.open and conn.transport.get_write_buffer_size() > REPLAY_CHUNK_BYTES:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        return conn.open

    async def _read(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        """Pongs keep the client alive; pings are answered; other messages are ignored."""
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.PONG:
                conn.alive = True
            elif kind is WSMsgType.PING:
                conn.alive = True
                await ws.pong(msg.data)
            elif kind in (WSMsgType.TEXT, WSMsgType.BINARY):
                conn.alive = True  # protocol has no client messages yet: ignored
            elif kind is WSMsgType.ERROR:
                error = msg.data
                if isinstance(error, WebSocketError) and error.code == WSCloseCode.MESSAGE_TOO_BIG:
                    conn.close_reason = conn.close_reason or "message_too_big"
                    log.warning(
                        "Client message too big; closed with 1009",
                        extra={"clientId": conn.id, "limit": MAX_CLIENT_MESSAGE_BYTES},
                    )
                elif isinstance(error, WebSocketError):  # bad framing: aiohttp closed it
                    conn.close_reason = conn.close_reason or "protocol_error"
                elif isinstance(error, ConnectionError):
                    conn.close_reason = conn.close_reason or "connection_reset"
                return
            else:  # CLOSE, CLOSING, CLOSED
                return
