"""The broker interface: numbers deltas, keeps their history, delivers them to local sinks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from control_room.models import Change, Position, SessionDelta, encode
from control_room.ws.frames import text_frame


class HistoryGone(Exception):
    """The requested position is older than the retained history (or from another epoch)."""

    def __init__(self, reason: str, oldest_seq: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.oldest_seq = oldest_seq


class Entry:
    """One delta in history: its number, its session and its JSON bytes (encoded once)."""

    __slots__ = ("payload", "seq", "session_id")

    def __init__(self, seq: int, session_id: str, payload: bytes) -> None:
        self.seq = seq
        self.session_id = session_id
        self.payload = payload


class Batch:
    """The deltas of one poll: encoded once, framed once, written to every client as is."""

    __slots__ = ("_frames", "deltas", "entries")

    def __init__(self, deltas: Sequence[SessionDelta]) -> None:
        self.deltas = deltas
        self.entries = [Entry(d.seq, d.sessionId, encode(d)) for d in deltas]
        self._frames: bytes | None = None

    @property
    def first_seq(self) -> int:
        """The seq of the first delta."""
        return self.entries[0].seq

    @property
    def last_seq(self) -> int:
        """The seq of the last delta."""
        return self.entries[-1].seq

    @property
    def frames(self) -> bytes:
        """Every delta as one WebSocket text frame, concatenated: built on first use, once."""
        if self._frames is None:
            self._frames = b"".join(text_frame(e.payload) for e in self.entries)
        return self._frames

    def frames_after(self, seq: int) -> tuple[bytes, int]:
        """Frames of the deltas numbered above `seq`, and how many there are."""
        if self.first_seq > seq:
            return self.frames, len(self.entries)
        tail = [e for e in self.entries if e.seq > seq]
        return b"".join(text_frame(e.payload) for e in tail), len(tail)


class Sink(Protocol):
    """Something in this process that receives every published batch, synchronously."""

    def deliver(self, batch: Batch) -> None:
        """Take the batch; must not block or await (a slow reader is the sink's problem)."""


class Broker(Protocol):
    """Numbers deltas, keeps history, fans batches out to the sinks of this process."""

    @property
    def position(self) -> Position:
        """The epoch and the seq of the last published delta."""

    def stamp(self, changes: Sequence[Change], timestamp: str) -> list[SessionDelta]:
        """Number changes from the current position, without publishing them."""

    def publish(self, batch: Batch) -> None:
        """Append a stamped batch to history and deliver it to every sink."""

    def add_sink(self, sink: Sink) -> None:
        """Deliver every later batch to `sink`."""

    async def history(
        self, since: int, limit: int | None = None, session_id: str | None = None
    ) -> list[Entry]:
        """Entries after `since`, oldest first; HistoryGone when `since` is no longer kept."""
