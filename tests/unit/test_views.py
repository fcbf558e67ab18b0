"""Subscription views: membership, entering and leaving a view, activities, limits."""

from __future__ import annotations

import msgspec
import pytest

from control_room.broker.base import Batch, Entry
from control_room.broker.memory import MemoryBroker
from control_room.jules.mapping import PLAN_STATUS, UNSPECIFIED
from control_room.messages import ActivityMessage
from control_room.models import SESSION_STATES, Activity, Change, is_repository
from control_room.views import DEFAULT_VIEW, MAX_FILTER_VALUES, BadFilter, View
from control_room.ws.prepared import PLAIN, batch_frames, payloads
from tests.factories import session

T = "2026-11-26T00:00:00.000Z"


def updated(sid: str, before: str, after: str, seq: int = 1) -> Entry:
    broker = MemoryBroker(10)
    change = Change("updated", sid, session(sid, before), session(sid, after))
    (delta,) = broker.stamp([change], T)
    return Batch([delta]).entries[0]


def activity(sid: str, state: str = "IN_PROGRESS") -> Entry:
    message = ActivityMessage(
        sessionId=sid,
        activity=Activity(
            id="a1", sessionId=sid, kind="agentMessaged", originator="agent", createdAt=T
        ),
        timestamp=T,
        seq=1,
    )
    return Entry.of_activity(message, ("acme/api", state))


def test_the_default_view_passes_every_delta_and_no_activity() -> None:
    assert DEFAULT_VIEW.project(updated("s1", "QUEUED", "PLANNING")) == "pass"
    assert DEFAULT_VIEW.project(activity("s1")) == "drop"
    assert not DEFAULT_VIEW.filtered


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("IN_PROGRESS", "IN_PROGRESS", "pass"),
        ("QUEUED", "IN_PROGRESS", "created"),
        ("IN_PROGRESS", "COMPLETED", "deleted"),
        ("QUEUED", "COMPLETED", "drop"),
    ],
)
def test_a_state_filter_turns_moves_across_its_edge_into_created_and_deleted(
    before: str, after: str, expected: str
) -> None:
    view = View.of(states=["IN_PROGRESS"])
    assert view.project(updated("s1", before, after)) == expected


def test_entering_a_view_is_a_created_delta_with_the_original_seq() -> None:
    entry = updated("s1", "QUEUED", "IN_PROGRESS")
    (payload,) = payloads([entry], View.of(states=["IN_PROGRESS"]))
    message = msgspec.json.decode(payload)
    assert (message["type"], message["seq"]) == ("created", entry.seq)
    assert "before" not in message
    assert message["after"]["state"] == "IN_PROGRESS"
    (leaving,) = payloads([updated("s1", "IN_PROGRESS", "FAILED")], View.of(states=["IN_PROGRESS"]))
    assert msgspec.json.decode(leaving)["type"] == "deleted"
    assert msgspec.json.decode(leaving)["before"]["state"] == "IN_PROGRESS"


def test_activities_follow_the_view_of_their_session() -> None:
    both = View.of(session_ids=["s1"], activities=True)
    assert both.project(activity("s1")) == "pass"
    assert both.project(activity("s2")) == "drop"
    assert View.of(states=["QUEUED"], activities=True).project(activity("s1")) == "drop"
    assert View.of(session_ids=["s1"]).project(activity("s1")) == "drop"  # not asked for


def test_a_view_of_an_empty_set_sees_nothing() -> None:
    assert View.of(repositories=[]).project(updated("s1", "QUEUED", "PLANNING")) == "drop"


def test_equal_subscriptions_are_one_view() -> None:
    a = View.of(states=["QUEUED", "PLANNING"], repositories=["acme/api"])
    b = View.of(repositories=["acme/api", " acme/api"], states=["PLANNING", "QUEUED"])
    assert a == b and hash(a) == hash(b)


def test_filters_are_bounded() -> None:
    with pytest.raises(BadFilter, match="sessionIds"):
        View.of(session_ids=[str(i) for i in range(MAX_FILTER_VALUES + 1)])
    with pytest.raises(BadFilter, match="repositories"):
        View.of(repositories=["x" * 1000])


def test_frames_are_prepared_once_per_view_and_shared() -> None:
    broker = MemoryBroker(10)
    changes = [
        Change("created", "s1", None, session("s1")),
        Change("created", "s2", None, session("s2", "PLANNING")),
    ]
    batch = Batch(broker.stamp(changes, T))
    queued = (View.of(states=["QUEUED"]), PLAIN)
    first = batch_frames(batch, queued)
    assert batch_frames(batch, queued) is first  # the same bytes object for every client
    assert first[1] == 1
    assert batch_frames(batch, (DEFAULT_VIEW, PLAIN))[1] == 2
    assert len(batch.prepared) == 2


FIELDS = {"states": "states", "repositories": "repositories", "sessionIds": "session_ids"}
"""Subscription field -> View.of keyword."""


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("states", ["NOPE"]),
        ("states", ["queued"]),
        ("repositories", ["acme"]),
        ("repositories", ["../.."]),
        ("repositories", ["acme/.."]),
        ("repositories", ["-acme/api"]),
        ("sessionIds", [""]),
        ("sessionIds", ["  "]),
    ],
)
def test_a_filter_that_could_never_match_is_refused(field: str, values: list[str]) -> None:
    with pytest.raises(BadFilter) as refused:
        View.of(**{FIELDS[field]: values})
    assert refused.value.field == field
    assert all(v not in refused.value.problem for v in values if v.strip())


def test_entries_are_counted_as_sent_and_listed_as_understood() -> None:
    with pytest.raises(BadFilter, match="at most"):
        View.of(states=["QUEUED"] * (MAX_FILTER_VALUES + 1))
    view = View.of(states=["QUEUED", " PLANNING", "QUEUED"], repositories=["b/x", "a/y"])
    assert view.listed("states") == ["PLANNING", "QUEUED"]
    assert view.listed("repositories") == ["a/y", "b/x"]
    assert view.listed("sessionIds") is None


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("acme/api", True),
        ("a-c-m-e/web.app_2", True),
        ("acme/.github", True),
        ("acme/..", False),
        ("acme/.", False),
        ("../..", False),
        ("acme", False),
        ("acme/api/x", False),
        ("ac_me/api", False),
        ("-acme/api", False),
        ("a" * 40 + "/api", False),
        ("acme/" + "a" * 101, False),
        ("acme/ａpi", False),
    ],
)
def test_repositories_are_named_as_github_names_them(name: str, valid: bool) -> None:
    assert is_repository(name) is valid


def test_every_state_the_mapping_knows_is_filterable() -> None:
    assert set(PLAN_STATUS) | {UNSPECIFIED} <= set(SESSION_STATES)
