"""The one place that picks concrete parts and wires them into a running service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from control_room import logging as logs
from control_room.api import Api
from control_room.broker.memory import MemoryBroker
from control_room.config import Settings
from control_room.jules.client import JulesClient, RequestPolicy
from control_room.metrics import Metrics
from control_room.poller import Poller, Upstream
from control_room.ws.handler import WebSocketEndpoint, json_error
from control_room.ws.hub import Hub

SHUTDOWN_GRACE_S: Final = 2.0  # time for close frames to flush before sockets are dropped
UPSTREAM_CONNECTIONS: Final = 8  # polls are sequential; a few spare for deletion checks

log = logs.get("app")
STATIC_DIR: Final = Path(str(resources.files("control_room") / "static"))


@web.middleware
async def json_errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Unknown paths and wrong methods answer JSON, like every other error here."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPNotFound:
        return json_error(404, "not_found", message=f"no route for {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        return json_error(405, "method_not_allowed", allowed=sorted(exc.allowed_methods))


class Service:
    """The control room: poller, broker, hub, endpoints; `start` binds, `stop` says goodbye."""

    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Upstream | None = None,
        retry: RequestPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.broker = MemoryBroker(settings.history_size)
        self.hub = Hub(self.metrics, max_buffer_bytes=settings.max_buffer_bytes)
        self.broker.add_sink(self.hub)
        self._upstream = upstream
        self._retry = retry
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.poller: Poller | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The HTTP base URL the service listens on."""
        return f"http://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL."""
        return f"ws://{self.settings.host}:{self.port}/"

    async def start(self) -> None:
        """Connect the parts, bind the port, start polling and the heartbeat."""
        s = self.settings
        upstream = self._upstream
        if upstream is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS)
            )
            upstream = JulesClient(self._http, s.jules_api_base, s.jules_api_key, retry=self._retry)
        poller = self.poller = Poller(upstream, self.broker, self.metrics, interval=s.poll_interval)
        api = Api(
            token=s.local_token,
            poller=poller,
            broker=self.broker,
            hub=self.hub,
            metrics=self.metrics,
            metrics_public=s.metrics_public,
        )
        endpoint = WebSocketEndpoint(s.local_token, self.hub, self.broker, poller, self.metrics)

        async def root(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await endpoint.handle(request)
            index = STATIC_DIR / "index.html"
            if not index.is_file():
                return json_error(404, "not_found", message="no dashboard installed")
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

        app = web.Application(middlewares=[json_errors])
        app.router.add_get("/", root)
        app.router.add_routes(api.routes())
        if STATIC_DIR.is_dir():
            app.router.add_static("/static/", STATIC_DIR, append_version=False)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self._tasks = [
            asyncio.create_task(poller.run(), name="poller"),
            asyncio.create_task(self.hub.run_heartbeat(s.heartbeat_interval), name="heartbeat"),
        ]
        log.info(
            "Service listening",
            extra={"host": s.host, "port": self.port, "upstream": s.jules_api_base},
        )

    async def stop(self) -> None:
        """Stop polling, close every client with 1001, release the port and the upstream."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        clients = len(self.hub)
        self.hub.close_all()
        if clients:
            log.info("Closed clients for shutdown", extra={"clientCount": clients})
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        log.info("Service stopped")

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
