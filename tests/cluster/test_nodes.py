"""Nodes of one cluster in this process: same stream on every node, resume anywhere, handover."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
import pytest

from control_room import cluster as cluster_module
from control_room.app import Service
from control_room.broker import redis as redis_broker
from control_room.jules.simulator import Simulator
from tests.cluster.conftest import NodeFactory, following, leading, poller, until
from tests.conftest import MS, TOKEN, connect, nothing_more, receive_json, receive_n
from tests.notifier.receiver import Receiver
from tests.redis_server import drop_prefix
from tests.store.conftest import PostgresBackend

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def get(http: aiohttp.ClientSession, node: Service, path: str) -> Any:
    async with http.get(node.url + path, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_clients_on_every_node_receive_the_same_stream(
    http: aiohttp.ClientSession, make_node: NodeFactory, sim: Simulator
) -> None:
    sim.create(title="there before")
    a = await make_node()
    leader = await leading(a)
    b = await make_node()
    await following(b)
    on_a = await connect(http, a, "?snapshot=1")
    on_b = await connect(http, b, "?snapshot=1")
    snapshots = [await receive_json(on_a), await receive_json(on_b)]
    assert snapshots[0] == snapshots[1] and len(snapshots[0]["sessions"]) == 1
    for _ in range(3):
        sim.create()
    await leader.poll_once()
    got_a, got_b = await receive_n(on_a, 3), await receive_n(on_b, 3)
    assert got_a == got_b
    assert [m["seq"] for m in got_a] == [1, 2, 3]
    sessions_a, sessions_b = (
        await get(http, a, "/api/sessions"),
        await get(http, b, "/api/sessions"),
    )
    for body in (sessions_a, sessions_b):
        body["sessions"].sort(key=lambda s: s["id"])  # each node keeps its own order
    assert sessions_a == sessions_b and sessions_b["seq"] == 3
    deltas = await get(http, b, "/api/deltas?since=1")
    assert [d["seq"] for d in deltas["deltas"]] == [2, 3]
    stats = await get(http, b, "/api/stats")
    assert stats["cluster"]["nodeId"] == "node-2" and stats["cluster"]["isLeader"] is False
    await until(lambda: b.cluster is not None and b.cluster.holder is not None)
    stats = await get(http, b, "/api/stats")
    assert stats["cluster"]["leader"] == "node-1" and stats["cluster"]["fence"] >= 1
    async with http.get(a.url + "/metrics", headers=AUTH) as resp:
        metrics = await resp.text()
    assert "control_room_cluster_leader 1.0" in metrics
    assert "control_room_cluster_stream_delay_seconds_count" in metrics


async def test_a_client_resumes_on_another_node(
    http: aiohttp.ClientSession, make_node: NodeFactory, sim: Simulator
) -> None:
    a = await make_node()
    leader = await leading(a)
    b = await make_node()
    await following(b)
    on_a = await connect(http, a)
    sim.create()
    sim.create()
    await leader.poll_once()
    first = await receive_n(on_a, 2)
    await on_a.close()
    sim.create()
    await leader.poll_once()
    await until(lambda: b.broker.position.seq == 3)
    epoch = a.broker.position.epoch
    on_b = await connect(http, b, f"?since={first[-1]['seq']}&epoch={epoch}")
    resumed = await receive_json(on_b)
    assert (resumed["type"], resumed["seq"]) == ("created", 3)
    await nothing_more(on_b)


async def test_a_command_sent_to_a_follower_is_published_by_the_leader_at_once(
    http: aiohttp.ClientSession, make_node: NodeFactory, sim: Simulator
) -> None:
    a = await make_node()
    await leading(a)
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await poller(a).poll_once()
    b = await make_node()
    await following(b)
    ws = await connect(http, b)
    started = time.perf_counter()
    await ws.send_json({"type": "approvePlan", "id": 1, "sessionId": waiting["id"]})
    messages = [await receive_json(ws), await receive_json(ws)]
    delta = next(m for m in messages if m.get("type") == "updated")
    result = next(m for m in messages if m.get("type") == "result")
    assert delta["sessionId"] == waiting["id"] and result["ok"] is True
    # The follower answered with the session as the leader re-read it.
    assert result["session"]["state"] != "AWAITING_PLAN_APPROVAL"
    assert time.perf_counter() - started < 1.0  # the poll interval is an hour in tests


async def test_a_new_leader_continues_the_numbering_without_announcing_everything_again(
    http: aiohttp.ClientSession, make_node: NodeFactory, sim: Simulator
) -> None:
    for _ in range(3):
        sim.create()
    a = await make_node()
    await leading(a)
    b = await make_node()
    await following(b)
    sim.create()
    await poller(a).poll_once()
    ws = await connect(http, b, f"?since=0&epoch={b.broker.position.epoch}")
    assert (await receive_json(ws))["seq"] == 1
    await a.stop()  # a clean stop gives the lease back: b takes over at once
    second = await leading(b)
    sim.create()
    await second.poll_once()
    after = await receive_json(ws)
    assert (after["type"], after["seq"]) == ("created", 2)  # one new session, nothing more
    await nothing_more(ws)
    stats = await get(http, b, "/api/stats")
    assert stats["cluster"]["isLeader"] is True


async def test_a_flushed_redis_makes_every_client_reload(
    http: aiohttp.ClientSession,
    make_node: NodeFactory,
    sim: Simulator,
    redis_url: str,
    redis_prefix: str,
) -> None:
    a = await make_node()
    await leading(a)
    b = await make_node()
    await following(b)
    sim.create()
    await poller(a).poll_once()
    epoch = b.broker.position.epoch
    ws = await connect(http, b, f"?since=0&epoch={epoch}")
    assert (await receive_json(ws))["seq"] == 1
    await drop_prefix(redis_url, redis_prefix)  # Redis lost everything
    closed = await ws.receive(2000 * MS)
    assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1012
    await until(lambda: b.broker.position.epoch != epoch and b.state.ready)
    again = await connect(http, b, f"?since=1&epoch={epoch}")
    reset = await receive_json(again)
    assert (reset["type"], reset["reason"]) == ("reset", "epoch_changed")
    assert reset["epoch"] == b.broker.position.epoch


async def test_webhooks_resume_on_the_new_leader_with_the_same_ids(
    make_node: NodeFactory, sim: Simulator
) -> None:
    async with Receiver() as receiver:
        receiver.fail(1000)  # down while the first leader holds the deliveries
        a = await make_node(notify_webhooks=(receiver.url,))
        await leading(a)
        b = await make_node(notify_webhooks=(receiver.url,))
        await following(b)
        sim.create()
        sim.create()
        await poller(a).poll_once()
        await receiver.wait_for(lambda: len(receiver.requests) >= 2)
        tried = receiver.requests[0].msg_id
        await a.stop()
        receiver.heal()
        await leading(b)
        await receiver.wait_accepted(2)
        assert receiver.seqs == [1, 2]
        assert receiver.accepted[0].msg_id == tried
        assert b.cluster is not None and b.cluster.notifier is not None
        notifier = b.cluster.notifier
        await until(lambda: notifier.pending() == 0)  # the shared cursor moved past both


async def test_a_node_that_loses_redis_keeps_its_clients_and_says_so(
    http: aiohttp.ClientSession,
    make_node: NodeFactory,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.redis_server import private_redis

    # Retries on the test clock: back within a fifth of a second of Redis.
    monkeypatch.setattr(redis_broker, "MAX_READ_BACKOFF_S", 200 * MS)
    monkeypatch.setattr(cluster_module, "MAX_ELECTION_BACKOFF_S", 200 * MS)

    with private_redis(durable=True) as server:
        a = await make_node(redis_url=server.url)
        await leading(a)
        b = await make_node(redis_url=server.url)
        await following(b)
        ws = await connect(http, b, f"?since=0&epoch={b.broker.position.epoch}")
        sim.create()
        await poller(a).poll_once()
        assert (await receive_json(ws))["seq"] == 1
        server.kill()
        await until(lambda: b.state.health.broker_error is not None)
        async with http.get(b.url + "/healthz") as resp:
            body = msgspec.json.decode(await resp.read())
        assert body["status"] == "degraded" and "redis_unavailable" in body["reasons"]
        async with http.get(b.url + "/readyz") as resp:
            assert resp.status == 503
        for _ in range(3):  # Jules keeps changing while Redis is away
            sim.create()
        await until(lambda: not (a.cluster and a.cluster.leading))  # its lease is unconfirmed
        server.start()  # back, with its data (append-only file)
        await until(lambda: b.state.health.broker_error is None)
        await until(lambda: any(n.cluster and n.cluster.leading for n in (a, b)))
        new_leader = await leading(a if a.cluster and a.cluster.leading else b)
        await new_leader.poll_once()
        deltas = [await receive_json(ws, wait=3000 * MS) for _ in range(3)]
        assert [(d["type"], d["seq"]) for d in deltas] == [("created", s) for s in (2, 3, 4)]
        async with http.get(b.url + "/readyz") as resp:
            assert resp.status == 200


@pytest.mark.postgres
async def test_a_cluster_on_postgresql_continues_the_stores_history(
    pg_backend: PostgresBackend,  # first: set up before the nodes, dropped after they stop
    http: aiohttp.ClientSession,
    make_node: NodeFactory,
    sim: Simulator,
    redis_prefix: str,
) -> None:
    persist = pg_backend.service_settings()
    a = await make_node(**persist)
    await leading(a)
    sim.create()
    sim.create()
    await poller(a).poll_once()
    epoch = a.broker.position.epoch
    store = await pg_backend.make()
    loaded = await store.open()
    await store.close()
    assert loaded is not None and (loaded.position.epoch, loaded.position.seq) == (epoch, 2)
    # A cluster on a fresh Redis (another prefix) continues the store's history: same epoch,
    # the same numbering, and history older than its stream is read from the store.
    b = await make_node(**persist, redis_prefix=redis_prefix + "-next")
    await leading(b)
    assert (b.broker.position.epoch, b.broker.position.seq) == (epoch, 2)
    ws = await connect(http, b, f"?since=0&epoch={epoch}")
    assert [m["seq"] for m in await receive_n(ws, 2)] == [1, 2]
    sim.create()
    await poller(b).poll_once()
    assert (await receive_json(ws))["seq"] == 3


async def test_a_resume_from_a_node_further_along_waits_for_this_nodes_reader(
    http: aiohttp.ClientSession, make_node: NodeFactory, sim: Simulator
) -> None:
    a = await make_node()
    leader = await leading(a)
    b = await make_node()
    await following(b)
    reader = b.broker._reader
    assert reader is not None
    await redis_broker.stop_tasks([reader], b.broker.clients)  # b's reader lags...
    sim.create()
    sim.create()
    await leader.poll_once()
    epoch = a.broker.position.epoch
    assert (a.broker.position.seq, b.broker.position.seq) == (2, 0)

    async def resume_reading() -> None:
        await asyncio.sleep(200 * MS)
        b.broker._reader = asyncio.create_task(b.broker._read_forever())

    # ...while a client that read seq 2 on node a resumes on b, and asks b's /api/deltas.
    waking = asyncio.create_task(resume_reading())
    ws = await connect(http, b, f"?since=2&epoch={epoch}")
    await waking
    deltas = await get(http, b, "/api/deltas?since=2")
    assert deltas["deltas"] == []
    sim.create()
    await leader.poll_once()
    assert (await receive_json(ws))["seq"] == 3  # live from where it was: no reset
    # A position the cluster never reached is still ahead of the server, and said at once.
    started = time.perf_counter()
    ahead = await connect(http, b, f"?since=99&epoch={epoch}")
    reset = await receive_json(ahead)
    assert (reset["type"], reset["reason"]) == ("reset", "ahead_of_server")
    assert time.perf_counter() - started < redis_broker.REACH_WAIT_S


async def test_a_followers_stats_show_the_leaders_upstream_health(
    http: aiohttp.ClientSession, make_node: NodeFactory, sim: Simulator
) -> None:
    a = await make_node()
    leader = await leading(a)
    b = await make_node()
    await following(b)
    sim.faults.fail(n=1000, status=401)  # the key is rejected: only the leader asks Jules
    await leader.poll_once()

    def row(stats: dict[str, Any], node: str) -> dict[str, Any]:
        return next((n for n in stats["cluster"]["nodes"] if n["nodeId"] == node), {})

    async with asyncio.timeout(10):
        while True:
            stats = await get(http, b, "/api/stats")
            if "upstream_unauthorized" in (row(stats, "node-1").get("health") or []):
                break
            await asyncio.sleep(0.05)
    assert row(stats, "node-2")["health"] is None  # a follower does not poll Jules
