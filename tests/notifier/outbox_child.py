"""A process that saves deltas to a SQLite outbox and delivers them until it is SIGKILLed.

Run as `python -m tests.notifier.outbox_child DATA_DIR URL COUNT`; prints `saved` once every
delta is in the store and queued.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from control_room.metrics import Metrics
from control_room.notifier import Notifier
from control_room.store.sqlite import SqliteStore
from tests.conftest import FAST_WEBHOOKS
from tests.notifier.conftest import SECRET, Stream

EPOCH = "c41d"


async def main(data_dir: Path, url: str, count: int) -> None:
    """Save `count` deltas one poll at a time, handing each to the notifier, then wait."""
    store = SqliteStore(data_dir)
    await store.open()
    stream = Stream(EPOCH)
    notifier = Notifier(
        [url],
        secret=SECRET,
        metrics=Metrics(),
        position=lambda: stream.position,
        store=store,
        timeout=1.0,
        max_age=3600.0,
        queue_size=1000,
        timing=FAST_WEBHOOKS,
    )
    await notifier.start()
    for _ in range(count):
        batch = stream.batch(1)
        await store.save(batch, stream.sessions, stream.position)
        notifier.enqueue(batch)  # as the poller does: after the save, before broadcasting
    print("saved", flush=True)
    await asyncio.Event().wait()  # until SIGKILL: no stop(), no cursor flush, no close


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
