"""What a client sends that is junk, hostile or over a limit: throttled like any message,
refused in the service's own words, never echoed back."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import pytest
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed

from control_room.app import Service
from control_room.jules.simulator import Simulator
from control_room.models import SESSION_STATES
from control_room.views import MAX_FILTER_VALUES
from control_room.ws import handler
from tests.conftest import MS, TOKEN, connect, receive_json

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Protocol": f"bearer.{TOKEN}",
}


async def answers_until_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[Any], Any]:
    """Every result's `ok` or error code, in order, and the close code that ended them."""
    codes: list[Any] = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 2000 * MS)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return codes, msg.data
        result = msg.json()
        codes.append(result["ok"] or result["error"]["code"])


async def upgrade_error(http: aiohttp.ClientSession, service: Service, query: str) -> Any:
    """The 400 body a WebSocket upgrade with `query` is refused with."""
    url = service.ws_url.replace("ws", "http", 1) + query
    async with http.get(url, headers=UPGRADE) as resp:
        assert resp.status == 400, await resp.text()
        return await resp.json()


async def rest_error(http: aiohttp.ClientSession, service: Service, path: str) -> Any:
    """The 400 body a REST GET of `path` is refused with."""
    async with http.get(service.url + path, headers=AUTH) as resp:
        assert resp.status == 400, await resp.text()
        return await resp.json()


async def closed_for(service: Service, reason: str) -> None:
    """Until one connection was counted closed for `reason` (after the closing handshake)."""
    counter = service.metrics.connections_closed.labels(reason)
    for _ in range(200):
        if counter._value.get() == 1:
            return
        await asyncio.sleep(10 * MS)
    pytest.fail(f"no connection counted closed for {reason}")


# -- 1, 6: every message takes from the rate bucket ------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("garbage", "bad_message"),
        ('{"type": "nope", "id": 1}', "unknown_type"),
        ('{"type": "approvePlan", "id": 1}', "invalid_argument"),
    ],
)
async def test_every_message_takes_from_the_rate_bucket_whatever_it_is(
    http: aiohttp.ClientSession,
    service: Service,
    monkeypatch: pytest.MonkeyPatch,
    message: str,
    code: str,
) -> None:
    monkeypatch.setattr(handler, "COMMAND_BURST", 3)
    monkeypatch.setattr(handler, "COMMAND_FLOOD_LIMIT", 5)
    ws = await connect(http, service)
    for _ in range(20):
        await ws.send_str(message)
    codes, close = await answers_until_closed(ws)
    assert codes == [code] * 3 + ["rate_limited"] * 4
    assert close == 1008
    await closed_for(service, "command_flood")


async def test_a_flood_of_unknown_types_at_the_real_limits_is_closed_with_1008(
    http: aiohttp.ClientSession, service: Service
) -> None:
    """The tester's case: thousands of `{"type":"nope"}` were all answered, the socket kept."""
    ws = await connect(http, service)
    for _ in range(handler.COMMAND_BURST + handler.COMMAND_FLOOD_LIMIT + 50):
        await ws.send_str('{"type": "nope"}')
    codes, close = await answers_until_closed(ws)
    answered = codes.count("unknown_type")
    assert codes[: handler.COMMAND_BURST] == ["unknown_type"] * handler.COMMAND_BURST
    # A loaded machine may refill a token or two while the flood is read (10 a second).
    assert answered < handler.COMMAND_BURST + 10
    assert codes[answered:] == ["rate_limited"] * (len(codes) - answered)
    assert close == 1008


async def test_a_refusal_for_rate_is_answered_by_the_messages_id(
    http: aiohttp.ClientSession, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler, "COMMAND_BURST", 1)
    ws = await connect(http, service)
    await ws.send_str('{"type": "nope", "id": "a"}')
    await ws.send_str('{"type": "nope", "id": "b"}')
    first, second = await receive_json(ws), await receive_json(ws)
    assert (first["id"], first["error"]["code"]) == ("a", "unknown_type")
    assert (second["id"], second["error"]["code"]) == ("b", "rate_limited")


