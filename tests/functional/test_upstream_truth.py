"""Issue 9: a delta means something really changed in Jules, whatever the upstream answers.

Every test runs the real service against a real upstream on 127.0.0.1: the scriptable fake
(tests/fake_upstream.py) for exact faulty answers, the simulator where it can misbehave
the way needed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from control_room import render
from control_room.app import Service
from control_room.client import ControlRoomClient
from control_room.jules.client import MAX_PAGES, JulesClient, RequestPolicy
from tests.conftest import TOKEN, ServiceFactory, connect, nothing_more, receive_json, receive_n
from tests.fake_upstream import FakeUpstream, Reply, session

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sample(service: Service, name: str, **labels: str) -> float:
    """The current value of one metric sample."""
    value = service.metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


async def poll(service: Service) -> None:
    assert service.poller is not None
    await service.poller.poll_once()


async def healthz(http: aiohttp.ClientSession, service: Service) -> Any:
    async with http.get(service.url + "/healthz") as resp:
        assert resp.status == 200
        return await resp.json()


async def listed_ids(http: aiohttp.ClientSession, service: Service) -> dict[str, Any]:
    async with http.get(service.url + "/api/sessions", headers=AUTH) as resp:
        assert resp.status == 200
        return {s["id"]: s for s in (await resp.json())["sessions"]}


# --- 1, 2: torn and empty listings ----------------------------------------------------------


async def test_a_torn_listing_publishes_only_the_real_deletions(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    fake.add(150)
    service = await make_fake_service()
    ws = await connect(http, service)
    newest = [s["id"] for s in fake.sessions[:25]]
    # Right after page 1 is served, the newest 25 go: page 2 (an offset) skips 25 others.
    fake.after_page[0] = lambda: fake.delete(*newest)
    await poll(service)
    deltas = await receive_n(ws, 25)
    assert sorted((d["type"], d["sessionId"]) for d in deltas) == sorted(
        ("deleted", sid) for sid in newest
    )
    await poll(service)  # and nothing comes back as `created`
    await nothing_more(ws)
    assert len(await listed_ids(http, service)) == 125
    assert sample(service, "control_room_listings_torn_total") == 1


@pytest.mark.parametrize(
    ("page", "empty"),
    [(0, {}), (1, {}), (0, {"sessions": None, "nextPageToken": None})],
    ids=["whole listing", "page 2", "nulls"],
)
async def test_an_empty_answer_is_not_everything_deleted(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    page: int,
    empty: dict[str, Any],
) -> None:
    fake.add(150)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.list_replies.extend([None] * page + [Reply(json=empty)])  # a 200 with nothing in it
    await poll(service)
    await poll(service)
    await nothing_more(ws)
    assert len(await listed_ids(http, service)) == 150
    assert (await healthz(http, service))["status"] == "ok"


async def test_a_listing_that_stays_torn_applies_only_confirmed_deletions(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session that GET finds but no listing shows (every relisting torn) is kept, while
    the rest of the listing goes on: a real deletion and a change elsewhere are published."""
    fake.add(3)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.hidden = {"1"}
    fake.delete("2")
    fake.update("3", state="PLANNING")
    with caplog.at_level(logging.WARNING, logger="control_room"):
        await poll(service)
        deltas = await receive_n(ws, 2)
        assert [(d["type"], d["sessionId"]) for d in deltas] == [
            ("deleted", "2"),
            ("updated", "3"),
        ]
        await nothing_more(ws)
        assert "1" in await listed_ids(http, service)
        assert fake.list_calls == 1 + 3  # the baseline, then the listing and two more tries
        assert sample(service, "control_room_listings_torn_total") == 3
        await poll(service)  # the same session missed again: no new warning
    (torn,) = [r for r in caplog.records if r.getMessage().startswith("Listing torn")]
    assert torn.__dict__["missed"] == ["1"] and "still torn" in torn.__dict__["outcome"]


