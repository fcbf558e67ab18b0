"""Backoff timing and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from control_room.backoff import backoff_delay, parse_retry_after


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 30.0, rng) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        nominal = min(30.0, 2 ** (n - 1))
        assert nominal * 0.5 <= d <= nominal
    assert max(delays) <= 30.0
    assert len(set(delays)) == len(delays)  # jitter: no two equal


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 26 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
