"""The leader's lease in Redis, and the fencing token that makes a lost lease harmless.

One node of a cluster polls Jules: the one holding the lease, a key set with `NX PX` and
renewed every third of its life. Each new holder also takes a fencing token (the epoch and a
number that only grows, `INCR`), and the publish script refuses any token but the newest. So
a leader that was paused (a long GC, SIGSTOP, a VM migration) and wakes up after its lease
expired cannot publish anything, even before it notices it has lost the lease: the numbering
of the shared stream has exactly one writer at any time.

A holder that cannot reach Redis stops leading when its lease would have expired by its own
clock (counted from when it *sent* the last successful renewal, which is conservative).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from control_room import logging as logs
from control_room.broker.redis import REDIS_ERRORS, Keys, describe

RENEW_SHARE: Final = 1 / 3
"""Renew when a third of the lease has passed: two renewals can fail (a Redis failover, a
slow network) before the lease runs out."""
RETRY_SHARE: Final = 1 / 10
"""A follower tries to take the lease at least this often, and also the moment the holder's
lease runs out (it is told when): a killed leader is replaced one lease after its last renewal."""
EXPIRY_MARGIN_S: Final = 0.002  # try just after the lease's end, not just before it
INSTANCE_MARK: Final = "#"  # in the lease's value: `<node id>#<process instance> <token>`

log = logs.get("leader")

_ACQUIRE: Final = """
-- KEYS: leader, fence, fence counter, position; ARGV: holder (node id and instance), lease ms
local epoch = redis.call('HGET', KEYS[4], 'epoch')
if not epoch then return -3 end
local held = redis.call('GET', KEYS[1])
if held then
  local prefix = ARGV[1] .. ' '
  if string.sub(held, 1, #prefix) == prefix and redis.call('GET', KEYS[2]) ==
      string.sub(held, #prefix + 1) then
    -- Ours already: the reply to our last attempt was lost. Take it up again, for a
    -- whole lease from now, rather than leave the cluster leaderless until it runs out.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return string.sub(held, #prefix + 1)
  end
  return redis.call('PTTL', KEYS[1])  -- another's: how long until it runs out (ms)
end
local token = epoch .. ':' .. redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'NX', 'PX', ARGV[2])
redis.call('SET', KEYS[2], token)
return token
"""

_RENEW: Final = """
-- KEYS: leader; ARGV: node id and token, lease ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE: Final = """
-- KEYS: leader; ARGV: node id and token
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease: a node id and its fencing number."""

    node_id: str
    fence: int


def fence_number(token: str) -> int:
    """The number part of a fencing token (`<epoch>:<n>`)."""
    return int(token.rpartition(":")[2])


class Lease:
    """This node's side of the lease: take it, keep it, give it back."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, node_id: str, lease: float) -> None:
        self._redis = redis
        self._keys = keys
        self.node_id = node_id
        self.lease = lease
        # Which process holds the lease, not only which node id: two processes started with
        # the same NODE_ID by mistake must never take up each other's lease as their own.
        self._holder = f"{node_id}{INSTANCE_MARK}{secrets.token_hex(4)}"
        self._scripts: dict[str, Any] = {
            name: redis.register_script(text)
            for name, text in (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE))
        }

    @property
    def _ms(self) -> int:
        return max(1, int(self.lease * 1000))

    def _value(self, token: str) -> str:
        return f"{self._holder} {token}"

    async def acquire(self) -> str | None:
        """Take the lease if it is free: the new fencing token, or None (held, or no history).

        Raises one of REDIS_ERRORS when Redis fails.
        """
        token, _ = await self.try_acquire()
        return token

    async def try_acquire(self) -> tuple[str | None, float | None]:
        """Take the lease if it is free: (token, None), or (None, seconds until the holder's
        lease runs out; None when that is unknown). Raises one of REDIS_ERRORS.

        Idempotent: if an earlier call took the lease but its reply was lost (a timeout, a
        dropped connection), the next call finds it held by this very process and returns
        its token, the lease renewed from now, so the caller's clock stays conservative."""
        found = await self._scripts["acquire"](
            keys=[
                self._keys.leader,
                self._keys.fence,
                self._keys.fence_counter,
                self._keys.position,
            ],
            args=[self._holder, self._ms],
        )
        if isinstance(found, bytes):
            return found.decode(), None
        return None, found / 1000 if isinstance(found, int) and found >= 0 else None

    async def renew(self, token: str) -> bool:
        """Extend the lease by its full length; False when it is no longer ours."""
        renewed = await self._scripts["renew"](
            keys=[self._keys.leader], args=[self._value(token), self._ms]
        )
        return bool(renewed)

    async def release(self, token: str) -> None:
        """Give the lease back (a clean stop: another node takes over at once)."""
        await self._scripts["release"](keys=[self._keys.leader], args=[self._value(token)])

    async def holder(self) -> Holder | None:
        """Who holds the lease now (None: nobody)."""
        value: Any = await self._redis.get(self._keys.leader)
        if value is None:
            return None
        holder, _, token = value.decode().rpartition(" ")
        node = holder.rpartition(INSTANCE_MARK)[0] or holder
        try:
            return Holder(node, fence_number(token))
        except ValueError:
            return None

    async def keep(self, token: str, acquired: float) -> str:
        """Renew until the lease is lost; returns why (`taken` or `unconfirmed`).

        `acquired` is the event loop's time when the `acquire` call was sent. Never returns
        while the lease is surely ours. A renewal Redis refuses to confirm in time counts as
        lost once the lease would have expired by this node's clock.
        """
        loop = asyncio.get_running_loop()
        expires = acquired + self.lease
        every = self.lease * RENEW_SHARE
        while True:
            await asyncio.sleep(max(0.0, min(every, expires - loop.time())))
            if loop.time() >= expires:
                return "unconfirmed"
            sent = loop.time()
            try:
                async with asyncio.timeout(max(0.001, expires - sent)):
                    renewed = await self.renew(token)
            except ResponseError:
                raise
            except (*REDIS_ERRORS, TimeoutError) as exc:
                log.warning(
                    "Lease renewal failed; still leading until it would expire",
                    extra={
                        "error": describe(exc),
                        "expiresIn": round(expires - loop.time(), 3),
                    },
                )
                every = self.lease * RETRY_SHARE
                continue
            if not renewed:
                return "taken"
            expires = sent + self.lease
            every = self.lease * RENEW_SHARE
