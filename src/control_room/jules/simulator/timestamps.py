"""Google's RFC 3339 timestamps, to and from nanoseconds since the epoch (pure)."""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Final

from control_room.jules.simulator.errors import InvalidArgument

FRACTION_DIGITS: Final = (0, 3, 6, 9)  # Google's RFC 3339 timestamps use one of these

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
_RFC3339: Final = re.compile(
    r"(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)"
)


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch -> RFC 3339, Z-normalised, with 0, 3, 6 or 9 fraction digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    days, second_of_day = divmod(seconds, 86_400)
    hours, rest = divmod(second_of_day, 3600)
    stamp = f"{_date(days)}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    if fraction == 0:
        return f"{stamp}Z"
    if fraction % 1_000_000 == 0:
        return f"{stamp}.{fraction // 1_000_000:03d}Z"
    if fraction % 1_000 == 0:
        return f"{stamp}.{fraction // 1_000:06d}Z"
    return f"{stamp}.{fraction:09d}Z"


@functools.lru_cache(maxsize=4096)  # a large account spans a few hundred days
def _date(days: int) -> str:
    """Days since the epoch -> YYYY-MM-DD (cached: building an account formats ~50,000 times)."""
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86_400))


def parse_timestamp(text: str) -> int:
    """RFC 3339 (any offset, up to 9 fraction digits) -> nanoseconds since the epoch.

    Raises `InvalidArgument` when `text` is not an RFC 3339 timestamp. `datetime` keeps only
    microseconds, and the real API writes nanoseconds: an exclusive `create_time >` filter at a
    truncated time would hand the last activity a client has seen back to it. So the seconds go
    through `datetime` (calendar, offsets) and the fraction is added exactly.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"Invalid RFC 3339 timestamp: {text!r}.", field="filter")
    base, fraction, zone = match.groups()
    offset = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{base.replace('t', 'T')}{offset}")
    except ValueError as exc:  # a 13th month, a 61st second
        raise InvalidArgument(f"Invalid RFC 3339 timestamp: {text!r}.", field="filter") from exc
    seconds = (moment - _EPOCH) // _SECOND
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
