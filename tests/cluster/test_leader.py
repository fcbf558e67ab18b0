"""The lease: one holder at a time, renewed while alive, a higher fence for each new holder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from control_room.broker.redis import Keys, connect
from control_room.leader import Lease
from tests.conftest import MS


@pytest.fixture
async def client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client with a shared history under the test's prefix (the lease needs one)."""
    redis = connect(redis_url)
    await redis.hset(Keys(redis_prefix).position, mapping={"epoch": "e1", "seq": 0})
    yield redis
    await redis.aclose()


def lease(client: aioredis.Redis, prefix: str, node: str, seconds: float) -> Lease:
    return Lease(client, Keys(prefix), node, seconds)


async def test_one_node_holds_the_lease_at_a_time(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    a = lease(client, redis_prefix, "a", 10.0)
    b = lease(client, redis_prefix, "b", 10.0)
    token = await a.acquire()
    assert token == "e1:1"
    assert await b.acquire() is None
    holder = await b.holder()
    assert holder is not None and (holder.node_id, holder.fence) == ("a", 1)


async def test_a_lease_that_is_renewed_is_kept_and_one_that_is_not_passes_on(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    a = lease(client, redis_prefix, "a", 150 * MS)
    b = lease(client, redis_prefix, "b", 150 * MS)
    sent = asyncio.get_running_loop().time()
    token = await a.acquire()
    assert token is not None
    keeping = asyncio.create_task(a.keep(token, sent))
    await asyncio.sleep(400 * MS)  # more than two lease lengths: renewals hold it
    assert await b.acquire() is None
    keeping.cancel()  # the holder stops renewing (paused, or killed)
    async with asyncio.timeout(2.0):
        while (taken := await b.acquire()) is None:  # noqa: ASYNC110
            await asyncio.sleep(10 * MS)
    assert taken == "e1:2"  # a higher fencing number than the old holder's
    assert await a.renew(token) is False


async def test_a_holder_learns_it_lost_the_lease_at_its_next_renewal(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    a = lease(client, redis_prefix, "a", 300 * MS)
    token = await a.acquire()
    assert token is not None
    keeping = asyncio.create_task(a.keep(token, asyncio.get_running_loop().time()))
    await client.delete(Keys(redis_prefix).leader)  # expired while paused...
    assert await lease(client, redis_prefix, "b", 10.0).acquire() is not None  # ...and taken
    assert await asyncio.wait_for(keeping, 1.0) == "taken"


async def test_a_released_lease_is_taken_at_once(client: aioredis.Redis, redis_prefix: str) -> None:
    a = lease(client, redis_prefix, "a", 10.0)
    token = await a.acquire()
    assert token is not None
    await a.release(token)
    assert await lease(client, redis_prefix, "b", 10.0).acquire() == "e1:2"


async def test_no_lease_without_a_shared_history(redis_url: str, redis_prefix: str) -> None:
    redis = connect(redis_url)
    try:
        assert await lease(redis, redis_prefix + "-empty", "a", 10.0).acquire() is None
    finally:
        await redis.aclose()


async def test_a_lease_whose_reply_was_lost_is_taken_up_again_by_its_holder(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    a = lease(client, redis_prefix, "a", 10.0)
    lost = await a.acquire()  # Redis took it, but say the reply never reached the node
    assert lost is not None
    await client.pexpire(Keys(redis_prefix).leader, 5_000)  # some of the lease has passed
    again, _ = await a.try_acquire()
    assert again == lost  # the same term, not a leaderless lease until it runs out
    assert await client.pttl(Keys(redis_prefix).leader) > 9_000  # a whole lease from now
    # Another process started with the same node id by mistake is not that holder.
    twin = lease(client, redis_prefix, "a", 10.0)
    token, left = await twin.try_acquire()
    assert token is None and left is not None and left > 9.0
    holder = await twin.holder()
    assert holder is not None and (holder.node_id, holder.fence) == ("a", 1)
