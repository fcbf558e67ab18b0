"""Jules Activities mapped to the control room's shape: every kind, artifacts, odd input."""

from __future__ import annotations

import base64

import msgspec
import pytest

from control_room.jules.activities import (
    BASH_OUTPUT_LIMIT,
    BadActivity,
    decode_activity,
    patches_of,
    summarise_patch,
)

PATCH = """diff --git a/app.py b/app.py
--- a/app.py
+++ b/app.py
@@ -1,3 +1,4 @@
 import os
-import sys
+import sys, re
+import json
 print(os)
diff --git a/README.md b/README.md
new file mode 100644
--- /dev/null
+++ b/README.md
@@ -0,0 +1,2 @@
+# App
+Hello
"""


def raw(**fields: object) -> bytes:
    base = {
        "name": "sessions/42/activities/abc",
        "id": "abc",
        "createTime": "2026-11-30T10:00:00Z",
        "originator": "agent",
    }
    return msgspec.json.encode({**base, **fields})


def test_a_plan_is_mapped_with_its_steps_in_order() -> None:
    activity = decode_activity(
        raw(
            planGenerated={
                "plan": {
                    "id": "p1",
                    "createTime": "2026-11-30T10:00:00Z",
                    "steps": [
                        {"id": "s2", "title": "Test", "index": 1},
                        {"id": "s1", "title": "Write", "description": "the code", "index": 0},
                    ],
                }
            }
        ),
        "42",
    )
    assert (activity.kind, activity.sessionId, activity.id) == ("planGenerated", "42", "abc")
    assert activity.plan is not None
    assert [s.title for s in activity.plan.steps] == ["Write", "Test"]
    assert activity.plan.steps[0].description == "the code"
    assert activity.plan.createdAt == "2026-11-30T10:00:00Z"


@pytest.mark.parametrize(
    ("member", "field", "expected"),
    [
        ({"agentMessaged": {"agentMessage": "Which branch?"}}, "message", "Which branch?"),
        ({"userMessaged": {"userMessage": "main"}}, "message", "main"),
        ({"planApproved": {"planId": "p1"}}, "planId", "p1"),
        ({"sessionFailed": {"reason": "tests fail"}}, "reason", "tests fail"),
        (
            {"progressUpdated": {"title": "Ran tests", "description": "all pass"}},
            "title",
            "Ran tests",
        ),
    ],
)
def test_each_kind_keeps_its_own_fields(
    member: dict[str, object], field: str, expected: str
) -> None:
    activity = decode_activity(raw(**member), "42")
    assert activity.kind == next(iter(member))
    assert getattr(activity, field) == expected


def test_completion_unknown_kinds_and_nulls() -> None:
    assert decode_activity(raw(sessionCompleted={}), "1").kind == "sessionCompleted"
    unknown = decode_activity(raw(repoCloned={"url": "x"}), "1")
    assert unknown.kind == "repoCloned"
    nulls = decode_activity(
        raw(description=None, artifacts=None, agentMessaged=None, progressUpdated={"title": None}),
        "1",
    )
    assert nulls.kind == "progressUpdated"
    assert (nulls.title, nulls.artifacts) == (None, ())


def test_artifacts_are_summarised_not_forwarded() -> None:
    long_output = "x" * (BASH_OUTPUT_LIMIT + 10) + "FAILED"
    data = base64.b64encode(b"\x89PNG" + b"\0" * 96).decode()
    activity = decode_activity(
        raw(
            progressUpdated={"title": "Edited"},
            artifacts=[
                {
                    "changeSet": {
                        "source": "sources/github/acme/api",
                        "gitPatch": {
                            "unidiffPatch": PATCH,
                            "baseCommitId": "c0ffee",
                            "suggestedCommitMessage": "Add README",
                        },
                    }
                },
                {"bashOutput": {"command": "pytest", "output": long_output, "exitCode": 1}},
                {"media": {"data": data, "mimeType": "image/png"}},
            ],
        ),
        "1",
    )
    change, bash, media = activity.artifacts
    assert change.changeSet is not None
    assert [(f.path, f.added, f.removed) for f in change.changeSet.files] == [
        ("app.py", 2, 1),
        ("README.md", 2, 0),
    ]
    assert change.changeSet.commitMessage == "Add README"
    assert bash.bashOutput is not None
    assert bash.bashOutput.truncated
    assert len(bash.bashOutput.output) == BASH_OUTPUT_LIMIT
    assert bash.bashOutput.output.endswith("FAILED")  # the tail, where failures say why
    assert media.media is not None
    assert (media.media.mimeType, media.media.size) == ("image/png", 100)
    assert b"unidiffPatch" not in msgspec.json.encode(activity)
    (patch,) = patches_of(raw(artifacts=[{"changeSet": {"gitPatch": {"unidiffPatch": PATCH}}}]))
    assert patch["unidiffPatch"] == PATCH


def test_a_patch_that_does_not_parse_gives_no_files() -> None:
    assert summarise_patch("this is not a diff\n@@ nonsense") == ()


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", raw(id=None, name=None), raw(createTime=None), b'{"id": 5}'],
)
def test_unusable_activities_raise_bad_activity(body: bytes) -> None:
    with pytest.raises(BadActivity):
        decode_activity(body, "1")
