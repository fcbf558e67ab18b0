"""Frames prepared once per (view, wire variant) and shared by every client of that pair.

Like gorilla/websocket's `PreparedMessage` (used by Centrifugo), a broadcast's frames are
built the first time a client of a given view and variant needs them and cached on the
batch; every other client of the pair is handed the very same bytes. What a view makes of
an event (passed as is, or turned into a `created` / `deleted` for that view) is encoded
once per event and cached on the entry, so a replay or another view reuses it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from control_room.broker.base import Batch, Channel, Entry
from control_room.models import SessionDelta, encode
from control_room.views import View
from control_room.ws.frames import text_frame

_delta_decoder: Final = msgspec.json.Decoder(SessionDelta)


@dataclass(frozen=True, slots=True)
class Variant:
    """How a client wants messages on the wire (the seed's: JSON text frames, one each)."""

    encoding: str = "json"


PLAIN: Final = Variant()

Key = tuple[View, Variant]
"""What clients share frames by."""


def _transformed(entry: Entry, kind: str) -> bytes:
    """The entry as a `created` (or `deleted`) delta of the same seq, for a filtered view."""
    derived = entry.derived
    if derived is None:
        derived = entry.derived = {}
    cache_key: Hashable = (kind, "json")
    payload = derived.get(cache_key)
    if payload is None:
        delta = _delta_decoder.decode(entry.payload)
        if kind == "created":
            message = SessionDelta(
                type="created",
                sessionId=delta.sessionId,
                after=delta.after,
                timestamp=delta.timestamp,
                seq=delta.seq,
            )
        else:
            message = SessionDelta(
                type="deleted",
                sessionId=delta.sessionId,
                before=delta.before,
                timestamp=delta.timestamp,
                seq=delta.seq,
            )
        payload = derived[cache_key] = encode(message)
    return payload


def payloads(entries: Iterable[Entry], view: View) -> list[bytes]:
    """The messages `view` receives for `entries`, JSON-encoded, in order."""
    out: list[bytes] = []
    for entry in entries:
        projection = view.project(entry)
        if projection == "pass":
            out.append(entry.payload)
        elif projection != "drop":
            out.append(_transformed(entry, projection))
    return out


def frames(entries: Sequence[Entry], key: Key) -> tuple[bytes, int]:
    """The wire bytes of `entries` for clients of `key`, and how many messages they hold."""
    view, _variant = key
    messages = payloads(entries, view)
    return b"".join(text_frame(p) for p in messages), len(messages)


def batch_frames(batch: Batch, key: Key) -> tuple[bytes, int]:
    """The batch's frames for `key`: built on first use, then shared (cached on the batch)."""
    found = batch.prepared.get(key)
    if found is None:
        found = batch.prepared[key] = frames(batch.events, key)
    return found


def batch_frames_after(batch: Batch, key: Key, after: dict[Channel, int]) -> tuple[bytes, int]:
    """The batch's frames for `key`, leaving out events at or before `after[channel]`.

    Used when a resuming client's replay overlapped a live batch held back meanwhile:
    usually every event is newer and the shared frames are used as they are.
    """
    events = batch.events
    tail = [e for e in events if e.seq > after.get(e.channel, 0)]
    if len(tail) == len(events):
        return batch_frames(batch, key)
    return frames(tail, key)
