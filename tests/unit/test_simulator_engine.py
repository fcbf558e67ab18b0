"""The simulator's engine: sessions, activities, the board and the account. Pure, no event loop."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from control_room.jules.simulator import (
    AGENT,
    AUTO_APPROVE_STEPS,
    AWAITING_PLAN_APPROVAL,
    AWAITING_USER_FEEDBACK,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    PAUSED,
    PLANNING,
    QUEUED,
    SETTLED,
    SYSTEM,
    USER,
    ActivitiesNotReady,
    ActivityNotFound,
    FailedPrecondition,
    InvalidArgument,
    Resource,
    SessionNotFound,
    Simulator,
    SourceNotFound,
    TimeBound,
)
from control_room.jules.simulator import engine as engine_module
from control_room.jules.simulator.timestamps import parse_timestamp
from control_room.jules.types import Session

RFC3339: re.Pattern[str] = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$"
)
EPOCH = 1_700_000_000.0
KINDS = frozenset(
    {
        "agentMessaged",
        "userMessaged",
        "planGenerated",
        "planApproved",
        "progressUpdated",
        "sessionCompleted",
        "sessionFailed",
    }
)


def stepping_clock(step: float = 0.25) -> Callable[[], float]:
    """A clock that moves `step` seconds on every read: deterministic, and never standing still."""
    counter = itertools.count()
    return lambda: EPOCH + next(counter) * step


def frozen_clock() -> float:
    return EPOCH


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> float:
        return self.now


def make(seed: int = 0, **kwargs: Any) -> Simulator:
    kwargs.setdefault("activities_not_found_for", 0)
    return Simulator(seed, clock=stepping_clock(), **kwargs)


def ids(sessions: list[Resource]) -> list[str]:
    return [s["id"] for s in sessions]


def kind(activity: Resource) -> str:
    (found,) = KINDS.intersection(activity)
    return found


def kinds(sim: Simulator, sid: str) -> list[str]:
    return [kind(a) for a in sim.activities(sid)]


def history(sim: Simulator, ticks: int) -> list[list[Resource]]:
    out = []
    for _ in range(ticks):
        sim.tick()
        out.append(sim.sessions_newest_first(include_archived=True))
    return out


def assert_well_formed(session: Resource, activities: list[Resource]) -> None:
    """The invariants every session and its activities keep."""
    sid = session["id"]
    stamps = [parse_timestamp(a["createTime"]) for a in activities]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    if stamps:
        assert parse_timestamp(session["createTime"]) <= stamps[0]
        # A new activity sets the session's updateTime: it is never behind the last one.
        assert parse_timestamp(session["updateTime"]) >= stamps[-1]
    for activity in activities:
        assert RFC3339.match(activity["createTime"])
        assert re.fullmatch(r"[0-9a-f]{32}", activity["id"])
        assert activity["name"] == f"sessions/{sid}/activities/{activity['id']}"
        assert activity["originator"] in (USER, AGENT, SYSTEM)
        assert activity["description"]
        kind(activity)  # exactly one kind
        for artifact in activity.get("artifacts", ()):
            (name,) = artifact
            assert name in ("changeSet", "bashOutput", "media")


# --- Wire shape ----------------------------------------------------------------------------------


def test_created_session_has_the_real_api_shape_and_decodes() -> None:
    sim = make()
    raw = sim.create(repo="octo/cat", branch="dev", title="Do it", prompt="Do the thing")
    sid = raw["id"]
    assert sid.isdigit()
    assert len(sid) == 19
    assert raw["name"] == f"sessions/{sid}"
    assert raw["url"] == f"https://jules.google.com/session/{sid}"
    assert raw["state"] == QUEUED
    assert "outputs" not in raw  # proto JSON leaves empty lists out
    assert raw["automationMode"] == "AUTO_CREATE_PR"
    assert raw["createTime"] == raw["updateTime"]
    assert RFC3339.match(raw["createTime"])
    session = msgspec.json.decode(msgspec.json.encode(raw), type=Session)
    assert session.session_id == sid
    assert session.title == "Do it"
    assert session.sourceContext is not None
    assert session.sourceContext.source == "sources/github/octo/cat"
    assert session.sourceContext.githubRepoContext is not None
    assert session.sourceContext.githubRepoContext.startingBranch == "dev"


def test_unset_fields_come_from_the_pool() -> None:
    raw = make().create()
    assert raw["title"]
    assert raw["prompt"]
    assert raw["sourceContext"]["source"].startswith("sources/github/")
    assert raw["sourceContext"]["githubRepoContext"]["startingBranch"]


def test_title_defaults_to_the_first_line_of_a_given_prompt() -> None:
    raw = make().create(prompt="Fix the bug\nIt is in parser.py")
    assert raw["title"] == "Fix the bug"


def test_timestamps_vary_their_fraction_digits_like_the_real_api() -> None:
    sim = Simulator(3, clock=stepping_clock(0.1234567))
    stamps = [s["createTime"] for s in sim.bulk_create(200)]
    assert all(RFC3339.match(t) for t in stamps)
    lengths = {len(t.partition(".")[2].rstrip("Z")) for t in stamps}
    assert lengths == {0, 3, 6, 9}


def test_a_repoless_session_has_no_source_and_completes_with_a_change_set() -> None:
    sim = make()
    raw = sim.create(repoless=True)
    assert "sourceContext" not in raw
    done = sim.set_state(raw["id"], COMPLETED)
    (output,) = done["outputs"]
    assert "source" not in output["changeSet"]
    assert output["changeSet"]["gitPatch"]["unidiffPatch"].startswith("diff --git ")


def test_only_auto_create_pr_opens_a_pull_request() -> None:
    sim = make()
    manual = sim.create(repo="octo/cat", auto_create_pr=False)
    assert "automationMode" not in manual
    (output,) = sim.set_state(manual["id"], COMPLETED)["outputs"]
    assert output["changeSet"]["source"] == "sources/github/octo/cat"
    assert output["changeSet"]["gitPatch"]["suggestedCommitMessage"]
    assert re.fullmatch(r"[0-9a-f]{40}", output["changeSet"]["gitPatch"]["baseCommitId"])


def test_completing_adds_one_pull_request_output_even_after_a_follow_up() -> None:
    sim = make()
    sid = sim.create(repo="octo/cat", title="Fix it")["id"]
    sim.set_state(sid, COMPLETED)
    sim.send_message(sid, "one more thing")
    assert sim.get(sid)["state"] == IN_PROGRESS
    done = sim.set_state(sid, COMPLETED)
    (output,) = done["outputs"]
    pr = output["pullRequest"]
    assert pr["url"].startswith("https://github.com/octo/cat/pull/")
    assert pr["title"] == "Fix it"
    assert pr["description"]
    assert kinds(sim, sid).count("sessionCompleted") == 2


# --- Mutations -----------------------------------------------------------------------------------


def test_update_time_changes_on_every_mutation_even_when_the_clock_stands_still() -> None:
    sim = Simulator(0, clock=frozen_clock)
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    created = sim.get(sid)["createTime"]
    mutations: list[Callable[[], object]] = [
        lambda: sim.update(sid, title="New title"),
        lambda: sim.approve_plan(sid),
        lambda: sim.set_state(sid, AWAITING_USER_FEEDBACK),
        lambda: sim.send_message(sid, "yes"),
        lambda: sim.send_message(sid, "and also this"),
        lambda: sim.set_state(sid, COMPLETED),
        lambda: sim.archive(sid),
        lambda: sim.unarchive(sid),
    ]
    seen = {sim.get(sid)["updateTime"]}
    for mutate in mutations:
        mutate()
        stamp = sim.get(sid)["updateTime"]
        assert stamp not in seen
        seen.add(stamp)
    assert sim.get(sid)["createTime"] == created


def test_each_new_activity_is_the_sessions_new_update_time() -> None:
    sim = make()
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    for act in (
        lambda: sim.approve_plan(sid),
        lambda: sim.set_state(sid, AWAITING_USER_FEEDBACK),
        lambda: sim.send_message(sid, "go on"),
        lambda: sim.set_state(sid, FAILED),
    ):
        act()
        assert sim.get(sid)["updateTime"] == sim.activities(sid)[-1]["createTime"]


def test_returned_sessions_are_snapshots_not_live_views() -> None:
    sim = make()
    before = sim.create()
    sim.set_state(before["id"], COMPLETED)
    assert before["state"] == QUEUED
    assert "outputs" not in before


def test_update_sets_fields_but_refuses_derived_ones() -> None:
    sim = make()
    sid = sim.create()["id"]
    assert sim.update(sid, title="T", somethingNew=1)["somethingNew"] == 1
    with pytest.raises(ValueError, match="read-only"):
        sim.update(sid, state=COMPLETED)
    with pytest.raises(ValueError, match="read-only"):
        sim.update(sid, updateTime="2020-01-01T00:00:00Z")


def test_set_state_accepts_states_jules_does_not_have() -> None:
    sim = make()
    sid = sim.create()["id"]
    assert sim.set_state(sid, "SOMETHING_NEW")["state"] == "SOMETHING_NEW"


def test_archived_sessions_are_listed_apart_and_come_back_when_unarchived() -> None:
    sim = make()
    keep, hide = sim.create()["id"], sim.create()["id"]
    sim.archive(hide)
    assert ids(sim.sessions_newest_first()) == [keep]
    assert ids(sim.list_page(10)[0]) == [keep]
    assert ids(sim.list_page(10, archived=True)[0]) == [hide]
    assert sim.get(hide)["archived"] is True
    assert set(ids(sim.sessions_newest_first(include_archived=True))) == {keep, hide}
    assert sim.archive(hide) is sim.get(hide), "archiving again changes nothing"
    assert "archived" not in sim.unarchive(hide)
    assert sim.unarchive(hide) is sim.get(hide)
    assert ids(sim.list_page(10)[0]) == [hide, keep]
    assert sim.list_page(10, archived=True)[0] == []


def test_deleted_sessions_are_gone() -> None:
    sim = make()
    sid = sim.create()["id"]
    sim.delete(sid)
    with pytest.raises(SessionNotFound):
        sim.get(sid)
    with pytest.raises(SessionNotFound):
        sim.delete(sid)
    assert sim.sessions_newest_first() == []


def test_approve_plan_only_from_awaiting_approval() -> None:
    sim = make()
    sid = sim.create()["id"]
    with pytest.raises(FailedPrecondition):
        sim.approve_plan(sid)
    sim.set_state(sid, AWAITING_PLAN_APPROVAL)
    assert sim.approve_plan(sid)["state"] == IN_PROGRESS
    with pytest.raises(SessionNotFound):
        sim.approve_plan("404")


@pytest.mark.parametrize(
    ("state", "after"),
    [
        (AWAITING_USER_FEEDBACK, IN_PROGRESS),
        (COMPLETED, IN_PROGRESS),
        (PAUSED, IN_PROGRESS),
        (IN_PROGRESS, IN_PROGRESS),
        (AWAITING_PLAN_APPROVAL, AWAITING_PLAN_APPROVAL),
    ],
)
def test_send_message_resumes_a_waiting_or_finished_session(state: str, after: str) -> None:
    sim = make()
    sid = sim.create(state=state)["id"]
    assert sim.send_message(sid, "please continue")["state"] == after
    last = sim.activities(sid)[-1]
    assert last["userMessaged"] == {"userMessage": "please continue"}
    assert last["originator"] == USER


def test_send_message_is_refused_by_a_failed_session_and_needs_a_prompt() -> None:
    sim = make()
    sid = sim.create(state=FAILED)["id"]
    with pytest.raises(FailedPrecondition):
        sim.send_message(sid, "hello?")
    with pytest.raises(InvalidArgument):
        sim.send_message(sim.create()["id"], "  ")


# --- Activities ----------------------------------------------------------------------------------


def test_a_session_that_requires_approval_waits_for_it_with_its_plan() -> None:
    sim = make()
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    (generated,) = sim.activities(sid)
    plan = generated["planGenerated"]["plan"]
    assert generated["originator"] == AGENT
    assert plan["createTime"] == generated["createTime"]
    assert [s["index"] for s in plan["steps"]] == list(range(len(plan["steps"])))
    assert all(s["id"] and s["title"] and s["description"] for s in plan["steps"])
    sim.approve_plan(sid)
    approved = sim.activities(sid)[-1]
    assert approved["planApproved"] == {"planId": plan["id"]}
    assert approved["originator"] == USER


def test_a_session_without_approval_still_gets_a_plan_approved_by_the_system() -> None:
    sim = make(max_sessions=0)
    sid = sim.create(require_plan_approval=False)["id"]
    states = []
    while sim.get(sid)["state"] in (QUEUED, PLANNING):
        sim.tick()
        states.append(sim.get(sid)["state"])
    assert AWAITING_PLAN_APPROVAL not in states
    assert sim.get(sid)["state"] == IN_PROGRESS
    generated, approved = sim.activities(sid)
    assert approved["planApproved"]["planId"] == generated["planGenerated"]["plan"]["id"]
    assert approved["originator"] == SYSTEM


def test_work_shows_progress_with_artifacts_and_ends_from_the_agent() -> None:
    sim = make(7, max_sessions=40)
    for _ in range(120):
        sim.tick()
    every = [a for s in sim.sessions_newest_first() for a in sim.activities(s["id"])]
    progress = [a for a in every if "progressUpdated" in a]
    assert progress
    assert all(
        a["progressUpdated"]["title"] and a["progressUpdated"]["description"] for a in progress
    )
    artifacts = Counter(name for a in progress for art in a.get("artifacts", ()) for name in art)
    assert artifacts["changeSet"] and artifacts["bashOutput"]
    endings = [a for a in every if "sessionCompleted" in a or "sessionFailed" in a]
    assert endings
    assert {a["originator"] for a in endings} == {AGENT}
    assert all(a["sessionFailed"]["reason"] for a in endings if "sessionFailed" in a)
    for session in sim.sessions_newest_first():
        assert_well_formed(session, sim.activities(session["id"]))


def test_a_question_waits_for_the_answer() -> None:
    sim = make()
    sid = sim.create(state=AWAITING_USER_FEEDBACK)["id"]
    question = sim.activities(sid)[-1]
    assert question["agentMessaged"]["agentMessage"].endswith("?")
    assert question["originator"] == AGENT
    sim.send_message(sid, "Yes")
    assert sim.get(sid)["state"] == IN_PROGRESS


def test_activity_pages_resume_and_filter_by_create_time() -> None:
    sim = make()
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    sim.approve_plan(sid)
    for n in range(5):
        sim.send_message(sid, f"note {n}")
    every = sim.activities(sid)
    page, resume = sim.activity_page(sid, 3)
    assert page == every[:3]
    assert resume == 3
    rest, resume = sim.activity_page(sid, 100, 3)
    assert page + rest == every
    assert resume is None
    third = parse_timestamp(every[2]["createTime"])
    newer, _ = sim.activity_page(sid, 100, after=TimeBound(third))
    assert newer == every[3:]
    inclusive, _ = sim.activity_page(sid, 100, after=TimeBound(third, inclusive=True))
    assert inclusive == every[2:]
    assert sim.activity(sid, every[4]["id"]) == every[4]
    with pytest.raises(ActivityNotFound):
        sim.activity(sid, "0" * 32)


def test_activities_of_a_new_session_are_not_found_for_a_moment() -> None:
    clock = ManualClock()
    sim = Simulator(0, clock=clock, activities_not_found_for=2.0)
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    with pytest.raises(ActivitiesNotReady):
        sim.activity_page(sid, 10)
    aid = sim.activities(sid)[0]["id"]  # the engine's own view is not delayed
    with pytest.raises(ActivitiesNotReady):
        sim.activity(sid, aid)
    clock.now += 2.0
    assert len(sim.activity_page(sid, 10)[0]) == 1
    assert sim.activity(sid, aid)["id"] == aid


# --- Listing -------------------------------------------------------------------------------------


def test_sessions_are_listed_newest_first() -> None:
    sim = Simulator(0, clock=frozen_clock)  # equal clock readings must still order strictly
    created = ids([sim.create() for _ in range(20)])
    assert ids(sim.sessions_newest_first()) == created[::-1]


def test_paging_over_a_bulk_listing_returns_every_session_once_in_order() -> None:
    sim = make()
    sim.bulk_create(1000)
    seen: list[str] = []
    page, after = sim.list_page(100)
    seen += ids(page)
    while after is not None:
        page, after = sim.list_page(100, after)
        seen += ids(page)
    assert seen == ids(sim.sessions_newest_first())
    assert len(set(seen)) == 1000


def test_paging_neither_repeats_nor_skips_when_the_list_changes_between_pages() -> None:
    sim = make()
    sim.bulk_create(30)
    page, after = sim.list_page(10)
    sim.create()  # newest: would shift an offset-based page by one
    sim.delete(ids(page)[0])  # already seen: would make an offset-based page skip one
    rest: list[str] = []
    while after is not None:
        chunk, after = sim.list_page(10, after)
        rest += ids(chunk)
    assert len(ids(page) + rest) == len(set(ids(page) + rest)) == 30


def test_bulk_create_mixes_states_with_consistent_histories() -> None:
    sim = make()
    sessions = sim.bulk_create(300)
    assert len({s["id"] for s in sessions}) == 300
    states = Counter(s["state"] for s in sessions)
    assert set(states) == {
        QUEUED,
        PLANNING,
        AWAITING_PLAN_APPROVAL,
        IN_PROGRESS,
        AWAITING_USER_FEEDBACK,
        PAUSED,
        COMPLETED,
        FAILED,
    }
    assert any("sourceContext" not in s for s in sessions)  # some have no repository
    for s in sessions:
        history = kinds(sim, s["id"])
        if s["state"] == COMPLETED:
            assert history[-1] == "sessionCompleted"
            pr = any("pullRequest" in o for o in s["outputs"])
            assert pr == ("automationMode" in s and "sourceContext" in s)
        if s["state"] in (IN_PROGRESS, COMPLETED, AWAITING_USER_FEEDBACK):
            assert history[:2] == ["planGenerated", "planApproved"]
        assert_well_formed(s, sim.activities(s["id"]))


# --- The board -----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_history() -> None:
    assert history(make(7), 50) == history(make(7), 50)


def test_different_seeds_give_different_histories() -> None:
    assert history(make(7), 50) != history(make(8), 50)


@pytest.mark.parametrize("seed", range(3))
def test_board_sessions_live_finish_and_get_deleted(seed: int) -> None:
    sim = make(seed)
    finished: set[str] = set()
    ever: set[str] = set()
    for _ in range(150):
        sim.tick()
        current = sim.sessions_newest_first()
        assert len(current) <= sim.max_sessions
        for s in current:
            ever.add(s["id"])
            if s["state"] == COMPLETED and s.get("outputs"):
                finished.add(s["id"])
    alive = set(ids(sim.sessions_newest_first()))
    assert finished
    assert finished - alive, "settled sessions should be deleted after a while"
    assert len(ever - alive) > 5


def test_board_sessions_move_forward_or_get_a_follow_up() -> None:
    order = {
        QUEUED: 0,
        PLANNING: 1,
        AWAITING_PLAN_APPROVAL: 2,
        IN_PROGRESS: 3,
        AWAITING_USER_FEEDBACK: 3,
        PAUSED: 4,
        COMPLETED: 4,
        FAILED: 4,
    }
    last: dict[str, str] = {}
    seen: set[str] = set()
    reopened = 0
    for snapshot in history(make(1, max_sessions=20), 300):
        for s in snapshot:
            previous = last.get(s["id"])
            if previous == COMPLETED and s["state"] == IN_PROGRESS:
                reopened += 1  # a follow-up message sets a finished session moving again
            elif previous is not None:
                assert order[s["state"]] >= order[previous], (previous, s["state"])
            last[s["id"]] = s["state"]
            seen.add(s["state"])
    assert seen == set(order)
    assert reopened


def test_plans_awaiting_approval_are_auto_approved_after_a_few_ticks() -> None:
    sim = make(max_sessions=0)  # nothing new gets in the way
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    for _ in range(AUTO_APPROVE_STEPS - 1):
        sim.tick()
    assert sim.get(sid)["state"] == AWAITING_PLAN_APPROVAL
    sim.tick()
    assert sim.get(sid)["state"] == IN_PROGRESS
    assert sim.activities(sid)[-1]["originator"] == USER


def test_a_session_created_by_a_client_waits_for_that_client() -> None:
    sim = make(max_sessions=0)
    plan = sim.create(state=AWAITING_PLAN_APPROVAL, attended=True)["id"]
    question = sim.create(state=AWAITING_USER_FEEDBACK, attended=True)["id"]
    for _ in range(AUTO_APPROVE_STEPS * 10):
        sim.tick()
    assert sim.get(plan)["state"] == AWAITING_PLAN_APPROVAL  # nobody approved in its place
    assert sim.get(question)["state"] == AWAITING_USER_FEEDBACK
    sim.approve_plan(plan)
    assert sim.get(plan)["state"] == IN_PROGRESS


def test_no_session_is_created_at_max_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "CREATE_PROBABILITY", 1.0)
    sim = make(max_sessions=3)
    for _ in range(3):
        sim.tick()
    assert len(sim) == 3
    sim.tick()
    assert len(sim) == 3


def test_archived_sessions_stand_still() -> None:
    sim = make(max_sessions=0)
    sid = sim.create()["id"]
    before = sim.archive(sid)
    for _ in range(20):
        sim.tick()
    assert sim.get(sid) == before


# --- The account ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account() -> Simulator:
    """A mid-sized account, built once: 400 sessions, 8 in flight, on a clock set by hand."""
    return Simulator.large_account(400, 8, seed=5, clock=ManualClock(), activity_interval=30)


def test_a_large_account_is_mostly_completed_newest_first_and_well_formed(
    account: Simulator,
) -> None:
    sessions = account.sessions_newest_first()
    assert len(sessions) == len(account) == 400
    created = [parse_timestamp(s["createTime"]) for s in sessions]
    assert created == sorted(created, reverse=True)
    in_flight = set(account.in_flight())
    assert len(in_flight) == 8
    assert in_flight == set(ids(sessions[:8])), "the in-flight sessions are the newest"
    finished = Counter(s["state"] for s in sessions if s["id"] not in in_flight)
    assert finished == {COMPLETED: 368, PAUSED: 16, FAILED: 8}  # 94 %, 4 %, the rest
    assert not any(s["state"] in SETTLED for s in sessions[:8])
    for s in sessions:
        assert_well_formed(s, account.activities(s["id"]))
        assert account.activity_page(s["id"], 1)  # back-dated: no transient 404
    assert sum(len(account.activities(s["id"])) for s in sessions) > 4 * 400


def test_an_account_moves_at_its_pace_keeps_its_sessions_in_flight_and_never_deletes() -> None:
    clock = ManualClock()
    sim = Simulator.large_account(60, 5, seed=2, clock=clock, activity_interval=30)
    before = {s["id"]: s["updateTime"] for s in sim.sessions_newest_first()}
    activities = sum(len(sim.activities(sid)) for sid in before)
    for _ in range(40):  # 20 minutes in 30 s ticks: about 40 steps per in-flight slot
        clock.now += 30
        sim.tick()
        assert len(sim.in_flight()) == 5
    after = {s["id"]: s["updateTime"] for s in sim.sessions_newest_first()}
    assert set(before) <= set(after), "sessions are never deleted"
    assert len(after) > len(before), "settled sessions make room for new ones"
    added = sum(len(sim.activities(sid)) for sid in after) - activities
    assert 5 * 40 * 0.3 < added < 5 * 40 * 1.5
    untouched = [sid for sid in before if after[sid] == before[sid]]
    assert len(untouched) > 40, "finished sessions stay as they were"


def test_an_account_sometimes_reopens_a_finished_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "ACCOUNT_REOPEN_PROBABILITY", 1.0)
    clock = ManualClock()
    sim = Simulator.large_account(50, 1, seed=3, clock=clock, activity_interval=10)
    total = len(sim)
    (first,) = sim.in_flight()
    while first in sim.in_flight():
        clock.now += 10
        sim.tick()
    (reopened,) = sim.in_flight()
    assert len(sim) == total, "the slot went to an old session, not a new one"
    assert sim.get(reopened)["state"] == IN_PROGRESS
    assert kinds(sim, reopened)[-2:] == ["sessionCompleted", "userMessaged"]


def test_paused_sessions_never_resume_on_their_own() -> None:
    clock = ManualClock()
    sim = Simulator(0, clock=clock, active=0)
    sid = sim.create(state=PAUSED)["id"]
    before = sim.get(sid)
    for _ in range(20):
        clock.now += 60
        sim.tick()
    assert sim.get(sid) == before
    assert sim.in_flight() == []


def test_large_accounts_are_deterministic_for_a_seed_and_clock() -> None:
    def build() -> list[Resource]:
        sim = Simulator.large_account(40, 3, seed=9, clock=ManualClock())
        return [s | {"activities": sim.activities(s["id"])} for s in sim.sessions_newest_first()]

    assert build() == build()


def test_a_large_account_needs_active_within_total() -> None:
    with pytest.raises(ValueError, match="active"):
        Simulator.large_account(5, 6)


# --- Sources and stats ---------------------------------------------------------------------------


def test_sources_are_the_connected_repositories() -> None:
    sim = make()
    sources = sim.sources()
    assert len(sources) >= 5
    web = sim.source("sources/github/acme/web-app")
    assert web["id"] == "github/acme/web-app"
    assert web["githubRepo"]["owner"] == "acme"
    assert web["githubRepo"]["repo"] == "web-app"
    assert web["githubRepo"]["defaultBranch"] == {"displayName": "main"}
    assert {"displayName": "develop"} in web["githubRepo"]["branches"]
    assert isinstance(web["githubRepo"]["isPrivate"], bool)
    assert sim.sources(frozenset({web["name"], "sources/github/no/such"})) == [web]
    with pytest.raises(SourceNotFound):
        sim.source("sources/github/no/such")
    sim.create(repo="octo/cat", branch="trunk")  # a session's repository is connected
    assert sim.source("sources/github/octo/cat")["githubRepo"]["defaultBranch"] == {
        "displayName": "trunk"
    }


def test_stats_count_what_the_simulator_holds() -> None:
    sim = make()
    sim.create(state=COMPLETED)
    sim.archive(sim.create()["id"])
    sim.requests["list_first_page"] += 2
    stats = sim.stats()
    assert stats["sessions"] == 2
    assert stats["archived"] == 1
    assert stats["states"] == {COMPLETED: 1, QUEUED: 1}
    assert stats["requests"]["list_first_page"] == 2
    assert stats["requestsTotal"] == 2
    assert stats["activities"] == 3
