"""A node's part in a cluster (REDIS_URL): follow the shared stream, lead when elected.

Every node reads the shared stream and serves its own clients from it. The node holding the
lease (leader.py) also runs the poller and the webhook notifier: it polls Jules, diffs
against the shared snapshot, persists, publishes and delivers webhooks. Losing the lease (or
the fencing token, or the shared history) stops both at once; gaining it starts them from
the shared position and snapshot, so a new leader announces only what really changed.

Commands sent to a follower are carried out by the follower (it calls Jules itself), but only
the leader publishes: the follower asks the leader to re-read the session through a Redis
list, and waits for the answer and for the delta to reach its own clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from control_room import logging as logs
from control_room.backoff import backoff_delay
from control_room.broker.base import Batch, BrokerUnavailable
from control_room.broker.redis import (
    QUIET_RESETS,
    REDIS_ERRORS,
    RedisBroker,
    describe,
    request_id,
    stop_tasks,
)
from control_room.health import UpstreamHealth
from control_room.jules.client import UpstreamError
from control_room.leader import (
    EXPIRY_MARGIN_S,
    RENEW_SHARE,
    RETRY_SHARE,
    Holder,
    Lease,
    fence_number,
)
from control_room.metrics import ClusterMetrics
from control_room.models import Position, Snapshot, encode
from control_room.notifier import Notifier
from control_room.poller import AfterPersist, BeforePublish, Poller
from control_room.state import State
from control_room.store.base import Store
from control_room.ws.hub import Hub

SERVICE_RESTART: Final = 1012
"""The close code clients get when this node's history changed under them (RFC 6455's
"service restart"): they reconnect with their position and are replayed, or told `reset`."""
CATCH_UP_SHARE: Final = 0.5
"""A new leader waits at most half a lease for its reader to deliver what was published: its
reader is live, so it normally takes a round trip."""
REFRESH_WAIT_S: Final = 2.0
"""A follower waits this long for the leader's re-read after a command (it takes a GET of
Jules, ~100 ms); then it answers anyway, and the next poll publishes the change."""
REFRESH_MAX_AGE_S: Final = 10.0
"""A re-read request older than this (there was no leader when it was made) is dropped: a
poll has run since."""
REFRESH_QUEUE_MAX: Final = 1_000  # pending re-reads kept while no node leads; older dropped
REFRESH_BLOCK_S: Final = 1.0  # the leader's wait for a request; it re-checks its term after
REPLY_TTL_MS: Final = 10_000  # an answer nobody picked up is dropped after this
MAX_STEP_DOWN_BACKOFF_S: Final = 30.0  # a node failing to lead tries again at least this often
MAX_ELECTION_BACKOFF_S: Final = 5.0  # Redis unreachable: try for the lease at least this often

log = logs.get("cluster")


class _Request(msgspec.Struct, frozen=True):
    """A re-read asked of the leader."""

    id: str
    sessionId: str
    gone: bool
    at: float


_request_decoder: Final = msgspec.json.Decoder(_Request)


@dataclass
class Term:
    """What runs while this node leads."""

    poller: Poller
    notifier: Notifier | None


PollerFactory = Callable[[Snapshot | None, BeforePublish, AfterPersist | None], Poller]
"""Builds the leader's poller from the shared snapshot (None: no baseline yet)."""


