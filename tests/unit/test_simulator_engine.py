"""The simulator's engine, page tokens and faults: pure code, no event loop."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable

import msgspec
import pytest

from control_room.jules import simulator as simmod
from control_room.jules.simulator import (
    AWAITING_PLAN_APPROVAL,
    AWAITING_USER_FEEDBACK,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    FailedPrecondition,
    Faults,
    InvalidArgument,
    Resource,
    SessionNotFound,
    Simulator,
    decode_page_token,
    encode_page_token,
    format_timestamp,
    parse_page_size,
)
from control_room.jules.types import Session

RFC3339: re.Pattern[str] = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$"
)
EPOCH = 1_700_000_000.0


def stepping_clock(step: float = 0.25) -> Callable[[], float]:
    """A clock that moves `step` seconds on every read: deterministic, and never standing still."""
    counter = itertools.count()
    return lambda: EPOCH + next(counter) * step


def frozen_clock() -> float:
    return EPOCH


def make(seed: int = 0, **kwargs: object) -> Simulator:
    return Simulator(seed, clock=stepping_clock(), **kwargs)  # type: ignore[arg-type]


def ids(sessions: list[Resource]) -> list[str]:
    return [s["id"] for s in sessions]


def history(sim: Simulator, ticks: int) -> list[list[Resource]]:
    out = []
    for _ in range(ticks):
        sim.tick()
        out.append(sim.sessions_newest_first(include_archived=True))
    return out


# --- Wire shape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (1_700_000_000_000_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000_120_000_000, "2023-11-14T22:13:20.120Z"),
        (1_700_000_000_120_400_000, "2023-11-14T22:13:20.120400Z"),
        (1_700_000_000_120_400_001, "2023-11-14T22:13:20.120400001Z"),
    ],
)
def test_timestamps_use_the_shortest_of_0_3_6_9_fraction_digits(ns: int, expected: str) -> None:
    assert format_timestamp(ns) == expected


def test_created_session_has_the_real_api_shape_and_decodes() -> None:
    sim = make()
    raw = sim.create(repo="octo/cat", branch="dev", title="Do it", prompt="Do the thing")
    sid = raw["id"]
    assert sid.isdigit()
    assert len(sid) == 19
    assert raw["name"] == f"sessions/{sid}"
    assert raw["url"] == f"https://jules.google.com/session/{sid}"
    assert raw["state"] == QUEUED
    assert raw["outputs"] == []
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
    ]
    seen = {sim.get(sid)["updateTime"]}
    for mutate in mutations:
        mutate()
        stamp = sim.get(sid)["updateTime"]
        assert stamp not in seen
        seen.add(stamp)
    assert sim.get(sid)["createTime"] == created


def test_returned_sessions_are_snapshots_not_live_views() -> None:
    sim = make()
    before = sim.create()
    sim.set_state(before["id"], COMPLETED)
    assert before["state"] == QUEUED
    assert before["outputs"] == []


def test_update_sets_fields_but_refuses_derived_ones() -> None:
    sim = make()
    sid = sim.create()["id"]
    assert sim.update(sid, title="T", somethingNew=1)["somethingNew"] == 1
    with pytest.raises(ValueError, match="read-only"):
        sim.update(sid, state=COMPLETED)
    with pytest.raises(ValueError, match="read-only"):
        sim.update(sid, updateTime="2020-01-01T00:00:00Z")


def test_completing_adds_one_pull_request_output() -> None:
    sim = make()
    sid = sim.create(repo="octo/cat", title="Fix it")["id"]
    sim.set_state(sid, COMPLETED)
    sim.send_message(sid, "one more thing")
    assert sim.get(sid)["state"] == IN_PROGRESS
    done = sim.set_state(sid, COMPLETED)
    assert len(done["outputs"]) == 1
    pr = done["outputs"][0]["pullRequest"]
    assert pr["url"].startswith("https://github.com/octo/cat/pull/")
    assert pr["title"] == "Fix it"
    assert pr["description"]


def test_set_state_accepts_states_jules_does_not_have() -> None:
    sim = make()
    sid = sim.create()["id"]
    assert sim.set_state(sid, "SOMETHING_NEW")["state"] == "SOMETHING_NEW"


def test_archived_sessions_are_hidden_from_the_listing_but_readable() -> None:
    sim = make()
    keep, hide = sim.create()["id"], sim.create()["id"]
    sim.archive(hide)
    assert ids(sim.sessions_newest_first()) == [keep]
    assert ids(sim.list_page(10)[0]) == [keep]
    assert sim.get(hide)["archived"] is True
    assert set(ids(sim.sessions_newest_first(include_archived=True))) == {keep, hide}


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
        (IN_PROGRESS, IN_PROGRESS),
        (AWAITING_PLAN_APPROVAL, AWAITING_PLAN_APPROVAL),
    ],
)
def test_send_message_resumes_a_waiting_or_finished_session(state: str, after: str) -> None:
    sim = make()
    sid = sim.create(state=state)["id"]
    assert sim.send_message(sid, "please continue")["state"] == after
    messages = [a for a in sim.activities(sid) if "userMessaged" in a]
    assert messages[-1]["userMessaged"]["userMessage"] == "please continue"


def test_send_message_is_refused_by_a_failed_session_and_needs_a_prompt() -> None:
    sim = make()
    sid = sim.create(state=FAILED)["id"]
    with pytest.raises(FailedPrecondition):
        sim.send_message(sid, "hello?")
    with pytest.raises(InvalidArgument):
        sim.send_message(sim.create()["id"], "  ")


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


def test_bulk_create_mixes_states_and_completed_ones_have_a_pull_request() -> None:
    sessions = make().bulk_create(500)
    assert len({s["id"] for s in sessions}) == 500
    states = {s["state"] for s in sessions}
    assert {QUEUED, AWAITING_PLAN_APPROVAL, IN_PROGRESS, COMPLETED, FAILED} <= states
    for s in sessions:
        has_pr = any("pullRequest" in o for o in s["outputs"])
        assert has_pr == (s["state"] == COMPLETED)


# --- Life ----------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_history() -> None:
    assert history(make(7), 50) == history(make(7), 50)


def test_different_seeds_give_different_histories() -> None:
    assert history(make(7), 50) != history(make(8), 50)


@pytest.mark.parametrize("seed", range(5))
def test_sessions_live_complete_with_a_pull_request_and_get_deleted(seed: int) -> None:
    sim = make(seed)
    completed_with_pr: set[str] = set()
    ever: set[str] = set()
    for _ in range(150):
        sim.tick()
        current = sim.sessions_newest_first()
        assert len(current) <= sim.max_sessions
        for s in current:
            ever.add(s["id"])
            if s["state"] == COMPLETED and s["outputs"][0]["pullRequest"]["url"]:
                completed_with_pr.add(s["id"])
    alive = set(ids(sim.sessions_newest_first()))
    assert completed_with_pr
    assert completed_with_pr - alive, "finished sessions should be deleted after a while"
    assert len(ever - alive) > 5


def test_sessions_move_through_the_lifecycle_in_order() -> None:
    order = {
        QUEUED: 0,
        "PLANNING": 1,
        AWAITING_PLAN_APPROVAL: 2,
        IN_PROGRESS: 3,
        AWAITING_USER_FEEDBACK: 3,
        COMPLETED: 4,
        FAILED: 4,
    }
    last: dict[str, str] = {}
    seen: set[str] = set()
    for snapshot in history(make(1), 200):
        for s in snapshot:
            previous = last.get(s["id"])
            if previous is not None:
                assert order[s["state"]] >= order[previous], (previous, s["state"])
            last[s["id"]] = s["state"]
            seen.add(s["state"])
    assert seen == set(order)


def test_plans_awaiting_approval_are_auto_approved_after_a_few_ticks() -> None:
    sim = make(max_sessions=0)  # nothing new gets in the way
    sid = sim.create(state=AWAITING_PLAN_APPROVAL)["id"]
    for _ in range(simmod.AUTO_APPROVE_TICKS - 1):
        sim.tick()
    assert sim.get(sid)["state"] == AWAITING_PLAN_APPROVAL
    sim.tick()
    assert sim.get(sid)["state"] == IN_PROGRESS
    assert any("planApproved" in a for a in sim.activities(sid))


def test_no_session_is_created_at_max_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simmod, "CREATE_PROBABILITY", 1.0)
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


# --- Paging arguments ----------------------------------------------------------------------------


def test_page_tokens_round_trip() -> None:
    token = encode_page_token("s", 2, -1_700_000_000_000_000_000, "123")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert decode_page_token(token, "s") == (2, -1_700_000_000_000_000_000, "123")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "not base64 at all",
        encode_page_token("a", 1, 0),  # an activities token used for sessions
        encode_page_token("s", 0, 0),  # page 0 never has a token
        base64.urlsafe_b64encode(b"s:1:x:y").decode(),  # the position is not a number
    ],
)
def test_bad_page_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_page_token(token, "s")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 30), ("", 30), ("0", 30), ("1", 1), ("100", 100), ("250", 100)]
)
def test_page_size_defaults_and_is_coerced(value: str | None, expected: int) -> None:
    assert parse_page_size(value, 30, 100) == expected


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_bad_page_sizes_are_invalid_arguments(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_page_size(value, 30, 100)


# --- Faults --------------------------------------------------------------------------------------


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
    ],
)
def test_nonsense_faults_are_refused(arm: Callable[[Faults], None]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        arm(Faults())
