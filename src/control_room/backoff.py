"""Pure retry timing: exponential backoff with jitter, and `Retry-After` parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): base·2^(n-1), capped, then jittered.

    The delay is drawn between 50 % and 100 % of the capped value, so it never exceeds the
    cap and stays jittered there too: peers that failed together do not retry together.
    """
    exp: float = min(cap, base * float(2 ** max(attempt - 1, 0)))
    r = float((rng or random).random())
    return exp * (0.5 + r * 0.5)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
