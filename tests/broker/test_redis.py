"""What only the Redis broker does: several nodes on one stream, fencing, baselines, losses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from control_room.broker.base import Batch, Fenced
from control_room.broker.redis import RedisBroker, stop_tasks
from control_room.leader import Lease
from control_room.metrics import ClusterMetrics
from control_room.models import Snapshot
from tests.broker.conftest import Recorder, lead, start_redis_broker
from tests.broker.test_contract import TS, changes
from tests.conftest import MS
from tests.factories import session
from tests.redis_server import drop_prefix, private_redis

Node = Callable[..., Awaitable[tuple[RedisBroker, Recorder, list[tuple[str, Snapshot]]]]]


@pytest.fixture
async def node(redis_url: str, redis_prefix: str) -> AsyncIterator[Node]:
    """Start brokers on one shared prefix, each with a sink and a record of its resets."""
    started: list[RedisBroker] = []

    async def make(
        history_size: int = 100,
    ) -> tuple[RedisBroker, Recorder, list[tuple[str, Snapshot]]]:
        broker = RedisBroker(
            redis_url, redis_prefix, history_size, ClusterMetrics(CollectorRegistry())
        )
        resets: list[tuple[str, Snapshot]] = []
        broker.on_reset = lambda sessions, ready, reason: resets.append((reason, sessions))
        sink = Recorder()
        broker.add_sink(sink)
        await broker.start()
        started.append(broker)
        return broker, sink, resets

    yield make
    for broker in started:
        await broker.stop()


async def until(condition: Callable[[], bool], within: float = 3000 * MS) -> None:
    """Wait for a condition (the readers are other tasks)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (state changed by another task)
            await asyncio.sleep(2 * MS)


async def test_every_node_delivers_the_same_batches_in_the_same_order(node: Node) -> None:
    leader, leader_sink, _ = await node()
    follower, follower_sink, _ = await node()
    await lead(leader)
    for ids in (("a", "b"), ("c",), ("a",)):
        kind = "updated" if ids == ("a",) else "created"
        await leader.publish(Batch(leader.stamp(changes(*ids, kind=kind), TS)))
    await until(lambda: len(follower_sink.batches) == 3)

    def seen(sink: Recorder) -> list[list[tuple[int, bytes]]]:
        return [[(e.seq, e.payload) for e in b.entries] for b in sink.batches]

    assert seen(follower_sink) == seen(leader_sink)
    assert follower.position == leader.position
    assert [d.type for d in follower_sink.batches[2].deltas] == ["updated"]


async def test_a_node_joining_later_adopts_the_shared_snapshot(node: Node) -> None:
    leader, _, _ = await node()
    await lead(leader)
    await leader.save_baseline({"x": session("x")})
    await leader.publish(Batch(leader.stamp(changes("a", "b"), TS)))
    await leader.publish(Batch(leader.stamp(changes("a", kind="deleted"), TS)))
    late, _, resets = await node()
    reason, sessions = resets[0]
    assert reason == "start" and late.ready
    assert sorted(sessions) == ["b", "x"]
    assert late.position == leader.position


async def test_a_follower_adopts_the_baseline_once_it_is_taken(node: Node) -> None:
    leader, _, _ = await node()
    follower, _, resets = await node()
    assert not follower.ready and resets == [("start", {})]
    await lead(leader)
    await leader.save_baseline({"a": session("a"), "b": session("b")})
    await until(lambda: follower.ready)
    assert resets[-1][0] == "baseline" and sorted(resets[-1][1]) == ["a", "b"]


