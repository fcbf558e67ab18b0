"""`control-room demo`: a calm console (one line per poll with changes) and how to connect."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from control_room.app import Service
from control_room.cli import DemoConsole
from control_room.jules.simulator import Simulator
from tests.conftest import MS

WAIT = 10_000 * MS  # a fresh interpreter importing aiohttp takes a moment on a busy machine
TOKEN = "demo-test-token"
SUMMARY = re.compile(
    r"^\d\d:\d\d:\d\d  (?P<total>\d+) changes?: (?P<parts>[a-z0-9 ,]+)"
    r"  \((?P<sessions>\d+) sessions?, (?P<clients>\d+) clients?\)$"
)


class Demo:
    """A `control-room demo` process whose stdin is a terminal (a pty) and stdout a pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, terminal: int) -> None:
        self.proc = proc
        self.terminal = terminal
        self.stdout: list[str] = []

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        assert raw, f"stdout closed after {self.stdout}"
        text = raw.decode().rstrip("\n")
        self.stdout.append(text)
        return text

    async def until(self, pattern: str) -> re.Match[str]:
        """Read stdout lines until one matches `pattern`."""
        while True:
            found = re.search(pattern, await self.line())
            if found:
                return found

    def press_enter(self) -> None:
        os.write(self.terminal, b"\n")


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    terminal, stdin = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "LOG_FORMAT")}
    env.update(PORT="0", LOCAL_TOKEN=TOKEN, POLL_INTERVAL_MS="100")
    script = Path(sys.executable).with_name("control-room")
    proc = await asyncio.create_subprocess_exec(
        str(script), "demo", "--seed", "1", "--tick", "0.1",
        stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(stdin)
    try:
        yield Demo(proc, terminal)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), WAIT)
        os.close(terminal)


async def test_demo_prints_one_summary_per_poll_and_reprints_the_url_on_enter(
    demo: Demo,
) -> None:
    url = (await demo.until(r"^  Dashboard : (http://127\.0\.0\.1:\d+)/#token=" + TOKEN)).group(1)
    await demo.until(r"^  Press Enter to show this again; stop with Ctrl-C\.$")

    summaries: list[re.Match[str]] = []
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url + "/", protocols=("control-room.v1", f"bearer.{TOKEN}"))
        while not summaries or summaries[-1]["clients"] != "1":  # our client is counted
            summaries.append(await demo.until(SUMMARY.pattern))
        demo.press_enter()
        await demo.until(r"^  Dashboard : " + re.escape(f"{url}/#token={TOKEN}") + "$")
        await ws.close()

    for summary in summaries:
        parts = dict(reversed(part.split(" ")) for part in summary["parts"].split(", "))
        assert set(parts) <= {"created", "updated", "deleted"}, summary[0]
        assert sum(int(n) for n in parts.values()) == int(summary["total"]), summary[0]
    demo.proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(demo.proc.communicate(), WAIT)
    assert demo.proc.returncode == 0
    # The per-delta and per-client log lines of `serve` are not in the demo's console.
    everything = "\n".join(demo.stdout) + out.decode() + err.decode()
    assert "Broadcasting session delta" not in everything
    assert "WebSocket client connected" not in everything
    assert "Service listening" in err.decode()  # the rest of the logs are still there


async def test_the_url_comes_back_after_a_minute_of_summaries(
    service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    now = [0.0]
    out = io.StringIO()
    console = DemoConsole(service, "BANNER", "REMINDER", out=out, clock=lambda: now[0])
    console.show()
    service.broker.add_sink(console)

    sim.create(repo="acme/api", title="One")
    await service.poller.poll_once()
    now[0] = 59.0
    sim.create(repo="acme/api", title="Two")
    await service.poller.poll_once()
    now[0] = 60.0
    await service.poller.poll_once()  # nothing changed: nothing printed, not even a reminder
    sim.create(repo="acme/api", title="Three")
    await service.poller.poll_once()
    sim.create(repo="acme/api", title="Four")
    await service.poller.poll_once()  # reminded a moment ago: not again

    lines = out.getvalue().splitlines()
    assert lines[0] == "BANNER"
    assert [line.split("  ", 1)[1] if SUMMARY.match(line) else line for line in lines[1:]] == [
        "1 change: 1 created  (1 session, 0 clients)",
        "1 change: 1 created  (2 sessions, 0 clients)",
        "1 change: 1 created  (3 sessions, 0 clients)",
        "REMINDER",
        "1 change: 1 created  (4 sessions, 0 clients)",
    ]
