"""One client connection: the socket's protocol object after the handshake, its counters,
and the live batches it holds while catching up.

After the opening handshake the socket is handed from aiohttp to a `Connection` (the
asyncio protocol of its transport), so an open connection costs one small object with
slots instead of aiohttp's request, response, reader, writer and handler task: what an
idle client costs is the transport and this (see docs/topics/memory.md and the `idle`
benchmark). Reading is the pure `Reader`; what messages mean is the owner's business.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from control_room.auth import Principal
from control_room.broker.base import Batch, Channel
from control_room.views import DEFAULT_VIEW
from control_room.ws.frames import OP_PONG, close_frame, control_frame
from control_room.ws.prepared import PLAIN, Key, batch_frames, batch_frames_after
from control_room.ws.reader import (
    OP_CLOSE,
    OP_PING,
    Control,
    Event,
    Message,
    ProtocolViolation,
    Reader,
    close_code,
)

_ids: Final = itertools.count(1)

WRITE_HIGH_WATER: Final = 256 * 1024
"""Bytes buffered in the transport above which it reports itself paused: catching-up writes
(a snapshot, a replay) wait for it to drain below the low mark before the next slice."""
WRITE_LOW_WATER: Final = 64 * 1024
CLOSE_TIMEOUT_S: Final = 2.0
"""After our close frame, how long we keep reading (and discarding) what the client still
sends, waiting for its close frame or its FIN, before the socket is dropped. Closing a TCP
socket with unread bytes in its receive buffer makes the kernel send a reset, and a reset
can destroy our close frame in the client's buffer before it is read: a client flooding
messages would see a broken connection instead of 1008. A live client answers a close at
once; this bounds what one that never does costs (the same as the Python client's own)."""


class Owner(Protocol):
    """What a connection tells the endpoint that owns it."""

    @property
    def max_pending(self) -> int:
        """Bytes a client may leave unread before it is cut (MAX_BUFFER_BYTES)."""

    def received(self, conn: Connection, message: Message) -> None:
        """A whole data message arrived (synchronously; must not block)."""

    def lost(self, conn: Connection, exc: Exception | None) -> None:
        """The socket is gone (once)."""

    def too_slow(self, conn: Connection) -> None:
        """The client is not reading what it is sent (cut it as a slow consumer)."""


class Connection(asyncio.Protocol):
    """A connected client. Writing never awaits: bytes go to the transport's buffer.

    The transport's write buffer plays the part of Node's `bufferedAmount`: bytes accepted
    for the client but not yet taken by the kernel. While a client catches up (snapshot,
    replay), live batches wait in `_held` so order is kept, and only they count as falling
    behind.
    """

    __slots__ = (
        "_drained",
        "_held",
        "_held_bytes",
        "_linger",
        "_lost",
        "_on_lost",
        "_owner",
        "_reader",
        "alive",
        "bytes_sent",
        "close_reason",
        "commands",
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
        *,
        owner: Owner | None = None,
        reader: Reader | None = None,
        on_lost: Callable[[], None] | None = None,
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
        self.commands: object = None
        """The owner's per-connection command state, made when the client first sends one."""
        self._held: list[Batch] | None = None
        self._held_bytes = 0
        self._owner = owner
        self._reader = reader
        self._on_lost = on_lost
        self._drained: asyncio.Future[None] | None = None
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None
        """Set while our close frame is out and we wait for the client's (`close`)."""

    # -- the transport's callbacks -------------------------------------------------

    def adopt(self, transport: asyncio.Transport) -> None:
        """Become the protocol of an already connected transport (after the handshake)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        """Parse what the client sent: pongs and pings keep it alive; messages go up."""
        reader = self._reader
        if self._linger is not None:
            self._closing_received(data)
            return
        if reader is None or self.close_reason is not None:
            return
        try:
            events = reader.feed(data)
        except ProtocolViolation as exc:
            self._reader = None  # its stream is broken: after our close, wait for its FIN
            self.close(
                close_frame(exc.code, exc.reason[:100]),
                "message_too_big" if exc.code == 1009 else "protocol_error",
            )
            return
        for index, event in enumerate(events):
            self.alive = True
            if self._linger is not None:  # we closed mid-read: only its close frame matters
                self._end_on_close_frame(events[index:])
                return
            if isinstance(event, Control):
                self._control(event)
            elif self._owner is not None and self.close_reason is None:
                self._owner.received(self, event)

    def _control(self, event: Control) -> None:
        if event.opcode == OP_PING:
            if self.transport.is_closing():
                return
            if self._owner is not None and self.pending_bytes > self._owner.max_pending:
                # Pings it sends but pongs it never reads: a flood would grow our buffer
                # without bound. The same limit as any slow consumer.
                self._owner.too_slow(self)
                return
            self.transport.write(control_frame(OP_PONG, event.data))
        elif event.opcode == OP_CLOSE:
            try:
                code, _ = close_code(event.data)
            except ProtocolViolation as exc:
                # It sent its (bad) close frame: nothing follows it to wait for.
                self.close(close_frame(exc.code, exc.reason[:100]), "protocol_error", linger=False)
                return
            # Echo the code (RFC 6455 §5.5.1), then close once it is flushed: the client
            # sends nothing after its close frame, so there is nothing to wait for.
            self.close(close_frame(1000 if code == 1005 else code), "normal", linger=False)

    def _closing_received(self, data: bytes) -> None:
        """After our close frame: discard messages; the client's close frame ends it."""
        reader = self._reader
        if reader is None:
            return  # its stream was broken: wait for its FIN (or the linger's end)
        try:
            events = reader.feed(data)
        except ProtocolViolation:
            self._reader = None
            return
        self._end_on_close_frame(events)

    def _end_on_close_frame(self, events: Sequence[Event]) -> None:
        """After our close frame: if the client's is among `events`, close the socket (the
        client sends nothing more, so no reset); the rest is discarded."""
        if any(isinstance(e, Control) and e.opcode == OP_CLOSE for e in events):
            self.transport.close()

    def eof_received(self) -> bool:
        """The client half-closed: close our side too."""
        return False

    def pause_writing(self) -> None:
        """The transport's buffer passed the high mark."""
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The transport's buffer fell below the low mark."""
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: tell the owner once, free the connection slot."""
        if self._lost:
            return
        self._lost = True
        if self._linger is not None:
            self._linger.cancel()
        self._wake()
        self._held, self._held_bytes = None, 0
        if self._owner is not None:
            self._owner.lost(self, exc)
        if self._on_lost is not None:
            self._on_lost()

    def _wake(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing ---------------------------------------------------------------------

    async def drained(self) -> None:
        """Until the transport's buffer is below the low mark (or the socket is gone)."""
        waiter = self._drained
        if waiter is not None:
            await asyncio.shield(waiter)

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
        """Hand already-framed bytes to the socket (never blocks); none after a close."""
        if self._linger is not None:
            return
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

    def close(self, frame: bytes, reason: str, *, linger: bool = True) -> None:
        """Send a close frame (a polite goodbye) and close the socket once it is flushed.

        With `linger` (the default), the socket stays open for reading until the client
        answers with its own close frame, or sends its FIN, or CLOSE_TIMEOUT_S pass: what it
        sent meanwhile is read and discarded, so the kernel never answers unread bytes with
        a reset that could destroy the close frame before the client reads it (RFC 6455
        §7.1.1: the server closes the TCP connection after the closing handshake). Without
        it (shutdown, or an answer to the client's own close) the socket closes at once.
        """
        if self.close_reason is None:
            self.close_reason = reason
        transport = self.transport
        if transport.is_closing():
            return
        if self._linger is not None:
            if not linger:
                transport.close()
            return
        transport.write(frame)
        if not linger:
            transport.close()
            return
        self._linger = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.abort)
