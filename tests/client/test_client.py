"""The Python client against a real service fed by the simulator: stream, resume, errors."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from control_room import client as client_module
from control_room.app import Service
from control_room.client import (
    Connected,
    ConnectionStatus,
    ControlRoomClient,
    Disconnected,
    Event,
    Message,
    NotReady,
    Reset,
    Snapshot,
    Unauthorized,
    Unavailable,
)
from control_room.jules.simulator import Simulator
from control_room.models import Position, SessionDelta
from tests.conftest import MS, TOKEN, ServiceFactory, connect


async def drain(events: AsyncIterator[Event]) -> None:
    """Consume a stream that is expected to raise before yielding anything."""
    async for event in events:
        pytest.fail(f"no event expected, got {event!r}")


FAST_BACKOFF: dict[str, Any] = {"backoff_base": 20 * MS, "backoff_cap": 100 * MS}
WAIT = 5000 * MS


class Stream:
    """A client's stream consumed in a task: messages and connection changes on queues."""

    def __init__(
        self,
        url: str,
        token: str = TOKEN,
        client: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.statuses: asyncio.Queue[ConnectionStatus] = asyncio.Queue()
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.client = ControlRoomClient(
            url, token, on_status=self.statuses.put_nowait, **FAST_BACKOFF, **(client or {})
        )
        self._task: asyncio.Task[None] | None = None
        self._options = options

    async def __aenter__(self) -> Stream:
        await self.client.__aenter__()
        self._task = asyncio.create_task(self._consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.close()

    async def _consume(self) -> None:
        async with contextlib.aclosing(self.client.messages(**self._options)) as stream:
            async for message in stream:
                self.messages.put_nowait(message)

    async def status(self) -> ConnectionStatus:
        return await asyncio.wait_for(self.statuses.get(), WAIT)

    async def connected(self) -> Connected:
        while True:
            status = await self.status()
            if isinstance(status, Connected):
                return status

    async def next(self) -> Event:
        return (await asyncio.wait_for(self.messages.get(), WAIT)).event

    async def deltas(self, n: int) -> list[SessionDelta]:
        out = []
        for _ in range(n):
            event = await self.next()
            assert isinstance(event, SessionDelta), event
            out.append(event)
        return out

    async def nothing_more(self) -> None:
        await asyncio.sleep(100 * MS)
        assert self.messages.empty(), self.messages.get_nowait()


async def test_receives_each_delta_typed_with_its_raw_json(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    raw_ws = await connect(http, service)  # a plain client, to compare bytes with
    async with Stream(service.url) as stream:
        connected = await stream.connected()
        assert connected.attempt == 0 and connected.position is not None
        created = sim.create(repo="acme/api", title="Add retries")
        await service.poller.poll_once()
        sim.set_state(created["id"], "PLANNING")
        await service.poller.poll_once()
        sim.delete(created["id"])
        await service.poller.poll_once()
        messages = [await asyncio.wait_for(stream.messages.get(), WAIT) for _ in range(3)]
        assert [m.event.type for m in messages] == ["created", "updated", "deleted"]
        first = messages[0].event
        assert isinstance(first, SessionDelta) and first.after is not None
        assert (first.after.repository, first.after.title, first.seq) == (
            "acme/api",
            "Add retries",
            1,
        )
        for message in messages:  # the raw text is exactly what the server sent
            direct = await asyncio.wait_for(raw_ws.receive(), WAIT)
            assert message.raw == direct.data
        assert stream.client.position is not None and stream.client.position.seq == 3
        await stream.nothing_more()
    await raw_ws.close()


async def test_deltas_published_between_lookup_and_connect_are_not_lost(
    service: Service, sim: Simulator
) -> None:
    """A stream that starts "now" resumes from the service's position, so nothing slips."""
    assert service.poller is not None
    async with Stream(service.url) as stream:
        await stream.connected()
        sim.bulk_create(3)
        await service.poller.poll_once()
        assert [d.seq for d in await stream.deltas(3)] == [1, 2, 3]


async def test_resumes_after_a_dropped_connection_without_gaps_or_duplicates(
    service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    async with Stream(service.url) as stream:
        await stream.connected()
        sim.bulk_create(2)
        await service.poller.poll_once()
        assert [d.seq for d in await stream.deltas(2)] == [1, 2]
        service.hub.close_all()  # the server drops the client (1001); history stays
        lost = await stream.status()
        assert isinstance(lost, Disconnected) and lost.was_connected and "1001" in lost.reason
        sim.bulk_create(2)  # published while the client is away
        await service.poller.poll_once()
        back = await stream.connected()
        assert back.attempt == 1
        assert back.position is not None and back.position.seq == 2
        sim.bulk_create(1)
        await service.poller.poll_once()
        assert [d.seq for d in await stream.deltas(3)] == [3, 4, 5]
        await stream.nothing_more()


async def test_resumes_after_a_server_restart_with_a_reset(
    make_service: ServiceFactory, sim: Simulator
) -> None:
    """Without persistence a restart starts a new epoch: the client gets a reset, then deltas."""
    first = await make_service()
    assert first.poller is not None
    await first.poller.poll_once()
    port = first.port
    async with Stream(first.url) as stream:
        start = await stream.connected()
        assert start.position is not None
        old_epoch = start.position.epoch
        created = sim.create(repo="acme/api")
        await first.poller.poll_once()
        assert [d.seq for d in await stream.deltas(1)] == [1]
        await first.stop()
        assert isinstance(await stream.status(), Disconnected)
        second = await make_service(port=port)
        assert second.poller is not None
        await second.poller.poll_once()  # the new process's baseline: no deltas
        back = await stream.connected()
        assert back.position is not None and back.position.epoch == old_epoch
        reset = await stream.next()
        assert isinstance(reset, Reset)
        assert reset.reason == "epoch_changed" and reset.epoch != old_epoch and reset.seq == 0
        sim.set_state(created["id"], "PLANNING")
        await second.poller.poll_once()
        (update,) = await stream.deltas(1)
        assert (update.type, update.seq) == ("updated", 1)  # seq 1 again: a new epoch, kept
        assert stream.client.position is not None
        assert stream.client.position.epoch == reset.epoch
        await stream.nothing_more()


async def test_a_snapshot_first_then_deltas_and_resume_without_a_second_snapshot(
    http: aiohttp.ClientSession, service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    sim.bulk_create(4)
    await service.poller.poll_once()
    async with ControlRoomClient(service.url, TOKEN, session=http) as client:
        listing = await client.sessions()
    async with Stream(service.url, snapshot=True) as stream:
        snapshot = await stream.next()
        assert isinstance(snapshot, Snapshot)
        assert sorted(s.id for s in snapshot.sessions) == sorted(s.id for s in listing.sessions)
        assert (snapshot.epoch, snapshot.seq) == (listing.epoch, listing.seq) == (listing.epoch, 4)
        await stream.connected()
        service.hub.close_all()
        sim.bulk_create(1)
        await service.poller.poll_once()
        (missed,) = await stream.deltas(1)  # replayed on reconnect: not a new snapshot
        assert missed.seq == 5


async def test_since_and_epoch_resume_from_a_stored_position(
    service: Service, sim: Simulator
) -> None:
    assert service.poller is not None
    sim.bulk_create(5)
    await service.poller.poll_once()
    epoch = service.broker.position.epoch
    async with Stream(service.url, since=2, epoch=epoch) as stream:
        assert [d.seq for d in await stream.deltas(3)] == [3, 4, 5]
    async with Stream(service.url, since=4) as stream:  # epoch looked up
        assert [d.seq for d in await stream.deltas(1)] == [5]
        assert stream.client.position is not None and stream.client.position.epoch == epoch
    async with Stream(service.url, since=4, epoch="not-this-one") as stream:
        reset = await stream.next()
        assert isinstance(reset, Reset) and reset.reason == "epoch_changed"


async def test_a_rejected_token_raises_unauthorized_without_retrying(service: Service) -> None:
    statuses: list[ConnectionStatus] = []
    async with ControlRoomClient(service.url, "wrong", on_status=statuses.append) as client:
        with pytest.raises(Unauthorized, match="rejected the token"):
            await client.sessions()
        for options in ({}, {"snapshot": True}, {"since": 0, "epoch": "e"}):
            with pytest.raises(Unauthorized):
                await drain(client.deltas(**options))
    assert statuses == []


async def test_a_server_restored_from_a_backup_resets_the_client_which_carries_on(
    make_service: ServiceFactory, sim: Simulator, tmp_path: Path
) -> None:
    """Same epoch, server back at seq 1, client at seq 4: a reset, then live deltas."""
    data, backup = tmp_path / "data", tmp_path / "backup"
    stored = {"persist": True, "data_dir": data}
    first = await make_service(**stored)
    assert first.poller is not None
    sim.create()
    await first.poller.poll_once()
    await first.stop()
    shutil.copytree(data, backup)  # the backup, at seq 1
    second = await make_service(**stored, port=first.port)
    assert second.poller is not None
    epoch = second.broker.position.epoch
    async with Stream(second.url) as stream:
        await stream.connected()
        later = sim.bulk_create(3)
        await second.poller.poll_once()
        assert [d.seq for d in await stream.deltas(3)] == [2, 3, 4]
        await second.stop()
        for session in later:  # gone again, so the restored service finds nothing to add
            sim.delete(session["id"])
        shutil.rmtree(data)
        shutil.copytree(backup, data)  # restored
        third = await make_service(**stored, port=first.port)
        assert third.poller is not None and third.broker.position == Position(epoch, 1)
        await stream.connected()
        reset = await stream.next()
        assert isinstance(reset, Reset)
        assert (reset.reason, reset.epoch, reset.seq) == ("ahead_of_server", epoch, 1)
        sim.create()
        await third.poller.poll_once()
        assert [d.seq for d in await stream.deltas(1)] == [2]  # and it carries on
    async with Stream(third.url, since=40) as stream:  # a stored position ahead, epoch looked up
        reset = await stream.next()
        assert isinstance(reset, Reset) and reset.reason == "ahead_of_server"


async def test_sessions_waits_for_the_first_poll(
    make_service: ServiceFactory, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "NOT_READY_RETRY_CAP_S", 20 * MS)
    sim.bulk_create(2)
    sim.faults.fail(n=1000)  # no baseline yet: the service answers 503
    svc = await make_service()
    assert svc.poller is not None
    async with ControlRoomClient(svc.url, TOKEN) as client:
        pending = asyncio.create_task(client.sessions())
        await asyncio.sleep(100 * MS)
        assert not pending.done()
        sim.faults.clear()
        await svc.poller.poll_once()
        listing = await asyncio.wait_for(pending, WAIT)
    assert len(listing.sessions) == 2 and listing.seq == 0


async def test_sessions_gives_up_when_the_service_stays_unready(
    make_service: ServiceFactory, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "NOT_READY_RETRY_CAP_S", 20 * MS)
    sim.faults.fail(n=1000)  # the upstream never answers: no baseline
    svc = await make_service()
    seen: list[NotReady] = []
    async with ControlRoomClient(svc.url, TOKEN) as client:
        with pytest.raises(NotReady) as given_up:
            await client.sessions(wait_ready=100 * MS, on_not_ready=seen.append)
    # The service's own reason, told at once (the first answer) and again at the end.
    assert seen and seen[-1] is given_up.value
    assert re.match(r"waiting for the Jules API: .* answered HTTP 500", given_up.value.reason)
    assert str(given_up.value) == f"{svc.url} is not ready: {given_up.value.reason}"
    assert isinstance(given_up.value, Unavailable)  # what callers caught before


async def test_sessions_says_when_nothing_listens() -> None:
    async with ControlRoomClient("http://127.0.0.1:9", TOKEN) as client:
        with pytest.raises(Unavailable, match=r"cannot connect to 127\.0\.0\.1:9"):
            await client.sessions()


async def test_arguments_are_checked_before_any_connection() -> None:
    with pytest.raises(ValueError, match="http"):
        ControlRoomClient("ftp://example.org", TOKEN)
    with pytest.raises(ValueError, match="token"):
        ControlRoomClient("http://127.0.0.1:1", "")
    client = ControlRoomClient("ws://127.0.0.1:1/prefix/", TOKEN)
    assert (client.url, client.ws_url) == ("http://127.0.0.1:1/prefix/", "ws://127.0.0.1:1/prefix/")
    for options, problem in (
        ({"since": -1}, "non-negative"),
        ({"epoch": "e"}, "only meaningful with since"),
        ({"since": 1, "snapshot": True}, "cannot be combined"),
    ):
        with pytest.raises(ValueError, match=problem):
            await drain(client.deltas(**options))


# A scripted server for what a correct service never does: repeat itself.


@pytest.fixture
async def repeating_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """Sends seq 1, 2, 2, 3 then closes; the next connection overlaps (3, 4)."""
    queries: list[dict[str, str]] = []
    scripts = [[1, 2, 2, 1, 3], [3, 4]]

    async def deltas(request: web.Request) -> web.Response:
        return web.json_response({"epoch": "e1", "seq": 0, "deltas": []})

    async def stream(request: web.Request) -> web.WebSocketResponse:
        queries.append(dict(request.query))
        ws = web.WebSocketResponse(protocols=("control-room.v1",))
        await ws.prepare(request)
        script = scripts.pop(0) if scripts else []
        for seq in script:
            delta = {"type": "deleted", "sessionId": f"s{seq}", "timestamp": "t", "seq": seq}
            await ws.send_str(msgspec.json.encode(delta).decode())
        await ws.send_str('{"type":"future-kind","x":1}')  # unknown types are skipped
        await ws.send_str("not json")  # so is garbage
        if script == [3, 4]:
            async for _ in ws:  # stay connected until the client leaves
                pass
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/api/deltas", deltas)
    app.router.add_get("/", stream)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", queries
    await runner.cleanup()


async def test_duplicates_are_dropped_and_resume_asks_for_the_last_seq(
    repeating_server: tuple[str, list[dict[str, str]]],
) -> None:
    url, queries = repeating_server
    async with Stream(url) as stream:
        assert [d.seq for d in await stream.deltas(4)] == [1, 2, 3, 4]
        await stream.nothing_more()
    assert queries == [{"since": "0", "epoch": "e1"}, {"since": "3", "epoch": "e1"}]


async def test_listing_plus_later_deltas_is_the_current_listing(
    service: Service, sim: Simulator
) -> None:
    """The how-to's recipe: load sessions(), stream from its position, apply each delta."""
    assert service.poller is not None
    ids = [s["id"] for s in sim.bulk_create(4)]
    await service.poller.poll_once()
    async with ControlRoomClient(service.url, TOKEN) as client:
        listing = await client.sessions()
        sessions = {s.id: s for s in listing.sessions}
        sim.set_state(ids[0], "PLANNING")  # published before the stream even connects
        await service.poller.poll_once()
        async with Stream(service.url, since=listing.seq, epoch=listing.epoch) as stream:
            sim.delete(ids[1])
            sim.create(repo="acme/new")
            await service.poller.poll_once()
            for delta in await stream.deltas(3):
                if delta.after is None:
                    sessions.pop(delta.sessionId)
                else:
                    sessions[delta.sessionId] = delta.after
        now = await client.sessions()
    assert sessions == {s.id: s for s in now.sessions}
