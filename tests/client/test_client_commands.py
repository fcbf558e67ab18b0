"""The Python client's commands, subscriptions and wire variants against a real service.

Every command runs twice: over the socket of an open stream (answered by a `result`
matched by id) and over REST (no stream open). A trace on the client's HTTP session shows
which way each went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest

from control_room.app import Service
from control_room.client import (
    ConnectionLost,
    ControlRoomClient,
    FailedPrecondition,
    Forbidden,
    InvalidArgument,
    Message,
    NotFound,
    Snapshot,
    as_json,
)
from control_room.jules.simulator import Simulator
from control_room.models import SessionDelta
from tests.client.test_client import FAST_BACKOFF, WAIT, Stream
from tests.conftest import TOKEN, ServiceFactory

READONLY = "read-only-token"


class Recorder:
    """An aiohttp session whose requests are recorded as `METHOD path`."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._started)
        self.session = aiohttp.ClientSession(trace_configs=[trace])

    async def _started(
        self, session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        self.requests.append(f"{params.method} {params.url.path}")

    def commands(self) -> list[str]:
        """The requests that were not stream-related reads."""
        return [r for r in self.requests if not r.startswith("GET /api/deltas") and r != "GET /"]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    yield r
    await r.session.close()


@contextlib.asynccontextmanager
async def client_over(
    over: str, service: Service, recorder: Recorder, token: str = TOKEN
) -> AsyncIterator[ControlRoomClient]:
    """A client whose commands go `over` the socket (a stream is open) or REST (none is)."""
    if over == "rest":
        async with ControlRoomClient(service.url, token, session=recorder.session) as client:
            yield client
        return
    async with Stream(service.url, token, client={"session": recorder.session}) as stream:
        await stream.connected()
        assert stream.client.stream_open
        yield stream.client


OVER = pytest.mark.parametrize("over", ["socket", "rest"])


def expect_path(over: str, recorder: Recorder, *requests: str) -> None:
    if over == "rest":
        assert recorder.commands() == list(requests)
    else:
        assert recorder.commands() == []  # nothing but the stream's own lookup went by HTTP


@OVER
async def test_approve_plan(
    over: str, service: Service, sim: Simulator, recorder: Recorder
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    async with client_over(over, service, recorder) as client:
        after = await client.approve_plan(waiting["id"])
        assert after is not None and after.id == waiting["id"]
        assert after.state != "AWAITING_PLAN_APPROVAL" and after.approval.state == "approved"
        with pytest.raises(FailedPrecondition, match="only a session in AWAITING_PLAN_APPROVAL"):
            await client.approve_plan(waiting["id"])  # approved already
    expect_path(over, recorder, *[f"POST /api/sessions/{waiting['id']}:approvePlan"] * 2)


@OVER
async def test_send_message(
    over: str, service: Service, sim: Simulator, recorder: Recorder
) -> None:
    assert service.poller is not None
    asking = sim.create(state="AWAITING_USER_FEEDBACK")
    await service.poller.poll_once()
    async with client_over(over, service, recorder) as client:
        after = await client.send_message(asking["id"], "Use the main branch")
        assert after is not None and after.state == "IN_PROGRESS"
        with pytest.raises(InvalidArgument, match="prompt is empty") as empty:
            await client.send_message(asking["id"], "   ")
    assert empty.value.code == "invalid_argument"
    expect_path(over, recorder, *[f"POST /api/sessions/{asking['id']}:sendMessage"] * 2)


@OVER
async def test_create_session(
    over: str, service: Service, sim: Simulator, recorder: Recorder
) -> None:
    async with client_over(over, service, recorder) as client:
        created = await client.create_session(
            "Add a README",
            repository="acme/web-app",
            branch="develop",
            title="Docs first",
            require_plan_approval=True,
            auto_create_pr=False,
        )
        with pytest.raises(NotFound):
            await client.create_session("x", repository="no/such")
        with pytest.raises(InvalidArgument, match="owner/repo"):
            await client.create_session("x", repository="nosuch")
    assert (created.repository, created.branch, created.title) == (
        "acme/web-app",
        "develop",
        "Docs first",
    )
    upstream = sim.get(created.id)
    assert upstream["prompt"] == "Add a README"
    assert "automationMode" not in upstream  # auto_create_pr=False reached Jules
    expect_path(over, recorder, *["POST /api/sessions"] * 3)


@OVER
async def test_archive_unarchive_and_delete(
    over: str, service: Service, sim: Simulator, recorder: Recorder
) -> None:
    assert service.poller is not None
    done, gone = sim.create(state="COMPLETED"), sim.create(state="COMPLETED")
    await service.poller.poll_once()
    async with client_over(over, service, recorder) as client:
        assert await client.archive(done["id"]) is None
        assert sim.get(done["id"]).get("archived") is True
        back = await client.unarchive(done["id"])
        assert "archived" not in sim.get(done["id"])
        assert back is None or back.id == done["id"]
        assert await client.delete(gone["id"]) is None
        with pytest.raises(NotFound):
            await client.delete(gone["id"])
    assert gone["id"] not in service.poller.sessions
    if over == "rest":
        assert recorder.commands() == [
            f"POST /api/sessions/{done['id']}:archive",
            f"POST /api/sessions/{done['id']}:unarchive",
            f"DELETE /api/sessions/{gone['id']}",
            f"DELETE /api/sessions/{gone['id']}",
        ]
    else:
        assert recorder.commands() == []


async def test_reads_session_sources_and_me(service: Service, sim: Simulator) -> None:
    assert service.poller is not None
    made = sim.create(repo="acme/web-app", title="Read me")
    await service.poller.poll_once()
    async with ControlRoomClient(service.url, TOKEN) as client:
        assert (await client.session(made["id"])).title == "Read me"
        with pytest.raises(NotFound, match="no such session"):
            await client.session("404404")
        sources = await client.sources()
        assert await client.me() == {"readOnly": False, "commands": True}
    web_app = next(s for s in sources if s.repository == "acme/web-app")
    assert web_app.branches == ("main", "develop")


@pytest.fixture
async def readonly_service(make_service: ServiceFactory) -> Service:
    return await make_service(local_readonly_token=READONLY)


@OVER
async def test_a_read_only_token_gets_forbidden_for_every_command(
    over: str, readonly_service: Service, sim: Simulator, recorder: Recorder
) -> None:
    service = readonly_service
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    calls: list[Callable[[ControlRoomClient], Awaitable[object]]] = [
        lambda c: c.approve_plan(waiting["id"]),
        lambda c: c.send_message(waiting["id"], "hi"),
        lambda c: c.create_session("x", repository="acme/web-app"),
        lambda c: c.archive(waiting["id"]),
        lambda c: c.unarchive(waiting["id"]),
        lambda c: c.delete(waiting["id"]),
    ]
    async with client_over(over, service, recorder, token=READONLY) as client:
        for call in calls:
            with pytest.raises(Forbidden) as refused:
                await call(client)
            assert (refused.value.code, refused.value.message) == (
                "forbidden",
                "this token is read-only",
            )
            assert str(refused.value) == "forbidden: this token is read-only"
        assert await client.me() == {"readOnly": True, "commands": False}
        if over == "socket":  # a read-only token may still choose what it watches
            snapshot = await client.subscribe(states=["AWAITING_PLAN_APPROVAL"])
            assert [s.id for s in snapshot.sessions] == [waiting["id"]]
    assert sim.get(waiting["id"])["state"] == "AWAITING_PLAN_APPROVAL"


async def test_subscribe_swaps_the_view_and_reconnects_with_it(
    service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(repo="acme/api", state="AWAITING_PLAN_APPROVAL")
    other = sim.create(repo="acme/api", state="IN_PROGRESS")
    await service.poller.poll_once()
    async with Stream(service.url) as stream:
        await stream.connected()
        client = stream.client
        snapshot = await client.subscribe(
            states=["AWAITING_PLAN_APPROVAL", "AWAITING_USER_FEEDBACK"]
        )
        assert isinstance(snapshot, Snapshot)
        assert [s.id for s in snapshot.sessions] == [waiting["id"]]
        assert client.position is not None
        assert (client.position.epoch, client.position.seq) == (snapshot.epoch, snapshot.seq)
        assert client.view.states == ["AWAITING_PLAN_APPROVAL", "AWAITING_USER_FEEDBACK"]
        sim.set_state(other["id"], "AWAITING_USER_FEEDBACK")  # enters the view
        sim.update(waiting["id"], title="Renamed")  # stays in it
        await service.poller.poll_once()
        events = await stream.deltas(2)
        assert {(d.type, d.sessionId) for d in events} == {
            ("created", other["id"]),
            ("updated", waiting["id"]),
        }
        service.hub.close_all()  # reconnects: with the new view, from its position
        await stream.connected()
        outside = sim.create(repo="acme/api")  # QUEUED: not in the view
        sim.set_state(other["id"], "IN_PROGRESS")  # leaves the view
        await service.poller.poll_once()
        (left,) = await stream.deltas(1)
        assert (left.type, left.sessionId) == ("deleted", other["id"])
        await stream.nothing_more()
        assert outside["id"] not in {s.id for s in snapshot.sessions}


async def test_subscribe_from_inside_the_loop_drops_what_the_snapshot_covers(
    service: Service, sim: Simulator
) -> None:
    """Awaiting subscribe() while holding an event works (a reader task keeps reading), and
    events of the old view still queued behind it are not yielded after the snapshot."""
    assert service.poller is not None
    connected = asyncio.Event()
    async with ControlRoomClient(
        service.url, TOKEN, on_status=lambda _: connected.set(), **FAST_BACKOFF
    ) as client:
        stream = client.messages()
        async with contextlib.aclosing(stream) as events:
            pulling = asyncio.ensure_future(anext(events))
            await asyncio.wait_for(connected.wait(), WAIT)
            sim.bulk_create(3)
            await service.poller.poll_once()
            first = await asyncio.wait_for(pulling, WAIT)
            assert isinstance(first.event, SessionDelta) and first.event.seq == 1
            # Deltas 2 and 3 are queued (or on their way) behind delta 1: the old view.
            snapshot = await client.subscribe(states=["QUEUED", "PLANNING"])
            assert snapshot.seq == 3
            picture = {s.id: s for s in snapshot.sessions}
            fresh = sim.create(state="QUEUED")
            await service.poller.poll_once()
            after = await asyncio.wait_for(anext(events), WAIT)
    assert isinstance(after.event, SessionDelta)
    assert (after.event.seq, after.event.sessionId) == (4, fresh["id"])
    assert fresh["id"] not in picture


async def test_subscribe_needs_an_open_stream(service: Service) -> None:
    async with ControlRoomClient(service.url, TOKEN) as client:
        with pytest.raises(FailedPrecondition, match="open stream"):
            await client.subscribe(states=["QUEUED"])


async def test_commands_on_a_closed_socket_fail_fast_and_say_it_may_have_happened(
    service: Service, sim: Simulator
) -> None:
    """A socket that closes while a command waits: ConnectionLost, not a 60 s timeout."""
    assert service.poller is not None
    sim.faults.delay(2.0, only="approve")  # Jules is slow to answer this one
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL")
    await service.poller.poll_once()
    async with Stream(service.url) as stream:
        await stream.connected()
        pending = asyncio.create_task(stream.client.approve_plan(waiting["id"]))
        await asyncio.sleep(0.1)
        service.hub.close_all()
        with pytest.raises(ConnectionLost, match="may or may not have been done"):
            await asyncio.wait_for(pending, WAIT)


async def test_msgpack_stream_gives_the_same_typed_events_and_commands_work(
    service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    waiting = sim.create(state="AWAITING_PLAN_APPROVAL", title="Binary")
    await service.poller.poll_once()
    async with Stream(service.url, client={"encoding": "msgpack"}, snapshot=True) as stream:
        snapshot = await stream.next()
        assert isinstance(snapshot, Snapshot) and snapshot.sessions[0].title == "Binary"
        await stream.connected()
        assert stream.client.negotiated[0] == "control-room.v1+msgpack"
        after = await stream.client.approve_plan(waiting["id"])  # a binary command
        assert after is not None and after.approval.state == "approved"
        message: Message = await asyncio.wait_for(stream.messages.get(), WAIT)
        assert isinstance(message.raw, bytes)
        assert isinstance(message.event, SessionDelta) and message.event.type == "updated"
        assert msgspec.json.decode(as_json(message)) == msgspec.msgpack.decode(message.raw)
        assert msgspec.json.decode(as_json(message))["after"]["approval"]["state"] == "approved"


async def test_deflate_is_negotiated_and_the_client_compresses_each_command_on_its_own(
    service: Service, sim: Simulator
) -> None:
    """The server answers client_no_context_takeover: the client must compress every message
    from a fresh window. Two identical commands would otherwise make the second a
    back-reference into the first, which the server cannot inflate."""
    assert service.poller is not None
    sim.create(title="x" * 2_000)  # a snapshot well over COMPRESSION_MIN_BYTES
    await service.poller.poll_once()
    async with Stream(service.url) as stream:
        await stream.connected()
        protocol, extension = stream.client.negotiated
        assert protocol == "control-room.v1"
        assert extension == "permessage-deflate; client_no_context_takeover"
        ids = [f"session-{n:04d}" for n in range(200)]  # a few KB of command
        for _ in range(3):
            snapshot = await stream.client.subscribe(session_ids=ids)
            assert snapshot.sessions == []
        big = await stream.client.subscribe()
        assert big.sessions[0].title == "x" * 2_000  # a compressed answer, inflated
    async with Stream(service.url, client={"compress": False}) as plain:
        await plain.connected()
        assert plain.client.negotiated == ("control-room.v1", None)
