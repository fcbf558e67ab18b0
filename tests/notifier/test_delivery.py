"""Webhook delivery against a real receiver on 127.0.0.1: signing, order, retries, limits."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator

import msgspec
import pytest

from control_room.logging import JsonFormatter
from control_room.metrics import Metrics
from control_room.notifier import Notifier, RetryTiming
from tests.conftest import MS
from tests.notifier.conftest import (
    FAST,
    KEY,
    SECRET,
    NotifierFactory,
    Stream,
    eventually,
    outcome,
    retries,
    sample,
)
from tests.notifier.receiver import Receiver


class Captured(logging.Handler):
    """Every record of the notifier's logger, formatted as the service writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        """The records as JSON lines, fields included."""
        return [self.format(r) for r in self.records]

    def find(self, message: str) -> list[logging.LogRecord]:
        """Records with this event name."""
        return [r for r in self.records if r.getMessage() == message]


@pytest.fixture
def logs() -> Iterator[Captured]:
    """Capture the notifier's logs at debug level."""
    logger = logging.getLogger("control_room.notifier")
    handler = Captured()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def field(record: logging.LogRecord, name: str) -> object:
    """An `extra` field of a log record."""
    return record.__dict__[name]


def endpoint_stats(notifier: Notifier, index: int = 0) -> dict[str, object]:
    """The per-endpoint state /api/stats shows."""
    webhooks = notifier.stats()["webhooks"]
    assert isinstance(webhooks, dict)
    state = webhooks["endpoints"][index]
    assert isinstance(state, dict)
    return state


