"""Which activities are read each poll, and which of those are announced (pure)."""

from __future__ import annotations

import msgspec

from control_room.cursors import NOT_FOUND_GRACE_S, Cursors, Read
from control_room.jules.activities import ActivityListing
from control_room.models import Activity, Change, JulesSession
from tests.factories import session

T0 = "2026-01-01T10:00:00.000000001Z"
T1 = "2026-01-01T10:00:00.000000002Z"  # a nanosecond later: not equal to T0
T2 = "2026-01-01T10:05:00Z"


def at(s: JulesSession, updated: str, state: str | None = None) -> JulesSession:
    return msgspec.structs.replace(s, updatedAt=updated, state=state or s.state)


def activity(aid: str, created: str, sid: str = "1") -> Activity:
    return Activity(
        id=aid, sessionId=sid, kind="progressUpdated", originator="agent", createdAt=created
    )


def test_a_created_session_is_read_whole_and_every_activity_is_new() -> None:
    cursors = Cursors(interval=5)
    new = at(session("1", state="AWAITING_PLAN_APPROVAL"), T0)
    [read] = cursors.plan([Change("created", "1", None, new)], {"1": new}, now=0)
    assert read == Read("1", None, None) and read.whole
    listing = ActivityListing([activity("a", T0), activity("b", T1)], newest_time=T1)
    assert [a.id for a in cursors.new_activities(read, listing)] == ["a", "b"]


def test_a_finished_session_that_moves_is_read_from_its_last_update_only() -> None:
    cursors = Cursors(interval=5)
    before = at(session("1", state="COMPLETED"), T0)
    after = at(before, T2, "IN_PROGRESS")
    [read] = cursors.plan([Change("updated", "1", before, after)], {"1": after}, now=0)
    assert (read.after, read.through, read.whole) == (T0, T0, False)


def test_a_working_session_without_cursor_is_read_whole_but_announces_only_later_ones() -> None:
    cursors = Cursors(interval=5)
    before = at(session("1", state="IN_PROGRESS"), T0)
    after = at(before, T2)
    [read] = cursors.plan([Change("updated", "1", before, after)], {"1": after}, now=0)
    assert (read.after, read.through) == (None, T0)
    listing = ActivityListing([activity("old", T0), activity("new", T1)], newest_time=T1)
    assert [a.id for a in cursors.new_activities(read, listing)] == ["new"]


def test_a_session_before_its_plan_is_not_read_and_its_first_read_announces_everything() -> None:
    cursors = Cursors(interval=5)
    queued = at(session("1", state="QUEUED"), T0)
    assert cursors.plan([Change("created", "1", None, queued)], {"1": queued}, now=0) == []
    planning = at(queued, T1, "PLANNING")
    assert cursors.plan([Change("updated", "1", queued, planning)], {"1": planning}, 1) == []
    planned = at(planning, T2, "AWAITING_PLAN_APPROVAL")
    [read] = cursors.plan([Change("updated", "1", planning, planned)], {"1": planned}, 2)
    assert read == Read("1", None, None)  # from the beginning, every one new
    # A command's re-read is never skipped.
    assert cursors.plan([], {"1": queued}, 3, touched=["1"]) == [Read("1", None, None)]


def test_an_update_that_does_not_move_updated_at_reads_nothing() -> None:
    cursors = Cursors(interval=5)
    before = at(session("1", state="IN_PROGRESS"), T0)
    flagged = msgspec.structs.replace(before, stalledSince=T0)
    assert cursors.plan([Change("updated", "1", before, flagged)], {"1": flagged}, now=0) == []


def test_the_baseline_follows_working_sessions_without_announcing_their_past() -> None:
    cursors = Cursors(interval=5)
    s = at(session("1", state="IN_PROGRESS"), T1)
    [read] = cursors.plan([], {"1": s}, now=0, follow=["1"])
    listing = ActivityListing([activity("a", T0), activity("b", T1)], newest_time=T1)
    assert cursors.new_activities(read, listing) == []
    cursors.advance(read, listing)
    assert cursors.last_activity("1") == T1
    # Followed once: the next poll does not read it again unless it moves.
    assert cursors.plan([], {"1": s}, now=1, follow=["1"]) == []


def test_an_advanced_cursor_reads_only_newer_and_drops_what_the_upstream_failed_to_filter() -> None:
    cursors = Cursors(interval=5)
    s = at(session("1", state="IN_PROGRESS"), T0)
    [read] = cursors.plan([Change("created", "1", None, s)], {"1": s}, now=0)
    cursors.advance(read, ActivityListing([activity("a", T0)], newest_time=T0))
    moved = at(s, T1)
    [again] = cursors.plan([Change("updated", "1", s, moved)], {"1": moved}, now=1)
    assert again.after == T0
    echoed = ActivityListing([activity("a", T0), activity("b", T1)], newest_time=T1)
    assert [a.id for a in cursors.new_activities(again, echoed)] == ["b"]


def test_a_failed_read_stays_due_and_keeps_its_cursor() -> None:
    cursors = Cursors(interval=5)
    s = at(session("1", state="IN_PROGRESS"), T0)
    [read] = cursors.plan([Change("created", "1", None, s)], {"1": s}, now=0)
    cursors.failed(read, now=0)
    assert cursors.due == 1
    [retry] = cursors.plan([], {"1": s}, now=10)
    assert retry == read  # same bounds: what it would have announced, it still will


def test_a_404_is_transient_within_the_grace_then_dropped() -> None:
    cursors = Cursors(interval=5)
    s = at(session("1", state="IN_PROGRESS"), T0)
    [read] = cursors.plan([Change("created", "1", None, s)], {"1": s}, now=0)
    assert cursors.not_found(read, now=1) is True
    assert cursors.plan([], {"1": s}, now=2) == [read]
    assert cursors.not_found(read, now=NOT_FOUND_GRACE_S + 1) is False
    assert cursors.due == 0


def test_reads_over_the_limit_wait_for_the_next_poll_changes_first() -> None:
    cursors = Cursors(interval=5)
    sessions = {str(i): at(session(str(i), state="IN_PROGRESS"), T0) for i in range(5)}
    moved = at(sessions["4"], T1)
    reads = cursors.plan(
        [Change("updated", "4", sessions["4"], moved)],
        {**sessions, "4": moved},
        now=0,
        follow=list(sessions),
        limit=2,
    )
    assert [r.session_id for r in reads] == ["4", "0"]
    assert cursors.due == 3


def test_a_deleted_session_is_forgotten() -> None:
    cursors = Cursors(interval=5)
    s = at(session("1", state="IN_PROGRESS"), T0)
    [read] = cursors.plan([Change("created", "1", None, s)], {"1": s}, now=0)
    cursors.failed(read, now=0)
    assert cursors.plan([Change("deleted", "1", s, None)], {}, now=10) == []
    assert (cursors.due, len(cursors)) == (0, 0)


def test_the_baseline_does_not_read_sessions_before_their_plan() -> None:
    cursors = Cursors(interval=5)
    queued = at(session("1", state="QUEUED"), T0)
    assert cursors.plan([], {"1": queued}, now=0, follow=["1"]) == []
    planned = at(queued, T1, "AWAITING_PLAN_APPROVAL")
    [read] = cursors.plan([Change("updated", "1", queued, planned)], {"1": planned}, now=1)
    assert (read.after, read.through) == (None, T0)  # whole, announcing what is after T0
