"""Pure redaction of the Jules API key from upstream error text (review 10-3)."""

from __future__ import annotations

import msgspec
import pytest

from control_room.jules.client import ERROR_TEXT_MAX_CHARS, UpstreamError, error_message, redact_key

KEY = "AIzaSy-k3y_0123456789+/="


@pytest.mark.parametrize(
    "text",
    [
        f"API key not valid: {KEY}.",
        f"https://x.example/v1?alt=json&key={KEY}",
        "https://x.example/v1?key=AIzaSy%2Bk3y&alt=json",  # URL-encoded, or another key
        f"GET /sessions?api_key={KEY} HTTP/1.1",
        "see ?KEY=whatever",
    ],
)
def test_the_key_and_every_key_query_value_are_redacted(text: str) -> None:
    redacted = redact_key(text, KEY)
    assert KEY not in redacted and "AIzaSy" not in redacted and "whatever" not in redacted
    assert "***" in redacted


def test_the_url_encoded_key_is_redacted_too() -> None:
    assert redact_key("key was AIzaSy-k3y_0123456789%2B%2F%3D", KEY) == "key was ***"


def test_text_without_the_key_is_unchanged() -> None:
    text = "127.0.0.1:9 answered HTTP 500 (INTERNAL: monkey=1, keys are fine)"
    assert redact_key(text, KEY) == text
    assert redact_key(text, "") == text


def test_a_plain_body_is_redacted_before_it_is_cut_so_no_half_key_remains() -> None:
    body = b"x" * (ERROR_TEXT_MAX_CHARS - 5) + KEY.encode() + b" and more"
    message, status = error_message(body, KEY)
    assert status is None
    assert KEY[:5] not in message
    assert message.startswith("x" * (ERROR_TEXT_MAX_CHARS - 5) + "***")
    assert len(message) == ERROR_TEXT_MAX_CHARS


def test_the_envelope_message_is_redacted() -> None:
    body = msgspec.json.encode(
        {"error": {"code": 400, "message": f"bad key {KEY}", "status": "INVALID_ARGUMENT"}}
    )
    assert error_message(body, KEY) == ("INVALID_ARGUMENT: bad key ***", "INVALID_ARGUMENT")


def test_an_error_without_its_key_keeps_everything_else() -> None:
    error = UpstreamError("server_error", f"HTTP 500 ({KEY})", status=500, retry_after=2.0)
    clean = error.without_key(KEY)
    assert (clean.kind, clean.status, clean.retry_after) == ("server_error", 500, 2.0)
    assert clean.detail == "HTTP 500 (***)" and KEY not in str(clean)
    assert error.without_key("other") is error
