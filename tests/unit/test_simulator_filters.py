"""The simulator's `filter` parsing and RFC 3339 times: what the real API accepts and refuses."""

from __future__ import annotations

import pytest

from control_room.jules.simulator import InvalidArgument, TimeBound
from control_room.jules.simulator.filters import (
    archived_filter,
    create_time_filter,
    name_filter,
)
from control_room.jules.simulator.timestamps import format_timestamp, parse_timestamp

T0 = 1_700_000_000_000_000_000


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (T0, "2023-11-14T22:13:20Z"),
        (T0 + 120_000_000, "2023-11-14T22:13:20.120Z"),
        (T0 + 120_400_000, "2023-11-14T22:13:20.120400Z"),
        (T0 + 120_400_001, "2023-11-14T22:13:20.120400001Z"),
        (951_782_400 * 10**9, "2000-02-29T00:00:00Z"),
    ],
)
def test_timestamps_use_the_shortest_of_0_3_6_9_fraction_digits(ns: int, expected: str) -> None:
    assert format_timestamp(ns) == expected
    assert parse_timestamp(expected) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-11-14T22:13:20.5Z", T0 + 500_000_000),
        ("2023-11-14t22:13:20z", T0),
        ("2023-11-15T00:13:20.000000001+02:00", T0 + 1),
        ("2023-11-14T20:13:20-02:00", T0),
    ],
)
def test_parse_keeps_nanoseconds_and_offsets(text: str, ns: int) -> None:
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2023-11-14",
        "2023-11-14T22:13:20",
        "2023-13-14T22:13:20Z",
        "2023-11-14T22:13:20.1234567890Z",
    ],
)
def test_parse_refuses_what_is_not_rfc_3339(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_timestamp(text)


@pytest.mark.parametrize(
    ("text", "archived"),
    [
        (None, False),
        ("", False),
        ("   ", False),
        ("archived = true", True),
        ("archived=true", True),
        ("  archived  =  TRUE  ", True),
        ('archived = "true"', True),
        ("archived = 'true'", True),
        ("archived = false", False),
        ("archived != true", False),
        ("archived != false", True),
    ],
)
def test_the_archived_filter_tolerates_spacing_case_and_quotes(
    text: str | None, archived: bool
) -> None:
    assert archived_filter(text) is archived


@pytest.mark.parametrize(
    "text",
    [
        "archived",
        "archived =",
        "archived = yes",
        "archived > true",
        "state = COMPLETED",
        "archived = true AND archived = true",
        "archived = true OR",
        "(archived = true)",
        'archived = "true',
    ],
)
def test_a_malformed_or_unsupported_sessions_filter_is_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        archived_filter(text)
    assert caught.value.field == "filter"


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        (None, None),
        ('create_time > "2023-11-14T22:13:20.120400001Z"', TimeBound(T0 + 120_400_001)),
        ('create_time>"2023-11-14T22:13:20Z"', TimeBound(T0)),
        ("createTime > '2023-11-14T22:13:20Z'", TimeBound(T0)),
        ("create_time >= 2023-11-14T22:13:20Z", TimeBound(T0, inclusive=True)),
    ],
)
def test_the_create_time_filter_reads_an_exclusive_bound(
    text: str | None, bound: TimeBound | None
) -> None:
    assert create_time_filter(text) == bound


@pytest.mark.parametrize(
    "text",
    [
        'create_time < "2023-11-14T22:13:20Z"',
        'create_time > "last tuesday"',
        'update_time > "2023-11-14T22:13:20Z"',
        "create_time >",
    ],
)
def test_a_malformed_activities_filter_is_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument):
        create_time_filter(text)


def test_the_name_filter_reads_names_joined_by_or() -> None:
    assert name_filter(None) is None
    assert name_filter('name = "sources/github/a/b"') == {"sources/github/a/b"}
    assert name_filter("name=sources/github/a/b OR name=sources/github/c/d") == {
        "sources/github/a/b",
        "sources/github/c/d",
    }
    for bad in ('name = "a" AND name = "b"', 'id = "a"', 'name != "a"', "name = a OR"):
        with pytest.raises(InvalidArgument):
            name_filter(bad)
