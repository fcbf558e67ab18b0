"""The dashboard as a control room, in a real Chromium against a real service on the simulator:
"Needs you", approving a plan, answering a question, a session's detail and live timeline,
creating, archiving and deleting sessions, read-only tokens, notifications, deep links.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from control_room.app import Service
from control_room.jules.simulator import Simulator, SimulatorServer
from control_room.jules.simulator.errors import SessionNotFound
from tests.browser.conftest import ARTIFACTS, LOOP, module_loop, new_context
from tests.browser.test_dashboard import (
    CHANGE_TIMEOUT_MS,
    LIVE_TIMEOUT_MS,
    MINUTE,
    SCALE,
    HandClock,
    cell,
    open_dashboard,
    poll,
    row,
)
from tests.conftest import API_KEY, TOKEN, ServiceFactory, settings

pytestmark = [pytest.mark.browser, LOOP]

READ_ONLY_TOKEN = "read-only-token.for-viewers"
COMMAND_TIMEOUT_MS = 5000 * SCALE  # a command: the socket, the simulator, the re-read
TITLE = "Jules Control Room"


@module_loop
async def room(make_service: ServiceFactory) -> Service:
    """A service that also accepts a read-only token."""
    return await make_service(local_readonly_token=READ_ONLY_TOKEN)


def plan_titles(sim: Simulator, sid: str) -> list[str]:
    """The step titles of the session's latest plan, as Jules has them."""
    plans = [a["planGenerated"]["plan"] for a in sim.activities(sid) if "planGenerated" in a]
    steps = sorted(plans[-1]["steps"], key=lambda step: step["index"])
    return [step["title"] for step in steps]


def question(sim: Simulator, sid: str) -> str:
    """What the agent last asked."""
    asked = [
        a["agentMessaged"]["agentMessage"] for a in sim.activities(sid) if "agentMessaged" in a
    ]
    return str(asked[-1])


def card(page: Page, sid: str) -> Locator:
    """The "Needs you" card of a session."""
    return page.locator(f'[data-testid="needs-item"][data-session-id="{sid}"]')


async def open_detail(page: Page, sid: str) -> Locator:
    """Open a session's detail by clicking its row; the open drawer."""
    await cell(page, sid, "repository").click()
    drawer = page.get_by_test_id("detail")
    await expect(drawer).to_be_visible()
    await expect(drawer).to_have_attribute("data-session-id", sid)
    return drawer