class Cluster:
    """Follows the shared stream, takes the lease when it is free, leads while it holds it."""

    def __init__(
        self,
        broker: RedisBroker,
        state: State,
        hub: Hub,
        metrics: ClusterMetrics,
        *,
        node_id: str,
        lease: float,
        make_poller: PollerFactory,
        make_notifier: Callable[[], Notifier | None],
        store: Store | None = None,
    ) -> None:
        self.broker = broker
        self.node_id = node_id
        self._state = state
        self._hub = hub
        self._metrics = metrics
        self._lease_s = lease
        self._make_poller = make_poller
        self._make_notifier = make_notifier
        self._store = store
        self._lease: Lease | None = None
        self.term: Term | None = None
        self._step_down = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.holder: Holder | None = None
        self.nodes: dict[str, dict[str, Any]] = {}
        self.lag_events = 0
        self.led_since: float | None = None
        broker.on_reset = self._adopt
        broker.on_health = self._health

    @property
    def leading(self) -> bool:
        """True while this node holds the lease and runs the poller."""
        return self.term is not None

    @property
    def poller(self) -> Poller | None:
        """The poller, while this node leads."""
        return self.term.poller if self.term is not None else None

    @property
    def notifier(self) -> Notifier | None:
        """The webhook notifier, while this node leads."""
        return self.term.notifier if self.term is not None else None

    async def start(self) -> None:
        """Join: adopt the shared state, start reading, then compete for the lease.

        Raises BrokerUnavailable when Redis cannot be reached at start.
        """
        await self.broker.start()
        self._lease = Lease(self.broker.redis, self.broker.keys, self.node_id, self._lease_s)
        self._tasks = [
            asyncio.create_task(self._elect(), name="election"),
            asyncio.create_task(self._report_forever(), name="node-report"),
        ]

    async def stop(self) -> None:
        """Stop leading (giving the lease back), stop reading, leave."""
        if self._tasks:  # none: never started, or stopped already
            await stop_tasks(self._tasks, self.broker.shared_clients)
            self._tasks = []
            with contextlib.suppress(*REDIS_ERRORS):
                await self.broker.redis.hdel(self.broker.keys.nodes, self.node_id)
        await self.broker.stop()  # also after a start that failed half-way

    def wake(self) -> None:
        """Poll now, if this node leads (a rotated API key)."""
        if self.term is not None:
            self.term.poller.wake()

    # -- what the shared stream tells this node --

    def _adopt(self, sessions: Snapshot, ready: bool, reason: str) -> None:
        """The broker reloaded the shared state: take it, and tell clients if history moved."""
        self._state.load(sessions)
        self._state.ready = ready
        if self.term is None:
            self._state.health.baseline_done = ready
        if reason in QUIET_RESETS:
            return
        clients = len(self._hub)
        self._hub.close_all(SERVICE_RESTART, "shared history changed; resume", "resync")
        log.warning(
            "Clients asked to reconnect: the shared history changed",
            extra={"reason": reason, "clientCount": clients},
        )
        if self.term is not None:
            self._step_down.set()

    def _health(self, error: str | None) -> None:
        self._state.health.broker_error = error

    # -- leading --

    async def persist(self, batch: Batch, sessions: Snapshot, position: Position) -> None:
        """The poller's persist hook: a baseline goes to the shared snapshot; every batch to
        the store (PERSIST=1) before it is published."""
        if not batch:
            await self.broker.save_baseline(sessions)
        if self._store is not None:
            await self._store.save(batch, sessions, position)

    async def _elect(self) -> None:
        """Try for the lease every tenth of it; lead whenever it is ours."""
        assert self._lease is not None
        failures = 0
        while True:
            sent = asyncio.get_running_loop().time()
            try:
                token, left = await self._lease.try_acquire()
            except REDIS_ERRORS as exc:
                failures += 1
                self._metrics.redis_errors.labels("lease").inc()
                log.debug("Lease attempt failed", extra={"error": describe(exc)})
                await asyncio.sleep(
                    backoff_delay(failures, self._lease_s * RETRY_SHARE, MAX_ELECTION_BACKOFF_S)
                )
                continue
            if token is None:
                wait = self._lease_s * RETRY_SHARE
                if left is not None:  # the holder's lease ends sooner: be there then
                    wait = min(wait, left + EXPIRY_MARGIN_S)
                await asyncio.sleep(wait)
                continue
            outcome = await self._lead(token, sent)
            if outcome == "taken":
                failures = 0
                continue
            failures += 1
            # Give another node a chance first, then try again.
            await asyncio.sleep(
                backoff_delay(failures, self._lease_s * RETRY_SHARE, MAX_STEP_DOWN_BACKOFF_S)
            )

    async def _lead(self, token: str, acquired: float) -> str:
        """Run the poller and the notifier until the lease is lost; why it ended."""
        assert self._lease is not None
        broker, lease = self.broker, self._lease
        fence = fence_number(token)
        self._metrics.lease_changes.labels("gained").inc()
        self._metrics.fence.set(fence)
        self.holder = Holder(self.node_id, fence)
        broker.token = token
        self._step_down.clear()
        started = time.monotonic()
        tasks: list[asyncio.Task[Any]] = []
        notifier: Notifier | None = None
        outcome = "failed"
        try:
            await broker.caught_up(self._lease_s * CATCH_UP_SHARE)
            initial = dict(self._state.sessions) if broker.ready else None
            notifier = self._make_notifier()
            if notifier is not None:
                await notifier.start()
            poller = self._make_poller(
                initial, self.persist, notifier.enqueue if notifier is not None else None
            )
            poller.health.broker_error = broker.error
            poller.health.baseline_done = broker.ready
            self.term = Term(poller, notifier)
            self._metrics.leader.set(1)
            self.led_since = time.time()
            log.info(
                "Leading: polling Jules for the cluster",
                extra={
                    "nodeId": self.node_id,
                    "fence": fence,
                    "seq": broker.position.seq,
                    "sessions": len(self._state.sessions),
                    "startSeconds": round(time.monotonic() - started, 3),
                },
            )
            tasks = [
                asyncio.create_task(poller.run(), name="poller"),
                asyncio.create_task(lease.keep(token, acquired), name="lease"),
                asyncio.create_task(self._serve_refresh(poller), name="refresh-requests"),
                asyncio.create_task(self._step_down.wait(), name="step-down"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            outcome = self._why_ended(done, tasks)
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        except (BrokerUnavailable, *REDIS_ERRORS) as exc:
            log.warning("Could not start leading", extra={"error": describe(exc)})
        except Exception:  # e.g. fenced while starting: never let the election end
            log.exception("Leading failed")
        finally:
            # Each step runs even if the one before is cancelled (a stop cancels this task
            # again when it has not ended within STOP_GRACE_S): a skipped notifier.stop
            # would leave its HTTP connections open.
            try:
                await stop_tasks(tasks, broker.shared_clients)
            finally:
                try:
                    if notifier is not None:
                        await notifier.stop()  # saves cursors while the token is still ours
                finally:
                    broker.token = None
                    self.term = None
                    self.led_since = None
            self._metrics.leader.set(0)
            self._state.health = UpstreamHealth(
                baseline_done=broker.ready, broker_error=broker.error
            )
            if outcome != "taken":
                with contextlib.suppress(*REDIS_ERRORS):
                    await lease.release(token)
            self._metrics.lease_changes.labels("lost" if outcome != "stopped" else "released").inc()
            log.log(
                logging.INFO if outcome == "stopped" else logging.WARNING,
                "Stopped leading",
                extra={"nodeId": self.node_id, "fence": fence, "reason": outcome},
            )
        return outcome

    @staticmethod
    def _why_ended(done: set[asyncio.Task[Any]], tasks: list[asyncio.Task[Any]]) -> str:
        poller, lease, _refresh, step_down = tasks
        if lease in done:
            return str(lease.result())  # `taken` or `unconfirmed`
        if step_down in done:
            return "history_changed"
        task = poller if poller in done else _refresh
        exc = task.exception()
        log.error(
            "Leader's poller stopped; stepping down",
            extra={"error": describe(exc) if exc is not None else "ended"},
        )
        return "poller_failed"

    async def _serve_refresh(self, poller: Poller) -> None:
        """Leader: carry out the re-reads other nodes ask for, and answer each."""
        keys, failures = self.broker.keys, 0
        while True:
            try:
                found: Any = await self.broker.blocking_redis.blpop(
                    [keys.refresh], timeout=REFRESH_BLOCK_S
                )
            except REDIS_ERRORS as exc:
                failures += 1
                self._metrics.redis_errors.labels("refresh").inc()
                log.debug("Refresh requests unreadable", extra={"error": describe(exc)})
                await asyncio.sleep(backoff_delay(failures, 0.05, 2.0))
                continue
            failures = 0
            if found is None:
                continue
            try:
                request = _request_decoder.decode(found[1])
            except msgspec.DecodeError:
                log.warning("Refresh request unreadable; dropped")
                continue
            if time.time() - request.at > REFRESH_MAX_AGE_S:
                continue
            try:
                await poller.refresh(request.sessionId, gone_is_deleted=request.gone)
            except UpstreamError as exc:
                log.warning(
                    "Re-read for another node failed; the next poll catches up",
                    extra={"sessionId": request.sessionId, "kind": exc.kind},
                )
            p = self.broker.position
            with contextlib.suppress(*REDIS_ERRORS):
                pipe = self.broker.redis.pipeline(transaction=False)
                pipe.rpush(keys.reply(request.id), f"{p.epoch} {p.seq} {p.activities_seq}")
                pipe.pexpire(keys.reply(request.id), REPLY_TTL_MS)
                await pipe.execute()

    # -- commands on any node --

    async def refresh(self, session_id: str, *, gone_is_deleted: bool = False) -> None:
        """Have the session re-read and its change published; wait until it is delivered here.

        On the leader this is the poller's own re-read (UpstreamError when it fails). On a
        follower the leader is asked; if it does not answer within REFRESH_WAIT_S the next
        poll publishes the change, and the log says so.
        """
        term = self.term
        if term is not None:
            await term.poller.refresh(session_id, gone_is_deleted=gone_is_deleted)
            return
        keys = self.broker.keys
        request = _Request(request_id(), session_id, gone_is_deleted, time.time())
        try:
            pipe = self.broker.redis.pipeline(transaction=False)
            pipe.rpush(keys.refresh, encode(request))
            pipe.ltrim(keys.refresh, -REFRESH_QUEUE_MAX, -1)
            await pipe.execute()
            found: Any = await self.broker.blocking_redis.blpop(
                [keys.reply(request.id)], timeout=REFRESH_WAIT_S
            )
        except REDIS_ERRORS as exc:
            self._metrics.redis_errors.labels("refresh").inc()
            log.warning(
                "Re-read not asked of the leader (Redis failing); the next poll catches up",
                extra={"sessionId": session_id, "error": describe(exc)},
            )
            return
        if found is None:
            log.warning(
                "The leader did not answer a re-read in time; the next poll catches up",
                extra={"sessionId": session_id, "waitSeconds": REFRESH_WAIT_S},
            )
            return
        epoch, seq, aseq = found[1].decode().split()
        await self._delivered(epoch, int(seq), int(aseq))

    async def _delivered(self, epoch: str, seq: int, aseq: int) -> None:
        """Wait (briefly) until this node has delivered up to the position."""
        deadline = time.monotonic() + REFRESH_WAIT_S
        while time.monotonic() < deadline:
            p = self.broker.position
            if p.epoch != epoch or (p.seq >= seq and p.activities_seq >= aseq):
                return
            await asyncio.sleep(0.005)

    # -- what each node says about itself --

    async def _report_forever(self) -> None:
        """Every third of a lease: record this node's figures, read everyone's."""
        every = self._lease_s * RENEW_SHARE
        while True:
            try:
                await self._report()
            except REDIS_ERRORS as exc:
                self._metrics.redis_errors.labels("report").inc()
                log.debug("Node report failed", extra={"error": describe(exc)})
            await asyncio.sleep(every)

    async def _report(self) -> None:
        assert self._lease is not None
        broker, keys = self.broker, self.broker.keys
        shared: Any = await broker.redis.hget(keys.position, "seq")
        self.lag_events = max(0, int(shared or 0) - broker.position.seq)
        self._metrics.lag_events.set(self.lag_events)
        term = self.term
        mine = {
            "clients": len(self._hub),
            "lagEvents": self.lag_events,
            "seq": broker.position.seq,
            # The leader's poller health (stable reasons, no error text): how followers'
            # /api/stats can tell that Jules is failing, which their own /healthz cannot.
            "health": term.poller.health.reasons() if term is not None else None,
            "at": time.time(),
        }
        pipe = broker.redis.pipeline(transaction=False)
        pipe.hset(keys.nodes, self.node_id, encode(mine))
        pipe.hgetall(keys.nodes)
        _, rows = await pipe.execute()
        stale = time.time() - self._lease_s * 3
        nodes: dict[str, dict[str, Any]] = {}
        for node, raw in rows.items():
            report = msgspec.json.decode(raw)
            if report.get("at", 0) < stale:
                await broker.redis.hdel(keys.nodes, node)  # a node that left without a word
                continue
            nodes[node.decode()] = report
        self.nodes = nodes
        self.holder = await self._lease.holder()
        if self.holder is not None:
            self._metrics.fence.set(self.holder.fence)

    def stats(self) -> dict[str, object]:
        """The cluster part of /api/stats: this node, the leader, every node's figures."""
        now = time.time()
        holder = self.holder
        return {
            "cluster": {
                "nodeId": self.node_id,
                "leader": holder.node_id if holder is not None else None,
                "fence": holder.fence if holder is not None else None,
                "isLeader": self.leading,
                "leadingSince": self.led_since,
                "epoch": self.broker.position.epoch,
                "streamLagEvents": self.lag_events,
                "redisError": self.broker.error,
                "nodes": [
                    {
                        "nodeId": node,
                        "clients": report.get("clients"),
                        "lagEvents": report.get("lagEvents"),
                        # Who holds the lease now, not what a node last said of itself:
                        # a killed leader's report lingers until it is found stale.
                        "leader": holder is not None and node == holder.node_id,
                        "seq": report.get("seq"),
                        "health": report.get("health"),
                        "reportedSecondsAgo": round(now - float(report.get("at", now)), 3),
                    }
                    for node, report in sorted(self.nodes.items())
                ],
            }
        }
