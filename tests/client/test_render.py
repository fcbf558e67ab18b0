"""Pure formatting of the watcher's lines and the sessions table: plain strings, no loop."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from control_room import render
from control_room.models import (
    Activity,
    Approval,
    Artifact,
    BashOutputSummary,
    ChangeSetSummary,
    FileChange,
    JulesSession,
    Plan,
    PlanStep,
    PullRequest,
    SessionDelta,
)

SGR = re.compile(r"\x1b\[[0-9;]*m")


def session(**fields: object) -> JulesSession:
    base: dict[str, object] = {
        "id": "4321",
        "repository": "acme/api",
        "branch": "main",
        "title": "Fix flaky login test",
        "state": "QUEUED",
        "planStatus": "pending",
        "approval": Approval(state="pending"),
        "participants": (),
        "createdAt": "2025-11-10T12:00:00Z",
        "updatedAt": "2025-11-10T12:00:00Z",
        "url": "https://jules.google.com/session/4321",
    }
    base.update(fields)
    return JulesSession(**base)  # type: ignore[arg-type]


QUEUED = session()
WORKING = session(
    state="IN_PROGRESS",
    planStatus="in_progress",
    approval=Approval(state="approved", approvedAt="2025-11-10T12:00:09Z"),
    pullRequest=PullRequest(url="https://github.com/acme/api/pull/7", title="Fix it"),
    updatedAt="2025-11-10T12:00:09Z",
)
DONE = session(
    state="COMPLETED",
    planStatus="succeeded",
    approval=WORKING.approval,
    pullRequest=WORKING.pullRequest,
    updatedAt="2025-11-10T12:01:00Z",
)


def test_a_scripted_sequence_reads_one_line_per_delta() -> None:
    deltas = [
        SessionDelta(type="created", sessionId="4321", after=QUEUED,
                     timestamp="2025-11-10T12:00:01.250Z", seq=1),
        SessionDelta(type="updated", sessionId="4321", before=QUEUED, after=WORKING,
                     timestamp="2025-11-10T12:00:10Z", seq=2),
        SessionDelta(type="deleted", sessionId="4321", before=DONE,
                     timestamp="2025-11-10T12:02:00Z", seq=3),
    ]  # fmt: skip
    lines = [render.format_delta(d, color=False, tz=UTC) for d in deltas]
    lines.append(render.format_reset("b7e1", 0, "epoch_changed", "2025-11-10T12:03:00Z", tz=UTC))
    assert lines == [
        "12:00:01  + created  acme/api                Fix flaky login test · QUEUED",
        "12:00:10  ~ updated  acme/api                Fix flaky login test"
        " · state QUEUED → IN_PROGRESS"
        " · planStatus pending → in_progress"
        " · approval pending → approved"
        " · pull request added https://github.com/acme/api/pull/7",
        "12:02:00  - deleted  acme/api                Fix flaky login test · was COMPLETED",
        "12:03:00  ! reset    not the service's epoch (it restarted without its history,"
        " or the epoch is wrong) (epoch_changed);"
        " now at epoch b7e1, seq 0; changes in the gap are not shown",
    ]


def test_time_is_shown_in_the_given_zone() -> None:
    delta = SessionDelta(
        type="created", sessionId="4321", after=QUEUED, timestamp="2025-11-10T12:00:01Z", seq=1
    )
    plus_two = timezone(timedelta(hours=2))
    assert render.format_delta(delta, tz=plus_two).startswith("14:00:01  + created")


def test_colour_wraps_the_same_text() -> None:
    delta = SessionDelta(
        type="updated", sessionId="4321", before=QUEUED, after=WORKING,
        timestamp="2025-11-10T12:00:10Z", seq=2,
    )  # fmt: skip
    plain = render.format_delta(delta, color=False, tz=UTC)
    coloured = render.format_delta(delta, color=True, tz=UTC)
    assert coloured != plain
    assert "\x1b[34mIN_PROGRESS\x1b[0m" in coloured  # states are coloured by meaning
    assert SGR.sub("", coloured) == plain


def test_every_kind_of_field_change_is_named() -> None:
    before = session(participants=("ann", "bob"))
    after = session(
        title="Fix the flaky login test",
        branch="dev",
        repository="acme/api2",
        participants=("ann", "cy"),
        url="https://jules.google.com/session/9",
        updatedAt="2025-11-10T12:00:05Z",
    )
    assert render.changes(before, after) == [
        "title 'Fix flaky login test' → 'Fix the flaky login test'",
        "branch main → dev",
        "repository acme/api → acme/api2",
        "participants +cy -bob",
        "url → https://jules.google.com/session/9",
    ]


def test_pull_request_changes_and_a_bare_touch() -> None:
    pr = PullRequest(url="https://github.com/acme/api/pull/7", title="Fix it")
    with_pr = session(pullRequest=pr)
    assert render.changes(with_pr, session()) == ["pull request removed"]
    retitled = session(pullRequest=PullRequest(url=pr.url, title="Fix it, really"))
    assert render.changes(with_pr, retitled) == ["pull request retitled 'Fix it, really'"]
    moved = session(pullRequest=PullRequest(url="https://github.com/acme/api/pull/8", title="x"))
    assert render.changes(with_pr, moved) == ["pull request → https://github.com/acme/api/pull/8"]
    touched = session(updatedAt="2025-11-10T12:09:00Z")
    assert render.changes(QUEUED, touched) == ["touched (updatedAt only)"]


def test_untitled_sessions_show_their_id_and_long_names_are_cut() -> None:
    untitled = session(title="  ", repository="a-very-long-organisation/with-a-long-repo")
    line = render.format_delta(
        SessionDelta(type="created", sessionId="4321", after=untitled,
                     timestamp="2025-11-10T12:00:00Z", seq=1),
        tz=UTC,
    )  # fmt: skip
    assert line == "12:00:00  + created  a-very-long-organisat…  4321 · QUEUED"
    assert render.truncate("abcdef", 4) == "abc…"
    assert render.truncate("abc", 4) == "abc"


def test_unparseable_timestamps_do_not_break_a_line() -> None:
    assert render.clock("yesterday", UTC) == "yesterd…"
    assert render.ago("soon", datetime.now(UTC)) == "?"


def test_relative_times() -> None:
    now = datetime(2025, 11, 10, 12, 0, 0, tzinfo=UTC)
    assert render.ago("2025-11-10T11:59:48Z", now) == "12 s ago"
    assert render.ago("2025-11-10T11:55:00.123456789Z", now) == "4 min ago"
    assert render.ago("2025-11-10T09:00:00Z", now) == "3 h ago"
    assert render.ago("2025-11-08T12:00:00Z", now) == "2 d ago"
    assert render.ago("2025-11-10T12:00:02Z", now) == "just now"


def test_table_is_aligned_latest_first_and_fits_the_width() -> None:
    now = datetime(2025, 11, 10, 12, 2, 0, tzinfo=UTC)
    old = session(id="1", title="Old one", updatedAt="2025-11-10T11:00:00Z")
    newest = session(
        id="2",
        repository="globex/data-pipeline",
        title="A rather long title that will not fit in a narrow terminal",
        state="AWAITING_PLAN_APPROVAL",
        updatedAt="2025-11-10T12:01:58.5Z",
    )
    lines = render.format_table([old, DONE, newest], now, width=110)
    header, *rows = lines
    assert header.split() == list(render.TABLE_COLUMNS)
    assert [r.split()[0:3] for r in rows] == [
        ["1", "s", "ago"],
        ["1", "min", "ago"],
        ["1", "h", "ago"],
    ]
    for column in ("REPOSITORY", "STATE", "TITLE"):
        start = header.index(column)
        assert all(r[start - 2 : start] == "  " and r[start] != " " for r in rows), column
    assert "#7" in rows[1]  # the pull request by number
    assert all(len(line) <= 110 for line in lines)
    assert rows[0].endswith("…")
    narrow = render.format_table([newest], now, width=40)  # the title keeps a readable minimum
    assert narrow[1].endswith("A rather lo…") and len("A rather lo…") == render.MIN_TITLE_WIDTH
    assert render.summary([old, DONE, newest]) == (
        "3 sessions: 1 QUEUED, 1 COMPLETED, 1 AWAITING_PLAN_APPROVAL"
    )
    assert render.summary([]) == "no sessions"


def test_coloured_table_keeps_its_alignment() -> None:
    now = datetime(2025, 11, 10, 12, 2, 0, tzinfo=UTC)
    rows = [QUEUED, DONE, session(id="3", state="FAILED", planStatus="failed")]
    plain = render.format_table(rows, now, color=False)
    coloured = render.format_table(rows, now, color=True)
    assert [SGR.sub("", line) for line in coloured] == plain


def test_every_rfc3339_form_shows_and_sorts_by_its_instant() -> None:
    # Issue 9.8: lower-case t/z and offsets showed as `?` and sorted last.
    now = datetime(2026, 1, 1, 10, 2, 0, tzinfo=UTC)
    lower = session(id="1", title="lower", updatedAt="2026-01-01t10:01:00z")
    offset = session(id="2", title="offset", updatedAt="2026-01-01T11:01:30.123456789+01:00")
    upper = session(id="3", title="upper", updatedAt="2026-01-01T09:00:00Z")
    rows = render.format_table([upper, lower, offset], now)[1:]
    assert [(r.split()[:3], r.split()[-1]) for r in rows] == [
        (["29", "s", "ago"], "offset"),  # 29.876 s: whole seconds, cut
        (["1", "min", "ago"], "lower"),
        (["1", "h", "ago"], "upper"),
    ]
    assert render.clock("2026-01-01t10:01:00z", UTC) == "10:01:00"


def test_poll_summary_counts_a_polls_deltas_in_lifecycle_order() -> None:
    noon = datetime(2025, 11, 10, 12, 0, 3, tzinfo=UTC)
    line = render.poll_summary(["updated", "created", "updated"], 8, 2, noon, UTC)
    assert line == "12:00:03  3 changes: 1 created, 2 updated  (8 sessions, 2 clients)"
    one = render.poll_summary(["deleted"], 1, 1, noon, UTC)
    assert one == "12:00:03  1 change: 1 deleted  (1 session, 1 client)"
    # A type this version does not know is still counted, after the known ones.
    odd = render.poll_summary(["archived", "created"], 0, 0, noon, UTC)
    assert odd == "12:00:03  2 changes: 1 created, 1 archived  (0 sessions, 0 clients)"


# -- activities -------------------------------------------------------------------------

PLAN = Plan(
    id="p1",
    steps=tuple(
        PlanStep(id=f"s{i}", index=i, title=title, description=description)
        for i, (title, description) in enumerate(
            [
                ("Reproduce the flaky run", "Run it 50 times"),
                ("Find the race in the session setup", None),
                ("Await the cookie", None),
                ("Add a regression test", None),
            ]
        )
    ),
)


def activity(kind: str, **fields: object) -> Activity:
    base: dict[str, object] = {
        "id": f"a-{kind}",
        "sessionId": "4321",
        "kind": kind,
        "originator": "agent",
        "createdAt": "2025-11-10T12:00:05Z",
    }
    base.update(fields)
    return Activity(**base)  # type: ignore[arg-type]


CHANGES = Artifact(
    changeSet=ChangeSetSummary(
        files=(
            FileChange("src/auth/login.py", 12, 3),
            FileChange("tests/test_login.py", 30, 0),
            FileChange("README.md", 1, 1),
            FileChange("setup.cfg", 1, 0),
        ),
        commitMessage="Await the cookie",
    )
)
TESTS_RAN = Artifact(bashOutput=BashOutputSummary(command="pytest -q", exitCode=0, output="ok"))


def test_activity_lines_say_what_jules_did_in_a_glance() -> None:
    waiting = session(state="AWAITING_PLAN_APPROVAL")
    asking = session(state="AWAITING_USER_FEEDBACK")
    lines = [
        render.format_activity(activity("planGenerated", plan=PLAN), waiting, tz=UTC),
        render.format_activity(activity("planApproved", originator="user"), WORKING, tz=UTC),
        render.format_activity(
            activity("progressUpdated", title="Ran the tests", description="all green",
                     artifacts=(CHANGES, TESTS_RAN)),
            WORKING, tz=UTC,
        ),
        render.format_activity(activity("agentMessaged", message="Which branch?\nmain or dev"),
                               asking, tz=UTC),
        render.format_activity(activity("userMessaged", originator="user", message="main"),
                               WORKING, tz=UTC),
        render.format_activity(activity("sessionFailed", reason="quota exceeded"), None, tz=UTC),
        render.format_activity(activity("somethingNew", description="a new kind"), DONE, tz=UTC),
    ]  # fmt: skip
    assert lines == [
        "12:00:05  * plan     acme/api                Fix flaky login test · 4 steps:"
        " 1. Reproduce the flaky run; 2. Find the race in the session setup;"
        " 3. Await the cookie; …",
        "12:00:05  * plan ok  acme/api                Fix flaky login test"
        " · plan approved by the user",
        "12:00:05  * step     acme/api                Fix flaky login test"
        " · Ran the tests — all green"
        " · 4 files changed (+44 −4): src/auth/login.py, tests/test_login.py, README.md, …"
        " · $ pytest -q (exit 0)",
        "12:00:05  ? asks     acme/api                Fix flaky login test · Which branch? …",
        "12:00:05  * user     acme/api                Fix flaky login test · main",
        "12:00:05  * failed                           4321 · session failed: quota exceeded",
        "12:00:05  * other    acme/api                Fix flaky login test · a new kind",
    ]


def test_a_question_is_highlighted_and_colour_wraps_the_same_text() -> None:
    asking = session(state="AWAITING_USER_FEEDBACK")
    question = activity("agentMessaged", message="Should I also update the docs")
    plain = render.format_activity(question, asking, tz=UTC)
    coloured = render.format_activity(question, asking, color=True, tz=UTC)
    assert "\x1b[1;33mShould I also update the docs\x1b[0m" in coloured
    assert SGR.sub("", coloured) == plain
    said = render.format_activity(question, WORKING, tz=UTC)  # not waiting, no "?": a remark
    assert "* agent " in said
    assert render.is_question(activity("agentMessaged", message="Done. Anything else? "), None)


def test_the_timeline_shows_the_whole_plan_and_messages() -> None:
    asking = session(state="AWAITING_USER_FEEDBACK")
    activities = [
        activity("planGenerated", plan=PLAN, createdAt="2025-11-10T12:00:01Z"),
        activity("planApproved", originator="user", createdAt="2025-11-10T12:00:02Z"),
        activity("progressUpdated", title="Ran the tests", artifacts=(TESTS_RAN,),
                 createdAt="2025-11-10T12:00:03Z"),
        activity("agentMessaged", message="Which branch?\n\nmain or dev",
                 createdAt="2025-11-10T12:00:04Z"),
        activity("sessionCompleted", createdAt="2025-11-10T12:00:05Z"),
    ]  # fmt: skip
    assert render.timeline(activities, asking, tz=UTC) == [
        "12:00:01  * plan     plan of 4 steps:",
        "                     1. Reproduce the flaky run",
        "                        Run it 50 times",
        "                     2. Find the race in the session setup",
        "                     3. Await the cookie",
        "                     4. Add a regression test",
        "12:00:02  * plan ok  plan approved by the user",
        "12:00:03  * step     Ran the tests",
        "                    $ pytest -q (exit 0)",
        "12:00:04  ? asks     Which branch?",
        "",
        "                    main or dev",
        "12:00:05  * done     session completed",
    ]
    assert render.waiting_hint(asking) == 'Waiting for your answer: control-room message 4321 "…"'
    assert render.waiting_hint(WORKING) is None


def test_the_session_header_names_where_and_links() -> None:
    stalled = session(
        state="IN_PROGRESS",
        pullRequest=PullRequest(url="https://github.com/acme/api/pull/7", title="Fix it"),
        stalledSince="2025-11-10T12:00:00Z",
    )
    now = datetime(2025, 11, 10, 12, 20, tzinfo=UTC)
    assert render.session_header(stalled, now) == [
        "Fix flaky login test",
        "  acme/api · main · IN_PROGRESS (plan pending, approval pending)",
        "  https://jules.google.com/session/4321",
        "  pull request #7 https://github.com/acme/api/pull/7  Fix it",
        "  stalled: last activity 20 min ago",
        "  id 4321 · created 20 min ago · updated 20 min ago",
    ]
