"""Fetch -> map -> verify -> diff -> read activities -> persist -> notify -> broadcast.

Owns the snapshot. Publishes only what the upstream proves: a session missing from a
listing is deleted only when checks say so (deletions.py), a session that does not decode
keeps its last good version, a failed poll publishes nothing, and a listing cut short by
a later page publishes what its pages show but deletes nothing. Every fault is ridden out:
capped, jittered backoff for every kind of failure, a rotated API key used at once
(`wake`), and no page, check or activity read may hold a poll back for more than a share
of its interval.

Requests are a budget (docs/topics/polling.md): a poll reads the first page of the
listing, and every page only once per FULL_LISTING_INTERVAL (schedule.py); working
sessions beyond the first page are read one by one; activities are read only for
sessions that moved, and only the new ones (cursors.py). A poll's session deltas and new
activities are published in one batch, deltas first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Final, Protocol, TypeVar

import msgspec

from control_room import logging as logs
from control_room import rfc3339
from control_room.backoff import backoff_delay
from control_room.broker.base import ACTIVITIES, Batch, Broker, tag_of
from control_room.config import DEFAULT_FULL_LISTING_INTERVAL_S, DEFAULT_STALL_AFTER_S
from control_room.cursors import Cursors, Read
from control_room.deletions import GONE, Check, Outcome, Verdict, judge, sample
from control_room.diff import diff
from control_room.health import UpstreamHealth
from control_room.jules.activities import ActivityListing
from control_room.jules.client import FirstPage, PagingError, UpstreamError
from control_room.jules.mapping import MappedListing, is_older, map_listing, map_session
from control_room.jules.requests import RequestCounter
from control_room.jules.types import RawSession, Session
from control_room.metrics import Metrics
from control_room.models import Activity, Change, Position, Snapshot
from control_room.schedule import MAX_HOT_GETS, ListingSchedule, hot_beyond, is_hot
from control_room.stall import apply_stalls, stalled_since
from control_room.state import State

__all__ = ["Poller", "Upstream", "UpstreamHealth", "iso_now"]

MAX_POLL_BACKOFF_S: Final = 60.0
"""A minute: recovers quickly, costs little quota while down. A rejected key gets the same:
a key rotated in its file is picked up at once anyway (`wake`)."""
MAX_LISTING_RETRY_S: Final = 60.0
"""A complete listing cut short by a failed page is tried again after a backoff from one
poll interval up to a minute, as a failing upstream is polled; the polls in between read
the first page only, so a page that keeps failing costs little and holds nothing back."""
CHECKS_IN_FLIGHT: Final = 4
"""Deletion checks run at once: a sample of 16 takes four round trips, and the upstream's
quota is not hammered (its own SDK allows 50 requests in flight)."""
HOT_READS_IN_FLIGHT: Final = 4
"""Working sessions beyond the first page read at once: MAX_HOT_GETS in two round trips."""
ACTIVITY_READS_IN_FLIGHT: Final = 4
"""Sessions whose activities are read at once: 20 working sessions that all moved are read
in five round trips (well under a second), and a burst never opens more than four requests."""
PAGE_BUDGET_SHARE: Final = 0.5
"""One page of a listing (its retries included) may take half a poll interval: a healthy
upstream answers a page in well under a second, so only a hanging one is cut. A later
page cut (or failed) leaves a partial listing whose changes are still published, so a
hanging page delays the sessions it does not hold only."""
MIN_PAGE_BUDGET_S: Final = 1.0
"""...but at least a second: with a very short interval a page must still be able to
answer."""
OVERRUN_CALM_POLLS: Final = 3
"""Polls within their interval before "back within" is logged: a listing cut by its page
budget overruns one poll in a few, and a warning/info pair each time is noise, not news."""

CHECK_BUDGET_SHARE: Final = 0.5
"""The checks that follow a listing (deletion checks, listing a torn listing again, working
sessions read one by one) share half a poll interval: the poll still ends within about its
period, so a change elsewhere is never late by more than about one. What does not finish
in time is read again next poll."""
MIN_CHECK_BUDGET_S: Final = 1.0
"""...but at least a second, or with a very short interval no check could ever answer and
no deletion would ever be confirmed."""
ACTIVITY_BUDGET_SHARE: Final = 0.25
"""Activity reads have a budget of their own, a quarter interval, starting when they start:
however many vanished sessions are being confirmed (or hang), the activities of the
sessions that moved are still read in the same poll. Five round trips of 4 reads at
~0.2 s fit in a 5 s poll's quarter; the rest are read next poll."""
MIN_ACTIVITY_BUDGET_S: Final = 1.0
"""...but at least a second, as for checks."""
MAX_RELISTS: Final = 2
"""A torn listing is listed again at most twice per poll: a tear is a race with a change
upstream, and rarely repeats; if it does, only confirmed deletions are applied."""
SHOWN_IDS: Final = 10  # session ids named in one log line; the count gives the rest

