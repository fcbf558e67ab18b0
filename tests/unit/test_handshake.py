"""The opening handshake and permessage-deflate negotiation (RFC 6455 §4.2, RFC 7692 §7)."""

from __future__ import annotations

import pytest

from control_room.ws.handshake import (
    HandshakeError,
    UnsupportedVersion,
    accept_key,
    check_upgrade,
    negotiate_deflate,
    response,
)

OURS = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def test_the_accept_key_is_the_rfcs_example() -> None:
    # RFC 6455 §1.3: "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("key", ["", "not base64!", "c2hvcnQ="])
def test_a_bad_key_is_refused(key: str) -> None:
    with pytest.raises(HandshakeError):
        accept_key(key)


@pytest.mark.parametrize(
    ("offers", "header"),
    [
        (["permessage-deflate; client_max_window_bits"], OURS),  # browsers and Node ws
        (["permessage-deflate"], OURS),
        (["permessage-deflate; server_no_context_takeover"], OURS),
        (["permessage-deflate; server_max_window_bits=10"], OURS + "; server_max_window_bits=10"),
        (["x-webkit-deflate-frame", "permessage-deflate"], OURS),
        (["permessage-deflate; server_max_window_bits=8, permessage-deflate"], OURS),
        (
            ["permessage-deflate; unknown_param, permessage-deflate; client_max_window_bits=12"],
            OURS,
        ),
    ],
)
def test_an_acceptable_offer_is_answered_without_context_takeover(
    offers: list[str], header: str
) -> None:
    accepted = negotiate_deflate(offers)
    assert accepted is not None
    assert accepted.header == header


@pytest.mark.parametrize(
    "offers",
    [
        [],
        ["x-webkit-deflate-frame"],
        ["permessage-deflate; server_max_window_bits=8"],  # zlib cannot
        ["permessage-deflate; server_max_window_bits"],  # needs a value
        ["permessage-deflate; server_no_context_takeover=1"],
        ["permessage-deflate; client_max_window_bits=20"],
        ["permessage-deflate; server_max_window_bits=010"],  # no leading zero in the grammar
        ["permessage-deflate; server_max_window_bits=１２"],  # full-width digits are not digits
        ["permessage-deflate; client_max_window_bits=09"],
        ["permessage-deflate; mystery"],
        ["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
    ],
)
def test_unacceptable_offers_leave_compression_off(offers: list[str]) -> None:
    assert negotiate_deflate(offers) is None


def test_the_response_carries_what_was_chosen() -> None:
    deflate = negotiate_deflate(["permessage-deflate"])
    text = response("abc=", "control-room.v1", deflate).decode()
    assert text.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert "Sec-WebSocket-Accept: abc=\r\n" in text
    assert "Sec-WebSocket-Protocol: control-room.v1\r\n" in text
    assert f"Sec-WebSocket-Extensions: {OURS}\r\n" in text
    assert text.endswith("\r\n\r\n")
    bare = response("abc=", None, None).decode()
    assert "Sec-WebSocket-Protocol" not in bare and "Extensions" not in bare


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Upgrade": "h2c"}, "Upgrade"),
        ({"Upgrade": "websocket", "Connection": "keep-alive"}, "Connection"),
        ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8"}, "13"),
    ],
)
def test_a_request_that_is_not_an_upgrade_is_refused(headers: dict[str, str], problem: str) -> None:
    with pytest.raises(HandshakeError, match=problem):
        check_upgrade(headers)


@pytest.mark.parametrize("version", ["8", "", "13, 8", "14"])
def test_another_version_is_an_unsupported_version(version: str) -> None:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": version}
    with pytest.raises(UnsupportedVersion, match="13"):
        check_upgrade(headers)
