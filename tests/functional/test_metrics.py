"""/metrics after a scripted scenario: every counter moved by what happened, parsed, not grepped."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator, Mapping

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control_room.app import Service
from control_room.jules.simulator import Simulator
from control_room.ws.frames import text_frame
from tests.conftest import MS, TOKEN, ServiceFactory, connect
from tests.notifier.conftest import SECRET
from tests.notifier.receiver import Receiver

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024  # the slow consumer's cut-off in this scenario
BIG_TITLE = "x" * 40_000  # a retitled session's delta carries it twice: ~80 kB per delta

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


async def scrape(http: aiohttp.ClientSession, service: Service) -> Samples:
    """GET /metrics with the bearer token and parse it."""
    async with http.get(service.url + "/metrics", headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample; a missing one fails the test (every metric is exported from the start)."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exported"
    return samples[key]


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter (or a histogram's _count/_sum) moved between two scrapes.

    A labelled child may first appear in `after` (poll failure kinds are created on use).
    """
    return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)


async def wait_until(predicate: object, within: float = 3000 * MS) -> None:
    """Poll `predicate` every few ms until it holds."""
    assert callable(predicate)
    for _ in range(int(within / (2 * MS))):
        if predicate():
            return
        await asyncio.sleep(2 * MS)
    raise AssertionError("condition never became true")


async def open_non_reading_client(service: Service) -> socket.socket:
    """A raw WebSocket client that completes the handshake and never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", service.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: bearer.{TOKEN}\r\n\r\n"
        ).encode(),
    )
    assert (await loop.sock_recv(sock, 1024)).startswith(b"HTTP/1.1 101")
    return sock


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver that verifies signatures made with SECRET."""
    async with Receiver(SECRET) as r:
        yield r


REQUIRED = {
    "control_room_connections_active": "gauge",
    "control_room_connections_accepted": "counter",
    "control_room_connections_closed": "counter",
    "control_room_deltas_published": "counter",
    "control_room_messages_sent": "counter",
    "control_room_sent_bytes": "counter",
    "control_room_broadcast_duration_seconds": "histogram",
    "control_room_poll_duration_seconds": "histogram",
    "control_room_poll_failures": "counter",
    "control_room_diff_duration_seconds": "histogram",
    "control_room_deltas_per_poll": "histogram",
    "control_room_webhook_deliveries": "counter",
    "control_room_webhook_retries": "counter",
    "control_room_webhook_queue_depth": "gauge",
    "control_room_webhook_oldest_pending_age_seconds": "gauge",
    "control_room_store_write_duration_seconds": "histogram",
}


async def test_every_metric_the_issue_lists_is_exported_with_its_type(
    http: aiohttp.ClientSession, make_service: ServiceFactory, receiver: Receiver
) -> None:
    service = await make_service(notify_webhooks=(receiver.url,))
    async with http.get(service.url + "/metrics", headers=AUTH) as resp:
        families = {f.name: f.type for f in text_string_to_metric_families(await resp.text())}
    for name, kind in REQUIRED.items():
        assert families.get(name) == kind, name
    assert all(name.startswith("control_room_") for name in families)


async def test_metrics_need_the_token_unless_public(
    http: aiohttp.ClientSession, make_service: ServiceFactory
) -> None:
    private = await make_service()
    async with http.get(private.url + "/metrics") as resp:
        assert resp.status == 401
    async with http.get(private.url + "/metrics", headers={"Authorization": "Bearer no"}) as resp:
        assert resp.status == 401
    assert value(await scrape(http, private), "control_room_connections_active") == 0
    public = await make_service(metrics_public=True)
    async with http.get(public.url + "/metrics") as resp:
        assert resp.status == 200
        parse(await resp.text())


