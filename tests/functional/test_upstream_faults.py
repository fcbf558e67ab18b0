"""An upstream that fails never produces a delta; recovery produces exactly the real change."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
import pytest

from control_room import poller as poller_module
from control_room.app import Service
from control_room.jules.client import JulesClient, RequestPolicy
from control_room.jules.simulator import Simulator
from tests.conftest import FAST_RETRY, MS, ServiceFactory, connect, nothing_more, receive_json

ATTEMPTS = FAST_RETRY.attempts

FAULTS: dict[str, Callable[[Simulator], None]] = {
    "server_error": lambda sim: sim.faults.fail(n=ATTEMPTS, status=503),
    "rate_limited": lambda sim: sim.faults.rate_limit(n=ATTEMPTS, retry_after=None),
    "garbage": lambda sim: sim.faults.garbage(n=ATTEMPTS),
    "wrong_shape": lambda sim: sim.faults.wrong_shape(n=ATTEMPTS),
    "timeout": lambda sim: sim.faults.delay(1000 * MS, n=ATTEMPTS),
}
"""Faults that fail a whole poll (the first page). A later page failing is a partial
listing: see test_a_failed_later_page_publishes_the_pages_read_and_never_deletes."""


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_failed_listing_yields_no_delta_and_recovery_the_real_change(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator, fault: str
) -> None:
    sessions = sim.bulk_create(250)  # three pages, so a failing last page is possible
    service = await make_service()
    assert service.poller is not None
    ws = await connect(http, service)
    FAULTS[fault](sim)
    await service.poller.poll_once()
    await nothing_more(ws)
    health = service.poller.health
    assert health.consecutive_failures == 1
    assert len(service.poller.sessions) == 250  # the snapshot stands
    async with http.get(service.url + "/healthz") as resp:
        assert (await resp.json())["status"] == "degraded"

    changed = sessions[0]["id"]
    sim.set_state(changed, "PLANNING")
    await service.poller.poll_once()
    delta = await receive_json(ws)
    assert (delta["type"], delta["sessionId"]) == ("updated", changed)
    await nothing_more(ws)
    assert health.consecutive_failures == 0
    async with http.get(service.url + "/healthz") as resp:
        assert (await resp.json())["status"] == "ok"


async def test_a_failed_later_page_publishes_the_pages_read_and_never_deletes(
    http: aiohttp.ClientSession,
    make_service: ServiceFactory,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Page 3 of 3 fails: the changes on pages 1 and 2 are published by the same poll, a
    session missing from them is not deleted, and /healthz says the listing is incomplete
    until a complete one succeeds, which then publishes the deletion."""
    monkeypatch.setattr(poller_module, "MAX_LISTING_RETRY_S", 0.0)  # next poll: every page
    sim.bulk_create(250, state="COMPLETED")  # three pages
    service = await make_service()
    assert service.poller is not None
    ws = await connect(http, service)
    newest = [s["id"] for s in sim.sessions_newest_first()]
    changed, gone = newest[0], newest[1]
    sim.faults.fail_page(2, n=ATTEMPTS)
    sim.update(changed, title="renamed")
    sim.delete(gone)
    created = sim.create(title="brand new")["id"]
    await service.poller.poll_once()
    deltas = [await receive_json(ws), await receive_json(ws)]
    assert sorted((d["type"], d["sessionId"]) for d in deltas) == sorted(
        [("created", created), ("updated", changed)]
    )
    await nothing_more(ws)  # no deletion from a partial listing
    health = service.poller.health
    assert health.consecutive_failures == 0 and gone in service.poller.sessions
    async with http.get(service.url + "/healthz") as resp:
        assert (await resp.json())["reasons"] == ["upstream_listing_incomplete"]
    incomplete = service.metrics.registry.get_sample_value(
        "control_room_listings_incomplete_total", {"kind": "server_error"}
    )
    assert incomplete == 1

    await service.poller.poll_once()  # every page answers again
    delta = await receive_json(ws)
    assert (delta["type"], delta["sessionId"]) == ("deleted", gone)
    await nothing_more(ws)
    async with http.get(service.url + "/healthz") as resp:
        assert (await resp.json())["status"] == "ok"


