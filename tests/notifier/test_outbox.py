"""With a store, the delta log is the outbox: pending deliveries survive restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_room.metrics import Metrics
from control_room.notifier import CURSOR_SAVE_EVERY, Notifier
from control_room.store.sqlite import SqliteStore
from tests.conftest import FAST_WEBHOOKS, MS
from tests.notifier.conftest import (
    SECRET,
    NotifierFactory,
    Stream,
    eventually,
    outcome,
    retries,
)
from tests.notifier.receiver import Receiver

ROOT = Path(__file__).parents[2]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SQLite store in a temporary directory."""
    s = SqliteStore(tmp_path)
    await s.open()
    yield s
    await s.close()


async def publish(store: SqliteStore, stream: Stream, notifier: Notifier | None, n: int) -> None:
    """`n` polls of one delta each, the poller's way: save, then enqueue."""
    for _ in range(n):
        batch = stream.batch(1)
        await store.save(batch, stream.sessions, stream.position)
        if notifier is not None:
            notifier.enqueue(batch)


async def test_pending_deliveries_survive_a_restart(
    tmp_path: Path, receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    notifier = await make_notifier(receiver.url, store=store)
    await publish(store, stream, notifier, 3)
    await receiver.wait_accepted(3)
    await receiver.stop()
    await publish(store, stream, notifier, 7)
    await eventually(lambda: retries(notifier.metrics) >= 2)
    assert notifier.pending() == 7
    await notifier.stop()
    await store.close()

    await receiver.start()
    reopened = SqliteStore(tmp_path)
    loaded = await reopened.open()
    assert loaded is not None and loaded.position == stream.position
    try:
        again = await make_notifier(receiver.url, store=reopened)
        assert again.pending() == 7
        await receiver.wait_accepted(10)
        assert receiver.seqs == list(range(1, 11))  # nothing lost, nothing twice
        assert [r.msg_id for r in receiver.accepted] == [
            f"{stream.position.epoch}-{n}" for n in range(1, 11)
        ]
        assert receiver.bad == []
        await eventually(lambda: again.pending() == 0)
        assert await reopened.webhook_cursor(receiver.url) == 10
    finally:
        await again.stop()
        await reopened.close()


async def test_a_sigkill_while_deliveries_are_pending_loses_none(
    tmp_path: Path, receiver: Receiver, make_notifier: NotifierFactory
) -> None:
    receiver.accept(3)
    receiver.fail(10_000, 503)  # then the receiver fails everything
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.notifier.outbox_child",
        str(tmp_path),
        receiver.url,
        "10",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 10)
        assert line == b"saved\n"
        # Three taken, then seq 4 refused at least twice (its cursor write happens in between).
        await receiver.wait_for(lambda: len(receiver.requests) >= 6, within=5000 * MS)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert receiver.seqs == [1, 2, 3]

    receiver.heal()
    store = SqliteStore(tmp_path)
    loaded = await store.open()
    assert loaded is not None
    position = loaded.position
    try:
        notifier = Notifier(
            [receiver.url],
            secret=SECRET,
            metrics=Metrics(),
            position=lambda: position,
            store=store,
            timeout=1.0,
            max_age=3600.0,
            queue_size=1000,
            timing=FAST_WEBHOOKS,
        )
        await notifier.start()
        await receiver.wait_accepted(10)
        await notifier.stop()
    finally:
        await store.close()
    assert receiver.seqs == list(range(1, 11))  # 4..10 after the restart, in order, once
    assert {r.msg_id for r in receiver.accepted} == {f"c41d-{n}" for n in range(1, 11)}
    assert receiver.bad == []


async def test_a_backlog_larger_than_memory_is_read_back_from_the_store(
    store: SqliteStore, receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    notifier = await make_notifier(receiver.url, store=store, queue_size=3)
    await receiver.stop()
    await publish(store, stream, notifier, 25)
    await eventually(lambda: retries(notifier.metrics) >= 1)
    assert notifier.pending() == 25
    assert outcome(notifier.metrics, "overflow") == 0  # nothing dropped: it is all stored
    await receiver.start()
    await receiver.wait_accepted(25)
    assert receiver.seqs == list(range(1, 26))
    assert receiver.bad == []
    await eventually(lambda: notifier.pending() == 0)
    await eventually(lambda: outcome(notifier.metrics, "delivered") == 25)


async def test_a_new_endpoint_starts_from_the_current_position(
    store: SqliteStore, receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    await publish(store, stream, None, 5)  # history from before the endpoint existed
    notifier = await make_notifier(receiver.url, store=store)
    assert await store.webhook_cursor(receiver.url) == 5
    assert notifier.pending() == 0
    await publish(store, stream, notifier, 2)
    await receiver.wait_accepted(2)
    assert receiver.seqs == [6, 7]


async def test_deltas_pruned_before_delivery_are_counted_as_expired(
    store: SqliteStore, receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    notifier = await make_notifier(receiver.url, store=store, queue_size=2)
    await receiver.stop()
    batches = []
    for _ in range(10):
        batch = stream.batch(1)
        await store.save(batch, stream.sessions, stream.position)
        batches.append(batch)
    for batch in batches:  # all at once: two fit in memory, the rest stay in the store
        notifier.enqueue(batch)
    assert await store.prune(older_than=0, keep_at_most=3) == 7  # seqs 1..7 gone
    await receiver.start()
    await receiver.wait_accepted(5)
    assert receiver.seqs == [1, 2, 8, 9, 10]  # 1 and 2 were in memory
    await eventually(lambda: outcome(notifier.metrics, "expired") == 5)
    await eventually(lambda: notifier.pending() == 0)


async def test_a_catch_up_writes_the_cursor_in_steps_not_per_delivery(
    store: SqliteStore, receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    writes: list[int] = []
    original = store.set_webhook_cursor

    async def counting(endpoint: str, seq: int) -> None:
        writes.append(seq)
        await original(endpoint, seq)

    store.set_webhook_cursor = counting  # type: ignore[method-assign]
    notifier = await make_notifier(receiver.url, store=store)
    writes.clear()
    batches = [stream.batch(1) for _ in range(250)]
    for batch in batches:
        await store.save(batch, stream.sessions, stream.position)
    for batch in batches:
        notifier.enqueue(batch)
    await receiver.wait_accepted(250)
    await eventually(lambda: writes[-1:] == [250])
    assert writes == [CURSOR_SAVE_EVERY, 2 * CURSOR_SAVE_EVERY, 250]


async def test_a_stored_delta_the_poller_has_not_announced_is_not_delivered(
    store: SqliteStore, receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    # A save whose commit was not acknowledged is retried by the poller, maybe with other
    # content: until the poller hands a batch over, the outbox must not send its rows.
    notifier = await make_notifier(receiver.url, store=store, queue_size=2)
    announced = [stream.batch(1), stream.batch(1), stream.batch(1)]
    unannounced = stream.batch(1)
    for batch in [*announced, unannounced]:
        await store.save(batch, stream.sessions, stream.position)
    for batch in announced:
        notifier.enqueue(batch)  # the third does not fit in memory: read from the store
    await receiver.wait_accepted(3)
    await eventually(lambda: notifier.pending() == 0)
    await asyncio.sleep(50 * MS)
    assert receiver.seqs == [1, 2, 3]
    notifier.enqueue(unannounced)  # the poller's retry succeeded and announced it
    await receiver.wait_accepted(4)
    assert receiver.seqs == [1, 2, 3, 4]
