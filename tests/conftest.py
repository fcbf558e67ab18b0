"""Shared fixtures: a real simulated upstream, a real service, real clients, scaled time."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import settings

from control_room.app import Service
from control_room.config import Settings
from control_room.jules.client import RequestPolicy
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.notifier import RetryTiming
from tests.fake_upstream import FakeUpstream
from tests.redis_server import prefixed, shared_redis_url

# Hypothesis' per-example deadline (200 ms) measures the machine, not the code: on a loaded
# two-core CI runner a property test failed for a slow example. Keep its example counts.
settings.register_profile("control-room", deadline=None)
settings.load_profile("control-room")

MS = float(os.environ.get("CONTROL_ROOM_TEST_MS", "1")) / 1000
"""One millisecond of test time; raise CONTROL_ROOM_TEST_MS on a slow machine."""

FAST_RETRY = RequestPolicy(
    timeout=300 * MS, attempts=3, base=5 * MS, cap=20 * MS, retry_after_max=200 * MS
)
"""In-poll retries on the test clock: three quick tries, a long Retry-After left to the poller."""

FAST_WEBHOOKS = RetryTiming(
    base=5 * MS, cap=40 * MS, retry_after_max=2000 * MS, store_retry=20 * MS
)
"""Webhook retries on the test clock: the real 1 s → 5 min curve, shrunk to milliseconds."""

TOKEN = "test-token.with.dots"
API_KEY = "sim-key"


def settings(**overrides: Any) -> Settings:
    """Settings for a test service: loopback, ephemeral port, fast timers."""
    base = Settings(
        host="127.0.0.1",
        port=0,
        local_token=TOKEN,
        jules_api_key=API_KEY,
        poll_interval=3600.0,  # tests poll on demand with poll_once(); no timer races
        # Every poll lists every page, as the wave-1 tests expect; the request-budget tests
        # (tests/functional/test_polling_budget.py) set their own interval.
        full_listing_interval=0.001,
        heartbeat_interval=3600.0,
        log_level="debug",
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def sim() -> Simulator:
    """A deterministic simulated Jules account with no sessions yet."""
    return Simulator(seed=1)


@pytest.fixture
async def upstream(sim: Simulator) -> AsyncIterator[SimulatorServer]:
    """The simulator served over real HTTP on 127.0.0.1."""
    async with SimulatorServer(sim, API_KEY) as server:
        yield server


ServiceFactory = Callable[..., Awaitable[Service]]


async def _services(base_url: str) -> AsyncIterator[ServiceFactory]:
    """A factory of services pointed at `base_url`; all are stopped when it is closed."""
    started: list[Service] = []

    async def make(**overrides: Any) -> Service:
        overrides.setdefault("jules_api_base", base_url)
        service = Service(settings(**overrides), retry=FAST_RETRY, webhook_timing=FAST_WEBHOOKS)
        await service.start()
        started.append(service)
        # The poller's first poll runs at start; let it finish so tests then poll on demand
        # (the interval is an hour) and count requests without a background poll in between.
        assert service.poller is not None
        for _ in range(1000):
            if service.poller.attempts:
                break
            await asyncio.sleep(MS)
        return service

    yield make
    for service in started:
        await service.stop()


@pytest.fixture
async def make_service(upstream: SimulatorServer) -> AsyncIterator[ServiceFactory]:
    """Start services pointed at the simulator; all are stopped at the end of the test."""
    async for make in _services(upstream.base_url):
        yield make


@pytest.fixture
async def service(make_service: ServiceFactory) -> Service:
    """A running service whose baseline poll is done."""
    svc = await make_service()
    assert svc.poller is not None and svc.poller.ready
    return svc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A real HTTP/WebSocket client."""
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(
    http: aiohttp.ClientSession, service: Service, query: str = "", **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    """Open an authenticated WebSocket the way a browser does (token as a subprotocol)."""
    kwargs.setdefault("protocols", (f"bearer.{TOKEN}",))
    kwargs.setdefault("autoping", True)
    return await http.ws_connect(service.ws_url + query, **kwargs)


async def receive_json(ws: aiohttp.ClientWebSocketResponse, wait: float = 2000 * MS) -> Any:
    """The next text message, decoded."""
    msg = await asyncio.wait_for(ws.receive(), wait)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return msgspec.json.decode(msg.data)


async def receive_n(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[Any]:
    """The next `n` messages, decoded."""
    return [await receive_json(ws) for _ in range(n)]


async def nothing_more(ws: aiohttp.ClientWebSocketResponse, wait: float = 100 * MS) -> None:
    """Assert no message arrives within `wait`."""
    try:
        msg = await asyncio.wait_for(ws.receive(), wait)
    except TimeoutError:
        return
    pytest.fail(f"unexpected message {msg!r}")


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A scriptable fake Jules API on 127.0.0.1 (tests/fake_upstream.py), with no sessions."""
    async with FakeUpstream(API_KEY) as server:
        yield server


@pytest.fixture
async def make_fake_service(fake: FakeUpstream) -> AsyncIterator[ServiceFactory]:
    """Start services pointed at the fake upstream; all are stopped at the end of the test."""
    async for make in _services(fake.base_url):
        yield make


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server for the whole run (tests/redis_server.py says which)."""
    with shared_redis_url() as url:
        yield url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own, its keys dropped afterwards."""
    async with prefixed(redis_url) as prefix:
        yield prefix
