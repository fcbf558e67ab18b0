"""The session controls as real processes against a real service: output and exit codes."""

from __future__ import annotations

import msgspec
import pytest

from control_room.app import Service
from control_room.client import (
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    ControlRoomError,
    FailedPrecondition,
    Forbidden,
    InvalidArgument,
    NotFound,
    NotReady,
    RateLimited,
    Unauthorized,
    Unavailable,
    UpstreamUnavailable,
    command_error,
)
from control_room.controls import exit_code
from control_room.jules.simulator import Simulator, SimulatorServer
from tests.client.conftest import Proc, closed_port
from tests.conftest import TOKEN, ServiceFactory

READONLY = "read-only-token"


async def run(
    procs: list[Proc], service: Service, *args: str, token: str = TOKEN, stdin: bytes = b""
) -> tuple[int, str, str]:
    p = await Proc.start(*args, "--url", service.url, "--token", token, stdin=stdin)
    procs.append(p)
    return await p.finish()


async def test_approve_prints_the_session_after_and_exits_0(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL", title="Add retries")
    await service.poller.poll_once()
    code, out, err = await run(procs, service, "approve", waiting["id"])
    assert (code, err) == (0, "")
    assert out.startswith(f"approved the plan of {waiting['id']} · Add retries · now ")
    assert sim.get(waiting["id"])["state"] != "AWAITING_PLAN_APPROVAL"
    code, out, err = await run(procs, service, "approve", waiting["id"])  # nothing waits now
    assert (code, out) == (4, "")
    assert err.startswith("control-room approve: failed_precondition: Jules answered: ")


async def test_message_sends_the_words_or_stdin(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    asking = sim.create(state="AWAITING_USER_FEEDBACK", title="Pick a branch")
    await service.poller.poll_once()
    code, out, err = await run(procs, service, "message", asking["id"], "Use", "main")
    assert (code, err) == (0, "")
    assert out.strip() == f"sent to {asking['id']} · Pick a branch · now IN_PROGRESS"
    sim.set_state(asking["id"], "AWAITING_USER_FEEDBACK")
    code, _, err = await run(
        procs, service, "message", asking["id"], "-", stdin=b"Line one\nline two\n"
    )
    assert (code, err) == (0, "")
    said = [
        a["userMessaged"]["userMessage"]
        for a in sim.activities(asking["id"])
        if "userMessaged" in a
    ]
    assert said[-2:] == ["Use main", "Line one\nline two\n"]


def approved_by(sim: Simulator, session_id: str) -> str:
    """Who approves the session's plan once it runs: `user` when it awaits approval."""
    sim.set_state(session_id, "IN_PROGRESS")
    (approval,) = [a for a in sim.activities(session_id) if "planApproved" in a]
    originator: str = approval["originator"]
    return originator


async def test_new_creates_a_session_and_says_where(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    code, out, err = await run(
        procs,
        service,
        "new",
        "--repo",
        "acme/web-app",
        "--branch",
        "develop",
        "--title",
        "Docs first",
        "--auto-pr",
        "Add a README",
    )
    assert (code, err) == (0, "")
    first, url = out.splitlines()
    assert first.startswith("created ") and first.endswith(" · acme/web-app · QUEUED · Docs first")
    session_id = first.split()[1]
    assert url.strip() == f"https://jules.google.com/session/{session_id}"
    made = sim.get(session_id)
    assert made["prompt"] == "Add a README" and made["automationMode"] == "AUTO_CREATE_PR"
    for _ in range(30):  # the plan waits for its creator: the simulated user leaves it alone
        sim.tick()
    assert sim.get(session_id)["state"] == "AWAITING_PLAN_APPROVAL"
    assert approved_by(sim, session_id) == "user"  # the plan waits for approval by default
    code, out, _ = await run(
        procs, service, "new", "--json", "--repo", "acme/web-app", "--no-plan-approval", "Go"
    )
    assert code == 0
    created = msgspec.json.decode(out)
    assert created["repository"] == "acme/web-app"
    assert approved_by(sim, created["id"]) == "system"
    assert "automationMode" not in sim.get(created["id"])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["new", "--repo", "nosuch", "x"], 2, "control-room new: invalid_argument: "),
        (
            ["new", "--repo", "no/such", "x"],
            4,
            "control-room new: not_found: Jules does not know that repository: connect it",
        ),
        (["approve", "404404"], 4, "control-room approve: not_found: Jules answered: "),
        (["approve"], 2, "the following arguments are required: ID"),
    ],
)
async def test_failures_are_one_line_with_the_services_reason(
    procs: list[Proc], service: Service, args: list[str], code: int, message: str
) -> None:
    got, out, err = await run(procs, service, *args)
    assert (got, out) == (code, "")
    assert message in err
    if code != 2 or "arguments are required" not in message:
        assert len(err.strip().splitlines()) == 1, err


