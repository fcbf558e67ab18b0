"""The Redis broker: one shared stream per channel, numbered by the leader, read by every node.

Publishing is one Lua script per batch, so a batch is in Redis whole or not at all: it checks
the publisher's fencing token and that each channel's first seq follows the shared position,
appends every event to its channel's stream (an explicit ID `<seq>-0`, so `XRANGE` by seq
works, and `MAXLEN` HISTORY_SIZE: exact, not `~`, so every node and the memory broker keep the
same window; at a few events a second exact trimming costs nothing measurable; a batch larger
than the window is kept whole until the next one, so every reader gets all of it), applies
the deltas to the shared snapshot (a hash of session id -> session JSON) and moves the
position. Every node, the leader included, delivers from the
streams: a blocking `XREAD` loop turns what it reads into batches and hands them to the local
sinks (state, hub) exactly as the memory broker does, so one node and many run the same code.

Keys, all under one hash tag so that a Redis Cluster keeps them in one slot:

    {p}:position                 hash: epoch, seq, aseq, batch, baseline
    {p}:snapshot                 hash: session id -> session JSON
    {p}:fence                    the current leader's fencing token (leader.py)
    {p}:stream:<epoch>:sessions  stream of deltas; :activities, stream of activities
    {p}:webhooks                 hash: endpoint digest -> webhook cursor (without PERSIST)

`position` is what this node has *delivered* (read together with the state, with no await in
between, as in one process); the shared position may be ahead by what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from control_room import logging as logs
from control_room.backoff import backoff_delay
from control_room.broker.base import (
    ACTIVITIES,
    SESSIONS,
    Batch,
    BrokerUnavailable,
    Channel,
    Entry,
    Fenced,
    HistoryGone,
    Sink,
    Tag,
    stamp_activity_list,
    stamp_changes,
)
from control_room.broker.memory import MAX_REPLAY_FROM_OLDER, OlderHistory, contiguous, new_epoch
from control_room.messages import ActivityMessage
from control_room.metrics import ClusterMetrics
from control_room.models import Activity, Change, JulesSession, Position, SessionDelta, Snapshot
from control_room.models import encode as encode_json

READ_BLOCK_MS: Final = 1_000
"""How long one `XREAD` waits for news. Between two reads a node checks the shared epoch, so
a Redis that came back empty is noticed within about a second even when nothing is published."""
COMMAND_TIMEOUT_S: Final = 2.0
"""A Redis command that has not answered in two seconds (a local round trip is ~0.2 ms) means
Redis is in trouble: the caller backs off and tries again instead of hanging."""
CONNECT_TIMEOUT_S: Final = 1.0  # connecting to a reachable Redis takes a millisecond
MAX_CONNECTIONS: Final = 64
"""Connections per client: a few blocking reads (stream, refresh requests, commands waiting
for their delta) and short commands; more waiting at once than this queue for a connection."""
DELIVERY_WAIT_S: Final = 2.0
"""How long `publish` waits for this node's own reader to deliver the batch. It normally
takes a round trip; waiting longer would hold the poller up while Redis is failing, and the
batch is published either way."""
REACH_WAIT_S: Final = 1.0
"""How long a client's resume (or `/api/deltas`) ahead of this node waits for the node's
reader when the shared stream already holds that position: a reader is normally a round trip
behind, a second covers a busy node; longer would hold a reconnect storm's handshakes up."""
REACH_POLL_S: Final = 0.005  # how often that wait looks at the delivered position
MAX_READ_BACKOFF_S: Final = 5.0
"""The reader retries a failing Redis at most this far apart: soon back once Redis is."""
STOP_GRACE_S: Final = 0.2  # a cancelled Redis call ends at once, unless redis-py lost the cancel
STOP_ATTEMPTS: Final = 5
MAX_SEED_SESSIONS_PER_CALL: Final = 1_000  # a baseline of 10,000 sessions: ten short calls

log = logs.get("broker")

_route_type = tuple[tuple[str, str] | None, tuple[str, str] | None]
_route_decoder: Final = msgspec.json.Decoder(_route_type)
_session_decoder: Final = msgspec.json.Decoder(JulesSession)
_delta_decoder: Final = msgspec.json.Decoder(SessionDelta)

# --- scripts ------------------------------------------------------------------------------

