"""Every RFC 3339 form reads as the same instant; anything else is None, never an error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_room import rfc3339

TEN = datetime(2026, 1, 1, 10, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T10:01:00Z",
        "2026-01-01t10:01:00z",
        "2026-01-01T10:01:00.000Z",
        "2026-01-01T10:01:00.000000000Z",
        "2026-01-01T11:31:00+01:30",
        "2026-01-01T05:01:00-05:00",
        "2026-01-01T10:01:00-00:00",
        "2026-01-01 10:01:00Z",
        "2026-01-01T10:01:00",  # no offset: not RFC 3339, read as UTC rather than refused
    ],
)
def test_every_form_is_the_same_instant(text: str) -> None:
    assert rfc3339.parse(text) == TEN


def test_fractions_of_any_length_are_cut_to_microseconds_not_rounded() -> None:
    parsed = rfc3339.parse("2026-01-01T10:00:59.9999999999z")
    assert parsed is not None and parsed < TEN
    assert parsed.microsecond == 999_999
    assert rfc3339.parse("2026-01-01T10:01:00.5Z") == TEN.replace(microsecond=500_000)


def test_a_leap_second_is_the_next_second() -> None:
    assert rfc3339.parse("2026-01-01T10:00:60Z") == TEN


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01T10:01:00Z", "2026-01-01T10:01:00.Z", "2026-01-01"]
)
def test_anything_else_is_none(text: str) -> None:
    assert rfc3339.parse(text) is None


def test_the_service_sends_utc_milliseconds_with_z() -> None:
    assert rfc3339.format_utc(TEN) == "2026-01-01T10:01:00.000Z"
    assert rfc3339.parse(rfc3339.now()) is not None
