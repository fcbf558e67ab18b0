"""Token checks before upgrade: principals, subprotocol and bearer forms, hints for 401s."""

from __future__ import annotations

import pytest

from control_room.auth import (
    APP_PROTOCOL,
    TokenSet,
    bearer_auth,
    bearer_credential,
    invalid_token_problem,
    misplaced_token,
    offered_protocols,
    parse_tokens,
    unauthorized_message,
    websocket_auth,
    websocket_credential,
)
from control_room.secret import fingerprint

TOKEN = "abc.def.ghi"
OTHER = "second-token_0123456789"
TOKENS = TokenSet([TOKEN, OTHER], read_only=["viewer-token-0123456789"])


def ws(header: str | None, authorization: str | None = None, tokens: TokenSet = TOKENS) -> object:
    auth = websocket_auth(offered_protocols([header] if header else []), authorization, tokens)
    return None if auth is None else auth.protocol


def test_offered_protocols_are_one_list_over_every_header_line() -> None:
    assert offered_protocols([" a , b,, c "]) == ["a", "b", "c"]
    assert offered_protocols(["control-room.v1", f"bearer.{TOKEN}"]) == [
        "control-room.v1",
        f"bearer.{TOKEN}",
    ]
    assert offered_protocols([]) == []


def test_bearer_entry_is_selected_when_it_is_the_only_offer() -> None:
    assert ws(f"bearer.{TOKEN}") == f"bearer.{TOKEN}"


def test_app_protocol_is_selected_when_offered_on_any_line() -> None:
    assert ws(f"control-room.v1, bearer.{TOKEN}") == APP_PROTOCOL
    assert ws(f"bearer.{TOKEN}, control-room.v1") == APP_PROTOCOL
    split = websocket_auth(offered_protocols([f"bearer.{TOKEN}", APP_PROTOCOL]), None, TOKENS)
    assert split is not None and split.protocol == APP_PROTOCOL


def test_prefix_is_case_insensitive_and_token_keeps_its_dots() -> None:
    assert ws(f"Bearer.{TOKEN}") == f"Bearer.{TOKEN}"
    assert ws(f"BEARER.{TOKEN}") is not None
    assert ws("bearer.abc") is None  # only up to the first dot: wrong


@pytest.mark.parametrize(
    "header",
    [None, "", "control-room.v1", "bearer.", "bearer.wrong", f"token.{TOKEN}", f"bearer{TOKEN}"],
)
def test_anything_else_is_refused(header: str | None) -> None:
    assert ws(header) is None


def test_only_the_first_bearer_offer_is_checked_so_one_upgrade_is_one_guess() -> None:
    assert ws(f"bearer.wrong, bearer.{TOKEN}") is None


def test_the_authorization_header_is_accepted_on_an_upgrade() -> None:
    assert ws(None, f"Bearer {TOKEN}") is None  # accepted; nothing offered, nothing selected
    auth = websocket_auth([], f"Bearer {TOKEN}", TOKENS)
    assert auth is not None and auth.principal.fingerprint == fingerprint(TOKEN)
    assert ws(APP_PROTOCOL, f"Bearer {TOKEN}") == APP_PROTOCOL
    assert websocket_auth([], "Bearer nope", TOKENS) is None


def test_every_token_of_the_set_authenticates_as_its_own_principal() -> None:
    first = TOKENS.authenticate(TOKEN)
    second = TOKENS.authenticate(OTHER)
    viewer = TOKENS.authenticate("viewer-token-0123456789")
    assert first is not None and second is not None and viewer is not None
    assert first != second
    assert (first.read_only, viewer.read_only) == (False, True)
    assert viewer.fingerprint == fingerprint("viewer-token-0123456789")
    assert TOKEN not in repr(first)
    assert first in TOKENS and first not in TokenSet([OTHER])


def test_a_token_listed_twice_is_read_only() -> None:
    both = TokenSet([TOKEN], read_only=[TOKEN])
    principal = both.authenticate(TOKEN)
    assert principal is not None and principal.read_only


