"""Pure token checks: the WebSocket subprotocol form and the REST bearer header."""

from __future__ import annotations

import hmac
from typing import Final

BEARER_PREFIX: Final = "bearer."
APP_PROTOCOL: Final = "control-room.v1"
"""Offered alongside the bearer entry by clients that want a token-free protocol echoed."""


def offered_protocols(header: str | None) -> list[str]:
    """The entries of a `Sec-WebSocket-Protocol` header, in order, blanks dropped."""
    if not header:
        return []
    return [p.strip() for p in header.split(",") if p.strip()]


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected token never matches."""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


def websocket_auth(header: str | None, expected: str) -> str | None:
    """The subprotocol to select if the offer carries `bearer.<expected>`, else None.

    The prefix is case-insensitive and the token is everything after the first `bearer.`,
    dots included. `control-room.v1` is selected when offered, so the token is not echoed
    back; otherwise the bearer entry itself is selected, because browsers fail a handshake
    that offered protocols and got none selected.
    """
    offers = offered_protocols(header)
    bearer: str | None = None
    for offer in offers:
        if offer[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX and token_matches(
            offer[len(BEARER_PREFIX) :], expected
        ):
            bearer = offer
            break
    if bearer is None:
        return None
    return APP_PROTOCOL if APP_PROTOCOL in offers else bearer


def bearer_auth(header: str | None, expected: str) -> bool:
    """True when an `Authorization: Bearer <token>` header carries the expected token."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and token_matches(token.strip(), expected)
