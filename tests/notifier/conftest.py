"""Fixtures for webhook delivery: a verifying receiver, a delta stream, fast retry timing."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from control_room.broker.base import Batch
from control_room.metrics import Metrics
from control_room.models import Approval, JulesSession, Position, SessionDelta, Snapshot
from control_room.notifier import Notifier
from control_room.poller import iso_now
from tests.conftest import FAST_WEBHOOKS, MS
from tests.notifier.receiver import Receiver
from tests.store.conftest import backend  # noqa: F401 - the store suite's per-backend fixture

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
FAST = FAST_WEBHOOKS


def jules_session(i: int, state: str = "QUEUED") -> JulesSession:
    """A session as the service shows it."""
    return JulesSession(
        id=f"s{i}",
        repository="acme/app",
        branch="main",
        title=f"task {i}",
        state=state,
        planStatus="none",
        approval=Approval("pending"),
        participants=("jules",),
        createdAt="2025-01-01T00:00:00.000Z",
        updatedAt="2025-01-01T00:00:00.000Z",
        url=f"https://jules.google.com/session/s{i}",
    )


class Stream:
    """Numbers deltas the way the broker does and remembers the position."""

    def __init__(self, epoch: str = "e0c4", start: int = 0) -> None:
        self.position = Position(epoch, start)
        self.sessions: Snapshot = {}

    def batch(self, n: int = 1) -> Batch:
        """The next `n` deltas as one poll's batch."""
        seq = self.position.seq
        deltas = [
            SessionDelta(
                type="created",
                sessionId=f"s{seq + i}",
                after=jules_session(seq + i),
                timestamp=iso_now(),  # stored deliveries are aged from it
                seq=seq + i,
            )
            for i in range(1, n + 1)
        ]
        self.position = Position(self.position.epoch, seq + n)
        for d in deltas:
            assert d.after is not None
            self.sessions[d.sessionId] = d.after
        return Batch(deltas)


@pytest.fixture
def stream() -> Stream:
    """A fresh delta stream at seq 0."""
    return Stream()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A verifying receiver that expects deliveries signed with SECRET."""
    async with Receiver(SECRET) as r:
        yield r


NotifierFactory = Callable[..., Awaitable[Notifier]]


@pytest.fixture
async def make_notifier(stream: Stream) -> AsyncIterator[NotifierFactory]:
    """Start notifiers on the test clock; every one is stopped at the end."""
    made: list[Notifier] = []

    async def make(*urls: str, **overrides: Any) -> Notifier:
        options: dict[str, Any] = {
            "secret": SECRET,
            "metrics": Metrics(),
            "timeout": 500 * MS,
            "max_age": 60.0,
            "queue_size": 1000,
            "timing": FAST,
        }
        options.update(overrides)
        notifier = Notifier(urls, position=lambda: stream.position, **options)
        await notifier.start()
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        await notifier.stop()


async def eventually(predicate: Callable[[], bool], within: float = 3000 * MS) -> None:
    """Wait until `predicate()` holds, checking every millisecond."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(MS)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value from the service's registry (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def outcome(metrics: Metrics, name: str) -> float:
    """How many deliveries ended with outcome `name`."""
    return sample(metrics, "control_room_webhook_deliveries_total", outcome=name)


def retries(metrics: Metrics) -> float:
    """How many retries were made."""
    return sample(metrics, "control_room_webhook_retries_total")
