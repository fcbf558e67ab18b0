"""Issue 9: the service rides out every upstream fault by itself and says clearly what it is.

Slow checks never hold changes back, an overrunning poll shows, a rejected key backs off
like any failure and a rotated one works at once, and every error names the upstream's
host and port with the reason, in the logs and authenticated answers, never in /healthz.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control_room import poller as poller_module
from control_room.jules.client import JulesClient, UpstreamError
from tests import conftest
from tests.conftest import (
    FAST_RETRY,
    MS,
    TOKEN,
    ServiceFactory,
    connect,
    receive_json,
)
from tests.fake_upstream import FakeUpstream, Reply

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Protocol": f"bearer.{TOKEN}",
}


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def until(condition: Any, within: float = 5000 * MS) -> None:
    """Wait for `condition()` to hold, checked every few milliseconds (plain attributes:
    there is no event to wait on)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(5 * MS)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- 4: slow checks and overrunning polls ----------------------------------------------------


async def test_hanging_checks_never_hold_back_an_unrelated_change(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poller_module, "MIN_CHECK_BUDGET_S", 0.0)  # half an interval, below 1 s
    interval = 400 * MS
    fake.add(5)
    service = await make_fake_service(poll_interval=interval)  # polling by itself
    assert service.poller is not None
    health = service.poller.health
    ws = await connect(http, service)
    fake.hidden = {"1", "2"}  # two sessions drop out, and checking them hangs
    for sid in fake.hidden:
        fake.get_replies[sid].extend([Reply(hang=30)] * 50)
    await until(lambda: health.unconfirmed == 2)
    loop = asyncio.get_running_loop()
    changed = loop.time()
    fake.update("5", state="PLANNING")
    delta = await receive_json(ws, wait=20 * interval)
    late = loop.time() - changed
    assert (delta["type"], delta["sessionId"]) == ("updated", "5")
    # The poll under way, then the next one (whose checks give up after half an interval).
    assert late < 2.5 * interval, late
    _, body, _ = await get(http, service.url + "/healthz")
    assert body["status"] == "degraded" and "upstream_listing_inconsistent" in body["reasons"]
    assert "1" in service.poller.sessions and "2" in service.poller.sessions  # not deleted


def recent(seconds_ago: float) -> str:
    """A time just before now (a working session that old is not stalled)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


async def test_hanging_deletion_checks_never_starve_activity_reads(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty vanished sessions whose checks hang use up the checks' budget on every poll;
    the activities of a working session that moved are still read, in the same poll."""
    monkeypatch.setattr(poller_module, "MIN_CHECK_BUDGET_S", 0.0)  # half an interval, below 1 s
    interval = 400 * MS
    fake.add(30)
    fake.update("30", state="IN_PROGRESS", updateTime=recent(30))
    fake.activities["30"] = []
    service = await make_fake_service(poll_interval=interval)  # polling by itself
    assert service.poller is not None
    health = service.poller.health
    ws = await connect(http, service, "?activities=1")
    fake.hidden = {str(i) for i in range(1, 21)}
    for sid in fake.hidden:
        fake.get_replies[sid].extend([Reply(hang=30)] * 50)
    await until(lambda: health.unconfirmed == 20)
    now = recent(0)
    fake.activities["30"] = [
        {
            "name": "sessions/30/activities/a1",
            "id": "a1",
            "createTime": now,
            "originator": "agent",
            "progressUpdated": {"title": "Still working"},
        }
    ]
    fake.update("30", updateTime=now)
    delta = await receive_json(ws, wait=20 * interval)
    assert (delta["type"], delta["sessionId"]) == ("updated", "30")
    activity = await receive_json(ws, wait=2 * interval)  # published with it, same poll
    assert activity["activity"]["title"] == "Still working"
    failed = service.metrics.registry.get_sample_value(
        "control_room_activity_reads_total", {"outcome": "failed"}
    )
    assert failed == 0


