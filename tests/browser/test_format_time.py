"""The dashboard's timestamp parsing: every RFC 3339 form (issue 9.8).

`format.js` is pure (no DOM), so it runs under Node (V8, Chromium's engine) in a fraction
of the time a browser takes to start; the dashboard tests cover it in Chromium in use.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

FORMAT_JS = Path(__file__).parents[2] / "src" / "control_room" / "static" / "format.js"
TEN = 1_767_261_660_000  # 2026-01-01T10:01:00Z in milliseconds
STAMPS = [
    "2026-01-01T10:01:00Z",
    "2026-01-01t10:01:00z",
    "2026-01-01T11:31:00+01:30",
    "2026-01-01T05:01:00.000000000-05:00",
    "2026-01-01T10:01:00.123456789Z",
    "2026-01-01T10:00:60Z",
    "2026-01-01T10:01:00",
    "2026-13-01T10:01:00Z",
    "soon",
    "",
]
SCRIPT = f"""
const {{ parseTime }} = await import({json.dumps(FORMAT_JS.as_uri())});
const stamps = {json.dumps(STAMPS)};
console.log(JSON.stringify(stamps.map((s) => (Number.isNaN(parseTime(s)) ? null : parseTime(s)))));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js missing (make setup needs it)")
async def test_every_rfc3339_form_reads_as_its_instant() -> None:
    node = await asyncio.create_subprocess_exec(
        "node", "--input-type=module", "-e", SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await node.communicate()
    assert node.returncode == 0
    assert json.loads(out) == [TEN, TEN, TEN, TEN, TEN + 123, TEN, TEN, None, None, None]
