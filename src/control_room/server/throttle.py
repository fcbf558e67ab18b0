"""Pure per-address throttling of failed authentications: a token bucket per client address.

A failure is a presented token that is wrong (`server/guard.py` counts nothing else: a
request without a token tests no secret). Each address may fail `burst` times at once,
then one more time every `refill_s` seconds. A request presenting a token from an address
whose bucket is empty is answered 429 *before* its token is checked, so a
guesser learns nothing more until the bucket refills, and every later attempt costs it
the wait. Memory is bounded: at most `max_addresses` buckets are kept, the least recently
failed dropped first, and buckets that have refilled (the same as no bucket) are dropped
as new failures arrive. IPv6 clients are counted per /64, the block one host usually
holds, so rotating through its own addresses does not give an attacker fresh buckets.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

AUTH_FAILURE_BURST: Final = 10
"""Failures allowed at once: a person retyping a token or a client retrying a stale one
gets this many tries; a guesser gets this many, then the refill rate."""
AUTH_FAILURE_REFILL_S: Final = 6.0
"""One more failure allowed every 6 s (10 a minute): slow enough that guessing even a
short random token online is hopeless, fast enough that a fixed typo is usable in seconds."""
MAX_TRACKED_ADDRESSES: Final = 10_000
"""About 1 MB of buckets at most; past it the least recently failed address is forgotten."""
IPV6_PREFIX: Final = 64


def address_key(remote: str | None) -> str:
    """The bucket an address counts against: the IPv4 address, or the IPv6 /64."""
    if not remote:
        return "?"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class FailureThrottle:
    """Token buckets of failed attempts, keyed by `address_key`; time from `clock` (seconds)."""

    def __init__(
        self,
        *,
        burst: int = AUTH_FAILURE_BURST,
        refill_s: float = AUTH_FAILURE_REFILL_S,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.updated) / self.refill_s)

    def retry_after(self, remote: str | None) -> int | None:
        """Seconds to wait (at least 1) when this address may not try now, else None."""
        bucket = self._buckets.get(address_key(remote))
        if bucket is None:
            return None
        level = self._level(bucket, self._clock())
        if level >= 1:
            return None
        return max(1, math.ceil((1 - level) * self.refill_s))

    def failed(self, remote: str | None) -> bool:
        """Count one failure; True when it used the last allowance (a burst has begun)."""
        now = self._clock()
        key = address_key(remote)
        bucket = self._buckets.pop(key, None)
        level = self._level(bucket, now) if bucket is not None else float(self.burst)
        self._forget_idle(now)
        self._buckets[key] = _Bucket(level - 1, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return level >= 1 > level - 1

    def _forget_idle(self, now: float) -> None:
        """Drop the oldest buckets that have refilled: they are the same as none."""
        while self._buckets:
            bucket = next(iter(self._buckets.values()))
            if self._level(bucket, now) < self.burst:
                return
            self._buckets.popitem(last=False)
