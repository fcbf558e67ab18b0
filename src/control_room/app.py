"""The one place that picks concrete parts and wires them into a running service."""

from __future__ import annotations

import asyncio
import socket
from importlib import resources
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from control_room import logging as logs
from control_room.api import Api
from control_room.auth import Principal, TokenSet
from control_room.broker.base import Broker
from control_room.broker.memory import MemoryBroker
from control_room.broker.redis import RedisBroker
from control_room.cluster import Cluster
from control_room.commands import Commands
from control_room.config import ConfigError, Settings
from control_room.jules.actions import JulesActions
from control_room.jules.client import JulesClient, RequestPolicy
from control_room.jules.requests import RequestCounter
from control_room.metrics import ClusterMetrics, Metrics
from control_room.models import Position, Snapshot
from control_room.notifier import Notifier, Outbox, RetryTiming
from control_room.poller import AfterPersist, BeforePublish, Poller, Upstream
from control_room.responses import json_error
from control_room.secret import Reloadable, SecretError, SecretSource, parse_single, reload_all
from control_room.secret import watch as watch_secrets
from control_room.server.guard import Guard
from control_room.server.headers import add_security_headers
from control_room.server.http import FrontRunner
from control_room.server.listener import (
    LISTEN_BACKLOG,
    bind,
    cap_beyond_file_limit,
    default_max_connections,
    raise_file_limit,
)
from control_room.server.origin import OriginPolicy
from control_room.state import State
from control_room.store import create_store, prune_forever
from control_room.store.base import Loaded, Store
from control_room.tasks import cancel_and_wait
from control_room.tokens import Tokens
from control_room.ws.handler import WebSocketEndpoint
from control_room.ws.hub import Hub

SHUTDOWN_GRACE_S: Final = 2.0  # time for close frames to flush before sockets are dropped
UPSTREAM_CONNECTIONS: Final = 8  # one listing at a time, plus 4 deletion checks in flight

log = logs.get("app")
STATIC_DIR: Final = Path(str(resources.files("control_room") / "static"))


async def unknown_route(request: web.Request) -> web.StreamResponse:
    """The last route: 405 JSON when another route has the path, else 404 JSON.

    A catch-all route rather than a middleware: a middleware adds a coroutine frame to
    every request, and a WebSocket's request lives as long as the connection (0.5 KiB
    each, measured at 3,000 idle connections).
    """
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:  # the path matches, the method does not: `methods` says which
            allowed |= methods
    if allowed:
        return json_error(405, "method_not_allowed", allowed=sorted(allowed))
    # The path is not repeated: whatever a client put in it (a token, by mistake) stays out.
    return json_error(
        404, "not_found", message="no such route: the stream is on /, the REST API under /api/"
    )


CATCH_ALL: Final = "/{tail:.*}"


def jules_key_source(settings: Settings) -> SecretSource[str]:
    """The Jules API key: fixed from JULES_API_KEY, or read (and watched) from its file.

    Raises ConfigError when the key is missing or its file unreadable (it was checked by
    `config.load`, but the file may have gone since).
    """
    file = settings.jules_api_key_file
    variable = "JULES_API_KEY_FILE" if file is not None else "JULES_API_KEY"
    try:
        if file is not None:
            return SecretSource(variable, parse_single(variable), path=file)
        return SecretSource(variable, parse_single(variable), value=settings.jules_api_key)
    except SecretError as exc:
        raise ConfigError(variable, str(exc).removeprefix(f"{variable}: ")) from None