@pytest.mark.parametrize("presented", ["\udcff\udcfe", "bearer.\udcff", "\ud800", "é", "\x00"])
def test_bytes_that_are_not_utf8_are_a_wrong_token_not_an_error(presented: str) -> None:
    assert TOKENS.authenticate(presented) is None
    assert bearer_auth(f"Bearer {presented}", TOKENS) is None
    assert ws(f"bearer.{presented}") is None


def test_an_empty_set_matches_nothing() -> None:
    assert ws("bearer.", tokens=TokenSet()) is None
    assert bearer_auth("Bearer ", TokenSet()) is None


@pytest.mark.parametrize(
    ("offers", "authorization"),
    [([], None), ([], "Bearer "), ([], "Bearer"), (["bearer."], None), (["Bearer x"], None)],
)
def test_an_empty_or_misplaced_credential_presents_nothing(
    offers: list[str], authorization: str | None
) -> None:
    # Nothing presented is not a guess: the guard neither throttles nor counts it.
    assert websocket_credential(offers, authorization) is None
    assert bearer_credential(authorization) is None


def test_an_empty_bearer_offer_falls_back_to_the_header() -> None:
    assert websocket_credential(["bearer."], f"Bearer {TOKEN}") == TOKEN


def test_rest_bearer_header() -> None:
    assert bearer_auth(f"Bearer {TOKEN}", TOKENS) is not None
    assert bearer_auth(f"bearer   {TOKEN} ", TOKENS) is not None
    assert bearer_auth(f"Basic {TOKEN}", TOKENS) is None
    assert bearer_auth("Bearer nope", TOKENS) is None
    assert bearer_auth(None, TOKENS) is None


def test_tokens_parse_from_a_list_or_a_file_and_must_be_tchar() -> None:
    assert parse_tokens(" a-token , b.token ") == ["a-token", "b.token"]
    assert parse_tokens("# rotated 2026-11\none\n\n  two  \n", lines=True) == ["one", "two"]
    with pytest.raises(ValueError, match="no token"):
        parse_tokens(" , ")
    with pytest.raises(ValueError, match=r"token 2 of 2 holds a character") as err:
        parse_tokens("good-token,Zm9v/YmFy=")
    assert "Zm9v" not in str(err.value)
    assert invalid_token_problem("Zm9v+YmFy") is None  # '+' is a tchar
    assert invalid_token_problem("a b") is not None


@pytest.mark.parametrize(
    ("offers", "authorization", "query", "expected"),
    [
        ([], None, {"token": "x"}, "?token="),
        ([], None, {"access_token": "x"}, "?access_token="),
        (["Bearer secret"], None, {}, "'Bearer <token>'"),
        (["bearer", "secret"], None, {}, "separate entry"),
        (["secret"], None, {}, "without the bearer. prefix"),
        ([], "Basic Zm9v", {}, "scheme other than Bearer"),
        ([APP_PROTOCOL], None, {}, None),
        ([f"bearer.{TOKEN}"], None, {}, None),
    ],
)
def test_a_token_in_the_wrong_place_is_named_never_quoted(
    offers: list[str], authorization: str | None, query: dict[str, str], expected: str | None
) -> None:
    where = misplaced_token(offers=offers, authorization=authorization, query=query, websocket=True)
    if expected is None:
        assert where is None
    else:
        assert where is not None and expected in where
        assert "secret" not in where and "Zm9v" not in where


def test_unauthorized_messages_say_where_the_token_goes() -> None:
    ws_missing = unauthorized_message(presented=False, misplaced=None, websocket=True)
    assert "Sec-WebSocket-Protocol: bearer.<token>" in ws_missing
    rest = unauthorized_message(presented=False, misplaced="the query", websocket=False)
    assert "Authorization: Bearer <token>" in rest and "the query" in rest
    assert "not valid" in unauthorized_message(presented=True, misplaced=None, websocket=True)