async def screenshot(page: Page, name: str) -> None:
    """A picture for a person to look at after changing the page."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name, animations="disabled")


async def test_approving_a_plan_from_needs_you(page: Page, sim: Simulator, room: Service) -> None:
    """Click -> approvePlan over the socket -> the card leaves -> the row moves on."""
    plan = sim.create(repo="acme/web-app", title="Fix flaky login test")["id"]
    ask = sim.create(repo="acme/mobile", title="Fix timezone bug in reports")["id"]
    busy = sim.create(repo="globex/infra", title="Bump dependencies")["id"]
    sim.set_state(plan, "AWAITING_PLAN_APPROVAL")
    sim.set_state(ask, "AWAITING_USER_FEEDBACK")
    sim.set_state(busy, "IN_PROGRESS")
    await poll(room)
    await open_dashboard(page, room)

    needs = page.get_by_test_id("needs-item")
    await expect(needs).to_have_count(2)
    await expect(page).to_have_title(f"(2) {TITLE}")
    # What each waits for: the plan's first steps, the question.
    steps = card(page, plan).get_by_test_id("plan-step")
    for index, title in enumerate(plan_titles(sim, plan)[:3]):
        await expect(steps.nth(index)).to_have_text(title)
    await expect(card(page, ask).get_by_test_id("needs-question")).to_have_text(question(sim, ask))
    await screenshot(page, "dashboard-needs-you.png")

    await card(page, plan).get_by_test_id("needs-approve").click()

    await expect(card(page, plan)).to_have_count(0, timeout=COMMAND_TIMEOUT_MS)
    await expect(cell(page, plan, "state")).to_have_attribute("data-value", "IN_PROGRESS")
    await expect(page).to_have_title(f"(1) {TITLE}")
    assert sim.get(plan)["state"] == "IN_PROGRESS"
    assert sim.requests["approve"] == 1


async def test_answering_a_question_in_the_detail(
    page: Page, sim: Simulator, room: Service
) -> None:
    sid = sim.create(repo="acme/mobile", title="Fix timezone bug in reports")["id"]
    sim.set_state(sid, "AWAITING_USER_FEEDBACK")
    await poll(room)
    await open_dashboard(page, room)

    drawer = await open_detail(page, sid)
    await expect(drawer.get_by_test_id("question")).to_have_text(question(sim, sid))
    reply = drawer.get_by_test_id("reply")
    await expect(reply).to_have_class("reply control prominent")
    # Opened on a question, the answer box has the focus: type, Ctrl+Enter.
    await expect(drawer.get_by_test_id("reply-text")).to_be_focused()
    answer = "Keep backwards compatibility, please."
    await page.keyboard.type(answer)
    await page.keyboard.press("Control+Enter")

    await expect(drawer.get_by_test_id("detail-result")).to_have_text(
        "Sent to Jules.", timeout=COMMAND_TIMEOUT_MS
    )
    await expect(drawer.get_by_test_id("detail-state")).to_have_attribute(
        "data-value", "IN_PROGRESS"
    )
    await expect(drawer.get_by_test_id("detail-question")).to_be_hidden()
    await expect(drawer.get_by_test_id("reply-text")).to_have_value("")
    # The message is in the timeline, pushed as an activity.
    mine = drawer.locator('[data-testid="activity"][data-kind="userMessaged"]')
    await expect(mine.locator(".bubble")).to_have_text(answer, timeout=CHANGE_TIMEOUT_MS)
    sent = [a for a in sim.activities(sid) if "userMessaged" in a]
    assert sent[-1]["userMessaged"]["userMessage"] == answer


async def test_detail_shows_the_plan_and_grows_live(
    page: Page, sim: Simulator, room: Service
) -> None:
    """The timeline: numbered plan, approval, progress, completion with a patch, as they come."""
    sid = sim.create(repo="acme/web-app", branch="main", title="Add dark mode toggle")["id"]
    sim.set_state(sid, "AWAITING_PLAN_APPROVAL")
    await poll(room)
    await open_dashboard(page, room)
    drawer = await open_detail(page, sid)

    await expect(drawer.get_by_test_id("detail-title")).to_have_text("Add dark mode toggle")
    await expect(drawer.get_by_test_id("detail-repo")).to_have_text("acme/web-app · main")
    jules = drawer.get_by_role("link", name="Open in Jules ↗")
    await expect(jules).to_have_attribute("href", sim.get(sid)["url"])
    timeline = drawer.get_by_test_id("timeline")
    plan = timeline.locator('[data-kind="planGenerated"]')
    await expect(plan.get_by_test_id("plan-step")).to_have_count(len(plan_titles(sim, sid)))
    for index, title in enumerate(plan_titles(sim, sid)):
        await expect(plan.get_by_test_id("plan-step").nth(index)).to_contain_text(title)

    await drawer.get_by_test_id("approve").click()
    await expect(timeline.locator('[data-kind="planApproved"]')).to_have_count(
        1, timeout=COMMAND_TIMEOUT_MS
    )
    await expect(drawer.get_by_test_id("approve")).to_be_hidden()

    sim.set_state(sid, "COMPLETED")  # the agent finishes, with a change set
    await poll(room)
    done = timeline.locator('[data-kind="sessionCompleted"]')
    await expect(done).to_have_count(1, timeout=CHANGE_TIMEOUT_MS)
    pr = drawer.get_by_role("link", name="Pull request #")
    await expect(pr).to_have_attribute("href", sim.get(sid)["outputs"][0]["pullRequest"]["url"])
    files = done.get_by_test_id("changed-file")
    raw = next(a for a in reversed(sim.activities(sid)) if "sessionCompleted" in a)
    patch = raw["artifacts"][0]["changeSet"]["gitPatch"]["unidiffPatch"]
    await expect(files.first).to_be_visible()
    await done.get_by_test_id("view-patch").click()
    shown = done.get_by_test_id("patch").locator("pre.diff")
    await expect(shown).to_have_text(patch.rstrip("\n") + "\n", timeout=COMMAND_TIMEOUT_MS)
    await expect(shown.locator(".line.add").first).to_be_visible()
    ids = await timeline.locator('[data-testid="activity"]').evaluate_all(
        "items => items.map(i => i.dataset.activityId)"
    )
    assert ids == [a["id"] for a in sim.activities(sid)], "each activity once, in order"
    await screenshot(page, "dashboard-detail.png")


async def test_new_session_form(page: Page, sim: Simulator, room: Service) -> None:
    await open_dashboard(page, room)
    await page.get_by_test_id("new-session").click()
    form = page.get_by_test_id("compose")
    await expect(form).to_be_visible()
    repos = sorted(s["name"].removeprefix("sources/github/") for s in sim.sources())
    options = form.get_by_test_id("compose-repo").locator("option")
    await expect(options).to_have_count(len(repos) + 1)  # and "No repository"
    assert await options.evaluate_all("os => os.slice(1).map(o => o.value)") == repos

    await form.get_by_test_id("compose-repo").select_option("globex/infra")
    branches = form.get_by_test_id("compose-branch").locator("option")
    await expect(branches.first).to_be_attached()
    branch = (await branches.all_inner_texts())[-1]
    await form.get_by_test_id("compose-branch").select_option(branch)
    prompt = "Move the CI to GitHub Actions and delete the Jenkinsfile"
    await form.get_by_test_id("compose-prompt").fill(prompt)
    await form.get_by_test_id("compose-title").fill("Migrate CI")
    await form.get_by_test_id("compose-pr").uncheck()
    await screenshot(page, "dashboard-new-session.png")
    await form.get_by_test_id("compose-submit").click()

    await expect(form).to_be_hidden(timeout=COMMAND_TIMEOUT_MS)
    drawer = page.get_by_test_id("detail")
    await expect(drawer.get_by_test_id("detail-title")).to_have_text("Migrate CI")
    created = [s for s in sim.sessions_newest_first() if s.get("title") == "Migrate CI"]
    assert len(created) == 1
    session = created[0]
    assert session["prompt"] == prompt
    assert session["sourceContext"]["source"] == "sources/github/globex/infra"
    assert session["sourceContext"]["githubRepoContext"]["startingBranch"] == branch
    assert "automationMode" not in session  # no pull request asked for
    await expect(drawer).to_have_attribute("data-session-id", session["id"])
    await expect(row(page, session["id"])).to_have_count(1)

    # An empty prompt is refused on the page, before anything is sent.
    await drawer.get_by_test_id("detail-close").click()
    await page.get_by_test_id("new-session").click()
    await form.get_by_test_id("compose-submit").click()
    await expect(form.get_by_test_id("compose-error")).to_contain_text("the prompt is empty")
    assert sim.requests["create"] == 1


async def test_archive_and_delete_finished_sessions(
    page: Page, sim: Simulator, room: Service
) -> None:
    keep = sim.create(repo="acme/web-app", title="Document the retry policy")["id"]
    gone = sim.create(repo="acme/web-app", title="Upgrade to Python 3.12")["id"]
    working = sim.create(repo="acme/web-app", title="Add rate limiting")["id"]
    sim.set_state(keep, "COMPLETED")
    sim.set_state(gone, "FAILED")
    sim.set_state(working, "IN_PROGRESS")
    await poll(room)
    await open_dashboard(page, room)

    drawer = await open_detail(page, working)
    await expect(drawer.get_by_test_id("archive")).to_be_hidden()  # only finished ones
    await page.keyboard.press("Escape")

    drawer = await open_detail(page, keep)
    await drawer.get_by_test_id("archive").click()
    await expect(drawer).to_be_hidden(timeout=COMMAND_TIMEOUT_MS)
    await expect(row(page, keep)).to_have_count(0, timeout=CHANGE_TIMEOUT_MS)
    await expect(page.get_by_test_id("feed-note").first).to_contain_text(
        "Archived “Document the retry policy”"
    )
    assert sim.get(keep)["archived"] is True

    drawer = await open_detail(page, gone)
    await drawer.get_by_test_id("delete").click()
    assert sim.requests["delete"] == 0, "asked first"
    await drawer.get_by_test_id("delete-confirm").click()
    await expect(drawer).to_be_hidden(timeout=COMMAND_TIMEOUT_MS)
    await expect(row(page, gone)).to_have_count(0, timeout=CHANGE_TIMEOUT_MS)
    with pytest.raises(SessionNotFound):
        sim.get(gone)


async def test_refused_and_failed_commands_are_said_clearly(
    page: Page, sim: Simulator, room: Service
) -> None:
    moved = sim.create(repo="acme/api", title="Paginate the orders endpoint")["id"]
    down = sim.create(repo="acme/api", title="Speed up the nightly ETL")["id"]
    sim.set_state(moved, "AWAITING_PLAN_APPROVAL")
    sim.set_state(down, "AWAITING_PLAN_APPROVAL")
    await poll(room)
    await open_dashboard(page, room)

    # Approved elsewhere meanwhile (the board has not polled yet): Jules refuses.
    sim.approve_plan(moved)
    drawer = await open_detail(page, moved)
    await drawer.get_by_test_id("approve").click()
    result = drawer.get_by_test_id("detail-result")
    await expect(result).to_contain_text(
        "Jules refused: the session is not in a state that allows this any more.",
        timeout=COMMAND_TIMEOUT_MS,
    )
    await expect(result).to_have_attribute("role", "alert")
    await page.keyboard.press("Escape")

    # Jules does not answer: nothing changed, and the page says so.
    sim.faults.fail(10, 503, only="approve")
    drawer = await open_detail(page, down)
    await drawer.get_by_test_id("approve").click()
    await expect(result).to_contain_text(
        "Jules did not answer, so nothing changed", timeout=COMMAND_TIMEOUT_MS
    )
    await expect(drawer.get_by_test_id("approve")).to_be_enabled()
    sim.faults.clear()
    assert sim.get(down)["state"] == "AWAITING_PLAN_APPROVAL"


async def test_a_read_only_token_sees_no_controls(
    page: Page, sim: Simulator, room: Service
) -> None:
    plan = sim.create(repo="acme/web-app", title="Fix flaky login test")["id"]
    done = sim.create(repo="acme/web-app", title="Add dark mode toggle")["id"]
    sim.set_state(plan, "AWAITING_PLAN_APPROVAL")
    sim.set_state(done, "COMPLETED")
    await poll(room)
    await open_dashboard(page, room, token=READ_ONLY_TOKEN)

    await expect(page.get_by_test_id("read-only")).to_be_visible()
    await expect(card(page, plan)).to_be_visible()  # what waits is still shown...
    await expect(card(page, plan).get_by_test_id("plan-step").first).to_be_visible()
    controls = page.locator(".control:visible, [data-testid='needs-approve']:visible")
    await expect(controls).to_have_count(0)  # ...but nothing to press
    await expect(page.get_by_test_id("new-session")).to_be_hidden()
    for sid in (plan, done):
        drawer = await open_detail(page, sid)
        await expect(drawer.get_by_test_id("timeline").first).to_be_visible()
        await expect(drawer.locator(".control:visible")).to_have_count(0)
        for control in ("approve", "reply-text", "send", "archive", "delete"):
            await expect(drawer.get_by_test_id(control)).to_be_hidden()
        await page.keyboard.press("Escape")
    # The service would refuse anyway: the controls are hidden, not merely disabled.
    answer = await page.evaluate(
        "id => window.controlRoom.stream.send({type: 'approvePlan', sessionId: id})", plan
    )
    assert answer["error"]["code"] == "forbidden"
    assert sim.get(plan)["state"] == "AWAITING_PLAN_APPROVAL"


SPY_ON_NOTIFICATIONS = """
window.notificationLog = { asked: 0, shown: [] };
if (window.Notification) {
  const Real = window.Notification;
  const ask = Real.requestPermission.bind(Real);
  class Recorded extends Real {
    constructor(title, options = {}) {
      super(title, options);
      window.notificationLog.shown.push({ title, body: options.body || '' });
    }
  }
  Recorded.requestPermission = () => {
    window.notificationLog.asked += 1;
    return ask();
  };
  window.Notification = Recorded;
}
"""


async def test_notifications_are_asked_for_on_a_click_and_tell_what_is_needed(
    browser: Browser, sim: Simulator, room: Service
) -> None:
    waiting = sim.create(repo="acme/web-app", title="Waiting before the page opened")["id"]
    sim.set_state(waiting, "AWAITING_PLAN_APPROVAL")
    later = sim.create(repo="globex/infra", title="Migrate CI to GitHub Actions")["id"]
    await poll(room)

    # Never asked on load; asked once the button is clicked (here the answer is no).
    errors: list[str] = []
    context = await new_context(browser)
    await context.add_init_script(SPY_ON_NOTIFICATIONS)
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    await open_dashboard(page, room)
    notify = page.get_by_test_id("notify")
    await expect(notify).to_have_text("Notify me")
    assert await page.evaluate("window.notificationLog.asked") == 0
    await notify.click()
    await page.wait_for_function("() => window.notificationLog.asked === 1")
    await expect(notify).not_to_have_attribute("aria-pressed", "true")
    await context.close()

    # Allowed: only a session that *newly* needs you is announced, with its plan's steps.
    context = await new_context(browser)
    await context.grant_permissions(["notifications"])
    await context.add_init_script(SPY_ON_NOTIFICATIONS)
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    await open_dashboard(page, room)
    await notify_on(page)
    sim.set_state(later, "AWAITING_PLAN_APPROVAL")
    await poll(room)
    shown = await wait_for_notification(page)
    steps = plan_titles(sim, later)
    assert shown == [
        {
            "title": "Plan to approve: Migrate CI to GitHub Actions",
            "body": "\n".join(
                [f"{i + 1}. {title}" for i, title in enumerate(steps[:3])]
                + ([f"+{len(steps) - 3} more steps"] if len(steps) > 3 else [])
            ),
        }
    ]
    assert await page.evaluate("window.notificationLog.asked") == 0  # granted already
    await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def notify_on(page: Page) -> None:
    """Turn notifications on with the button (permission already granted)."""
    notify = page.get_by_test_id("notify")
    await notify.click()
    await expect(notify).to_have_attribute("aria-pressed", "true")
    await expect(notify).to_have_text("Notifications on")


async def wait_for_notification(page: Page) -> list[dict[str, Any]]:
    """The notifications shown, once there is one."""
    await page.wait_for_function(
        "() => window.notificationLog.shown.length > 0", timeout=COMMAND_TIMEOUT_MS
    )
    shown: list[dict[str, Any]] = await page.evaluate("window.notificationLog.shown")
    return shown


async def test_deep_links_and_the_keyboard(page: Page, sim: Simulator, room: Service) -> None:
    sid = sim.create(repo="acme/web-app", title="Fix flaky login test")["id"]
    await poll(room)
    await page.goto(f"{room.url}/#token={TOKEN}&session={sid}")
    drawer = page.get_by_test_id("detail")
    await expect(drawer).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    await expect(drawer.get_by_test_id("detail-title")).to_have_text("Fix flaky login test")
    # The token left the address bar; the session stays (waited for: the page rewrites it).
    await expect(page).to_have_url(re.compile(rf"#session={sid}$"))

    await page.keyboard.press("Escape")
    await expect(drawer).to_be_hidden()
    await expect(page).to_have_url(re.compile(r"^[^#]*$"))

    link = cell(page, sid, "title").get_by_role("link")
    await link.focus()
    await page.keyboard.press("Enter")
    await expect(drawer).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(drawer).to_be_hidden()
    await expect(link).to_be_focused()  # back where the reader was


async def test_phone_width(page: Page, sim: Simulator, room: Service) -> None:
    """The cards, the detail and the form fit a phone without sideways scrolling."""
    plan = sim.create(repo="acme/web-app", title="Fix flaky login test")["id"]
    sim.set_state(plan, "AWAITING_PLAN_APPROVAL")
    await poll(room)
    await page.set_viewport_size({"width": 400, "height": 800})
    await open_dashboard(page, room)
    await expect(card(page, plan).get_by_test_id("plan-step").first).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 400
    await screenshot(page, "dashboard-phone-needs-you.png")

    await card(page, plan).get_by_test_id("needs-title").click()
    drawer = page.get_by_test_id("detail")
    await expect(drawer.get_by_test_id("plan-step").first).to_be_visible()
    box = await drawer.bounding_box()
    assert box is not None and box["x"] >= 0 and box["width"] <= 400
    await screenshot(page, "dashboard-phone-detail.png")


async def test_a_stalled_session_is_flagged_until_it_moves_again(page: Page) -> None:
    """IN_PROGRESS with no activity for longer than STALL_AFTER (15 min): flagged, with for how
    long; a new activity clears the flag."""
    clock = HandClock(time.time() - 23 * MINUTE)
    sim = Simulator(seed=5, clock=clock)
    sid = sim.create(repo="globex/infra", title="Bump dependencies", state="IN_PROGRESS")["id"]
    clock.now = time.time()
    async with SimulatorServer(sim, API_KEY) as upstream:
        service = Service(settings(jules_api_base=upstream.base_url))
        await service.start()
        try:
            await poll(service)
            await open_dashboard(page, service)
            flag = cell(page, sid, "state").get_by_test_id("stalled")
            await expect(flag).to_have_text(re.compile(r"^no activity for 2[34] min$"))
            drawer = await open_detail(page, sid)
            await expect(drawer.get_by_test_id("detail-stalled")).to_have_text(
                re.compile(r"^no activity for 2[34] min$")
            )

            clock.now = time.time()
            sim.set_state(sid, "IN_PROGRESS")  # the agent reports progress again
            await poll(service)
            await expect(flag).to_have_count(0, timeout=CHANGE_TIMEOUT_MS)
            await expect(drawer.get_by_test_id("detail-stalled")).to_be_hidden()
        finally:
            await service.stop()
