"""The dashboard's layout at laptop, tablet and phone widths, under a live stream of deltas."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.browser.conftest import ARTIFACTS, LOOP, module_loop
from tests.browser.test_dashboard import SCALE, open_dashboard, poll, wait_for
from tests.conftest import ServiceFactory

pytestmark = [pytest.mark.browser, LOOP]

HEIGHT = 800
STATES = ("PLANNING", "IN_PROGRESS", "AWAITING_USER_FEEDBACK", "QUEUED")
SESSIONS = 6
POLLS = 9  # 54 deltas per width: more than the feed keeps (50), far more than its box shows
SETTLE_MS = 5000 * SCALE
LONG_TITLE = "Migrate the whole continuous integration setup from Jenkins to GitHub Actions"

# Where the page ends, and where its content ends: the dashboard is the last in-flow box,
# so anything reaching below it escaped its container (the bug of issue 11.1).
PAGE_EXTENT = """() => {
  const dashboard = document.getElementById('dashboard').getBoundingClientRect();
  return {
    documentHeight: document.documentElement.scrollHeight,
    contentBottom: Math.ceil(dashboard.bottom + window.scrollY),
    documentWidth: document.documentElement.scrollWidth,
  };
}"""


async def extent(page: Page) -> dict[str, int]:
    """The document's height and width, and the bottom of its content, in CSS pixels."""
    found: dict[str, int] = await page.evaluate(PAGE_EXTENT)
    return found


@module_loop
async def busy_board(sim: Simulator, make_service: ServiceFactory) -> tuple[Service, list[str]]:
    """A service with a few sessions, one of them with a long title."""
    ids = [
        sim.create(repo=f"acme/service-{i}", title=f"Session number {i}")["id"]
        for i in range(SESSIONS - 1)
    ]
    ids.append(sim.create(repo="globex/data-pipeline", title=LONG_TITLE)["id"])
    return await make_service(), ids


async def stream_deltas(page: Page, sim: Simulator, service: Service, ids: list[str]) -> None:
    """Change every session, poll by poll, and wait until the page has drawn the last one."""
    for round_ in range(POLLS):
        for sid in ids:
            sim.set_state(sid, STATES[round_ % len(STATES)])
        await poll(service)
    seq = service.broker.position.seq
    await wait_for(page, f'[data-testid="dashboard"][data-seq="{seq}"]', SETTLE_MS)
    await page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=\"feed-item\"]').length === n", arg=50
    )


ROW_BOXES = """rows => rows.map(row => {
  const box = (field) => {
    const r = row.querySelector(`[data-field="${field}"]`).getBoundingClientRect();
    return { left: r.left, right: r.right, width: r.width, height: r.height };
  };
  return { id: row.dataset.sessionId, title: box('title'), state: box('state') };
})"""


async def assert_title_and_state_in_view(page: Page, ids: list[str], width: int) -> None:
    """Every row shows its title (with room to read it) and its state, inside the viewport."""
    boxes: list[dict[str, Any]] = await page.eval_on_selector_all(
        '[data-testid="session-row"]', ROW_BOXES
    )
    assert len(boxes) == len(ids)
    for found in boxes:
        for field in ("title", "state"):
            box = found[field]
            assert box["left"] >= 0 and box["right"] <= width, (found["id"], field, box)
            assert box["width"] > 0 and box["height"] > 0, (found["id"], field, box)
        assert found["title"]["width"] >= width / 2, found  # room to read, not a sliver
    title = page.locator(f'tr[data-session-id="{ids[-1]}"] [data-field="title"] a')
    lines = await title.evaluate(
        "a => Math.round(a.offsetHeight / parseFloat(getComputedStyle(a).lineHeight))"
    )
    assert lines == 2, "a long title gets two lines before it is cut"


async def test_page_height_stays_bounded_under_a_stream_of_deltas_at_every_width(
    page: Page, sim: Simulator, busy_board: tuple[Service, list[str]]
) -> None:
    """At 1440 px (the feed beside the table), 1280 px (above it), 800 px and 400 px (cards)."""
    service, ids = busy_board
    ARTIFACTS.mkdir(exist_ok=True)
    await page.set_viewport_size({"width": 1440, "height": HEIGHT})
    await open_dashboard(page, service)
    for width in (1440, 1280, 800, 400):
        await page.set_viewport_size({"width": width, "height": HEIGHT})
        before = await extent(page)

        await stream_deltas(page, sim, service, ids)

        after = await extent(page)
        print(
            f"\n{width} px: document height {before['documentHeight']} -> {after['documentHeight']}"
        )
        # Nothing reaches below the last box: a page that ends in blank space fails here.
        assert after["documentHeight"] <= after["contentBottom"] + 1, (width, after)
        # The feed scrolls inside its own box, so many more changes barely move the page:
        # the feed box can only grow to its maximum height (232 px above the table).
        assert after["documentHeight"] - before["documentHeight"] <= 240, (width, before, after)
        assert after["documentWidth"] <= width, f"the page scrolls sideways at {width} px"
        await page.screenshot(path=ARTIFACTS / f"dashboard-{width}px.png", animations="disabled")

    # On a phone, a table cut the state column off; cards keep the title and state in view.
    await assert_title_and_state_in_view(page, ids, 400)
    await page.screenshot(
        path=ARTIFACTS / "dashboard-phone.png", full_page=True, animations="disabled"
    )
