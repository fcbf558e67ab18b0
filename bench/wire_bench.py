"""MessagePack vs JSON, and permessage-deflate: encode time and bytes of the service's messages.

`python -m bench.wire_bench [--json]`. The messages are the service's own, built the way it
builds them: sessions of the simulator's large account (`Simulator.large_account`) mapped
by `jules.mapping`, one poll's `updated` deltas from `diff` after the account moved on,
numbered by the memory broker; activities decoded by `jules.activities` (a plan, a change
set); the broadcast bench's ~1.1 KB delta; its JSON Patch form; a snapshot of the account.

For each, median over repeats of many iterations, in µs per message:
- `json` / `msgpack`: msgspec encoding the typed message (what a service encoding straight
  to MessagePack would pay);
- `json→msgpack`: what the service pays, once per (message, variant) per broadcast: the
  MessagePack form transcoded from the JSON bytes it already has (`ws.prepared`);
- `deflate`: `ws.prepared.deflate` of the JSON (level 6, no context takeover), once per
  message per broadcast;
- `decode json` / `decode msgpack`: a client decoding the message to plain objects;
- for `updated` deltas, making their JSON Patch form, once per broadcast for patch clients.
Bytes: JSON, MessagePack, and each compressed (as permessage-deflate sends them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import jsonpatch
import msgspec

from bench.broadcast_server import bench_session
from control_room import patch
from control_room.broker.memory import MemoryBroker
from control_room.diff import diff
from control_room.jules.activities import decode_activity
from control_room.jules.mapping import MappedListing, map_listing
from control_room.jules.simulator import Simulator
from control_room.messages import ActivityMessage, PatchDelta, SnapshotMessage
from control_room.models import Change, JulesSession, Position, SessionDelta
from control_room.ws.prepared import deflate, json_patch

ACCOUNT_SESSIONS: Final = 250  # the fan-out bench's account size: three pages
ACCOUNT_ACTIVE: Final = 20  # issue 12's large account: 20 of them in flight
TICKS: Final = 5  # the account moves on this many seconds between the two listings
WINDOW_BITS: Final = 15  # what every client that offers bare permessage-deflate gets
REPEATS: Final = 5  # medians of this many timings
MIN_TIMING_S: Final = 0.05  # each timing runs at least this long (clock resolution, noise)
TIMESTAMP: Final = "2026-11-26T07:40:00.000Z"

_json_encode: Final = msgspec.json.Encoder().encode
_msgpack_encode: Final = msgspec.msgpack.Encoder().encode


def _listing(sim: Simulator) -> list[bytes]:
    return [msgspec.json.encode(s) for s in sim.sessions_newest_first()]


def messages() -> dict[str, msgspec.Struct]:
    """The service's messages, by name, built as the service builds them."""
    clock = [time.time()]
    sim = Simulator.large_account(
        ACCOUNT_SESSIONS, ACCOUNT_ACTIVE, seed=7, clock=lambda: clock[0], activity_interval=1.0
    )
    first = map_listing(_listing(sim), MappedListing.empty())
    for _ in range(TICKS):  # a few seconds of the account's life, on a clock of our own
        clock[0] += 1.0
        sim.tick()
    second = map_listing(_listing(sim), first)
    broker = MemoryBroker(100, Position("bench", 0))
    changes = [c for c in diff(first.sessions, second.sessions) if c.type == "updated"]
    if not changes:
        raise RuntimeError("the simulated account did not change: no delta to measure")
    deltas = broker.stamp(changes, TIMESTAMP)
    # The poll's most typical delta: the median by size.
    delta = sorted(deltas, key=lambda d: len(_json_encode(d)))[len(deltas) // 2]
    before = bench_session("bench 41 1764142800000000000", "IN_PROGRESS")
    after = bench_session("bench 42 1764142800050000000", "IN_PROGRESS")
    broadcast = broker.stamp([Change("updated", before.id, before, after)], TIMESTAMP)[0]
    activities = _activities(sim, list(second.sessions.values()))
    found: dict[str, msgspec.Struct] = {
        "updated delta, the broadcast bench's": broadcast,
        "updated delta, a poll's median (simulator)": delta,
        "updated delta as JSON Patch": _patch(delta),
    }
    found.update(activities)
    found[f"snapshot of {len(second.sessions)} sessions"] = SnapshotMessage(
        epoch="bench", seq=delta.seq, sessions=list(second.sessions.values())
    )
    return found


def _patch(delta: SessionDelta) -> PatchDelta:
    return PatchDelta(
        sessionId=delta.sessionId, patch=json_patch(delta), timestamp=TIMESTAMP, seq=delta.seq
    )


def _activities(sim: Simulator, sessions: list[JulesSession]) -> dict[str, ActivityMessage]:
    """A plan and a change set, the activities with the most in them, as pushed."""
    wanted = {"planGenerated": "activity: plan generated", "changeSet": "activity: change set"}
    found: dict[str, ActivityMessage] = {}
    for session in sessions:
        for raw in sim.activities(session.id):
            activity = decode_activity(msgspec.json.encode(raw), session.id)
            kind = "changeSet" if activity.artifacts else activity.kind
            name = wanted.get(kind)
            if name is None or name in found:
                continue
            found[name] = ActivityMessage(
                sessionId=session.id, activity=activity, timestamp=TIMESTAMP, seq=1
            )
        if len(found) == len(wanted):
            break
    return found


def per_call_us(fn: Callable[[], Any]) -> float:
    """Median µs per call over REPEATS timings of at least MIN_TIMING_S each."""
    n = 1
    while True:  # find an iteration count that runs long enough
        started = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - started >= MIN_TIMING_S:
            break
        n *= 2
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        timings.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(timings)


def patch_form_us(delta: SessionDelta) -> float:
    """µs to make an `updated` delta's JSON Patch form from its JSON, as `ws.prepared` does
    once per broadcast for patch clients: decode, diff (`control_room.patch`), encode."""
    as_json = _json_encode(delta)
    decoder = msgspec.json.Decoder(SessionDelta)

    def form() -> bytes:
        return _json_encode(_patch(decoder.decode(as_json)))

    return per_call_us(form)


def patch_diff_us(delta: SessionDelta) -> tuple[float, float]:
    """µs of the diff alone: (the `jsonpatch` library's `make_patch`, `control_room.patch`),
    on the same two documents. Why the service diffs by itself: see patch.py."""
    before, after = msgspec.to_builtins(delta.before), msgspec.to_builtins(delta.after)
    ours = patch.diff(before, after)
    if jsonpatch.apply_patch(before, ours) != after:
        raise RuntimeError("control_room.patch does not give `after`")
    return (
        per_call_us(lambda: jsonpatch.make_patch(before, after).patch),
        per_call_us(lambda: patch.diff(before, after)),
    )


def measure(name: str, message: msgspec.Struct) -> dict[str, Any]:
    """Every figure of one message."""
    as_json = _json_encode(message)
    as_msgpack = _msgpack_encode(message)
    transcoded = _msgpack_encode(msgspec.json.decode(as_json))
    if msgspec.msgpack.decode(transcoded) != msgspec.json.decode(as_json):
        raise RuntimeError(f"{name}: the MessagePack form does not hold the same message")
    return {
        "message": name,
        "json_bytes": len(as_json),
        "msgpack_bytes": len(as_msgpack),
        "json_deflate_bytes": len(deflate(as_json, WINDOW_BITS)),
        "msgpack_deflate_bytes": len(deflate(as_msgpack, WINDOW_BITS)),
        "json_us": per_call_us(lambda: _json_encode(message)),
        "msgpack_us": per_call_us(lambda: _msgpack_encode(message)),
        "transcode_us": per_call_us(lambda: _msgpack_encode(msgspec.json.decode(as_json))),
        "deflate_us": per_call_us(lambda: deflate(as_json, WINDOW_BITS)),
        "decode_json_us": per_call_us(lambda: msgspec.json.decode(as_json)),
        "decode_msgpack_us": per_call_us(lambda: msgspec.msgpack.decode(as_msgpack)),
        "patch_form_us": (
            patch_form_us(message)
            if isinstance(message, SessionDelta) and message.type == "updated"
            else None
        ),
        "patch_diff_us": (
            patch_diff_us(message)
            if isinstance(message, SessionDelta) and message.type == "updated"
            else None
        ),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as a fixed-width text table (two blocks: time, then bytes)."""
    width = max(len(r["message"]) for r in rows)
    lines = [
        f"{'message':<{width}}  {'json µs':>8} {'msgpack µs':>10} {'json→msgpack µs':>15}"
        f" {'deflate µs':>10} {'decode json µs':>14} {'decode msgpack µs':>17}"
    ]
    for r in rows:
        lines.append(
            f"{r['message']:<{width}}  {r['json_us']:>8.2f} {r['msgpack_us']:>10.2f}"
            f" {r['transcode_us']:>15.2f} {r['deflate_us']:>10.2f}"
            f" {r['decode_json_us']:>14.2f} {r['decode_msgpack_us']:>17.2f}"
        )
    lines += [
        "",
        f"{'message':<{width}}  {'json B':>9} {'msgpack B':>9} {'÷json':>6}"
        f" {'json+deflate B':>14} {'÷json':>6} {'msgpack+deflate B':>17} {'÷json':>6}",
    ]
    for r in rows:
        j = r["json_bytes"]
        lines.append(
            f"{r['message']:<{width}}  {j:>9,} {r['msgpack_bytes']:>9,}"
            f" {r['msgpack_bytes'] / j:>6.2f} {r['json_deflate_bytes']:>14,}"
            f" {r['json_deflate_bytes'] / j:>6.2f} {r['msgpack_deflate_bytes']:>17,}"
            f" {r['msgpack_deflate_bytes'] / j:>6.2f}"
        )
    lines += [
        "",
        "the JSON Patch form of an `updated` delta: the whole form (decode, diff, encode), and",
        "the diff alone with the `jsonpatch` library's make_patch vs control_room.patch:",
    ]
    for r in rows:
        if r["patch_form_us"] is not None:
            library, ours = r["patch_diff_us"]
            lines.append(
                f"  {r['message']:<{width}}  form {r['patch_form_us']:>7.1f} µs;"
                f"  diff: jsonpatch {library:>7.1f} µs, ours {ours:>6.1f} µs"
                f" ({library / ours:.0f}× faster)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table (or JSON rows)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [measure(name, message) for name, message in messages().items()]
    print(json.dumps(rows) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
