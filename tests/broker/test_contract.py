"""The broker contract: what every broker does, checked against memory and Redis alike."""

from __future__ import annotations

import pytest

from control_room.broker.base import ACTIVITIES, Batch, Broker, Channel, Entry, HistoryGone
from control_room.models import Activity, Change
from tests.broker.conftest import Make
from tests.factories import session

TS = "2026-11-26T00:00:00.000Z"


def changes(*ids: str, kind: str = "created") -> list[Change]:
    if kind == "created":
        return [Change("created", i, None, session(i)) for i in ids]
    if kind == "deleted":
        return [Change("deleted", i, session(i, "COMPLETED"), None) for i in ids]
    return [Change("updated", i, session(i), session(i, "IN_PROGRESS")) for i in ids]


def activity(sid: str, n: int) -> Activity:
    return Activity(
        id=f"{sid}-a{n}",
        sessionId=sid,
        kind="progressUpdated",
        originator="agent",
        createdAt=TS,
        title=f"step {n}",
    )


async def publish(broker: Broker, *ids: str, kind: str = "created") -> Batch:
    batch = Batch(broker.stamp(changes(*ids, kind=kind), TS))
    await broker.publish(batch)
    return batch


async def test_seq_grows_by_one_per_delta_across_batches(make_broker: Make) -> None:
    broker, _ = await make_broker()
    a = await publish(broker, "a", "b")
    b = await publish(broker, "c")
    assert [d.seq for d in (*a.deltas, *b.deltas)] == [1, 2, 3]
    assert broker.position.seq == 3


async def test_stamping_does_not_advance_the_position(make_broker: Make) -> None:
    broker, sink = await make_broker()
    broker.stamp(changes("a"), TS)
    assert broker.position.seq == 0
    await broker.publish(Batch())  # an empty batch is nothing at all
    assert broker.position.seq == 0 and sink.batches == []


async def test_sinks_receive_each_batch_once_in_order_with_the_same_bytes(
    make_broker: Make,
) -> None:
    broker, sink = await make_broker()
    first = await publish(broker, "a", "b")
    second = await publish(broker, "a", kind="updated")
    assert [[e.seq for e in b.entries] for b in sink.batches] == [[1, 2], [3]]
    for published, delivered in zip((first, second), sink.batches, strict=True):
        assert [e.payload for e in delivered.entries] == [e.payload for e in published.entries]
        assert [e.route for e in delivered.entries] == [e.route for e in published.entries]
        assert [d.type for d in delivered.deltas] == [d.type for d in published.deltas]
    assert sink.batches[1].entries[0].route == (("acme/api", "QUEUED"), ("acme/api", "IN_PROGRESS"))


async def test_deltas_and_activities_of_one_poll_arrive_as_one_batch(make_broker: Make) -> None:
    broker, sink = await make_broker()
    deltas = broker.stamp(changes("a"), TS)
    messages = broker.stamp_activities([activity("a", 1), activity("a", 2)], TS)
    await broker.publish(Batch(deltas, [(m, ("acme/api", "QUEUED")) for m in messages]))
    activities_only = broker.stamp_activities([activity("a", 3)], TS)
    await broker.publish(Batch((), [(m, ("acme/api", "QUEUED")) for m in activities_only]))
    assert [(len(b.entries), len(b.activities)) for b in sink.batches] == [(1, 2), (0, 1)]
    assert [m.seq for m in sink.batches[0].activity_messages] == [1, 2]
    assert sink.batches[0].activities[0].after == ("acme/api", "QUEUED")
    assert (broker.position.seq, broker.position.activities_seq) == (1, 3)
    history = await broker.history(1, channel=ACTIVITIES)
    assert [(e.seq, e.type) for e in history] == [(2, "activity"), (3, "activity")]


async def test_history_after_a_seq_filtered_and_limited(make_broker: Make) -> None:
    broker, _ = await make_broker()
    await publish(broker, "a", "b", "c")
    await publish(broker, "a", kind="updated")
    assert [e.seq for e in await broker.history(1)] == [2, 3, 4]
    assert [e.seq for e in await broker.history(0, session_id="a")] == [1, 4]
    assert [e.seq for e in await broker.history(0, limit=2)] == [1, 2]
    assert await broker.history(4) == []
    assert (await broker.history(3))[0].type == "updated"


async def test_history_older_than_retained_is_gone(make_broker: Make) -> None:
    broker, _ = await make_broker(history_size=3)
    await publish(broker, "a", "b")
    await publish(broker, "c", "d", "e")
    assert [e.seq for e in await broker.history(2)] == [3, 4, 5]
    with pytest.raises(HistoryGone) as gone:
        await broker.history(1)
    assert gone.value.oldest_seq == 3


async def test_history_ahead_of_the_stream_is_an_error(make_broker: Make) -> None:
    broker, _ = await make_broker()
    with pytest.raises(ValueError, match="ahead"):
        await broker.history(1)


async def test_a_batch_larger_than_the_window_reaches_every_sink_whole(
    make_broker: Make,
) -> None:
    broker, sink = await make_broker(history_size=2)
    await publish(broker, "a", "b", "c", "d", "e")
    assert [e.seq for e in sink.batches[0].entries] == [1, 2, 3, 4, 5]


async def test_a_batch_must_follow_the_position(make_broker: Make) -> None:
    broker, sink = await make_broker()
    await publish(broker, "a", "b")
    stale = Batch(broker.stamp(changes("c"), TS))
    await publish(broker, "d")
    with pytest.raises(ValueError, match="does not follow"):
        await broker.publish(stale)
    assert broker.position.seq == 3 and len(sink.batches) == 2


async def test_older_history_comes_from_the_store_and_a_hole_there_is_gone(
    make_broker: Make,
) -> None:
    kept: dict[int, Entry] = {}

    async def store(since: int, limit: int | None, sid: str | None, ch: Channel) -> list[Entry]:
        entries = [kept[s] for s in sorted(kept) if s > since]
        return entries if limit is None else entries[:limit]

    broker, _ = await make_broker(history_size=3, older=store)
    for batch in (await publish(broker, "a", "b", "c"), await publish(broker, "d", "e", "f")):
        kept.update({e.seq: e for e in batch.entries})
    assert [e.seq for e in await broker.history(1)] == [2, 3, 4, 5, 6]
    del kept[3]
    with pytest.raises(HistoryGone):
        await broker.history(1)
    assert await broker.history(1, limit=0) == []
