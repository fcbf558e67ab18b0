"""Real `control-room` processes for the terminal tests, read line by line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import MS

WAIT = 10_000 * MS  # a fresh interpreter importing aiohttp takes a moment on a busy machine


def command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("control-room")
    return [str(script)] if script.exists() else [sys.executable, "-m", "control_room.cli"]


# What would point the commands at a service other than the test's, or change their output.
AMBIENT: tuple[str, ...] = ("LOCAL_TOKEN", "LOCAL_TOKEN_FILE", "PORT", "HOST", "NO_COLOR")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    env.update(extra)
    return env


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Proc:
    """A `control-room` process with its stdout and stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    @classmethod
    async def start(
        cls,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bytes = b"",
    ) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *command(),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env if env is not None else clean_env(),
            cwd=cwd,
        )
        if stdin:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            await proc.stdin.drain()
            proc.stdin.close()
        return cls(proc)

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        assert raw, f"stdout closed; stderr: {self.stderr}"
        return raw.decode().rstrip("\n")

    async def err_until(self, text: str) -> str:
        """Read stderr lines until one contains `text`."""
        assert self.proc.stderr is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stderr.readline(), WAIT)
            assert raw, f"stderr closed before {text!r}; got {self.stderr}"
            line = raw.decode().rstrip("\n")
            self.stderr.append(line)
            if text in line:
                return line

    async def finish(self) -> tuple[int, str, str]:
        """Wait for the exit: (code, the rest of stdout, the rest of stderr)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), WAIT)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        code, _, _ = await self.finish()
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    """Processes started by a test; any still running at the end are killed."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()
        await p.proc.wait()