def test_each_failure_has_its_exit_code() -> None:
    """Every refusal (tested end to end through the Python client) maps to one exit code."""
    cases: list[tuple[ControlRoomError, int]] = [
        (Unauthorized("x"), 3),
        (Forbidden("forbidden", "this token is read-only"), 3),
        (InvalidArgument("invalid_argument", "prompt is empty"), 2),
        (InvalidArgument("bad_message", "not valid JSON"), 2),
        (NotFound("not_found", "no session '1'"), 4),
        (FailedPrecondition("failed_precondition", "nothing to approve"), 4),
        (RateLimited("rate_limited", "too many messages"), 1),
        (UpstreamUnavailable("upstream_unavailable", "Jules answered: 503"), 1),
        (CommandFailed("internal", "the service failed"), 1),
        (CommandTimeout("no answer"), 1),
        (ConnectionLost("closed"), 1),
        (NotReady("not ready", "waiting for the Jules API", None), 1),
        (Unavailable("cannot connect"), 1),
    ]
    assert [exit_code(exc) for exc, _ in cases] == [code for _, code in cases]
    assert [type(command_error(code, "m")) for code in ("not_found", "forbidden", "x")] == [
        NotFound,
        Forbidden,
        CommandFailed,
    ]


async def test_a_read_only_token_is_refused_with_exit_3(
    procs: list[Proc], make_service: ServiceFactory, sim: Simulator
) -> None:
    service = await make_service(local_readonly_token=READONLY)
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    for args in (["approve", waiting["id"]], ["delete", "--yes", waiting["id"]]):
        code, out, err = await run(procs, service, *args, token=READONLY)
        assert (code, out) == (3, ""), args
        assert err.strip() == f"control-room {args[0]}: forbidden: this token is read-only"
    code, out, _ = await run(procs, service, "show", waiting["id"], token=READONLY)
    assert code in (0, 1) and waiting["id"] in out  # reading is allowed


async def test_archive_unarchive_and_delete_with_confirmation(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    done = sim.create(state="COMPLETED", title="Finished")
    await service.poller.poll_once()
    code, out, _ = await run(procs, service, "archive", done["id"])
    assert (code, out.strip()) == (0, f"archived {done['id']}")
    assert sim.get(done["id"])["archived"] is True
    assert done["id"] not in service.poller.sessions  # it left the control room at once
    code, out, err = await run(procs, service, "show", done["id"])  # hidden, not gone
    assert (code, out) == (4, "")
    assert f"hidden until `control-room unarchive {done['id']}`" in err
    code, out, _ = await run(procs, service, "unarchive", done["id"])
    assert code == 0 and out.startswith(f"unarchived {done['id']}")
    code, out, err = await run(procs, service, "delete", done["id"])  # stdin is no terminal
    assert (code, out) == (2, "")
    assert err.strip() == (
        f"control-room delete: not deleted: deleting {done['id']} cannot be undone; add --yes"
    )
    assert sim.get(done["id"])
    code, out, _ = await run(procs, service, "delete", "--yes", done["id"])
    assert (code, out.strip()) == (0, f"deleted {done['id']}")
    code, _, err = await run(procs, service, "delete", "--yes", done["id"])
    assert code == 4 and "not_found" in err


async def test_sources_lists_what_new_takes(procs: list[Proc], service: Service) -> None:
    code, out, _ = await run(procs, service, "sources")
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:3] == ["acme/web-app", "main,", "develop"] for line in lines)
    assert any("acme/payments-api" in line and line.endswith("(private)") for line in lines)


async def test_show_prints_the_session_with_a_hint_when_it_waits(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(repo="acme/web-app", title="Dark mode", state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    code, out, err = await run(procs, service, "show", waiting["id"])
    lines = out.splitlines()
    assert lines[0] == "Dark mode"
    assert lines[1].startswith("  acme/web-app · ") and "AWAITING_PLAN_APPROVAL" in lines[1]
    assert lines[2] == f"  {waiting['url']}"
    assert (
        lines[-1] == f"Waiting for your approval of the plan: control-room approve {waiting['id']}"
    )
    assert "\x1b[" not in out
    assert code == 0, err


async def test_show_before_the_first_poll_says_why_not_that_the_session_is_missing(
    procs: list[Proc], make_service: ServiceFactory
) -> None:
    # The Jules API refuses connections: no session is known yet, none is known missing.
    svc = await make_service(jules_api_base=f"http://127.0.0.1:{closed_port()}/v1alpha")
    p = await Proc.start("show", "123", "--url", svc.url, "--token", TOKEN)
    procs.append(p)
    code, out, err = await p.finish()
    assert (code, out) == (1, "")
    assert f"control-room show: {svc.url} is not ready: " in err
    assert "connection refused" in err and "not_found" not in err


async def test_a_command_jules_never_answered_does_not_say_it_answered(
    procs: list[Proc], service: Service, sim: Simulator, upstream: SimulatorServer
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL", title="Add retries")
    await service.poller.poll_once()
    await upstream.stop()  # the simulated Jules API goes away: connections are refused
    code, out, err = await run(procs, service, "approve", waiting["id"])
    assert (code, out) == (1, "")
    assert "upstream_unavailable: Jules did not answer: connection refused" in err, err
