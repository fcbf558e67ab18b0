"""A small async client for the control room: the session list and a resumable delta stream.

It speaks only the public protocol (REST with a bearer header, the WebSocket with the token
as a subprotocol), so it is what any script would write, and the `watch` and `sessions`
commands are built on it::

    async with ControlRoomClient("http://127.0.0.1:3001", token) as client:
        listing = await client.sessions()
        stream = client.deltas(since=listing.seq, epoch=listing.epoch)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                ...

The stream reconnects by itself (exponential backoff with jitter), resumes from the last
position it saw, drops duplicates, and yields a `Reset` when the server cannot replay what
was missed: the caller then reloads `sessions()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal

import aiohttp
import msgspec
from yarl import URL

from control_room import logging as logs
from control_room.auth import APP_PROTOCOL, BEARER_PREFIX
from control_room.backoff import backoff_delay, parse_retry_after
from control_room.messages import SessionList
from control_room.models import JulesSession, Position, SessionDelta

RECONNECT_BASE_S: Final = 0.25  # a restarting server is back within a second or so
RECONNECT_CAP_S: Final = 10.0  # someone watching a side terminal should not wait longer
STABLE_CONNECTION_S: Final = 5.0  # a connection that lived this long resets the backoff
HEARTBEAT_S: Final = 30.0  # ping this often; no pong within half of it means a dead link
CONNECT_TIMEOUT_S: Final = 10.0  # a handshake on a healthy service takes milliseconds
CLOSE_TIMEOUT_S: Final = 2.0  # a live server answers a close at once; a dead one can't stall us
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024  # a snapshot of ~50k sessions; deltas are KBs
NOT_READY_WAIT_S: Final = 10.0  # `sessions()` waits this long for a new service's first poll
NOT_READY_RETRY_CAP_S: Final = 2.0  # ...asking again at least this often

log = logs.get("client")


class ControlRoomError(Exception):
    """Base class of everything this client raises on purpose."""


class Unauthorized(ControlRoomError):
    """The service rejected the token (HTTP 401); retrying would not help."""


class BadRequest(ControlRoomError):
    """The service rejected the request's parameters (HTTP 400), e.g. a malformed `since`."""


class Unavailable(ControlRoomError):
    """A REST call could not be answered: service unreachable, not ready, or failing."""


