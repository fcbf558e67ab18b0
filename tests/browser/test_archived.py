"""The dashboard's "Archived" drawer, in a real Chromium against a real service on the
simulator: archived sessions listed page by page, unarchived back into the table, and no
Unarchive button for a read-only token."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from control_room.app import Service
from control_room.jules.simulator import Simulator
from tests.browser.conftest import LOOP
from tests.browser.test_control import (
    COMMAND_TIMEOUT_MS,
    READ_ONLY_TOKEN,
    open_detail,
    room,
    screenshot,
)
from tests.browser.test_dashboard import CHANGE_TIMEOUT_MS, open_dashboard, poll, row

pytestmark = [pytest.mark.browser, LOOP]
__all__ = ["room"]  # the fixture, shared with test_control


async def test_an_archived_session_is_unarchived_from_the_drawer_and_returns_to_the_table(
    page: Page, sim: Simulator, room: Service
) -> None:
    done = sim.create(repo="acme/web-app", title="Document the retry policy")["id"]
    sim.set_state(done, "COMPLETED")
    await poll(room)
    await open_dashboard(page, room)

    drawer = await open_detail(page, done)
    await drawer.get_by_test_id("archive").click()
    await expect(drawer).to_be_hidden(timeout=COMMAND_TIMEOUT_MS)
    await expect(row(page, done)).to_have_count(0, timeout=CHANGE_TIMEOUT_MS)

    await page.get_by_test_id("archived-open").click()
    panel = page.get_by_test_id("archived")
    await expect(panel).to_be_visible()
    item = panel.locator(f'[data-testid="archived-item"][data-session-id="{done}"]')
    await expect(item).to_contain_text("Document the retry policy", timeout=COMMAND_TIMEOUT_MS)
    await expect(item).to_contain_text("acme/web-app")
    await expect(item).to_contain_text("Completed")
    await expect(item).to_contain_text("Updated")
    await expect(panel.get_by_test_id("archived-more")).to_be_hidden()

    # By keyboard: the button takes focus and Enter presses it.
    await item.get_by_test_id("unarchive").focus()
    await page.keyboard.press("Enter")
    await expect(item).to_have_count(0, timeout=COMMAND_TIMEOUT_MS)
    await expect(panel.get_by_test_id("archived-result")).to_contain_text(
        "Unarchived “Document the retry policy”"
    )
    await expect(panel.get_by_test_id("archived-status")).to_have_text("No archived sessions.")
    assert not sim.get(done).get("archived")
    await page.keyboard.press("Escape")
    await expect(panel).to_be_hidden()
    await expect(page.get_by_test_id("archived-open")).to_be_focused()
    await expect(row(page, done)).to_have_count(1, timeout=CHANGE_TIMEOUT_MS)


async def test_more_archived_sessions_load_on_demand(
    page: Page, sim: Simulator, room: Service
) -> None:
    ids = []
    for i in range(33):  # more than one page of 30
        sid = sim.create(repo="acme/api", title=f"Old job {i}")["id"]
        sim.archive(sid)
        ids.append(sid)
    await open_dashboard(page, room)
    await page.get_by_test_id("archived-open").click()
    panel = page.get_by_test_id("archived")
    items = panel.get_by_test_id("archived-item")
    await expect(items).to_have_count(30, timeout=COMMAND_TIMEOUT_MS)
    more = panel.get_by_test_id("archived-more")
    await expect(more).to_be_visible()
    await screenshot(page, "archived-drawer.png")
    await more.click()
    await expect(items).to_have_count(33, timeout=COMMAND_TIMEOUT_MS)
    await expect(more).to_be_hidden()
    await expect(panel.get_by_test_id("archived-status")).to_have_text("33 archived")
    shown = await items.evaluate_all("rows => rows.map(r => r.dataset.sessionId)")
    assert sorted(shown) == sorted(ids)


async def test_a_read_only_token_lists_archived_sessions_but_cannot_unarchive(
    page: Page, sim: Simulator, room: Service
) -> None:
    sid = sim.create(repo="acme/web-app", title="Add dark mode toggle")["id"]
    sim.archive(sid)
    await open_dashboard(page, room, token=READ_ONLY_TOKEN)
    await expect(page.get_by_test_id("read-only")).to_be_visible()
    await page.get_by_test_id("archived-open").click()
    panel = page.get_by_test_id("archived")
    await expect(panel.get_by_test_id("archived-item")).to_have_count(1, timeout=COMMAND_TIMEOUT_MS)
    await expect(panel.get_by_test_id("unarchive")).to_be_hidden()


async def test_jules_failing_is_said_in_the_drawer_and_can_be_retried(
    page: Page, sim: Simulator, room: Service
) -> None:
    sid = sim.create(repo="acme/web-app", title="Bump dependencies")["id"]
    sim.archive(sid)
    await open_dashboard(page, room)
    sim.faults.fail(1, 503, only="list_first_page")
    await page.get_by_test_id("archived-open").click()
    panel = page.get_by_test_id("archived")
    await expect(panel.get_by_test_id("archived-status")).to_contain_text(
        "Could not load archived sessions: Jules answered", timeout=COMMAND_TIMEOUT_MS
    )
    await panel.get_by_role("button", name="Try again").click()
    await expect(panel.get_by_test_id("archived-item")).to_have_count(1, timeout=COMMAND_TIMEOUT_MS)
