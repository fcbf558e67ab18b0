"""Pure WebSocket opening handshake (RFC 6455 §4.2) and permessage-deflate (RFC 7692 §7).

The service answers the upgrade itself, so it decides the extension parameters: every
message it sends is compressed on its own (`server_no_context_takeover`, so one compressed
frame serves every client of a variant), and it asks clients to do the same
(`client_no_context_takeover`, which RFC 7692 §7.1.1.2 lets a server add to any accepted
offer), so no connection keeps a compression window between messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
MAX_WINDOW_BITS: Final = 15
MIN_WINDOW_BITS: Final = 9  # zlib cannot compress with an 8-bit window
WINDOW_BITS: Final = re.compile(r"8|9|1[0-5]", re.ASCII)
"""RFC 7692 §7.1.2: `%x38-39 / "1" %x30-35`, no leading zero, ASCII digits only."""


WEBSOCKET_VERSION: Final = "13"
"""The only version RFC 6455 defines; any other is answered 426 naming this one (§4.4)."""


class HandshakeError(ValueError):
    """The upgrade request is not a valid WebSocket opening handshake; says why."""


class UnsupportedVersion(HandshakeError):
    """The client speaks another WebSocket version: answer 426 with the versions we speak."""


@dataclass(frozen=True, slots=True)
class Deflate:
    """Accepted permessage-deflate parameters: the server's window (what it compresses
    with, as the client allowed) and the response header value."""

    server_window_bits: int
    header: str


def accept_key(key: str) -> str:
    """`Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`; HandshakeError if malformed."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError("Sec-WebSocket-Key is not base64") from None
    if len(raw) != 16:
        raise HandshakeError("Sec-WebSocket-Key must encode 16 bytes")
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def _params(offer: str) -> tuple[str, dict[str, str | None]] | None:
    name, *rest = (part.strip() for part in offer.split(";"))
    params: dict[str, str | None] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not key or key in params:
            return None  # RFC 7692 §7: a repeated parameter declines the offer
        params[key] = value.strip().strip('"') if eq else None
    return name.lower(), params


def negotiate_deflate(offers: Sequence[str]) -> Deflate | None:
    """The first acceptable permessage-deflate offer among `Sec-WebSocket-Extensions`
    values, or None (compression off for this client)."""
    for header in offers:
        for offer in header.split(","):
            parsed = _params(offer)
            if parsed is None or parsed[0] != "permessage-deflate":
                continue
            accepted = _accept(parsed[1])
            if accepted is not None:
                return accepted
    return None


def _accept(params: Mapping[str, str | None]) -> Deflate | None:
    window = MAX_WINDOW_BITS
    for key, value in params.items():
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif key == "server_max_window_bits":
            if value is None or not WINDOW_BITS.fullmatch(value):
                return None
            window = int(value)
            if window < MIN_WINDOW_BITS:
                return None  # 8 is valid in the RFC but zlib cannot honour it: decline
        elif key == "client_max_window_bits":
            if value is not None and not WINDOW_BITS.fullmatch(value):
                return None
        else:
            return None  # an unknown parameter declines this offer (RFC 7692 §7.1)
    header = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    if window < MAX_WINDOW_BITS:
        header += f"; server_max_window_bits={window}"
    return Deflate(window, header)


def response(accept: str, protocol: str | None, deflate: Deflate | None) -> bytes:
    """The `101 Switching Protocols` answer, ready to write."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if deflate is not None:
        lines.append(f"Sec-WebSocket-Extensions: {deflate.header}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_upgrade(headers: Mapping[str, str]) -> str:
    """Validate the upgrade request's headers; the `Sec-WebSocket-Key`, or HandshakeError."""
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise HandshakeError("Upgrade must be websocket")
    connection = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    if "upgrade" not in connection:
        raise HandshakeError("Connection must include Upgrade")
    if headers.get("Sec-WebSocket-Version", "").strip() != WEBSOCKET_VERSION:
        raise UnsupportedVersion(f"Sec-WebSocket-Version must be {WEBSOCKET_VERSION}")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    if not key:
        raise HandshakeError("Sec-WebSocket-Key is missing")
    return key
