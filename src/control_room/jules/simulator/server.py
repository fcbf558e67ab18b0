"""The simulator on a real socket, ticking in the background: for tests, the demo and the bench."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Final

from aiohttp import web

from control_room import logging as log
from control_room.jules.simulator.engine import ACTIVITY_INTERVAL_S, WARMUP_TICKS, Simulator
from control_room.jules.simulator.http import API_PREFIX, create_app

_log: Final = log.get("simulator")

SHUTDOWN_TIMEOUT: Final = 1.0  # seconds; a simulator has nothing worth waiting a minute for
# An account's tick only catches up with the clock; ticking often keeps each activity's time
# within this much of when it was due, at a cost of a loop over the in-flight sessions.
ACCOUNT_TICK_S: Final = 0.25
DEFAULT_ACTIVE: Final = 20  # in-flight sessions of a large account: the benchmark


class SimulatorServer:
    """The simulator on a real socket, optionally ticking in the background."""

    def __init__(
        self,
        sim: Simulator,
        api_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tick_interval: float | None = None,
    ) -> None:
        self.sim = sim
        self.host = host
        self._requested_port = port
        self._tick_interval = tick_interval
        # Cancel a handler when its client goes away: a delayed response must not hold shutdown.
        self._runner = web.AppRunner(
            create_app(sim, api_key), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        self._ticker: asyncio.Task[None] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://host:port/v1alpha`, what a client is configured with."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def stats_url(self) -> str:
        """`http://host:port/_sim/stats` (needs the API key, like the API)."""
        return f"http://{self.host}:{self.port}/_sim/stats"

    async def start(self) -> None:
        """Bind and serve; start ticking if asked."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        if self._tick_interval:
            self._ticker = asyncio.create_task(self._tick_forever(self._tick_interval))

    async def stop(self) -> None:
        """Stop ticking and serving."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._runner.cleanup()

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.sim.tick()
            except Exception:
                _log.exception("simulator_tick_failed")

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve_simulator(
    host: str,
    port: int,
    api_key: str,
    seed: int,
    tick_interval: float | None,
    *,
    large_account: int | None = None,
    active: int = DEFAULT_ACTIVE,
    activity_interval: float = ACTIVITY_INTERVAL_S,
) -> None:
    """Serve a ticking simulator until cancelled (`control-room simulate`).

    Without `large_account`, the demo board, warmed up; with it, an account of that many
    sessions, `active` in flight at one activity per `activity_interval` seconds, ticked every
    `tick_interval` seconds (default `ACCOUNT_TICK_S`).
    """
    if large_account is None:
        sim = Simulator(seed)
        for _ in range(WARMUP_TICKS):
            sim.tick()
    else:
        sim = Simulator.large_account(
            large_account, active, seed=seed, activity_interval=activity_interval
        )
        tick_interval = tick_interval or ACCOUNT_TICK_S
    async with SimulatorServer(
        sim, api_key, host=host, port=port, tick_interval=tick_interval or None
    ) as server:
        _log.info(
            "simulator_started",
            extra={
                "url": server.base_url,
                "seed": seed,
                "tickInterval": tick_interval,
                "sessions": len(sim),
                "active": sim.active,
            },
        )
        try:
            await asyncio.Event().wait()
        finally:
            _log.info("simulator_stopped", extra={"url": server.base_url})
