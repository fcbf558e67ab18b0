"""Secrets from the environment or a watched file: reload on change, keep the last good value."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from control_room.secret import (
    SecretError,
    SecretSource,
    fingerprint,
    parse_single,
    reload_all,
    watch,
)


def _bump(path: Path, text: str) -> None:
    """Rewrite a file so its stat changes even within one mtime tick."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_a_value_from_the_environment_never_changes() -> None:
    source = SecretSource("JULES_API_KEY", parse_single("JULES_API_KEY"), value=" k1 ")
    assert source.current == "k1"
    assert not source.reloadable
    assert source.reload(force=True) is False


def test_a_file_is_read_and_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("first\n")
    source = SecretSource("JULES_API_KEY_FILE", parse_single("JULES_API_KEY_FILE"), path=path)
    seen: list[str] = []
    source.add_listener(seen.append)
    assert source.current == "first"
    assert source.reload() is False  # unchanged file: not even read again
    _bump(path, "second\n")
    assert source.reload() is True
    assert (source.current, seen) == ("second", ["second"])


def test_an_unusable_file_keeps_the_last_good_value_with_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "key"
    path.write_text("good")
    source = SecretSource("JULES_API_KEY_FILE", parse_single("JULES_API_KEY_FILE"), path=path)
    _bump(path, "   \n")
    with caplog.at_level(logging.ERROR, logger="control_room.secret"):
        assert source.reload() is False
        path.unlink()
        assert source.reload() is False
    assert source.current == "good"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # one line per streak, not per check
    assert "good" not in caplog.text
    path.write_text("better")
    assert source.reload() is True
    assert source.current == "better"


def test_a_missing_or_empty_file_at_start_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="JULES_API_KEY_FILE: cannot read"):
        SecretSource("JULES_API_KEY_FILE", str, path=tmp_path / "absent")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="JULES_API_KEY_FILE: is empty"):
        SecretSource(
            "JULES_API_KEY_FILE", parse_single("JULES_API_KEY_FILE"), path=tmp_path / "empty"
        )


def test_fingerprint_is_short_stable_and_not_the_secret() -> None:
    assert fingerprint("s3cret") == fingerprint("s3cret")
    assert len(fingerprint("s3cret")) == 8
    assert "s3cret" not in fingerprint("s3cret")
    assert fingerprint("a") != fingerprint("b")


def test_reload_all_counts_changes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1")
    b.write_text("1")
    sources = [SecretSource("A", str.strip, path=a), SecretSource("B", str.strip, path=b)]
    _bump(a, "2")
    assert reload_all(sources) == 1


async def test_the_watcher_picks_up_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("old")
    source = SecretSource("K", str.strip, path=path)
    task = asyncio.create_task(watch([source], interval=0.01))
    try:
        _bump(path, "new")
        for _ in range(200):
            if source.current == "new":
                break
            await asyncio.sleep(0.01)
        assert source.current == "new"
    finally:
        task.cancel()