_PUBLISH: Final = """
-- KEYS: position, snapshot, fence, sessions stream, activities stream
-- ARGV: token, epoch, maxlen, deltas, activities, nonce, then 5 per delta (seq, id, payload,
--       route, session JSON or '' when deleted) and 4 per activity (seq, id, payload, route)
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('FENCED another node leads now')
end
local pos = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'aseq', 'batch')
if pos[1] ~= ARGV[2] then
  return redis.error_reply('EPOCH the shared history is ' .. tostring(pos[1]))
end
local nd, na = tonumber(ARGV[4]), tonumber(ARGV[5])
local seq, aseq = tonumber(pos[2]), tonumber(pos[3])
local first = 7
for d = 0, nd - 1 do
  if tonumber(ARGV[first + d * 5]) ~= seq + d + 1 then
    return redis.error_reply(
      'GAP sessions seq ' .. ARGV[first + d * 5] .. ' does not follow ' .. (seq + d))
  end
end
local afirst = first + nd * 5
for a = 0, na - 1 do
  if tonumber(ARGV[afirst + a * 4]) ~= aseq + a + 1 then
    return redis.error_reply(
      'GAP activities seq ' .. ARGV[afirst + a * 4] .. ' does not follow ' .. (aseq + a))
  end
end
local batch = tonumber(pos[4] or '0') + 1
local now = redis.call('TIME')
local ms = tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local size = nd .. ':' .. na  -- every entry says what its batch holds: a reader sees it whole
local keep_d = math.max(tonumber(ARGV[3]), nd)  -- never trim the batch being written
local keep_a = math.max(tonumber(ARGV[3]), na)
for d = 0, nd - 1 do
  local i = first + d * 5
  redis.call('XADD', KEYS[4], 'MAXLEN', keep_d, ARGV[i] .. '-0',
    'b', batch, 'c', size, 't', ms, 'n', ARGV[6],
    'i', ARGV[i + 1], 'p', ARGV[i + 2], 'r', ARGV[i + 3])
  if ARGV[i + 4] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
  else
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 4])
  end
end
for a = 0, na - 1 do
  local i = afirst + a * 4
  redis.call('XADD', KEYS[5], 'MAXLEN', keep_a, ARGV[i] .. '-0',
    'b', batch, 'c', size, 't', ms, 'n', ARGV[6],
    'i', ARGV[i + 1], 'p', ARGV[i + 2], 'r', ARGV[i + 3])
end
redis.call('HSET', KEYS[1], 'seq', seq + nd, 'aseq', aseq + na, 'batch', batch)
return batch
"""

_BASELINE: Final = """
-- KEYS: position, snapshot, fence; ARGV: token, epoch, first ('1': replace the snapshot),
--       last ('1': the baseline is complete), then id, JSON pairs
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('FENCED another node leads now')
end
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  return redis.error_reply('EPOCH the shared history has changed')
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'baseline', '0')
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'baseline', '1')
end
return 1
"""

_INIT: Final = """
-- KEYS: position, snapshot; ARGV: epoch, seq, aseq, baseline. Only when no history exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'epoch')
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[2], 'aseq', ARGV[3],
  'batch', '0', 'baseline', ARGV[4])
return ARGV[1]
"""

_ROLL_OVER: Final = """
-- KEYS: position, webhooks, fence, leader, the old epoch's sessions and activities streams
-- ARGV: the epoch that went back, the new epoch. Only while the old epoch is still current
-- (another node may have rolled over first). The snapshot and the baseline flag stay: the
-- snapshot is consistent with the position Redis kept, and the new epoch starts from it.
-- The lease and the fencing token go: the leader's poller diffs against what it published,
-- not against this snapshot, so it must not publish again before it is elected anew.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return redis.call('HGET', KEYS[1], 'epoch')
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'seq', '0', 'aseq', '0', 'batch', '0')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return ARGV[2]
"""

_SEED: Final = """
-- KEYS: position, snapshot; ARGV: epoch, then id, JSON pairs (a store's snapshot, in parts)
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

_SET_CURSOR: Final = """
-- KEYS: fence, webhooks; ARGV: token, endpoint digest, seq
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED another node leads now')
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


# --- keys and connections -----------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Every key of one cluster, under one hash tag."""

    prefix: str

    def _key(self, name: str) -> str:
        return f"{{{self.prefix}}}:{name}"

    @property
    def position(self) -> str:
        """Hash: epoch, seq, aseq, batch, baseline."""
        return self._key("position")

    @property
    def snapshot(self) -> str:
        """Hash: session id -> session JSON."""
        return self._key("snapshot")

    @property
    def fence(self) -> str:
        """The current leader's fencing token."""
        return self._key("fence")

    @property
    def fence_counter(self) -> str:
        """The fencing number, incremented by each new leader."""
        return self._key("fence:counter")

    @property
    def leader(self) -> str:
        """The lease: `<node id> <token>`, with an expiry."""
        return self._key("leader")

    @property
    def webhooks(self) -> str:
        """Hash: endpoint digest -> webhook cursor."""
        return self._key("webhooks")

    @property
    def nodes(self) -> str:
        """Hash: node id -> what the node last reported (clients, lag)."""
        return self._key("nodes")

    @property
    def refresh(self) -> str:
        """List: session re-reads asked of the leader by other nodes."""
        return self._key("refresh")

    def reply(self, request: str) -> str:
        """List: the leader's answer to one re-read request."""
        return self._key(f"refresh:{request}")

    def stream(self, epoch: str, channel: Channel) -> str:
        """One channel's stream in one epoch (a new epoch never reads an old stream)."""
        return self._key(f"stream:{epoch}:{channel}")