async def test_an_old_leader_cannot_publish_once_another_holds_the_lease(node: Node) -> None:
    old, old_sink, _ = await node()
    new, new_sink, _ = await node()
    first = Lease(old.redis, old.keys, "old", lease=50 * MS)
    token = await first.acquire()
    assert token is not None
    old.token = token
    await old.publish(Batch(old.stamp(changes("a"), TS)))
    # The old leader is "paused": it does not renew, and its lease runs out.
    second = Lease(new.redis, new.keys, "new", lease=10.0)
    async with asyncio.timeout(2.0):
        while (new_token := await second.acquire()) is None:  # noqa: ASYNC110
            await asyncio.sleep(10 * MS)
    new.token = new_token
    assert (await second.holder()) is not None
    holder = await second.holder()
    assert holder is not None and holder.node_id == "new" and holder.fence == 2
    await until(lambda: new.position.seq == 1)
    # Waking up, the old leader still believes it leads: the fencing token stops it.
    with pytest.raises(Fenced):
        await old.publish(Batch(old.stamp(changes("b"), TS)))
    with pytest.raises(Fenced):
        await old.set_webhook_cursor("https://hooks.example/x", 1)
    await new.publish(Batch(new.stamp(changes("c"), TS)))
    await until(lambda: old.position.seq == 2)
    assert [[e.session_id for e in b.entries] for b in old_sink.batches] == [["a"], ["c"]]
    assert [[e.session_id for e in b.entries] for b in new_sink.batches] == [["a"], ["c"]]


async def test_a_flushed_redis_starts_a_new_epoch_and_nodes_reload(
    node: Node, redis_url: str
) -> None:
    leader, _, _ = await node()
    follower, _, resets = await node()
    await lead(leader)
    await leader.publish(Batch(leader.stamp(changes("a", "b"), TS)))
    await until(lambda: follower.position.seq == 2)
    old_epoch = follower.position.epoch
    await drop_prefix(redis_url, follower.keys.prefix)  # Redis came back empty
    await until(lambda: follower.position.epoch != old_epoch)
    assert follower.position.seq == 0 and resets[-1] == ("epoch_changed", {})
    await until(lambda: leader.position.epoch == follower.position.epoch)
    with pytest.raises(Fenced):  # the old fencing token is gone with the rest
        await leader.publish(Batch(leader.stamp(changes("c"), TS)))


async def test_a_reader_that_fell_behind_the_window_reloads_instead_of_skipping(
    node: Node,
) -> None:
    leader, _, _ = await node(history_size=2)
    follower, sink, resets = await node(history_size=2)
    await lead(leader)
    assert follower._reader is not None
    await stop_tasks([follower._reader], follower.clients)  # a follower stalled...
    for sid in "abcd":
        await leader.publish(Batch(leader.stamp(changes(sid), TS)))
    follower._reader = asyncio.create_task(follower._read_forever())  # ...wakes up
    await until(lambda: follower.position.seq == 4)
    assert sink.batches == [] and resets[-1][0] == "gap"
    assert sorted(resets[-1][1]) == ["a", "b", "c", "d"]


