"""When every page is listed, which sessions are read on their own, when one is stalled, and
how requests are counted (all pure)."""

from __future__ import annotations

import msgspec
import pytest

from control_room import rfc3339
from control_room.jules.requests import WINDOW_S, RequestCounter
from control_room.models import JulesSession
from control_room.schedule import ListingSchedule, hot_beyond, is_hot
from control_room.stall import apply_stalls, stalled_since
from tests.factories import session

NOON = "2026-01-01T12:00:00Z"
NOON_S = 1767268800.0


def test_the_first_poll_lists_everything_then_ends_within_each_full_interval() -> None:
    schedule = ListingSchedule(full_interval=60, poll_interval=5)
    assert schedule.complete_due(0)
    schedule.listed_completely(0, 0.3)
    # Waiting for the tick at 60 would end the next listing at 60.3: it runs at 55.
    assert next(t for t in range(5, 130, 5) if schedule.complete_due(t)) == 55
    schedule.listed_completely(55, 55.3)
    assert next(t for t in range(60, 130, 5) if schedule.complete_due(t)) == 110


def test_a_listing_that_takes_longer_is_started_earlier() -> None:
    schedule = ListingSchedule(full_interval=60, poll_interval=5)
    schedule.listed_completely(0, 8)  # a slow upstream: 8 s for every page
    assert next(t for t in range(5, 130, 5) if schedule.complete_due(t)) == 50


def test_a_listing_cut_short_is_tried_again_after_its_backoff_first_pages_between() -> None:
    schedule = ListingSchedule(full_interval=1, poll_interval=5)
    schedule.listed_completely(0, 0.1)
    schedule.listing_failed(5, retry_in=10)
    assert not schedule.complete_due(10)  # a first page only: cheap, and holds nothing back
    assert schedule.complete_due(15)
    schedule.listed_completely(15, 15.1)
    assert schedule.complete_due(20)  # due as usual again


def test_a_full_interval_shorter_than_the_poll_lists_everything_every_poll() -> None:
    schedule = ListingSchedule(full_interval=1, poll_interval=5)
    schedule.listed_completely(0, 0.1)
    assert schedule.complete_due(5)


def test_with_polls_on_demand_the_listing_is_planned_a_quarter_interval_ahead() -> None:
    schedule = ListingSchedule(full_interval=2, poll_interval=3600)
    schedule.listed_completely(0, 0.1)
    assert not schedule.complete_due(1.3)
    assert schedule.complete_due(1.5)


@pytest.mark.parametrize(
    ("state", "stalled", "hot"),
    [
        ("QUEUED", False, True),
        ("IN_PROGRESS", False, True),
        ("AWAITING_USER_FEEDBACK", False, True),
        ("SOMETHING_NEW", False, True),  # the API is alpha: unknown states may be working
        ("IN_PROGRESS", True, False),  # stalled: checked at the complete listing
        ("PAUSED", False, False),
        ("COMPLETED", False, False),
        ("FAILED", False, False),
    ],
)
def test_which_sessions_are_hot(state: str, stalled: bool, hot: bool) -> None:
    s = msgspec.structs.replace(session("1", state), stalledSince=NOON if stalled else None)
    assert is_hot(s) is hot


def test_hot_sessions_beyond_the_page_are_capped_most_recently_updated_first() -> None:
    sessions = {
        str(i): msgspec.structs.replace(
            session(str(i), "IN_PROGRESS"), updatedAt=f"2026-01-01T12:00:0{i}Z"
        )
        for i in range(5)
    }
    sessions["9"] = session("9", "COMPLETED")
    read, left = hot_beyond(sessions, listed={"4"}, limit=2)
    assert read == ["3", "2"]
    assert left == ["1", "0"]
    assert hot_beyond(sessions, listed=set(), limit=10) == (["0", "1", "2", "3", "4"], [])


def working(updated: str = NOON, stalled: str | None = None) -> JulesSession:
    s = session("1", "IN_PROGRESS")
    return msgspec.structs.replace(s, updatedAt=updated, stalledSince=stalled)


def test_a_working_session_quiet_for_stall_after_is_flagged_since_its_last_sign_of_life() -> None:
    s = working()
    assert stalled_since(s, None, NOON_S + 899, 900) is None
    assert stalled_since(s, None, NOON_S + 900, 900) == NOON
    later = "2026-01-01T12:10:00.5Z"
    assert stalled_since(s, later, NOON_S + 900, 900) is None  # an activity after the update
    assert stalled_since(s, later, NOON_S + 600.5 + 900, 900) == later
    waiting = msgspec.structs.replace(s, state="AWAITING_USER_FEEDBACK")
    assert stalled_since(waiting, None, NOON_S + 9999, 900) is None
    assert stalled_since(working("not a time"), None, NOON_S + 9999, 900) is None


def test_stall_flags_are_set_and_cleared_by_replacing_sessions() -> None:
    quiet, flagged_done = working(), msgspec.structs.replace(working(), state="COMPLETED")
    flagged_done = msgspec.structs.replace(flagged_done, stalledSince=NOON)
    sessions = {"1": quiet, "2": msgspec.structs.replace(flagged_done, id="2")}
    changed = apply_stalls(sessions, lambda sid: None, NOON_S + 1000, 900)
    assert sorted(changed) == ["1", "2"]
    assert sessions["1"].stalledSince == NOON and quiet.stalledSince is None  # replaced
    assert sessions["2"].stalledSince is None
    assert apply_stalls(sessions, lambda sid: None, NOON_S + 1000, 900) == []


def test_instants_compare_to_the_nanosecond_across_forms() -> None:
    assert rfc3339.later("2026-01-01T12:00:00.000000002Z", "2026-01-01T12:00:00.000000001Z")
    assert rfc3339.later("2026-01-01T13:00:00.5+01:00", "2026-01-01T12:00:00.4999999Z")
    assert rfc3339.later("2026-01-01T12:00:00Z", "2026-01-01T12:00:00.000Z") is False
    assert rfc3339.later("soon", NOON) is None


def test_requests_are_counted_by_kind_over_the_last_minute() -> None:
    now = [0.0]
    seen: list[str] = []
    counter = RequestCounter(seen.append, clock=lambda: now[0])
    counter.count("list_first_page")
    now[0] = WINDOW_S / 2
    counter.count("list_activities")
    counter.count("list_activities")
    assert counter.last_minute()["list_activities"] == 2
    now[0] = WINDOW_S + 1
    minute = counter.last_minute()
    assert (minute["list_first_page"], minute["list_activities"]) == (0, 2)
    assert counter.totals["list_first_page"] == 1
    assert seen == ["list_first_page", "list_activities", "list_activities"]
