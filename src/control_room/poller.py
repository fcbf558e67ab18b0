"""Fetch -> map -> diff -> persist -> notify -> broadcast, with backoff. Owns the snapshot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

import msgspec

from control_room import logging as logs
from control_room.backoff import backoff_delay
from control_room.broker.base import Batch, Broker
from control_room.diff import diff
from control_room.jules.client import UpstreamError
from control_room.jules.mapping import MappedListing, map_listing, map_session
from control_room.jules.types import RawSession, Session
from control_room.metrics import Metrics
from control_room.models import Change, Position, Snapshot
from control_room.state import State

MAX_POLL_BACKOFF_S: Final = 60.0  # a minute: recovers quickly, costs little quota when down
UNAUTHORIZED_BACKOFF_S: Final = 300.0  # a rejected key will not fix itself; don't hammer
MAX_DELETE_CONFIRMATIONS: Final = 20
"""A session missing from a listing is confirmed with a GET before it is called deleted:
paging while the list shifts can skip an entry. Past this many vanished sessions in one
poll the deletion is real (a mass clean-up), and the listing is trusted."""

log = logs.get("poller")


class Upstream(Protocol):
    """What the poller needs from the Jules client."""

    async def list_sessions(self) -> Sequence[RawSession]:
        """Every session as raw JSON, or UpstreamError."""

    async def get_session(self, session_id: str) -> Session | None:
        """One session, None when it does not exist, or UpstreamError."""


BeforePublish = Callable[[Batch, Snapshot, Position], Awaitable[None]]
AfterPersist = Callable[[Batch], None]


@dataclass
class UpstreamHealth:
    """How the upstream has been answering, for /healthz, /readyz and /api/stats."""

    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    consecutive_failures: int = 0
    store_error: str | None = None
    baseline_done: bool = False
    sessions: int = 0
    next_poll_at: float | None = None
    started: float = field(default_factory=time.time)

    @property
    def degraded(self) -> bool:
        """True while the upstream or the store is failing."""
        return self.consecutive_failures > 0 or self.store_error is not None


def iso_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, like the seed's examples."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Poller:
    """Polls the upstream every interval; publishes only what a complete listing proves."""

    def __init__(
        self,
        upstream: Upstream,
        broker: Broker,
        metrics: Metrics,
        *,
        interval: float,
        persist: BeforePublish | None = None,
        notify: AfterPersist | None = None,
        initial: Snapshot | None = None,
        state: State | None = None,
    ) -> None:
        self._upstream = upstream
        # What clients read; published batches keep it current (it is a broker sink).
        self.state = state if state is not None else State()
        if initial is not None:
            self.state.load(initial)
        self._broker = broker
        self._metrics = metrics
        self._interval = interval
        self._persist = persist
        self._notify = notify
        # A snapshot loaded from a store is diffed against (not re-announced) on the first poll.
        self._listing = MappedListing.of(dict(initial)) if initial is not None else None
        self._lock = asyncio.Lock()
        self.attempts = 0
        self.health = UpstreamHealth()

    @property
    def sessions(self) -> Snapshot:
        """The last published snapshot (consistent with the broker's position)."""
        return self.state.sessions

    @property
    def ready(self) -> bool:
        """True once a complete listing has been taken since start."""
        return self.state.ready

    async def run(self) -> None:
        """Poll forever: the interval after a success, capped backoff after failures."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            delay = await self.poll_once()
            if delay == self._interval:
                # A period, start to start: a slow listing does not stretch the cadence.
                delay = max(0.0, delay - (loop.time() - started))
            self.health.next_poll_at = time.time() + delay
            await asyncio.sleep(delay)

    async def poll_once(self) -> float:
        """One complete poll; returns how long to wait before the next one."""
        async with self._lock:
            try:
                return await self._poll()
            except UpstreamError as exc:
                return self._failed(exc)
            finally:
                self.attempts += 1

    async def _poll(self) -> float:
        started = time.perf_counter()
        listing = await self._upstream.list_sessions()
        self._metrics.poll_duration.observe(time.perf_counter() - started)

        started = time.perf_counter()
        previous = self._listing or MappedListing.empty()
        try:
            current = map_listing(listing, previous)
        except msgspec.MsgspecError as exc:
            raise UpstreamError("bad_response", f"a session did not decode: {exc}") from None
        vanished = previous.sessions.keys() - current.sessions.keys()
        if vanished and len(vanished) <= MAX_DELETE_CONFIRMATIONS:
            await self._confirm_deletions(vanished, previous, current)
        changes = diff(previous.sessions, current.sessions, current.fresh)
        diff_time = time.perf_counter() - started
        self._metrics.diff_duration.observe(diff_time)

        health = self.health
        if self._listing is None:
            # The first listing since an empty start is the baseline, not a flood of `created`.
            changes = []
            # With a store, the baseline is saved whole (an empty batch), so a restart diffs
            # against it; until that succeeds the service has no baseline and is not ready.
            if self._persist is not None and not await self._persisted(Batch([]), current.sessions):
                return self._interval
            log.info("Baseline taken", extra={"sessions": len(current.sessions)})
        if changes:
            if not await self._publish(changes, current.sessions):
                return self._interval
            self._listing = current
        else:
            self._listing = current
        self._metrics.deltas_per_poll.observe(len(changes))
        self._metrics.sessions_tracked.set(len(current.sessions))
        if health.consecutive_failures:
            log.info("Upstream recovered", extra={"afterFailures": health.consecutive_failures})
        health.consecutive_failures = 0
        health.last_success = time.time()
        if not self.state.ready:
            # The first listing since start: adopt the upstream's order (a store hands
            # sessions back in its own order); the sessions themselves are already equal.
            self.state.load(current.sessions)
            self.state.ready = True
        health.baseline_done = True
        health.sessions = len(current.sessions)
        log.debug(
            "Poll complete",
            extra={
                "sessions": len(current.sessions),
                "deltas": len(changes),
                "diffMs": round(diff_time * 1000, 3),
            },
        )
        return self._interval

    async def _publish(self, changes: list[Change], sessions: Snapshot) -> bool:
        """Stamp, persist, hand to webhooks, publish; False (nothing published) when the
        store refused, so the same changes are found and tried again next time."""
        batch = Batch(self._broker.stamp(changes, iso_now()))
        if self._persist is not None and not await self._persisted(batch, sessions):
            return False
        if self._notify is not None:
            self._notify(batch)
        await self._broker.publish(batch)
        for change in changes:
            self._metrics.deltas_published.labels(change.type).inc()
        return True

    async def refresh(self, session_id: str, *, gone_is_deleted: bool = False) -> None:
        """Re-read one session now (after a command) and publish what changed at once.

        A session the upstream no longer lists (404, or archived) is announced deleted only
        with `gone_is_deleted` (after a delete or archive command): right after a create a
        GET may briefly answer 404, and a deletion otherwise comes only from a complete
        listing. Raises UpstreamError when the read fails.
        """
        async with self._lock:
            if self._listing is None:
                return  # no baseline yet: the first poll will include it
            found = await self._upstream.get_session(session_id)
            listing = self._listing
            before = listing.sessions.get(session_id)
            if found is None or found.archived:
                if before is None or not gone_is_deleted:
                    return
                after = None
            else:
                after = map_session(found, before)
            sessions = dict(listing.sessions)
            if after is None:
                del sessions[session_id]
            else:
                sessions[session_id] = after
            changes = diff(listing.sessions, sessions, [session_id])
            if changes and await self._publish(changes, sessions):
                # The next listing is diffed against this, so the change is not sent twice.
                listing.sessions = sessions

    async def _persisted(self, batch: Batch, sessions: Snapshot) -> bool:
        assert self._persist is not None
        current = self._broker.position
        position = Position(current.epoch, batch.last_seq if batch.entries else current.seq)
        started = time.perf_counter()
        try:
            await self._persist(batch, sessions, position)
        except Exception as exc:  # any store failure: keep the old snapshot, retry next poll
            self._metrics.store_failures.inc()
            self.health.store_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "Store write failed; deltas held back until it succeeds",
                extra={"error": self.health.store_error, "deltas": len(batch.entries)},
            )
            return False
        self._metrics.store_write_duration.observe(time.perf_counter() - started)
        if self.health.store_error is not None:
            log.info("Store recovered")
        self.health.store_error = None
        return True

    async def _confirm_deletions(
        self, vanished: set[str], previous: MappedListing, current: MappedListing
    ) -> None:
        """Keep sessions that still exist upstream but fell between two listing pages."""
        for sid in sorted(vanished):
            try:
                found = await self._upstream.get_session(sid)
            except UpstreamError as exc:
                # Unsure: keep it this poll rather than announce a deletion that is not real.
                log.warning(
                    "Could not confirm deletion; keeping session",
                    extra={"sessionId": sid, "kind": exc.kind},
                )
                current.sessions[sid] = previous.sessions[sid]
                continue
            if found is not None and not found.archived:
                current.sessions[sid] = map_session(found, previous.sessions.get(sid))
                if current.fresh is not None:
                    current.fresh.append(sid)

    def _failed(self, exc: UpstreamError) -> float:
        health = self.health
        health.consecutive_failures += 1
        health.last_error = str(exc)
        health.last_error_time = time.time()
        self._metrics.poll_failures.labels(exc.kind).inc()
        if exc.kind == "unauthorized":
            delay = UNAUTHORIZED_BACKOFF_S
            if health.consecutive_failures == 1:
                log.error(
                    "Jules API key rejected; check JULES_API_KEY",
                    extra={"status": exc.status, "retryIn": delay},
                )
            return delay
        cap = max(MAX_POLL_BACKOFF_S, self._interval)
        delay = backoff_delay(health.consecutive_failures, self._interval, cap)
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, cap))
        log.warning(
            "Upstream poll failed; snapshot kept, no deltas",
            extra={
                "kind": exc.kind,
                "error": exc.detail,
                "status": exc.status,
                "consecutiveFailures": health.consecutive_failures,
                "retryIn": round(delay, 3),
            },
        )
        return delay