def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client for the cluster's Redis; `blocking` for one that waits in `XREAD`/`BLPOP`.

    Retries are off: every caller has its own policy, and a publish must never be sent twice
    behind its back.
    """
    timeout = COMMAND_TIMEOUT_S + (READ_BLOCK_MS / 1000 if blocking else 0)
    # A blocking pool: past MAX_CONNECTIONS a caller waits for a connection (up to the
    # command timeout) instead of failing at once.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT_S,
        socket_timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    return client


async def drop_cluster(url: str, prefix: str) -> int:
    """Delete every key of the cluster under `prefix` (tests, benchmarks, `make cluster`);
    how many. Raises one of REDIS_ERRORS."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{{{prefix}}}*", count=1000)]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()


REDIS_ERRORS: Final = (RedisError, OSError)
"""What a Redis call raises when Redis is unreachable, slow or refuses."""


def describe(exc: BaseException) -> str:
    """A one-line account of a Redis failure (never the URL, which may hold a password)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], clients: Sequence[aioredis.Redis]) -> None:
    """Cancel tasks that may be inside a Redis call, and wait until they have ended.

    redis-py (8.1) can swallow a cancellation that lands while a connection is being set up,
    and the task then carries on; closing the clients' connections ends whatever call it is
    in, and the task is cancelled again.
    """
    pending = [t for t in tasks if not t.done()]
    for _ in range(STOP_ATTEMPTS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=STOP_GRACE_S)
        pending = list(still)
        if pending:
            for client in clients:
                with contextlib.suppress(*REDIS_ERRORS):
                    await client.connection_pool.disconnect()
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error was logged where it happened
    if pending:
        log.error("Redis tasks did not stop", extra={"tasks": [t.get_name() for t in pending]})


def _went_back(
    seq: int,
    aseq: int,
    delivered: Position,
    published: Position | None,
    checks: list[tuple[bytes, list[Any]]],
) -> bool:
    """True when the shared head (seq, aseq) of a node's epoch is behind what the node had
    delivered or published when it asked for the head, or an entry it delivered was since
    rewritten (`checks`: that entry's nonce, and the stream's entries at its seq now).

    Both positions must be taken before the head is asked for: a publish answered later (on
    another connection, while the head's reply waits in the loop) may be ahead of that head
    without anything having gone back.
    """
    if seq < delivered.seq or aseq < delivered.activities_seq:
        return True
    if (
        published is not None
        and published.epoch == delivered.epoch
        and (seq < published.seq or aseq < published.activities_seq)
    ):
        return True
    return any(rows and rows[0][1].get(b"n", b"") != nonce for nonce, rows in checks)


def _int(value: bytes | None, default: int = 0) -> int:
    return int(value) if value is not None else default


def _seq_of(stream_id: bytes) -> int:
    return int(stream_id.partition(b"-")[0])


def _route_bytes(route: tuple[Tag | None, Tag | None]) -> bytes:
    return encode_json(route)


def _entry(channel: Channel, stream_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    before, after = _route_decoder.decode(fields[b"r"])
    return Entry(_seq_of(stream_id), fields[b"i"].decode(), fields[b"p"], channel, (before, after))


ResetHandler = Callable[[Snapshot, bool, str], None]
"""Called (synchronously) when this node adopts the shared state anew: the sessions, whether a
baseline exists, and why (`start`, `baseline`, `epoch_changed`, `gap`, `rolled_back`)."""
QUIET_RESETS: Final = ("start", "baseline")
"""Resets that lose nothing a client saw: the state is adopted, clients stay connected. A
baseline is adopted at the position this node has delivered (see `_adopt_baseline`), so the
stream after it reaches clients whole."""
ROLLED_BACK: Final = "rolled_back"
"""The shared history went back behind what this node delivered or published (Redis restarted
from an older RDB or AOF, an asynchronous replica promoted): a new epoch starts."""


@dataclass
class _Read:
    """One stream entry as read, waiting to be grouped into its batch."""

    batch: int
    size: tuple[int, int]  # (deltas, activities) in the whole batch
    published_ms: int
    nonce: bytes  # the publish call's: the same seq rewritten by another publish differs
    entry: Entry


class RedisBroker:
    """A cluster member's broker: publishes (when it leads) and delivers from Redis streams."""

    def __init__(
        self,
        url: str,
        prefix: str,
        history_size: int,
        metrics: ClusterMetrics,
        *,
        older: OlderHistory | None = None,
        seed: Callable[[], Awaitable[tuple[Position, Snapshot] | None]] | None = None,
    ) -> None:
        self.keys = Keys(prefix)
        self._url = url
        self._size = history_size
        self._metrics = metrics
        self._older = older
        self._seed = seed
        self._redis: aioredis.Redis | None = None
        self._reader_redis: aioredis.Redis | None = None  # the stream reader's alone
        self._blocking: aioredis.Redis | None = None
        self._position = Position("", 0, 0)
        self._batch = 0  # the last batch number delivered here
        # The last entry delivered here per channel, (seq, nonce): if the shared stream later
        # holds another entry at that seq, history was rewritten under this node.
        self._last: dict[Channel, tuple[int, bytes]] = {}
        # The leader's last successful publish: Redis is behind it only if it lost data.
        self._published: Position | None = None
        self.ready = False
        """True once a baseline exists in the shared snapshot (the cluster has sessions)."""
        self._sinks: list[Sink] = []
        self._own: dict[int, Batch] = {}  # batches this node published, not yet read back
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.token: str | None = None
        """The fencing token this node publishes with while it leads (None: it follows)."""
        self.on_reset: ResetHandler = lambda sessions, ready, reason: None
        self.on_health: Callable[[str | None], None] = lambda error: None
        self.error: str | None = None
        """Why Redis is failing now (None: it answers)."""
        self._scripts: dict[str, Any] = {}

    # -- lifecycle --

    @property
    def redis(self) -> aioredis.Redis:
        """The command client (for leader.py and the cluster); raises before `start`."""
        if self._redis is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._redis

    @property
    def clients(self) -> list[aioredis.Redis]:
        """Every open client (none before `start`)."""
        return [c for c in (self._redis, self._blocking, self._reader_redis) if c is not None]

    @property
    def shared_clients(self) -> list[aioredis.Redis]:
        """The clients other parts use (the stream reader's own is not among them)."""
        return [c for c in (self._redis, self._blocking) if c is not None]

    @property
    def blocking_redis(self) -> aioredis.Redis:
        """A client for blocking waits (`BLPOP`) of other parts; raises before `start`."""
        if self._blocking is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._blocking

    @property
    def _stream_redis(self) -> aioredis.Redis:
        if self._reader_redis is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._reader_redis

    async def start(self) -> None:
        """Connect, create the shared history if there is none, adopt it, start reading.

        Raises BrokerUnavailable when Redis cannot be reached at all.
        """
        self._redis = connect(self._url)
        self._blocking = connect(self._url, blocking=True)
        self._reader_redis = connect(self._url, blocking=True)
        for name, text in (
            ("publish", _PUBLISH),
            ("baseline", _BASELINE),
            ("init", _INIT),
            ("seed", _SEED),
            ("roll_over", _ROLL_OVER),
            ("cursor", _SET_CURSOR),
        ):
            self._scripts[name] = self._redis.register_script(text)
        try:
            await self._ensure_history(seed=True)
            await self._resync("start")
        except REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
        self._reader = asyncio.create_task(self._read_forever(), name="stream-reader")

    async def stop(self) -> None:
        """Stop reading and close the connections."""
        if self._reader is not None:
            await stop_tasks([self._reader], self.clients)
            self._reader = None
        for client in self.clients:
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()
        self._redis = self._blocking = self._reader_redis = None
        self._release_waiters()

    # -- the Broker interface --

    @property
    def position(self) -> Position:
        """The epoch and the last seq of each channel *delivered on this node*."""
        return self._position

    def stamp(self, changes: Sequence[Change], timestamp: str) -> list[SessionDelta]:
        """Number changes from this node's position (the leader's is the shared one)."""
        return stamp_changes(changes, timestamp, self._position.seq)

    def stamp_activities(
        self, activities: Sequence[Activity], timestamp: str
    ) -> list[ActivityMessage]:
        """Number activities from this node's position."""
        return stamp_activity_list(activities, timestamp, self._position.activities_seq)

    def add_sink(self, sink: Sink) -> None:
        """Deliver every later batch read from the streams to `sink`."""
        self._sinks.append(sink)

    def _reached(self, seq: int, activities_seq: int | None) -> bool:
        p = self._position
        return p.seq >= seq and (activities_seq is None or p.activities_seq >= activities_seq)

    async def reach(self, seq: int, activities_seq: int | None = None) -> None:
        """Wait (at most REACH_WAIT_S) until this node has delivered up to the position, when
        the shared stream holds it: a client that read it on a node ahead of this one is not
        ahead of the cluster. Returns at once when Redis has not got there either (or does
        not answer): the caller then treats the position as ahead of the server."""
        if self._reached(seq, activities_seq):
            return
        epoch = self._position.epoch
        try:
            head: list[Any] = await self.redis.hmget(self.keys.position, ["epoch", "seq", "aseq"])
        except REDIS_ERRORS:
            return
        shared = Position(head[0].decode() if head[0] is not None else "", *map(_int, head[1:]))
        if shared.epoch != epoch or shared.seq < seq:
            return
        if activities_seq is not None and shared.activities_seq < activities_seq:
            return
        deadline = time.monotonic() + REACH_WAIT_S
        while not self._reached(seq, activities_seq) and self._position.epoch == epoch:
            if time.monotonic() > deadline:
                log.warning(
                    "This node's reader is behind a resuming client's position",
                    extra={"seq": seq, "deliveredSeq": self._position.seq, "sharedSeq": shared.seq},
                )
                return
            await asyncio.sleep(REACH_POLL_S)

    async def publish(self, batch: Batch) -> None:
        """Append the batch to the shared streams in one script; return once delivered here.

        Raises Fenced when another node leads now, ValueError when the batch does not follow
        the shared position (or the epoch changed), BrokerUnavailable when Redis failed (the
        batch may or may not have landed: the caller must re-read the shared state).
        """
        if not batch:
            return
        token = self.token
        if token is None:
            raise Fenced("this node does not lead")
        epoch = self._position.epoch
        args: list[bytes | str | int] = [
            token,
            epoch,
            self._size,
            len(batch.entries),
            len(batch.activities),
            secrets.token_hex(8),  # the nonce every entry of this publish carries
        ]
        for entry, delta in zip(batch.entries, batch.deltas, strict=True):
            after = encode_json(delta.after) if delta.after is not None else b""
            args += [entry.seq, entry.session_id, entry.payload, _route_bytes(entry.route), after]
        for entry in batch.activities:
            args += [entry.seq, entry.session_id, entry.payload, _route_bytes(entry.route)]
        keys = [
            self.keys.position,
            self.keys.snapshot,
            self.keys.fence,
            self.keys.stream(epoch, SESSIONS),
            self.keys.stream(epoch, ACTIVITIES),
        ]
        started = time.perf_counter()
        try:
            number = int(await self._scripts["publish"](keys=keys, args=args))
        except ResponseError as exc:
            raise _refusal(exc) from None
        except REDIS_ERRORS as exc:
            self._metrics.redis_errors.labels("publish").inc()
            raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
        last = self._published or self._position
        self._published = Position(
            epoch,
            batch.last_of(SESSIONS) or last.seq,
            batch.last_of(ACTIVITIES) or last.activities_seq,
        )
        if number > self._batch:
            self._own[number] = batch
            waiter = self._waiting.setdefault(number, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), DELIVERY_WAIT_S)
            except TimeoutError:
                log.warning(
                    "Published batch not read back in time; it is delivered when Redis answers",
                    extra={"batch": number, "waitSeconds": DELIVERY_WAIT_S},
                )
            finally:
                self._own.pop(number, None)
        self._metrics.publish_duration.observe(time.perf_counter() - started)

    async def history(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries after `since` from the shared stream (older ones from the store, if any).

        Only entries this node has delivered are returned: later ones reach a resuming
        client live. Raises HistoryGone when `since` is older than what is kept, ValueError
        when it is ahead of this node, BrokerUnavailable when Redis fails (and no store can
        answer instead).
        """
        position = self._position
        upto = position.seq if channel == SESSIONS else position.activities_seq
        if since > upto:
            raise ValueError(f"since={since} is ahead of the {channel} stream (seq {upto})")
        if since == upto or limit == 0:
            return []
        key = self.keys.stream(position.epoch, channel)
        count = limit if session_id is None else None
        found: list[Any] | None
        try:
            read: Any = await self.redis.xrange(key, min=f"{since + 1}-0", max="+", count=count)
            found = read
        except REDIS_ERRORS as exc:
            self._metrics.redis_errors.labels("history").inc()
            if self._older is None:
                raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
            found = None
        if found and _seq_of(found[0][0]) == since + 1:
            entries = [_entry(channel, sid, fields) for sid, fields in found]
        elif self._older is not None:
            # The stream no longer reaches back to `since` (or Redis is down): the store does.
            if limit is None and upto - since > MAX_REPLAY_FROM_OLDER:
                raise HistoryGone("too_far_behind", upto - MAX_REPLAY_FROM_OLDER + 1)
            entries = await self._older(since, limit, session_id, channel)
            entries = [e for e in entries if e.seq <= upto]
            if session_id is None and not contiguous(entries, since):
                # A hole in the store must not become a silent gap: the client reloads.
                raise HistoryGone("history_expired", entries[0].seq if entries else upto + 1)
        else:
            oldest = _seq_of(found[0][0]) if found else upto + 1
            raise HistoryGone("history_expired", oldest)
        upto_now = self._channel_seq(channel)
        entries = [e for e in entries if e.seq <= upto_now]
        if session_id is not None:
            entries = [e for e in entries if e.session_id == session_id]
        return entries[:limit] if limit is not None else entries

    # -- what the leader writes besides batches --

    async def save_baseline(self, sessions: Snapshot) -> None:
        """Replace the shared snapshot with a first complete listing (fenced, in parts).

        Followers adopt it once it is complete. Raises Fenced, ValueError (epoch changed) or
        BrokerUnavailable.
        """
        token = self.token
        if token is None:
            raise Fenced("this node does not lead")
        items = list(sessions.items())
        parts = [
            items[i : i + MAX_SEED_SESSIONS_PER_CALL]
            for i in range(0, len(items), MAX_SEED_SESSIONS_PER_CALL)
        ] or [[]]
        keys = [self.keys.position, self.keys.snapshot, self.keys.fence]
        for n, part in enumerate(parts):
            args: list[bytes | str] = [
                token,
                self._position.epoch,
                "1" if n == 0 else "0",
                "1" if n == len(parts) - 1 else "0",
            ]
            for sid, session in part:
                args += [sid, encode_json(session)]
            try:
                await self._scripts["baseline"](keys=keys, args=args)
            except ResponseError as exc:
                raise _refusal(exc) from None
            except REDIS_ERRORS as exc:
                self._metrics.redis_errors.labels("publish").inc()
                raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
        self.ready = True

    async def caught_up(self, within: float) -> None:
        """Wait until this node has delivered everything published so far.

        A node that starts leading calls this first: its state is then the shared snapshot
        at the shared position, so its poller diffs against what every client has. Raises
        BrokerUnavailable when Redis fails or the reader does not get there within `within`.
        """
        delivered, published = self._position, self._published  # as of asking (_read_once)
        try:
            head: list[Any] = await self.redis.hmget(self.keys.position, ["epoch", "seq", "aseq"])
        except REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
        epoch = head[0].decode() if head[0] is not None else None
        seq, aseq = _int(head[1]), _int(head[2])
        if epoch == delivered.epoch and _went_back(seq, aseq, delivered, published, []):
            # Numbering from the shared head would reuse seqs clients already hold: the
            # reader starts a new epoch (within READ_BLOCK_MS); lead after that.
            raise BrokerUnavailable(f"the shared history went back to seq {seq}")
        deadline = time.monotonic() + within
        while True:
            p = self._position
            if p.epoch == epoch and p.seq >= seq and p.activities_seq >= aseq:
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"this node has delivered up to {p.seq} of {seq}; its reader is behind"
                )
            await asyncio.sleep(0.005)

    # -- the webhook outbox (without PERSIST the stream is the outbox) --

    async def webhook_cursor(self, endpoint: str) -> int | None:
        """The seq of the last delta done with for `endpoint`; None if new."""
        try:
            found = await self.redis.hget(self.keys.webhooks, _digest(endpoint))
        except REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
        return int(found) if found is not None else None

    async def set_webhook_cursor(self, endpoint: str, seq: int) -> None:
        """Record the cursor, only while this node leads (an old leader cannot move it)."""
        token = self.token
        if token is None:
            raise Fenced("this node does not lead")
        try:
            await self._scripts["cursor"](
                keys=[self.keys.fence, self.keys.webhooks], args=[token, _digest(endpoint), seq]
            )
        except ResponseError as exc:
            raise _refusal(exc) from None
        except REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc

    # -- reading --

    def _channel_seq(self, channel: Channel) -> int:
        p = self._position
        return p.seq if channel == SESSIONS else p.activities_seq

    async def _ensure_history(self, *, seed: bool = False) -> None:
        """Create the shared history if Redis has none: a new epoch, or at start (`seed`) the
        store's history, so a single node with PERSIST=1 becomes a cluster without a reset.

        Redis lost while running always starts a new epoch: the store may hold a poll that
        was saved but never published, and no node could tell its clients about it.
        """
        if await self.redis.exists(self.keys.position):
            return
        seeded = await self._seed() if seed and self._seed is not None else None
        position, sessions = seeded if seeded is not None else (Position(new_epoch(), 0), {})
        keys = [self.keys.position, self.keys.snapshot]
        # The position is written last by a seed in parts: first a not-yet-baselined history,
        # then the sessions, then the baseline flag, so no node adopts half a snapshot.
        epoch = (
            await self._scripts["init"](
                keys=keys,
                args=[position.epoch, position.seq, position.activities_seq, "0"],
            )
        ).decode()
        if epoch != position.epoch:
            return  # another node created it first
        items = list(sessions.items())
        for i in range(0, len(items), MAX_SEED_SESSIONS_PER_CALL):
            args: list[bytes | str] = [epoch]
            for sid, session in items[i : i + MAX_SEED_SESSIONS_PER_CALL]:
                args += [sid, encode_json(session)]
            await self._scripts["seed"](keys=keys, args=args)
        if seeded is not None:
            await self.redis.hset(self.keys.position, "baseline", "1")
        log.info(
            "Shared history created",
            extra={
                "epoch": epoch,
                "seq": position.seq,
                "fromStore": seeded is not None,
                "sessions": len(sessions),
            },
        )

    async def _load(self) -> tuple[Position, int, bool, Snapshot]:
        """The shared position, batch number, baseline flag and snapshot, read atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.position)
        pipe.hgetall(self.keys.snapshot)
        head, rows = await pipe.execute()
        epoch = head.get(b"epoch")
        position = Position(
            epoch.decode() if epoch is not None else "",
            _int(head.get(b"seq")),
            _int(head.get(b"aseq")),
        )
        sessions = {sid.decode(): _session_decoder.decode(body) for sid, body in rows.items()}
        return position, _int(head.get(b"batch")), head.get(b"baseline") == b"1", sessions

    async def _resync(self, reason: str) -> None:
        """Adopt the shared state anew (at start, at a baseline, after a loss)."""
        position, batch, ready, sessions = await self._load()
        self._position, self._batch, self.ready = position, batch, ready
        self._last.clear()
        self._published = None
        self._own.clear()
        self._release_waiters()
        if reason not in QUIET_RESETS:
            self._metrics.resyncs.labels(reason).inc()
            log.warning(
                "Shared history changed under this node; state reloaded",
                extra={"reason": reason, "epoch": position.epoch, "seq": position.seq},
            )
        self.on_reset(sessions, ready, reason)

    async def _adopt_baseline(self) -> None:
        """Adopt the leader's first complete listing *at the position delivered here*.

        The leader may already have published after its baseline; the shared snapshot then
        includes those deltas. Adopting it as it is would move this node past them without
        delivering them, and a client that was `reset` into this epoch would miss them (a
        silent gap). So the deltas in between are undone on the snapshot (each carries its
        `before`), and the next read delivers them as usual.
        """
        position, _, ready, sessions = await self._load()
        p = self._position
        if position.epoch != p.epoch:
            await self._resync("epoch_changed")
            return
        if not ready:  # a newer baseline is being written in parts: wait for it whole
            return
        if position.seq > p.seq:
            key = self.keys.stream(p.epoch, SESSIONS)
            rows: Any = await self._stream_redis.xrange(
                key, min=f"{p.seq + 1}-0", max=f"{position.seq}-0"
            )
            if len(rows) != position.seq - p.seq:  # trimmed already: cannot be undone
                await self._resync("gap")
                return
            for stream_id, fields in reversed(rows):
                delta = _entry(SESSIONS, stream_id, fields)
                before = _delta_decoder.decode(delta.payload).before
                if before is None:
                    sessions.pop(delta.session_id, None)
                else:
                    sessions[delta.session_id] = before
        self.ready = True
        self.on_reset(sessions, True, "baseline")

    async def _read_forever(self) -> None:
        """Read and deliver until cancelled; a failing Redis is retried with backoff."""
        failures = 0
        while True:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                failures += 1
                self._metrics.redis_errors.labels("read").inc()
                error = describe(exc)
                if self.error is None:
                    log.error("Redis unreachable; clients keep their state", extra={"error": error})
                self.error = error
                self.on_health(error)
                await asyncio.sleep(backoff_delay(failures, 0.05, MAX_READ_BACKOFF_S))
                continue
            if failures:
                log.info("Redis reachable again", extra={"afterFailures": failures})
                failures = 0
            if self.error is not None:
                self.error = None
                self.on_health(None)

    async def _read_once(self) -> None:
        """Check the shared history is still ours, then read and deliver what is new."""
        p = self._position
        # What this node had published when the read was sent: Redis answers the HMGET
        # below after every publish whose reply came before, so the head it gives can be
        # compared with this. A publish answered later (on another connection, while this
        # reply waits in the loop) may be ahead of that head without anything going back.
        published = self._published
        pipe = self._stream_redis.pipeline(transaction=False)
        pipe.xread(
            {
                self.keys.stream(p.epoch, SESSIONS): f"{p.seq}-0",
                self.keys.stream(p.epoch, ACTIVITIES): f"{p.activities_seq}-0",
            },
            block=READ_BLOCK_MS,
        )
        # Read after the wait, so it says how things are now, not before the block.
        pipe.hmget(self.keys.position, ["epoch", "seq", "aseq", "baseline"])
        # The entries this node delivered last, as the streams hold them now.
        last = list(self._last.items())
        for channel, (seq, _) in last:
            pipe.xrange(self.keys.stream(p.epoch, channel), min=f"{seq}-0", max=f"{seq}-0")
        found, head, *now = await pipe.execute()
        epoch = head[0].decode() if head[0] is not None else None
        if epoch is None:  # Redis came back empty, or was flushed
            await self._ensure_history()
            await self._resync("epoch_changed")
            return
        if epoch != p.epoch:
            await self._resync("epoch_changed")
            return
        checks = [(nonce, rows) for (_, (_, nonce)), rows in zip(last, now, strict=True)]
        if _went_back(_int(head[1]), _int(head[2]), p, published, checks):
            await self._roll_over(epoch, _int(head[1]))
            return
        if not self.ready and head[3] == b"1":
            await self._adopt_baseline()
            return
        if found:
            await self._deliver_read(found)

    async def _roll_over(self, epoch: str, seq: int) -> None:
        """The shared history went back: start a new epoch, so no (epoch, seq) that a client
        or a webhook receiver may hold is ever numbered again with other content.

        Continuing from the older head would hand out seqs clients hold with other content
        and repeat webhook ids; a new epoch makes every client `reset` instead. Any node that
        notices does it (the script only acts while `epoch` is current, so one node does);
        the lease and the fencing token are dropped with the old epoch, so the leader can
        publish nothing more until a node is elected anew (from the snapshot Redis kept).
        """
        new = new_epoch()
        keys = [
            self.keys.position,
            self.keys.webhooks,  # cursors count seqs of the old epoch: new endpoints now
            self.keys.fence,
            self.keys.leader,
            self.keys.stream(epoch, SESSIONS),
            self.keys.stream(epoch, ACTIVITIES),
        ]
        current: bytes | None = await self._scripts["roll_over"](keys=keys, args=[epoch, new])
        if current is not None and current.decode() != new:  # another node was first
            await self._resync("epoch_changed")
            return
        p = self._position
        log.error(
            "Shared history went back behind this node; a new epoch starts",
            extra={
                "epoch": epoch,
                "newEpoch": new,
                "deliveredSeq": p.seq,
                "publishedSeq": self._published.seq if self._published is not None else None,
                "sharedSeq": seq,
            },
        )
        await self._ensure_history()  # Redis may have been emptied meanwhile
        await self._resync(ROLLED_BACK)

    async def _deliver_read(self, found: list[Any]) -> None:
        """Group what XREAD returned into batches (by batch number) and deliver each."""
        reads: dict[int, list[_Read]] = {}
        for name, items in found:
            channel: Channel = ACTIVITIES if name.endswith(b":activities") else SESSIONS
            for stream_id, fields in items:
                number = int(fields[b"b"])
                deltas, _, activities = fields[b"c"].partition(b":")
                read = _Read(
                    number,
                    (int(deltas), int(activities)),
                    int(fields[b"t"]),
                    fields.get(b"n", b""),
                    _entry(channel, stream_id, fields),
                )
                reads.setdefault(number, []).append(read)
        for number in sorted(reads):
            group = reads[number]
            entries = [r.entry for r in group if r.entry.channel == SESSIONS]
            activities = [r.entry for r in group if r.entry.channel == ACTIVITIES]
            await self._complete(entries, SESSIONS, group[0].size[0])
            await self._complete(activities, ACTIVITIES, group[0].size[1])
            p = self._position
            if (entries and entries[0].seq != p.seq + 1) or (
                activities and activities[0].seq != p.activities_seq + 1
            ):
                # Entries were trimmed before this node read them (it was stalled for
                # longer than the stream holds): deliver nothing rather than a silent gap.
                await self._resync("gap")
                return
            own = self._own.pop(number, None)
            batch = own if own is not None else Batch.of_entries(entries, activities)
            self._position = Position(
                p.epoch,
                entries[-1].seq if entries else p.seq,
                activities[-1].seq if activities else p.activities_seq,
            )
            self._batch = number
            if entries:
                self._last[SESSIONS] = (entries[-1].seq, group[0].nonce)
            if activities:
                self._last[ACTIVITIES] = (activities[-1].seq, group[0].nonce)
            for sink in self._sinks:
                sink.deliver(batch)
            self._metrics.stream_delay.observe(max(0.0, time.time() - group[0].published_ms / 1000))
            for waiting in [n for n in self._waiting if n <= number]:
                future = self._waiting.pop(waiting)
                if not future.done():
                    future.set_result(None)

    async def _complete(self, entries: list[Entry], channel: Channel, size: int) -> None:
        """Read the rest of a batch a reply held only part of (a Redis before 7.0 answers a
        blocked XREAD with the stream that woke it alone)."""
        missing = size - len(entries)
        if missing <= 0:
            return
        start = (entries[-1].seq if entries else self._channel_seq(channel)) + 1
        key = self.keys.stream(self._position.epoch, channel)
        more: Any = await self._stream_redis.xrange(key, min=f"{start}-0", count=missing)
        entries.extend(_entry(channel, sid, fields) for sid, fields in more)

    def _release_waiters(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)
        self._waiting.clear()


def _refusal(exc: ResponseError) -> ValueError:
    """A script's refusal as the exception the Broker interface promises."""
    message = str(exc)
    if message.startswith("FENCED"):
        return Fenced(message.removeprefix("FENCED ").strip())
    return ValueError(message.partition(" ")[2] or message)


def _digest(endpoint: str) -> str:
    """A webhook URL as Redis keeps it: a digest (the URL may carry a credential)."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:32]


def request_id() -> str:
    """A fresh id for one re-read request."""
    return secrets.token_hex(8)
