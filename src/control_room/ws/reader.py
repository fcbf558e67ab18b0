"""Pure parsing of client-to-server WebSocket frames (RFC 6455 §5), with permessage-deflate.

Clients send little (pongs, pings, a command now and then), so the reader is built to cost
nothing while idle: no buffer until a partial frame arrives, no decompressor between
messages (clients are asked not to keep a compression context, see handshake.py). Every
rule a client can break ends in `ProtocolViolation` with the close code to send.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Final, NamedTuple

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
DATA_OPCODES: Final = frozenset({OP_TEXT, OP_BINARY})
CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})

PROTOCOL_ERROR: Final = 1002
INVALID_PAYLOAD: Final = 1007
MESSAGE_TOO_BIG: Final = 1009
MAX_CONTROL_PAYLOAD: Final = 125  # RFC 6455 §5.5
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.2: appended before inflating


class ProtocolViolation(Exception):
    """The client broke the protocol: close with `code` (1002, 1007 or 1009), say `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message(NamedTuple):
    """A whole data message (text or binary), reassembled and decompressed."""

    opcode: int
    data: bytes


class Control(NamedTuple):
    """A ping, pong or close frame. For a close, `data` is its raw payload."""

    opcode: int
    data: bytes


Event = Message | Control


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR `data` with the repeating 4-byte `mask` (one big-integer operation, in C)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def close_code(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a client's close frame; ProtocolViolation if they are invalid.

    No code is 1005 (RFC 6455 §7.1.5); codes that may not be sent are refused (§7.4).
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolViolation(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    valid = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
    if not valid or code in (1004, 1005, 1006):
        raise ProtocolViolation(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return code, reason


class Reader:
    """Turns the bytes a client sends into events; one per connection, feed it as data comes.

    `max_message` bounds a message after decompression; `deflate` says whether
    permessage-deflate was negotiated (RSV1 marks a compressed message).
    """

    __slots__ = (
        "_buffer",
        "_compressed",
        "_fragments",
        "_opcode",
        "_size",
        "deflate",
        "max_message",
    )

    def __init__(self, max_message: int, *, deflate: bool = False) -> None:
        self.max_message = max_message
        self.deflate = deflate
        self._buffer: bytes = b""
        self._fragments: list[bytes] | None = None  # a fragmented data message in progress
        self._opcode = 0
        self._compressed = False
        self._size = 0

    def feed(self, data: bytes) -> list[Event]:
        """Every event completed by `data`, in order; ProtocolViolation on a broken rule."""
        buffer = self._buffer + data if self._buffer else data
        events: list[Event] = []
        offset = 0
        for event, used in self._frames(buffer):
            offset = used
            if event is not None:
                events.append(event)
        self._buffer = bytes(buffer[offset:]) if offset < len(buffer) else b""
        return events

    def _frames(self, buffer: bytes) -> Iterator[tuple[Event | None, int]]:
        offset, end = 0, len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            fin, rsv1, opcode = bool(first & 0x80), bool(first & 0x40), first & 0x0F
            if first & 0x30:
                raise ProtocolViolation(PROTOCOL_ERROR, "reserved bits RSV2/RSV3 are set")
            if not second & 0x80:
                raise ProtocolViolation(PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - offset < 4:
                    return
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                head = 4
            elif length == 127:
                if end - offset < 10:
                    return
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                if length >> 63:
                    raise ProtocolViolation(PROTOCOL_ERROR, "frame length has its top bit set")
                head = 10
            self._check(fin, rsv1, opcode, length)
            if end - offset < head + 4 + length:
                return
            mask = buffer[offset + head : offset + head + 4]
            start = offset + head + 4
            payload = unmask(buffer[start : start + length], mask)
            offset = start + length
            yield self._frame(fin, rsv1, opcode, payload), offset

    def _check(self, fin: bool, rsv1: bool, opcode: int, length: int) -> None:
        """Refuse a frame by its header alone, before buffering its payload."""
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise ProtocolViolation(PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(PROTOCOL_ERROR, "control frame over 125 bytes")
            if rsv1:
                raise ProtocolViolation(PROTOCOL_ERROR, "RSV1 on a control frame")
            return
        if opcode in DATA_OPCODES:
            if self._fragments is not None:
                raise ProtocolViolation(PROTOCOL_ERROR, "new message before the last ended")
            if rsv1 and not self.deflate:
                raise ProtocolViolation(PROTOCOL_ERROR, "RSV1 set without permessage-deflate")
        elif opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise ProtocolViolation(PROTOCOL_ERROR, "continuation with no message begun")
            if rsv1:
                raise ProtocolViolation(PROTOCOL_ERROR, "RSV1 on a continuation frame")
        else:
            raise ProtocolViolation(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        size = length + (self._size if opcode == OP_CONTINUATION else 0)
        if size > self.max_message:
            raise ProtocolViolation(MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")

    def _frame(self, fin: bool, rsv1: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode in CONTROL_OPCODES:
            return Control(opcode, payload)
        if opcode != OP_CONTINUATION:
            self._opcode, self._compressed, self._size = opcode, rsv1, 0
            if fin:
                return self._message([payload])
            self._fragments = [payload]
            self._size = len(payload)
            return None
        assert self._fragments is not None
        self._fragments.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        fragments, self._fragments = self._fragments, None
        return self._message(fragments)

    def _message(self, fragments: list[bytes]) -> Message:
        data = b"".join(fragments)
        if self._compressed:
            inflater = zlib.decompressobj(-15)
            try:
                data = inflater.decompress(data + _DEFLATE_TAIL, self.max_message + 1)
            except zlib.error:
                raise ProtocolViolation(INVALID_PAYLOAD, "compressed message is corrupt") from None
            if len(data) > self.max_message or inflater.unconsumed_tail:
                raise ProtocolViolation(MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")
        if self._opcode == OP_TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolViolation(INVALID_PAYLOAD, "text message is not UTF-8") from None
        self._size = 0
        return Message(self._opcode, data)
