"""Token checks before upgrade: subprotocol form and REST bearer form."""

from __future__ import annotations

import pytest

from control_room.auth import bearer_auth, offered_protocols, websocket_auth

TOKEN = "abc.def.ghi"


def test_offered_protocols_are_split_and_trimmed() -> None:
    assert offered_protocols(" a , b,, c ") == ["a", "b", "c"]
    assert offered_protocols(None) == []


def test_bearer_entry_is_selected_when_it_is_the_only_offer() -> None:
    assert websocket_auth(f"bearer.{TOKEN}", TOKEN) == f"bearer.{TOKEN}"


def test_app_protocol_is_selected_when_offered() -> None:
    assert websocket_auth(f"control-room.v1, bearer.{TOKEN}", TOKEN) == "control-room.v1"
    assert websocket_auth(f"bearer.{TOKEN}, control-room.v1", TOKEN) == "control-room.v1"


def test_prefix_is_case_insensitive_and_token_keeps_its_dots() -> None:
    assert websocket_auth(f"Bearer.{TOKEN}", TOKEN) == f"Bearer.{TOKEN}"
    assert websocket_auth(f"BEARER.{TOKEN}", TOKEN) is not None
    assert websocket_auth("bearer.abc", TOKEN) is None  # only up to the first dot: wrong


@pytest.mark.parametrize(
    "header",
    [None, "", "control-room.v1", "bearer.", "bearer.wrong", f"token.{TOKEN}", f"bearer{TOKEN}"],
)
def test_anything_else_is_refused(header: str | None) -> None:
    assert websocket_auth(header, TOKEN) is None


def test_an_unset_expected_token_matches_nothing() -> None:
    assert websocket_auth("bearer.", "") is None
    assert not bearer_auth("Bearer ", "")


def test_rest_bearer_header() -> None:
    assert bearer_auth(f"Bearer {TOKEN}", TOKEN)
    assert bearer_auth(f"bearer   {TOKEN} ", TOKEN)
    assert not bearer_auth(f"Basic {TOKEN}", TOKEN)
    assert not bearer_auth("Bearer nope", TOKEN)
    assert not bearer_auth(None, TOKEN)
