"""The connection cap against the file limit, without a socket."""

from __future__ import annotations

from control_room.server.listener import (
    FD_HEADROOM,
    cap_beyond_file_limit,
    default_max_connections,
)


def test_the_default_cap_is_never_beyond_the_file_limit() -> None:
    for limit in (64, 96, 256, 1024, 1_048_576):
        assert not cap_beyond_file_limit(default_max_connections(limit), limit)


def test_a_cap_that_leaves_less_than_the_headroom_is_beyond_the_limit() -> None:
    assert cap_beyond_file_limit(1024 - FD_HEADROOM + 1, 1024)
    assert cap_beyond_file_limit(5_000, 1024)
    assert not cap_beyond_file_limit(100, 1024)
