"""The WebSocket endpoint: auth before the upgrade, the handshake, snapshot or resume, then
commands as the client sends them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Final

from aiohttp import hdrs, web

from control_room import logging as logs
from control_room.auth import MSGPACK_PROTOCOL, WebSocketAuth
from control_room.broker.base import (
    ACTIVITIES,
    SESSIONS,
    Broker,
    BrokerUnavailable,
    Channel,
    Entry,
    HistoryGone,
)
from control_room.commands import Caller, Commands, error_result
from control_room.messages import (
    TOKEN_REVOKED,
    BadMessage,
    MessageId,
    ResetMessage,
    ResultMessage,
    SnapshotMessage,
    Subscribe,
    Subscription,
    decode_command,
    peek_id,
)
from control_room.metrics import Metrics
from control_room.models import Position, encode
from control_room.responses import json_error, not_ready
from control_room.server.guard import Guard
from control_room.server.http import FrontHandler
from control_room.state import State
from control_room.store.base import StoreError
from control_room.tasks import cancel_and_wait
from control_room.views import BadFilter, View
from control_room.ws.connection import Connection
from control_room.ws.frames import close_frame
from control_room.ws.handshake import (
    WEBSOCKET_VERSION,
    HandshakeError,
    UnsupportedVersion,
    accept_key,
    check_upgrade,
    negotiate_deflate,
)
from control_room.ws.handshake import response as handshake_response
from control_room.ws.hub import Hub
from control_room.ws.params import (
    AHEAD_OF_SERVER,
    BadParameter,
    StreamRequest,
    parse_stream_request,
)
from control_room.ws.prepared import (
    DEFAULT_COMPRESSION_MIN_BYTES,
    Key,
    Variant,
    frames,
    single,
    single_off_loop,
)
from control_room.ws.reader import OP_BINARY, Message, Reader

MAX_CLIENT_MESSAGE_BYTES: Final = 64 * 1024  # a command is a few hundred bytes; a prompt fits
REPLAY_CHUNK_BYTES: Final = 256 * 1024  # write replay in slices, waiting for each to drain
CATCH_UP_STALL_S: Final = 30.0
"""A client that takes nothing of its snapshot or replay for this long has stopped reading:
it is cut as a slow consumer (a heartbeat interval: as long as a live client may be silent)."""
COMMAND_RATE_PER_S: Final = 10.0
"""Client messages per second, sustained: a person clicking, or a script approving a list,
stays far below; a loop sending as fast as it can is throttled."""
COMMAND_BURST: Final = 20  # messages at once: a dashboard re-subscribing and a few clicks
COMMAND_FLOOD_LIMIT: Final = 100
"""Messages refused for rate in a row before the connection is closed with 1008: a client
that ignores a hundred `rate_limited` answers is not going to slow down."""
MAX_COMMANDS_IN_FLIGHT: Final = 8
"""Commands of one connection waiting on Jules at once; more are answered `rate_limited`
(each can take up to the upstream's timeout, and each holds a slot of the Jules client)."""
POLICY_VIOLATION: Final = 1008
INTERNAL_ERROR: Final = 1011
TRY_AGAIN_LATER: Final = 1013

log = logs.get("ws")


class _Bucket:
    """A token bucket: `rate` per second, at most `burst` saved up."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class _Commands:
    """A connection's command state, made when it first sends something: its rate bucket,
    refusals in a row, and its commands still waiting on the upstream."""

    __slots__ = ("bucket", "caller", "deferred", "refused", "tasks")

    def __init__(self, caller: Caller) -> None:
        self.bucket = _Bucket(COMMAND_RATE_PER_S, COMMAND_BURST)
        self.caller = caller
        self.refused = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.deferred: list[Message] = []
        """Messages that arrived while the client caught up, answered in order after it."""


class _Detached(web.StreamResponse):
    """What the handler gives aiohttp for an upgraded connection it no longer owns: there
    is nothing left to write (the 101 went out directly) and nothing to close."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class _Snapshots:
    """Each view's snapshot at the newest position, encoded once, and framed once per wire
    variant (compressed off the loop when big): a thousand dashboards reconnecting after a
    restart cost one encoding and one compression, not a thousand. Only the newest
    position is kept: one poll with changes and the cache starts over."""

    def __init__(self) -> None:
        self._at: Position | None = None
        self._encoded: dict[View, bytes] = {}
        self._framed: dict[Key, asyncio.Future[bytes]] = {}

    def encoded(self, position: Position, view: View, make: Callable[[], SnapshotMessage]) -> bytes:
        """The view's snapshot at `position` (the current one: it becomes the newest) as JSON."""
        if position != self._at:
            self._at = position
            self._encoded.clear()
            self._framed.clear()
        found = self._encoded.get(view)
        if found is None:
            found = self._encoded[view] = encode(make())
        return found

    async def framed(self, position: Position, key: Key, message: bytes) -> bytes:
        """`message` (the snapshot of `key`'s view at `position`) framed for `key`'s variant;
        shared while `position` is still the newest, made for this client alone otherwise."""
        if position != self._at:
            return await single_off_loop(message, key[1])
        found = self._framed.get(key)
        if found is None:
            found = self._framed[key] = asyncio.ensure_future(single_off_loop(message, key[1]))
        return await asyncio.shield(found)


class WebSocketEndpoint:
    """Accepts clients on `/`, hands their sockets to the hub, runs the commands they send.

    The upgrade is answered here, not by aiohttp: once the 101 is written the socket is
    detached from aiohttp and its protocol becomes the `Connection` itself, so an open
    connection holds no request, response, reader or task (this endpoint is every
    connection's `Owner`).
    """

    def __init__(
        self,
        guard: Guard,
        hub: Hub,
        broker: Broker,
        state: State,
        metrics: Metrics,
        commands: Commands | None = None,
        *,
        compression: bool = True,
        compression_min_bytes: int = DEFAULT_COMPRESSION_MIN_BYTES,
    ) -> None:
        self._guard = guard
        self._hub = hub
        self._broker = broker
        self._state = state
        self._metrics = metrics
        self._commands = commands
        self._compression = compression
        self._compression_min = compression_min_bytes
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshots = _Snapshots()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, validate the query, answer the upgrade, hand the socket over."""
        auth = self._guard.websocket(request)
        if not isinstance(auth, WebSocketAuth):
            return auth  # 429, 403 or 401, counted and logged by the guard
        try:
            wanted = parse_stream_request(request.query)
            key = check_upgrade(request.headers)
            accept = accept_key(key)
        except BadParameter as exc:
            self._metrics.connections_rejected.labels("bad_request").inc()
            return json_error(400, "bad_request", parameter=exc.parameter, message=str(exc))
        except UnsupportedVersion as exc:
            # RFC 6455 §4.4: 426 Upgrade Required, naming the version this server speaks.
            self._metrics.connections_rejected.labels("bad_request").inc()
            response = json_error(426, "upgrade_required", message=str(exc))
            response.headers[hdrs.SEC_WEBSOCKET_VERSION] = WEBSOCKET_VERSION
            return response
        except HandshakeError as exc:
            self._metrics.connections_rejected.labels("bad_request").inc()
            return json_error(400, "bad_request", message=f"not a WebSocket handshake: {exc}")
        if wanted.snapshot and not self._state.ready:
            # An empty snapshot now would never be corrected: the first poll is a baseline
            # and publishes nothing. Ask the client to come back, as GET /api/sessions does.
            return not_ready(self._state.health)
        if wanted.since is not None and wanted.epoch in (None, self._broker.position.epoch):
            # A client from a node further along: this node's reader may be a little behind
            # the shared stream. Let it catch up (bounded) before `_attach` decides.
            await self._broker.reach(wanted.since, wanted.activities_since)
        deflate = (
            negotiate_deflate(request.headers.getall(hdrs.SEC_WEBSOCKET_EXTENSIONS, []))
            if self._compression
            else None
        )
        handler = request.protocol
        if not isinstance(handler, FrontHandler) or handler.transport is None:
            return web.Response(status=499)  # the client left during the handshake
        transport, tail, on_lost = handler.detach()
        variant = Variant(
            encoding="msgpack" if auth.protocol == MSGPACK_PROTOCOL else "json",
            patch=wanted.patch,
            batch=wanted.batch,
            deflate=deflate.server_window_bits if deflate is not None else 0,
            min_compress=self._compression_min,
        )
        conn = Connection(
            transport,
            request.remote or "?",
            auth.principal,
            key=(wanted.view, variant),
            owner=self,
            reader=Reader(MAX_CLIENT_MESSAGE_BYTES, deflate=deflate is not None),
            on_lost=on_lost,
        )
        transport.write(handshake_response(accept, auth.protocol, deflate))
        conn.adopt(transport)
        self._metrics.connections_accepted.inc()
        if not self._guard.valid(auth.principal):  # revoked while the 101 was being sent
            conn.close(close_frame(TOKEN_REVOKED, "token_revoked"), "token_revoked")
            return _Detached()
        catch_up = self._attach(conn, wanted)
        log.info(
            "WebSocket client connected",
            extra={"clientId": conn.id, "remote": conn.remote, "clientCount": len(self._hub)},
        )
        if tail:
            conn.data_received(tail)
        if catch_up is not None:
            self._spawn(conn, self._catch_up(conn, catch_up), f"catch-up-{conn.id}")
        return _Detached()

    def _spawn(self, conn: Connection, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(self._guarded(conn, work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(conn: Connection, work: Coroutine[Any, Any, None]) -> None:
        """Run one connection's work; a bug in it closes that connection (1011) only."""
        try:
            await work
        except ConnectionError:  # the client vanished mid-write: ordinary
            conn.close_reason = conn.close_reason or "connection_reset"
        except Exception:
            log.exception("WebSocket handler failed", extra={"clientId": conn.id})
            conn.close(close_frame(INTERNAL_ERROR, "internal error"), "error")

    async def close(self) -> None:
        """Cancel catch-ups still running (shutdown)."""
        await cancel_and_wait(self._tasks)

    # -- a connection's life (Owner) -------------------------------------------------

    @property
    def max_pending(self) -> int:
        """Bytes a client may leave unread before it is cut (MAX_BUFFER_BYTES)."""
        return self._hub.max_buffer

    def too_slow(self, conn: Connection) -> None:
        """A client that does not read what it is sent is cut, whatever filled its buffer."""
        self._hub.cut_slow(conn)

    def lost(self, conn: Connection, exc: Exception | None) -> None:
        """The socket closed: forget it, count and log why."""
        self._hub.remove(conn)
        state = conn.commands
        if isinstance(state, _Commands):
            for task in state.tasks:
                task.cancel()
        if conn.close_reason is None:
            conn.close_reason = "connection_reset" if exc is not None else "normal"
        reason = conn.close_reason
        self._metrics.connections_closed.labels(reason).inc()
        log.info(
            "WebSocket client disconnected",
            extra={"clientId": conn.id, "reason": reason, "clientCount": len(self._hub)},
        )

    def received(self, conn: Connection, message: Message) -> None:
        """A client message: a command, answered by a `result` (never closes for junk)."""
        state = conn.commands
        if not isinstance(state, _Commands):
            principal = conn.principal
            state = conn.commands = _Commands(
                Caller(
                    read_only=principal.read_only if principal is not None else True,
                    subscribe=lambda command: self.subscribe(conn, command),
                    name=f"client {conn.id}",
                )
            )
        if conn.catching_up:
            # Its snapshot or replay is still being written: an answer now would overtake
            # it (a `subscribe` result before the snapshot it replaces). Answer afterwards.
            if len(state.deferred) >= COMMAND_FLOOD_LIMIT:
                conn.close(close_frame(POLICY_VIOLATION, "too many messages"), "command_flood")
                return
            state.deferred.append(message)
            return
        binary = message.opcode == OP_BINARY
        # Every message takes from the bucket before it is parsed, whatever it is (garbage,
        # an unknown type, missing fields): a loop of junk is throttled like a loop of
        # commands. A refusal reads only the envelope, for the id to answer by.
        if not state.bucket.take():
            self._refuse(conn, state, peek_id(message.data, binary=binary))
            return
        try:
            command = decode_command(message.data, binary=binary)
        except BadMessage as exc:
            state.refused = 0
            self._answer(conn, error_result(exc.id, exc.code, str(exc)))
            return
        if len(state.tasks) >= MAX_COMMANDS_IN_FLIGHT:
            self._refuse(conn, state, command.id)
            return
        state.refused = 0
        if isinstance(command, Subscribe):  # synchronous: no await between view and snapshot
            self._answer(conn, self.subscribe(conn, command))
            return
        commands = self._commands
        if commands is None:
            self._answer(
                conn, error_result(command.id, "failed_precondition", "commands are not enabled")
            )
            return
        caller = state.caller

        async def run() -> None:
            try:
                result = await commands.run(caller, command)
            except Exception:  # a bug: the client still gets its answer, the log the why
                log.exception("Command failed", extra={"clientId": conn.id, "id": command.id})
                result = error_result(command.id, "internal", "the service failed; see its log")
            self._answer(conn, result)

        task = asyncio.create_task(run(), name=f"command-{conn.id}")
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def _refuse(self, conn: Connection, state: _Commands, id: MessageId) -> None:
        """Answer `rate_limited`; close with 1008 after COMMAND_FLOOD_LIMIT in a row."""
        state.refused += 1
        if state.refused >= COMMAND_FLOOD_LIMIT:
            log.warning(
                "Client flooding commands; closed with 1008",
                extra={"clientId": conn.id, "refused": state.refused},
            )
            conn.close(close_frame(POLICY_VIOLATION, "too many messages"), "command_flood")
            return
        self._answer(conn, error_result(id, "rate_limited", "too many messages"))

    def _caught_up(self, conn: Connection) -> None:
        """The client is live again: answer what it sent meanwhile, in order."""
        state = conn.commands
        if not isinstance(state, _Commands):
            return
        while state.deferred and not conn.catching_up and conn.open:
            self.received(conn, state.deferred.pop(0))

    def _answer(self, conn: Connection, result: ResultMessage) -> None:
        if not conn.open:
            return
        message = encode(result)
        if len(message) <= REPLAY_CHUNK_BYTES or conn.catching_up:
            conn.write(single(message, conn.key[1]), 1)
            return
        # A big answer (a subscribe's snapshot) is written like a first snapshot: framed off
        # the loop if it needs compressing, in drained slices, live batches held meanwhile,
        # none of it counted as falling behind.
        conn.hold()

        async def write() -> None:
            data = await single_off_loop(message, conn.key[1])
            if await self._write_drained(conn, [data]):
                conn.release({})
                self._caught_up(conn)

        self._spawn(conn, write(), f"answer-{conn.id}")

    def _snapshot(self, view: View) -> SnapshotMessage:
        position = self._broker.position
        return SnapshotMessage(
            epoch=position.epoch,
            seq=position.seq,
            sessions=view.select(self._state.sessions),
            activitiesSeq=position.activities_seq if view.activities else None,
        )

    def _attach(self, conn: Connection, wanted: StreamRequest) -> _CatchUp | None:
        """Register the client; with no await here, nothing is published in between.

        Returns what the client must be sent before it goes live (a snapshot, history), if
        anything; live batches are held for it meanwhile.
        """
        position = self._broker.position
        view = wanted.view
        if wanted.snapshot:
            conn.hold()
            self._hub.add(conn)
            # Encoded now (the state as of this position); framed, and compressed if need
            # be, off the loop when big (`_catch_up`). Both once per view and variant at a
            # position, however many clients ask: a reconnect storm costs one of each.
            return _CatchUp(
                first=self._snapshots.encoded(position, view, lambda: self._snapshot(view)),
                at=position,
            )
        if wanted.since is not None:
            if wanted.epoch not in (None, position.epoch):
                self._reset(conn, "epoch_changed")
            elif wanted.since > position.seq or (
                wanted.activities_since is not None
                and wanted.activities_since > position.activities_seq
            ):
                self._reset(conn, AHEAD_OF_SERVER)  # e.g. the store was restored from a backup
            else:
                need: dict[Channel, int] = {}
                if wanted.since < position.seq:
                    need[SESSIONS] = wanted.since
                since_activities = wanted.activities_since
                if since_activities is not None and since_activities < position.activities_seq:
                    need[ACTIVITIES] = since_activities
                if need:
                    conn.hold()
                    self._hub.add(conn)
                    return _CatchUp(need=need)
                self._metrics.replays.labels("recovered").inc()
        self._hub.add(conn)
        return None

    def _reset(self, conn: Connection, reason: str) -> None:
        position = self._broker.position
        view = conn.key[0]
        message = ResetMessage(
            epoch=position.epoch,
            seq=position.seq,
            reason=reason,
            activitiesSeq=position.activities_seq if view.activities else None,
        )
        conn.write(single(encode(message), conn.key[1]), 1)
        self._metrics.replays.labels(reason).inc()

    async def _catch_up(self, conn: Connection, catch_up: _CatchUp) -> None:
        """Send the snapshot or the missed history in drained slices, then go live.

        A first message of any size (a snapshot of thousands of sessions) reaches a slow
        reader whole: it is written a slice at a time, each once the kernel took the last,
        and it never counts against the slow-consumer limit (only live batches held back
        meanwhile do). A reader that stops altogether is cut after CATCH_UP_STALL_S.
        """
        first = b""
        if catch_up.first and catch_up.at is not None:
            first = await self._snapshots.framed(catch_up.at, conn.key, catch_up.first)
        if first and not await self._write_drained(conn, [first]):
            return
        upto: dict[Channel, int] = {}
        for channel, since in catch_up.need.items():
            try:
                entries = await self._broker.history(since, channel=channel)
            except HistoryGone as exc:
                self._reset(conn, exc.reason)
                position = self._broker.position
                # Live events after the reset's position follow; the client reloads the rest.
                conn.release({SESSIONS: position.seq, ACTIVITIES: position.activities_seq})
                self._caught_up(conn)
                return
            except (StoreError, BrokerUnavailable) as exc:
                # Not gone, just unreachable for now (the store, or Redis): the client
                # reconnects later and is replayed then; nothing is skipped.
                log.warning(
                    "History unavailable for a resume; asked the client to retry",
                    extra={"clientId": conn.id, "error": str(exc)},
                )
                conn.close(
                    close_frame(TRY_AGAIN_LATER, "history unavailable"), "history_unavailable"
                )
                return
            last = await self._write_history(conn, entries, since)
            if last is None:
                return
            upto[channel] = last
        conn.release(upto)
        self._caught_up(conn)
        self._metrics.replays.labels("recovered").inc()

    async def _write_history(
        self, conn: Connection, entries: list[Entry], since: int
    ) -> int | None:
        """Write entries (as the client's view sees them) in drained slices; the last seq.

        History is never batched: each event is its own message, as when it was live.
        """
        view, variant = conn.key
        key = (view, replace(variant, batch=False))
        last = since
        start = 0
        while start < len(entries):
            size, end = 0, start
            while end < len(entries) and size < REPLAY_CHUNK_BYTES:
                size += len(entries[end].payload)
                end += 1
            data, count = frames(entries[start:end], key)
            last = entries[end - 1].seq
            if not await self._write_drained(conn, [data], count):
                return None
            start = end
        return last

    async def _write_drained(self, conn: Connection, parts: list[bytes], count: int = 1) -> bool:
        """Write `parts` (`count` messages) a slice at a time, each once the last drained.

        False when the connection closed, or its reader stalled for CATCH_UP_STALL_S (then
        it is cut as a slow consumer).
        """
        data = b"".join(parts)
        for offset in range(0, len(data), REPLAY_CHUNK_BYTES):
            if not conn.open:
                return False
            last = offset + REPLAY_CHUNK_BYTES >= len(data)
            # The messages are counted once, with their last slice.
            conn.write(data[offset : offset + REPLAY_CHUNK_BYTES], count if last else 0)
            try:
                async with asyncio.timeout(CATCH_UP_STALL_S):
                    await conn.drained()
            except TimeoutError:
                self._hub.cut_slow(conn)
                return False
        return conn.open

    def subscribe(self, conn: Connection, command: Subscribe) -> ResultMessage:
        """Replace the connection's view and answer with its snapshot, in one step."""
        try:
            view = View.of(
                session_ids=command.sessionIds,
                repositories=command.repositories,
                states=command.states,
                activities=command.activities,
            )
        except BadFilter as exc:
            return error_result(command.id, "invalid_argument", str(exc))
        if not self._state.ready:
            return error_result(
                command.id, "failed_precondition", "the first poll has not completed; retry soon"
            )
        variant = conn.key[1]
        if command.updates is not None:
            variant = replace(variant, patch=command.updates == "patch")
        if command.batch is not None:
            variant = replace(variant, batch=command.batch)
        self._hub.regroup(conn, (view, variant))
        snapshot = self._snapshot(view)
        return ResultMessage(
            id=command.id,
            ok=True,
            sessions=snapshot.sessions,
            epoch=snapshot.epoch,
            seq=snapshot.seq,
            activitiesSeq=snapshot.activitiesSeq,
            subscription=understood(view, command),
        )


def conn_variant(wanted: StreamRequest) -> Variant:
    """The wire variant a connection asked for."""
    return Variant(patch=wanted.patch, batch=wanted.batch)


@dataclass
class _CatchUp:
    """What a connecting client is sent before it goes live, while live batches are held."""

    first: bytes = b""
    """One message (JSON) written whole before anything else (a snapshot; it may be
    megabytes), framed for the client's variant when it is written."""
    at: Position | None = None
    """The position `first` was taken at."""
    need: dict[Channel, int] = field(default_factory=dict)
    """Per channel, the seq after which history is replayed."""


def understood(view: View, command: Subscribe) -> Subscription:
    """The subscription as the server understood it (what a `subscribe` result echoes):
    each filter de-duplicated, trimmed and sorted, never the list as sent."""
    return Subscription(
        sessionIds=view.listed("sessionIds"),
        repositories=view.listed("repositories"),
        states=view.listed("states"),
        activities=view.activities,
        updates=command.updates,
        batch=command.batch,
    )
