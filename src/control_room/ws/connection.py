"""One client connection: its socket, its counters, and the queue it holds while catching up."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Final

from control_room.auth import Principal
from control_room.broker.base import Batch, Channel
from control_room.views import DEFAULT_VIEW
from control_room.ws.prepared import PLAIN, Key, batch_frames, batch_frames_after

_ids: Final = itertools.count(1)


class Connection:
    """A connected client. Writing never awaits: bytes go to the transport's buffer.

    The transport's write buffer plays the part of Node's `bufferedAmount`: bytes accepted
    for the client but not yet taken by the kernel. While a resuming client is replayed its
    history, live batches wait in `_held` (counted as pending too) so order is kept.
    """

    __slots__ = (
        "_held",
        "_held_bytes",
        "alive",
        "bytes_sent",
        "close_reason",
        "connected_at",
        "id",
        "key",
        "messages_sent",
        "principal",
        "remote",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        remote: str,
        principal: Principal | None = None,
        key: Key | None = None,
    ) -> None:
        self.id = next(_ids)
        self.key: Key = key or (DEFAULT_VIEW, PLAIN)
        """The view and wire variant: which shared frames this client is written."""
        self.transport = transport
        self.remote = remote
        # Who the client authenticated as (shared, one object per token): a reload that
        # revokes the token closes the connection; a command layer checks `read_only`.
        self.principal = principal
        self.connected_at = time.time()
        self.alive = True
        self.messages_sent = 0
        self.bytes_sent = 0
        self.close_reason: str | None = None
        self._held: list[Batch] | None = None
        self._held_bytes = 0

    @property
    def catching_up(self) -> bool:
        """True while history is being replayed and live batches are held back."""
        return self._held is not None

    @property
    def held_bytes(self) -> int:
        """Bytes of live batches held back while catching up (what counts as falling behind
        then: the snapshot or replay being written never does)."""
        return self._held_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted for this client and not yet taken by the kernel."""
        return self.transport.get_write_buffer_size() + self._held_bytes

    @property
    def open(self) -> bool:
        """False once the socket is closing or closed."""
        return self.close_reason is None and not self.transport.is_closing()

    def write(self, frames: bytes, count: int) -> None:
        """Hand already-framed bytes to the socket (never blocks)."""
        self.transport.write(frames)
        self.messages_sent += count
        self.bytes_sent += len(frames)

    def hold(self) -> None:
        """Start holding live batches back (replay is about to begin)."""
        self._held = []
        self._held_bytes = 0

    def held(self, batch: Batch) -> None:
        """Keep a live batch until the replay is done."""
        assert self._held is not None
        self._held.append(batch)
        self._held_bytes += len(batch_frames(batch, self.key)[0])

    def release(self, after: dict[Channel, int]) -> None:
        """Replay done: write what the held batches have past `after` (per channel), go live."""
        held, self._held, self._held_bytes = self._held or [], None, 0
        for batch in held:
            frames, count = batch_frames_after(batch, self.key, after)
            if count:
                self.write(frames, count)

    def terminate(self, reason: str) -> None:
        """Drop the connection at once, discarding whatever it had not read."""
        if self.close_reason is None:
            self.close_reason = reason
        self._held, self._held_bytes = None, 0
        self.transport.abort()

    def close(self, frame: bytes, reason: str) -> None:
        """Send a close frame and close once it is flushed (a polite goodbye)."""
        if self.close_reason is None:
            self.close_reason = reason
        if not self.transport.is_closing():
            self.transport.write(frame)
            self.transport.close()