async def test_each_delta_is_posted_signed_as_the_bytes_clients_receive(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    notifier = await make_notifier(receiver.url)
    batch = stream.batch(3)
    notifier.enqueue(batch)
    await receiver.wait_accepted(3)
    assert receiver.bad == []
    assert receiver.seqs == [1, 2, 3]
    for got, entry in zip(receiver.accepted, batch.entries, strict=True):
        assert got.body == entry.payload  # the very bytes the WebSocket frames carry
        assert got.content_type == "application/json"
        assert got.msg_id == f"{stream.position.epoch}-{entry.seq}"
        assert abs(int(got.timestamp) - time.time()) < 5
    assert outcome(notifier.metrics, "delivered") == 3


async def test_without_a_secret_deliveries_are_unsigned(
    make_notifier: NotifierFactory, stream: Stream
) -> None:
    async with Receiver(secret=None) as receiver:
        notifier = await make_notifier(receiver.url, secret="")
        notifier.enqueue(stream.batch(2))
        await receiver.wait_accepted(2)
        assert receiver.bad == []  # the receiver refuses a signature it did not expect


async def test_a_plain_secret_signs_with_its_utf8_bytes(
    make_notifier: NotifierFactory, stream: Stream
) -> None:
    secret = "correct horse battery staple ✓"
    async with Receiver(secret=secret) as receiver:
        notifier = await make_notifier(receiver.url, secret=secret)
        notifier.enqueue(stream.batch(1))
        await receiver.wait_accepted(1)
        assert receiver.bad == []


async def test_a_wrong_secret_is_caught_by_the_receiver(
    make_notifier: NotifierFactory, stream: Stream
) -> None:
    # The check can fail: a receiver with another key refuses, the sender keeps it (401).
    async with Receiver(secret="whsec_" + "A" * 44) as receiver:
        notifier = await make_notifier(receiver.url)
        notifier.enqueue(stream.batch(1))
        await receiver.wait_for(lambda: len(receiver.bad) == 1)
        assert receiver.accepted == []
        await eventually(lambda: outcome(notifier.metrics, "rejected") == 1)


async def test_order_is_kept_across_many_deltas_and_failures(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    notifier = await make_notifier(receiver.url)
    # Every fifth request fails with a retryable answer; nothing may overtake it.
    for _ in range(40):
        receiver.accept(4)
        receiver.fail(1, 503)
    total = 0
    for size in [1, 3, 7, 2, 5, 11, 1, 1, 4, 6] * 3:
        notifier.enqueue(stream.batch(size))
        total += size
    await receiver.wait_accepted(total, within=10_000 * MS)
    assert receiver.seqs == list(range(1, total + 1))
    assert receiver.bad == []
    assert retries(notifier.metrics) >= total // 5
    assert outcome(notifier.metrics, "delivered") == total


async def test_500s_are_retried_with_the_same_id_then_delivered_in_order(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    notifier = await make_notifier(receiver.url)
    receiver.fail(3, 500)
    notifier.enqueue(stream.batch(2))
    notifier.enqueue(stream.batch(3))
    await receiver.wait_accepted(5)
    assert receiver.seqs == [1, 2, 3, 4, 5]
    first = [r for r in receiver.requests if r.seq == 1]
    assert len(first) == 4
    assert {r.msg_id for r in first} == {f"{stream.position.epoch}-1"}
    assert receiver.bad == []
    assert retries(notifier.metrics) == 3
    state = endpoint_stats(notifier)
    assert state["pending"] == 0
    assert state["consecutiveFailures"] == 0
    assert str(state["lastError"]).startswith("HTTP 500")
    assert state["lastSuccess"] is not None


async def test_receiver_down_then_back_receives_every_delta_in_order_verified(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream, logs: Captured
) -> None:
    notifier = await make_notifier(receiver.url)
    await receiver.stop()  # connection refused from here on
    notifier.enqueue(stream.batch(3))
    await eventually(lambda: retries(notifier.metrics) >= 3)
    for size in (1, 4, 2, 10):  # more deltas arrive while it is down
        notifier.enqueue(stream.batch(size))
    await eventually(lambda: retries(notifier.metrics) >= 8)
    assert endpoint_stats(notifier)["pending"] == 20
    assert "ClientConnectorError" in str(endpoint_stats(notifier)["lastError"])
    assert receiver.requests == []

    await receiver.start()  # same port
    await receiver.wait_accepted(20)
    assert receiver.seqs == list(range(1, 21))  # all of them, once each, in order
    assert receiver.bad == []
    assert len(receiver.requests) == 20
    await eventually(lambda: endpoint_stats(notifier)["pending"] == 0)
    assert endpoint_stats(notifier)["consecutiveFailures"] == 0
    assert logs.find("Webhook endpoint recovered")
    assert outcome(notifier.metrics, "expired") == 0


async def test_429_retry_after_is_honoured(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    wait = 300 * MS
    notifier = await make_notifier(receiver.url)
    receiver.fail(1, 429, {"Retry-After": f"{wait:.3f}"})
    notifier.enqueue(stream.batch(1))
    await receiver.wait_accepted(1)
    first, second = receiver.requests
    # Without the header the backoff would retry after ~5 ms.
    assert second.at - first.at >= wait * 0.95
    assert retries(notifier.metrics) == 1


async def test_a_very_long_retry_after_is_capped(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    timing = RetryTiming(base=FAST.base, cap=FAST.cap, retry_after_max=50 * MS)
    notifier = await make_notifier(receiver.url, timing=timing)
    receiver.fail(1, 503, {"Retry-After": "86400"})
    notifier.enqueue(stream.batch(1))
    await receiver.wait_accepted(1, within=2000 * MS)
    first, second = receiver.requests
    assert second.at - first.at >= 50 * MS * 0.95


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_answers_are_retried(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream, status: int
) -> None:
    notifier = await make_notifier(receiver.url)
    receiver.fail(2, status)
    notifier.enqueue(stream.batch(2))
    await receiver.wait_accepted(2)
    assert receiver.seqs == [1, 2]
    assert retries(notifier.metrics) == 2
    assert outcome(notifier.metrics, "rejected") == 0


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 410, 413, 422])
async def test_other_answers_are_permanent_dropped_logged_counted_and_delivery_goes_on(
    receiver: Receiver,
    make_notifier: NotifierFactory,
    stream: Stream,
    logs: Captured,
    status: int,
) -> None:
    notifier = await make_notifier(receiver.url)
    receiver.fail(1, status, {"Location": "http://127.0.0.1:9/elsewhere"})
    notifier.enqueue(stream.batch(3))
    await receiver.wait_accepted(2)
    assert receiver.seqs == [2, 3]
    assert [r.seq for r in receiver.requests] == [1, 2, 3]  # seq 1 was not tried again
    assert outcome(notifier.metrics, "rejected") == 1
    assert retries(notifier.metrics) == 0
    (refused,) = logs.find("Webhook delivery refused; dropped for this endpoint")
    assert field(refused, "status") == status
    assert field(refused, "seq") == 1
    assert refused.levelno == logging.ERROR
    assert endpoint_stats(notifier)["rejected"] == 1


async def test_a_timeout_is_retried(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    notifier = await make_notifier(receiver.url, timeout=100 * MS)
    receiver.stall(2000 * MS)
    notifier.enqueue(stream.batch(2))
    await receiver.wait_accepted(2)
    assert receiver.seqs == [1, 2]
    assert [r.seq for r in receiver.requests] == [1, 1, 2]
    assert "no answer within" in str(endpoint_stats(notifier)["lastError"])
    assert retries(notifier.metrics) == 1


async def test_a_full_memory_queue_drops_the_oldest_logged_and_counted(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream, logs: Captured
) -> None:
    notifier = await make_notifier(receiver.url, queue_size=5)
    await receiver.stop()
    notifier.enqueue(stream.batch(1))
    await eventually(lambda: retries(notifier.metrics) >= 1)  # seq 1 is in flight
    notifier.enqueue(stream.batch(10))  # seqs 2..11: five fit
    assert outcome(notifier.metrics, "overflow") == 5
    assert notifier.pending() == 6
    assert endpoint_stats(notifier)["dropped"] == 5
    (full,) = logs.find("Webhook queue full; oldest deliveries dropped")
    assert (field(full, "dropped"), field(full, "fromSeq"), field(full, "toSeq")) == (5, 2, 6)

    await receiver.start()
    await receiver.wait_accepted(6)
    assert receiver.seqs == [1, 7, 8, 9, 10, 11]
    assert receiver.bad == []


async def test_a_delivery_is_given_up_after_max_age(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream, logs: Captured
) -> None:
    notifier = await make_notifier(receiver.url, max_age=200 * MS)
    await receiver.stop()
    notifier.enqueue(stream.batch(1))
    await eventually(lambda: outcome(notifier.metrics, "expired") == 1)
    assert retries(notifier.metrics) >= 2  # it was retried until then
    (expired,) = logs.find("Webhook delivery expired; given up")
    assert field(expired, "seq") == 1
    await receiver.start()
    notifier.enqueue(stream.batch(1))
    await receiver.wait_accepted(1)
    assert receiver.seqs == [2]


async def test_a_dead_endpoint_does_not_hold_the_others(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    async with Receiver(SECRET) as dead:
        await dead.stop()
        notifier = await make_notifier(dead.url, receiver.url)
        for _ in range(5):
            notifier.enqueue(stream.batch(2))
        await receiver.wait_accepted(10)
        assert receiver.seqs == list(range(1, 11))
        assert endpoint_stats(notifier, 0)["pending"] == 10
        assert endpoint_stats(notifier, 1)["pending"] == 0
        await dead.start()
        await dead.wait_accepted(10)
        assert dead.seqs == list(range(1, 11))


async def test_enqueue_never_waits_whatever_the_endpoint_does(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    assert not inspect.iscoroutinefunction(Notifier.enqueue)
    notifier = await make_notifier(receiver.url, queue_size=20_000)
    receiver.stall(2000 * MS, n=1)  # the endpoint hangs on the first delivery
    batches = [stream.batch(10) for _ in range(1000)]
    started = time.perf_counter()
    for batch in batches:
        notifier.enqueue(batch)
    elapsed = time.perf_counter() - started
    # 10,000 deltas queued for a hanging endpoint: a few ms of work, no I/O.
    assert elapsed < 0.5, elapsed
    assert notifier.pending() == 10_000


async def test_queue_depth_and_oldest_age_are_exported(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    metrics = Metrics()
    notifier = await make_notifier(receiver.url, metrics=metrics)
    await receiver.stop()
    notifier.enqueue(stream.batch(3))
    await eventually(lambda: retries(metrics) >= 2)
    assert sample(metrics, "control_room_webhook_queue_depth") == 3
    assert sample(metrics, "control_room_webhook_oldest_pending_age_seconds") > 0
    await receiver.start()
    await receiver.wait_accepted(3)
    await eventually(lambda: sample(metrics, "control_room_webhook_queue_depth") == 0)
    assert sample(metrics, "control_room_webhook_oldest_pending_age_seconds") == 0


async def test_the_secret_and_url_credentials_never_reach_the_logs(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream, logs: Captured
) -> None:
    url = f"http://hookuser:pw-in-url@127.0.0.1:{receiver.port}/hook?token=tok-in-url"
    notifier = await make_notifier(url, timeout=100 * MS)
    receiver.fail(1, 500)
    receiver.fail(1, 400)
    receiver.stall(1000 * MS)
    notifier.enqueue(stream.batch(4))
    await receiver.wait_accepted(2)
    await receiver.stop()
    notifier.enqueue(stream.batch(1))
    await eventually(lambda: retries(notifier.metrics) >= 4)
    await notifier.stop()
    lines = "\n".join(logs.lines())
    assert lines  # there was plenty to say
    encoded_key = SECRET.removeprefix("whsec_")
    for secret in (SECRET, encoded_key, KEY.hex(), "pw-in-url", "tok-in-url", "hookuser"):
        assert secret not in lines
    assert msgspec.json.encode(endpoint_stats(notifier)).find(b"tok-in-url") == -1
    assert endpoint_stats(notifier)["endpoint"] == f"http://127.0.0.1:{receiver.port}/…"
