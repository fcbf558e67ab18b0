"""Frames prepared once per (view, wire variant) and shared by every client of that pair.

Like gorilla/websocket's `PreparedMessage` (used by Centrifugo), a broadcast's frames are
built the first time a client of a given view and variant needs them and cached on the
batch; every other client of the pair is handed the very same bytes. Each step is cached
at the level it depends on, so no work is repeated across views or variants either:

- on the batch (`Batch.forms`), per entry: what a view makes of it (`created` / `deleted` for a
  filtered view), its JSON Patch form, its MessagePack form, its compressed form;
- on the batch (`Batch.prepared`): the whole frame sequence of one (view, variant).

Variants: encoding (`json` text frames, or `msgpack` binary frames with the same shapes),
`patch` (`updated` as RFC 6902 operations), `batch` (a poll's messages as one `batch`
message), and permessage-deflate (RFC 7692) with no context takeover, so one compressed
frame serves every client that negotiated the same window size.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from control_room import patch
from control_room.broker.base import SESSIONS, Batch, Channel, Entry
from control_room.messages import PatchDelta
from control_room.models import SessionDelta, encode
from control_room.views import View
from control_room.ws.frames import OP_BINARY, OP_TEXT, data_frame

Encoding = Literal["json", "msgpack"]

COMPRESSION_LEVEL: Final = 6
"""zlib's default: on this service's JSON (repetitive keys, ids, timestamps) level 6 takes
within a few percent of level 9's size at half its time; compression runs once per message
per variant, not per client, so its cost hardly shows next to the sends."""
DEFAULT_COMPRESSION_MIN_BYTES: Final = 512  # see config.DEFAULT_COMPRESSION_MIN_BYTES
_SYNC_TAIL: Final = b"\x00\x00\xff\xff"  # RFC 7692 7.2.1: removed from each message's end

_delta_decoder: Final = msgspec.json.Decoder(SessionDelta)
_msgpack_encoder: Final = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Variant:
    """How a client wants messages on the wire (the default is the seed's: JSON, one each).

    `deflate` is the negotiated server window size in bits (9-15), 0 when uncompressed;
    `min_compress` the smallest message compressed.
    """

    encoding: Encoding = "json"
    patch: bool = False
    batch: bool = False
    deflate: int = 0
    min_compress: int = DEFAULT_COMPRESSION_MIN_BYTES

    @property
    def opcode(self) -> int:
        """Text frames for JSON, binary for MessagePack."""
        return OP_TEXT if self.encoding == "json" else OP_BINARY


PLAIN: Final = Variant()

Key = tuple[View, Variant]
"""What clients share frames by."""


Forms = dict[Hashable, bytes]
"""What one broadcast (or one replay slice) made of its entries, by (channel, seq, form,
encoding[, compression]): built once, shared by every view and variant that needs it, and
dropped with the batch, so history holds only each entry's published JSON."""


def _json_form(entry: Entry, form: str, forms: Forms) -> bytes:
    """The entry's JSON as `form`: `pass` (as published), `created`, `deleted`, `patch`."""
    if form == "pass":
        return entry.payload
    cache_key = (entry.channel, entry.seq, form, "json")
    found = forms.get(cache_key)
    if found is not None:
        return found
    delta = _delta_decoder.decode(entry.payload)
    message: SessionDelta | PatchDelta
    if form == "created":  # entering a view: what it is now, nothing of before
        message = msgspec.structs.replace(delta, type="created", before=None)
    elif form == "deleted":  # leaving it: what it was, nothing after
        message = msgspec.structs.replace(delta, type="deleted", after=None)
    else:
        message = PatchDelta(
            sessionId=delta.sessionId,
            patch=json_patch(delta),
            timestamp=delta.timestamp,
            seq=delta.seq,
        )
    payload = forms[cache_key] = encode(message)
    return payload


def json_patch(delta: SessionDelta) -> list[dict[str, object]]:
    """RFC 6902 operations turning `before` into `after` (see patch.py)."""
    return patch.diff(msgspec.to_builtins(delta.before), msgspec.to_builtins(delta.after))


def _encoded(entry: Entry, form: str, encoding: Encoding, forms: Forms) -> bytes:
    """The entry in `form` and `encoding` (MessagePack transcoded from the JSON, once)."""
    json = _json_form(entry, form, forms)
    if encoding == "json":
        return json
    cache_key = (entry.channel, entry.seq, form, encoding)
    found = forms.get(cache_key)
    if found is None:
        found = forms[cache_key] = _msgpack_encoder.encode(msgspec.json.decode(json))
    return found


def _form(entry: Entry, view: View, variant: Variant) -> str | None:
    """How `view` and `variant` see the entry: a form name, or None when not at all."""
    projection = view.project(entry)
    if projection == "drop":
        return None
    patchable = entry.channel == SESSIONS and entry.type == "updated"
    if projection == "pass" and variant.patch and patchable:
        return "patch"
    return projection


def messages(
    entries: Iterable[Entry], key: Key, forms: Forms | None = None
) -> list[tuple[Entry | None, str, bytes]]:
    """(entry, form, encoded message) for every message `key`'s clients receive, in order."""
    forms = {} if forms is None else forms
    view, variant = key
    out: list[tuple[Entry | None, str, bytes]] = []
    for entry in entries:
        form = _form(entry, view, variant)
        if form is not None:
            out.append((entry, form, _encoded(entry, form, variant.encoding, forms)))
    return out


def payloads(entries: Iterable[Entry], view: View) -> list[bytes]:
    """The JSON messages `view` receives for `entries`, in order (the default variant)."""
    return [payload for _, _, payload in messages(entries, (view, PLAIN))]


def batch_message(parts: Sequence[bytes], encoding: Encoding) -> bytes:
    """One `{"type": "batch", "deltas": [...]}` message spliced from encoded messages."""
    if encoding == "json":
        return b'{"type":"batch","deltas":[' + b",".join(parts) + b"]}"
    return _msgpack_encoder.encode({"type": "batch", "deltas": [msgspec.Raw(p) for p in parts]})


OFF_LOOP_BYTES: Final = 256 * 1024
"""A single message at least this big is compressed or transcoded in a worker thread: at
~50 MB/s for level-6 deflate, 256 KiB is ~5 ms, about the most one client may hold the loop."""
_compressors: dict[int, Any] = {}
"""One compressor per window size, reused for every broadcast message (the event loop's
thread only). Making a compressor costs more than compressing a 1 KB delta with it."""


def deflate(payload: bytes, wbits: int, *, shared: bool = True) -> bytes:
    """One message compressed on its own (RFC 7692, no context takeover), tail removed.

    Ending each message with a full flush resets the compressor, so no message refers to
    an earlier one and a client inflates each with a fresh window, as negotiated; a shared
    compressor only saves making one per message. `shared=False` (a compressor of its own)
    is for calls off the event loop's thread.
    """
    compressor = _compressors.get(wbits) if shared else None
    if compressor is None:
        compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -wbits)
        if shared:
            _compressors[wbits] = compressor
    data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    return data[:-4] if data.endswith(_SYNC_TAIL) else data