async def test_a_hanging_later_page_never_holds_back_changes_on_the_pages_read(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Page 2 hangs on every listing: the page budget (half an interval) cuts it, the
    changes on page 1 are published within about an interval (by the cut listing, then by
    first-page polls while the complete listing backs off), nothing is deleted, and
    /healthz and a metric say the listing is incomplete. Once page 2 answers, the deletion
    follows."""
    interval = 400 * MS
    monkeypatch.setattr(poller_module, "MIN_PAGE_BUDGET_S", 0.0)
    monkeypatch.setattr(poller_module, "MAX_LISTING_RETRY_S", 2 * interval)
    # Only the page budget can cut the hang, not the request's own timeout.
    monkeypatch.setattr(conftest, "FAST_RETRY", dataclasses.replace(FAST_RETRY, timeout=60))
    fake.add(150)  # two pages; page 1 holds 150..51
    service = await make_fake_service(poll_interval=interval)  # polling by itself
    assert service.poller is not None
    health = service.poller.health
    ws = await connect(http, service)
    fake.page_replies[1] = Reply(hang=30)
    await until(lambda: health.listing_cut is not None)
    loop = asyncio.get_running_loop()
    changed = loop.time()
    fake.update("150", state="PLANNING")
    fake.delete("149")
    fake.add(1, start=151)
    deltas = [await receive_json(ws, wait=20 * interval) for _ in range(2)]
    late = loop.time() - changed
    assert sorted((d["type"], d["sessionId"]) for d in deltas) == [
        ("created", "151"),
        ("updated", "150"),
    ]
    assert late < 2.5 * interval, late
    assert health.last_poll_seconds is not None and health.last_poll_seconds < 2.5 * interval
    _, body, _ = await get(http, service.url + "/healthz")
    assert body["status"] == "degraded" and "upstream_listing_incomplete" in body["reasons"]
    cut = service.metrics.registry.get_sample_value(
        "control_room_listings_incomplete_total", {"kind": "timeout"}
    )
    assert cut is not None and cut >= 1
    assert "149" in service.poller.sessions  # a partial listing never deletes

    del fake.page_replies[1]
    delta = await receive_json(ws, wait=40 * interval)
    assert (delta["type"], delta["sessionId"]) == ("deleted", "149")
    await until(lambda: health.listing_cut is None)


async def test_a_poll_that_overruns_its_interval_shows_in_healthz_and_a_metric(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    interval = 100 * MS
    fake.add(2)
    service = await make_fake_service(poll_interval=interval)
    assert service.poller is not None
    health = service.poller.health
    fake.list_replies.append(Reply(hang=2.5 * interval, normal=True))  # slow, within the timeout
    await until(lambda: health.poll_started is not None and health.overrunning())
    _, during, _ = await get(http, service.url + "/healthz")
    assert during["status"] == "degraded" and during["reasons"] == ["poll_overrun"]
    await until(lambda: not health.overrunning())  # the next poll is quick again
    overruns = service.metrics.registry.get_sample_value("control_room_poll_overruns_total")
    assert overruns is not None and overruns >= 1
    _, after, _ = await get(http, service.url + "/healthz")
    assert after["status"] == "ok"


# --- 5: a rejected key ------------------------------------------------------------------------


async def test_a_rejected_key_backs_off_like_any_failure_and_a_rotated_key_works_at_once(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_file = tmp_path / "jules-api-key"
    key_file.write_text("old-key\n")
    fake.key = "old-key"
    fake.add(2)
    with caplog.at_level(logging.DEBUG, logger="control_room"):
        service = await make_fake_service(
            jules_api_key="", jules_api_key_file=key_file, poll_interval=5.0
        )
        assert service.poller is not None and service.poller.ready
        ws = await connect(http, service)
        fake.key = "new-key"  # the old key is revoked
        delays = [await service.poller.poll_once() for _ in range(3)]
        # The poll interval (5 s) doubling, jittered: not five minutes, and capped at 60 s.
        assert 2.5 <= delays[0] <= 5.0 and delays[2] <= 20.0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1  # one line for the outage, not one per retry
        assert "key rejected" in errors[0].getMessage()
        _, health, _ = await get(http, service.url + "/healthz")
        assert health["reasons"] == ["upstream_unauthorized"]
        fake.update("1", state="PLANNING")
        key_file.write_text("new-key\n")
        service.reload_secrets()  # what SIGHUP does (the file watcher too, within a second)
        delta = await receive_json(ws, wait=2000 * MS)  # the poller woke up: no backoff wait
    assert (delta["type"], delta["sessionId"]) == ("updated", "1")
    assert fake.keys_seen[-1] == "new-key"
    assert "Upstream recovered" in [r.getMessage() for r in caplog.records]
    assert "old-key" not in caplog.text and "new-key" not in caplog.text


# --- Error messages: host:port and the reason; never in /healthz -----------------------------


async def test_an_unreachable_upstream_is_named_with_its_reason_where_the_token_was_checked(
    http: aiohttp.ClientSession, make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    with caplog.at_level(logging.INFO, logger="control_room"):
        service = await make_service(jules_api_base=f"http://127.0.0.1:{port}/v1alpha")
    where = f"connection refused to 127.0.0.1:{port}"
    (line,) = [r for r in caplog.records if r.getMessage().startswith("Upstream poll failed")]
    assert line.__dict__["error"] == where
    assert "snapshot kept" not in caplog.text  # there is no snapshot before the first poll

    status, body, _ = await get(http, service.url + "/healthz")
    assert (body["status"], body["reasons"]) == (
        "degraded",
        ["waiting_for_first_poll", "upstream_network"],
    )
    status, ready, _ = await get(http, service.url + "/readyz")
    assert status == 503 and ready["reasons"] == ["waiting_for_first_poll", "upstream_network"]
    assert "127.0.0.1" not in str(body) + str(ready)  # no host names without a token

    for url, headers in (
        (service.url + "/api/sessions", AUTH),
        (service.url + "/?snapshot=1", UPGRADE),
    ):
        status, answer, retry_after = await get(http, url, headers=headers)
        assert status == 503 and 1 <= int(retry_after) <= 10
        assert answer["error"] == "not_ready"
        assert answer["message"].startswith(f"waiting for the Jules API: {where}; retrying in ")
        upstream = answer["upstream"]
        assert (upstream["reason"], upstream["detail"], upstream["consecutiveFailures"]) == (
            "upstream_network",
            where,
            1,
        )
        assert isinstance(upstream["retryInSeconds"], float)
    status, stats, _ = await get(http, service.url + "/api/stats", headers=AUTH)
    assert stats["upstream"]["lastError"] == where


async def test_a_timeout_and_an_unknown_name_say_so_with_host_and_port(
    http: aiohttp.ClientSession, fake: FakeUpstream
) -> None:
    once = dataclasses.replace(FAST_RETRY, attempts=1)
    fake.list_replies.append(Reply(hang=30))
    with pytest.raises(UpstreamError) as err:
        await JulesClient(http, fake.base_url, fake.key, retry=once).list_sessions()
    assert err.value.kind == "timeout"
    assert (
        err.value.detail
        == f"timed out after {FAST_RETRY.timeout:g} s waiting for 127.0.0.1:{fake.port}"
    )
    unresolved = JulesClient(
        http, "http://no-such-host.invalid:8080/v1alpha", "k", retry=FAST_RETRY
    )
    with pytest.raises(UpstreamError) as err:
        await unresolved.list_sessions()
    assert err.value.detail == "name not resolved: no-such-host.invalid:8080"


async def test_a_certificate_that_does_not_verify_is_named(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = await asyncio.create_subprocess_exec(
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await openssl.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = JulesClient(http, f"https://127.0.0.1:{port}/v1alpha", "k", retry=FAST_RETRY)
        with pytest.raises(UpstreamError) as err:
            await client.list_sessions()
    finally:
        await runner.cleanup()
    assert err.value.kind == "network"
    assert err.value.detail.startswith("TLS: certificate verify failed")
    assert err.value.detail.endswith(f"for 127.0.0.1:{port}")


# --- Other answers the client must not believe ------------------------------------------------


async def test_a_redirect_is_not_followed_so_the_key_never_leaves(
    http: aiohttp.ClientSession, fake: FakeUpstream
) -> None:
    async with FakeUpstream("elsewhere") as other:
        fake.list_replies.append(
            Reply(302, body=b"", headers={"Location": other.base_url + "/sessions"})
        )
        with pytest.raises(UpstreamError) as err:
            await JulesClient(http, fake.base_url, fake.key, retry=FAST_RETRY).list_sessions()
        assert other.keys_seen == []
    assert err.value.kind == "client_error" and "not followed" in err.value.detail


async def test_a_torn_or_oversized_page_is_a_bad_response_retried_in_the_poll(
    http: aiohttp.ClientSession, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.add(3)
    client = JulesClient(http, fake.base_url, fake.key, retry=FAST_RETRY)
    fake.list_replies.append(Reply(body=b'{"sessions": [{"id": "3", "na'))  # cut short
    assert len(await client.list_sessions()) == 3  # the retry got the whole page
    monkeypatch.setattr("control_room.jules.client.MAX_RESPONSE_BYTES", 100)
    with pytest.raises(UpstreamError) as err:
        await client.list_sessions()
    assert err.value.kind == "bad_response" and "over 100 bytes" in err.value.detail
