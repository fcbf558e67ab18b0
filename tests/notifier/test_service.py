"""Webhooks through the whole service: what clients receive is what receivers receive."""

from __future__ import annotations

import time

import aiohttp

from control_room.jules.simulator import Simulator
from tests.conftest import MS, TOKEN, ServiceFactory, connect, receive_json
from tests.notifier.conftest import SECRET, eventually
from tests.notifier.receiver import Receiver

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_receivers_get_the_bytes_websocket_clients_get_in_order(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator, receiver: Receiver
) -> None:
    service = await make_service(notify_webhooks=(receiver.url,), notify_webhook_secret=SECRET)
    assert service.poller is not None
    ws = await connect(http, service)
    a = sim.create()["id"]
    b = sim.create()["id"]
    await service.poller.poll_once()
    sim.set_state(a, "PLANNING")
    await service.poller.poll_once()
    sim.delete(b)
    await service.poller.poll_once()
    frames = []
    for _ in range(4):
        msg = await ws.receive(timeout=2000 * MS)
        frames.append(msg.data.encode())
    await receiver.wait_accepted(4)
    assert [r.body for r in receiver.accepted] == frames
    assert [r.json["type"] for r in receiver.accepted] == [
        "created",
        "created",
        "updated",
        "deleted",
    ]
    epoch = service.broker.position.epoch
    assert [r.msg_id for r in receiver.accepted] == [f"{epoch}-{n}" for n in range(1, 5)]
    assert receiver.bad == []


async def test_a_hanging_receiver_never_slows_polling_or_broadcasting(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator, receiver: Receiver
) -> None:
    service = await make_service(
        notify_webhooks=(receiver.url,), notify_webhook_secret=SECRET, notify_timeout=5.0
    )
    assert service.poller is not None
    receiver.stall(3000 * MS, n=100)
    ws = await connect(http, service)
    for round_ in range(5):
        sim.create(title=f"round {round_}")
        started = time.perf_counter()
        await service.poller.poll_once()
        delta = await receive_json(ws, 500 * MS)
        assert delta["seq"] == round_ + 1
        assert time.perf_counter() - started < 1000 * MS  # the receiver holds for 3000
    assert service.notifier is not None
    assert service.notifier.pending() == 5


async def test_stats_show_each_endpoint_and_readiness_ignores_webhooks(
    http: aiohttp.ClientSession, make_service: ServiceFactory, sim: Simulator, receiver: Receiver
) -> None:
    async with Receiver(SECRET) as dead:
        await dead.stop()
        service = await make_service(
            notify_webhooks=(receiver.url, dead.url), notify_webhook_secret=SECRET
        )
        assert service.poller is not None and service.notifier is not None
        sim.create()
        await service.poller.poll_once()
        await receiver.wait_accepted(1)
        await eventually(lambda: service.notifier is not None and service.notifier.pending() == 1)
        async with http.get(service.url + "/api/stats", headers=AUTH) as resp:
            assert resp.status == 200
            stats = await resp.json()
        webhooks = stats["webhooks"]
        assert webhooks["persistent"] is False
        up, down = webhooks["endpoints"]
        assert up["endpoint"] == f"http://127.0.0.1:{receiver.port}/…"
        assert (up["pending"], up["delivered"], up["lastError"]) == (0, 1, None)
        assert up["lastSuccess"] is not None
        assert down["pending"] == 1
        assert down["delivered"] == 0
        assert "ClientConnectorError" in down["lastError"]
        assert down["consecutiveFailures"] >= 1
        # A receiver that is down is the receiver's problem, not a reason to stop serving.
        async with http.get(service.url + "/readyz") as resp:
            assert resp.status == 200


async def test_no_webhook_configured_means_no_notifier_and_no_stats_entry(
    http: aiohttp.ClientSession, service: object
) -> None:
    from control_room.app import Service

    assert isinstance(service, Service)
    assert service.notifier is None
    async with http.get(service.url + "/api/stats", headers=AUTH) as resp:
        assert "webhooks" not in await resp.json()