class Service:
    """The control room: poller, broker, hub, endpoints; `start` binds, `stop` says goodbye."""

    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Upstream | None = None,
        retry: RequestPolicy | None = None,
        webhook_timing: RetryTiming | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # Every request to Jules, by kind: the budget (`/api/stats`, upstream_requests_total).
        self.requests = RequestCounter(
            lambda kind: self.metrics.upstream_requests.labels(kind).inc()
        )
        # With PERSIST=1 the ring is a cache of recent history; the store holds the rest.
        self.store: Store | None = create_store(settings) if settings.persist else None
        older = self.store.history if self.store is not None else None
        self.broker: Broker
        self.cluster_metrics: ClusterMetrics | None = None
        if settings.redis_url:  # a cluster member: the shared stream in Redis is the broker
            self.cluster_metrics = ClusterMetrics(self.metrics.registry)
            self.broker = self._redis_broker = RedisBroker(
                settings.redis_url,
                settings.redis_prefix,
                settings.history_size,
                self.cluster_metrics,
                older=older,
                seed=self._seed_from_store,
            )
        else:
            self.broker = self._memory_broker = MemoryBroker(settings.history_size, older=older)
        self.cluster: Cluster | None = None
        self._store_loaded: Loaded | None = None
        self.hub = Hub(self.metrics, max_buffer_bytes=settings.max_buffer_bytes)
        # The state first: by the time a client is handed a batch, a snapshot includes it.
        self.state = State()
        self.broker.add_sink(self.state)
        self.broker.add_sink(self.hub)
        self._upstream = upstream
        self._retry = retry
        self._webhook_timing = webhook_timing
        self.notifier: Notifier | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._endpoint: WebSocketEndpoint | None = None
        self.poller: Poller | None = None
        self.port = 0
        # Secrets that may be rotated while running (files), re-read on change and SIGHUP.
        self.secrets: list[Reloadable] = []
        # The client tokens; a reload that removes one closes its clients at once.
        self.tokens = Tokens.from_settings(settings)
        self.secrets.extend(self.tokens.reloadables)
        logs.add_secrets(self.tokens.values())
        self.tokens.add_listener(self._tokens_changed)
        self.guard = Guard(
            self.tokens, self.metrics, origins=OriginPolicy(settings.allowed_origins)
        )
        self.max_connections = 0

    @property
    def url(self) -> str:
        """The HTTP base URL the service listens on."""
        return f"http://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL."""
        return f"ws://{self.settings.host}:{self.port}/"

    async def start(self) -> None:
        """Connect the parts, bind the port, start polling and the heartbeat.

        If any step fails (the port is taken, the store will not open), whatever was
        already opened is closed again before the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            await self._release()
            raise

    async def _start(self) -> None:
        s = self.settings
        # First, before anything can publish: the position and snapshot the store kept.
        initial: Snapshot | None = None
        if self.store is not None and s.redis_url:
            # The cluster's history is Redis'; the store seeds it if Redis has none yet.
            self._store_loaded = await self.store.open()
        elif self.store is not None:
            initial = await self._open_store()
        upstream = self._upstream
        jules_key: SecretSource[str] | None = None
        if upstream is None:
            jules_key = jules_key_source(s)
            self.secrets.append(jules_key)
            # The key never reaches a log line, even if the upstream echoes it in an error
            # the client failed to redact: registered now, and again each time it rotates.
            logs.add_secrets([jules_key.current])
            jules_key.add_listener(lambda key: logs.add_secrets([key]))
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS)
            )
            upstream = JulesClient(
                self._http, s.jules_api_base, jules_key, retry=self._retry, requests=self.requests
            )

        def make_poller(
            initial: Snapshot | None, persist: BeforePublish | None, notify: AfterPersist | None
        ) -> Poller:
            return Poller(
                upstream,
                self.broker,
                self.metrics,
                interval=s.poll_interval,
                full_listing_interval=s.full_listing_interval,
                stall_after=s.stall_after,
                requests=self.requests,
                persist=persist,
                notify=notify,
                initial=initial,
                state=self.state,
            )

        if s.redis_url:
            cluster = self.cluster = Cluster(
                self._redis_broker,
                self.state,
                self.hub,
                self.cluster_metrics or ClusterMetrics(self.metrics.registry),
                node_id=s.node_id or f"{socket.gethostname()}:{s.port or 'auto'}",
                lease=s.lease,
                make_poller=make_poller,
                make_notifier=self._notifier,
                store=self.store,
            )
            refresh, wake = cluster.refresh, cluster.wake
        else:
            notifier = self.notifier = self._notifier()
            if notifier is not None:
                await notifier.start()
            persist = self.store.save if self.store is not None else None
            notify = notifier.enqueue if notifier is not None else None
            poller = self.poller = make_poller(initial, persist, notify)
            refresh, wake = poller.refresh, poller.wake
        if jules_key is not None:
            jules_key.add_listener(lambda _key: wake())  # a rotated key: poll now
        commands: Commands | None = None
        actions: JulesActions | None = None
        if self._http is not None and jules_key is not None:  # tests may inject an upstream
            actions = JulesActions(self._http, s.jules_api_base, jules_key, self.requests)
            commands = Commands(actions, refresh, lambda sid: self.state.sessions.get(sid))
        api = Api(
            guard=self.guard,
            state=self.state,
            broker=self.broker,
            hub=self.hub,
            metrics=self.metrics,
            metrics_public=s.metrics_public,
            stats_extra=self._stats_extra,
            commands=commands,
            sources=actions.list_sources if actions is not None else None,
            archived=actions.list_archived if actions is not None else None,
            timelines=upstream,
            requests=self.requests,
            poller=self._current_poller,
        )
        endpoint = self._endpoint = WebSocketEndpoint(
            self.guard,
            self.hub,
            self.broker,
            self.state,
            self.metrics,
            commands,
            compression=s.compression,
            compression_min_bytes=s.compression_min_bytes,
        )

        async def root(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await endpoint.handle(request)
            index = STATIC_DIR / "index.html"
            if not index.is_file():
                return json_error(404, "not_found", message="no dashboard installed")
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

        app = web.Application()
        app.on_response_prepare.append(add_security_headers)
        app.router.add_get("/", root)
        app.router.add_routes(api.routes())
        if STATIC_DIR.is_dir():
            app.router.add_static("/static/", STATIC_DIR, append_version=False)
        app.router.add_route("*", CATCH_ALL, unknown_route)
        file_limit = raise_file_limit()
        self.max_connections = s.max_connections or default_max_connections(file_limit)
        if cap_beyond_file_limit(self.max_connections, file_limit):
            log.warning(
                "MAX_CONNECTIONS is more than the file limit allows; descriptors will run out"
                " first (raise the hard limit, ulimit -Hn, or lower MAX_CONNECTIONS)",
                extra={
                    "maxConnections": self.max_connections,
                    "fileLimit": file_limit,
                    "allowed": default_max_connections(file_limit),
                },
            )
        shed = self.metrics.server_refused.labels("no_file_descriptors")
        listeners = bind(s.host, s.port, on_shed=shed.inc)
        self._runner = FrontRunner(
            app,
            max_connections=self.max_connections,
            metrics=self.metrics,
            shutdown_timeout=SHUTDOWN_GRACE_S,
        )
        await self._runner.setup()
        for sock in listeners:
            await web.SockSite(self._runner, sock, backlog=LISTEN_BACKLOG).start()
        self.port = listeners[0].getsockname()[1]
        self._tasks = [
            asyncio.create_task(self.hub.run_heartbeat(s.heartbeat_interval), name="heartbeat"),
        ]
        if self.cluster is not None:
            # The node id names the bound port (PORT=0 picks one); then join the cluster.
            if not s.node_id:
                self.cluster.node_id = f"{socket.gethostname()}:{self.port}"
            logs.set_node(self.cluster.node_id)  # the lines of several nodes, told apart
            await self.cluster.start()
        if self.poller is not None:
            self._tasks.append(asyncio.create_task(self.poller.run(), name="poller"))
        if self.store is not None:
            self._tasks.append(
                asyncio.create_task(prune_forever(self.store, s.delta_retention), name="prune")
            )
        if self.secrets:
            self._tasks.append(asyncio.create_task(watch_secrets(self.secrets), name="secrets"))
        log.info(
            "Service listening",
            extra={
                "host": s.host,
                "port": self.port,
                "upstream": logs.redact_url(s.jules_api_base),
                "maxConnections": self.max_connections,
                "fileLimit": file_limit,
            },
        )

    def _current_poller(self) -> Poller | None:
        """The poller running in this process (none on a cluster follower)."""
        if self.cluster is not None:
            return self.cluster.poller
        return self.poller

    def reload_secrets(self) -> None:
        """Re-read every secret file now (SIGHUP), whether or not its stat changed."""
        changed = reload_all(self.secrets, force=True)
        log.info("Secrets reloaded", extra={"changed": changed})

    def _tokens_changed(self, tokens: TokenSet, revoked: frozenset[Principal]) -> None:
        """A token file changed: never log the new tokens; close clients of removed ones."""
        logs.add_secrets(self.tokens.values())
        if revoked:
            self.metrics.token_revocations.inc(len(revoked))
            self.hub.revoke(tokens)

    def _stats_extra(self) -> dict[str, object]:
        """What /api/stats adds: webhook delivery (where it runs) and the cluster."""
        extra: dict[str, object] = {}
        notifier = self.cluster.notifier if self.cluster is not None else self.notifier
        if notifier is not None:
            extra.update(notifier.stats())
        if self.cluster is not None:
            extra.update(self.cluster.stats())
        return extra

    async def _seed_from_store(self) -> tuple[Position, Snapshot] | None:
        """A cluster starting on an empty Redis continues the store's history (PERSIST=1)."""
        loaded = self._store_loaded
        return (loaded.position, loaded.sessions) if loaded is not None else None

    def _notifier(self) -> Notifier | None:
        """Webhook delivery when NOTIFY_WEBHOOK is set; its outbox is the store, if any, or
        in a cluster without a store the shared stream (cursors in Redis)."""
        s = self.settings
        if not s.notify_webhooks:
            return None
        broker = self.broker
        outbox: Outbox | None = self.store
        if outbox is None and self.cluster is not None:
            outbox = self._redis_broker
        return Notifier(
            s.notify_webhooks,
            secret=s.notify_webhook_secret,
            metrics=self.metrics,
            position=lambda: broker.position,
            store=outbox,
            timeout=s.notify_timeout,
            max_age=s.notify_max_age,
            queue_size=s.notify_queue_size,
            timing=self._webhook_timing,
        )

    async def stop(self) -> None:
        """Stop polling, close every client with 1001, release the port and the upstream."""
        await self._release()
        log.info("Service stopped")

    async def _release(self) -> None:
        """Close whatever is open; safe on a service that started only partly."""
        await cancel_and_wait(self._tasks)
        if self._endpoint is not None:
            await self._endpoint.close()
        self._tasks = []
        if self.cluster is not None:
            await self.cluster.stop()  # stops leading (lease given back), stops reading
        if self.notifier is not None:
            await self.notifier.stop()
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
        if self.store is not None:
            await self.store.close()

    async def _open_store(self) -> Snapshot | None:
        """Open the store; adopt its position and return its snapshot (None: a new store).

        A new (or wiped) store keeps the broker's fresh epoch: history starts over, and
        clients holding an old position get a reset.
        """
        store = self.store
        assert store is not None
        loaded = await store.open()  # on failure, start() closes it again
        if loaded is None:
            log.info("Store created", extra={"epoch": self.broker.position.epoch})
            return None
        self._memory_broker.reset(loaded.position)
        log.info(
            "Store loaded",
            extra={
                "epoch": loaded.position.epoch,
                "seq": loaded.position.seq,
                "sessions": len(loaded.sessions),
            },
        )
        return loaded.sessions

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
