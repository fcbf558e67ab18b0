"""Our server frames, parsed back by an independent implementation (websockets' parser)."""

from __future__ import annotations

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from control_room.ws.frames import PING_FRAME, close_frame, text_frame


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 300_000])
def test_text_frames_of_every_length_class(size: int) -> None:
    payload = b"x" * size
    frame = parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


def test_ping_and_close() -> None:
    assert parse(PING_FRAME).opcode is Opcode.PING
    frame = parse(close_frame(1001, "server shutting down"))
    assert frame.opcode is Opcode.CLOSE
    assert Close.parse(frame.data) == Close(1001, "server shutting down")
