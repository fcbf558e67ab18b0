"""Which Origins may open the stream: the service's own by default, or ALLOWED_ORIGINS."""

from __future__ import annotations

import pytest

from control_room.server.origin import OriginPolicy, normalise


def test_origins_are_compared_with_explicit_default_ports() -> None:
    assert normalise("HTTPS://Example.COM") == "https://example.com:443"
    assert normalise("http://[::1]:3001") == "http://[::1]:3001"
    assert normalise("not an origin") is None
    assert normalise("http://example.com:99999") is None


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:3001", True),  # not a browser
        ("http://127.0.0.1:3001", "127.0.0.1:3001", True),
        ("http://localhost:3001", "localhost:3001", True),
        ("https://control.example", "control.example", True),  # TLS terminated in front
        ("https://evil.example", "127.0.0.1:3001", False),
        ("http://127.0.0.1:3002", "127.0.0.1:3001", False),
        ("http://localhost:3001", "127.0.0.1:3001", False),
        ("null", "127.0.0.1:3001", False),
        ("http://127.0.0.1:3001", None, False),
        ("garbage", "127.0.0.1:3001", False),
    ],
)
def test_by_default_only_the_services_own_origin_is_allowed(
    origin: str | None, host: str | None, allowed: bool
) -> None:
    assert OriginPolicy().allows(origin, host) is allowed


def test_a_list_replaces_the_default() -> None:
    policy = OriginPolicy(["https://dash.example", "http://localhost:8080"])
    assert policy.allows("https://dash.example:443", "anything")
    assert policy.allows("http://localhost:8080", "127.0.0.1:3001")
    assert not policy.allows("http://127.0.0.1:3001", "127.0.0.1:3001")
    assert OriginPolicy(["*"]).allows("https://evil.example", "x")
    assert OriginPolicy(["null"]).allows("null", "x")
