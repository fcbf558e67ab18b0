"""Redis losing data under running nodes: restored from an older snapshot, or flushed.

Either way a client must never hold one (epoch, seq) with two contents, nor see a gap: it is
told `reset` once into a new epoch, then gets every seq of that epoch from 1, on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
import redis

from control_room import cluster as cluster_module
from control_room.app import Service
from control_room.broker import redis as redis_broker
from control_room.broker.base import BrokerUnavailable, Fenced
from control_room.jules.simulator import Simulator
from tests.cluster.conftest import NodeFactory, following, leading, until
from tests.conftest import MS, TOKEN, connect
from tests.redis_server import PrivateRedis, private_redis

DELTAS = ("created", "updated", "deleted")
STALE_CONNECTION_RETRIES = 3  # one per connection the pool may hold from before a restart
LEADER_ATTEMPTS = 3  # elections a loaded machine may go through before one node polls


class Client:
    """A WebSocket client that resumes with its (epoch, seq) whenever it is closed, the way
    the protocol asks, and records every delta (raw) and every reset it is sent."""

    def __init__(self, node: Service, epoch: str) -> None:
        self.node = node
        self.epoch = epoch
        self.seq = 0
        self.deltas: list[tuple[str, int, bytes]] = []
        self.resets: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self, http: aiohttp.ClientSession) -> None:
        """Stay connected (resuming after every close) until cancelled."""
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                ws = await connect(http, self.node, f"?since={self.seq}&epoch={self.epoch}")
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    message = msgspec.json.decode(msg.data)
                    if message["type"] in DELTAS:
                        self.deltas.append((self.epoch, message["seq"], msg.data.encode()))
                        self.seq = message["seq"]
                    elif message["type"] == "reset":
                        self.resets.append(message)
                        self.epoch, self.seq = message["epoch"], message["seq"]
            await asyncio.sleep(20 * MS)

    def seqs(self, epoch: str) -> list[int]:
        """The seqs received in one epoch, in order."""
        return [seq for e, seq, _ in self.deltas if e == epoch]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes retry Redis on the test clock: back within a fifth of a second of it."""
    monkeypatch.setattr(redis_broker, "MAX_READ_BACKOFF_S", 200 * MS)
    monkeypatch.setattr(cluster_module, "MAX_ELECTION_BACKOFF_S", 200 * MS)


@pytest.fixture
def server(fast_retries: None) -> Iterator[PrivateRedis]:
    """A Redis of this test's own (it is killed and restarted)."""
    with private_redis() as server:
        yield server


@pytest.fixture
async def clients(http: aiohttp.ClientSession) -> AsyncIterator[list[Client]]:
    """Clients started with `start`, stopped at the end."""
    started: list[Client] = []
    yield started
    for client in started:
        if client.task is not None:
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.task


def start(http: aiohttp.ClientSession, clients: list[Client], node: Service) -> Client:
    """A resuming client on `node`, from seq 0 of its epoch."""
    client = Client(node, node.broker.position.epoch)
    client.task = asyncio.create_task(client.run(http))
    clients.append(client)
    return client


def one_content_per_position(clients: list[Client]) -> None:
    """No (epoch, seq) was ever delivered with two different contents, on any node."""
    seen: dict[tuple[str, int], bytes] = {}
    for client in clients:
        for epoch, seq, raw in client.deltas:
            assert seen.setdefault((epoch, seq), raw) == raw, f"({epoch}, {seq}) reused"


async def poll_once(node: Service) -> None:
    """One poll on the leader; again if its Redis connection was one from before the restart
    (pooled connections fail on first use; the poller's own loop would retry next poll)."""
    assert node.cluster is not None and node.cluster.poller is not None
    for _ in range(STALE_CONNECTION_RETRIES):
        with contextlib.suppress(BrokerUnavailable):
            await node.cluster.poller.poll_once()
            return
    await node.cluster.poller.poll_once()


async def new_leader(nodes: list[Service], old_epoch: str) -> Service:
    """The node that leads in a new epoch, once its first poll is done."""

    def elected(n: Service) -> bool:
        # Its fencing token names the new epoch (the old leader may still be stepping down).
        token, epoch = n.broker.token, n.broker.position.epoch
        leads = n.cluster is not None and n.cluster.leading and token is not None
        return leads and epoch != old_epoch and str(token).startswith(epoch + ":")

    await until(lambda: any(elected(n) for n in nodes), within=10_000 * MS)
    node = next(n for n in nodes if elected(n))
    await leading(node)
    return node


