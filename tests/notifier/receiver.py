"""A webhook receiver on 127.0.0.1 for tests: verifies, records in arrival order, fails on demand.

The signature check here is written from the Standard Webhooks specification, without
importing the service's signing code: a bug there cannot hide behind the same bug here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from tests.conftest import MS

TOLERANCE_S = 300  # the specification's suggested window for webhook-timestamp


class BadSignature(Exception):
    """The request would be refused by a receiver following the specification."""


def verify(secret: str | None, headers: dict[str, str], body: bytes, now: float) -> None:
    """Check a request the way a Standard Webhooks receiver does; raise BadSignature."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    if not msg_id or not stamp:
        raise BadSignature("missing webhook-id or webhook-timestamp")
    if not stamp.isdigit() or abs(now - int(stamp)) > TOLERANCE_S:
        raise BadSignature(f"timestamp {stamp!r} outside tolerance")
    given = headers.get("webhook-signature")
    if secret is None:
        if given is not None:
            raise BadSignature("signed although no secret is configured")
        return
    if given is None:
        raise BadSignature("missing webhook-signature")
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.split("_", 1)[1])
    else:
        key = secret.encode("utf-8")
    to_sign = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest())
    for candidate in given.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise BadSignature(f"no v1 signature matches for {msg_id}")


@dataclass
class Request:
    """One request that reached the receiver."""

    msg_id: str
    timestamp: str
    headers: dict[str, str]
    body: bytes
    content_type: str
    at: float

    @property
    def json(self) -> Any:
        """The body, decoded."""
        return msgspec.json.decode(self.body)

    @property
    def seq(self) -> int:
        """The delta's seq."""
        return int(self.json["seq"])


@dataclass
class Reply:
    """A scripted answer for the next request."""

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"error":"scripted"}'
    stall: float = 0.0


class Receiver:
    """Accepts POSTs on `/hook`; answers 204 unless a failure is scripted for the request."""

    def __init__(self, secret: str | None = None, path: str = "/hook") -> None:
        self.secret = secret
        self.path = path
        self.requests: list[Request] = []
        self.accepted: list[Request] = []
        self.bad: list[str] = []
        self._script: deque[Reply] = deque()
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def seqs(self) -> list[int]:
        """Seqs of the accepted deliveries, in arrival order."""
        return [r.seq for r in self.accepted]

    def reply(self, reply: Reply, n: int = 1) -> None:
        """Answer the next `n` requests with `reply` instead of accepting them."""
        self._script.extend([reply] * n)

    def heal(self) -> None:
        """Forget the scripted failures: accept everything from now on."""
        self._script.clear()

    def accept(self, n: int = 1) -> None:
        """Accept the next `n` requests (to interleave with scripted failures)."""
        self.reply(Reply(204), n)

    def fail(self, n: int = 1, status: int = 500, headers: dict[str, str] | None = None) -> None:
        """Answer the next `n` requests with `status` (and `headers`)."""
        self.reply(Reply(status, headers or {}), n)

    def stall(self, seconds: float, n: int = 1) -> None:
        """Hold the next `n` requests for `seconds` before answering 503."""
        self.reply(Reply(503, stall=seconds), n)

    async def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._released.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening: connections are refused until `start` again."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, predicate: Callable[[], bool], within: float = 3000 * MS) -> None:
        """Wait until `predicate()` holds (checked after each request)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def wait_accepted(self, n: int, within: float = 3000 * MS) -> None:
        """Wait until `n` deliveries were accepted."""
        await self.wait_for(lambda: len(self.accepted) >= n, within)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        got = Request(
            msg_id=headers.get("webhook-id", ""),
            timestamp=headers.get("webhook-timestamp", ""),
            headers=headers,
            body=body,
            content_type=headers.get("content-type", ""),
            at=time.monotonic(),
        )
        self.requests.append(got)
        try:
            verify(self.secret, headers, body, time.time())
        except BadSignature as exc:
            self.bad.append(str(exc))
            await self._notify()
            return web.Response(status=401)
        reply = self._script.popleft() if self._script else None
        if reply is None or reply.status < 300:
            self.accepted.append(got)
            await self._notify()
            return web.Response(status=204)
        await self._notify()
        if reply.stall:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), reply.stall)
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