class NotReady(Unavailable):
    """The service answered 503: it is up, but has nothing consistent to serve yet.

    `reason` is the service's own message (e.g. `waiting for the Jules API: connection
    refused to 127.0.0.1:9; retrying in 8 s`); `retry_after` its Retry-After in seconds.
    """

    def __init__(self, message: str, reason: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Every session at a position: the first message of a stream opened with `snapshot`."""

    type: Literal["snapshot"] = "snapshot"
    epoch: str
    seq: int
    sessions: list[JulesSession]


class Reset(msgspec.Struct, frozen=True, kw_only=True):
    """The missed deltas cannot be replayed: reload the sessions.

    `reason`: `epoch_changed` (the service restarted without its history),
    `history_expired`, `too_far_behind`, or `ahead_of_server` (the service is behind the
    position given, e.g. its store was restored from a backup).
    """

    type: Literal["reset"] = "reset"
    epoch: str
    seq: int
    reason: str


Event = SessionDelta | Snapshot | Reset
"""What the stream yields: a delta, or a snapshot/reset telling where the stream stands."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the stream, decoded, with the exact JSON text the server sent."""

    event: Event
    raw: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The stream is (again) connected; `attempt` counts the failures just before it."""

    url: str
    position: Position | None
    attempt: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The stream lost (or could not open) its connection and will try again."""

    reason: str
    attempt: int
    retry_in: float
    was_connected: bool


ConnectionStatus = Connected | Disconnected
StatusCallback = Callable[[ConnectionStatus], None]


class _Kind(msgspec.Struct):
    type: str


_kind_decoder: Final = msgspec.json.Decoder(_Kind)
_decoders: Final[Mapping[str, msgspec.json.Decoder[Event]]] = {
    "created": msgspec.json.Decoder(SessionDelta),
    "updated": msgspec.json.Decoder(SessionDelta),
    "deleted": msgspec.json.Decoder(SessionDelta),
    "snapshot": msgspec.json.Decoder(Snapshot),
    "reset": msgspec.json.Decoder(Reset),
}
_session_list_decoder: Final = msgspec.json.Decoder(SessionList)


def decode_event(raw: str | bytes) -> Event | None:
    """Decode one stream message; None for a message type this client does not know."""
    decoder = _decoders.get(_kind_decoder.decode(raw).type)
    return decoder.decode(raw) if decoder is not None else None


class _Retry(Exception):
    """A failure worth another attempt; the message says why, for the status line."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        why = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused: HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_reason(ws: aiohttp.ClientWebSocketResponse) -> str:
    code = ws.close_code
    error = ws.exception()
    if error is not None:
        return _describe(error)
    if code is None or code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
        return "closed without a close frame"
    if code == aiohttp.WSCloseCode.GOING_AWAY:
        return "server going away (1001)"
    return f"server closed the connection ({code})"


class ControlRoomClient:
    """The control room over HTTP and WebSocket; use as `async with`.

    `url` is the service's base URL (`http://host:port`; `ws://` works too). Pass a
    `session` to share an aiohttp ClientSession; otherwise the client opens its own.
    `on_status` is called on every connection change of a stream (also logged).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        on_status: StatusCallback | None = None,
        backoff_base: float = RECONNECT_BASE_S,
        backoff_cap: float = RECONNECT_CAP_S,
        heartbeat: float = HEARTBEAT_S,
        rng: random.Random | None = None,
    ) -> None:
        base = URL(url)
        if base.scheme in ("ws", "wss"):
            base = base.with_scheme("http" if base.scheme == "ws" else "https")
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
        if not token:
            raise ValueError("a token is required")
        self._base = base.with_query(None).with_fragment(None)
        self._token = token
        self._own_session = session is None
        self._http = session
        self._on_status = on_status
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._heartbeat = heartbeat
        self._rng = rng
        self.position: Position | None = None
        """The last position the stream reached (None before it learns one)."""

    async def __aenter__(self) -> ControlRoomClient:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        if self._own_session and self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def url(self) -> str:
        """The service's base URL."""
        return str(self._base)

    @property
    def ws_url(self) -> str:
        """The WebSocket URL (the service's root path, ws:// or wss://)."""
        scheme = "wss" if self._base.scheme == "https" else "ws"
        return str(self._endpoint("/").with_scheme(scheme))

    def _endpoint(self, path: str) -> URL:
        return self._base.with_path(self._base.path.rstrip("/") + path)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use the client as `async with ControlRoomClient(...)`")
        return self._http

    async def _get(self, path: str, query: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """GET a REST path with the bearer header; Unauthorized on 401, BadRequest on 400."""
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._session().get(
                self._endpoint(path),
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S),
            ) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(_describe(exc)) from exc
        if status == 401:
            raise Unauthorized(f"{self.url} rejected the token (HTTP 401)")
        if status == 400:
            raise BadRequest(_error_message(body) or f"{path}: bad request (HTTP 400)")
        if status == 503:
            reason = _error_message(body) or "service not ready"
            wait = parse_retry_after(retry_after)
            raise NotReady(f"{self.url} is not ready: {reason}", reason, wait)
        return status, body

    async def sessions(
        self,
        wait_ready: float = NOT_READY_WAIT_S,
        on_not_ready: Callable[[NotReady], None] | None = None,
    ) -> SessionList:
        """Every session and its position (`GET /api/sessions`).

        A service that has not finished its first poll answers 503 with the reason (say,
        the Jules API refuses connections); this calls `on_not_ready` with each such answer,
        asks again for up to `wait_ready` seconds, then raises the last one as NotReady.
        Unavailable when the service cannot be reached or answers something unexpected.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ready
        while True:
            try:
                status, body = await self._get("/api/sessions")
            except NotReady as exc:
                if on_not_ready is not None:
                    on_not_ready(exc)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                pause = min(exc.retry_after or NOT_READY_RETRY_CAP_S, NOT_READY_RETRY_CAP_S)
                await asyncio.sleep(min(pause, remaining))
                continue
            if status != 200:
                raise Unavailable(f"{self.url}/api/sessions answered HTTP {status}")
            try:
                return _session_list_decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise Unavailable(f"{self.url}/api/sessions: unexpected body: {exc}") from exc

    async def _locate(self, since: int | None) -> Position:
        """Where to resume: `since` (now when None) in the service's current epoch.

        Deltas carry no epoch, yet a stream must know it to resume safely after a restart;
        `/api/deltas?limit=0` tells it. Its answer holds the epoch and the current seq both
        when `since` is replayable (200) and when it is not (410: too old, or ahead of a
        server restored from a backup): the WebSocket then sends a `reset`, which the
        stream yields, so the caller reloads and carries on.
        """
        query = {"since": str(since or 0), "limit": "0"}
        try:
            status, body = await self._get("/api/deltas", query)
        except Unavailable as exc:  # NotReady included
            raise _Retry(str(exc)) from exc
        if status not in (200, 410):
            raise _Retry(f"/api/deltas answered HTTP {status}")
        try:
            found = msgspec.json.decode(body, type=Position)
        except msgspec.DecodeError as exc:
            raise _Retry(f"/api/deltas: unexpected body: {exc}") from exc
        return Position(found.epoch, found.seq if since is None else since)

    async def _connect(self, position: Position | None) -> aiohttp.ClientWebSocketResponse:
        """Open the WebSocket: resume from `position`, or ask for a snapshot when None."""
        query = (
            {"snapshot": "1"}
            if position is None
            else {"since": str(position.seq), "epoch": position.epoch}
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await self._session().ws_connect(
                    self.ws_url,
                    params=query,
                    protocols=(APP_PROTOCOL, f"{BEARER_PREFIX}{self._token}"),
                    heartbeat=self._heartbeat,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                    autoclose=True,
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise Unauthorized(f"{self.url} rejected the token (HTTP 401)") from None
            if exc.status == 400:
                raise BadRequest(await self._why_refused(query)) from None
            raise _Retry(_describe(exc)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Retry(_describe(exc)) from exc

    async def _why_refused(self, query: Mapping[str, str]) -> str:
        """The service's own reason for refusing a stream request with HTTP 400.

        A client cannot read the body of a refused upgrade, so the same position is asked of
        `/api/deltas`, which checks `since` the same way and says what is wrong with it.
        """
        asked = "&".join(f"{k}={v}" for k, v in query.items())
        fallback = f"the service rejected the stream request ?{asked} (HTTP 400)"
        since = query.get("since")
        if since is None:
            return fallback
        try:
            await self._get("/api/deltas", {"since": since, "limit": "0"})
        except BadRequest as exc:
            return str(exc)
        except Unavailable:
            pass
        return fallback

    async def messages(
        self, since: int | None = None, epoch: str | None = None, snapshot: bool = False
    ) -> AsyncGenerator[Message, None]:
        """Every message of the stream, decoded, with its raw JSON; reconnects forever.

        With no argument the stream starts now; `since` (and its `epoch`, if known) resumes
        after that seq; `snapshot` makes the first message a `Snapshot`. Deltas at or before
        the last seen seq are dropped. Raises Unauthorized or BadRequest, never retried.
        """
        if since is not None and since < 0:
            raise ValueError(f"since must be a non-negative seq, got {since}")
        if epoch is not None and since is None:
            raise ValueError("epoch is only meaningful with since")
        if snapshot and since is not None:
            raise ValueError("snapshot and since cannot be combined")
        self.position = Position(epoch, since) if epoch is not None and since is not None else None
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            position = self.position
            connected_at: float | None = None
            try:
                if position is None and not snapshot:
                    position = self.position = await self._locate(since)
                ws = await self._connect(position)
            except _Retry as exc:
                reason = str(exc)
            else:
                connected_at = loop.time()
                self._status(Connected(self.ws_url, position, failures))
                async with ws, contextlib.aclosing(self._read(ws)) as reading:
                    async for message in reading:
                        yield message
                reason = _close_reason(ws)
                if loop.time() - connected_at >= STABLE_CONNECTION_S:
                    failures = 0
            snapshot = snapshot and self.position is None  # a snapshot is asked for once
            failures += 1
            delay = backoff_delay(failures, self._backoff_base, self._backoff_cap, self._rng)
            self._status(Disconnected(reason, failures, delay, connected_at is not None))
            await asyncio.sleep(delay)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> AsyncGenerator[Message, None]:
        """Decode text messages, track the position, drop duplicates."""
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue  # pings are answered by aiohttp; the protocol sends only text
            raw: str = msg.data
            try:
                event = decode_event(raw)
            except msgspec.DecodeError as exc:  # ValidationError included
                log.warning("Undecodable message skipped", extra={"error": str(exc)})
                continue
            if event is None:
                log.debug("Unknown message type skipped")
                continue
            if not self._advance(event):
                continue
            yield Message(event, raw)

    def _advance(self, event: Event) -> bool:
        """Move the position past `event`; False for a duplicate that must be dropped."""
        position = self.position
        if isinstance(event, SessionDelta):
            if position is None:
                return True  # cannot happen with this protocol: deltas follow a position
            if event.seq <= position.seq:
                log.debug("Duplicate delta dropped", extra={"seq": event.seq})
                return False
            if event.seq != position.seq + 1:
                gap = {"expected": position.seq + 1, "got": event.seq}
                log.warning("Gap in the delta stream", extra=gap)
            self.position = Position(position.epoch, event.seq)
            return True
        self.position = Position(event.epoch, event.seq)
        return True

    async def deltas(
        self, since: int | None = None, epoch: str | None = None, snapshot: bool = False
    ) -> AsyncGenerator[Event, None]:
        """The stream's events (deltas, and Snapshot/Reset); see `messages` for the rules."""
        async with contextlib.aclosing(self.messages(since, epoch, snapshot)) as stream:
            async for message in stream:
                yield message.event

    def _status(self, status: ConnectionStatus) -> None:
        if isinstance(status, Connected):
            pos = status.position
            log.info(
                "Stream connected",
                extra={
                    "url": status.url,
                    "attempt": status.attempt,
                    "epoch": pos.epoch if pos else None,
                    "since": pos.seq if pos else None,
                },
            )
        else:
            log.info(
                "Stream disconnected",
                extra={
                    "reason": status.reason,
                    "attempt": status.attempt,
                    "retryIn": round(status.retry_in, 3),
                },
            )
        if self._on_status is not None:
            self._on_status(status)


class _ErrorBody(msgspec.Struct):
    message: str = ""
    error: str = ""


def _error_message(body: bytes) -> str:
    """The `message` (or `error`) of one of the service's JSON error bodies, if any."""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return parsed.message or parsed.error
