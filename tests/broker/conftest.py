"""One factory per broker, so the contract suite runs against memory and Redis alike.

The Redis broker is started as the leader (it takes the lease, so it may publish) and, like
every node, delivers what it publishes through its own stream reader.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from control_room.broker.base import Batch, Broker
from control_room.broker.memory import MemoryBroker, OlderHistory
from control_room.broker.redis import RedisBroker
from control_room.leader import Lease
from control_room.metrics import ClusterMetrics
from tests.redis_server import drop_prefix


class Recorder:
    """A sink that keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def deliver(self, batch: Batch) -> None:
        self.batches.append(batch)


async def start_redis_broker(
    url: str, prefix: str, history_size: int = 100, *, older: OlderHistory | None = None
) -> RedisBroker:
    """A Redis broker under `prefix`, started (not leading)."""
    broker = RedisBroker(
        url, prefix, history_size, ClusterMetrics(CollectorRegistry()), older=older
    )
    await broker.start()
    return broker


async def lead(broker: RedisBroker, node: str = "test-node", lease: float = 30.0) -> Lease:
    """Take the lease for `broker` so that it may publish."""
    held = Lease(broker.redis, broker.keys, node, lease)
    token = await held.acquire()
    assert token is not None, "the lease is held by someone else"
    broker.token = token
    return held


Make = Callable[..., Awaitable[tuple[Broker, Recorder]]]
"""make(history_size=100, *, older=None) -> (a broker that may publish, its recording sink)"""


@pytest.fixture(params=["memory", "redis"])
async def make_broker(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Make]:
    """Each backend in turn: the contract suite runs once per broker."""
    started: list[RedisBroker] = []

    async def make(
        history_size: int = 100, *, older: OlderHistory | None = None
    ) -> tuple[Broker, Recorder]:
        sink = Recorder()
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker(history_size, older=older)
        else:
            redis_broker = await start_redis_broker(
                redis_url, f"{redis_prefix}-{len(started)}", history_size, older=older
            )
            started.append(redis_broker)
            await lead(redis_broker)
            broker = redis_broker
        broker.add_sink(sink)
        return broker, sink

    yield make
    for broker in started:
        await broker.stop()
        await drop_prefix(redis_url, broker.keys.prefix)
