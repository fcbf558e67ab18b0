"""Heartbeat as the seed describes it: ping every interval, cut who did not answer."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import MS, ServiceFactory, connect

BEAT = 50 * MS


async def test_clients_are_pinged_every_interval(
    http: aiohttp.ClientSession, make_service: ServiceFactory
) -> None:
    service = await make_service(heartbeat_interval=BEAT)
    ws = await connect(http, service, autoping=False)
    pings = 0
    while pings < 3:
        msg = await asyncio.wait_for(ws.receive(), 10 * BEAT)
        if msg.type is aiohttp.WSMsgType.PING:
            pings += 1
            await ws.pong(msg.data)
    await ws.close()


async def test_a_client_that_answers_pings_stays_connected(
    http: aiohttp.ClientSession, make_service: ServiceFactory
) -> None:
    service = await make_service(heartbeat_interval=BEAT)
    ws = await connect(http, service)
    reader = asyncio.create_task(ws.receive())  # aiohttp answers pings while receiving
    await asyncio.sleep(6 * BEAT)
    assert not reader.done()  # nothing but pings arrived, and the socket is still open
    assert len(service.hub) == 1
    assert service.metrics.heartbeat_pings._value.get() >= 4
    await ws.close()
    await reader


async def test_a_client_that_never_answers_is_terminated(
    http: aiohttp.ClientSession, make_service: ServiceFactory
) -> None:
    service = await make_service(heartbeat_interval=BEAT)
    ws = await connect(http, service, autoping=False)  # receives pings, never answers
    kinds = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 20 * BEAT)
        kinds.append(msg.type)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    assert aiohttp.WSMsgType.PING in kinds
    assert len(service.hub) == 0
    closed = service.metrics.connections_closed.labels("heartbeat_timeout")._value.get()
    assert closed == 1