def _frame(
    entry: Entry | None, form: str, payload: bytes, variant: Variant, forms: Forms | None = None
) -> bytes:
    if not variant.deflate or len(payload) < variant.min_compress:
        return data_frame(variant.opcode, payload)
    if entry is None or forms is None:  # a batch message (once per key), or for one client
        compressed = deflate(payload, variant.deflate, shared=form != "single")
        return data_frame(variant.opcode, compressed, rsv1=True)
    cache_key = (entry.channel, entry.seq, form, variant.encoding, variant.deflate)
    cached = forms.get(cache_key)
    if cached is None:
        cached = forms[cache_key] = deflate(payload, variant.deflate)
    return data_frame(variant.opcode, cached, rsv1=True)


def frames(entries: Sequence[Entry], key: Key, forms: Forms | None = None) -> tuple[bytes, int]:
    """The wire bytes of `entries` for clients of `key`, and how many messages they hold.

    `forms` caches what is made of each entry (a batch's, shared by its keys); without it
    the forms live as long as this call (a replay slice for one client).
    """
    forms = {} if forms is None else forms
    variant = key[1]
    found = messages(entries, key, forms)
    if not found:
        return b"", 0
    if variant.batch:
        body = batch_message([payload for _, _, payload in found], variant.encoding)
        return _frame(None, "batch", body, variant), 1
    return b"".join(_frame(e, form, p, variant, forms) for e, form, p in found), len(found)


def batch_frames(batch: Batch, key: Key) -> tuple[bytes, int]:
    """The batch's frames for `key`: built on first use, then shared (cached on the batch)."""
    found = batch.prepared.get(key)
    if found is None:
        found = batch.prepared[key] = frames(batch.events, key, batch.forms)
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
    return frames(tail, key, batch.forms)


def single(message: bytes, variant: Variant) -> bytes:
    """One message made for one client (a snapshot, a reset, a result) in its variant.

    `message` is JSON; MessagePack clients get it transcoded. Safe to call off the event
    loop (a big snapshot is compressed in a worker thread: see `single_off_loop`).
    """
    if variant.encoding == "msgpack":
        message = _msgpack_encoder.encode(msgspec.json.decode(message))
    return _frame(None, "single", message, variant)


async def single_off_loop(message: bytes, variant: Variant) -> bytes:
    """`single`, in a worker thread when the message is big and needs work (compression,
    MessagePack): compressing a 10 MB snapshot takes half a second, which would otherwise
    stall every other client (zlib lets other threads run while it works)."""
    plain = variant.encoding == "json" and not variant.deflate
    if plain or len(message) < OFF_LOOP_BYTES:
        return single(message, variant)
    return await asyncio.to_thread(single, message, variant)
