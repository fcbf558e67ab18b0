"""The Jules REST client: complete paged listings, timeouts, bounded retries, clear errors.

Nothing the upstream says is taken on faith: a listing whose page tokens repeat, or that
pages on through empty pages forever, is an error; a `GET /sessions/{id}` answer that is
not that session is an error (never a confirmation, never data); a 404 counts as "no such
session" only when it is the API's own NOT_FOUND; redirects are not followed (the API key
would go with them); an answer over `MAX_RESPONSE_BYTES` is refused. Every error names the
upstream's host and port and the reason in words (`connection refused to 127.0.0.1:9`).

The API key never leaves in an error: an upstream may echo it (Google APIs quote the key,
or a URL with `?key=`, in some error bodies), and an error's detail travels to log lines,
the authenticated 503 body, `/api/stats` and command results. `redact_key` replaces the
key, and any query-string `key=` value, with `***` where upstream text is captured.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar
from urllib.parse import quote, quote_plus

import aiohttp
import msgspec
from yarl import URL

from control_room import logging as logs
from control_room.backoff import backoff_delay, parse_retry_after
from control_room.jules.activities import (
    ActivityListing,
    BadActivity,
    create_time_of,
    decode_activity,
    list_activities_decoder,
)
from control_room.jules.requests import (
    GET_ACTIVITY,
    GET_SESSION,
    LIST_ACTIVITIES,
    LIST_FIRST_PAGE,
    LIST_NEXT_PAGE,
    RequestCounter,
    RequestKind,
)
from control_room.jules.types import (
    ErrorEnvelope,
    ListSessionsResponse,
    RawSession,
    Session,
    session_decoder,
)
from control_room.models import Activity
from control_room.secret import SecretSource

PAGE_SIZE: Final = 100  # the API's maximum: fewest round trips per listing
MAX_LISTED_SESSIONS: Final = 10_000
"""Sessions one listing is expected to hold at most: four times the largest accounts
reported (2,500, docs/topics/polling.md)."""
MAX_PAGES: Final = 2 * MAX_LISTED_SESSIONS // PAGE_SIZE
"""200 pages: a listing of MAX_LISTED_SESSIONS, with a margin of two for pages that come
back shorter than asked. Past it the upstream pages on without end (fresh page tokens that
never repeat): the listing is cut there, not read for minutes."""
MAX_EMPTY_PAGES: Final = 10
"""Empty pages in a row that still carry a next token: an API may skip a filtered stretch
with one or two, but ten in a row is an upstream paging on without end."""
REQUEST_TIMEOUT_S: Final = 15.0  # one page; a healthy upstream answers in well under a second
ATTEMPTS: Final = 3  # per page, within one poll; longer outages are the poller's backoff
RETRY_BASE_S: Final = 0.5
RETRY_CAP_S: Final = 4.0  # keep one poll short: the poller's own backoff takes over beyond
RETRY_AFTER_MAX_S: Final = 10.0  # a longer Retry-After is left to the poller to honour
MAX_RESPONSE_BYTES: Final = 32 * 1024 * 1024
"""A page of 100 sessions is 50-500 KB; an answer 60 times the largest is not a page, and
reading it whole could exhaust memory."""
READ_CHUNK_BYTES: Final = 64 * 1024
NOT_FOUND: Final = "NOT_FOUND"
ACTIVITY_PAGE_SIZE: Final = 100  # the API's maximum: a whole timeline is usually one page
MAX_ACTIVITY_PAGES: Final = 100
"""10,000 activities: ten times the longest real sessions; stops a token loop."""

ERROR_TEXT_MAX_CHARS: Final = 200
"""An error body that is not the API's envelope is quoted up to a line's worth."""
ERROR_SCAN_BYTES: Final = 4_096
"""How much of such a body is decoded and redacted before it is cut to
ERROR_TEXT_MAX_CHARS: enough to hold any key that starts within the quoted part, so the
cut never leaves half a key behind."""

log = logs.get("jules")
T = TypeVar("T")

_list_decoder: Final = msgspec.json.Decoder(ListSessionsResponse)
_error_decoder: Final = msgspec.json.Decoder(ErrorEnvelope)
_raw_decoder: Final = msgspec.json.Decoder(msgspec.Raw)
_QUERY_KEY: Final = re.compile(r"(?i)\b((?:api[_-]?)?key=)[^&#\s\"'<>]+")
"""A `key=` (or `api_key=`, `apikey=`) query parameter and its value, to the next separator."""


def redact_key(text: str, key: str) -> str:
    """`text` with the API key (as is or URL-encoded) and every `key=` value replaced by `***`."""
    if key:
        for form in {key, quote(key, safe=""), quote_plus(key)}:
            text = text.replace(form, logs.REDACTED)
    if "key=" in text.lower():
        text = _QUERY_KEY.sub(rf"\g<1>{logs.REDACTED}", text)
    return text


class UpstreamError(Exception):
    """A request to the upstream failed. `kind` names the failure for logs and metrics.

    `detail` is one line for a person: it names the host and port and the reason (never
    just an exception class). `api_status` is Google's status word (`NOT_FOUND`) when the
    answer was the API's own error envelope.
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        api_status: str | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.api_status = api_status

    def without_key(self, key: str) -> UpstreamError:
        """This error with `key` (and any `key=` value) redacted from its text."""
        detail = redact_key(self.detail, key)
        api_status = redact_key(self.api_status, key) if self.api_status else self.api_status
        if detail == self.detail and api_status == self.api_status:
            return self
        return UpstreamError(
            self.kind,
            detail,
            status=self.status,
            retry_after=self.retry_after,
            api_status=api_status,
        )

    @property
    def answered(self) -> bool:
        """Whether Jules answered at all (an error status or an unusable body), as opposed to
        no usable answer: connection refused, reset, cut short, timed out."""
        return self.kind not in ("timeout", "network")

    @property
    def retryable(self) -> bool:
        """Whether trying again soon can help (not for a rejected key or a bad request)."""
        return self.kind in ("timeout", "network", "server_error", "rate_limited", "bad_response")


