"""The hub's own Python cost per broadcast, without the kernel: views, variants, big polls.

`python -m bench.hub_bench`. In one process, no sockets: 1,000 `Connection`s on transports
that only count bytes, grouped by (view, variant) in the real `Hub`, and batches made as the
broadcast server makes them. Two tables:

- µs per broadcast of one ~1.2 KB delta to the 1,000 clients, for the configurations of the
  `variants` section (1 or 10 views, one variant or the mix of four), with clients taking
  their view or variant in turn (`cycle`, as they arrive) or in blocks: what serialising
  once per (view, variant) and the per-client loop cost in Python, which the end-to-end
  runs cannot separate from the kernel's `send()`.
- ms to prepare one poll of 1,000 `updated` deltas for a client of each variant (the
  frames are built once per broadcast, synchronously, on the event loop: every other
  client waits that long).

Median of REPEATS timings each.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Final

from multidict import MultiDict

from bench.broadcast_server import bench_session
from bench.loadgen import ClientVariant, spread_index, variant_for
from bench.workload import view_params
from control_room.broker.base import Batch
from control_room.broker.memory import MemoryBroker
from control_room.metrics import Metrics
from control_room.models import Change, Position
from control_room.views import DEFAULT_VIEW
from control_room.ws.connection import Connection
from control_room.ws.hub import Hub
from control_room.ws.params import parse_view
from control_room.ws.prepared import PLAIN, Key, Variant, batch_frames

CLIENTS: Final = 1_000  # the variants section's count
BROADCASTS: Final = 300  # per timing: enough to average out the clock
POLL_DELTAS: Final = 1_000  # the persistence bench's poll
REPEATS: Final = 7
WINDOW_BITS: Final = 15


class CountingTransport:
    """Takes writes and counts them; never full, never closing."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        """Count the bytes."""
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        """Nothing is ever pending."""
        return 0

    def is_closing(self) -> bool:
        """Never."""
        return False


def server_variant(client: ClientVariant) -> Variant:
    """What the service makes of a load-generator client's request."""
    return Variant(
        encoding="msgpack" if client.msgpack else "json",
        patch=client.patch,
        batch=client.batch,
        deflate=WINDOW_BITS if client.deflate else 0,
    )


class Publisher:
    """Numbered `updated` deltas, as the broadcast server stamps them."""

    def __init__(self) -> None:
        self.broker = MemoryBroker(100, Position("bench", 0))
        self.cid = 0

    def batch(self, deltas: int = 1) -> Batch:
        """One batch of `deltas` deltas, one per repository."""
        changes = []
        for j in range(deltas):
            self.cid += 1
            before = bench_session("bench 0 0", "PLANNING", j % 10)
            after = bench_session(f"bench {self.cid} {time.time_ns()}", "IN_PROGRESS", j % 10)
            changes.append(Change("updated", after.id, before, after))
        return Batch(self.broker.stamp(changes, "2026-11-30T00:00:00.000Z"))


def hub_of(key_of: Callable[[int], Key]) -> Hub:
    """A hub of CLIENTS connections on counting transports, client i keyed `key_of(i)`."""
    logging.disable(logging.INFO)  # the hub logs each delta at INFO: not what is measured
    hub = Hub(Metrics(), max_buffer_bytes=1 << 20)
    for i in range(CLIENTS):
        hub.add(Connection(CountingTransport(), "bench", key=key_of(i)))  # type: ignore[arg-type]
    return hub


def broadcast_us(hub: Hub, publisher: Publisher) -> float:
    """µs per `Hub.deliver` of a fresh one-delta batch (its frames not yet built)."""
    batches = [publisher.batch() for _ in range(BROADCASTS)]
    started = time.perf_counter()
    for batch in batches:
        hub.deliver(batch)
    return (time.perf_counter() - started) / BROADCASTS * 1e6


def configurations() -> dict[str, Callable[[int], Key]]:
    """The variants section's configurations, clients in turn and in blocks."""
    ten = [parse_view(MultiDict(view_params("all", 10, j))) for j in range(10)]
    one = parse_view(MultiDict(view_params("all", 1, 0)))

    def mix(spread: str) -> Callable[[int], Key]:
        def key(i: int) -> Key:
            index = spread_index(spread, i, CLIENTS, 4)
            return (DEFAULT_VIEW, server_variant(variant_for("mix", index)))

        return key

    def views(spread: str) -> Callable[[int], Key]:
        return lambda i: (ten[spread_index(spread, i, CLIENTS, 10) % 10], PLAIN)

    return {
        "plain, default view": lambda i: (DEFAULT_VIEW, PLAIN),
        "1 filtered view": lambda i: (one, PLAIN),
        "10 views, clients in turn": views("cycle"),
        "10 views, clients in blocks": views("block"),
        "mix of four, clients in turn": mix("cycle"),
        "mix of four, clients in blocks": mix("block"),
    }


def poll_ms(variant: Variant, publisher: Publisher) -> float:
    """ms to build one POLL_DELTAS-delta batch's frames for one client of `variant`."""
    timings = []
    for _ in range(REPEATS):
        batch = publisher.batch(POLL_DELTAS)
        started = time.perf_counter()
        batch_frames(batch, (DEFAULT_VIEW, variant))
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> int:
    """Print both tables."""
    publisher = Publisher()
    hubs = {name: hub_of(key) for name, key in configurations().items()}
    timings: dict[str, list[float]] = {name: [] for name in hubs}
    for _ in range(REPEATS):  # interleaved, so a busy moment hits every configuration
        for name, hub in hubs.items():
            timings[name].append(broadcast_us(hub, publisher))
    base = statistics.median(timings["1 filtered view"])
    print(f"one ~1.2 KB delta to {CLIENTS:,} clients, Python only (no send()):")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:<32} {median:8.0f} µs per broadcast  {median / base:5.2f}× 1 view")
    print()
    print(f"one poll of {POLL_DELTAS:,} updated deltas, frames for one client of each variant:")
    for name, variant in (
        ("plain", PLAIN),
        ("batch", Variant(batch=True)),
        ("msgpack", Variant(encoding="msgpack")),
        ("deflate", Variant(deflate=WINDOW_BITS)),
        ("patch", Variant(patch=True)),
    ):
        print(f"  {name:<10} {poll_ms(variant, publisher):8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