log = logs.get("poller")
T = TypeVar("T")

iso_now = rfc3339.now
"""The current time as RFC 3339 UTC with milliseconds (the deltas' `timestamp`)."""


class Upstream(Protocol):
    """What the poller (and the REST timeline routes) need from the Jules client."""

    def list_pages(
        self, page_budget: float | None = None
    ) -> AsyncGenerator[Sequence[RawSession], None]:
        """Every session as raw JSON, page by page; UpstreamError when a page fails, or
        gets no answer within `page_budget` seconds (the pages before it are yielded)."""

    async def list_first_page(self, page_budget: float | None = None) -> FirstPage:
        """The newest sessions (the first page) and whether more pages follow; UpstreamError
        (a `timeout` past `page_budget` seconds)."""

    async def get_session(self, session_id: str, deadline: float | None = None) -> Session | None:
        """That very session, None when it does not exist, or UpstreamError; no retry waits
        past `deadline` (event-loop time), the last failure is raised instead."""

    async def list_activities(self, session_id: str, after: str | None) -> ActivityListing | None:
        """The session's activities created after `after` (all: None), oldest first; None
        on 404 NOT_FOUND; UpstreamError."""

    async def get_activity(self, session_id: str, activity_id: str) -> msgspec.Raw | None:
        """One activity exactly as sent; None on 404 NOT_FOUND; UpstreamError."""


BeforePublish = Callable[[Batch, Snapshot, Position], Awaitable[None]]
AfterPersist = Callable[[Batch], None]


