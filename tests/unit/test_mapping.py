"""The mapping table of issue 2, field by field."""

from __future__ import annotations

import msgspec
import pytest

from control_room.jules.mapping import MappedListing, map_listing, map_session, repository_of
from control_room.jules.types import Session
from control_room.models import Approval, PullRequest


def body(**fields: object) -> bytes:
    """A session's raw JSON as a listing carries it."""
    return msgspec.json.encode(msgspec.to_builtins(raw(**fields)))


def raw(**fields: object) -> Session:
    base: dict[str, object] = {
        "name": "sessions/42",
        "id": "42",
        "title": "Fix the flaky test",
        "prompt": "a long prompt that is not shown",
        "sourceContext": {
            "source": "sources/github/acme/api",
            "githubRepoContext": {"startingBranch": "main"},
        },
        "state": "QUEUED",
        "url": "https://jules.google.com/session/42",
        "createTime": "2026-11-01T10:00:00Z",
        "updateTime": "2026-11-01T10:00:05.123Z",
        "someFutureField": {"ignored": True},
    }
    base.update(fields)
    if "id" in fields and "name" not in fields:
        base["name"] = f"sessions/{fields['id']}"  # a real session's name follows its id
    return msgspec.convert(base, Session)


def test_every_field_is_mapped() -> None:
    s = map_session(raw())
    assert s.id == "42"
    assert s.repository == "acme/api"
    assert s.branch == "main"
    assert s.title == "Fix the flaky test"
    assert s.state == "QUEUED"
    assert s.planStatus == "pending"
    assert s.approval == Approval(state="pending")
    assert s.participants == ()
    assert s.createdAt == "2026-11-01T10:00:00Z"
    assert s.updatedAt == "2026-11-01T10:00:05.123Z"
    assert s.url == "https://jules.google.com/session/42"
    assert s.pullRequest is None


def test_absent_fields_are_absent_on_the_wire_not_null() -> None:
    encoded = msgspec.json.decode(msgspec.json.encode(map_session(raw())))
    assert "pullRequest" not in encoded
    assert "approvedAt" not in encoded["approval"]
    assert encoded["participants"] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("sources/github/acme/api", "acme/api"),
        ("sources/gitlab/acme/api", "gitlab/acme/api"),
        ("sources/other", "other"),
        ("", ""),
    ],
)
def test_repository_drops_the_source_prefix(source: str, expected: str) -> None:
    assert repository_of(source) == expected


@pytest.mark.parametrize(
    ("state", "plan_status"),
    [
        ("QUEUED", "pending"),
        ("PLANNING", "pending"),
        ("AWAITING_PLAN_APPROVAL", "pending"),
        ("IN_PROGRESS", "in_progress"),
        ("AWAITING_USER_FEEDBACK", "in_progress"),
        ("PAUSED", "in_progress"),
        ("COMPLETED", "succeeded"),
        ("FAILED", "failed"),
        ("STATE_UNSPECIFIED", "pending"),
        ("SOMETHING_NEW", "pending"),
    ],
)
def test_plan_status_follows_the_table(state: str, plan_status: str) -> None:
    s = map_session(raw(state=state))
    assert s.planStatus == plan_status
    assert s.state == state  # kept as Jules says it, unknown values included


def test_approval_is_pending_until_the_plan_moves_on() -> None:
    waiting = map_session(raw(state="AWAITING_PLAN_APPROVAL"))
    assert waiting.approval == Approval(state="pending")
    working = map_session(
        raw(state="IN_PROGRESS", updateTime="2026-11-01T10:07:00Z"), previous=waiting
    )
    assert working.approval == Approval(state="approved", approvedAt="2026-11-01T10:07:00Z")


def test_approved_at_is_kept_once_seen() -> None:
    waiting = map_session(raw(state="AWAITING_PLAN_APPROVAL"))
    working = map_session(raw(state="IN_PROGRESS", updateTime="T1"), previous=waiting)
    done = map_session(raw(state="COMPLETED", updateTime="T2"), previous=working)
    assert done.approval == Approval(state="approved", approvedAt="T1")


def test_approved_at_is_omitted_when_the_transition_was_never_seen() -> None:
    s = map_session(raw(state="IN_PROGRESS"))
    assert s.approval == Approval(state="approved")
    assert s.approval.approvedAt is None


def test_failure_keeps_the_previous_approval_verdict() -> None:
    planning = map_session(raw(state="PLANNING"))
    assert map_session(raw(state="FAILED"), previous=planning).approval.state == "pending"
    working = map_session(raw(state="IN_PROGRESS", updateTime="T1"), previous=planning)
    failed = map_session(raw(state="FAILED"), previous=working)
    assert failed.approval == Approval(state="approved", approvedAt="T1")


def test_pull_request_is_the_first_output_with_one() -> None:
    s = map_session(
        raw(
            state="COMPLETED",
            outputs=[
                {"changeSet": {"source": "x"}},
                {"pullRequest": {"url": "https://github.com/acme/api/pull/7", "title": "Fix"}},
                {"pullRequest": {"url": "https://github.com/acme/api/pull/8", "title": "Two"}},
            ],
        )
    )
    assert s.pullRequest == PullRequest(url="https://github.com/acme/api/pull/7", title="Fix")


def test_the_seams_are_the_last_usable_session_of_every_page_but_the_last() -> None:
    listing = MappedListing([b"{}"] * 5, ["5", "4", None, "2", "1"], {})
    listing.page_ends = [2, 4, 5]
    assert listing.seams() == ["4", "2"]
    listing.page_ends = [1, 3, 5]
    assert listing.seams() == ["5", "4"]


def test_id_falls_back_to_the_name() -> None:
    assert map_session(raw(id="", name="sessions/99")).id == "99"


