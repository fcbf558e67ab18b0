"""PERSIST=1 with webhooks, on each backend: a restart or a SIGKILL loses no delivery."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Final

import aiohttp
import msgspec
import pytest

from control_room.jules.simulator import Simulator, SimulatorServer
from tests.conftest import API_KEY, MS, TOKEN, ServiceFactory
from tests.notifier.conftest import SECRET, eventually
from tests.notifier.receiver import Receiver
from tests.store.conftest import Backend

CONTROL_ROOM: Final = str(Path(sys.executable).with_name("control-room"))
STARTUP_TIMEOUT_S: Final = 20.0  # a cold interpreter import on a loaded CI machine


async def test_a_restart_with_pending_deliveries_loses_none(
    backend: Backend, make_service: ServiceFactory, sim: Simulator, receiver: Receiver
) -> None:
    settings = {
        **backend.service_settings(),
        "notify_webhooks": (receiver.url,),
        "notify_webhook_secret": SECRET,
    }
    first = await make_service(**settings)
    assert first.poller is not None and first.notifier is not None
    notifier = first.notifier
    a = sim.create()["id"]
    await first.poller.poll_once()
    await receiver.wait_accepted(1)
    await receiver.stop()
    sim.create()
    sim.set_state(a, "PLANNING")
    await first.poller.poll_once()
    await eventually(lambda: notifier.metrics.webhook_retries._value.get() >= 2)
    assert notifier.pending() == 2
    epoch = first.broker.position.epoch
    await first.stop()

    await receiver.start()
    second = await make_service(**settings)
    assert second.broker.position.epoch == epoch
    await receiver.wait_accepted(3)
    assert receiver.seqs == [1, 2, 3]
    assert [r.msg_id for r in receiver.accepted] == [f"{epoch}-{n}" for n in (1, 2, 3)]
    assert receiver.bad == []


class Serve:
    """`control-room serve` as a child process, polling the simulator every 20 ms."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn and wait until it listens."""
        self.proc = await asyncio.create_subprocess_exec(
            CONTROL_ROOM, "serve", env=self.env, stderr=asyncio.subprocess.PIPE
        )
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._drain = asyncio.create_task(self._read(listening))
        self.port = await asyncio.wait_for(listening, STARTUP_TIMEOUT_S)

    async def _read(self, listening: asyncio.Future[int]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        lines = []
        async for line in self.proc.stderr:  # drained to the end: a full pipe stalls logging
            lines.append(line)
            if not listening.done() and b'"Service listening"' in line:
                listening.set_result(int(msgspec.json.decode(line)["port"]))
        if not listening.done():
            listening.set_exception(RuntimeError(b"".join(lines).decode(errors="replace")))

    async def ready(self, http: aiohttp.ClientSession) -> None:
        """Until the first poll is done."""
        for _ in range(2000):
            async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                if resp.status == 200:
                    return
            await asyncio.sleep(5 * MS)
        pytest.fail("the server never became ready")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(RuntimeError):
                await self._drain


async def test_a_sigkilled_service_delivers_every_pending_delta_after_restart(
    backend: Backend,
    upstream: SimulatorServer,
    sim: Simulator,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    stored = backend.service_settings()
    env = {
        **os.environ,
        "LOCAL_TOKEN": TOKEN,
        "JULES_API_KEY": API_KEY,
        "JULES_API_BASE": upstream.base_url,
        "PORT": "0",
        "POLL_INTERVAL_MS": "20",
        "PERSIST": "1",
        "DATA_DIR": str(stored.get("data_dir", tmp_path / "data")),
        "DATABASE_URL": stored.get("database_url", ""),
        "NOTIFY_WEBHOOK": receiver.url,
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
    }
    receiver.accept(2)
    receiver.fail(10_000, 503)  # after two deliveries the receiver fails everything
    first = Serve(env)
    try:
        await first.start()
        await first.ready(http)
        ids = [sim.create()["id"] for _ in range(2)]
        await receiver.wait_accepted(2)
        for sid in ids:
            sim.set_state(sid, "PLANNING")
        sim.create()
        sim.delete(ids[0])
        # Seqs 3.. are stored; the receiver refused seq 3 at least once: kill mid-retry.
        await receiver.wait_for(lambda: len(receiver.requests) >= 3)
        await asyncio.sleep(100 * MS)  # let the 20 ms polls store every change
    finally:
        await first.kill()
    assert receiver.seqs == [1, 2]

    receiver.heal()
    second = Serve(env)
    try:
        await second.start()
        await second.ready(http)
        async with http.get(
            f"http://127.0.0.1:{second.port}/api/sessions",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            total = (await resp.json())["seq"]  # every delta the first process stored
        assert total >= 4
        await receiver.wait_for(
            lambda: len({r.msg_id for r in receiver.accepted}) >= total, within=10.0
        )
        await asyncio.sleep(100 * MS)  # a few more polls: nothing else may arrive
    finally:
        await second.kill()
    # At-least-once: a delivery whose cursor write the kill cut short may come twice, but
    # always with the same webhook-id and never out of order.
    first_seen = list(dict.fromkeys(r.msg_id for r in receiver.accepted))
    epoch = receiver.accepted[0].msg_id.rsplit("-", 1)[0]
    assert first_seen == [f"{epoch}-{n}" for n in range(1, total + 1)]
    after_restart = [r.seq for r in receiver.accepted[2:]]
    assert after_restart == sorted(after_restart)
    assert receiver.bad == []
