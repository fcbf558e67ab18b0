"""A real `control-room serve` in a subprocess, its stderr collected, and raw-socket helpers."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tests.conftest import MS

_sources = itertools.count(2)


def fresh_source() -> str:
    """A loopback address no other test uses, so per-address throttling stays per test.

    Linux routes all of 127.0.0.0/8 to the loopback interface: a client can bind any of it.
    """
    n = next(_sources)
    return f"127.0.{n // 250}.{n % 250 + 2}"


class Serve:
    """`control-room serve` on an ephemeral port; `stderr` is everything it wrote so far."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        argv: tuple[str, ...] = ("-m", "control_room.cli", "serve"),
        preexec: Callable[[], None] | None = None,
    ) -> None:
        full = {**os.environ, "PORT": "0", "LOG_LEVEL": "info", **env}
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
        )
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.port = 0

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            with self._lock:
                self._chunks.append(chunk)

    @property
    def stderr(self) -> str:
        """All of stderr so far, decoded (invalid bytes escaped)."""
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "backslashreplace")

    def lines(self) -> list[dict[str, Any]]:
        """Stderr as JSON objects; fails if any line is not one."""
        out = []
        for line in self.stderr.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
        return out

    def wait_for(self, pattern: str, count: int = 1, within: float = 10_000 * MS) -> None:
        """Wait until `pattern` (a regex) matches stderr `count` times."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.stderr)) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError(f"{pattern!r} x{count} never logged; stderr:\n{self.stderr[-3000:]}")

    def start(self) -> Serve:
        """Wait for "Service listening" and read the port from it."""
        self.wait_for('"msg":"Service listening"')
        line = next(x for x in self.lines() if x["msg"] == "Service listening")
        self.port = int(line["port"])
        return self

    def stop(self) -> int:
        """SIGTERM, wait, return the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def raw_request(
    port: int,
    data: bytes,
    *,
    source: str | None = None,
    wait: float = 2000 * MS,
    half_close: bool = False,
) -> bytes:
    """Send raw bytes, read until the server closes (or `wait` passes): the raw answer."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=wait, source_address=(source or fresh_source(), 0)
    ) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    """True once a whole response (head and a Content-Length body) is in `data`."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.startswith(b"HTTP/1.1 101"):
        return True
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 when there is none)."""
    match = re.match(rb"HTTP/\d\.\d (\d{3})", response)
    return int(match.group(1)) if match else 0


def body_of(response: bytes) -> Any:
    """The JSON body of a raw HTTP response."""
    return json.loads(response.partition(b"\r\n\r\n")[2])


def header_of(response: bytes, name: str) -> str | None:
    """One header of a raw HTTP response, or None."""
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


UPGRADE = (
    b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def upgrade(*headers: bytes, query: bytes = b"") -> bytes:
    """A WebSocket upgrade request with extra header lines."""
    return UPGRADE % query + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