async def test_counters_follow_a_scripted_scenario(
    http: aiohttp.ClientSession,
    make_service: ServiceFactory,
    sim: Simulator,
    receiver: Receiver,
) -> None:
    service = await make_service(
        notify_webhooks=(receiver.url,), notify_webhook_secret=SECRET, max_buffer_bytes=LIMIT
    )
    poller = service.poller
    assert poller is not None
    hub = service.hub
    start = await scrape(http, service)

    # 1. Two clients; created, updated, deleted; the receiver refuses one delta, fails another.
    a = await connect(http, service)
    b = await connect(http, service)
    await wait_until(lambda: len(hub) == 2)
    receiver.fail(1, 400)
    receiver.fail(1, 503)
    first = sim.create()["id"]
    second = sim.create()["id"]
    await poller.poll_once()
    sim.set_state(first, "PLANNING")
    await poller.poll_once()
    sim.delete(second)
    await poller.poll_once()
    payloads = []
    for ws in (a, b):
        got = [(await ws.receive(timeout=2000 * MS)).data.encode() for _ in range(4)]
        payloads.append(got)
    assert payloads[0] == payloads[1]
    await receiver.wait_accepted(3)
    one = await scrape(http, service)

    assert value(one, "control_room_connections_active") == 2
    assert moved(start, one, "control_room_connections_accepted_total") == 2
    for kind, count in (("created", 2), ("updated", 1), ("deleted", 1)):
        assert moved(start, one, "control_room_deltas_published_total", type=kind) == count
    assert moved(start, one, "control_room_messages_sent_total") == 2 * 4
    wire = sum(len(text_frame(p)) for p in payloads[0])
    assert moved(start, one, "control_room_sent_bytes_total") == 2 * wire
    assert moved(start, one, "control_room_broadcast_duration_seconds_count") == 3
    assert moved(start, one, "control_room_delta_payload_bytes_count") == 4
    assert moved(start, one, "control_room_delta_payload_bytes_sum") == sum(
        len(p) for p in payloads[0]
    )
    assert moved(start, one, "control_room_poll_duration_seconds_count") == 3
    assert moved(start, one, "control_room_diff_duration_seconds_count") == 3
    assert moved(start, one, "control_room_deltas_per_poll_count") == 3
    assert moved(start, one, "control_room_deltas_per_poll_sum") == 4
    assert value(one, "control_room_sessions_tracked") == 1
    assert value(one, "control_room_webhook_deliveries_total", outcome="delivered") == 3
    assert value(one, "control_room_webhook_deliveries_total", outcome="rejected") == 1
    assert value(one, "control_room_webhook_deliveries_total", outcome="expired") == 0
    assert value(one, "control_room_webhook_deliveries_total", outcome="overflow") == 0
    assert value(one, "control_room_webhook_retries_total") == 1
    assert value(one, "control_room_webhook_queue_depth") == 0
    assert value(one, "control_room_webhook_oldest_pending_age_seconds") == 0

    # 2. Polls that fail, one of each kind (three attempts each: the client's in-poll retries).
    sim.faults.fail(3, 500)
    await poller.poll_once()
    sim.faults.rate_limit(3, retry_after=None)
    await poller.poll_once()
    sim.faults.garbage(3)
    await poller.poll_once()
    assert sim.faults.pending == 0
    two = await scrape(http, service)
    for kind in ("server_error", "rate_limited", "bad_response"):
        assert moved(one, two, "control_room_poll_failures_total", kind=kind) == 1
    assert moved(one, two, "control_room_deltas_published_total", type="updated") == 0

    # 3. Closes, one reason at a time.
    await a.close()
    await b.close()
    await wait_until(lambda: len(hub) == 0)

    big = await connect(http, service)
    await big.send_str("x" * (64 * 1024 + 1))
    assert (await big.receive(timeout=2000 * MS)).data == 1009
    await wait_until(lambda: len(hub) == 0)

    silent = await connect(http, service, autoping=False)  # never reads, so never pongs
    await wait_until(lambda: len(hub) == 1)
    hub.heartbeat()  # ping
    hub.heartbeat()  # no pong since: cut
    await wait_until(lambda: len(hub) == 0)

    slow = await open_non_reading_client(service)
    try:
        await wait_until(lambda: len(hub) == 1)
        ids = [s["id"] for s in sim.bulk_create(5)]
        await poller.poll_once()
        for r in range(60):
            for sid in ids:
                sim.update(sid, title=f"{r}{BIG_TITLE}")
            await poller.poll_once()
            if not hub.connections:
                break
        await wait_until(lambda: len(hub) == 0)
    finally:
        slow.close()
    await wait_until(
        lambda: service.metrics.connections_closed.labels("backpressure_limit")._value.get() == 1
    )
    three = await scrape(http, service)
    closed = "control_room_connections_closed_total"
    assert moved(two, three, closed, reason="normal") == 2
    assert moved(two, three, closed, reason="message_too_big") == 1
    assert moved(two, three, closed, reason="heartbeat_timeout") == 1
    assert moved(two, three, closed, reason="backpressure_limit") == 1
    assert moved(two, three, closed, reason="error") == 0
    assert moved(two, three, "control_room_connections_accepted_total") == 3
    assert moved(two, three, "control_room_heartbeat_pings_total") == 1
    assert value(three, "control_room_connections_active") == 0
    await silent.close()

    # 4. Shutdown: the last reason, read from the registry once the port is closed.
    last = await connect(http, service)
    await wait_until(lambda: len(hub) == 1)
    await service.stop()
    assert (await last.receive(timeout=2000 * MS)).data == 1001
    final = parse(generate_latest(service.metrics.registry).decode())
    assert moved(three, final, closed, reason="shutdown") == 1


@pytest.mark.parametrize("metrics_public", [False, True])
async def test_stats_are_always_behind_the_token(
    http: aiohttp.ClientSession, make_service: ServiceFactory, metrics_public: bool
) -> None:
    service = await make_service(metrics_public=metrics_public)
    async with http.get(service.url + "/api/stats") as resp:
        assert resp.status == 401
    async with http.get(service.url + "/api/stats", headers=AUTH) as resp:
        body: Mapping[str, object] = await resp.json()
    assert {"uptimeSeconds", "position", "upstream", "clients", "broadcast"} <= body.keys()
