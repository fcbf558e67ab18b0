"""JSON Patch from one document to another, judged by an independent implementation."""

from __future__ import annotations

from typing import Any

import jsonpatch
from hypothesis import given
from hypothesis import strategies as st

from control_room.patch import diff, pointer

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4), st.floats(0, 1)
)
keys = st.sampled_from(["a", "b", "c/d", "e~f", ""])
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
objects = st.dictionaries(keys, documents, max_size=5)


@given(objects, objects)
def test_applying_the_patch_gives_exactly_after(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    patched = jsonpatch.apply_patch(before, diff(before, after))
    assert patched == after
    assert jsonpatch.JsonPatch(diff(after, after)).patch == []  # no change, no operation


def test_pointers_escape_tilde_and_slash() -> None:
    assert pointer("", "a/b~c") == "/a~1b~0c"
    assert pointer("/x", "") == "/x/"


def test_nested_objects_are_walked_and_lists_replaced_whole() -> None:
    before = {"approval": {"state": "pending"}, "participants": ["a"], "n": 1}
    after = {"approval": {"state": "approved", "approvedAt": "t"}, "participants": ["a", "b"]}
    assert diff(before, after) == [
        {"op": "remove", "path": "/n"},
        {"op": "replace", "path": "/approval/state", "value": "approved"},
        {"op": "add", "path": "/approval/approvedAt", "value": "t"},
        {"op": "replace", "path": "/participants", "value": ["a", "b"]},
    ]


def test_true_and_one_are_different_json() -> None:
    assert diff({"x": 1}, {"x": True}) == [{"op": "replace", "path": "/x", "value": True}]
