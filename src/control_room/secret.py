"""Secrets that may change while the service runs: a value from the environment or a file.

The Jules API key (`JULES_API_KEY` / `JULES_API_KEY_FILE`) and the client tokens
(`LOCAL_TOKEN` / `LOCAL_TOKEN_FILE`) share this one mechanism. A secret given directly in
the environment never changes; a secret given as a file is re-read when the file changes
(its stat is checked every `SECRET_POLL_S`) and on SIGHUP (`Service.reload_secrets`). A
file that becomes unreadable or invalid keeps the last good value, with one error line per
streak of failures. No log line or error message ever carries the secret itself: only its
`fingerprint`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

from control_room import logging as logs

SECRET_POLL_S: Final = 1.0
"""How often a secret file's stat is checked: a rotated key or a revoked token takes effect
within a second, and one `stat` per second per file costs nothing."""
MAX_SECRET_FILE_BYTES: Final = 64 * 1024
"""A token or key file is a few lines; anything larger is a wrong path, not a secret."""

log = logs.get("secret")
T = TypeVar("T")


class SecretError(ValueError):
    """A secret is missing or invalid; the message names the variable, never the value."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def fingerprint(secret: str) -> str:
    """A short, stable name for a secret that is safe to log: 8 hex digits of its SHA-256."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def parse_single(variable: str) -> Callable[[str], str]:
    """A parser for a one-value secret file: surrounding whitespace dropped, empty refused."""

    def parse(text: str) -> str:
        value = text.strip()
        if not value:
            raise SecretError(variable, "is empty")
        if any(c.isspace() for c in value):
            raise SecretError(variable, "holds whitespace inside the secret (one value expected)")
        return value

    return parse


class SecretSource(Generic[T]):
    """One secret, parsed: fixed (from the environment) or read from a file and watched.

    `current` is always a valid value: the constructor raises SecretError when the first
    read fails, and later failed reads keep the previous value. Listeners are called with
    the new value after each change, synchronously (they must not block).
    """

    def __init__(
        self,
        variable: str,
        parse: Callable[[str], T],
        *,
        value: str | None = None,
        path: Path | None = None,
    ) -> None:
        if (value is None) == (path is None):
            raise ValueError("give exactly one of value and path")
        self.variable = variable
        self.path = path
        self._parse = parse
        self._listeners: list[Callable[[T], None]] = []
        self._stamp: tuple[int, int, int] | None = None
        self._failing = False
        if value is not None:
            self._value = parse(value)
        else:
            self._value = self._read()

    @property
    def current(self) -> T:
        """The value in force now."""
        return self._value

    @property
    def reloadable(self) -> bool:
        """True when the secret comes from a file (and can change)."""
        return self.path is not None

    def add_listener(self, listener: Callable[[T], None]) -> None:
        """Call `listener(new_value)` after every change."""
        self._listeners.append(listener)

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed (always, with `force`); True when the value changed.

        Never raises: a failed read is logged once per streak and the old value stays.
        """
        if self.path is None:
            return False
        try:
            stamp = self._stat()
            if stamp == self._stamp and not force:
                return False
            value = self._read()
        except SecretError as exc:
            if not self._failing:
                log.error(
                    "Secret file unusable; keeping the previous value",
                    extra={"variable": self.variable, "path": str(self.path), "error": str(exc)},
                )
            self._failing = True
            return False
        if self._failing:
            log.info("Secret file readable again", extra={"variable": self.variable})
        self._failing = False
        if value == self._value:
            return False
        self._value = value
        log.info("Secret reloaded", extra={"variable": self.variable, "path": str(self.path)})
        for listener in self._listeners:
            listener(value)
        return True

    def _stat(self) -> tuple[int, int, int]:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SecretError(self.variable, f"cannot read {self.path}: {exc.strerror}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> T:
        assert self.path is not None
        stamp = self._stat()
        if stamp[1] > MAX_SECRET_FILE_BYTES:
            raise SecretError(
                self.variable, f"{self.path} is {stamp[1]} bytes; a secret file is a few lines"
            )
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(self.variable, f"cannot read {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(self.variable, f"{self.path} is not UTF-8 text") from None
        value = self._parse(text)
        self._stamp = stamp
        return value


class Reloadable(Protocol):
    """What the watcher and SIGHUP need of a secret source, whatever its value type."""

    @property
    def reloadable(self) -> bool:
        """True when the secret can change."""

    def reload(self, *, force: bool = False) -> bool:
        """Re-read if changed; True when the value changed."""


def reload_all(sources: Iterable[Reloadable], *, force: bool = False) -> int:
    """Reload every file-backed source; how many changed."""
    return sum(1 for source in sources if source.reload(force=force))


async def watch(sources: Iterable[Reloadable], interval: float = SECRET_POLL_S) -> None:
    """Reload changed secret files every `interval` seconds, forever."""
    watched = [s for s in sources if s.reloadable]
    if not watched:
        return
    while True:
        await asyncio.sleep(interval)
        reload_all(watched)
