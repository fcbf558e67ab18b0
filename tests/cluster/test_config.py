"""Cluster settings: REDIS_URL, LEASE_MS, NODE_ID, REDIS_PREFIX, and what they refuse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from control_room.config import ConfigError, load
from tests.redis_server import free_port

REQUIRED = {"LOCAL_TOKEN": "t", "JULES_API_KEY": "k"}


def test_without_redis_url_the_service_is_a_single_process() -> None:
    s = load(REQUIRED, dotenv=None)
    assert (s.redis_url, s.redis_prefix, s.lease, s.node_id) == ("", "control-room", 10.0, "")


def test_cluster_settings_are_read() -> None:
    env = {
        **REQUIRED,
        "REDIS_URL": "redis://127.0.0.1:6379/2",
        "REDIS_PREFIX": "team-a",
        "LEASE_MS": "5000",
        "NODE_ID": "web-1",
    }
    s = load(env, dotenv=None)
    assert (s.redis_url, s.redis_prefix, s.lease, s.node_id) == (
        "redis://127.0.0.1:6379/2",
        "team-a",
        5.0,
        "web-1",
    )
    assert "6379" not in repr(s)  # the URL may hold a password


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://127.0.0.1", "LEASE_MS": "50"}, "LEASE_MS"),
        ({"REDIS_URL": "redis://127.0.0.1", "PERSIST": "1"}, "REDIS_URL"),
    ],
)
def test_bad_cluster_settings_are_refused(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({**REQUIRED, **env}, dotenv=None)
    assert err.value.variable == variable


def test_persist_with_postgresql_is_accepted_in_a_cluster() -> None:
    env = {**REQUIRED, "REDIS_URL": "redis://127.0.0.1", "PERSIST": "1"}
    s = load({**env, "DATABASE_URL": "postgresql://db/cr"}, dotenv=None)
    assert s.persist and s.database_url


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PERSIST"))}
    return subprocess.run(
        [sys.executable, "-m", "control_room.cli", "serve"],
        env={**base, **REQUIRED, "PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_cluster_on_sqlite_is_refused_at_start_with_one_line() -> None:
    done = run_serve({"REDIS_URL": "redis://127.0.0.1:6379", "PERSIST": "1"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "DATABASE_URL" in lines[0]


def test_an_unreachable_redis_at_start_is_one_clear_line() -> None:
    done = run_serve({"REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("control-room: cannot join the cluster")