async def poll_on_new_leader(nodes: list[Service], old_epoch: str) -> Service:
    """One poll on the node that leads in the new epoch. On a loaded machine the lease may
    change hands between the election and the poll (Fenced): then on the next leader."""
    for _ in range(LEADER_ATTEMPTS - 1):
        leader = await new_leader(nodes, old_epoch)
        with contextlib.suppress(Fenced):
            await poll_once(leader)
            return leader
    leader = await new_leader(nodes, old_epoch)
    await poll_once(leader)
    return leader


async def test_redis_restored_from_an_older_snapshot_starts_a_new_epoch(
    http: aiohttp.ClientSession,
    make_node: NodeFactory,
    sim: Simulator,
    server: PrivateRedis,
    clients: list[Client],
) -> None:
    a = await make_node(redis_url=server.url)
    await leading(a)
    b = await make_node(redis_url=server.url)
    await following(b)
    epoch = a.broker.position.epoch
    on_a, on_b = start(http, clients, a), start(http, clients, b)
    sim.create()
    sim.create()
    assert a.cluster is not None and a.cluster.poller is not None
    await a.cluster.poller.poll_once()
    await until(lambda: on_a.seq == on_b.seq == 2)
    redis.Redis(port=server.port).save()  # the snapshot Redis comes back from: seq 2
    sim.create()
    sim.create()
    await a.cluster.poller.poll_once()
    await until(lambda: on_a.seq == on_b.seq == 4)

    server.kill()
    server.start()  # from the RDB: seqs 3 and 4 are gone from Redis, not from the clients
    sim.create()
    leader = await poll_on_new_leader([a, b], epoch)
    renewed = leader.broker.position
    assert renewed.epoch != epoch
    await until(lambda: all(c.epoch == renewed.epoch and c.seq == renewed.seq for c in clients))

    for client in clients:
        # One reset, at whatever the new epoch had reached when the client came back;
        # from there, every seq of the new epoch.
        [reset] = client.resets
        assert (reset["reason"], reset["epoch"]) == ("epoch_changed", renewed.epoch)
        assert client.seqs(epoch) == [1, 2, 3, 4]
        assert client.seqs(renewed.epoch) == list(range(reset["seq"] + 1, renewed.seq + 1))
    one_content_per_position(clients)
    # The sessions the restored snapshot lacked are announced in the new epoch, once.
    history = await b.broker.history(0)
    assert [e.type for e in history] == ["created"] * 3 and renewed.seq == 3


async def test_a_flushed_redis_resets_every_client_once_then_misses_nothing(
    http: aiohttp.ClientSession,
    make_node: NodeFactory,
    sim: Simulator,
    server: PrivateRedis,
    clients: list[Client],
) -> None:
    a = await make_node(redis_url=server.url)
    await leading(a)
    b = await make_node(redis_url=server.url)
    await following(b)
    epoch = a.broker.position.epoch
    start(http, clients, a)
    start(http, clients, b)
    sim.create()
    await poll_once(a)
    await until(lambda: all(c.seq == 1 for c in clients))

    redis.Redis(port=server.port).flushall()  # Redis lost everything, nodes running
    leader = await new_leader([a, b], epoch)
    # The leader publishes right after its baseline, before the other node's reader (blocked
    # in XREAD for up to a second) has seen the baseline: it must still deliver seq 1.
    sim.create()
    await poll_once(leader)
    sim.create()
    await poll_once(leader)
    renewed = leader.broker.position
    assert renewed.epoch != epoch and renewed.seq == 2
    await until(lambda: all(c.epoch == renewed.epoch and c.seq == renewed.seq for c in clients))

    for client in clients:
        [reset] = client.resets
        assert (reset["reason"], reset["epoch"]) == ("epoch_changed", renewed.epoch)
        assert client.seqs(renewed.epoch) == list(range(reset["seq"] + 1, renewed.seq + 1))
    one_content_per_position(clients)
    for node in (a, b):
        async with http.get(
            node.url + "/api/deltas?since=0", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            body = await resp.json()
        assert [d["seq"] for d in body["deltas"]] == [1, 2], node.url
        assert len(node.state.sessions) == 3  # the baseline's one and the two created since
