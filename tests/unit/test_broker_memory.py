"""The in-memory broker: numbering, history ring, fan-out to sinks."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import msgspec
import pytest

from control_room.broker.base import Batch, Channel, Entry, HistoryGone
from control_room.broker.memory import MemoryBroker
from control_room.models import Change, Position
from tests.factories import session


class Recorder:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def deliver(self, batch: Batch) -> None:
        self.batches.append(batch)


def run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Drive a coroutine that never suspends (the memory broker's publish) to its end."""
    with pytest.raises(StopIteration):
        coroutine.send(None)


def publish(broker: MemoryBroker, *ids: str) -> Batch:
    changes = [Change("created", i, None, session(i)) for i in ids]
    batch = Batch(broker.stamp(changes, "2026-11-26T00:00:00.000Z"))
    run_now(broker.publish(batch))
    return batch


def test_seq_grows_by_one_per_delta_across_batches() -> None:
    broker = MemoryBroker(100)
    a = publish(broker, "a", "b")
    b = publish(broker, "c")
    assert [d.seq for d in (*a.deltas, *b.deltas)] == [1, 2, 3]
    assert broker.position.seq == 3


def test_stamping_does_not_advance_the_position() -> None:
    broker = MemoryBroker(100)
    broker.stamp([Change("created", "a", None, session("a"))], "t")
    assert broker.position.seq == 0


def test_a_batch_holds_each_delta_encoded_with_its_route() -> None:
    broker = MemoryBroker(100)
    batch = publish(broker, "a", "b")
    first = batch.entries[0]
    assert (first.type, first.before, first.after) == ("created", None, ("acme/api", "QUEUED"))
    decoded = msgspec.json.decode(batch.entries[0].payload)
    assert decoded["type"] == "created" and decoded["seq"] == 1
    assert "before" not in decoded


def test_sinks_receive_every_batch_in_order() -> None:
    broker = MemoryBroker(100)
    sink = Recorder()
    broker.add_sink(sink)
    publish(broker, "a")
    publish(broker, "b")
    assert [b.first_seq for b in sink.batches] == [1, 2]


def test_history_after_a_seq_filter_and_limit() -> None:
    broker = MemoryBroker(100)
    publish(broker, "a", "b", "c")
    publish(broker, "a")
    assert [e.seq for e in broker.history_now(1)] == [2, 3, 4]
    assert [e.seq for e in broker.history_now(0, session_id="a")] == [1, 4]
    assert [e.seq for e in broker.history_now(0, limit=2)] == [1, 2]
    assert broker.history_now(4) == []


def test_history_older_than_the_ring_is_gone() -> None:
    broker = MemoryBroker(3)
    publish(broker, "a", "b", "c", "d", "e")
    assert [e.seq for e in broker.history_now(2)] == [3, 4, 5]
    with pytest.raises(HistoryGone):
        broker.history_now(1)


def test_history_ahead_of_the_stream_is_an_error() -> None:
    broker = MemoryBroker(3)
    with pytest.raises(ValueError, match="ahead"):
        broker.history_now(1)


def test_a_batch_must_follow_the_position() -> None:
    broker = MemoryBroker(10, start=Position("e", 5))
    stale = Batch(MemoryBroker(10).stamp([Change("created", "a", None, session("a"))], "t"))
    with pytest.raises(ValueError, match="does not follow"):
        run_now(broker.publish(stale))


async def test_a_hole_in_older_history_is_gone_not_a_silent_gap() -> None:
    broker = MemoryBroker(3)
    publish(broker, "a", "b", "c", "d", "e", "f")
    kept = {e.seq: e for e in broker.history_now(3)}  # 4, 5, 6 are in the ring

    async def store_with_a_hole(
        since: int, limit: int | None, sid: str | None, channel: Channel
    ) -> list[Entry]:
        entries = [Entry(2, "b", b"{}"), Entry(4, "d", kept[4].payload)]  # 3 is missing
        return entries if limit is None else entries[:limit]

    broker = MemoryBroker(3, older=store_with_a_hole)
    publish(broker, "a", "b", "c", "d", "e", "f")
    with pytest.raises(HistoryGone):
        await broker.history(1)
    assert await broker.history(1, limit=0) == []