async def test_a_client_flooding_subscribes_sees_the_1008_close_frame_not_a_reset(
    service: Service,
) -> None:
    """At the real limits (20 at once, then 100 refusals in a row), a `websockets` client
    that keeps sending as fast as it can still reads the close frame: the server reads
    and discards what follows it instead of closing on unread bytes (a TCP reset)."""
    flood = msgspec.json.encode({"type": "subscribe", "id": 1, "states": ["QUEUED"]}).decode()

    async def send_until_closed() -> None:
        for _ in range(5000):
            await ws.send(flood)
        while True:
            await asyncio.wait_for(ws.recv(), 5000 * MS)

    async with websockets_connect(service.ws_url, subprotocols=[f"bearer.{TOKEN}"]) as ws:  # type: ignore[list-item]
        with pytest.raises(ConnectionClosed) as closed:
            await send_until_closed()
    assert closed.value.rcvd is not None, "no close frame reached the client"
    assert closed.value.rcvd.code == 1008


# -- 4, 5: integers are plain digits; a 400 never quotes the input ---------------------------


@pytest.mark.parametrize("value", ["%EF%BC%91", "%2B5", "5_0", "%205", "-1", "1" * 19, ""])
async def test_integer_parameters_take_only_plain_ascii_digits(
    http: aiohttp.ClientSession, service: Service, sim: Simulator, value: str
) -> None:
    assert service.poller is not None
    made = sim.create()
    await service.poller.poll_once()
    for path, parameter in [
        (f"/api/deltas?since={value}", "since"),
        (f"/api/deltas?limit={value}", "limit"),
        (f"/api/sessions/{made['id']}/activities?pageSize={value}", "pageSize"),
        (f"/api/sessions/{made['id']}/activities?pageToken={value}", "pageToken"),
    ]:
        if (parameter, value) == ("pageToken", ""):
            continue  # an empty pageToken is the first page (no nextPageToken to pass back)
        body = await rest_error(http, service, path)
        assert body["parameter"] == parameter, (path, body)
        assert "non-negative integer" in body["message"] or "from 1 to" in body["message"]
    for query, parameter in [
        (f"?since={value}", "since"),
        (f"?activities=1&since=0&activitiesSince={value}", "activitiesSince"),
    ]:
        body = await upgrade_error(http, service, query)
        assert body["parameter"] == parameter, (query, body)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("since=" + "A" * 5000, "since"),
        ("since=%3Cscript%3E%0d%0aX", "since"),
        ("limit=%3Cscript%3E", "limit"),
    ],
)
async def test_a_bad_rest_parameter_is_named_never_quoted(
    http: aiohttp.ClientSession, service: Service, query: str, parameter: str
) -> None:
    async with http.get(f"{service.url}/api/deltas?{query}", headers=AUTH) as resp:
        assert resp.status == 400
        text = await resp.text()
    body = msgspec.json.decode(text)
    assert body["parameter"] == parameter
    assert len(text) < 300 and "AAAA" not in text and "script" not in text, text


@pytest.mark.parametrize(
    "query",
    [
        "?snapshot=%3Cscript%3E",
        "?updates=%3Cscript%3E",
        "?batch=" + "A" * 5000,
        "?state=%3Cscript%3E",
        "?repository=%3Cscript%3E",
    ],
)
async def test_a_bad_upgrade_parameter_is_named_never_quoted(
    http: aiohttp.ClientSession, service: Service, query: str
) -> None:
    body = await upgrade_error(http, service, query)
    text = msgspec.json.encode(body).decode()
    assert body["parameter"] and "script" not in text and "AAAA" not in text, text


@pytest.mark.parametrize(
    ("message", "code", "says"),
    [
        ('{"type": "<script>", "id": 1}', "unknown_type", "type must be one of approvePlan"),
        ('{"type": "subscribe", "id": 1, "updates": "<script>"}', "invalid_argument",
         "updates must be full or patch"),
        ('{"type": "createSession", "id": 1, "prompt": "x", "requirePlanApproval": "<script>"}',
         "invalid_argument", "requirePlanApproval must be true or false"),
        ('{"type": "sendMessage", "id": 1, "sessionId": "1"}', "invalid_argument",
         "prompt is required"),
        ('{"type": "subscribe", "id": 1, "sessionIds": ["<script>", 5]}', "invalid_argument",
         "sessionIds[1] must be a string"),
        ('{"type": "subscribe", "id": {"<script>": 1}}', "bad_message",
         "id must be a string, a number, true, false or null"),
    ],
)  # fmt: skip
async def test_a_bad_command_is_described_in_the_services_words_never_quoted(
    http: aiohttp.ClientSession, service: Service, message: str, code: str, says: str
) -> None:
    ws = await connect(http, service)
    await ws.send_str(message)
    result = await receive_json(ws)
    assert result["error"]["code"] == code
    assert result["error"]["message"].startswith(says), result
    assert "script" not in result["error"]["message"]
    assert "Expected" not in result["error"]["message"] and "$." not in result["error"]["message"]