def test_listing_reuses_unchanged_sessions_and_maps_changed_ones() -> None:
    first = map_listing([body(id="1"), body(id="2")], MappedListing.empty())
    second = map_listing([body(id="1"), body(id="2", state="PLANNING")], first)
    assert second.sessions["1"] is first.sessions["1"]
    assert second.sessions["2"].state == "PLANNING"


def test_listing_maps_changes_even_when_only_an_output_changed() -> None:
    first = map_listing([body(id="1", state="COMPLETED")], MappedListing.empty())
    pr = {"pullRequest": {"url": "https://github.com/acme/api/pull/1", "title": "PR"}}
    second = map_listing([body(id="1", state="COMPLETED", outputs=[pr])], first)
    assert second.sessions["1"].pullRequest is not None


def test_null_reads_as_absent_everywhere() -> None:
    nulls = (
        b'{"id":"7","name":null,"title":null,"sourceContext":{"source":null,'
        b'"githubRepoContext":null},"state":null,"url":null,"outputs":null,'
        b'"createTime":null,"updateTime":null,"archived":null}'
    )
    s = map_session(msgspec.json.decode(nulls, type=Session))
    assert (s.id, s.title, s.repository, s.branch, s.url) == ("7", "", "", "", "")
    assert (s.state, s.planStatus, s.createdAt, s.updatedAt) == (
        "STATE_UNSPECIFIED",
        "pending",
        "",
        "",
    )
    assert s.pullRequest is None
    outputs = (
        b'{"id":"7","outputs":[null,{"pullRequest":null},{"pullRequest":{"url":"u","title":null}}]}'
    )
    pr = map_session(msgspec.json.decode(outputs, type=Session)).pullRequest
    assert pr == PullRequest(url="u", title="")


def test_an_undecodable_session_keeps_its_last_good_version_and_the_rest_is_mapped() -> None:
    first = map_listing([body(id="1"), body(id="2")], MappedListing.empty())
    broken = b'{"id": "1", "title": ["not", "a", "string"]}'
    second = map_listing([broken, body(id="2", state="PLANNING")], first)
    assert second.sessions["1"] is first.sessions["1"]  # kept, not deleted
    assert second.sessions["2"].state == "PLANNING"  # the rest goes on
    (rejected,) = second.rejected
    assert (rejected.ids, rejected.kind, rejected.kept) == (("1",), "undecodable", ("1",))
    assert "title" in rejected.reason
    # Still broken next time (same bytes): still rejected, still kept.
    third = map_listing([broken, body(id="2", state="PLANNING")], second)
    assert third.sessions["1"] is first.sessions["1"] and len(third.rejected) == 1


def test_a_new_session_that_does_not_decode_waits() -> None:
    listing = map_listing([b'{"id": "9", "state": 5}', b"[1, 2]", b"null"], MappedListing.empty())
    assert listing.sessions == {}
    assert [(r.ids, r.kept) for r in listing.rejected] == [(("9",), ()), ((), ()), ((), ())]


def test_id_and_name_disagreeing_is_never_taken_for_either_session() -> None:
    first = map_listing([body(id="5"), body(id="6")], MappedListing.empty())
    second = map_listing([body(id="5", name="sessions/6", title="whose?"), body(id="6")], first)
    assert second.sessions["5"] is first.sessions["5"]
    assert second.sessions["6"] is first.sessions["6"]
    (rejected,) = second.rejected
    assert (rejected.ids, rejected.kind) == (("5", "6"), "identity_conflict")


def test_an_older_version_than_the_one_shown_is_ignored() -> None:
    first = map_listing([body(id="1", updateTime="2026-11-01T10:00:05Z")], MappedListing.empty())
    older = body(id="1", state="QUEUED", updateTime="2026-11-01t09:00:00z")
    second = map_listing([older], first)
    assert second.sessions["1"] is first.sessions["1"]
    assert second.stale == ["1"]
    newer = body(id="1", state="PLANNING", updateTime="2026-11-01T11:00:06+01:00")  # 10:00:06Z
    assert map_listing([newer], first).sessions["1"].state == "PLANNING"


def test_listing_skips_archived_blank_and_repeated_ids() -> None:
    listing = map_listing(
        [
            body(id="1", title="newest"),
            body(id="1", title="older copy from the next page"),
            body(id="", name=""),
            body(id="3", archived=True),
        ],
        MappedListing.empty(),
    )
    assert list(listing.sessions) == ["1"]
    assert listing.sessions["1"].title == "newest"
    assert listing.duplicates == ["1"]
    assert [r.kind for r in listing.rejected] == ["no_id"]


def test_unknown_fields_and_values_never_crash() -> None:
    weird = msgspec.json.decode(
        b'{"id":"7","state":"BRAND_NEW_STATE","outputs":[{"somethingElse":{}}],"x":[1,2]}',
        type=Session,
    )
    s = map_session(weird)
    assert (s.state, s.planStatus, s.repository, s.branch) == ("BRAND_NEW_STATE", "pending", "", "")


def test_a_shifted_listing_still_reuses_unchanged_sessions() -> None:
    bodies = [body(id=str(i), title=f"t{i}") for i in range(40)]
    first = map_listing(bodies, MappedListing.empty())
    shifted = [body(id="new1"), body(id="new2"), *bodies[:10], *bodies[13:]]  # 2 up, 3 gone
    second = map_listing(shifted, first)
    assert set(second.sessions) == {"new1", "new2"} | {str(i) for i in (*range(10), *range(13, 40))}
    for sid in ("0", "9", "13", "39"):
        assert second.sessions[sid] is first.sessions[sid]  # recognised, not decoded again
    assert second.sessions == map_listing(shifted, MappedListing.empty()).sessions
