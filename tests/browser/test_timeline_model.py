"""The dashboard's timeline model and control-room formatting, under Node.

`timeline.js` and `format.js` are pure (no DOM; the timeline's REST reads go through the
`api` object it is given), so they run under Node (V8, Chromium's engine) in a fraction of
the time a browser takes to start. The `api` here is a recording stand-in whose reads the
script answers by hand, to put a live activity or a reset exactly between a read's start
and its answer; the browser tests run the same code against the real service.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).parents[2] / "src" / "control_room" / "static"
SCRIPT = """
const { Timelines, latestPlan, lastAgentMessage } = await import(%(timeline)s);
const { duration, stallText, commandError } = await import(%(format)s);
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
const reads = [];
const api = { activities: (id) => new Promise((resolve) => reads.push({ id, resolve })) };
const page = (activities) => ({
  ok: true,
  body: { activities, activitiesSeq: 1, truncated: false },
});
const at = (s) => `2026-01-01T10:00:${s}Z`;
const out = {};

const t = new Timelines(api);
// Live before the read, the read itself, live during it, and a duplicate of each.
const asked = { id: 'b', kind: 'agentMessaged', message: 'Which one?', createdAt: at('02') };
t.add({ ...asked, sessionId: 's' });
t.watch('s');
t.add({ id: 'c', sessionId: 's', kind: 'progressUpdated', createdAt: at('00.5') });
reads[0].resolve(page([
  { id: 'a', kind: 'planGenerated', plan: { id: 'p', steps: [] }, createdAt: at('01') },
  asked,
]));
await settle();
t.add({ id: 'a', sessionId: 's', kind: 'planGenerated', createdAt: at('01') });
out.order = t.get('s').list.map((a) => a.id);
out.complete = t.get('s').complete;
out.plan = latestPlan(t.get('s').list)?.id;
out.question = lastAgentMessage(t.get('s').list)?.message;

// Activities lost (a reset) while a reread runs: that read is not whole, so it is read again.
t.invalidate();
out.rereadStarted = reads.length === 2 && reads[1].id === 's';
t.invalidate();
reads[1].resolve(page([]));
await settle();
out.readsAfterLoss = reads.length;
out.completeBeforeLastRead = t.get('s').complete;
reads[2].resolve(page([]));
await settle();
out.completeAfterLastRead = t.get('s').complete;

// At most three reads at once; the others wait their turn. A failure is kept, and a new
// watcher tries again.
for (const id of ['u', 'v', 'w', 'x', 'y']) t.watch(id);
out.inFlight = reads.length - 3;
reads[3].resolve({ ok: false, status: 502, code: 'upstream_unavailable', message: 'no' });
await settle();
out.afterOne = reads.length - 3;
out.error = t.get('u').error.code;
t.watch('u');
out.retryWaits = t.get('u').loading && t.get('u').error === null;
for (const read of reads.slice(4, 7)) read.resolve(page([]));
await settle();
out.startedLater = reads.slice(7).map((read) => read.id);

// Read whole but without the plan its state implies (Jules' transient 404 right after a
// session began reads as "none yet"): read again, later, a few times at most.
const realTimeout = globalThis.setTimeout;
const delays = [];
globalThis.setTimeout = (run, ms) => {
  delays.push(ms);
  realTimeout(run, 0);
  return delays.length;
};
t.watch('new');
reads.at(-1).resolve(page([]));
await settle();
for (let round = 0; round < 5; round += 1) {
  t.expect('new', 'planGenerated');
  await settle();
  if (t.get('new').loading) reads.at(-1).resolve(page([]));
  await settle();
}
out.rereadDelays = delays.filter((ms) => ms > 0);
t.expect('found', 'planGenerated'); // a timeline never read is not reread by `expect`
globalThis.setTimeout = realTimeout;
t.watch('plan');
reads.at(-1).resolve(page([{ id: 'p', kind: 'planGenerated', createdAt: at('03') }]));
await settle();
const before = reads.length;
t.expect('plan', 'planGenerated');
out.rereadWhenFound = reads.length - before;

out.duration = [45_000, 23 * 60_000, 65 * 60_000, 49 * 3600_000].map(duration);
out.stall = stallText('2026-01-01T10:00:00Z', Date.UTC(2026, 0, 1, 10, 23, 30));
out.refused = commandError({ code: 'failed_precondition', message: 'Session is IN_PROGRESS' });
out.lost = commandError({ code: 'connection_lost' });
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js missing (make setup needs it)")
async def test_timelines_merge_reads_and_live_activities_and_reread_after_a_loss() -> None:
    script = SCRIPT % {
        "timeline": json.dumps((STATIC / "timeline.js").as_uri()),
        "format": json.dumps((STATIC / "format.js").as_uri()),
    }
    node = await asyncio.create_subprocess_exec(
        "node", "--input-type=module", "-e", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await node.communicate()
    assert node.returncode == 0
    found: dict[str, Any] = json.loads(out)
    assert found["order"] == ["c", "a", "b"]  # by time, each once
    assert found["complete"] is True
    assert found["plan"] == "a"
    assert found["question"] == "Which one?"
    assert found["rereadStarted"] is True
    assert found["readsAfterLoss"] == 3
    assert found["completeBeforeLastRead"] is False
    assert found["completeAfterLastRead"] is True
    assert found["inFlight"] == 3
    assert found["afterOne"] == 4
    assert found["error"] == "upstream_unavailable"
    assert found["retryWaits"] is True
    assert found["startedLater"] == ["y", "u"]  # in turn
    assert found["rereadDelays"] == [1000, 2000, 4000]
    assert found["rereadWhenFound"] == 0
    assert found["duration"] == ["45 s", "23 min", "1 h 5 min", "2 d"]
    assert found["stall"] == "no activity for 23 min"
    assert found["refused"] == (
        "Jules refused: the session is not in a state that allows this any more."
        " (Session is IN_PROGRESS)"
    )
    assert found["lost"].startswith("The connection dropped before Jules answered")
