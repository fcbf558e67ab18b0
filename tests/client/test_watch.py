"""`control-room watch` and `control-room sessions` as real processes against a real service."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from control_room.app import Service
from control_room.jules.simulator import Simulator
from control_room.watch import BadEnvironment, service_token, service_url, wants_color
from tests.client.conftest import WAIT, Proc, clean_env, closed_port
from tests.conftest import TOKEN, ServiceFactory, connect

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def watch(procs: list[Proc], service: Service, *args: str, **kw: Any) -> Proc:
    p = await Proc.start("watch", "--url", service.url, *args, **kw)
    procs.append(p)
    return p


async def test_watch_prints_one_line_per_delta_and_exits_0_on_sigint(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    p = await watch(procs, service, "--token", TOKEN)
    await p.err_until("watching")
    created = sim.create(repo="acme/api", title="Add retries to the uploader")
    await service.poller.poll_once()
    line = await p.line()
    assert " + created  acme/api " in line and line.endswith("Add retries to the uploader · QUEUED")
    sim.set_state(created["id"], "IN_PROGRESS")
    await service.poller.poll_once()
    line = await p.line()
    assert " ~ updated  acme/api " in line
    assert "state QUEUED → IN_PROGRESS · planStatus pending → in_progress" in line
    assert "approval pending → approved" in line
    assert "\x1b[" not in line  # stdout is a pipe: no colour
    sim.delete(created["id"])
    await service.poller.poll_once()
    line = await p.line()
    assert " - deleted  acme/api " in line and line.endswith("· was IN_PROGRESS")
    assert await p.stop(signal.SIGINT) == 0


async def test_watch_exits_0_on_sigterm(procs: list[Proc], service: Service) -> None:
    p = await watch(procs, service, env=clean_env(LOCAL_TOKEN=TOKEN))  # token from the env
    await p.err_until("watching")
    assert await p.stop(signal.SIGTERM) == 0


async def test_watch_json_prints_exactly_what_the_server_sent(
    procs: list[Proc], http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    direct = await connect(http, service)
    p = await watch(procs, service, "--token", TOKEN, "--json")
    await p.err_until("watching")
    created = sim.bulk_create(3)
    await service.poller.poll_once()
    sim.set_state(created[0]["id"], "PLANNING")
    sim.delete(created[1]["id"])
    await service.poller.poll_once()
    sent = [(await asyncio.wait_for(direct.receive(), WAIT)).data for _ in range(5)]
    printed = [await p.line() for _ in range(5)]
    assert printed == sent
    assert [msgspec.json.decode(line)["seq"] for line in printed] == [1, 2, 3, 4, 5]
    assert await p.stop() == 0
    await direct.close()


async def test_watch_since_replays_what_was_missed(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    sim.bulk_create(3)
    await service.poller.poll_once()
    epoch = service.broker.position.epoch
    p = await watch(procs, service, "--token", TOKEN, "--json", "--since", "1", "--epoch", epoch)
    assert [msgspec.json.decode(await p.line())["seq"] for _ in range(2)] == [2, 3]
    assert await p.stop() == 0


async def test_watch_resumes_after_a_server_restart(
    procs: list[Proc], make_service: ServiceFactory, sim: Simulator
) -> None:
    first = await make_service()
    assert first.poller is not None
    await first.poller.poll_once()
    p = await watch(procs, first, "--token", TOKEN)
    await p.err_until("watching")
    created = sim.create(repo="acme/web", title="Dark mode")
    await first.poller.poll_once()
    assert "+ created  acme/web" in await p.line()
    await first.stop()
    assert "connection lost" in await p.err_until("connection lost")
    second = await make_service(port=first.port)
    assert second.poller is not None
    await second.poller.poll_once()
    await p.err_until("reconnected")
    reset = await p.line()
    assert "! reset" in reset and "epoch_changed" in reset
    assert second.broker.position.epoch in reset
    sim.set_state(created["id"], "PLANNING")
    await second.poller.poll_once()
    line = await p.line()
    assert "~ updated  acme/web" in line and "state QUEUED → PLANNING" in line
    assert await p.stop() == 0


async def test_watch_exits_3_when_the_token_is_rejected(
    procs: list[Proc], service: Service
) -> None:
    p = await watch(procs, service, "--token", "wrong")
    code, out, err = await p.finish()
    assert code == 3
    assert out == ""
    assert err.strip().splitlines() == [
        f"control-room watch: {service.url} rejected the token (HTTP 401);"
        " check --token or LOCAL_TOKEN"
    ]


async def test_watch_says_the_token_was_revoked_and_exits_3(
    procs: list[Proc], make_service: ServiceFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\nother-token-0123456789\n")
    service = await make_service(local_token="", local_token_file=tokens)
    p = await watch(procs, service, "--token", TOKEN)
    await p.err_until("watching")
    tokens.write_text("other-token-0123456789\n")
    service.reload_secrets()  # SIGHUP: the client is closed with 4001 token_revoked
    code, out, err = await p.finish()
    assert (code, out) == (3, "")
    assert err.strip().splitlines() == [
        "control-room watch: the token was revoked (close code 4001); get a new one and"
        " pass it with --token or LOCAL_TOKEN"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", TOKEN, "--since", "-1"], "non-negative integer"),
        (["--token", TOKEN, "--since", "x"], "non-negative integer"),
        (["--token", TOKEN, "--since", "+5"], "non-negative integer"),
        (["--token", TOKEN, "--state", "NOPE"], "expected one of STATE_UNSPECIFIED, QUEUED"),
        (["--token", TOKEN, "--epoch", "e"], "--epoch needs --since"),
        (["--token", TOKEN, "--url", "ftp://example.org"], "expected an http"),
        (["--token", TOKEN, "--colour"], "unrecognized arguments"),
        ([], "no token"),
    ],
)
async def test_watch_exits_2_on_bad_arguments(
    procs: list[Proc], service: Service, args: list[str], message: str
) -> None:
    p = await watch(procs, service, *args)
    code, out, err = await p.finish()
    assert (code, out) == (2, "")
    assert message in err


async def test_watch_since_ahead_of_the_server_resets_and_carries_on(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    p = await watch(procs, service, "--token", TOKEN, "--since", "50")
    reset = await p.line()
    assert "! reset" in reset and "ahead_of_server" in reset and "seq 0" in reset
    sim.create(repo="acme/web", title="Dark mode")
    await service.poller.poll_once()
    assert "+ created  acme/web" in await p.line()
    assert await p.stop() == 0


async def test_sessions_prints_an_aligned_table(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    sim.create(repo="acme/api", title="Add retries")
    waiting = sim.create(repo="globex/data-pipeline", title="Speed up the ETL")
    sim.set_state(waiting["id"], "AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    p = await Proc.start("sessions", "--url", service.url, "--token", TOKEN)
    procs.append(p)
    code, out, _ = await p.finish()
    assert code == 0
    header, first, second, blank, summary = out.splitlines()
    assert header.split() == ["UPDATED", "REPOSITORY", "BRANCH", "STATE", "PLAN", "APPROVAL",
                              "PR", "TITLE"]  # fmt: skip
    assert "globex/data-pipeline" in first and "AWAITING_PLAN_APPROVAL" in first  # latest first
    assert "acme/api" in second and "Add retries" in second
    for column in ("REPOSITORY", "STATE", "TITLE"):
        at = header.index(column)
        assert first[at - 1] == second[at - 1] == " " and first[at] != " " and second[at] != " "
    assert blank == ""
    assert summary == "2 sessions: 1 AWAITING_PLAN_APPROVAL, 1 QUEUED"


async def test_sessions_json_is_the_listing(
    procs: list[Proc], http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    sim.bulk_create(3)
    await service.poller.poll_once()
    p = await Proc.start(
        "sessions", "--url", service.url, "--json", env=clean_env(LOCAL_TOKEN=TOKEN)
    )
    procs.append(p)
    code, out, _ = await p.finish()
    assert code == 0
    async with http.get(service.url + "/api/sessions", headers=AUTH) as resp:
        expected = await resp.json()
    assert msgspec.json.decode(out) == expected


@pytest.mark.parametrize(
    ("url", "token", "code", "message"),
    [
        (None, "wrong", 3, "rejected the token"),
        ("http://127.0.0.1:9", TOKEN, 1, "cannot connect to 127.0.0.1:9: Connection refused"),
        (None, "", 2, "no token"),
    ],
)
async def test_sessions_failures_are_one_clear_line(
    procs: list[Proc], service: Service, url: str | None, token: str, code: int, message: str
) -> None:
    args = ["sessions", "--url", url or service.url] + (["--token", token] if token else [])
    p = await Proc.start(*args)
    procs.append(p)
    got, out, err = await p.finish()
    assert (got, out) == (code, "")
    assert len(err.strip().splitlines()) == 1 and message in err


def test_colour_only_on_a_terminal_and_never_against_the_user() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            assert wants_color(tty, no_color_flag=False, environ={})
            assert not wants_color(tty, no_color_flag=True, environ={})
            assert not wants_color(tty, no_color_flag=False, environ={"NO_COLOR": "1"})
            assert not wants_color(tty, no_color_flag=False, environ={"TERM": "dumb"})
            assert wants_color(tty, no_color_flag=False, environ={"NO_COLOR": ""})
    finally:
        os.close(master)
    assert not wants_color(io.StringIO(), no_color_flag=False, environ={})


async def test_sessions_says_at_once_why_the_service_is_not_ready_then_exits_1(
    procs: list[Proc], http: aiohttp.ClientSession, make_service: ServiceFactory
) -> None:
    # The service is up; the Jules API it polls refuses connections, so it is never ready.
    svc = await make_service(jules_api_base=f"http://127.0.0.1:{closed_port()}/v1alpha")
    async with http.get(svc.url + "/api/sessions", headers=AUTH) as resp:
        assert resp.status == 503
        reason = (await resp.json())["message"]
    stable = reason.split(";")[0]  # a countdown after a ";" may move between two answers

    p = await Proc.start("sessions", "--url", svc.url, "--token", TOKEN, "--wait", "1")
    procs.append(p)
    first = await p.err_until("is not ready")
    assert p.proc.returncode is None, "the reason comes first, not after the wait"
    assert first.startswith(f"control-room sessions: {svc.url} is not ready: {stable}")
    assert first.endswith("; waiting up to 1 s for it")
    code, out, rest = await p.finish()
    assert (code, out) == (1, "")
    (last,) = rest.strip().splitlines()
    assert last.startswith(
        f"control-room sessions: {svc.url} is still not ready after 1 s: {stable}"
    )

    p = await Proc.start("sessions", "--url", svc.url, "--token", TOKEN, "--wait", "0")
    procs.append(p)
    code, out, err = await p.finish()
    assert (code, out) == (1, "")
    (only,) = err.strip().splitlines()
    assert only.startswith(f"control-room sessions: {svc.url} is not ready: {stable}")


@pytest.mark.parametrize(
    ("where", "code"),
    [("dotenv", 0), ("environment over dotenv", 0), ("flags over both", 1)],
)
async def test_sessions_reads_the_services_own_settings(
    procs: list[Proc], service: Service, tmp_path: Path, where: str, code: int
) -> None:
    """PORT, HOST and LOCAL_TOKEN as `serve` reads them: the environment over `.env`."""
    dead = closed_port()
    env = clean_env()
    args = ["sessions"]
    if where == "dotenv":  # a service bound to every address is reached on loopback
        dotenv = f"HOST=0.0.0.0\nPORT={service.port}\nLOCAL_TOKEN={TOKEN},another-token\n"
    else:
        dotenv = f"PORT={dead}\nLOCAL_TOKEN=wrong-token\n"
        env.update(PORT=str(service.port), LOCAL_TOKEN=TOKEN)
    if where == "flags over both":
        args += ["--url", f"http://127.0.0.1:{dead}"]
    (tmp_path / ".env").write_text(dotenv)

    p = await Proc.start(*args, env=env, cwd=tmp_path)
    procs.append(p)
    got, out, err = await p.finish()
    assert got == code, err
    if code == 0:
        assert out.strip() == "no sessions"
    else:
        assert f"cannot connect to 127.0.0.1:{dead}" in err


async def test_watch_reads_the_services_own_settings(
    procs: list[Proc], service: Service, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(f"PORT={service.port}\n")
    token_file = tmp_path / "tokens"
    token_file.write_text(f"\n{TOKEN}\nanother-token\n")
    env = clean_env(LOCAL_TOKEN_FILE=str(token_file))
    p = await Proc.start("watch", env=env, cwd=tmp_path)
    procs.append(p)
    line = await p.err_until("watching")
    assert line.startswith(f"watching http://127.0.0.1:{service.port}, from seq 0")
    assert await p.stop() == 0


def test_the_service_address_follows_its_settings(tmp_path: Path) -> None:
    assert (service_url({}), service_token({})) == ("http://127.0.0.1:3001", "")
    assert service_url({"PORT": "8080", "HOST": "0.0.0.0"}) == "http://127.0.0.1:8080"
    assert service_url({"HOST": "::"}) == "http://[::1]:3001"
    assert service_url({"HOST": "fd00::5"}) == "http://[fd00::5]:3001"
    assert service_url({"HOST": "control.internal"}) == "http://control.internal:3001"
    for port in ("0", "x", "70000", "-1"):
        with pytest.raises(BadEnvironment, match="PORT"):
            service_url({"PORT": port})
    assert service_token({"LOCAL_TOKEN": " a , b", "LOCAL_TOKEN_FILE": "/nonexistent"}) == "a"
    with pytest.raises(BadEnvironment, match="LOCAL_TOKEN_FILE: cannot read"):
        service_token({"LOCAL_TOKEN_FILE": str(tmp_path / "missing")})


async def test_a_url_flag_makes_a_bad_port_irrelevant(procs: list[Proc], service: Service) -> None:
    env = clean_env(PORT="0", LOCAL_TOKEN=TOKEN)  # PORT=0: "any free port", no use to a client
    p = await Proc.start("sessions", "--url", service.url, env=env)
    procs.append(p)
    code, out, err = await p.finish()
    assert (code, out.strip(), err) == (0, "no sessions", "")
    p = await Proc.start("sessions", env=env)
    procs.append(p)
    code, _, err = await p.finish()
    assert (code, err.strip()) == (
        2,
        "control-room sessions: PORT='0' is not a port a client can connect to; pass --url",
    )


async def test_watch_a_view_over_msgpack_shows_entries_and_departures(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(repo="acme/web", title="Dark mode")
    sim.create(repo="acme/web", title="Elsewhere")
    await service.poller.poll_once()
    p = await watch(
        procs, service, "--token", TOKEN, "--msgpack", "--state", "AWAITING_PLAN_APPROVAL"
    )
    started = await p.err_until("watching")
    assert started.endswith("; state AWAITING_PLAN_APPROVAL; Ctrl-C to stop")
    sim.set_state(waiting["id"], "AWAITING_PLAN_APPROVAL")  # enters the view
    await service.poller.poll_once()
    entered = await p.line()
    assert " + created  acme/web " in entered and entered.endswith(
        "Dark mode · AWAITING_PLAN_APPROVAL"
    )
    sim.set_state(waiting["id"], "IN_PROGRESS")  # leaves it
    await service.poller.poll_once()
    left = await p.line()
    assert " - deleted  acme/web " in left and left.endswith(
        "Dark mode · was AWAITING_PLAN_APPROVAL"
    )
    assert await p.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--activities", "--since", "3"], "--since with --activities needs --activities-since"),
        (["--activities-since", "3"], "--activities-since needs --since and --activities"),
    ],
)
async def test_watch_activities_positions_go_together(
    procs: list[Proc], service: Service, args: list[str], message: str
) -> None:
    p = await watch(procs, service, "--token", TOKEN, *args)
    code, out, err = await p.finish()
    assert (code, out) == (2, "")
    assert message in err


async def test_watch_with_activities_starts_by_saying_both_positions(
    procs: list[Proc], service: Service
) -> None:
    assert service.broker is not None
    position = service.broker.position
    p = await Proc.start("watch", "--activities", "--url", service.url, "--token", TOKEN)
    procs.append(p)
    line = await p.err_until("watching")
    assert f"from seq {position.seq}, activities seq " in line, line  # not "from now"
    assert f"(epoch {position.epoch}); with activities" in line
    assert await p.stop() == 0
