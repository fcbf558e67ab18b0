"""Cluster nodes in this process: real services on 127.0.0.1 sharing one Redis prefix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from control_room.app import Service
from control_room.jules.simulator import SimulatorServer
from control_room.poller import Poller
from tests.conftest import FAST_RETRY, FAST_WEBHOOKS, MS, settings
from tests.store.conftest import pg_backend  # noqa: F401 - the store suite's PostgreSQL fixture

LEASE_S = 300 * MS
"""A short lease: takeovers in tests take a few hundred milliseconds, not ten seconds."""

NodeFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def make_node(
    upstream: SimulatorServer, redis_url: str, redis_prefix: str
) -> AsyncIterator[NodeFactory]:
    """Start cluster nodes pointed at the simulator and one Redis prefix; stopped at the end."""
    started: list[Service] = []

    async def make(**overrides: Any) -> Service:
        overrides.setdefault("jules_api_base", upstream.base_url)
        overrides.setdefault("redis_url", redis_url)
        overrides.setdefault("redis_prefix", redis_prefix)
        overrides.setdefault("lease", LEASE_S)
        overrides.setdefault("node_id", f"node-{len(started) + 1}")
        service = Service(settings(**overrides), retry=FAST_RETRY, webhook_timing=FAST_WEBHOOKS)
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


async def until(condition: Callable[[], bool], within: float = 5000 * MS) -> None:
    """Wait for a condition another task makes true."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(5 * MS)


def poller(node: Service) -> Poller:
    """The node's poller (it must lead)."""
    assert node.cluster is not None and node.cluster.poller is not None, "not the leader"
    return node.cluster.poller


async def leading(node: Service) -> Poller:
    """Wait until the node leads and its first poll (the baseline) is done."""
    assert node.cluster is not None
    cluster = node.cluster
    await until(lambda: cluster.poller is not None and cluster.poller.attempts > 0)
    await until(lambda: node.state.ready)
    return poller(node)


async def following(node: Service) -> None:
    """Wait until a follower has adopted the cluster's baseline."""
    await until(lambda: node.state.ready)
