"""Page sizes and opaque page tokens, read the way the real API reads them (pure)."""

from __future__ import annotations

import base64
import binascii
from typing import Final

from control_room.jules.simulator.errors import InvalidArgument

DEFAULT_PAGE_SIZE: Final = 30  # sessions.list default, per the API reference
MAX_PAGE_SIZE: Final = 100  # sessions.list coerces anything larger to 100
DEFAULT_ACTIVITY_PAGE_SIZE: Final = 50  # activities.list default, per the API reference
MAX_ACTIVITY_PAGE_SIZE: Final = 100  # activities.list maximum, per the API reference
DEFAULT_SOURCE_PAGE_SIZE: Final = 30  # sources.list default, per the API reference
MAX_SOURCE_PAGE_SIZE: Final = 100  # sources.list maximum, per the API reference

# The listing a token belongs to: a token of one list handed to another is refused.
SESSIONS: Final = "s"
ACTIVITIES: Final = "a"
SOURCES: Final = "r"


def encode_page_token(kind: str, page_index: int, position: int, key: str = "") -> str:
    """An opaque token: which listing, which page it fetches, and where that page starts."""
    raw = f"{kind}:{page_index}:{position}:{key}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, kind: str) -> tuple[int, int, str]:
    """The token's (page index, position, key); `InvalidArgument` when it is not one of ours."""
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        token_kind, page, position, key = raw.split(":", 3)
        page_index, offset = int(page), int(position)
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidArgument("Invalid page token.", field="page_token") from exc
    if token_kind != kind or page_index < 1:
        raise InvalidArgument("Invalid page token.", field="page_token")
    return page_index, offset, key


def parse_page_size(value: str | None, default: int, maximum: int) -> int:
    """`pageSize` as the real API reads it: 0 or absent is the default, above max is coerced."""
    if value is None or value == "":
        return default
    try:
        size = int(value)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid value for pageSize: {value!r}.", field="page_size") from exc
    if size < 0:
        raise InvalidArgument("pageSize must not be negative.", field="page_size")
    if size == 0:
        return default
    return min(size, maximum)