PagingAnomaly = Literal["token_loop", "empty_pages", "too_many_pages"]


class PagingError(UpstreamError):
    """A listing whose paging is broken (`bad_response`); `anomaly` says how, for a metric."""

    def __init__(self, anomaly: PagingAnomaly, detail: str) -> None:
        super().__init__("bad_response", detail)
        self.anomaly = anomaly


@dataclass(frozen=True)
class RequestPolicy:
    """How long one request may take, and how it is retried within a poll."""

    timeout: float = REQUEST_TIMEOUT_S
    attempts: int = ATTEMPTS
    base: float = RETRY_BASE_S
    cap: float = RETRY_CAP_S
    retry_after_max: float = RETRY_AFTER_MAX_S


def error_message(body: bytes, key: str = "") -> tuple[str, str | None]:
    """A readable message from an error answer, and Google's status word if it was one.

    `key` (the API key sent) is redacted from the message, before any cut.
    """
    try:
        envelope = _error_decoder.decode(body)
    except msgspec.MsgspecError:
        envelope = None
    error = envelope.error if envelope is not None else None
    if error is None:
        text = body[:ERROR_SCAN_BYTES].decode(errors="replace")
        return redact_key(text, key)[:ERROR_TEXT_MAX_CHARS], None
    word = error.status or (str(error.code) if error.code is not None else "")
    return redact_key(f"{word}: {error.message or ''}".strip(), key), error.status


def describe_failure(exc: BaseException, where: str, timeout: float) -> tuple[str, str]:
    """(kind, detail) for a request that got no answer: the reason in words, with host:port."""
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts subclass it too
        return "timeout", f"timed out after {timeout:g} s waiting for {where}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        why = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or str(cert)
        return "network", f"TLS: certificate verify failed ({why}) for {where}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "network", f"TLS: {_os_reason(exc)} with {where}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "network", f"name not resolved: {where}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "network", f"{_os_reason(exc)} to {where}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "network", f"{where} closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "network", f"the answer from {where} was cut short"
    if isinstance(exc, OSError) and exc.errno:
        return "network", f"{_os_reason(exc)} with {where}"
    text = str(exc)
    return "network", f"{type(exc).__name__} from {where}" + (f": {text}" if text else "")


