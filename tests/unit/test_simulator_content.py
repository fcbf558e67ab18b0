"""What simulated sessions are about: well-formed patches and artifacts of the real shapes."""

from __future__ import annotations

import base64
import random
import re

import pytest

from control_room.jules.simulator.content import (
    TASKS,
    bash_output,
    change_set,
    media,
    unified_diff,
)

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def hunks_agree_with_their_lines(patch: str) -> int:
    """Check every hunk's counts against its lines; returns how many files the patch touches."""
    files = 0
    lines = patch.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git a/"):
            files += 1
        match = HUNK.match(line)
        i += 1
        if match is None:
            continue
        old, new = int(match[2] or 1), int(match[4] or 1)
        while i < len(lines) and lines[i][:1] in (" ", "-", "+") and not HUNK.match(lines[i]):
            old -= lines[i][0] in " -"
            new -= lines[i][0] in " +"
            i += 1
        assert (old, new) == (0, 0), patch
    return files


@pytest.mark.parametrize("path", ["src/a.py", "web/App.tsx", "api/x.go", "README.md", "ci.yml"])
@pytest.mark.parametrize("new_file", [False, True])
def test_unified_diffs_are_well_formed(path: str, new_file: bool) -> None:
    patch = unified_diff(random.Random(1), path, new_file=new_file)
    assert patch.startswith(f"diff --git a/{path} b/{path}\n")
    assert (f"--- /dev/null\n+++ b/{path}" in patch) == new_file
    assert hunks_agree_with_their_lines(patch) == 1


def test_change_sets_touch_the_tasks_files_and_name_their_source() -> None:
    rng = random.Random(2)
    for task in TASKS:
        change = change_set(rng, task, "sources/github/o/r")
        assert change["source"] == "sources/github/o/r"
        patch = change["gitPatch"]["unidiffPatch"]
        touched = set(re.findall(r"^diff --git a/(\S+) ", patch, re.MULTILINE))
        assert touched and touched <= set(task.files)
        assert hunks_agree_with_their_lines(patch) == len(touched)
        assert change["gitPatch"]["suggestedCommitMessage"].startswith(task.title)
    assert "source" not in change_set(rng, TASKS[0], None)


def test_bash_output_and_media_have_the_real_fields() -> None:
    rng = random.Random(3)
    outputs = [bash_output(rng, TASKS[0]) for _ in range(40)]
    assert {o["exitCode"] for o in outputs} == {0, 1}
    assert all(o["command"] == TASKS[0].command and o["output"] for o in outputs)
    image = media()
    assert image["mimeType"] == "image/png"
    assert base64.b64decode(image["data"]).startswith(b"\x89PNG\r\n\x1a\n")
