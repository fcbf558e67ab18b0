"""Redis for tests: the server on 127.0.0.1:6379 when it answers, else a private one.

A private `redis-server` runs from a temporary directory on a free port. Under CI a Redis that
can be neither found nor started is a failure, not a skip. Each test works under a key prefix
of its own (see `prefix`), so tests sharing a server never see each other's keys.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import pytest
import redis

from control_room.broker.redis import drop_cluster

SHARED_PORT: Final = int(os.environ.get("TEST_REDIS_PORT", "6379"))
"""Where the machine's Redis is looked for (set another port to try the private fallback)."""
START_TIMEOUT_S: Final = 10.0


def in_ci() -> bool:
    """True when the CI variable is set (CI=true, CI=1, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def answers(port: int) -> bool:
    """True when a Redis answers PING on 127.0.0.1:port."""
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


class PrivateRedis:
    """A redis-server of our own; `kill` and `start` again to test outages.

    `durable`: an append-only file synced on every write, so a `kill -9` loses nothing and a
    restart comes back with the data; otherwise it comes back empty.
    """

    def __init__(self, directory: Path, *, durable: bool = False, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again) and wait until it answers."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


@contextlib.contextmanager
def private_redis(*, durable: bool = False) -> Iterator[PrivateRedis]:
    """A private redis-server in a temporary directory, killed afterwards."""
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="cr-redis-") as directory:
        server = PrivateRedis(Path(directory), durable=durable)
        server.start()
        try:
            yield server
        finally:
            server.kill()


@contextlib.contextmanager
def shared_redis_url() -> Iterator[str]:
    """The machine's Redis if it runs, else one private server for the whole session."""
    if answers(SHARED_PORT):
        yield f"redis://127.0.0.1:{SHARED_PORT}/0"
        return
    with private_redis() as server:
        yield server.url


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"cr-test-{os.getpid()}-{secrets.token_hex(4)}"


async def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key under a test's prefix."""
    with contextlib.suppress(redis.RedisError, OSError):  # a killed private server: nothing
        await drop_cluster(url, prefix)


@contextlib.asynccontextmanager
async def prefixed(url: str) -> AsyncIterator[str]:
    """A fresh prefix, its keys dropped afterwards."""
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        await drop_prefix(url, prefix)
