"""The load generator counts every variant exactly, against the real service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import picows
import pytest
from bench.broadcast_server import Publisher
from bench.loadgen import (
    ClientVariant,
    Stats,
    connect,
    connect_request,
    spread_index,
    variant_for,
)
from bench.workload import view_params

from control_room.app import Service
from tests.conftest import MS, TOKEN

BATCHES = 3
REPOSITORIES = 2  # deltas per batch: a batch message carries two deliveries


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stats]:
    """A fresh tally for the clients of one test (the load generator keeps one per process)."""
    fresh = Stats()
    monkeypatch.setattr("bench.loadgen.STATS", fresh)
    yield fresh
    fresh.stopping = True


async def clients(
    service: Service, n: int, variant: str, views: int = 0, mode: str = "all"
) -> list[picows.WSTransport]:
    gate = asyncio.Semaphore(8)
    requests = [
        connect_request(
            service.ws_url,
            TOKEN,
            variant_for(variant, i),
            view_params(mode, views, i) if views else [],
        )
        for i in range(n)
    ]
    made = await asyncio.gather(*(connect(url, h, gate) for url, h in requests))
    assert all(not isinstance(t, str) for t in made), made
    return [t for t in made if not isinstance(t, str)]


async def publish_and_count(service: Service, stats: Stats, expected: int) -> None:
    publisher = Publisher(service, rate=1000, count=BATCHES, repositories=REPOSITORIES)
    for _ in range(BATCHES):
        await publisher.publish_one()
    for _ in range(2000):
        if stats.deliveries >= expected:
            break
        await asyncio.sleep(MS)
    await asyncio.sleep(20 * MS)  # nothing more may arrive
    assert stats.deliveries == expected


@pytest.mark.parametrize(
    ("variant", "negotiated", "messages_per_batch"),
    [
        ("plain", {"plain": 4}, REPOSITORIES),
        ("deflate", {"deflate": 4}, REPOSITORIES),
        ("msgpack", {"msgpack": 4}, REPOSITORIES),
        ("patch", {"plain": 4}, REPOSITORIES),
        ("batch", {"plain": 4}, 1),
        ("mix", {"plain": 2, "deflate": 1, "msgpack": 1}, None),
    ],
)
async def test_every_variant_counts_one_delivery_per_delta_and_client(
    service: Service,
    stats: Stats,
    variant: str,
    negotiated: dict[str, int],
    messages_per_batch: int | None,
) -> None:
    transports = await clients(service, 4, variant)
    await publish_and_count(service, stats, BATCHES * REPOSITORIES * 4)
    assert stats.negotiated == negotiated
    assert stats.other == 0 and stats.cut == 0
    assert sorted(stats.per_change) == list(range(1, BATCHES * REPOSITORIES + 1))
    assert all(count == 4 for count, _latency in stats.per_change.values())
    assert len(stats.latencies_us) == stats.deliveries
    if messages_per_batch is not None:
        assert stats.messages == BATCHES * messages_per_batch * 4
    if variant == "deflate":  # RSV1 frames, counted by their compressed size
        assert stats.compressed == stats.messages
        assert stats.wire_bytes < stats.payload_bytes / 2
    else:
        assert stats.compressed == (BATCHES * REPOSITORIES if variant == "mix" else 0)
    if variant == "patch":  # a JSON Patch delta is a fraction of a full one
        assert stats.wire_bytes < 400 * stats.deliveries
    for transport in transports:
        transport.disconnect()


async def test_split_views_each_get_their_share(service: Service, stats: Stats) -> None:
    transports = await clients(service, 4, "plain", views=REPOSITORIES, mode="split")
    await publish_and_count(service, stats, BATCHES * 4)  # one delta per batch each
    assert all(count == 2 for count, _latency in stats.per_change.values())
    assert len(stats.per_change) == BATCHES * REPOSITORIES
    for transport in transports:
        transport.disconnect()


def test_variant_names_combine_and_unknown_parts_are_refused() -> None:
    assert ClientVariant.named("patch+batch") == ClientVariant(patch=True, batch=True)
    assert [variant_for("mix", i) for i in range(5)] == [
        ClientVariant(),
        ClientVariant(deflate=True),
        ClientVariant(msgpack=True),
        ClientVariant(patch=True, batch=True),
        ClientVariant(),
    ]
    with pytest.raises(ValueError, match="gzip"):
        ClientVariant.named("gzip")


def test_clients_take_views_in_turn_or_in_blocks() -> None:
    assert [spread_index("cycle", i, 8, 4) % 4 for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [spread_index("block", i, 8, 4) for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="spread"):
        spread_index("random", 0, 8, 4)
