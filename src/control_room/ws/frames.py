"""Pure WebSocket framing (RFC 6455) for server-to-client frames: no I/O, no masking."""

from __future__ import annotations

import struct
from typing import Final

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
FIN: Final = 0x80
RSV1: Final = 0x40  # "this message is compressed" under permessage-deflate (RFC 7692)

PING_FRAME: Final = bytes((FIN | OP_PING, 0))
"""An empty ping: the same two bytes for every client."""


def _header(opcode: int, length: int, flags: int = FIN) -> bytes:
    first = flags | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65_536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying `payload` (UTF-8 JSON)."""
    return _header(OP_TEXT, len(payload)) + payload


def data_frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """One unfragmented, unmasked data frame; `rsv1` marks a compressed message."""
    return _header(opcode, len(payload), FIN | RSV1 if rsv1 else FIN) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a status code and a short reason (at most 123 bytes, per RFC)."""
    body = struct.pack("!H", code) + reason.encode()[:123]
    return _header(OP_CLOSE, len(body)) + body


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One unmasked control frame (a ping or pong; payload at most 125 bytes, per RFC)."""
    return _header(opcode, len(payload)) + payload[:125]
