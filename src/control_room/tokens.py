"""The client tokens in force, full and read-only, kept current as their files change.

`LOCAL_TOKEN` (a comma-separated list) or `LOCAL_TOKEN_FILE` (one token per line) give
the full-access tokens; `LOCAL_READONLY_TOKEN` / `LOCAL_READONLY_TOKEN_FILE` the
read-only ones. Files are re-read on change and on SIGHUP through `secret.SecretSource`;
after each change the listeners get the new `TokenSet` and the principals that lost
their access, so live connections of a revoked token can be closed at once. Logs name
tokens by fingerprint only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from control_room import logging as logs
from control_room.auth import MIN_TOKEN_LENGTH, Principal, TokenSet, parse_tokens
from control_room.config import Settings
from control_room.secret import Reloadable, SecretError, SecretSource, fingerprint

FULL: Final = "LOCAL_TOKEN"
READ_ONLY: Final = "LOCAL_READONLY_TOKEN"

log = logs.get("auth")

Listener = Callable[[TokenSet, frozenset[Principal]], None]
"""Called with the new token set and the principals no longer in it."""


def token_parser(variable: str, *, lines: bool) -> Callable[[str], list[str]]:
    """`auth.parse_tokens` for a SecretSource: its ValueError becomes a SecretError."""

    def parse(text: str) -> list[str]:
        try:
            return parse_tokens(text, lines=lines)
        except ValueError as exc:
            raise SecretError(variable, str(exc)) from None

    return parse


def token_source(variable: str, value: str, path: Path | None) -> SecretSource[list[str]] | None:
    """The source of one kind of token: the `<variable>_FILE` file if set, else the value.

    None when neither is set. Raises SecretError when the first read fails.
    """
    if path is not None:
        file_variable = f"{variable}_FILE"
        return SecretSource(file_variable, token_parser(file_variable, lines=True), path=path)
    if value.strip():
        return SecretSource(variable, token_parser(variable, lines=False), value=value)
    return None


class Tokens:
    """The `TokenSet` in force (`current`), rebuilt whenever a token source changes."""

    def __init__(
        self,
        full: SecretSource[list[str]] | None,
        read_only: SecretSource[list[str]] | None = None,
    ) -> None:
        self._full = full
        self._read_only = read_only
        self._listeners: list[Listener] = []
        self.current = self._build()
        self._warn_weak()
        for source in self.sources:
            source.add_listener(self._changed)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        """The tokens the settings name. Raises SecretError when a token file is unusable."""
        return cls(
            token_source(FULL, settings.local_token, settings.local_token_file),
            token_source(
                READ_ONLY, settings.local_readonly_token, settings.local_readonly_token_file
            ),
        )

    @property
    def sources(self) -> list[SecretSource[list[str]]]:
        """The sources behind the set (for the file watcher and SIGHUP)."""
        return [s for s in (self._full, self._read_only) if s is not None]

    @property
    def reloadables(self) -> list[Reloadable]:
        """The same sources, typed for `secret.watch` and `secret.reload_all`."""
        return list(self.sources)

    def values(self) -> list[str]:
        """Every token in force, for the log's redaction list (never to be logged)."""
        return [token for source in self.sources for token in source.current]

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(new_set, revoked_principals)` after every change."""
        self._listeners.append(listener)

    def _build(self) -> TokenSet:
        full = self._full.current if self._full is not None else []
        read_only = self._read_only.current if self._read_only is not None else []
        return TokenSet(full, read_only)

    def _changed(self, _: list[str]) -> None:
        previous, self.current = self.current, self._build()
        revoked = previous.principals - self.current.principals
        added = self.current.principals - previous.principals
        log.info(
            "Tokens changed",
            extra={
                "tokens": len(self.current),
                "added": sorted(p.fingerprint for p in added),
                "revoked": sorted(p.fingerprint for p in revoked),
            },
        )
        self._warn_weak()
        for listener in self._listeners:
            listener(self.current, frozenset(revoked))

    def _warn_weak(self) -> None:
        for source in self.sources:
            for token in source.current:
                if len(token) < MIN_TOKEN_LENGTH:
                    log.warning(
                        "Token shorter than recommended",
                        extra={
                            "variable": source.variable,
                            "fingerprint": fingerprint(token),
                            "recommended": MIN_TOKEN_LENGTH,
                        },
                    )