async def test_a_node_whose_last_entries_were_rewritten_starts_a_new_epoch() -> None:
    # Redis comes back from an older RDB, and a node that never saw what was lost (a fresh
    # process) leads and numbers from the restored head: the shared seq is where a
    # follower was, but the entries under it are others. The follower must not go on.
    with private_redis() as server:
        brokers: list[RedisBroker] = []

        async def start(
            resets: list[str] | None = None,
        ) -> tuple[RedisBroker, Recorder]:
            broker = RedisBroker(server.url, "p", 100, ClusterMetrics(CollectorRegistry()))
            if resets is not None:
                broker.on_reset = lambda sessions, ready, reason: resets.append(reason)
            sink = Recorder()
            broker.add_sink(sink)
            await broker.start()
            brokers.append(broker)
            return broker, sink

        try:
            old, _ = await start()
            resets: list[str] = []
            follower, seen = await start(resets)
            await lead(old)
            await old.publish(Batch(old.stamp(changes("a", "b"), TS)))
            await until(lambda: follower.position.seq == 2)
            redis.Redis(port=server.port).save()
            await old.publish(Batch(old.stamp(changes("c", "d"), TS)))
            await until(lambda: follower.position.seq == 4)
            epoch = follower.position.epoch
            assert follower._reader is not None
            await stop_tasks([follower._reader], follower.clients)  # asleep meanwhile
            await old.stop()
            server.kill()
            server.start()
            fresh, _ = await start()
            await fresh.redis.delete(fresh.keys.leader)  # the old lease ran out
            await lead(fresh)
            assert fresh.position.seq == 2
            await fresh.publish(Batch(fresh.stamp(changes("x", "y"), TS)))  # seqs 3, 4 again
            follower._reader = asyncio.create_task(follower._read_forever())
            await until(lambda: follower.position.epoch != epoch)
            assert resets[-1] == "rolled_back" and follower.position.seq == 0
            delivered = [e.session_id for b in seen.batches for e in b.entries]
            assert delivered == ["a", "b", "c", "d"]  # never x, y under seqs 3, 4
            await until(lambda: fresh.position.epoch == follower.position.epoch)
            with pytest.raises(Fenced):  # its token names the old epoch
                await fresh.publish(Batch(fresh.stamp(changes("z"), TS)))
        finally:
            for broker in brokers:
                await broker.stop()


async def test_a_baseline_read_after_later_deltas_is_adopted_where_the_node_is(
    node: Node,
) -> None:
    leader, _, _ = await node()
    follower, sink, resets = await node()
    await lead(leader)
    assert follower._reader is not None
    await stop_tasks([follower._reader], follower.clients)  # busy elsewhere meanwhile
    await leader.save_baseline({"x": session("x", "COMPLETED")})
    await leader.publish(Batch(leader.stamp(changes("a"), TS)))
    await leader.publish(Batch(leader.stamp(changes("x", kind="deleted"), TS)))
    follower._reader = asyncio.create_task(follower._read_forever())
    await until(lambda: follower.position.seq == 2)
    # The snapshot as of seq 0 (the deltas since undone), then both deltas: no gap.
    assert resets[-1] == ("baseline", {"x": session("x", "COMPLETED")})
    assert [[e.seq for e in b.entries] for b in sink.batches] == [[1], [2]]


async def test_a_head_read_before_this_leaders_own_publish_is_no_going_back(
    redis_url: str, redis_prefix: str
) -> None:
    # Seen under load: the reader asked for the head, the leader's publish (on another
    # connection) was answered first, then the reader compared the older head with what
    # had been published since, and started a needless new epoch on a healthy cluster.
    broker = await start_redis_broker(redis_url, redis_prefix)
    resets: list[str] = []
    broker.on_reset = lambda sessions, ready, reason: resets.append(reason)
    sink = Recorder()
    broker.add_sink(sink)
    try:
        await lead(broker)
        await broker.publish(Batch(broker.stamp(changes("a"), TS)))
        await until(lambda: broker.position.seq == 1)
        held, release = asyncio.Event(), asyncio.Event()
        stream_redis = broker._stream_redis
        pipeline = stream_redis.pipeline

        def holding_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            async def execute_then_wait(*a: Any, **kw: Any) -> Any:
                answer = await execute(*a, **kw)
                if not release.is_set():  # this reply waits in the loop, as under load
                    held.set()
                    await release.wait()
                return answer

            pipe.execute = execute_then_wait
            return pipe

        stream_redis.pipeline = holding_pipeline  # type: ignore[method-assign]
        epoch = broker.position.epoch
        await asyncio.wait_for(held.wait(), 5)  # a head of seq 1 is on its way
        await broker.publish(Batch(broker.stamp(changes("b", "c"), TS)))  # answered first
        release.set()
        await until(lambda: broker.position.seq == 3)
        assert broker.position.epoch == epoch and resets == []
        assert [e.session_id for b in sink.batches for e in b.entries] == ["a", "b", "c"]
    finally:
        await broker.stop()
