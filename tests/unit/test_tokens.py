"""The tokens in force, rebuilt from watched files; revocations reported by principal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from control_room.auth import Principal, TokenSet
from control_room.secret import SecretError, fingerprint
from control_room.tokens import Tokens, token_source
from tests.unit.test_secret import _bump as write

A = "token-a-0123456789abcdef"
B = "token-b-0123456789abcdef"


def test_a_reload_reports_the_new_set_and_the_revoked_principals(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path, f"{A}\n{B}\n")
    tokens = Tokens(token_source("LOCAL_TOKEN", "", path))
    seen: list[tuple[TokenSet, frozenset[Principal]]] = []
    tokens.add_listener(lambda new, revoked: seen.append((new, revoked)))
    a = tokens.current.authenticate(A)
    assert a is not None
    write(path, f"{B}\n")
    assert tokens.sources[0].reload()
    ((new, revoked),) = seen
    assert new is tokens.current
    assert [p.fingerprint for p in revoked] == [fingerprint(A)]
    assert a not in new and new.authenticate(B) is not None
    assert sorted(tokens.values()) == [B]


def test_the_environment_form_never_changes_and_a_missing_kind_is_empty() -> None:
    tokens = Tokens(token_source("LOCAL_TOKEN", f"{A},{B}", None), token_source("X", "", None))
    assert len(tokens.current) == 2
    assert [s.reloadable for s in tokens.sources] == [False]


def test_a_bad_file_at_start_up_names_the_file_variable(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("bad/token\n")
    with pytest.raises(SecretError) as err:
        token_source("LOCAL_TOKEN", "", path)
    assert err.value.variable == "LOCAL_TOKEN_FILE"
    assert "bad/token" not in str(err.value)


def test_short_tokens_warn_once_per_load_by_fingerprint(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="control_room.auth"):
        Tokens(token_source("LOCAL_TOKEN", f"tiny-tok,{A}", None))
    (record,) = caplog.records
    assert record.fingerprint == fingerprint("tiny-tok")  # type: ignore[attr-defined]
    assert "tiny-tok" not in caplog.text
