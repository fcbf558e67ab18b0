"""/healthz reasons and the not_ready explanation, from the health record alone."""

from __future__ import annotations

from control_room.health import REASONS, UpstreamHealth


def well() -> UpstreamHealth:
    return UpstreamHealth(interval=5.0, baseline_done=True, last_success=100.0)


def test_a_healthy_service_has_no_reason() -> None:
    health = well()
    assert health.reasons(now=101.0) == [] and not health.degraded


def test_each_fault_has_its_own_stable_name() -> None:
    health = well()
    health.consecutive_failures, health.last_error_kind = 2, "unauthorized"
    health.unconfirmed, health.undecodable = 1, 3
    health.listing_cut = "page 3 of the listing got no answer within 2.5 s from …"
    health.store_error = "StoreError: disk full"
    health.poll_started = 90.0  # running for 11 s with a 5 s interval
    assert health.reasons(now=101.0) == [
        "upstream_unauthorized",
        "upstream_listing_inconsistent",
        "upstream_listing_incomplete",
        "upstream_session_undecodable",
        "poll_overrun",
        "store_unavailable",
    ]
    assert set(health.reasons(now=101.0)) <= set(REASONS)


def test_an_overrun_lasts_until_a_poll_keeps_within_its_interval() -> None:
    health = well()
    health.poll_started = 100.0
    assert health.reasons(now=104.0) == []
    assert health.reasons(now=105.5) == ["poll_overrun"]
    health.poll_started, health.last_poll_overran = None, True
    assert health.reasons(now=200.0) == ["poll_overrun"]


def test_not_ready_says_what_it_waits_for_and_when_it_tries_again() -> None:
    health = UpstreamHealth(interval=5.0)
    first = health.not_ready(now=0.0)
    assert (first.reason, first.message) == (
        "waiting_for_first_poll",
        "waiting for the first poll of the Jules API",
    )
    health.consecutive_failures, health.last_error_kind = 3, "network"
    health.last_error = "connection refused to 127.0.0.1:9"
    health.next_poll_at = 108.0
    why = health.not_ready(now=100.0)
    assert why.message == (
        "waiting for the Jules API: connection refused to 127.0.0.1:9; retrying in 8 s"
    )
    assert (why.reason, why.detail, why.retry_in, why.consecutive_failures) == (
        "upstream_network",
        "connection refused to 127.0.0.1:9",
        8.0,
        3,
    )
    assert health.reasons(now=100.0) == ["waiting_for_first_poll", "upstream_network"]
    # Under a second left is not "retrying in 0 s".
    assert health.not_ready(now=107.6).message.endswith("; retrying in under 1 s")
