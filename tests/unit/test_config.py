"""Settings: defaults, validation with a message naming the variable, `.env` files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from control_room.config import ConfigError, load

REQUIRED = {"LOCAL_TOKEN": "t", "JULES_API_KEY": "k"}


def test_defaults_match_the_documented_table() -> None:
    s = load(REQUIRED, dotenv=None)
    assert (s.host, s.port) == ("127.0.0.1", 3001)
    assert s.jules_api_base == "https://jules.googleapis.com/v1alpha"
    assert s.poll_interval == 5.0
    assert s.heartbeat_interval == 30.0
    assert s.max_buffer_bytes == 1_048_576
    assert (s.log_level, s.log_format) == ("info", "json")
    assert s.history_size == 10_000
    assert s.delta_retention == 7 * 86400
    assert (s.full_listing_interval, s.stall_after) == (60.0, 900.0)
    assert not s.persist


@pytest.mark.parametrize("missing", ["LOCAL_TOKEN", "JULES_API_KEY"])
def test_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(ConfigError) as err:
        load(env, dotenv=None)
    assert err.value.variable == missing


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "-1"),
        ("POLL_INTERVAL_MS", "0"),
        ("HEARTBEAT_INTERVAL_MS", "1.5"),
        ("MAX_BUFFER_BYTES", "10"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("JULES_API_BASE", "ftp://example"),
        ("PERSIST", "maybe"),
        ("DELTA_RETENTION", "a week"),
        ("FULL_LISTING_INTERVAL", "0"),
        ("STALL_AFTER", "soon"),
        ("NOTIFY_WEBHOOK", "http://ok.example/hook,file:///etc/passwd"),
        ("DATABASE_URL", "mysql://localhost/db"),
    ],
)
def test_invalid_values_are_refused_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({**REQUIRED, name: value}, dotenv=None)
    assert err.value.variable == name
    assert name in str(err.value)


def test_secrets_are_not_in_the_repr() -> None:
    s = load({"LOCAL_TOKEN": "tok-SECRET", "JULES_API_KEY": "key-SECRET"}, dotenv=None)
    assert "SECRET" not in repr(s)


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nexport LOCAL_TOKEN='from-file'\nJULES_API_KEY=\"k\"\nPORT=4000\n")
    s = load({"PORT": "5000"}, dotenv=dotenv)
    assert (s.local_token, s.jules_api_key, s.port) == ("from-file", "k", 5000)


def test_durations_accept_units() -> None:
    s = load(
        {
            **REQUIRED,
            "DELTA_RETENTION": "12h",
            "NOTIFY_MAX_AGE": "90m",
            "FULL_LISTING_INTERVAL": "2m",
            "STALL_AFTER": "30m",
        },
        dotenv=None,
    )
    assert (s.delta_retention, s.notify_max_age) == (12 * 3600, 90 * 60)
    assert (s.full_listing_interval, s.stall_after) == (120, 30 * 60)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load({"PORT": "eighty", "LOG_LEVEL": "loud"}, dotenv=None)
    named = [variable for variable, _ in err.value.problems]
    assert named == ["LOCAL_TOKEN", "JULES_API_KEY", "PORT", "LOG_LEVEL"]
    assert len(str(err.value).splitlines()) == 4


def test_serve_stops_with_exit_code_2_and_one_line_per_problem(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "control_room.cli", "serve"],
        env={"PATH": "/usr/bin:/bin", "LOCAL_TOKEN": "t", "POLL_INTERVAL_MS": "soon"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "JULES_API_KEY" in lines[0]
    assert "POLL_INTERVAL_MS" in lines[1]


def test_the_jules_key_may_come_from_a_file_instead(tmp_path: Path) -> None:
    key_file = tmp_path / "jules.key"
    key_file.write_text("from-a-file\n")
    s = load({"LOCAL_TOKEN": "t", "JULES_API_KEY_FILE": str(key_file)}, dotenv=None)
    assert (s.jules_api_key, s.jules_api_key_file) == ("", key_file)


@pytest.mark.parametrize(
    ("key", "file_text", "says"),
    [
        ("k", "from-a-file", "not both"),
        ("", None, "cannot read"),
        ("", "  \n", "is empty"),
    ],
    ids=["both given", "missing file", "empty file"],
)
def test_a_bad_jules_key_file_is_named(
    tmp_path: Path, key: str, file_text: str | None, says: str
) -> None:
    key_file = tmp_path / "jules.key"
    if file_text is not None:
        key_file.write_text(file_text)
    env = {"LOCAL_TOKEN": "t", "JULES_API_KEY_FILE": str(key_file), "PORT": "x"}
    if key:
        env["JULES_API_KEY"] = key
    with pytest.raises(ConfigError) as err:
        load(env, dotenv=None)
    (problem,) = [p for v, p in err.value.problems if v == "JULES_API_KEY_FILE"]
    assert says in problem
    assert "from-a-file" not in str(err.value)
    assert [v for v, _ in err.value.problems] == ["JULES_API_KEY_FILE", "PORT"]  # all at once


def test_several_tokens_and_a_read_only_list_are_accepted() -> None:
    s = load(
        {**REQUIRED, "LOCAL_TOKEN": "first-token, second.token", "LOCAL_READONLY_TOKEN": "ro"},
        dotenv=None,
    )
    assert (s.local_token, s.local_readonly_token) == ("first-token, second.token", "ro")


@pytest.mark.parametrize("value", ["Zm9v/YmFy+YmF6==", "ok-token,with space", "a;b", "tøken"])
def test_a_token_browsers_cannot_send_is_refused_without_repeating_it(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({**REQUIRED, "LOCAL_TOKEN": value}, dotenv=None)
    assert err.value.variable == "LOCAL_TOKEN"
    assert "RFC 7230" in str(err.value) and "!#$%&'*+-.^_`|~" in str(err.value)
    assert value not in str(err.value)


def test_token_files_are_read_and_checked_at_start_up(tmp_path: Path) -> None:
    good = tmp_path / "tokens"
    good.write_text("# comment\none-token\n\ntwo-token\n")
    s = load({"JULES_API_KEY": "k", "LOCAL_TOKEN_FILE": str(good)}, dotenv=None)
    assert (s.local_token, s.local_token_file) == ("", good)
    bad = tmp_path / "bad"
    bad.write_text("fine\nnot/fine\n")
    problems = {
        "LOCAL_TOKEN_FILE": str(bad),
        "LOCAL_READONLY_TOKEN_FILE": str(tmp_path / "missing"),
        "LOCAL_TOKEN": "also-set",
    }
    with pytest.raises(ConfigError) as err:
        load({"JULES_API_KEY": "k", **problems}, dotenv=None)
    found = err.value.problems
    file_problems = [p for v, p in found if v == "LOCAL_TOKEN_FILE"]
    assert len(file_problems) == 2
    assert "set LOCAL_TOKEN or LOCAL_TOKEN_FILE, not both" in file_problems
    assert any(p.startswith("token 2 of 2 holds a character") for p in file_problems)
    assert any(v == "LOCAL_READONLY_TOKEN_FILE" and "cannot read" in p for v, p in found)


def test_connection_cap_and_origins() -> None:
    s = load(
        {
            **REQUIRED,
            "MAX_CONNECTIONS": "500",
            "ALLOWED_ORIGINS": "https://Dash.example, http://localhost:8080",
        },
        dotenv=None,
    )
    assert s.max_connections == 500
    assert s.allowed_origins == ("https://dash.example", "http://localhost:8080")
    assert load(REQUIRED, dotenv=None).max_connections == 0  # derived at start-up
    for name, value in [("MAX_CONNECTIONS", "0"), ("ALLOWED_ORIGINS", "https://a.example/path")]:
        with pytest.raises(ConfigError) as err:
            load({**REQUIRED, name: value}, dotenv=None)
        assert err.value.variable == name


def test_serve_stops_with_exit_2_naming_the_token_variable_and_the_allowed_set(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "LOCAL_TOKEN": "Zm9v/YmFy+YmF6==",
        "JULES_API_KEY": "k",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "control_room.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("control-room: configuration error: LOCAL_TOKEN: ")
    assert "letters, digits and !#$%&'*+-.^_`|~" in line
    assert "Zm9v" not in line