async def test_transient_errors_are_retried_within_the_poll(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    ws = await connect(http, service)
    created = sim.create()
    sim.faults.fail(n=ATTEMPTS - 1, status=500)
    await service.poller.poll_once()
    assert (await receive_json(ws))["sessionId"] == created["id"]
    assert service.poller.health.consecutive_failures == 0


async def test_backoff_grows_and_honours_retry_after(service: Service, sim: Simulator) -> None:
    assert service.poller is not None
    service.poller._interval = 0.05  # the backoff base: keep the test clock small
    sim.faults.fail(n=ATTEMPTS * 3, status=500)
    delays = [await service.poller.poll_once() for _ in range(3)]
    assert delays[0] < delays[2]
    sim.faults.clear()
    sim.faults.rate_limit(n=1, retry_after=7)  # too long to wait inside a poll: one try
    delay = await service.poller.poll_once()
    assert delay >= 7  # the upstream asked for 7 s; the poller waits at least that
    assert await service.poller.poll_once() == pytest.approx(0.05)


async def test_a_retry_after_longer_than_the_page_budget_is_a_429_not_a_timeout(
    service: Service, sim: Simulator
) -> None:
    # Seen: a 429 asking for 6 s inside a 2.5 s page budget was slept on until the budget
    # cut it, reported as `upstream_timeout`, and the next poll came before the 6 s.
    poller = service.poller
    assert poller is not None and isinstance(poller.upstream, JulesClient)
    poller.upstream._retry = RequestPolicy(timeout=1, attempts=3, retry_after_max=10)
    poller._page_budget = 0.5
    sim.requests.reset()
    sim.faults.rate_limit(n=3, retry_after=2)
    delay = await poller.poll_once()
    assert poller.health.last_error_kind == "rate_limited"
    assert "upstream_rate_limited" in poller.health.reasons()
    assert delay >= 2  # the upstream's wish, left to the poller's backoff
    assert sim.requests.page_calls == 1  # no retry inside the budget it could not wait in


async def test_rejected_key_is_one_clear_error_and_no_retry_storm(
    http: aiohttp.ClientSession,
    make_service: ServiceFactory,
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="control_room"):
        service = await make_service(jules_api_key="revoked-key")
        assert service.poller is not None
        sim.requests.reset()
        for _ in range(3):
            await service.poller.poll_once()
    assert sim.requests.page_calls == 3  # one request per poll: no in-poll retries
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "key rejected" in errors[0].getMessage()
    assert "revoked-key" not in caplog.text
    async with http.get(service.url + "/api/sessions") as resp:
        assert resp.status == 401  # our own token is still required


async def test_service_waits_for_the_first_poll_before_serving_sessions(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator
) -> None:
    sim.faults.fail(n=ATTEMPTS, status=500)
    service = await make_service()
    assert service.poller is not None and not service.poller.ready
    async with http.get(
        service.url + "/api/sessions", headers={"Authorization": "Bearer test-token.with.dots"}
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
    async with http.get(service.url + "/readyz") as resp:
        assert resp.status == 503
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": "bearer.test-token.with.dots",
    }
    async with http.get(service.url + "/?snapshot=1", headers=upgrade) as resp:
        assert resp.status == 503  # an empty snapshot would never be corrected
        assert resp.headers["Retry-After"]
    await service.poller.poll_once()
    async with http.get(service.url + "/readyz") as resp:
        assert resp.status == 200


async def test_overruns_that_come_and_go_are_one_warning_until_polls_stay_calm(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen: while a listing stayed incomplete, every few polls overran, and each time the
    # log said "overran" and "back within" again.
    poller = service.poller
    assert poller is not None
    long, short = poller._interval * 2, poller._interval / 10
    with caplog.at_level(logging.INFO, logger="control_room.poller"):
        for seconds in (long, short, long, short, short, long, short, short, short, short):
            poller._paced(seconds)
    said = [r.getMessage() for r in caplog.records if "interval" in r.getMessage()]
    assert said == [
        "Poll overran its interval; changes are late",
        "Polls back within their interval",  # after OVERRUN_CALM_POLLS calm polls in a row
    ]
    assert poller.health.last_poll_overran is False  # /healthz still follows the last poll
    poller._paced(long)
    assert poller.health.last_poll_overran is True
