"""The dashboard in a real Chromium, against a real service fed by the simulator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Locator, Page, expect

from control_room.app import Service
from control_room.jules.simulator import Simulator, SimulatorServer
from tests.browser.conftest import ARTIFACTS, LOOP, module_loop
from tests.conftest import API_KEY, MS, TOKEN, ServiceFactory, settings

pytestmark = [pytest.mark.browser, LOOP]

SCALE = MS * 1000  # 1.0 unless CONTROL_ROOM_TEST_MS slows every test clock down
LIVE_TIMEOUT_MS = 10_000 * SCALE  # first load: page, token check, snapshot, first frame
CHANGE_TIMEOUT_MS = 1000 * SCALE  # the promise: an upstream change shows within a second
BURST_SESSIONS = 1000
BURST_DELTAS = 500
# Measured on a loaded 2-CPU container with software rendering: 200-370 ms longest frame and
# 0.6-1.2 s to settle. A real <table> layout of 1,000 rows took 1.1-1.9 s per frame there:
# these bounds catch that kind of regression without flaking on a busy CI machine (where one
# frame of 800 ms was seen while the other test worker ran).
MAX_FRAME_GAP_MS = 750 * SCALE
MAX_SETTLE_S = 3.0 * SCALE


async def open_dashboard(page: Page, service: Service, token: str = TOKEN) -> None:
    """Open the page with the token in the fragment and wait until it is live."""
    await page.goto(f"{service.url}/#token={token}")
    await wait_for(page, '[data-testid="connection"][data-state="live"]', LIVE_TIMEOUT_MS)


async def wait_for(page: Page, selector: str, timeout_ms: float) -> None:
    """Wait for a CSS selector to match.

    Used where the page is busy: `expect(...)` polling a 1,000-row page was measured to slow
    the page itself several-fold (3 s instead of 1 s to settle), while a CSS selector wait
    costs it next to nothing.
    """
    await page.wait_for_selector(selector, state="attached", timeout=timeout_ms)


def row(page: Page, session_id: str) -> Locator:
    """The table row of one session."""
    return page.locator(f'tr[data-session-id="{session_id}"]')


def cell(page: Page, session_id: str, field: str) -> Locator:
    """One field of a session's row (a cell, or the branch under the repository)."""
    return row(page, session_id).locator(f'[data-field="{field}"]')


async def poll(service: Service) -> None:
    """Make the service poll the simulator now."""
    assert service.poller is not None
    await service.poller.poll_once()


async def rendered_rows(page: Page) -> dict[str, str]:
    """Session id -> raw state of every row the table shows."""
    rows: dict[str, str] = await page.eval_on_selector_all(
        '[data-testid="session-row"]',
        "rows => Object.fromEntries(rows.map(r => [r.dataset.sessionId, r.dataset.state]))",
    )
    return rows


