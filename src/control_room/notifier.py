"""Webhook delivery: every delta POSTed to each endpoint, signed, in seq order, with retries.

One delivery task per endpoint drains that endpoint's pending deltas one at a time: a
delivery that fails holds the ones after it (for deltas, order matters more than latency).
`enqueue` is what the poller calls; it never awaits, so no endpoint can slow polling or
broadcasting, however slow or dead it is.

Where the pending deltas live depends on persistence:
- without a store, in a bounded deque per endpoint; on overflow the oldest are dropped
  (logged and counted), and a restart loses what was pending;
- with a store, the delta log *is* the outbox: each endpoint has a cursor (the seq of the
  last delta done with), and pending deliveries are the deltas after it, read back from
  the store after a restart or a crash. A delivery is only marked done after the receiver
  answered, so a crash in between sends it again: at-least-once, and receivers deduplicate
  on `webhook-id`, which is the same for every attempt.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol
from urllib.parse import urlsplit

import aiohttp
import msgspec

from control_room import logging as logs
from control_room.backoff import backoff_delay, parse_retry_after
from control_room.broker.base import Batch, Entry, HistoryGone
from control_room.metrics import Metrics
from control_room.models import Position
from control_room.signing import headers, message_id, secret_key
from control_room.tasks import cancel_and_wait

RETRY_BASE_S: Final = 1.0  # the first retry comes quickly: most failures are blips
RETRY_CAP_S: Final = 300.0  # 5 min: a long outage costs one request per endpoint every ~5 min
RETRY_AFTER_MAX_S: Final = 3600.0
"""A `Retry-After` beyond an hour is read as an hour: waiting a day would let every pending
delivery expire without being tried once."""
STORE_RETRY_S: Final = 5.0  # a store read that failed is tried again soon; it is local
CURSOR_SAVE_EVERY: Final = 100
"""While a backlog drains, the cursor is written once per this many deliveries (and whenever
the endpoint is caught up or failing): a crash re-sends at most this many, and a catch-up
of 10,000 deltas costs 100 store writes, not 10,000 fsyncs queued beside the poller's."""
RESPONSE_READ_LIMIT: Final = 64 * 1024  # enough for any error message; a receiver can't flood us
ERROR_EXCERPT_CHARS: Final = 200  # of a refused delivery's response body, for the log
OUTCOMES: Final = ("delivered", "rejected", "expired", "overflow")
"""How a delivery ends: answered 2xx; refused for good (4xx); retried past NOTIFY_MAX_AGE
(or pruned from the store first); dropped from a full in-memory queue."""

log = logs.get("notifier")


class Outbox(Protocol):
    """Where pending deliveries are read back from, and each endpoint's cursor kept: a
    store (PERSIST=1), or the shared Redis stream of a cluster."""

    async def history(
        self, since: int, limit: int | None = None, session_id: str | None = None
    ) -> list[Entry]:
        """Deltas after `since`, oldest first; HistoryGone when no longer kept."""

    async def webhook_cursor(self, endpoint: str) -> int | None:
        """The seq of the last delta done with for `endpoint`; None if new."""

    async def set_webhook_cursor(self, endpoint: str, seq: int) -> None:
        """Record that every delta up to `seq` is done with for `endpoint`."""


@dataclass(frozen=True)
class RetryTiming:
    """How failed deliveries are retried (tests shrink these to milliseconds)."""

    base: float = RETRY_BASE_S
    cap: float = RETRY_CAP_S
    retry_after_max: float = RETRY_AFTER_MAX_S
    store_retry: float = STORE_RETRY_S


class _Stamp(msgspec.Struct):
    timestamp: str


_stamp_decoder: Final = msgspec.json.Decoder(_Stamp)


def _created_at(payload: bytes, default: float) -> float:
    """When a delta was made (unix s), from its own `timestamp`, to age stored deliveries."""
    try:
        return datetime.fromisoformat(_stamp_decoder.decode(payload).timestamp).timestamp()
    except (msgspec.MsgspecError, ValueError):
        return default


def redact(url: str) -> str:
    """An endpoint as logs and /api/stats show it: scheme, host and port only.

    Webhook URLs often carry a credential in their path or query (chat and CI hooks do),
    so neither is shown; `index` (the position in NOTIFY_WEBHOOK) tells endpoints apart.
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


class _Delivery:
    """One delta to deliver: shared by every endpoint's queue, never modified."""

    __slots__ = ("created", "msg_id", "payload", "seq")

    def __init__(self, seq: int, msg_id: str, payload: bytes, created: float) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.payload = payload
        self.created = created