def _os_reason(exc: OSError) -> str:
    """`connection refused`, `network is unreachable`, ...: the OS's words, in lower case."""
    number = exc.errno
    if isinstance(exc, aiohttp.ClientConnectorError):
        number = exc.os_error.errno
    if number == errno.ECONNREFUSED:
        return "connection refused"
    if number:
        return os.strerror(number).lower()
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


@dataclass(frozen=True, slots=True)
class FirstPage:
    """The first page of the listing (the newest sessions) and whether more pages follow.

    Without more pages it *is* a complete listing."""

    sessions: list[RawSession]
    more: bool


Key = str | SecretSource[str]
"""The API key, or a source of it that may change while the service runs."""


def key_reader(key: Key) -> Callable[[], str]:
    """A function giving the key in force now (a fixed one, or a rotating source's)."""
    if isinstance(key, str):
        return lambda: key
    return lambda: key.current


def where(base_url: str) -> str:
    """`host:port` of the upstream, for error messages (never its path or credentials)."""
    url = URL(base_url)
    return f"{url.host}:{url.port}"


class JulesClient:
    """Talks to the Jules API with one aiohttp session; the API key goes in one header only.

    The key is read afresh for every request, so a key rotated in its file (or on SIGHUP)
    is used by the very next request.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        api_key: Key,
        *,
        retry: RequestPolicy | None = None,
        requests: RequestCounter | None = None,
    ) -> None:
        self._http = http
        self.requests = requests if requests is not None else RequestCounter()
        self._base = base_url.rstrip("/")
        self.where = where(base_url)
        self._key = key_reader(api_key)
        self._retry = retry or RequestPolicy()
        self._timeout = aiohttp.ClientTimeout(total=self._retry.timeout)
        self._oversized_pages = False  # warned once per streak, not once per poll

    async def list_sessions(self) -> list[RawSession]:
        """Every session as raw JSON, following `nextPageToken` to the end; UpstreamError
        (see `list_pages`)."""
        sessions: list[RawSession] = []
        async for page in self.list_pages():
            sessions.extend(page)
        return sessions

    async def list_pages(
        self, page_budget: float | None = None
    ) -> AsyncGenerator[list[RawSession], None]:
        """The listing page by page (raw JSON), following `nextPageToken` to the end.

        Each page is yielded as soon as it is read, so a caller keeps the pages read when a
        later one fails. UpstreamError when a page fails, or gets no answer (retries
        included) within `page_budget` seconds (a `timeout`). A page token seen before (the
        listing loops), more than MAX_PAGES pages, or more than MAX_EMPTY_PAGES empty pages
        in a row is a PagingError, raised after the page that showed it.
        """
        token = ""
        seen_tokens: dict[str, int] = {}
        empty_run = 0
        oversized = False
        for page_index in range(MAX_PAGES):
            params = {"pageSize": str(PAGE_SIZE)}
            if token:
                params["pageToken"] = token
            kind: RequestKind = LIST_NEXT_PAGE if token else LIST_FIRST_PAGE
            page = await self._page(params, kind, page_index, page_budget)
            entries: list[RawSession] = list(page.sessions or ())
            oversized = oversized or len(entries) > PAGE_SIZE
            empty_run = 0 if entries else empty_run + 1
            token = page.nextPageToken or ""
            if not token:
                self._note_oversized(oversized)
            yield entries
            if not token:
                return
            if token in seen_tokens:
                raise PagingError(
                    "token_loop",
                    f"the listing from {self.where} loops: page {page_index + 1} gave the"
                    f" page token of page {seen_tokens[token] + 1} again",
                )
            if empty_run >= MAX_EMPTY_PAGES:
                raise PagingError(
                    "empty_pages",
                    f"{self.where} answered {empty_run} empty pages in a row, each with a"
                    " next page token",
                )
            seen_tokens[token] = page_index
        raise PagingError(
            "too_many_pages",
            f"the listing from {self.where} ran past {MAX_PAGES} pages"
            f" ({PAGE_SIZE} sessions a page), each with a new page token",
        )

    async def list_first_page(self, page_budget: float | None = None) -> FirstPage:
        """The first page of the listing only (`pageSize=100`, newest first); UpstreamError,
        a `timeout` when it gets no answer (retries included) within `page_budget` seconds.

        The poller's cheap look at the newest sessions between complete listings.
        """
        page = await self._page({"pageSize": str(PAGE_SIZE)}, LIST_FIRST_PAGE, 0, page_budget)
        return FirstPage(list(page.sessions or ()), bool(page.nextPageToken))

    async def _page(
        self, params: dict[str, str], kind: RequestKind, index: int, budget: float | None
    ) -> ListSessionsResponse:
        """One page of the listing, retries included, within `budget` seconds (if given)."""
        deadline = None if budget is None else asyncio.get_running_loop().time() + budget
        try:
            async with asyncio.timeout(budget):
                return await self._get("/sessions", params, _list_decoder, kind, deadline)
        except TimeoutError:
            raise UpstreamError(
                "timeout",
                f"page {index + 1} of the listing got no answer within {budget:g} s"
                f" from {self.where}",
            ) from None

    async def list_activities(self, session_id: str, after: str | None) -> ActivityListing | None:
        """The session's activities, oldest first, every page; only those created after
        `after` (RFC 3339, exclusive) when it is given.

        None when the API answers 404 NOT_FOUND: right after a session is created that is
        transient (the caller decides how long to believe so). An activity that does not
        decode is skipped and named in `bad`. UpstreamError for every other failure, and
        for paging that loops or runs past MAX_ACTIVITY_PAGES.
        """
        path = f"/sessions/{quote(session_id, safe='')}/activities"
        params = {"pageSize": str(ACTIVITY_PAGE_SIZE)}
        if after is not None:
            params["filter"] = f'create_time>"{after}"'
        activities: list[Activity] = []
        bad: list[str] = []
        newest: str | None = None
        seen_tokens: set[str] = set()
        for _ in range(MAX_ACTIVITY_PAGES):
            try:
                page = await self._get(path, params, list_activities_decoder, LIST_ACTIVITIES)
            except UpstreamError as exc:
                if exc.status == 404 and exc.api_status == NOT_FOUND:
                    return None
                raise
            for raw in page.activities or ():
                newest = create_time_of(raw) or newest
                try:
                    activities.append(decode_activity(raw, session_id))
                except BadActivity as why:
                    bad.append(str(why))
            token = page.nextPageToken or ""
            if not token:
                return ActivityListing(activities, bad, newest)
            if token in seen_tokens:
                raise UpstreamError(
                    "bad_response", f"the activities of {session_id} on {self.where} loop"
                )
            seen_tokens.add(token)
            params["pageToken"] = token
        raise UpstreamError(
            "bad_response",
            f"the activities of {session_id} on {self.where} ran past {MAX_ACTIVITY_PAGES} pages",
        )

    async def get_activity(self, session_id: str, activity_id: str) -> msgspec.Raw | None:
        """One activity exactly as sent (whole patches and media included); None on 404
        NOT_FOUND; UpstreamError otherwise."""
        path = f"/sessions/{quote(session_id, safe='')}/activities/{quote(activity_id, safe='')}"
        try:
            return await self._get(path, {}, _raw_decoder, GET_ACTIVITY)
        except UpstreamError as exc:
            if exc.status == 404 and exc.api_status == NOT_FOUND:
                return None
            raise

    def _note_oversized(self, oversized: bool) -> None:
        if oversized and not self._oversized_pages:
            log.warning(
                "Upstream pages are larger than asked; listing used as is",
                extra={"pageSize": PAGE_SIZE, "upstream": self.where},
            )
        elif not oversized and self._oversized_pages:
            log.info("Upstream pages are back within the asked size")
        self._oversized_pages = oversized

    async def get_session(self, session_id: str, deadline: float | None = None) -> Session | None:
        """One session, or None when the API says it does not exist (404 NOT_FOUND).

        With a `deadline` (event-loop time), a retry that could not be waited for before it
        is not waited for: the last failure is raised as it is (see `_get`).

        An answer that is not the session asked for (no id and name, another session's,
        or id and name disagreeing) is a `bad_response`: never taken for that session.
        A 404 that is not the API's own NOT_FOUND (a proxy's page) is a `client_error`.
        """
        path = f"/sessions/{session_id}"
        try:
            session = await self._get(path, {}, session_decoder, GET_SESSION, deadline)
        except UpstreamError as exc:
            if exc.status == 404 and exc.api_status == NOT_FOUND:
                return None
            raise
        answered = session.session_id
        if answered != session_id or session.identity_conflict:
            who = (
                "no session id"
                if not answered
                else f"id {session.id!r} and name {session.name!r}"
                if session.identity_conflict
                else f"session {answered!r}"
            )
            raise UpstreamError(
                "bad_response", f"GET {path} on {self.where} answered {who}, not {session_id!r}"
            )
        return session

    async def _get(
        self,
        path: str,
        params: dict[str, str],
        decoder: msgspec.json.Decoder[T],
        kind: RequestKind,
        deadline: float | None = None,
    ) -> T:
        """GET and decode, retrying transient failures (a garbled body is one of them).

        Each attempt is counted as a request of `kind`. With a `deadline` (event-loop time), a
        retry whose wait would end past it is not waited for: the last failure is raised as
        it is (a 429 stays `rate_limited` with its `Retry-After` for the caller's backoff),
        rather than being cut short by the caller's timeout and reported as one."""
        attempt = 0
        while True:
            attempt += 1
            key = self._key()  # the key this attempt sends: what an echo would quote
            try:
                self.requests.count(kind)
                body = await self._get_once(path, params, key)
                try:
                    return decoder.decode(body)
                except msgspec.MsgspecError as exc:
                    raise UpstreamError(
                        "bad_response", f"{self.where} answered an unexpected body: {exc}"
                    ) from None
            except UpstreamError as raw:
                error = raw.without_key(key)
                if not error.retryable or attempt >= self._retry.attempts:
                    raise error from None
                delay = backoff_delay(attempt, self._retry.base, self._retry.cap)
                if error.retry_after is not None:
                    if error.retry_after > self._retry.retry_after_max:
                        raise error from None
                    delay = max(delay, error.retry_after)
                if deadline is not None and asyncio.get_running_loop().time() + delay >= deadline:
                    raise error from None
                log.debug(
                    "Retrying upstream request",
                    extra={"path": path, "kind": error.kind, "attempt": attempt, "delay": delay},
                )
                await asyncio.sleep(delay)

    async def _get_once(self, path: str, params: dict[str, str], key: str) -> bytes:
        url = self._base + path
        headers = {"X-Goog-Api-Key": key, "Accept": "application/json"}
        try:
            async with self._http.get(
                url, params=params, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                body = await self._read(resp)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                location = resp.headers.get("Location", "")
        except UpstreamError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            kind, detail = describe_failure(exc, self.where, self._retry.timeout)
            raise UpstreamError(kind, detail) from None
        if status == 200:
            return body
        if 300 <= status < 400:
            raise UpstreamError(
                "client_error",
                f"{self.where} redirected ({status}) to {location!r}; not followed",
                status=status,
            )
        message, api_status = error_message(body, key)
        detail = f"{self.where} answered HTTP {status}" + (f" ({message})" if message else "")
        if status in (401, 403):
            raise UpstreamError("unauthorized", detail, status=status, api_status=api_status)
        if status == 429:
            raise UpstreamError(
                "rate_limited",
                detail,
                status=status,
                retry_after=retry_after,
                api_status=api_status,
            )
        if status >= 500:
            raise UpstreamError(
                "server_error",
                detail,
                status=status,
                retry_after=retry_after,
                api_status=api_status,
            )
        raise UpstreamError("client_error", detail, status=status, api_status=api_status)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, refusing one larger than MAX_RESPONSE_BYTES before reading it all."""
        too_big = UpstreamError(
            "bad_response",
            f"{self.where} answered over {MAX_RESPONSE_BYTES} bytes",
        )
        if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)
