"""RFC 3339 timestamps as read from Jules and from this service's own messages.

RFC 3339 allows `t`/`z` in either case, any UTC offset and any number of fractional
digits; Jules sends `Z` with 0, 3, 6 or 9 digits today, but the API is alpha. msgspec's
RFC 3339 decoder (already the service's JSON library, written in C) reads every one of
these forms; this module adds the two things it leaves out: a leap second (`:60`) and a
timestamp without an offset (not RFC 3339, read as UTC rather than refused).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

MICROSECOND_DIGITS: Final = 6  # what a datetime holds
LEAP_SECOND: Final = ":60"
"""RFC 3339 §5.6 allows a 60th second; Python's datetime does not, so it is read as :59 + 1 s."""


def parse(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (microseconds, cut); None if not one.

    `2026-01-01T10:01:00Z`, `2026-01-01t10:01:00z`, `2026-01-01T11:01:00.123456789+01:00`
    all parse; a value without an offset is taken as UTC. Never raises.
    """
    if not text:
        return None
    text = _to_microseconds(text)
    try:
        parsed = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        return _leap_second(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def instant(text: str | None) -> tuple[int, int] | None:
    """An RFC 3339 timestamp as (Unix seconds, nanoseconds): exact to the nanosecond, for
    ordering activities against each other (Jules sends up to 9 digits; `parse` cuts to 6,
    and two activities a few nanoseconds apart must not compare equal). None if not one.
    """
    parsed = parse(text)
    if parsed is None or text is None:
        return None
    seconds = int(parsed.replace(microsecond=0).timestamp())
    if text[19:20] != ".":
        return seconds, 0
    end = 20
    while end < len(text) and text[end].isdigit():
        end += 1
    return seconds, int(text[20:end][:9].ljust(9, "0"))


def later(a: str | None, b: str | None) -> bool | None:
    """Whether instant `a` is strictly after `b` (to the nanosecond); None if either is not
    a timestamp."""
    first, second = instant(a), instant(b)
    if first is None or second is None:
        return None
    return first > second


def _to_microseconds(text: str) -> str:
    """Cut a fraction past 6 digits: msgspec rounds, and rounding `.9999999` up to the next
    second would make it compare equal to, or later than, a time that is really later."""
    if text[19:20] != ".":
        return text
    end = 20
    while end < len(text) and text[end].isdigit():
        end += 1
    return text if end - 20 <= MICROSECOND_DIGITS else text[:26] + text[end:]


def _leap_second(text: str) -> datetime | None:
    # `hh:mm:60` sits at index 16..19 of `YYYY-MM-DDThh:mm:60...`.
    if text[16:19] != LEAP_SECOND:
        return None
    try:
        parsed = msgspec.convert(text[:16] + ":59" + text[19:], datetime)
    except msgspec.ValidationError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed + timedelta(seconds=1)


def format_utc(when: datetime) -> str:
    """`2026-01-01T10:01:00.123Z`: UTC, milliseconds, `Z` (the form this service sends)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> str:
    """The current time in the form this service sends (see `format_utc`)."""
    return format_utc(datetime.now(UTC))