async def test_a_tear_at_a_page_boundary_during_a_mass_deletion_is_detected(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    """450 sessions really deleted on both sides of 5 that a moved page boundary skips: an
    even sample of the 455 vanished ones misses the 5 (1/90 of them, inside the spread),
    the sample at the page boundary does not."""
    fake.add(1000)
    service = await make_fake_service()
    ws = await connect(http, service)
    order = [s["id"] for s in fake.sessions]
    gone = order[10:60] + order[400:800]
    fake.delete(*gone)
    newest = order[:5]
    # Right after page 2 is served, the newest 5 go: page 3 (an offset) skips 5 sessions.
    fake.after_page[1] = lambda: fake.delete(*newest)
    await poll(service)
    deltas = await receive_n(ws, 455)
    assert {d["type"] for d in deltas} == {"deleted"}
    assert sorted(d["sessionId"] for d in deltas) == sorted(gone + newest)
    await poll(service)  # nothing comes back as `created`
    await nothing_more(ws)
    assert sample(service, "control_room_listings_torn_total") == 1
    assert len(await listed_ids(http, service)) == 545


async def test_a_mass_deletion_confirmed_by_its_sample_is_published(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    fake.add(60)
    service = await make_fake_service()
    ws = await connect(http, service)
    gone = [s["id"] for s in fake.sessions[10:50]]
    fake.delete(*gone)
    fake.get_calls.clear()
    await poll(service)
    deltas = await receive_n(ws, 40)
    assert sorted(d["sessionId"] for d in deltas) == sorted(gone)
    assert len(fake.get_calls) == 16  # a bounded sample, not one GET per deletion


# --- 3: a GET answer that is not the session asked for --------------------------------------


async def test_a_wrong_get_answer_is_never_a_confirmation_nor_data(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    fake.add(6)
    fake.sessions.append(session("99", title="someone else"))
    service = await make_fake_service()
    ws = await connect(http, service)
    before = await listed_ids(http, service)
    fake.hidden = {"5", "6"}  # they drop out of the listing
    fake.get_replies["5"].append(Reply(json={}))
    fake.get_replies["6"].append(Reply(json=fake.find("99")))
    await poll(service)
    await nothing_more(ws)
    after = await listed_ids(http, service)
    assert after["5"] == before["5"] and after["6"] == before["6"]  # kept, with their own data
    health = await healthz(http, service)
    assert health["reasons"] == ["upstream_listing_inconsistent"]
    async with http.get(service.url + "/api/stats", headers=AUTH) as resp:
        assert (await resp.json())["upstream"]["unconfirmedSessions"] == 2
    # Once the API really says so, the deletions are published, with the right ids.
    fake.delete("5", "6")
    await poll(service)
    deltas = await receive_n(ws, 2)
    assert [(d["type"], d["sessionId"], d["before"]["id"]) for d in deltas] == [
        ("deleted", "5", "5"),
        ("deleted", "6", "6"),
    ]
    assert (await healthz(http, service))["status"] == "ok"


async def test_a_404_that_is_not_the_apis_own_is_no_confirmation(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add(2)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.hidden = {"1"}
    fake.get_replies["1"].append(Reply(404, body=b"<html>404 Not Found</html>"))
    with caplog.at_level(logging.WARNING, logger="control_room"):
        await poll(service)
    await nothing_more(ws)
    assert "1" in await listed_ids(http, service)
    (kept,) = [r for r in caplog.records if r.getMessage().startswith("Sessions missing")]
    assert "HTTP 404" in kept.__dict__["error"]  # why the deletion is not confirmed


async def test_a_check_that_cannot_wait_for_its_retry_says_what_jules_answered(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Seen: a check answered 503 + Retry-After was slept on until the check budget cut it,
    # and the warning said "no answer within … s" although Jules had answered.
    fake.add(2)
    service = await make_fake_service()
    poller = service.poller
    assert poller is not None and isinstance(poller.upstream, JulesClient)
    poller.upstream._retry = RequestPolicy(timeout=1, attempts=3, retry_after_max=10)
    poller._check_budget = 0.3
    fake.hidden = {"1"}
    fake.get_replies["1"].extend(Reply(503, headers={"Retry-After": "2"}) for _ in range(3))
    with caplog.at_level(logging.WARNING, logger="control_room"):
        await poll(service)
    assert "1" in await listed_ids(http, service)
    (kept,) = [r for r in caplog.records if r.getMessage().startswith("Sessions missing")]
    assert "HTTP 503" in kept.__dict__["error"], kept.__dict__["error"]


# --- 6: odd records ---------------------------------------------------------------------------


async def test_nulls_and_unknown_values_are_read_and_one_bad_record_blocks_nothing(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add(3)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.update("1", outputs=None, title=None, state="SOMETHING_NEW", futureField={"x": 1})
    fake.update("2", title=["not", "a", "string"])  # cannot be decoded at all
    fake.update("3", state="PLANNING")
    fake.sessions.insert(0, session("4", sourceContext=[1, 2]))  # new and undecodable
    with caplog.at_level(logging.WARNING, logger="control_room"):
        await poll(service)
    deltas = await receive_n(ws, 2)
    assert [(d["type"], d["sessionId"]) for d in deltas] == [("updated", "1"), ("updated", "3")]
    assert (deltas[0]["after"]["state"], deltas[0]["after"]["title"]) == ("SOMETHING_NEW", "")
    await nothing_more(ws)
    listed = await listed_ids(http, service)
    assert listed["2"]["title"] == "Session 2" and "4" not in listed  # last good; new one waits
    warnings = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert sorted(getattr(r, "sessionId", "") for r in warnings) == ["2", "4"]
    assert sample(service, "control_room_sessions_undecodable") == 2
    assert (await healthz(http, service))["reasons"] == ["upstream_session_undecodable"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="control_room"):
        await poll(service)  # still broken: no new warning every poll
    assert not [r for r in caplog.records if "unusable" in r.getMessage()]
    fake.update("2", title="Fixed")
    fake.update("4", sourceContext=None)
    await poll(service)
    deltas = await receive_n(ws, 2)
    assert [(d["type"], d["sessionId"]) for d in deltas] == [("updated", "2"), ("created", "4")]
    assert sample(service, "control_room_sessions_undecodable") == 0


async def test_id_and_name_disagreeing_makes_no_delta(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    fake.add(2)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.update("1", name="sessions/2", state="FAILED")
    await poll(service)
    await nothing_more(ws)
    listed = await listed_ids(http, service)
    assert listed["1"]["state"] == listed["2"]["state"] == "QUEUED"
    assert sample(service, "control_room_listing_anomalies_total", kind="identity_conflict") == 1


async def test_an_older_version_than_the_one_shown_makes_no_delta(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    fake.add(1)
    fake.update("1", updateTime="2026-01-01T10:00:00Z", state="PLANNING")
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.update("1", updateTime="2026-01-01t09:59:59.999999999z", state="QUEUED")  # a lagging read
    await poll(service)
    await nothing_more(ws)
    fake.update("1", updateTime="2026-01-01T11:00:01+01:00", state="IN_PROGRESS")
    await poll(service)
    delta = await receive_json(ws)
    assert (delta["before"]["state"], delta["after"]["state"]) == ("PLANNING", "IN_PROGRESS")


async def test_an_older_version_from_a_confirming_get_makes_no_delta(
    http: aiohttp.ClientSession, fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    """A session drops out of the listing and the GET that checks it answers an older
    version (a lagging replica): it is kept as shown, never moved backwards."""
    fake.add(2)
    fake.update("1", updateTime="2026-01-01T10:00:00Z", state="PLANNING")
    service = await make_fake_service()
    ws = await connect(http, service)
    older = session("1", updateTime="2026-01-01T09:59:59Z", state="QUEUED")
    fake.hidden = {"1"}
    fake.get_replies["1"].extend([Reply(json=older)] * 3)  # the listing and its two retries
    await poll(service)
    await nothing_more(ws)
    assert (await listed_ids(http, service))["1"]["state"] == "PLANNING"
    assert sample(service, "control_room_listing_anomalies_total", kind="stale_version") >= 1
    fake.hidden = set()
    fake.update("1", updateTime="2026-01-01T10:00:01Z", state="IN_PROGRESS")
    await poll(service)
    delta = await receive_json(ws)
    assert (delta["before"]["state"], delta["after"]["state"]) == ("PLANNING", "IN_PROGRESS")


# --- Paging ------------------------------------------------------------------------------------


def page(ids: list[str], token: str | None) -> Reply:
    body: dict[str, Any] = {"sessions": [session(i) for i in ids]}
    if token:
        body["nextPageToken"] = token
    return Reply(json=body)


@pytest.mark.parametrize(
    ("replies", "says", "anomaly"),
    [
        ([page(["3"], "A"), page(["2"], "B"), page(["1"], "A")], "loops: page 3", "token_loop"),
        ([page(["3"], "A"), page(["2"], "A")], "loops: page 2", "token_loop"),
        (
            [page(["3"], "A")] + [Reply(json={"nextPageToken": f"e{i}"}) for i in range(10)],
            "empty",
            "empty_pages",
        ),
        (
            # Fresh tokens that never repeat nor end: cut at MAX_PAGES, not read for minutes.
            [page(["3"], f"t{i}") for i in range(MAX_PAGES + 50)],
            f"ran past {MAX_PAGES} pages",
            "too_many_pages",
        ),
    ],
    ids=["token loop", "token repeated", "empty pages forever", "fresh tokens forever"],
)
async def test_paging_that_never_ends_cuts_the_listing_with_no_delta(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
    replies: list[Reply],
    says: str,
    anomaly: str,
) -> None:
    """Broken paging cuts the complete listing short: no delta (none is false; deletions
    wait for a complete listing), a warning naming the fault, a metric, /healthz says so."""
    fake.add(3)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.list_replies.extend(replies)
    calls = len(fake.keys_seen)
    with caplog.at_level(logging.WARNING, logger="control_room"):
        await poll(service)
    await nothing_more(ws)
    assert len(fake.keys_seen) - calls <= MAX_PAGES
    (line,) = [r for r in caplog.records if r.getMessage().startswith("Listing incomplete")]
    assert says in line.__dict__["error"] and f"127.0.0.1:{fake.port}" in line.__dict__["error"]
    assert sample(service, "control_room_listing_anomalies_total", kind=anomaly) == 1
    assert sample(service, "control_room_listings_incomplete_total", kind="bad_response") == 1
    health = await healthz(http, service)
    assert health["reasons"] == ["upstream_listing_incomplete"]
    assert len(await listed_ids(http, service)) == 3


async def test_duplicates_across_pages_and_oversized_pages_make_no_false_delta(
    http: aiohttp.ClientSession,
    fake: FakeUpstream,
    make_fake_service: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add(150)
    service = await make_fake_service()
    ws = await connect(http, service)
    fake.page_size = 120  # larger than the 100 asked for
    newer = session("151")
    fake.after_page[0] = lambda: fake.sessions.insert(0, newer)  # page 2 repeats session 31
    with caplog.at_level(logging.INFO, logger="control_room"):
        await poll(service)
    messages = {r.getMessage() for r in caplog.records}
    assert "Upstream pages are larger than asked; listing used as is" in messages
    assert "Listing repeats sessions; the first entry of each is used" in messages
    await nothing_more(ws)  # 151 arrived after page 1: the next listing shows it
    await poll(service)
    delta = await receive_json(ws)
    assert (delta["type"], delta["sessionId"]) == ("created", "151")
    await nothing_more(ws)


# --- 8: timestamps ----------------------------------------------------------------------------


async def test_lower_case_and_offset_timestamps_show_and_sort_in_the_sessions_table(
    fake: FakeUpstream, make_fake_service: ServiceFactory
) -> None:
    fake.add(3)
    fake.update("1", updateTime="2026-01-01t10:01:00z", title="lower")
    fake.update("2", updateTime="2026-01-01T11:01:30.5+01:00", title="offset")
    fake.update("3", updateTime="2026-01-01T09:00:00Z", title="upper")
    service = await make_fake_service()
    async with ControlRoomClient(service.url, TOKEN) as client:
        listing = await client.sessions()
    rows = render.format_table(listing.sessions, datetime(2026, 1, 1, 10, 2, tzinfo=UTC))[1:]
    assert [(r.split()[0], r.split()[-1]) for r in rows] == [
        ("29", "offset"),
        ("1", "lower"),
        ("1", "upper"),
    ]
    assert "?" not in "".join(rows)
