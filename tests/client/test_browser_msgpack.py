"""The documented browser MessagePack decoder, run as written under Node against a real server.

The example is taken from docs/how-to/connect-a-client.md itself, so the page and what is
tested cannot drift apart. Node's global WebSocket is the WHATWG API browsers implement
(and, like them, it offers permessage-deflate).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.client.conftest import WAIT
from tests.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "how-to" / "connect-a-client.md"
NODE_DIR = ROOT / "tests" / "node"
JS_BLOCK = re.compile(r"^```js\n(?P<code>.*?)^```", re.M | re.S)
BIG_TITLE = "Make every page of the dashboard load in under a second " * 20  # compressed


def documented_example() -> str:
    """The page's JavaScript block that decodes MessagePack."""
    blocks = [m["code"] for m in JS_BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]
    (example,) = [b for b in blocks if "@msgpack/msgpack" in b]
    return example


@pytest.mark.skipif(
    (shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@msgpack").is_dir())
    and not os.environ.get("CI"),
    reason="Node.js or tests/node/node_modules missing (make setup installs them)",
)
async def test_the_documented_decoder_reads_msgpack_frames_and_sends_a_msgpack_command(
    service: Service, sim: Simulator, tmp_path: Path
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    sim.create(state="IN_PROGRESS")
    await service.poller.poll_once()
    # As a page would hold it: `token` known, the module resolved from node_modules.
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules", target_is_directory=True)
    script = tmp_path / "example.mjs"
    code = documented_example().replace("127.0.0.1:3001", f"127.0.0.1:{service.port}")
    script.write_text("const token = process.argv[2];\n" + code)
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        str(script),
        TOKEN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None

    async def line() -> str:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        if not raw:
            assert proc.stderr is not None
            pytest.fail(f"node stopped: {(await proc.stderr.read()).decode()}")
        return raw.decode().strip()

    try:
        first = await line()
        if "WebSocket is not defined" in first:
            pytest.skip("this Node.js has no WebSocket client")
        assert first == "snapshot: 2 sessions at seq 2"
        assert await line() == "result 1: true, 1 waiting"  # the msgpack command's answer
        entering = sim.create(state="AWAITING_PLAN_APPROVAL", title=BIG_TITLE)
        sim.set_state(waiting["id"], "IN_PROGRESS")  # leaves the view
        await service.poller.poll_once()
        seen = sorted([(await line()).rsplit(" ", 1) for _ in range(2)])
        assert seen == [
            [f"created {entering['id']} seq", "3" if entering["id"] < waiting["id"] else "4"],
            [f"deleted {waiting['id']} seq", "4" if entering["id"] < waiting["id"] else "3"],
        ]
    finally:
        proc.kill()
        await proc.wait()
