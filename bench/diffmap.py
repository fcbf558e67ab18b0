"""Diff + mapping of one listing, timed in a fresh process (no other objects to collect).

`python -m bench.diffmap control-room BASE.json CHANGED.json REPEATS` prints
`{"median_ms", "p95_ms", "decode_median_ms", "changes"}`. The files are JSON arrays of
Jules Sessions; BASE is mapped once (the previous snapshot), then CHANGED is decoded
afresh for every repeat (as after a fetch: equal sessions are equal, not identical) and
the timed part is what the poller does between the fetch and the publish:

- `control-room`: `map_listing(listing, previous)` + `diff(previous, current, fresh)` on what
  its Jules client returns for a listing (each session's raw JSON, `msgspec.Raw`);
- `websockets`: the websockets peer's dict mapping and dict-comparison diff on
  `json.loads` output.

`decode_median_ms` is the decode alone, outside the timed part, for reference.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

WS_PEER: Final = Path(__file__).resolve().parent / "peers" / "websockets_peer.py"


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(repeats: int, decode: Callable[[], Any], work: Callable[[Any], int]) -> dict[str, Any]:
    """Time `work(decode())` `repeats` times; the decode is timed apart."""
    decodes: list[float] = []
    times: list[float] = []
    changes = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        listing = decode()
        t1 = time.perf_counter()
        changes = work(listing)
        t2 = time.perf_counter()
        decodes.append((t1 - t0) * 1000)
        times.append((t2 - t1) * 1000)
        del listing
    return {
        "median_ms": statistics.median(times),
        "p95_ms": nearest_rank(times, 0.95),
        "decode_median_ms": statistics.median(decodes),
        "changes": changes,
    }


def control_room(base: bytes, changed: bytes, repeats: int) -> dict[str, Any]:
    """The control room's mapping and diff, fed what its Jules client returns."""
    from control_room.diff import diff
    from control_room.jules import types
    from control_room.jules.mapping import MappedListing, map_listing

    # The client hands the poller each session as its raw JSON (msgspec.Raw) when the
    # mapping keys on bytes, or as a decoded Session struct in the older design.
    item: Any = msgspec.Raw if hasattr(types, "RawSession") else types.Session
    decoder = msgspec.json.Decoder(list[item])
    previous = map_listing(decoder.decode(base), MappedListing.empty())

    def work(listing: Any) -> int:
        current = map_listing(listing, previous)
        return len(diff(previous.sessions, current.sessions, current.fresh))

    return measure(repeats, lambda: decoder.decode(changed), work)


def websockets_peer(base: bytes, changed: bytes, repeats: int) -> dict[str, Any]:
    """The websockets peer's mapping and diff."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("websockets_peer", WS_PEER)
    assert spec is not None and spec.loader is not None
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    previous = peer.map_listing(json.loads(base), {})

    def work(listing: Any) -> int:
        return len(peer.diff(previous, peer.map_listing(listing, previous)))

    return measure(repeats, lambda: json.loads(changed), work)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    name, base_path, changed_path, repeats_text = (argv or sys.argv[1:])[:4]
    base, changed = Path(base_path).read_bytes(), Path(changed_path).read_bytes()
    gc.collect()
    run = control_room if name == "control-room" else websockets_peer
    print(json.dumps(run(base, changed, int(repeats_text))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