class _Streaks:
    """Which ids had each anomaly last poll: a warning when one starts, not every poll."""

    def __init__(self) -> None:
        self._open: dict[str, set[str]] = {}

    def update(self, kind: str, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Record this poll's ids for `kind`; return (newly seen, no longer seen), sorted."""
        now = set(ids)
        before = self._open.get(kind, set())
        self._open[kind] = now
        return sorted(now - before), sorted(before - now)


def _shown(ids: Sequence[str]) -> list[str]:
    return list(ids[:SHOWN_IDS])


class Poller:
    """Polls the upstream every interval; publishes only what the upstream proves."""

    def __init__(
        self,
        upstream: Upstream,
        broker: Broker,
        metrics: Metrics,
        *,
        interval: float,
        full_listing_interval: float = DEFAULT_FULL_LISTING_INTERVAL_S,
        stall_after: float = DEFAULT_STALL_AFTER_S,
        persist: BeforePublish | None = None,
        notify: AfterPersist | None = None,
        initial: Snapshot | None = None,
        state: State | None = None,
        check_budget: float | None = None,
        requests: RequestCounter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        # What clients read; published batches keep it current (it is a broker sink).
        self.state = state if state is not None else State()
        if initial is not None:
            self.state.load(initial)
        self._broker = broker
        self._metrics = metrics
        self._interval = interval
        self._check_budget = (
            check_budget
            if check_budget is not None
            else max(MIN_CHECK_BUDGET_S, interval * CHECK_BUDGET_SHARE)
        )
        self._page_budget = max(MIN_PAGE_BUDGET_S, interval * PAGE_BUDGET_SHARE)
        self._overrunning = False  # an overrun was logged and "back within" not yet
        self._calm_polls = 0  # polls within the interval since the last overrun
        self._activity_budget = max(MIN_ACTIVITY_BUDGET_S, interval * ACTIVITY_BUDGET_SHARE)
        self._incomplete = 0  # complete listings in a row cut short by a failed page
        self._persist = persist
        self._notify = notify
        # A snapshot loaded from a store is diffed against (not re-announced) on the first poll.
        self._listing = MappedListing.of(dict(initial)) if initial is not None else None
        # The last first page seen (or complete listing): what a first page is matched against.
        self._page_ref: MappedListing | None = None
        self._schedule = ListingSchedule(full_listing_interval, interval)
        self._cursors = Cursors(interval)
        self._stall_after = stall_after
        self._clock = clock
        self._following = False  # the timelines of working sessions have been asked for
        self.requests = requests
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._streaks = _Streaks()
        self.attempts = 0
        self.hot_read = 0
        self.hot_deferred = 0
        self.last_complete_listing: float | None = None  # Unix seconds
        self.health = self.state.health = UpstreamHealth(interval=interval)

    @property
    def sessions(self) -> Snapshot:
        """The last published snapshot (consistent with the broker's position)."""
        return self.state.sessions

    @property
    def ready(self) -> bool:
        """True once a complete listing has been taken since start."""
        return self.state.ready

    @property
    def full_listing_interval(self) -> float:
        """Seconds between two complete listings."""
        return self._schedule.full_interval

    @property
    def activity_reads_due(self) -> int:
        """Sessions whose new activities wait for a later poll."""
        return self._cursors.due

    def wake(self) -> None:
        """Poll now instead of finishing the current wait (e.g. the API key was rotated)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll forever: the interval after a success, capped backoff after failures."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # a wake during the poll below polls again right after it
            started = loop.time()
            delay = await self.poll_once()
            if delay == self._interval:
                # A period, start to start: a slow listing does not stretch the cadence.
                delay = max(0.0, delay - (loop.time() - started))
            self.health.next_poll_at = time.time() + delay
            # asyncio.timeout, not wait_for: on Python 3.11 a wake that lands together with
            # a cancel made wait_for return and swallow the cancel, so a SIGHUP (key reload)
            # just before a stop left the poller waiting a whole interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def poll_once(self) -> float:
        """One poll; returns how long to wait before the next one."""
        async with self._lock:
            health = self.health
            started = health.poll_started = time.time()
            try:
                delay = await self._poll()
            except UpstreamError as exc:
                delay = self._failed(exc)
            finally:
                self.attempts += 1
                health.poll_started = None
            self._paced(time.time() - started)
            health.next_poll_at = time.time() + delay
            return delay

    async def _poll(self) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        baseline = self._listing is None
        previous = self._listing or MappedListing.empty()
        complete = self._schedule.complete_due(started)
        if complete:
            current, complete = await self._list_all(previous, baseline)
        else:
            current, complete = await self._list_newest(previous)
        deadline = loop.time() + self._check_budget
        if complete:
            vanished = previous.sessions.keys() - current.sessions.keys()
            unconfirmed: dict[str, str] = {}
            if vanished:
                current, unconfirmed = await self._settle(previous, current, vanished, deadline)
            else:
                self._streaks.update("torn", ())
            self._report_unconfirmed(unconfirmed)
        else:
            await self._read_hot(current, deadline)

        clock_started = time.perf_counter()
        stalled = apply_stalls(
            current.sessions, self._cursors.last_activity, self._clock(), self._stall_after
        )
        candidates = None if current.fresh is None else dict.fromkeys([*current.fresh, *stalled])
        changes = diff(previous.sessions, current.sessions, candidates)
        self._metrics.diff_duration.observe(time.perf_counter() - clock_started)

        health = self.health
        if baseline:
            # The first listing since an empty start is the baseline, not a flood of `created`.
            changes = []
            # With a store, the baseline is saved whole (an empty batch), so a restart diffs
            # against it; until that succeeds the service has no baseline and is not ready.
            if self._persist is not None and not await self._persisted(Batch([]), current.sessions):
                return self._interval
            log.info("Baseline taken", extra={"sessions": len(current.sessions)})
        # The first poll since start also reads the timelines of the working sessions.
        follow = () if self._following else [s.id for s in current.sessions.values() if is_hot(s)]
        reads = self._cursors.plan(changes, current.sessions, loop.time(), follow=follow)
        # Their own budget: checks that used theirs up never starve them.
        results = await self._read_activities(reads, loop.time() + self._activity_budget)
        activities, done = self._settle_reads(reads, results, current.sessions)
        if (changes or activities) and not await self._publish(
            changes, activities, current.sessions
        ):
            self._cursors.again(read for read, _ in done)
            return self._interval
        self._advance(done)
        self._following = True
        if complete:
            self._listing = current
            self._schedule.listed_completely(started, loop.time())
            self.last_complete_listing = time.time()
        else:
            assert self._listing is not None  # the first poll is always complete
            self._listing.sessions = current.sessions
        self._page_ref = current
        self._metrics.listings.labels("complete" if complete else "first_page").inc()
        self._metrics.deltas_per_poll.observe(len(changes))
        self._metrics.sessions_tracked.set(len(current.sessions))
        self._metrics.sessions_stalled.set(
            sum(1 for s in current.sessions.values() if s.stalledSince is not None)
        )
        self._metrics.activity_reads_due.set(self._cursors.due)
        if health.consecutive_failures:
            outage = time.time() - (health.outage_started or time.time())
            log.info(
                "Upstream recovered",
                extra={
                    "afterFailures": health.consecutive_failures,
                    "outageSeconds": round(outage, 3),
                },
            )
        health.consecutive_failures = 0
        health.outage_started = None
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
                "activities": len(activities),
                "listing": "complete" if complete else "first_page",
                "activityReads": len(reads),
            },
        )
        return self._interval

    async def _list_newest(self, previous: MappedListing) -> tuple[MappedListing, bool]:
        """Read the first page; (the listing to diff, whether it is complete).

        Without a next page, the first page is a complete listing. Otherwise the sessions it
        shows are merged over the previous snapshot: a partial listing creates and updates,
        and never deletes.
        """
        started = time.perf_counter()
        page = await self.upstream.list_first_page(self._page_budget)
        self._metrics.poll_duration.observe(time.perf_counter() - started)
        if not page.more:
            current = map_listing(page.sessions, previous)
            self._report_listing(current)
            return current, True
        return self._merged(page.sessions, previous), False

    def _merged(self, raws: Sequence[RawSession], previous: MappedListing) -> MappedListing:
        """The sessions of a partial listing merged over the previous snapshot: they create
        and update (an older version than shown excepted), and nothing is deleted."""
        ref = self._page_ref or previous
        mapped = map_listing(raws, MappedListing(ref.raws, ref.ids, previous.sessions))
        sessions = dict(previous.sessions)
        sessions.update(mapped.sessions)
        return MappedListing(mapped.raws, mapped.ids, sessions, list(mapped.fresh or ()))

    async def _list_all(
        self, previous: MappedListing, baseline: bool
    ) -> tuple[MappedListing, bool]:
        """Read every page; (the listing to diff, whether it is complete).

        A later page that fails or hangs (past the page budget) does not fail the poll: the
        pages read are a partial listing, merged over the previous snapshot like a first
        page (creations and changes, never a deletion), and the complete listing is tried
        again on a later poll (backing off). Nothing read, or no baseline yet: UpstreamError.
        """
        started = time.perf_counter()
        raws, ends, error = await self._read_pages()
        self._metrics.poll_duration.observe(time.perf_counter() - started)
        if error is None:
            current = map_listing(raws, previous)
            current.page_ends = ends
            self._report_listing(current)
            self._listing_whole()
            return current, True
        if not raws or baseline:
            raise error
        self._listing_cut(error, len(ends))
        return self._merged(raws, previous), False

    async def _read_pages(self) -> tuple[list[RawSession], list[int], UpstreamError | None]:
        """The sessions of every page read, where each page ended, and the error that cut
        the listing short (None: it is complete)."""
        raws: list[RawSession] = []
        ends: list[int] = []
        try:
            async with contextlib.aclosing(self.upstream.list_pages(self._page_budget)) as pages:
                async for page in pages:
                    raws.extend(page)
                    ends.append(len(raws))
        except UpstreamError as exc:
            return raws, ends, exc
        return raws, ends, None

    def _listing_cut(self, error: UpstreamError, pages: int) -> None:
        """A complete listing was cut short after `pages` pages: count it, say it once per
        streak, show it in /healthz, and plan the next try with backoff."""
        self._incomplete += 1
        self._metrics.listings_incomplete.labels(error.kind).inc()
        if isinstance(error, PagingError):
            self._metrics.listing_anomalies.labels(error.anomaly).inc()
        self.health.listing_cut = error.detail
        cap = MAX_LISTING_RETRY_S
        retry_in = backoff_delay(self._incomplete, min(self._interval, cap), cap)
        if error.retry_after is not None:  # a 429's wish, as for a failed poll
            retry_in = max(retry_in, min(error.retry_after, MAX_POLL_BACKOFF_S))
        loop = asyncio.get_running_loop()
        self._schedule.listing_failed(loop.time(), retry_in)
        log.log(
            logging.WARNING if self._incomplete == 1 else logging.DEBUG,
            "Listing incomplete: a page failed; changes on the pages read are published,"
            " deletions wait for a complete listing",
            extra={
                "pagesRead": pages,
                "kind": error.kind,
                "error": error.detail,
                "completeListingIn": round(retry_in, 3),
            },
        )

    def _listing_whole(self) -> None:
        """A complete listing was read to its end."""
        if self._incomplete:
            log.info("Complete listing read again", extra={"afterIncomplete": self._incomplete})
        self._incomplete = 0
        self.health.listing_cut = None

    async def _read_hot(self, current: MappedListing, deadline: float) -> None:
        """Read each working session the first page did not show (at most MAX_HOT_GETS);
        apply what changed to `current`. A session not found is left to the complete
        listing (only it may delete); a failed read leaves the session as it was."""
        listed = {sid for sid in current.ids if sid is not None}
        hot, deferred = hot_beyond(current.sessions, listed, MAX_HOT_GETS)
        self.hot_read, self.hot_deferred = len(hot), len(deferred)
        self._metrics.hot_sessions.set(len(hot))
        self._metrics.hot_sessions_deferred.set(len(deferred))
        new, _ = self._streaks.update("deferred", deferred)
        if new:
            log.warning(
                "More working sessions beyond the first page than read one by one; the"
                " others wait for the complete listing",
                extra={"read": len(hot), "deferred": len(deferred), "sessionIds": _shown(new)},
            )
        if not hot:
            self._streaks.update("hot_failed", ())
            return
        results = await self._gather(hot, self.upstream.get_session, deadline, HOT_READS_IN_FLIGHT)
        failed: list[str] = []
        fresh = current.fresh if current.fresh is not None else []
        for sid in hot:
            found = results.get(sid)
            if sid not in results or isinstance(found, UpstreamError):
                failed.append(sid)
                continue
            if found is None or found.archived:
                continue  # gone or archived: only a complete listing deletes
            before = current.sessions[sid]
            if rfc3339.later(before.updatedAt, found.updateTime):
                continue  # an older version than shown: keep the shown one
            current.sessions[sid] = map_session(found, before)
            fresh.append(sid)
        current.fresh = fresh
        new, _ = self._streaks.update("hot_failed", failed)
        if new:
            log.warning(
                "Working sessions could not be read; their changes wait for the next poll",
                extra={"sessionIds": _shown(new), "count": len(failed)},
            )

    async def _gather(
        self,
        keys: Sequence[str],
        fetch: Callable[[str], Awaitable[T]],
        deadline: float,
        in_flight: int,
    ) -> dict[str, T | UpstreamError]:
        """`fetch` each key, at most `in_flight` at once, all before `deadline`; the answers
        by key (an UpstreamError for a failure; keys not answered in time are absent)."""
        results: dict[str, T | UpstreamError] = {}
        gate = asyncio.Semaphore(in_flight)

        async def one(key: str) -> None:
            async with gate:
                try:
                    results[key] = await fetch(key)
                except UpstreamError as exc:
                    results[key] = exc

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline), asyncio.TaskGroup() as group:
                for key in keys:
                    group.create_task(one(key))
        return results

    # -- activities --

    async def _read_activities(
        self, reads: Sequence[Read], deadline: float
    ) -> dict[str, ActivityListing | UpstreamError | None]:
        """Read each planned session's activities (ACTIVITY_READS_IN_FLIGHT at once)."""
        if not reads:
            return {}
        bounds = {read.session_id: read.after for read in reads}

        async def fetch(sid: str) -> ActivityListing | None:
            return await self.upstream.list_activities(sid, bounds[sid])

        return await self._gather(list(bounds), fetch, deadline, ACTIVITY_READS_IN_FLIGHT)

    def _settle_reads(
        self,
        reads: Sequence[Read],
        results: dict[str, ActivityListing | UpstreamError | None],
        sessions: Snapshot,
        streak: str = "poll",
    ) -> tuple[list[Activity], list[tuple[Read, ActivityListing]]]:
        """The new activities to publish (by session, oldest first), and the reads to
        advance once they are published. Failed reads are due again; each is counted, and
        logged once per streak (polls and command re-reads each have their own)."""
        now = asyncio.get_running_loop().time()
        cursors, metrics = self._cursors, self._metrics
        activities: list[Activity] = []
        done: list[tuple[Read, ActivityListing]] = []
        failed: dict[str, str] = {}
        bad: list[str] = []
        for read in sorted(reads, key=lambda r: r.session_id):
            sid = read.session_id
            result = results.get(sid)
            if isinstance(result, ActivityListing):
                metrics.activity_reads.labels("ok").inc()
                # New by the cursor's bounds alone, never by what a timeline holds: a
                # timeline read over REST may already hold activities not yet announced.
                if sid in sessions:
                    activities.extend(cursors.new_activities(read, result))
                done.append((read, result))
                if result.bad:
                    metrics.activities_skipped.inc(len(result.bad))
                    bad.extend(f"{sid}: {why}" for why in result.bad)
            elif sid in results and result is None:
                if cursors.not_found(read, now):
                    metrics.activity_reads.labels("not_found_yet").inc()
                    log.debug(
                        "Activities not found yet; read again next poll",
                        extra={"sessionId": sid},
                    )
                else:
                    metrics.activity_reads.labels("gone").inc()
                    log.info(
                        "Activities not found; the session looks gone", extra={"sessionId": sid}
                    )
            else:
                metrics.activity_reads.labels("failed").inc()
                cursors.failed(read, now)
                failed[sid] = (
                    result.detail if isinstance(result, UpstreamError) else "no answer in time"
                )
        new, _ = self._streaks.update(f"activities_failed_{streak}", failed)
        if new:
            log.warning(
                "Activities could not be read; read again next poll",
                extra={
                    "sessionIds": _shown(new),
                    "count": len(failed),
                    "error": failed[new[0]],
                },
            )
        new, _ = self._streaks.update(f"activities_bad_{streak}", bad)
        for entry in new:
            log.warning("Activity skipped: it cannot be used", extra={"error": entry})
        return activities, done

    def _advance(self, done: Sequence[tuple[Read, ActivityListing]]) -> None:
        """The reads were published: move their cursors, and keep the whole timelines."""
        for read, listing in done:
            self._cursors.advance(read, listing)
            if read.whole:
                self.state.adopt_timeline(read.session_id, listing.activities)

    async def _publish(
        self, changes: list[Change], activities: list[Activity], sessions: Snapshot
    ) -> bool:
        """Stamp, persist, hand to webhooks, publish; False (nothing published) when the
        store refused, so the same changes are found and tried again next time.

        Deltas go first and activities after them, each tagged with its session's
        (repository, state) after this poll, so a view that a session just entered gets
        the activity that brought it there."""
        timestamp = iso_now()
        messages = self._broker.stamp_activities(activities, timestamp)
        batch = Batch(
            self._broker.stamp(changes, timestamp),
            [(m, tag_of(sessions.get(m.sessionId))) for m in messages],
        )
        if self._persist is not None and not await self._persisted(batch, sessions):
            return False
        await self._broker.publish(batch)
        # Webhooks only for what was published: a shared broker may refuse the batch (this
        # node lost the lease), and its seqs then go to other deltas under the same ids.
        if self._notify is not None:
            self._notify(batch)
        for change in changes:
            self._metrics.deltas_published.labels(change.type).inc()
        self._metrics.activities_published.inc(len(messages))
        return True

    async def refresh(self, session_id: str, *, gone_is_deleted: bool = False) -> None:
        """Re-read one session now (after a command) with its new activities, and publish
        what changed at once.

        A session the upstream no longer lists (404, or archived) is announced deleted only
        with `gone_is_deleted` (after a delete or archive command): right after a create a
        GET may briefly answer 404, and a deletion otherwise comes only from a complete
        listing. Raises UpstreamError when the session's read fails (its activities' read
        failing only makes them due next poll).
        """
        async with self._lock:
            if self._listing is None:
                return  # no baseline yet: the first poll will include it
            loop = asyncio.get_running_loop()
            found = await self.upstream.get_session(session_id)
            listing = self._listing
            before = listing.sessions.get(session_id)
            if found is None or found.archived:
                if before is None or not gone_is_deleted:
                    return
                after = None
            elif before is not None and is_older(found.updateTime, before.updatedAt):
                after = before  # an older version than shown (a lagging replica): kept
            else:
                after = map_session(found, before)
                flag = stalled_since(
                    after,
                    self._cursors.last_activity(session_id),
                    self._clock(),
                    self._stall_after,
                )
                if flag is not None:
                    after = msgspec.structs.replace(after, stalledSince=flag)
            sessions = dict(listing.sessions)
            if after is None:
                del sessions[session_id]
            else:
                sessions[session_id] = after
            changes = diff(listing.sessions, sessions, [session_id])
            reads = self._cursors.plan(
                changes,
                sessions,
                loop.time(),
                touched=[session_id] if after is not None else [],
                include_due=False,
            )
            results = await self._read_activities(reads, loop.time() + self._activity_budget)
            activities, done = self._settle_reads(reads, results, sessions, "refresh")
            if (changes or activities) and not await self._publish(changes, activities, sessions):
                self._cursors.again(read for read, _ in done)
                return
            self._advance(done)
            # The next listing is diffed against this, so the change is not sent twice.
            listing.sessions = sessions

    async def _list(self, previous: MappedListing) -> MappedListing:
        """List every session again and map the listing against `previous`; UpstreamError
        when any page fails (a partial listing cannot settle deletions)."""
        started = time.perf_counter()
        raws, ends, error = await self._read_pages()
        self._metrics.poll_duration.observe(time.perf_counter() - started)
        if error is not None:
            raise error
        current = map_listing(raws, previous)
        current.page_ends = ends
        self._report_listing(current)
        return current

    async def _settle(
        self,
        previous: MappedListing,
        current: MappedListing,
        vanished: set[str],
        deadline: float,
    ) -> tuple[MappedListing, dict[str, str]]:
        """Decide the vanished sessions (deletions.py); list again while the listing is torn.

        Returns the listing to publish, with every session that is not proven gone put
        back, and those kept without an answer (unconfirmed), each with why.
        """
        loop = asyncio.get_running_loop()
        missed: set[str] = set()  # sessions the listings of this poll missed
        tries = 1
        outcome = "listed again cleanly"
        while True:
            picked = sample(vanished, previous.order(), seams=current.seams())
            checks = await self._check(picked, deadline)
            verdict = judge(vanished, checks)
            if not verdict.torn:
                break
            self._metrics.listings_torn.inc()
            missed.update(verdict.present)
            if tries > MAX_RELISTS or loop.time() >= deadline:
                outcome = "still torn; only confirmed deletions applied"
                break
            tries += 1
            try:
                async with asyncio.timeout_at(deadline):
                    again = await self._list(previous)
            except (UpstreamError, TimeoutError) as exc:
                why = exc.detail if isinstance(exc, UpstreamError) else "out of time"
                outcome = f"listing again failed ({why}); only confirmed deletions applied"
                break
            current = again
            vanished = previous.sessions.keys() - current.sessions.keys()
            if not vanished:
                verdict = Verdict()
                break
        self._report_torn(sorted(missed), tries, outcome)
        self._apply(verdict, previous, current)
        unchecked = "not checked: the checks of the others did not all say gone"
        kept = {sid: checks[sid].why if sid in checks else unchecked for sid in verdict.unconfirmed}
        return current, kept

    def _report_torn(self, missed: list[str], tries: int, outcome: str) -> None:
        """One warning when a tear starts (not on every poll of a lasting one)."""
        new, _ = self._streaks.update("torn", missed)
        if missed:
            log.log(
                logging.WARNING if new else logging.DEBUG,
                "Listing torn: sessions missing from it still exist",
                extra={
                    "missed": _shown(missed),
                    "missedCount": len(missed),
                    "listings": tries,
                    "outcome": outcome,
                },
            )

    def _apply(self, verdict: Verdict, previous: MappedListing, current: MappedListing) -> None:
        """Put back every vanished session that is not proven gone: with the data its GET
        returned, unless that is older than the version shown (a lagging replica), which is
        kept as it was, as for a listing entry."""
        stale: list[str] = []
        for sid, session in verdict.present.items():
            before = previous.sessions.get(sid)
            if before is not None and is_older(session.updateTime, before.updatedAt):
                current.sessions[sid] = before
                stale.append(sid)
                continue
            current.sessions[sid] = map_session(session, before)
            if current.fresh is not None:
                current.fresh.append(sid)
        for sid in verdict.unconfirmed:
            current.sessions[sid] = previous.sessions[sid]
        self._metrics.listing_anomalies.labels("stale_version").inc(len(stale))
        new, _ = self._streaks.update("stale_get", stale)
        if new:
            log.warning(
                "A GET answered older versions than already shown; the shown ones are kept",
                extra={"sessionIds": _shown(new), "count": len(stale)},
            )

    async def _check(self, sids: list[str], deadline: float) -> dict[str, Check]:
        """GET each session, at most CHECKS_IN_FLIGHT at once, all before `deadline`."""
        checks: dict[str, Check] = {}
        gate = asyncio.Semaphore(CHECKS_IN_FLIGHT)

        async def check(sid: str) -> None:
            async with gate:
                checks[sid] = await self._check_one(sid, deadline)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline), asyncio.TaskGroup() as group:
                for sid in sids:
                    group.create_task(check(sid))
        late = Check(Outcome.UNKNOWN, why=f"no answer within {self._check_budget:g} s")
        for sid in sids:
            outcome = checks.setdefault(sid, late).outcome
            self._metrics.deletion_checks.labels(outcome.value).inc()
        return checks

    async def _check_one(self, sid: str, deadline: float) -> Check:
        try:
            found = await self.upstream.get_session(sid, deadline)
        except UpstreamError as exc:
            return Check(Outcome.UNKNOWN, why=exc.detail)
        if found is None or found.archived:
            return GONE
        return Check(Outcome.PRESENT, session=found)

    def _report_listing(self, listing: MappedListing) -> None:
        """Log each new anomaly of a listing once, count them all, update the gauges."""
        metrics = self._metrics
        by_kind: dict[str, list[str]] = {"undecodable": [], "identity_conflict": [], "no_id": []}
        for entry in listing.rejected:
            by_kind[entry.kind].append(entry.label)
            metrics.listing_anomalies.labels(entry.kind).inc()
        new, cleared = self._streaks.update(
            "rejected", (f"{r.label}: {r.reason}" for r in listing.rejected)
        )
        for entry in listing.rejected:
            if f"{entry.label}: {entry.reason}" in new:
                log.warning(
                    "Session skipped: the listing entry is unusable; last good version kept"
                    if entry.kept
                    else "Session skipped: the listing entry is unusable; a new one waits",
                    extra={"sessionId": entry.label, "kind": entry.kind, "error": entry.reason},
                )
        if cleared:
            log.info("Listing entries usable again", extra={"entries": _shown(cleared)})
        metrics.sessions_undecodable.set(len(listing.rejected))
        self.health.undecodable = len(listing.rejected)

        metrics.listing_anomalies.labels("duplicate_id").inc(len(listing.duplicates))
        new, _ = self._streaks.update("duplicate_id", listing.duplicates)
        if new:
            log.warning(
                "Listing repeats sessions; the first entry of each is used",
                extra={"sessionIds": _shown(new), "count": len(new)},
            )
        metrics.listing_anomalies.labels("stale_version").inc(len(listing.stale))
        new, _ = self._streaks.update("stale_version", listing.stale)
        if new:
            log.warning(
                "Listing has older versions than already shown; the shown ones are kept",
                extra={"sessionIds": _shown(new), "count": len(new)},
            )

    def _report_unconfirmed(self, unconfirmed: dict[str, str]) -> None:
        """Gauge and /healthz; one warning when sessions start being kept unconfirmed, with
        why (the check's error, or that it was not checked)."""
        self._metrics.sessions_unconfirmed.set(len(unconfirmed))
        self.health.unconfirmed = len(unconfirmed)
        new, cleared = self._streaks.update("unconfirmed", unconfirmed)
        if new:
            log.warning(
                "Sessions missing from the listing kept: their deletion is not confirmed",
                extra={
                    "sessionIds": _shown(new),
                    "count": len(unconfirmed),
                    "error": unconfirmed[new[0]],
                },
            )
        if cleared and not unconfirmed:
            log.info("Every session missing from the listing is settled")

    def _paced(self, seconds: float) -> None:
        """Record the poll's duration; a poll longer than its interval has overrun."""
        health = self.health
        health.last_poll_seconds = seconds
        overran = seconds > self._interval
        if overran:
            self._metrics.poll_overruns.inc()
            self._calm_polls = 0
            if not self._overrunning:
                self._overrunning = True
                log.warning(
                    "Poll overran its interval; changes are late",
                    extra={"pollSeconds": round(seconds, 3), "interval": self._interval},
                )
        elif self._overrunning:
            self._calm_polls += 1
            if self._calm_polls >= OVERRUN_CALM_POLLS:
                self._overrunning = False
                log.info(
                    "Polls back within their interval", extra={"pollSeconds": round(seconds, 3)}
                )
        health.last_poll_overran = overran

    async def _persisted(self, batch: Batch, sessions: Snapshot) -> bool:
        assert self._persist is not None
        current = self._broker.position
        position = Position(
            current.epoch,
            batch.last_seq if batch.entries else current.seq,
            batch.last_of(ACTIVITIES) or current.activities_seq,
        )
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

    def _failed(self, exc: UpstreamError) -> float:
        """Count the failure; log it once per outage (and when its kind changes); back off."""
        health = self.health
        first = health.consecutive_failures == 0
        changed = not first and exc.kind != health.last_error_kind
        health.consecutive_failures += 1
        if first:
            health.outage_started = time.time()
        health.last_error = exc.detail
        health.last_error_kind = exc.kind
        health.last_error_time = time.time()
        self._metrics.poll_failures.labels(exc.kind).inc()
        cap = max(MAX_POLL_BACKOFF_S, self._interval)
        delay = backoff_delay(health.consecutive_failures, self._interval, cap)
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, cap))
        fields = {
            "kind": exc.kind,
            "error": exc.detail,
            "status": exc.status,
            "consecutiveFailures": health.consecutive_failures,
            "retryIn": round(delay, 3),
        }
        if not (first or changed):
            log.debug("Upstream still failing", extra=fields)
        elif exc.kind == "unauthorized":
            log.error(
                "Jules API key rejected; check JULES_API_KEY or JULES_API_KEY_FILE", extra=fields
            )
        elif health.baseline_done:
            log.warning("Upstream poll failed; snapshot kept, no deltas", extra=fields)
        else:
            log.warning(
                "Upstream poll failed; no baseline yet, nothing served until one succeeds",
                extra=fields,
            )
        return delay
