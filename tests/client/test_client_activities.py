"""Activities through the Python client and the terminal, end to end against the simulator:
typed events, exact resume on both channels, views, REST timelines, MessagePack, and the
`watch --activities` and `show` lines."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from control_room.app import Service
from control_room.client import ControlRoomClient, NotFound, Reset
from control_room.jules.simulator import Simulator
from control_room.messages import ActivityMessage
from control_room.models import Activity, Position, SessionDelta
from tests.client.conftest import Proc
from tests.client.test_client import WAIT, Stream
from tests.conftest import TOKEN


@pytest.fixture
def sim() -> Simulator:
    """A simulator whose activities answer at once (the transient 404 is the server's test)."""
    return Simulator(seed=1, activities_not_found_for=0)


async def poll(service: Service) -> None:
    assert service.poller is not None
    await service.poller.poll_once()


async def events_until_quiet(stream: Stream) -> list[SessionDelta | ActivityMessage]:
    """Every event until none arrives for a moment."""
    got: list[SessionDelta | ActivityMessage] = []
    while True:
        try:
            message = await asyncio.wait_for(stream.messages.get(), 300 / 1000)
        except TimeoutError:
            return got
        assert isinstance(message.event, SessionDelta | ActivityMessage), message.event
        got.append(message.event)


def activities_of(events: list[SessionDelta | ActivityMessage]) -> list[ActivityMessage]:
    return [e for e in events if isinstance(e, ActivityMessage)]


async def test_activities_are_typed_and_resume_is_exact_on_both_channels(
    service: Service, sim: Simulator
) -> None:
    session = sim.create(state="QUEUED", repo="acme/web-app")
    await poll(service)
    start = service.broker.position.seq
    async with Stream(service.url, activities=True) as stream:
        await stream.connected()
        sim.set_state(session["id"], "AWAITING_PLAN_APPROVAL")
        await poll(service)
        first = await events_until_quiet(stream)
        (plan,) = activities_of(first)
        assert isinstance(plan.activity, Activity) and plan.activity.kind == "planGenerated"
        assert plan.activity.plan is not None and plan.activity.plan.steps
        assert plan.activity.plan.steps[0].index == 0
        assert plan.seq == 1 and plan.sessionId == session["id"]
        position = stream.client.position
        broker = service.broker.position
        assert position == Position(broker.epoch, broker.seq, 1)

        service.hub.close_all()  # the link drops; both channels move meanwhile
        sim.set_state(session["id"], "IN_PROGRESS")
        other = sim.create(state="QUEUED")
        await poll(service)
        back = await stream.connected()
        assert back.position == position  # resumed from both positions
        sim.set_state(session["id"], "COMPLETED")
        await poll(service)
        rest = await events_until_quiet(stream)

    every = first + rest
    deltas = [e for e in every if isinstance(e, SessionDelta)]
    seqs = [d.seq for d in deltas]
    assert seqs == list(range(start + 1, start + len(deltas) + 1))  # none lost, none twice
    assert other["id"] in {d.sessionId for d in deltas}
    pushed = activities_of(every)
    assert [a.seq for a in pushed] == list(range(1, len(pushed) + 1))
    assert [a.activity.id for a in pushed] == [a["id"] for a in sim.activities(session["id"])]
    assert pushed[-1].activity.kind == "sessionCompleted"
    broker = service.broker.position
    assert stream.client.position == Position(broker.epoch, broker.seq, broker.activities_seq)


async def test_a_stored_activities_position_ahead_of_the_server_resets_both(
    service: Service, sim: Simulator
) -> None:
    session = sim.create(state="QUEUED")
    await poll(service)
    sim.set_state(session["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    epoch, seq = service.broker.position.epoch, service.broker.position.seq
    options = {"since": 1, "epoch": epoch, "activities": True, "activities_since": 40}
    async with Stream(service.url, **options) as stream:
        reset = await stream.next()
        assert isinstance(reset, Reset) and reset.reason == "ahead_of_server"
        assert (reset.seq, reset.activitiesSeq) == (seq, 1)
        assert stream.client.position == Position(epoch, seq, 1)


async def test_subscribe_adds_activities_of_one_session(service: Service, sim: Simulator) -> None:
    mine, theirs = sim.create(state="QUEUED"), sim.create(state="QUEUED")
    await poll(service)
    async with Stream(service.url) as stream:
        await stream.connected()
        snapshot = await stream.client.subscribe(session_ids=[mine["id"]], activities=True)
        assert [s.id for s in snapshot.sessions] == [mine["id"]]
        assert snapshot.activitiesSeq == 0
        sim.set_state(mine["id"], "AWAITING_PLAN_APPROVAL")
        sim.set_state(theirs["id"], "AWAITING_PLAN_APPROVAL")
        await poll(service)
        got = await events_until_quiet(stream)
    assert {e.sessionId for e in got} == {mine["id"]}
    assert [a.activity.kind for a in activities_of(got)] == ["planGenerated"]


async def test_the_rest_timeline_pages_and_whole_patches(service: Service, sim: Simulator) -> None:
    session = sim.create(state="COMPLETED")
    await poll(service)
    truth = sim.activities(session["id"])
    assert len(truth) > 2
    async with ControlRoomClient(service.url, TOKEN) as client:
        page = await client.activity_page(session["id"], page_size=2)
        assert [a.id for a in page.activities] == [a["id"] for a in truth[:2]]
        assert page.nextPageToken
        timeline = await client.activities(session["id"])
        assert [a.id for a in timeline.activities] == [a["id"] for a in truth]
        assert timeline.nextPageToken is None and timeline.activitiesSeq is not None
        with_changes = next(a for a in timeline.activities if any(x.changeSet for x in a.artifacts))
        detail = await client.activity(session["id"], with_changes.id)
        assert detail.activity.id == with_changes.id
        assert detail.patches and detail.patches[0]["unidiffPatch"].startswith("diff --git")
        with pytest.raises(NotFound):
            await client.activity(session["id"], "no-such-activity")
        with pytest.raises(NotFound):
            await client.activities("404404")


async def test_msgpack_activities_are_the_same_typed_events(
    service: Service, sim: Simulator
) -> None:
    session = sim.create(state="QUEUED")
    await poll(service)
    async with Stream(service.url, client={"encoding": "msgpack"}, activities=True) as stream:
        await stream.connected()
        sim.set_state(session["id"], "AWAITING_PLAN_APPROVAL")
        await poll(service)
        (plan,) = activities_of(await events_until_quiet(stream))
    assert plan.activity.kind == "planGenerated" and plan.activity.plan is not None


# -- the terminal -----------------------------------------------------------------------


async def test_watch_activities_prints_plans_and_highlights_questions(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    session = sim.create(state="QUEUED", repo="acme/web-app", title="Dark mode")
    await poll(service)
    p = await Proc.start("watch", "--url", service.url, "--token", TOKEN, "--activities")
    procs.append(p)
    started = await p.err_until("watching")
    assert "with activities" in started
    sim.set_state(session["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    assert "~ updated  acme/web-app" in await p.line()
    plan = await p.line()
    steps = sim.activities(session["id"])[-1]["planGenerated"]["plan"]["steps"]
    assert " * plan     acme/web-app            Dark mode · " in plan
    assert f"1. {steps[0]['title']}" in plan
    sim.set_state(session["id"], "AWAITING_USER_FEEDBACK")
    await poll(service)
    lines = [await p.line() for _ in range(len(sim.activities(session["id"])) - 1 + 1)]
    asks = [line for line in lines if " ? asks " in line]
    assert len(asks) == 1 and "Dark mode · " in asks[0]
    assert await p.stop() == 0


async def test_watch_session_shows_only_that_sessions_lines(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    mine, theirs = sim.create(state="QUEUED"), sim.create(state="QUEUED")
    await poll(service)
    p = await Proc.start(
        "watch", "--url", service.url, "--token", TOKEN, "--activities", "--session", mine["id"],
        "--json",
    )  # fmt: skip
    procs.append(p)
    await p.err_until("watching")
    sim.set_state(theirs["id"], "AWAITING_PLAN_APPROVAL")
    sim.set_state(mine["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    got = [msgspec.json.decode(await p.line()) for _ in range(2)]
    assert [(m["type"], m["sessionId"]) for m in got] == [
        ("updated", mine["id"]),
        ("activity", mine["id"]),
    ]
    assert await p.stop() == 0


async def test_show_prints_the_timeline_with_the_plan_as_numbered_steps(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    session = sim.create(state="QUEUED", repo="acme/web-app", title="Dark mode")
    sim.set_state(session["id"], "AWAITING_PLAN_APPROVAL")
    await poll(service)
    p = await Proc.start("show", session["id"], "--url", service.url, "--token", TOKEN)
    procs.append(p)
    code, out, err = await p.finish()
    assert (code, err) == (0, "")
    steps = sim.activities(session["id"])[-1]["planGenerated"]["plan"]["steps"]
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if " * plan     plan of " in line)
    assert lines[at + 1].strip() == f"1. {steps[0]['title']}"
    assert lines[-1].endswith(f"control-room approve {session['id']}")
    p = await Proc.start("show", session["id"], "--json", "--url", service.url, "--token", TOKEN)
    procs.append(p)
    code, out, _ = await p.finish()
    shown = msgspec.json.decode(out)
    assert code == 0 and shown["session"]["id"] == session["id"]
    assert [a["id"] for a in shown["activities"]] == [
        a["id"] for a in sim.activities(session["id"])
    ]


async def test_watch_msgpack_json_prints_what_a_json_client_receives(
    procs: list[Proc], service: Service, sim: Simulator
) -> None:
    async with Stream(service.url, activities=True) as reference:
        await reference.connected()
        p = await Proc.start(
            "watch", "--url", service.url, "--token", TOKEN, "--msgpack", "--json", "--activities"
        )
        procs.append(p)
        await p.err_until("watching")
        session = sim.create(state="QUEUED")
        await poll(service)
        sim.set_state(session["id"], "AWAITING_PLAN_APPROVAL")
        await poll(service)
        sent = [await asyncio.wait_for(reference.messages.get(), WAIT) for _ in range(3)]
        printed = [msgspec.json.decode(await p.line()) for _ in range(3)]
    assert printed == [msgspec.json.decode(m.raw) for m in sent]
    assert [m["type"] for m in printed] == ["created", "updated", "activity"]
    assert await p.stop() == 0
