"""Standard Webhooks signing, pure: the key from a secret, the message id, the headers.

https://www.standardwebhooks.com/ — the receiver recomputes an HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}` with the shared key and compares it with the
`v1,<base64>` signature. The id is stable across retries (receivers deduplicate on it);
the timestamp is the attempt's own (receivers reject stale ones), so each attempt is
signed afresh.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

SECRET_PREFIX: Final = "whsec_"
SIGNATURE_VERSION: Final = "v1"
CONTENT_TYPE: Final = "application/json"
USER_AGENT: Final = "jules-control-room-webhook/1"


class BadSecret(ValueError):
    """A `whsec_` secret whose rest is not base64 (the message never quotes the secret)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key: base64-decoded after `whsec_`, else the string's UTF-8 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadSecret("a secret starting with whsec_ must be base64 after the prefix") from None
    if not key:
        raise BadSecret("a secret starting with whsec_ must not be empty after the prefix")
    return key


def message_id(epoch: str, seq: int) -> str:
    """The delivery's `webhook-id`: the same for every attempt, unique per delta."""
    return f"{epoch}-{seq}"


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def headers(msg_id: str, timestamp: int, body: bytes, key: bytes | None) -> dict[str, str]:
    """Every header of one attempt; `webhook-signature` only when there is a key."""
    result = {
        "Content-Type": CONTENT_TYPE,
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if key is not None:
        result["webhook-signature"] = signature(key, msg_id, timestamp, body)
    return result
