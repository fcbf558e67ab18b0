"""Client frames as real clients send them (built by websockets, an independent
implementation), and every rule a client can break."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode

from control_room.ws.reader import (
    Control,
    Message,
    ProtocolViolation,
    Reader,
    close_code,
)

LIMIT = 64 * 1024


def client(frame: Frame, *, deflate: bool = False) -> bytes:
    """`frame` as a browser would send it: masked, compressed if negotiated."""
    extensions = [PerMessageDeflate(False, True, 15, 15)] if deflate else []
    return frame.serialize(mask=True, extensions=extensions)


def test_text_binary_and_control_frames() -> None:
    reader = Reader(LIMIT)
    data = (
        client(Frame(Opcode.TEXT, b'{"type":"subscribe"}'))
        + client(Frame(Opcode.BINARY, b"\x81\xa4type"))
        + client(Frame(Opcode.PING, b"hi"))
        + client(Frame(Opcode.PONG, b""))
    )
    assert reader.feed(data) == [
        Message(0x1, b'{"type":"subscribe"}'),
        Message(0x2, b"\x81\xa4type"),
        Control(0x9, b"hi"),
        Control(0xA, b""),
    ]


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=50))
def test_any_split_of_the_stream_gives_the_same_messages(payload: bytes, step: int) -> None:
    data = client(Frame(Opcode.BINARY, payload)) + client(Frame(Opcode.PING, b"x"))
    reader = Reader(LIMIT)
    events = []
    for i in range(0, len(data), step):
        events.extend(reader.feed(data[i : i + step]))
    assert events == [Message(0x2, payload), Control(0x9, b"x")]


def test_fragments_are_reassembled_with_controls_in_between() -> None:
    reader = Reader(LIMIT)
    data = (
        client(Frame(Opcode.TEXT, b"hel", fin=False))
        + client(Frame(Opcode.PING, b"p"))
        + client(Frame(Opcode.CONT, b"lo", fin=True))
    )
    assert reader.feed(data) == [Control(0x9, b"p"), Message(0x1, b"hello")]


def test_compressed_messages_are_inflated() -> None:
    reader = Reader(LIMIT, deflate=True)
    text = b'{"type":"sendMessage","prompt":"' + b"please " * 500 + b'"}'
    data = client(Frame(Opcode.TEXT, text), deflate=True)
    assert len(data) < len(text) / 10
    assert reader.feed(data) == [Message(0x1, text)]


def test_a_compression_bomb_is_refused_as_too_big() -> None:
    reader = Reader(LIMIT, deflate=True)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"\0" * (LIMIT * 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    frame = Frame(Opcode.BINARY, payload[:-4], rsv1=True)
    with pytest.raises(ProtocolViolation) as err:
        reader.feed(_raw(frame))
    assert err.value.code == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(Opcode.TEXT, b"x", rsv2=True), 1002),
        (Frame(Opcode.TEXT, b"x", rsv1=True), 1002),  # no deflate negotiated
        (Frame(Opcode.PING, b"x", fin=False), 1002),
        (Frame(Opcode.PING, b"x" * 126), 1002),
        (Frame(Opcode.CONT, b"x"), 1002),
        (Frame(Opcode.TEXT, b"\xff\xfe"), 1007),
        (Frame(Opcode.BINARY, b"x" * (LIMIT + 1)), 1009),
    ],
)
def test_broken_rules_give_the_close_code_to_send(frame: Frame, code: int) -> None:
    with pytest.raises(ProtocolViolation) as err:
        Reader(LIMIT).feed(_raw(frame))
    assert err.value.code == code


def _raw(frame: Frame) -> bytes:
    """Serialise without websockets' own checks (they would refuse the bad frames)."""
    head = bytearray([(0x80 if frame.fin else 0) | frame.opcode.value])
    head[0] |= (0x40 if frame.rsv1 else 0) | (0x20 if frame.rsv2 else 0)
    mask = os.urandom(4)
    n = len(frame.data)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(frame.data))
    return bytes(head) + mask + body


def test_unmasked_frames_and_unknown_opcodes_are_refused() -> None:
    with pytest.raises(ProtocolViolation, match="masked"):
        Reader(LIMIT).feed(Frame(Opcode.TEXT, b"x").serialize(mask=False))
    with pytest.raises(ProtocolViolation, match="opcode"):
        Reader(LIMIT).feed(bytes([0x83, 0x80]) + b"\0\0\0\0")


def test_a_huge_declared_length_is_refused_before_any_payload_arrives() -> None:
    head = bytes([0x82, 0x80 | 127]) + (2**40).to_bytes(8, "big")
    with pytest.raises(ProtocolViolation) as err:
        Reader(LIMIT).feed(head)
    assert err.value.code == 1009


def test_close_codes() -> None:
    assert close_code(Close(1000, "bye").serialize()) == (1000, "bye")
    assert close_code(b"") == (1005, "")
    for bad in (b"\x03", (1005).to_bytes(2, "big"), (999).to_bytes(2, "big")):
        with pytest.raises(ProtocolViolation):
            close_code(bad)
