"""The Store contract, run against every backend (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import time

import pytest

from control_room.broker.base import ACTIVITIES, Batch, HistoryGone
from control_room.models import Position
from control_room.store import common
from control_room.store.base import Loaded, SchemaTooNew, StoreError
from tests.store.conftest import Backend
from tests.store.timeline import Timeline, session, sessions


async def opened(backend: Backend) -> Timeline:
    store = await backend.make()
    assert await store.open() is None
    return Timeline(store)


async def reopen(backend: Backend) -> Loaded | None:
    store = await backend.make()
    return await store.open()


async def test_a_new_store_has_no_state_and_no_history(backend: Backend) -> None:
    t = await opened(backend)
    assert await t.store.history(0) == []
    assert await reopen(backend) is None  # opening creates the schema, not a position


async def test_the_baseline_is_saved_whole_with_the_position(backend: Backend) -> None:
    t = await opened(backend)
    first = sessions(session("a"), session("b"), session("c"))
    await t.baseline(first)
    assert await reopen(backend) == Loaded(Position("epoch-1", 0), first)


async def test_deltas_snapshot_and_position_survive_a_reopen(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a"), session("b")))
    await t.poll(sessions(session("a", "PLANNING"), session("b")))
    await t.poll(sessions(session("a", "PLANNING"), session("b"), session("c")))
    await t.poll(sessions(session("a", "PLANNING"), session("c", "IN_PROGRESS")))

    loaded = await reopen(backend)
    assert loaded == Loaded(Position("epoch-1", 4), t.sessions)
    entries = await t.store.history(0)
    expected = [e for b in t.batches for e in b.entries]
    # The very bytes clients received: replay sends them unchanged.
    assert [(e.seq, e.session_id, e.payload) for e in entries] == [
        (e.seq, e.session_id, e.payload) for e in expected
    ]


async def test_history_is_filtered_by_since_limit_and_session(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline({})
    await t.poll(sessions(session("a"), session("b")))  # 1, 2
    await t.poll(sessions(session("a", "PLANNING"), session("b", "PLANNING")))  # 3, 4
    await t.poll(sessions(session("a", "IN_PROGRESS"), session("b", "PLANNING")))  # 5

    assert [e.seq for e in await t.store.history(2)] == [3, 4, 5]
    assert [e.seq for e in await t.store.history(0, limit=2)] == [1, 2]
    assert [e.seq for e in await t.store.history(1, session_id="a")] == [3, 5]
    assert [e.seq for e in await t.store.history(0, limit=1, session_id="b")] == [2]
    assert await t.store.history(5) == []


async def test_a_save_rewrites_only_the_sessions_its_batch_touches(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a"), session("b")))
    batch = t.stamp(sessions(session("a", "PLANNING"), session("b")))
    # `b` differs in what is handed over, but no delta names it: its row must stay as is.
    handed = sessions(session("a", "PLANNING"), session("b", "FAILED"))
    await t.store.save(batch, handed, Position("epoch-1", batch.last_seq))
    loaded = await reopen(backend)
    assert loaded is not None
    assert loaded.sessions == sessions(session("a", "PLANNING"), session("b"))


async def test_deleted_sessions_leave_the_snapshot(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a"), session("b")))
    await t.poll(sessions(session("b")))
    loaded = await reopen(backend)
    assert loaded is not None and set(loaded.sessions) == {"b"}


async def test_a_retried_save_replaces_rows_from_its_first_seq(backend: Backend) -> None:
    # The commit of seqs 1-3 happened, but the poller never heard (connection lost after
    # COMMIT): it retries from seq 1 with what the next listing shows.
    t = await opened(backend)
    await t.baseline({})
    lost = t.stamp(sessions(session("a"), session("b"), session("c")))
    await t.store.save(
        lost, sessions(session("a"), session("b"), session("c")), Position("epoch-1", 3)
    )
    retry = t.stamp(sessions(session("a", "PLANNING")))
    await t.store.save(retry, sessions(session("a", "PLANNING")), Position("epoch-1", 1))

    entries = await t.store.history(0)
    assert [(e.seq, e.payload) for e in entries] == [(1, retry.entries[0].payload)]
    loaded = await reopen(backend)
    assert loaded == Loaded(Position("epoch-1", 1), sessions(session("a", "PLANNING")))


async def test_prune_by_age_drops_a_prefix_and_history_before_it_is_gone(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline({})
    await t.poll(sessions(session("a"), session("b")))  # 1, 2: old
    cutoff = time.time()
    await t.poll(sessions(session("a", "PLANNING"), session("b", "PLANNING")))  # 3, 4

    assert await t.store.prune(cutoff, 1_000_000) == 2
    with pytest.raises(HistoryGone) as gone:
        await t.store.history(1)
    assert gone.value.oldest_seq == 3
    assert [e.seq for e in await t.store.history(2)] == [3, 4]
    assert await t.store.prune(cutoff, 1_000_000) == 0  # nothing more is that old


async def test_prune_by_row_cap_keeps_the_newest(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline({})
    await t.poll(sessions(*(session(f"s{i}") for i in range(5))))  # 1..5
    assert await t.store.prune(0.0, keep_at_most=2) == 3
    assert [e.seq for e in await t.store.history(3)] == [4, 5]
    with pytest.raises(HistoryGone) as gone:
        await t.store.history(2)
    assert gone.value.oldest_seq == 4


async def test_prune_works_in_chunks(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "PRUNE_CHUNK", 3)
    t = await opened(backend)
    await t.baseline({})
    await t.poll(sessions(*(session(f"s{i:02}") for i in range(10))))  # 1..10
    assert await t.store.prune(time.time() + 60, keep_at_most=1_000_000) == 10
    assert await t.store.history(10) == []
    with pytest.raises(HistoryGone):
        await t.store.history(9)


async def test_pruned_history_stays_gone_after_a_reopen(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline({})
    await t.poll(sessions(session("a"), session("b"), session("c")))
    await t.store.prune(0.0, keep_at_most=1)
    store = await backend.make()
    loaded = await store.open()
    assert loaded is not None and loaded.position == Position("epoch-1", 3)
    with pytest.raises(HistoryGone):
        await store.history(0)
    assert [e.seq for e in await store.history(2)] == [3]


async def test_webhook_cursors_are_per_endpoint_and_durable(backend: Backend) -> None:
    t = await opened(backend)
    store = t.store
    assert await store.webhook_cursor("https://a.example/hook") is None
    await store.set_webhook_cursor("https://a.example/hook", 7)
    await store.set_webhook_cursor("https://b.example/hook", 3)
    await store.set_webhook_cursor("https://a.example/hook", 9)
    again = await backend.make()
    await again.open()
    assert await again.webhook_cursor("https://a.example/hook") == 9
    assert await again.webhook_cursor("https://b.example/hook") == 3


async def test_reopening_does_not_migrate_again(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a")))
    for _ in range(2):
        loaded = await reopen(backend)
        assert loaded is not None and loaded.sessions == sessions(session("a"))


async def test_a_schema_newer_than_the_code_refuses_to_open(backend: Backend) -> None:
    await opened(backend)
    await backend.set_schema_version(common.SCHEMA_VERSION + 1)
    store = await backend.make()
    with pytest.raises(SchemaTooNew, match=f"version {common.SCHEMA_VERSION + 1} is newer"):
        await store.open()


async def test_a_failed_save_changes_nothing_and_the_retry_succeeds(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a")))
    batch = t.stamp(sessions(session("a", "PLANNING"), session("b")))
    position = Position("epoch-1", batch.last_seq)
    async with backend.unavailable():
        with pytest.raises(StoreError):
            await t.store.save(batch, sessions(session("a", "PLANNING"), session("b")), position)
    assert await t.store.history(0) == []
    await t.store.save(batch, sessions(session("a", "PLANNING"), session("b")), position)
    assert [e.seq for e in await t.store.history(0)] == [1, 2]
    loaded = await reopen(backend)
    assert loaded == Loaded(position, sessions(session("a", "PLANNING"), session("b")))


async def test_a_poll_of_a_thousand_deltas_round_trips(backend: Backend) -> None:
    t = await opened(backend)
    many = sessions(*(session(f"s{i:04}") for i in range(1000)))
    await t.baseline(many)
    moved = {sid: session(sid, "PLANNING") for sid in many}
    batch = await t.poll(moved)
    entries = await t.store.history(0)
    assert len(entries) == 1000
    assert [e.payload for e in entries] == [e.payload for e in batch.entries]
    loaded = await reopen(backend)
    assert loaded == Loaded(Position("epoch-1", 1000), moved)


async def test_a_store_that_is_not_open_says_so(backend: Backend) -> None:
    store = await backend.make()
    with pytest.raises(StoreError, match="not open"):
        await store.save(Batch([]), {}, Position("e", 0))


async def test_activities_are_a_channel_of_their_own_with_their_routes(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a"), session("b", "IN_PROGRESS")))
    await t.activities("a", "b")
    await t.poll(sessions(session("a", "PLANNING"), session("b", "IN_PROGRESS")))
    await t.activities("b")

    loaded = await reopen(backend)
    assert loaded is not None
    assert loaded.position == Position("epoch-1", 1, 3)
    assert loaded.sessions == t.sessions  # activities alone never replace the snapshot
    history = await t.store.history(0, channel=ACTIVITIES)
    published = [e for b in t.batches for e in b.activities]
    assert [(e.seq, e.session_id, e.payload) for e in history] == [
        (e.seq, e.session_id, e.payload) for e in published
    ]
    assert [e.after for e in history] == [
        ("acme/api", "QUEUED"),
        ("acme/api", "IN_PROGRESS"),
        ("acme/api", "IN_PROGRESS"),
    ]
    assert [e.seq for e in await t.store.history(1, channel=ACTIVITIES, session_id="b")] == [2, 3]
    assert [e.seq for e in await t.store.history(0)] == [1]  # the delta log is apart


async def test_prune_covers_the_activities_channel(backend: Backend) -> None:
    t = await opened(backend)
    await t.baseline(sessions(session("a")))
    for _ in range(4):
        await t.activities("a")
    assert await t.store.prune(0.0, keep_at_most=1) == 3
    with pytest.raises(HistoryGone):
        await t.store.history(0, channel=ACTIVITIES)
    assert [e.seq for e in await t.store.history(3, channel=ACTIVITIES)] == [4]
