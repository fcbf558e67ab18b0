"""The diff: created / updated / deleted, deterministic, and the inverse of applying deltas."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control_room.diff import apply, diff
from control_room.models import JulesSession
from tests.factories import session


def test_no_change_gives_no_delta() -> None:
    snap = {"a": session("a"), "b": session("b")}
    assert diff(snap, dict(snap)) == []
    assert diff(snap, {k: session(k) for k in snap}) == []  # equal, not identical


def test_each_kind_is_found() -> None:
    before = {"a": session("a"), "b": session("b")}
    after = {"b": session("b", state="PLANNING"), "c": session("c")}
    changes = diff(before, after)
    assert [(c.type, c.sessionId) for c in changes] == [
        ("deleted", "a"),
        ("updated", "b"),
        ("created", "c"),
    ]
    deleted, updated, created = changes
    assert deleted.before == before["a"] and deleted.after is None
    assert updated.before == before["b"] and updated.after == after["b"]
    assert created.before is None and created.after == after["c"]


def test_order_is_deterministic_whatever_the_input_order() -> None:
    before = {k: session(k) for k in "dcba"}
    after = {k: session(k, state="X") for k in "zyxabcd"}
    changes = diff(before, after)
    assert changes == diff(dict(sorted(before.items())), dict(sorted(after.items())))
    ids = [c.sessionId for c in changes]
    assert ids == sorted(ids)


snapshots = st.dictionaries(
    st.sampled_from("abcdefgh"),
    st.tuples(st.sampled_from(["QUEUED", "PLANNING", "COMPLETED"]), st.sampled_from("xyz")),
).map(lambda d: {k: session(k, state, title) for k, (state, title) in d.items()})


@given(snapshots, snapshots)
def test_applying_the_diff_gives_the_new_snapshot(
    a: dict[str, JulesSession], b: dict[str, JulesSession]
) -> None:
    assert apply(a, diff(a, b)) == b


@given(snapshots, snapshots)
def test_every_id_appears_at_most_once(
    a: dict[str, JulesSession], b: dict[str, JulesSession]
) -> None:
    ids = [c.sessionId for c in diff(a, b)]
    assert len(ids) == len(set(ids))


@given(snapshots, snapshots)
def test_candidates_give_the_same_changes_as_a_full_scan(
    a: dict[str, JulesSession], b: dict[str, JulesSession]
) -> None:
    # Unchanged sessions are the very same objects, as the mapping hands them over.
    shared = {k: (a[k] if k in a and a[k] == v else v) for k, v in b.items()}
    candidates = [k for k, v in shared.items() if v is not a.get(k)]
    assert diff(a, shared, candidates) == diff(a, shared)


def test_a_candidate_that_is_gone_is_a_deletion() -> None:
    """A command's re-read names the session it archived or deleted as the candidate."""
    before = {"a": session("a"), "b": session("b")}
    changes = diff(before, {"b": before["b"]}, ["a"])
    assert [(c.type, c.sessionId) for c in changes] == [("deleted", "a")]
