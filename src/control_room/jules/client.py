"""The Jules REST client: complete paged listings, timeouts, bounded retries, clear errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, TypeVar

import aiohttp
import msgspec

from control_room import logging as logs
from control_room.backoff import backoff_delay, parse_retry_after
from control_room.jules.types import (
    ErrorEnvelope,
    ListSessionsResponse,
    RawSession,
    Session,
    session_decoder,
)

PAGE_SIZE: Final = 100  # the API's maximum: fewest round trips per listing
MAX_PAGES: Final = 2_000  # 200,000 sessions: far beyond any account; stops a token loop
REQUEST_TIMEOUT_S: Final = 15.0  # one page; a healthy upstream answers in well under a second
ATTEMPTS: Final = 3  # per page, within one poll; longer outages are the poller's backoff
RETRY_BASE_S: Final = 0.5
RETRY_CAP_S: Final = 4.0  # keep one poll short: the poller's own backoff takes over beyond
RETRY_AFTER_MAX_S: Final = 10.0  # a longer Retry-After is left to the poller to honour

log = logs.get("jules")
T = TypeVar("T")

_list_decoder: Final = msgspec.json.Decoder(ListSessionsResponse)
_error_decoder: Final = msgspec.json.Decoder(ErrorEnvelope)


class UpstreamError(Exception):
    """A listing could not be completed. `kind` names the failure for logs and metrics."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether trying again soon can help (not for a rejected key or a bad request)."""
        return self.kind in ("timeout", "network", "server_error", "rate_limited", "bad_response")


@dataclass(frozen=True)
class RequestPolicy:
    """How long one request may take, and how it is retried within a poll."""

    timeout: float = REQUEST_TIMEOUT_S
    attempts: int = ATTEMPTS
    base: float = RETRY_BASE_S
    cap: float = RETRY_CAP_S
    retry_after_max: float = RETRY_AFTER_MAX_S


def error_message(body: bytes) -> str:
    """The message of Google's error envelope (or the start of an unexpected body)."""
    try:
        envelope = _error_decoder.decode(body)
    except msgspec.MsgspecError:
        return body[:200].decode(errors="replace")
    if envelope.error is None:
        return body[:200].decode(errors="replace")
    return f"{envelope.error.status or envelope.error.code}: {envelope.error.message}"


def describe_error(exc: BaseException, method: str, url: str, timeout: float) -> UpstreamError:
    """An UpstreamError for a request that got no answer, naming what went wrong."""
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", f"{method} {url}: timed out after {timeout:g} s")
    return UpstreamError("network", f"{method} {url}: {exc}")


class JulesClient:
    """Talks to the Jules API with one aiohttp session; the API key goes in one header only."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        *,
        retry: RequestPolicy | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"X-Goog-Api-Key": api_key, "Accept": "application/json"}
        self._retry = retry or RequestPolicy()
        self._timeout = aiohttp.ClientTimeout(total=self._retry.timeout)

    async def list_sessions(self) -> list[RawSession]:
        """Every session as raw JSON, following `nextPageToken` to the end; UpstreamError."""
        sessions: list[RawSession] = []
        token = ""
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            params = {"pageSize": str(PAGE_SIZE)}
            if token:
                params["pageToken"] = token
            page = await self._get("/sessions", params, _list_decoder)
            sessions.extend(page.sessions)
            token = page.nextPageToken
            if not token:
                return sessions
            if token in seen_tokens:
                raise UpstreamError("bad_response", "nextPageToken repeated")
            seen_tokens.add(token)
        raise UpstreamError("bad_response", f"more than {MAX_PAGES} pages")

    async def get_session(self, session_id: str) -> Session | None:
        """One session, or None when the upstream says it does not exist (404)."""
        try:
            return await self._get(f"/sessions/{session_id}", {}, session_decoder)
        except UpstreamError as exc:
            if exc.status == 404:
                return None
            raise

    async def _get(self, path: str, params: dict[str, str], decoder: msgspec.json.Decoder[T]) -> T:
        """GET and decode, retrying transient failures (a garbled body is one of them)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                body = await self._get_once(path, params)
                try:
                    return decoder.decode(body)
                except msgspec.MsgspecError as exc:
                    raise UpstreamError("bad_response", f"GET {path}: {exc}") from None
            except UpstreamError as exc:
                if not exc.retryable or attempt >= self._retry.attempts:
                    raise
                delay = backoff_delay(attempt, self._retry.base, self._retry.cap)
                if exc.retry_after is not None:
                    if exc.retry_after > self._retry.retry_after_max:
                        raise
                    delay = max(delay, exc.retry_after)
                log.debug(
                    "Retrying upstream request",
                    extra={"path": path, "kind": exc.kind, "attempt": attempt, "delay": delay},
                )
                await asyncio.sleep(delay)

    async def _get_once(self, path: str, params: dict[str, str]) -> bytes:
        url = self._base + path
        try:
            async with self._http.get(
                url, params=params, headers=self._headers, timeout=self._timeout
            ) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise UpstreamError("timeout", f"GET {path} took too long") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("network", f"GET {path}: {type(exc).__name__}") from None
        if status == 200:
            return body
        message = error_message(body)
        if status in (401, 403):
            raise UpstreamError("unauthorized", message, status=status)
        if status == 429:
            raise UpstreamError("rate_limited", message, status=status, retry_after=retry_after)
        if status >= 500:
            raise UpstreamError("server_error", message, status=status, retry_after=retry_after)
        raise UpstreamError("client_error", message, status=status)
