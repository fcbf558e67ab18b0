"""The simulator's page sizes and page tokens, read the way the real API reads them."""

from __future__ import annotations

import base64
import re

import pytest

from control_room.jules.simulator import (
    InvalidArgument,
    decode_page_token,
    encode_page_token,
    parse_page_size,
)


def test_page_tokens_round_trip() -> None:
    token = encode_page_token("s", 2, -1_700_000_000_000_000_000, "123")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert decode_page_token(token, "s") == (2, -1_700_000_000_000_000_000, "123")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "not base64 at all",
        encode_page_token("a", 1, 0),  # an activities token used for sessions
        encode_page_token("s", 0, 0),  # page 0 never has a token
        base64.urlsafe_b64encode(b"s:1:x:y").decode(),  # the position is not a number
    ],
)
def test_bad_page_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_page_token(token, "s")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 30), ("", 30), ("0", 30), ("1", 1), ("100", 100), ("250", 100)]
)
def test_page_size_defaults_and_is_coerced(value: str | None, expected: int) -> None:
    assert parse_page_size(value, 30, 100) == expected


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_bad_page_sizes_are_invalid_arguments(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_page_size(value, 30, 100)
