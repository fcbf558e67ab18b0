"""Faults armed on the simulator: consumed one per request, in order, by kind when asked."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from control_room.jules.simulator import Faults


def test_faults_are_consumed_one_per_request_in_the_order_armed() -> None:
    faults = Faults()
    faults.fail(2, status=503)
    faults.rate_limit(retry_after=7)
    faults.garbage()
    faults.wrong_shape()
    faults.delay(0.5)
    assert faults.pending == 6
    taken = [faults.take() for _ in range(7)]
    kinds = [(f.kind, f.status) if f else None for f in taken]
    assert kinds == [
        ("fail", 503),
        ("fail", 503),
        ("rate_limit", 429),
        ("garbage", 200),
        ("wrong_shape", 200),
        ("delay", 500),
        None,
    ]
    assert taken[2] is not None
    assert taken[2].retry_after == 7
    assert taken[5] is not None
    assert taken[5].seconds == 0.5
    assert faults.pending == 0


def test_a_fault_restricted_to_some_kinds_waits_for_a_request_of_those_kinds() -> None:
    faults = Faults()
    faults.fail(2, status=503, only="list_activities")
    faults.rate_limit(only=("create", "message"))
    assert faults.take("list_first_page") is None
    assert faults.take() is None  # a request of unknown kind
    message = faults.take("message")
    assert message is not None
    assert message.kind == "rate_limit"
    first, second = faults.take("list_activities"), faults.take("list_activities")
    assert first is not None
    assert first.status == 503
    assert second is not None
    assert faults.take("list_activities") is None
    assert faults.pending == 0


def test_page_faults_hit_only_their_page() -> None:
    faults = Faults()
    faults.fail_page(2, n=2, status=502)
    assert faults.take() is None
    assert faults.take_page(0) is None
    assert faults.take_page(1) is None
    first, second = faults.take_page(2), faults.take_page(2)
    assert first is not None
    assert first.status == 502
    assert second is not None
    assert faults.take_page(2) is None


def test_clear_disarms_everything() -> None:
    faults = Faults()
    faults.fail(3)
    faults.fail_page(1)
    faults.clear()
    assert faults.pending == 0
    assert faults.take() is None
    assert faults.take_page(1) is None


@pytest.mark.parametrize(
    "arm",
    [
        lambda f: f.fail(0),
        lambda f: f.fail(status=200),
        lambda f: f.delay(-1),
        lambda f: f.fail_page(-1),
        lambda f: f.garbage(only=()),
        lambda f: f.fail(only="activities"),  # a typo: the kind is list_activities
    ],
)
def test_nonsense_faults_are_refused(arm: Callable[[Faults], None]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        arm(Faults())
