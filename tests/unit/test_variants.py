"""Wire variants: deflate, MessagePack, JSON Patch and batching, each prepared once."""

from __future__ import annotations

import zlib
from typing import Any

import jsonpatch
import msgspec
from hypothesis import given
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from control_room.broker.base import Batch
from control_room.broker.memory import MemoryBroker
from control_room.models import Approval, Change, JulesSession, PullRequest
from control_room.views import DEFAULT_VIEW, View
from control_room.ws.prepared import Variant, batch_frames, deflate
from tests.factories import session

T = "2026-11-26T00:00:00.000Z"


def parse_all(data: bytes, compressed: bool = False) -> list[Frame]:
    """Frames as websockets (an independent implementation) reads them; with `compressed`,
    through its permessage-deflate extension, as a client that negotiated it would."""
    extensions = (
        [PerMessageDeflate(True, False, 15, 15)] if compressed else None  # no context takeover
    )
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out: list[Frame] = []
    while reader.buffer:
        gen = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
        try:
            while True:
                next(gen)
        except StopIteration as done:
            out.append(done.value)
    return out


def batch_of(*changes: Change) -> Batch:
    return Batch(MemoryBroker(10).stamp(list(changes), T))


def big(sid: str, state: str = "QUEUED") -> JulesSession:
    return msgspec.structs.replace(session(sid, state), title="Refactor the poller " * 40)


def test_deflate_compresses_big_messages_once_and_leaves_small_ones_plain() -> None:
    batch = batch_of(
        Change("created", "big", None, big("big")), Change("created", "s", None, session("s"))
    )
    key = (DEFAULT_VIEW, Variant(deflate=15))
    data, count = batch_frames(batch, key)
    large, small = parse_all(data, compressed=True)
    assert count == 2
    assert large.data == batch.entries[0].payload
    assert small.data == batch.entries[1].payload
    assert len(data) < len(batch.entries[0].payload) / 3 + len(small.data) + 20
    assert data[0] & 0x40  # RSV1 set on the big one...
    assert not data[-len(small.data) - 2] & 0x40  # ...clear on the small one
    # Another view that passes the same entries reuses their compressed bytes (the batch's).
    again = batch_frames(batch, (View.of(states=["QUEUED"]), Variant(deflate=15)))[0]
    assert again == data
    compressed = [k for k in batch.forms if k[-1] == 15]
    assert compressed == [("sessions", batch.entries[0].seq, "pass", "json", 15)]


def test_msgpack_frames_are_binary_with_the_same_shapes() -> None:
    batch = batch_of(Change("created", "a", None, session("a")))
    (frame,) = parse_all(batch_frames(batch, (DEFAULT_VIEW, Variant(encoding="msgpack")))[0])
    assert frame.opcode is Opcode.BINARY
    assert msgspec.msgpack.decode(frame.data) == msgspec.json.decode(batch.entries[0].payload)


def test_batching_sends_one_message_per_poll() -> None:
    batch = batch_of(
        Change("created", "a", None, session("a")), Change("created", "b", None, session("b"))
    )
    for encoding, decode in (("json", msgspec.json.decode), ("msgpack", msgspec.msgpack.decode)):
        data, count = batch_frames(batch, (DEFAULT_VIEW, Variant(encoding=encoding, batch=True)))  # type: ignore[arg-type]
        (frame,) = parse_all(data)
        message = decode(frame.data)
        assert count == 1
        assert message["type"] == "batch"
        assert [d["seq"] for d in message["deltas"]] == [1, 2]


def test_patch_updates_carry_operations_and_leave_other_kinds_whole() -> None:
    before, after = session("a"), session("a", "PLANNING")
    batch = batch_of(
        Change("updated", "a", before, after), Change("created", "b", None, session("b"))
    )
    update, create = parse_all(batch_frames(batch, (DEFAULT_VIEW, Variant(patch=True)))[0])
    message = msgspec.json.decode(update.data)
    assert set(message) == {"type", "sessionId", "patch", "timestamp", "seq"}
    assert message["patch"] == [{"op": "replace", "path": "/state", "value": "PLANNING"}]
    assert msgspec.json.decode(create.data)["type"] == "created"


sessions = st.builds(
    lambda state, title, approved, pr, stalled: msgspec.structs.replace(
        session("x", state, title),
        approval=Approval(state="approved", approvedAt=approved)
        if approved
        else Approval("pending"),
        pullRequest=PullRequest(url=pr, title=title) if pr else None,
        stalledSince=stalled,
    ),
    st.sampled_from(["QUEUED", "IN_PROGRESS", "COMPLETED"]),
    st.text(max_size=20),
    st.one_of(st.none(), st.just("2026-01-01T00:00:00Z")),
    st.one_of(st.none(), st.text(min_size=1, max_size=10)),
    st.one_of(st.none(), st.just("2026-01-02T00:00:00Z")),
)


@given(sessions, sessions)
def test_applying_the_patch_to_before_gives_exactly_after(
    before: JulesSession, after: JulesSession
) -> None:
    batch = batch_of(Change("updated", "x", before, after))
    data, count = batch_frames(batch, (DEFAULT_VIEW, Variant(patch=True)))
    if before == after:  # the diff never publishes these; nothing to check
        return
    (frame,) = parse_all(data)
    message: dict[str, Any] = msgspec.json.decode(frame.data)
    copy = msgspec.json.decode(msgspec.json.encode(before))
    patched = jsonpatch.apply_patch(copy, message["patch"])
    assert patched == msgspec.json.decode(msgspec.json.encode(after))
    assert count == 1


def test_a_mix_of_variants_prepares_each_once() -> None:
    batch = batch_of(Change("created", "big", None, big("big")))
    keys = [
        (DEFAULT_VIEW, Variant()),
        (DEFAULT_VIEW, Variant(deflate=15)),
        (DEFAULT_VIEW, Variant(encoding="msgpack")),
        (DEFAULT_VIEW, Variant(encoding="msgpack", deflate=15, batch=True)),
    ]
    built = [batch_frames(batch, key) for key in keys for _ in range(50)]
    assert len(batch.prepared) == 4
    assert len({id(b[0]) for b in built}) == 4


def test_consecutive_messages_of_the_shared_compressor_inflate_each_on_its_own() -> None:
    payloads = [b'{"title": "' + (b"refactor %d " % i) * 200 + b'"}' for i in range(3)]
    for payload in payloads:
        compressed = deflate(payload, 15)
        inflater = zlib.decompressobj(-15)  # a fresh window: no context takeover
        assert inflater.decompress(compressed + b"\x00\x00\xff\xff") == payload
    # Compressing the same message again gives the same bytes: nothing of the last one stays.
    assert deflate(payloads[0], 15) == deflate(payloads[0], 15)
    assert deflate(payloads[0], 15, shared=False) == deflate(payloads[0], 15)