# -- 8, 9: subscriptions as understood; filters that could never match ---------------------


async def test_subscribe_answers_the_subscription_as_the_server_understood_it(
    http: aiohttp.ClientSession, service: Service
) -> None:
    ws = await connect(http, service)
    states = ["QUEUED"] * 500 + [" PLANNING", "QUEUED "]
    await ws.send_json({"type": "subscribe", "id": 1, "states": states, "sessionIds": ["b", "a"]})
    result = await receive_json(ws)
    assert result["ok"] is True, result
    assert result["subscription"] == {
        "sessionIds": ["a", "b"],
        "states": ["PLANNING", "QUEUED"],
    }
    await ws.send_json(
        {"type": "subscribe", "id": 2, "sessionIds": ["x"] * (MAX_FILTER_VALUES + 1)}
    )
    result = await receive_json(ws)
    assert result["error"] == {
        "code": "invalid_argument",
        "message": f"sessionIds: at most {MAX_FILTER_VALUES} values",
    }


@pytest.mark.parametrize(
    ("field", "values", "says"),
    [
        ("states", ["NOPE"], "states among STATE_UNSPECIFIED, QUEUED"),
        ("repositories", ["acme"], "GitHub repositories written owner/repo"),
        ("repositories", ["../.."], "GitHub repositories written owner/repo"),
        ("sessionIds", [""], "must not be empty"),
    ],
)
async def test_a_subscribe_filter_that_could_never_match_is_refused(
    http: aiohttp.ClientSession, service: Service, field: str, values: list[str], says: str
) -> None:
    ws = await connect(http, service)
    await ws.send_json({"type": "subscribe", "id": 1, field: values})
    result = await receive_json(ws)
    assert result["error"]["code"] == "invalid_argument"
    assert result["error"]["message"].startswith(f"{field}: ")
    assert says in result["error"]["message"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?state=NOPE", "state"),
        ("?state=QUEUED,", "state"),
        ("?sessionId=", "sessionId"),
        ("?repository=acme", "repository"),
        ("?repository=acme/..", "repository"),
    ],
)
async def test_a_connect_filter_that_could_never_match_is_refused(
    http: aiohttp.ClientSession, service: Service, query: str, parameter: str
) -> None:
    body = await upgrade_error(http, service, query)
    assert body["parameter"] == parameter
    if query == "?state=NOPE":
        assert all(state in body["message"] for state in SESSION_STATES)


async def test_an_empty_session_id_on_deltas_is_refused(
    http: aiohttp.ClientSession, service: Service
) -> None:
    body = await rest_error(http, service, "/api/deltas?sessionId=")
    assert body["parameter"] == "sessionId"


# -- 10: createSession is strict -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": "x", "repo": "acme/api"}, "unknown fields: repo;"),
        ({"prompt": "x", "<script>": 1, "b": 2}, "unknown fields: b and 1 more;"),
        ({"prompt": "x", "repository": "../.."}, "repository must be a GitHub owner/repo"),
        ({"prompt": "x", "repository": "acme/.."}, "repository must be a GitHub owner/repo"),
        ({"prompt": "x", "repository": "-acme/api"}, "repository must be a GitHub owner/repo"),
        ({"prompt": "x", "repository": "ac_me/api"}, "repository must be a GitHub owner/repo"),
        (
            {"prompt": "x", "requirePlanApproval": "yes"},
            "requirePlanApproval must be true or false",
        ),
    ],
)
async def test_create_session_refuses_unknown_fields_and_names_github_would_refuse(
    http: aiohttp.ClientSession, service: Service, sim: Simulator, body: Any, says: str
) -> None:
    before = len(sim)
    async with http.post(f"{service.url}/api/sessions", json=body, headers=AUTH) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["error"] == "invalid_argument"
    assert answer["message"].startswith(says), answer
    assert "script" not in answer["message"]
    ws = await connect(http, service)
    await ws.send_json({"type": "createSession", "id": 1, **body})
    result = await receive_json(ws)
    assert result["error"]["code"] == "invalid_argument"
    assert result["error"]["message"] == answer["message"]
    assert len(sim) == before


async def test_create_session_takes_a_github_repository_with_dots_and_dashes(
    http: aiohttp.ClientSession, service: Service
) -> None:
    body = {"prompt": "x", "repository": "acme/web-app"}
    async with http.post(f"{service.url}/api/sessions", json=body, headers=AUTH) as resp:
        assert resp.status == 201, await resp.text()
