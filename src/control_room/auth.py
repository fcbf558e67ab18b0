"""Pure token checks: which principal a request is, from its subprotocol or bearer header.

No I/O here: the tokens in force arrive as a `TokenSet` (built by `control_room.tokens`
from the environment or a watched file), the request's headers as strings. Tokens are
compared as SHA-256 digests with `hmac.compare_digest`, against every valid token in
turn with no early exit, so the time taken says nothing about how much of a guess was
right, nor which token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from control_room.secret import fingerprint

BEARER_PREFIX: Final = "bearer."
APP_PROTOCOL: Final = "control-room.v1"
MSGPACK_PROTOCOL: Final = "control-room.v1+msgpack"
"""The same messages as MessagePack in binary frames (issue 13)."""
APP_PROTOCOLS: Final = (APP_PROTOCOL, MSGPACK_PROTOCOL)
"""Offered alongside the bearer entry by clients that want a token-free protocol echoed."""

TCHARS: Final = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)
"""RFC 7230 `tchar`: the only characters a subprotocol (hence a browser's token) may hold."""
TCHARS_DESCRIBED: Final = "letters, digits and !#$%&'*+-.^_`|~"
MIN_TOKEN_LENGTH: Final = 16
"""Below this a token warns at start-up: 16 random tchar are ~96 bits, far beyond online
guessing at the throttled rate; shorter ones are usually a human's password."""
TOKEN_QUERY_KEYS: Final = frozenset({"token", "access_token", "bearer", "auth", "authorization"})
"""Query parameters clients put tokens in by mistake (never read, only named in the 401)."""

WEBSOCKET_TOKEN_HELP: Final = (
    "send the token as the subprotocol Sec-WebSocket-Protocol: bearer.<token> "
    "(or, outside a browser, as Authorization: Bearer <token>)"
)
REST_TOKEN_HELP: Final = "send the token as Authorization: Bearer <token>"


def _digest(token: str) -> bytes:
    # Any string hashes, whatever it holds: a header with bytes that are not UTF-8
    # (surrogate-escaped by the HTTP parser) is just a wrong token, never an error.
    return hashlib.sha256(token.encode("utf-8", "backslashreplace")).digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as: a token, named by its fingerprint, and its rights.

    `read_only` principals may read everything but will be refused commands (`forbidden`).
    Equal principals are the same token with the same rights.
    """

    fingerprint: str
    read_only: bool
    digest: bytes = field(repr=False)


class TokenSet:
    """The tokens in force, immutable; `authenticate` maps a presented token to a principal.

    A token listed both as full and as read-only is read-only (least privilege).
    """

    __slots__ = ("_entries", "principals")

    def __init__(self, full: Iterable[str] = (), read_only: Iterable[str] = ()) -> None:
        by_digest: dict[bytes, Principal] = {}
        for token in full:
            d = _digest(token)
            by_digest[d] = Principal(fingerprint(token), False, d)
        for token in read_only:
            d = _digest(token)
            by_digest[d] = Principal(fingerprint(token), True, d)
        self._entries: tuple[tuple[bytes, Principal], ...] = tuple(by_digest.items())
        self.principals: frozenset[Principal] = frozenset(by_digest.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, principal: object) -> bool:
        return principal in self.principals

    def authenticate(self, presented: str) -> Principal | None:
        """The principal whose token is `presented`, else None; constant time per token."""
        if not presented:
            return None
        digest = _digest(presented)
        found: Principal | None = None
        for candidate, principal in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = principal
        return found


def invalid_token_problem(token: str) -> str | None:
    """Why `token` cannot be used (it holds a character browsers cannot send), else None.

    The message never repeats the token or any of its characters.
    """
    if not token:
        return "is empty"
    if not all(c in TCHARS for c in token):
        return (
            "holds a character outside the RFC 7230 token set, so no browser can send it "
            f"as a WebSocket subprotocol (allowed: {TCHARS_DESCRIBED})"
        )
    return None


def split_tokens(text: str, *, lines: bool = False) -> list[str]:
    """Tokens from a comma-separated list (`lines=False`) or a file, one per line.

    Surrounding blanks are dropped; in files, blank lines and `#` comments are ignored.
    """
    if not lines:
        return [t.strip() for t in text.split(",") if t.strip()]
    tokens = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            tokens.append(line)
    return tokens


def parse_tokens(text: str, *, lines: bool = False) -> list[str]:
    """The tokens of a comma-separated value (`lines=False`) or of a file, validated.

    Raises ValueError saying what is wrong, never repeating a token.
    """
    tokens = split_tokens(text, lines=lines)
    if not tokens:
        raise ValueError("holds no token")
    for number, token in enumerate(tokens, 1):
        problem = invalid_token_problem(token)
        if problem is not None:
            where = f"token {number} of {len(tokens)} " if len(tokens) > 1 else ""
            raise ValueError(f"{where}{problem}")
    return tokens


def offered_protocols(headers: Iterable[str]) -> list[str]:
    """Every entry of the `Sec-WebSocket-Protocol` header lines, in order, blanks dropped.

    RFC 6455 lets a client split its offer over several header lines: they are one list.
    """
    return [p.strip() for header in headers for p in header.split(",") if p.strip()]


def _bearer_offer(offers: Sequence[str]) -> str | None:
    """The first `bearer.<token>` entry (prefix case-insensitive), or None."""
    for offer in offers:
        if offer[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
            return offer
    return None


def bearer_credential(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (none, or empty).

    An empty one (`Bearer ` with nothing after it: the dashboard before its user has typed
    a token) presents nothing, so it is answered as "no token", never counted as a guess.
    """
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def websocket_credential(offers: Sequence[str], authorization: str | None) -> str | None:
    """The one token an upgrade presents: its first `bearer.` offer, else its bearer header.

    None when it presents none; an empty `bearer.` offer presents none either.
    """
    bearer = _bearer_offer(offers)
    if bearer is not None and len(bearer) > len(BEARER_PREFIX):
        return bearer[len(BEARER_PREFIX) :]
    return bearer_credential(authorization)


@dataclass(frozen=True, slots=True)
class WebSocketAuth:
    """The outcome of an upgrade's token check: the principal and the subprotocol to select."""

    principal: Principal
    protocol: str | None


def websocket_auth(
    offers: Sequence[str], authorization: str | None, tokens: TokenSet
) -> WebSocketAuth | None:
    """Authenticate an upgrade by its first `bearer.<token>` offer, else its bearer header.

    One credential is checked per request, so a client cannot try several guesses in one
    upgrade. The prefix is case-insensitive and the token is everything after the first
    `bearer.`, dots included. The first of `control-room.v1` and `control-room.v1+msgpack`
    the client offered is selected, so the token is not echoed back; otherwise the bearer
    entry itself is, because browsers fail a handshake that offered protocols and got none
    selected. With the token in the `Authorization` header, the selection is the first
    application protocol offered, else none.
    """
    bearer = _bearer_offer(offers)
    presented = websocket_credential(offers, authorization)
    if presented is None:
        return None
    principal = tokens.authenticate(presented)
    if principal is None:
        return None
    app = next((offer for offer in offers if offer in APP_PROTOCOLS), None)
    return WebSocketAuth(principal, app if app is not None else bearer)


def bearer_auth(header: str | None, tokens: TokenSet) -> Principal | None:
    """The principal of an `Authorization: Bearer <token>` header, else None."""
    presented = bearer_credential(header)
    return tokens.authenticate(presented) if presented is not None else None


def misplaced_token(
    *,
    offers: Sequence[str] = (),
    authorization: str | None = None,
    query: Mapping[str, str] | Iterable[str] = (),
    websocket: bool,
) -> str | None:
    """Where a request put something token-like that is not where tokens go, else None.

    The answer names the place (`the query parameter ?token=`), never the value, for the
    401's message. `websocket` says which places are right: an upgrade accepts a bearer
    subprotocol or header, REST only the header.
    """
    for key in query:
        if key.lower() in TOKEN_QUERY_KEYS:
            return f"the query parameter ?{key}= (query strings end up in logs and history)"
    for offer in offers:
        lowered = offer.lower()
        if lowered.startswith(("bearer ", "bearer:")):
            return "Sec-WebSocket-Protocol, but as 'Bearer <token>' (the form is bearer.<token>)"
        if lowered == "bearer":
            return "Sec-WebSocket-Protocol, but with the token as a separate entry"
    if authorization:
        scheme = authorization.strip().partition(" ")[0].lower()
        if scheme != "bearer":
            return "an Authorization header with a scheme other than Bearer"
    if _bearer_offer(offers) is not None:
        return None if websocket else "Sec-WebSocket-Protocol, which only WebSocket upgrades read"
    if websocket and any(offer not in APP_PROTOCOLS for offer in offers):
        return "Sec-WebSocket-Protocol, but without the bearer. prefix"
    return None


def unauthorized_message(
    *,
    presented: bool,
    misplaced: str | None,
    websocket: bool,
) -> str:
    """The `message` of a 401: where the token goes, and what was wrong (never the value)."""
    help_text = WEBSOCKET_TOKEN_HELP if websocket else REST_TOKEN_HELP
    if presented:
        return "the token is not valid (it may have been revoked)"
    if misplaced is not None:
        return f"a token-like value was sent in {misplaced}; {help_text}"
    return f"no token; {help_text}"