async def get_sessions(service: Service) -> tuple[int, dict[str, Any]]:
    """GET /api/sessions as a client would: the status and the JSON body."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{service.url}/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def api_sessions(service: Service) -> dict[str, Any]:
    """The body of a successful GET /api/sessions."""
    status, body = await get_sessions(service)
    assert status == 200
    return body


@module_loop
async def board(sim: Simulator, make_service: ServiceFactory) -> tuple[Service, list[str]]:
    """A service whose baseline already holds a few sessions in different states."""
    ids = [
        sim.create(repo="acme/web-app", branch="main", title="Fix flaky login test")["id"],
        sim.create(repo="acme/payments-api", title="Paginate the orders endpoint")["id"],
        sim.create(repo="globex/infra", title="Bump dependencies", state="PLANNING")["id"],
        sim.create(repo="acme/web-app", title="Add dark mode toggle", state="COMPLETED")["id"],
    ]
    service = await make_service()
    assert service.poller is not None and len(service.poller.sessions) == len(ids)
    return service, ids


async def test_table_shows_every_session(page: Page, board: tuple[Service, list[str]]) -> None:
    service, ids = board
    await open_dashboard(page, service)

    await expect(page.get_by_test_id("session-row")).to_have_count(len(ids))
    snapshot = (await api_sessions(service))["sessions"]
    for session in snapshot:
        sid = session["id"]
        await expect(cell(page, sid, "repository-name")).to_have_text(session["repository"])
        await expect(cell(page, sid, "branch")).to_have_text(session["branch"])
        await expect(cell(page, sid, "title")).to_have_text(session["title"])
        await expect(cell(page, sid, "state")).to_have_attribute("data-value", session["state"])
        # The title opens the session's detail (which links to Jules).
        link = cell(page, sid, "title").get_by_role("link")
        await expect(link).to_have_attribute("href", f"#session={sid}")
        if session.get("pullRequest"):
            pr = cell(page, sid, "pullRequest").get_by_role("link")
            await expect(pr).to_have_attribute("href", session["pullRequest"]["url"])
    done = ids[3]
    await expect(cell(page, done, "state")).to_have_text("Completed")
    await expect(cell(page, done, "pullRequest")).to_have_text("#101")
    await expect(page.get_by_test_id("count-QUEUED").locator(".chip-count")).to_have_text("2")
    await expect(page.get_by_test_id("count-all").locator(".chip-count")).to_have_text("4")

    # The token left the address bar and lives in this tab's session storage only.
    assert "token" not in page.url
    assert await page.evaluate("sessionStorage.getItem('control-room.token')") == TOKEN


async def test_upstream_change_appears_in_its_row_within_a_second(
    page: Page, sim: Simulator, board: tuple[Service, list[str]]
) -> None:
    service, ids = board
    sid = ids[2]
    await open_dashboard(page, service)
    await expect(cell(page, sid, "state")).to_have_text("Planning")

    sim.set_state(sid, "AWAITING_PLAN_APPROVAL")
    await poll(service)

    state = cell(page, sid, "state")
    await expect(state).to_have_text("Awaiting approval", timeout=CHANGE_TIMEOUT_MS)
    await expect(state).to_have_attribute("data-flash", "a")  # the changed cell is highlighted
    await expect(cell(page, sid, "title")).not_to_have_attribute("data-flash", "a")
    feed = page.get_by_test_id("feed-item").first
    await expect(feed).to_contain_text("globex/infra · PLANNING → AWAITING_PLAN_APPROVAL")
    # The most recently updated session sorts first.
    first = page.get_by_test_id("session-row").first
    await expect(first).to_have_attribute("data-session-id", sid)

    created = sim.create(repo="initech/tps-reports", title="Write the cover sheet")["id"]
    await poll(service)
    await expect(cell(page, created, "title")).to_have_text(
        "Write the cover sheet", timeout=CHANGE_TIMEOUT_MS
    )


async def test_deleted_session_leaves(
    page: Page, sim: Simulator, board: tuple[Service, list[str]]
) -> None:
    service, ids = board
    await open_dashboard(page, service)
    await expect(row(page, ids[0])).to_have_count(1)

    sim.delete(ids[0])
    await poll(service)

    await expect(row(page, ids[0])).to_have_count(0, timeout=CHANGE_TIMEOUT_MS)
    await expect(page.get_by_test_id("session-row")).to_have_count(len(ids) - 1)
    await expect(page.get_by_test_id("feed-item").first).to_contain_text("deleted")


async def test_wrong_token_shows_a_clear_error(page: Page, service: Service) -> None:
    await page.goto(f"{service.url}/#token=not-the-token")

    error = page.get_by_test_id("token-error")
    await expect(error).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    await expect(error).to_contain_text("rejected this token")
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "unauthorized")
    await expect(page.get_by_test_id("session-row")).to_have_count(0)
    assert await page.evaluate("sessionStorage.getItem('control-room.token')") is None

    # The form takes the right one, from the keyboard alone.
    await expect(page.get_by_test_id("token-input")).to_be_focused()
    await page.keyboard.type(TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("connection")).to_have_attribute(
        "data-state", "live", timeout=LIVE_TIMEOUT_MS
    )
    await expect(page.get_by_test_id("token-panel")).to_be_hidden()


async def test_without_a_token_the_page_asks_for_one(page: Page, service: Service) -> None:
    await page.goto(service.url)

    await expect(page.get_by_test_id("token-form")).to_be_visible()
    await expect(page.get_by_test_id("token-error")).to_be_hidden()
    await expect(page.get_by_test_id("dashboard")).to_be_hidden()
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("token-submit").click()
    await expect(page.get_by_test_id("connection")).to_have_attribute(
        "data-state", "live", timeout=LIVE_TIMEOUT_MS
    )


async def test_filters_by_state_and_repository(
    page: Page, board: tuple[Service, list[str]]
) -> None:
    service, ids = board
    await open_dashboard(page, service)
    visible = page.locator('[data-testid="session-row"]:visible')

    await page.get_by_test_id("count-PLANNING").click()
    await expect(visible).to_have_count(1)
    await expect(visible.first).to_have_attribute("data-session-id", ids[2])
    await expect(page.get_by_test_id("count-PLANNING")).to_have_attribute("aria-pressed", "true")

    await page.get_by_test_id("count-all").click()
    await page.get_by_test_id("filter-repo").select_option("acme/web-app")
    await expect(visible).to_have_count(2)
    await expect(page.get_by_test_id("count-COMPLETED").locator(".chip-count")).to_have_text("1")

    await page.get_by_test_id("filter-repo").select_option("")
    await page.get_by_test_id("filter-text").fill("orders")
    await expect(visible).to_have_count(1)
    await expect(visible.first).to_have_attribute("data-session-id", ids[1])


async def test_page_recovers_after_the_server_restarts(
    page: Page, sim: Simulator, make_service: ServiceFactory, board: tuple[Service, list[str]]
) -> None:
    service, ids = board
    await open_dashboard(page, service)
    sim.set_state(ids[1], "PLANNING")
    await poll(service)
    await expect(cell(page, ids[1], "state")).to_have_text("Planning", timeout=CHANGE_TIMEOUT_MS)
    old_epoch = service.broker.position.epoch

    await service.stop()
    await expect(page.get_by_test_id("connection")).not_to_have_attribute("data-state", "live")
    # While it is down, the account moves on: the page must not miss any of it.
    sim.delete(ids[0])
    added = sim.create(repo="globex/data-pipeline", title="Speed up the nightly ETL")["id"]
    sim.set_state(ids[2], "IN_PROGRESS")
    restarted = await make_service(port=service.port)  # same port, new epoch (no persistence)
    assert restarted.broker.position.epoch != old_epoch

    dashboard = page.get_by_test_id("dashboard")
    await expect(dashboard).to_have_attribute(
        "data-epoch", restarted.broker.position.epoch, timeout=LIVE_TIMEOUT_MS
    )
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    await expect(row(page, ids[0])).to_have_count(0)
    expected = {s["id"]: s["state"] for s in (await api_sessions(restarted))["sessions"]}
    assert added in expected
    assert await rendered_rows(page) == expected
    assert await page.evaluate("window.controlRoom.stream.stats.resets") >= 1
    await expect(page.get_by_test_id("feed-note").first).to_contain_text("service restarted")

    # And it is live on the new server, not just reloaded: liveness, not latency (the
    # one-second promise is test_upstream_change_appears_in_its_row_within_a_second's; with
    # a restart just behind it, a loaded machine may need more).
    sim.set_state(added, "PLANNING")
    await poll(restarted)
    await expect(cell(page, added, "state")).to_have_text("Planning", timeout=LIVE_TIMEOUT_MS)


FRAME_GAP_PROBE = """() => {
  const probe = { gaps: [], last: performance.now(), running: true };
  const loop = (now) => {
    probe.gaps.push(now - probe.last);
    probe.last = now;
    if (probe.running) requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
  window.frameProbe = probe;
}"""


async def test_thousand_sessions_and_a_burst_of_500_deltas_do_not_freeze_the_page(
    page: Page, sim: Simulator, make_service: ServiceFactory
) -> None:
    ids = [s["id"] for s in sim.bulk_create(BURST_SESSIONS, state="QUEUED")]
    service = await make_service()
    started = time.perf_counter()
    await open_dashboard(page, service)
    await wait_for(page, f'[data-testid="dashboard"][data-rows="{BURST_SESSIONS}"]', 5000 * SCALE)
    first_load = time.perf_counter() - started

    await page.evaluate(FRAME_GAP_PROBE)
    for sid in ids[:BURST_DELTAS]:
        sim.set_state(sid, "PLANNING")
    seq = service.broker.position.seq
    await poll(service)
    assert service.broker.position.seq == seq + BURST_DELTAS
    started = time.perf_counter()
    await wait_for(
        page, f'[data-testid="dashboard"][data-seq="{seq + BURST_DELTAS}"]', MAX_SETTLE_S * 1000
    )
    await expect(page.get_by_test_id("count-PLANNING").locator(".chip-count")).to_have_text(
        str(BURST_DELTAS)
    )
    settle = time.perf_counter() - started
    await asyncio.sleep(100 * MS)  # a few more frames, so a long last frame is measured
    gaps = await page.evaluate("window.frameProbe.running = false, window.frameProbe.gaps")
    longest, second = sorted(gaps, reverse=True)[:2]

    print(
        f"\n1,000 sessions first load {first_load:.2f}s; 500 deltas settled in {settle:.3f}s,"
        f" longest frame gaps {longest:.0f} and {second:.0f} ms"
    )
    assert settle < MAX_SETTLE_S
    # One long frame may be the machine's (the other test worker, the collector); a layout
    # regression makes every frame of the burst long, so the second longest catches it.
    assert second < MAX_FRAME_GAP_MS
    assert longest < 2 * MAX_FRAME_GAP_MS
    assert await page.get_by_test_id("feed-item").count() == 50  # the feed stays a glance


class HandClock:
    """A clock for the simulator that the test sets by hand (to spread sessions over hours)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


MINUTE = 60.0
BOARD = (  # repository, branch, title, state, minutes since its last change
    ("acme/web-app", "main", "Fix flaky login test", "AWAITING_PLAN_APPROVAL", 25),
    ("acme/payments-api", "release/2.4", "Paginate the orders endpoint", "IN_PROGRESS", 7),
    ("globex/data-pipeline", "staging", "Speed up the nightly ETL", "COMPLETED", 130),
    ("acme/mobile", "main", "Fix timezone bug in reports", "AWAITING_USER_FEEDBACK", 48),
    ("globex/infra", "main", "Migrate CI to GitHub Actions", "PLANNING", 3),
    ("initech/tps-reports", "master", "Document the retry policy", "COMPLETED", 310),
    ("acme/web-app", "develop", "Add dark mode toggle", "IN_PROGRESS", 62),
    ("acme/payments-api", "main", "Add rate limiting to the API", "FAILED", 185),
    ("globex/data-pipeline", "main", "Write tests for the CSV exporter", "QUEUED", 1),
    ("acme/mobile", "main", "Upgrade to Python 3.12", "COMPLETED", 1500),
    ("globex/infra", "main", "Bump dependencies", "IN_PROGRESS", 15),
)


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshot_of_a_realistic_board(page: Page, scheme: str) -> None:
    """Not an assertion of taste: a picture for a person to look at, in both schemes."""
    clock = HandClock(time.time())
    sim = Simulator(seed=7, clock=clock)
    ids = []
    for repo, branch, title, state, minutes in sorted(BOARD, key=lambda b: -b[4]):
        clock.now = time.time() - minutes * MINUTE
        ids.append(sim.create(repo=repo, branch=branch, title=title, state=state)["id"])
    async with SimulatorServer(sim, API_KEY) as upstream:
        service = Service(settings(jules_api_base=upstream.base_url))
        await service.start()
        try:
            await poll(service)
            await page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
            await open_dashboard(page, service)
            live_changes = (  # a few things happen while the page is open
                lambda: sim.delete(ids[0]),
                lambda: sim.set_state(ids[-3], "COMPLETED"),
                lambda: sim.create(repo="initech/tps-reports", title="Add a cover sheet"),
                lambda: sim.set_state(ids[-2], "AWAITING_PLAN_APPROVAL"),
            )
            for change in live_changes:
                clock.now = time.time()
                change()
                await poll(service)
            await expect(page.get_by_test_id("feed-item")).to_have_count(len(live_changes))
            await expect(page.locator("tr[data-leaving]")).to_have_count(0)
            ARTIFACTS.mkdir(exist_ok=True)
            name = "dashboard.png" if scheme == "light" else f"dashboard-{scheme}.png"
            await page.screenshot(path=ARTIFACTS / name, full_page=True, animations="disabled")
        finally:
            await service.stop()


async def test_a_dead_jules_api_is_named_as_such_and_the_page_recovers(
    page: Page, sim: Simulator, make_service: ServiceFactory
) -> None:
    """The service is up, Jules is not: the page says so (not "Reconnecting"), then goes live."""
    async with SimulatorServer(sim, API_KEY) as gone:
        port = gone.port  # closed once the block ends: connections to it are refused
    service = await make_service(jules_api_base=f"http://127.0.0.1:{port}/v1alpha")
    sim.create(repo="acme/web-app", title="Fix flaky login test")
    status, body = await get_sessions(service)
    assert status == 503
    # Whatever the service knows of the upstream's problem is what the page must show.
    said = body.get("upstream", {}).get("detail") or body["message"]

    await page.goto(f"{service.url}/#token={TOKEN}")

    connection = page.get_by_test_id("connection")
    banner = page.get_by_test_id("connection-banner")
    await expect(connection).to_have_attribute("data-state", "waiting", timeout=LIVE_TIMEOUT_MS)
    await expect(banner).to_contain_text(
        f"Connected to the control room; waiting for the Jules API: {said}, retrying in"
    )
    await expect(connection).not_to_contain_text("Reconnecting")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "dashboard-waiting-for-jules.png")

    async with SimulatorServer(sim, API_KEY, port=port):  # Jules is back
        await poll(service)
        # What "Retry now" does, without waiting out the service's Retry-After (2 s).
        await page.evaluate("window.controlRoom.stream.retryNow()")
        await expect(connection).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT_MS)
        await expect(banner).to_be_hidden()
        await expect(page.get_by_test_id("session-row")).to_have_count(1)
