"""Per-address token buckets of failed authentications, on a fake clock."""

from __future__ import annotations

from control_room.server.throttle import FailureThrottle, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_failures_then_a_wait_that_shrinks_as_the_bucket_refills() -> None:
    clock = Clock()
    throttle = FailureThrottle(burst=3, refill_s=6.0, clock=clock)
    began = [throttle.failed("10.0.0.1") for _ in range(3)]
    assert began == [False, False, True]  # one "burst began" per burst, not per failure
    assert throttle.retry_after("10.0.0.1") == 6
    clock.now += 4.5
    assert throttle.retry_after("10.0.0.1") == 2
    clock.now += 1.5
    assert throttle.retry_after("10.0.0.1") is None  # one more try earned
    assert throttle.failed("10.0.0.1") is True  # and spent: the next burst begins
    assert throttle.retry_after("10.0.0.1") == 6


def test_addresses_are_independent() -> None:
    throttle = FailureThrottle(burst=1, refill_s=60.0, clock=Clock())
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 60
    assert throttle.retry_after("10.0.0.2") is None


def test_an_ipv6_host_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key(None) == "?"
    throttle = FailureThrottle(burst=1, refill_s=60.0, clock=Clock())
    throttle.failed("2001:db8:1:2::1")
    assert throttle.retry_after("2001:db8:1:2::ffff") == 60


def test_memory_is_bounded_and_refilled_buckets_are_forgotten() -> None:
    clock = Clock()
    throttle = FailureThrottle(burst=2, refill_s=1.0, max_addresses=100, clock=clock)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle) == 100  # the least recently failed were dropped
    clock.now += 10  # every bucket has refilled: they are the same as none
    throttle.failed("192.0.2.1")
    assert len(throttle) == 1