class _Attempt:
    """What one POST came to."""

    __slots__ = ("error", "retry_after", "retryable", "status")

    def __init__(
        self,
        status: int | None,
        error: str | None,
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def ok(self) -> bool:
        """The receiver took it (2xx)."""
        return self.status is not None and 200 <= self.status < 300


def _retryable(status: int) -> bool:
    """408, 429 and 5xx may succeed later; any other non-2xx answer will not."""
    return status in (408, 429) or status >= 500


class _Endpoint:
    """One receiver: its pending deliveries, its worker's progress, and what to report."""

    def __init__(self, url: str, index: int) -> None:
        self.url = url
        self.index = index
        self.label = redact(url)
        self.window: deque[_Delivery] = deque()
        self.current: _Delivery | None = None
        self.attempts = 0  # of the current delivery
        self.cursor = 0  # store: seq of the last delta done with (delivered or given up)
        self.saved = 0  # store: the cursor as last written
        self.queued = 0  # store: highest seq handed to the window
        self.latest = 0  # highest seq enqueued
        self.behind = False  # store: deltas after `queued` are in the store, not the window
        self.wake = asyncio.Event()
        self.delivered = 0
        self.rejected = 0
        self.expired = 0
        self.dropped = 0
        self.consecutive_failures = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.next_attempt_at: float | None = None

    def pending(self, persistent: bool) -> int:
        """Deliveries not done with yet, the one in flight included."""
        if persistent:
            return max(0, self.latest - self.cursor)
        return len(self.window) + (self.current is not None)

    def oldest(self) -> _Delivery | None:
        """The delivery that has waited longest, if it is in memory."""
        if self.current is not None:
            return self.current
        return self.window[0] if self.window else None


class Notifier:
    """Delivers deltas to webhook endpoints; `enqueue` is the poller's `notify` hook."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        secret: str,
        metrics: Metrics,
        position: Callable[[], Position],
        store: Outbox | None = None,
        timeout: float,
        max_age: float,
        queue_size: int,
        timing: RetryTiming | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._key = secret_key(secret) if secret else None
        self.metrics = metrics
        self._position = position
        self._store = store
        self._timeout = timeout
        self._max_age = max_age
        self._queue_size = queue_size
        self._timing = timing or RetryTiming()
        self._rng = rng or random.Random()
        self.endpoints = [_Endpoint(url, i) for i, url in enumerate(urls)]
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        for outcome in OUTCOMES:
            metrics.webhook_deliveries.labels(outcome)
        # Read at scrape time: nothing on the delivery path has to keep these up to date.
        metrics.webhook_queue_depth.set_function(self.pending)
        metrics.webhook_oldest_age.set_function(self.oldest_pending_age)

    @property
    def persistent(self) -> bool:
        """True when pending deliveries live in the store and survive restarts."""
        return self._store is not None

    def pending(self) -> int:
        """Deliveries waiting, all endpoints together."""
        return sum(ep.pending(self.persistent) for ep in self.endpoints)

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest pending delivery's delta was made; 0 when none waits."""
        created = [d.created for ep in self.endpoints if (d := ep.oldest()) is not None]
        return max(0.0, time.time() - min(created)) if created else 0.0

    async def start(self) -> None:
        """Read each endpoint's cursor (with a store) and start one delivery task each."""
        position = self._position()
        for ep in self.endpoints:
            ep.cursor = ep.queued = ep.latest = position.seq
            if self._store is not None:
                await self._load_cursor(ep, self._store, position.seq)
        connector = aiohttp.TCPConnector(limit=max(1, len(self.endpoints)))
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
        )
        self._tasks = [
            asyncio.create_task(self._run(ep), name=f"webhook-{ep.index}") for ep in self.endpoints
        ]
        log.info(
            "Webhook delivery started",
            extra={
                "endpoints": [ep.label for ep in self.endpoints],
                "signed": self._key is not None,
                "persistent": self.persistent,
                "pending": self.pending(),
            },
        )

    async def _load_cursor(self, ep: _Endpoint, store: Outbox, seq: int) -> None:
        cursor = await store.webhook_cursor(ep.url)
        if cursor is None:
            # A new endpoint starts from now: it subscribes to changes, not to the past.
            await store.set_webhook_cursor(ep.url, seq)
            ep.saved = seq
            log.info("Webhook endpoint added", extra={"endpoint": ep.label, "fromSeq": seq})
            return
        if cursor > seq:
            log.warning(
                "Webhook cursor ahead of the stream; restarting from the stream's position",
                extra={"endpoint": ep.label, "cursor": cursor, "seq": seq},
            )
            await store.set_webhook_cursor(ep.url, seq)
            ep.saved = seq
            return
        ep.cursor = ep.queued = ep.saved = cursor
        ep.behind = cursor < seq

    async def stop(self) -> None:
        """Cancel the delivery tasks and save cursors; call before the store is closed.

        A delivery in flight is sent again after a restart (with the same webhook-id).
        """
        await cancel_and_wait(self._tasks)
        self._tasks = []
        try:
            if self._store is not None:
                for ep in self.endpoints:  # progress not yet written: spare the receiver a resend
                    await self._save_cursor(ep, self._store)
        finally:  # a store that fails (or a stop cancelled) must not leak the connections
            if self._http is not None:
                await self._http.close()
                self._http = None
        pending = self.pending()
        if pending:
            if self.persistent:
                log.info("Webhook deliveries resume after restart", extra={"pending": pending})
            else:
                log.warning(
                    "Webhook deliveries lost at shutdown (PERSIST is off)",
                    extra={"pending": pending},
                )

    def enqueue(self, batch: Batch) -> None:
        """Queue the batch's deltas for every endpoint; never awaits, never blocks."""
        if not batch.entries or not self.endpoints:
            return
        now = time.time()
        epoch = self._position().epoch
        items = [_Delivery(e.seq, message_id(epoch, e.seq), e.payload, now) for e in batch.entries]
        for ep in self.endpoints:
            ep.latest = batch.last_seq
            if self._store is not None:
                self._queue_stored(ep, batch, items)
            else:
                self._queue_memory(ep, items)
            ep.wake.set()

    def _queue_stored(self, ep: _Endpoint, batch: Batch, items: list[_Delivery]) -> None:
        # The batch is already in the store: keep it in memory too, to spare a read, unless
        # the window is full or out of step; the worker then reads the rest from the store.
        contiguous = batch.first_seq == ep.queued + 1
        if ep.behind or not contiguous or len(ep.window) + len(items) > self._queue_size:
            ep.behind = True
            return
        ep.window.extend(items)
        ep.queued = batch.last_seq

    def _queue_memory(self, ep: _Endpoint, items: list[_Delivery]) -> None:
        ep.window.extend(items)
        overflow = len(ep.window) - self._queue_size
        if overflow <= 0:
            return
        first = ep.window[0].seq
        for _ in range(overflow):
            ep.window.popleft()
        ep.dropped += overflow
        self.metrics.webhook_deliveries.labels("overflow").inc(overflow)
        log.warning(
            "Webhook queue full; oldest deliveries dropped",
            extra={
                "endpoint": ep.label,
                "index": ep.index,
                "dropped": overflow,
                "fromSeq": first,
                "toSeq": ep.window[0].seq - 1,
                "queueSize": self._queue_size,
            },
        )

    def stats(self) -> dict[str, object]:
        """Per-endpoint state for /api/stats."""
        now = time.time()
        persistent = self.persistent
        endpoints: list[dict[str, object]] = []
        for ep in self.endpoints:
            oldest = ep.oldest()
            state: dict[str, object] = {
                "endpoint": ep.label,
                "index": ep.index,
                "pending": ep.pending(persistent),
                "oldestPendingSeconds": round(now - oldest.created, 3) if oldest else None,
                "delivered": ep.delivered,
                "rejected": ep.rejected,
                "expired": ep.expired,
                "dropped": ep.dropped,
                "consecutiveFailures": ep.consecutive_failures,
                "lastSuccess": ep.last_success,
                "lastError": ep.last_error,
                "lastErrorTime": ep.last_error_time,
                "nextAttemptIn": (
                    round(max(0.0, ep.next_attempt_at - now), 3)
                    if ep.next_attempt_at is not None
                    else None
                ),
            }
            if persistent:
                state["cursor"] = ep.cursor
            endpoints.append(state)
        return {"webhooks": {"persistent": persistent, "endpoints": endpoints}}

    async def _run(self, ep: _Endpoint) -> None:
        """The endpoint's worker: one delivery at a time, in seq order, forever."""
        while True:
            item = await self._next(ep)
            ep.current, ep.attempts = item, 0
            try:
                cooldown = await self._deliver(ep, item)
            finally:
                ep.current = None
            if self._store is not None:
                await self._done(ep, self._store, item.seq)
            if cooldown:
                # Given up because the endpoint is failing: the next delivery waits its turn.
                await asyncio.sleep(cooldown)

    async def _next(self, ep: _Endpoint) -> _Delivery:
        while True:
            if ep.window:
                return ep.window.popleft()
            if self._store is not None and ep.behind:
                await self._load(ep, self._store)
                continue
            # No await between the check above and clear(): an enqueue cannot slip between.
            ep.wake.clear()
            await ep.wake.wait()

    async def _load(self, ep: _Endpoint, store: Outbox) -> None:
        """Fill the window from the store, after the last delta queued."""
        try:
            entries = await store.history(ep.queued, limit=self._queue_size)
        except HistoryGone as exc:
            await self._skip_pruned(ep, store, exc.oldest_seq - 1)
            return
        except Exception as exc:  # the store is down: deliveries wait for it
            log.error(
                "Webhook outbox read failed; retrying",
                extra={"endpoint": ep.label, "error": f"{type(exc).__name__}: {exc}"},
            )
            await asyncio.sleep(self._timing.store_retry)
            return
        # Only what the poller announced: a row it has not (yet) confirmed is not delivered.
        entries = [e for e in entries if e.seq <= ep.latest]
        if not entries:
            if ep.queued >= ep.latest:
                ep.behind = False
                return
            log.warning(
                "Webhook outbox has no deltas after the cursor yet; retrying",
                extra={"endpoint": ep.label, "after": ep.queued, "latest": ep.latest},
            )
            await asyncio.sleep(self._timing.store_retry)
            return
        epoch = self._position().epoch
        now = time.time()
        for e in entries:
            ep.window.append(
                _Delivery(e.seq, message_id(epoch, e.seq), e.payload, _created_at(e.payload, now))
            )
        ep.queued = entries[-1].seq
        # Synchronous from here: any batch enqueued during the read left `latest` ahead.
        ep.behind = ep.queued < ep.latest

    async def _skip_pruned(self, ep: _Endpoint, store: Outbox, to_seq: int) -> None:
        lost = max(0, to_seq - ep.queued)
        ep.expired += lost
        self.metrics.webhook_deliveries.labels("expired").inc(lost)
        log.error(
            "Webhook deliveries lost: pruned from the store before delivery",
            extra={"endpoint": ep.label, "fromSeq": ep.queued + 1, "toSeq": to_seq, "lost": lost},
        )
        ep.queued = ep.cursor = to_seq
        await self._save_cursor(ep, store)

    async def _done(self, ep: _Endpoint, store: Outbox, seq: int) -> None:
        """Move the cursor past a delivery; write it when caught up or every so often."""
        ep.cursor = seq
        if not ep.window or seq - ep.saved >= CURSOR_SAVE_EVERY:
            await self._save_cursor(ep, store)

    async def _save_cursor(self, ep: _Endpoint, store: Outbox) -> None:
        """Write the cursor; if that fails the next write covers it (at worst, a resend)."""
        seq = ep.cursor
        if seq == ep.saved:
            return
        try:
            await store.set_webhook_cursor(ep.url, seq)
            ep.saved = seq
        except Exception as exc:
            log.warning(
                "Webhook cursor write failed",
                extra={"endpoint": ep.label, "seq": seq, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def _deliver(self, ep: _Endpoint, item: _Delivery) -> float:
        """Attempt until the receiver takes or refuses it, or it is too old to keep trying.

        Returns how long the endpoint should still wait before its next delivery.
        """
        while True:
            if time.time() - item.created >= self._max_age:
                self._give_up(ep, item)
                return 0.0
            if ep.attempts:
                self.metrics.webhook_retries.inc()
            ep.attempts += 1
            ep.next_attempt_at = None
            result = await self._attempt(ep, item)
            if result.ok:
                self._succeeded(ep, item, result)
                return 0.0
            ep.last_error = _describe(result)
            ep.last_error_time = time.time()
            if not result.retryable:
                self._refused(ep, item, result)
                return 0.0
            ep.consecutive_failures += 1
            t = self._timing
            delay = backoff_delay(ep.consecutive_failures, t.base, t.cap, self._rng)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, t.retry_after_max))
            ep.next_attempt_at = time.time() + delay
            if ep.next_attempt_at - item.created >= self._max_age:
                # The next try would come too late for this one; the endpoint still waits
                # out its backoff before the next delivery.
                self._give_up(ep, item)
                return delay
            if self._store is not None:
                await self._save_cursor(ep, self._store)  # the endpoint waits anyway: record
            log.warning(
                "Webhook delivery failed; will retry",
                extra={
                    "endpoint": ep.label,
                    "index": ep.index,
                    "seq": item.seq,
                    "status": result.status,
                    "error": result.error,
                    "attempt": ep.attempts,
                    "retryIn": round(delay, 3),
                },
            )
            await asyncio.sleep(delay)

    async def _attempt(self, ep: _Endpoint, item: _Delivery) -> _Attempt:
        """One signed POST of the delta's bytes."""
        assert self._http is not None
        sent = headers(item.msg_id, int(time.time()), item.payload, self._key)
        try:
            async with self._http.post(
                ep.url, data=item.payload, headers=sent, allow_redirects=False
            ) as resp:
                body = await resp.content.read(RESPONSE_READ_LIMIT)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return _Attempt(None, f"no answer within {self._timeout:g}s", retryable=True)
        except aiohttp.ClientError as exc:
            # Some aiohttp errors quote the URL, which may hold a credential: show the label.
            detail = str(exc).replace(ep.url, ep.label)
            return _Attempt(None, f"{type(exc).__name__}: {detail}", retryable=True)
        except Exception as exc:  # unforeseen: retried like a network error, never fatal
            log.exception("Webhook attempt failed unexpectedly", extra={"endpoint": ep.label})
            return _Attempt(None, type(exc).__name__, retryable=True)
        if 200 <= status < 300:
            return _Attempt(status, None, retryable=False)
        excerpt = body[:ERROR_EXCERPT_CHARS].decode(errors="replace")
        return _Attempt(status, excerpt, retryable=_retryable(status), retry_after=retry_after)

    def _succeeded(self, ep: _Endpoint, item: _Delivery, result: _Attempt) -> None:
        if ep.consecutive_failures:
            log.info(
                "Webhook endpoint recovered",
                extra={
                    "endpoint": ep.label,
                    "index": ep.index,
                    "afterFailures": ep.consecutive_failures,
                },
            )
        ep.consecutive_failures = 0
        ep.delivered += 1
        ep.last_success = time.time()
        self.metrics.webhook_deliveries.labels("delivered").inc()
        log.debug(
            "Webhook delivered",
            extra={
                "endpoint": ep.label,
                "seq": item.seq,
                "status": result.status,
                "attempts": ep.attempts,
            },
        )

    def _refused(self, ep: _Endpoint, item: _Delivery, result: _Attempt) -> None:
        ep.consecutive_failures = 0  # it answered: the endpoint is up, only this one is refused
        ep.rejected += 1
        self.metrics.webhook_deliveries.labels("rejected").inc()
        log.error(
            "Webhook delivery refused; dropped for this endpoint",
            extra={
                "endpoint": ep.label,
                "index": ep.index,
                "seq": item.seq,
                "webhookId": item.msg_id,
                "status": result.status,
                "response": result.error,
            },
        )

    def _give_up(self, ep: _Endpoint, item: _Delivery) -> None:
        ep.expired += 1
        self.metrics.webhook_deliveries.labels("expired").inc()
        log.error(
            "Webhook delivery expired; given up",
            extra={
                "endpoint": ep.label,
                "index": ep.index,
                "seq": item.seq,
                "webhookId": item.msg_id,
                "ageSeconds": round(time.time() - item.created, 3),
                "attempts": ep.attempts,
                "lastError": ep.last_error,
            },
        )


def _describe(result: _Attempt) -> str:
    if result.status is None:
        return result.error or "error"
    return f"HTTP {result.status}: {result.error}" if result.error else f"HTTP {result.status}"
