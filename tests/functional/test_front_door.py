"""The front door of a real `control-room serve`, probed the way an attacker would (issue 10).

One service for the module; every test connects from its own loopback address so that
per-address throttling in one test never shows in another. The teardown checks the whole
of stderr: only JSON lines, and no token or upstream password anywhere.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Iterator

import aiohttp
import pytest

from control_room.secret import fingerprint
from tests.conftest import MS, TOKEN
from tests.functional.serve import (
    Serve,
    body_of,
    fresh_source,
    header_of,
    raw_request,
    status_of,
    upgrade,
)

VIEWER = "viewer.short"  # a read-only token under 16 characters: a start-up warning
UPSTREAM_PASSWORD = "pw-s3cret"
SECRETS = (TOKEN, VIEWER, UPSTREAM_PASSWORD)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    server = Serve(
        {
            "LOCAL_TOKEN": TOKEN,
            "LOCAL_READONLY_TOKEN": VIEWER,
            "JULES_API_KEY": "sim-key",
            # Nothing listens there: the service runs, its polls fail (and are logged).
            "JULES_API_BASE": f"http://user:{UPSTREAM_PASSWORD}@127.0.0.1:{dead_port()}/v1alpha",
            "POLL_INTERVAL_MS": "60000",
        }
    ).start()
    yield server
    assert server.stop() == 0
    text = server.stderr
    for secret in SECRETS:
        assert secret not in text
    server.lines()  # every line is JSON


def test_the_upstream_password_is_redacted_from_the_listening_line(serve: Serve) -> None:
    listening = next(x for x in serve.lines() if x["msg"] == "Service listening")
    assert listening["upstream"] == f"http://***@127.0.0.1:{listening['upstream'].split(':')[2]}"
    assert UPSTREAM_PASSWORD not in serve.stderr


def test_a_short_token_is_a_warning_naming_its_variable_not_its_value(serve: Serve) -> None:
    warnings = [x for x in serve.lines() if x["msg"] == "Token shorter than recommended"]
    assert [(w["level"], w["variable"], w["fingerprint"]) for w in warnings] == [
        ("warning", "LOCAL_READONLY_TOKEN", fingerprint(VIEWER))
    ]


def test_a_token_that_is_not_utf8_is_a_401_not_a_500(serve: Serve) -> None:
    ws = raw_request(serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer.\xff\xfe"))
    assert status_of(ws) == 401
    assert body_of(ws)["error"] == "unauthorized"
    rest = raw_request(
        serve.port, b"GET /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n\r\n"
    )
    assert status_of(rest) == 401
    assert (
        header_of(rest, "WWW-Authenticate") == 'Bearer realm="control-room", error="invalid_token"'
    )


MALFORMED = [
    b"GET /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Protocol: bearer.%s\x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: bearer.%s" + b"x" * 9000 + b"\r\n\r\n",
    b"GET /?token=%s\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /?token=%s HTTP/1.1\r\nHost: x\r\nX-Long: " + b"y" * 9000 + b"\r\n\r\n",
]


def test_malformed_requests_never_repeat_the_token_in_the_answer_or_the_log(
    serve: Serve,
) -> None:
    before = serve.stderr.count("Malformed HTTP request refused")
    for template in MALFORMED:
        answer = raw_request(serve.port, template % TOKEN.encode())
        assert status_of(answer) == 400, answer[:200]
        assert TOKEN.encode() not in answer
        body = body_of(answer)
        assert body["error"] == "bad_request"
        assert body["message"].startswith("malformed request: ")
    serve.wait_for("Malformed HTTP request refused", before + len(MALFORMED))
    refused = [x for x in serve.lines() if x["msg"] == "Malformed HTTP request refused"]
    assert {x["level"] for x in refused} == {"info"}
    assert {x["error"] for x in refused} >= {"BadHttpMessage", "LineTooLong", "InvalidURLError"}
    assert "Traceback" not in serve.stderr
    assert TOKEN not in serve.stderr


def test_a_token_in_an_unknown_path_is_not_repeated_in_the_404(serve: Serve) -> None:
    answer = raw_request(serve.port, b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % TOKEN.encode())
    assert status_of(answer) == 404
    assert TOKEN.encode() not in answer


@pytest.mark.parametrize(
    "lines",
    [
        (b"Sec-WebSocket-Protocol: control-room.v1", b"Sec-WebSocket-Protocol: bearer.%s"),
        (b"Sec-WebSocket-Protocol: bearer.%s", b"Sec-WebSocket-Protocol: control-room.v1"),
    ],
)
def test_subprotocol_offers_on_two_header_lines_are_one_list(
    serve: Serve, lines: tuple[bytes, bytes]
) -> None:
    answer = raw_request(serve.port, upgrade(*(x.replace(b"%s", TOKEN.encode()) for x in lines)))
    assert status_of(answer) == 101
    assert header_of(answer, "Sec-WebSocket-Protocol") == "control-room.v1"
    assert TOKEN.encode() not in answer


def test_the_authorization_header_is_accepted_on_an_upgrade(serve: Serve) -> None:
    bare = raw_request(serve.port, upgrade(b"Authorization: Bearer " + TOKEN.encode()))
    assert status_of(bare) == 101
    assert header_of(bare, "Sec-WebSocket-Protocol") is None  # nothing offered, none selected
    offered = raw_request(
        serve.port,
        upgrade(
            b"Authorization: Bearer " + TOKEN.encode(), b"Sec-WebSocket-Protocol: control-room.v1"
        ),
    )
    assert status_of(offered) == 101
    assert header_of(offered, "Sec-WebSocket-Protocol") == "control-room.v1"


@pytest.mark.parametrize(
    ("request_bytes", "place"),
    [
        (upgrade(b"Sec-WebSocket-Protocol: Bearer %s"), "'Bearer <token>'"),
        (upgrade(query=b"?token=%s"), "?token="),
        (upgrade(query=b"?access_token=%s"), "?access_token="),
        (upgrade(b"Authorization: Token %s"), "scheme other than Bearer"),
    ],
)
def test_a_token_in_the_wrong_place_gets_a_401_saying_where_it_goes(
    serve: Serve, request_bytes: bytes, place: str
) -> None:
    answer = raw_request(serve.port, request_bytes.replace(b"%s", TOKEN.encode()))
    assert status_of(answer) == 401
    assert TOKEN.encode() not in answer
    message = body_of(answer)["message"]
    assert place in message
    assert "Sec-WebSocket-Protocol: bearer.<token>" in message


def test_a_rest_401_carries_a_bearer_challenge_and_says_where_the_token_goes(
    serve: Serve,
) -> None:
    answer = raw_request(
        serve.port, b"GET /api/sessions?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % TOKEN.encode()
    )
    assert status_of(answer) == 401
    assert header_of(answer, "WWW-Authenticate") == 'Bearer realm="control-room"'
    assert TOKEN.encode() not in answer
    message = body_of(answer)["message"]
    assert "?token=" in message and "Authorization: Bearer <token>" in message


def test_wrong_tokens_from_one_address_are_throttled_and_others_are_not(serve: Serve) -> None:
    guesser = fresh_source()
    statuses = [
        status_of(
            raw_request(
                serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer.guess-%d" % n), source=guesser
            )
        )
        for n in range(12)
    ]
    assert statuses == [401] * 10 + [429] * 2
    # Past the burst the right token gets no signal either: 429 before any check.
    blocked = raw_request(
        serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode()), source=guesser
    )
    assert status_of(blocked) == 429
    assert 1 <= int(header_of(blocked, "Retry-After") or 0) <= 6
    rest = raw_request(
        serve.port,
        b"GET /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
        % TOKEN.encode(),
        source=guesser,
    )
    assert status_of(rest) == 429
    # Another address with the right token is served at once.
    other = raw_request(serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode()))
    assert status_of(other) == 101
    serve.wait_for("Too many failed authentications")
    bursts = [x for x in serve.lines() if x["msg"].startswith("Too many failed authentications")]
    assert [(b["level"], b["remote"]) for b in bursts if b["remote"] == guesser] == [
        ("warning", guesser)
    ]
    metrics = raw_request(
        serve.port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n"
        % TOKEN.encode(),
    ).decode()
    assert 'control_room_auth_throttled_total{transport="websocket"} 3.0' in metrics
    assert 'control_room_auth_throttled_total{transport="rest"} 1.0' in metrics


TOKENLESS = [
    upgrade(),  # a tool probing without a token
    upgrade(b"Sec-WebSocket-Protocol: control-room.v1"),
    upgrade(b"Sec-WebSocket-Protocol: control-room.v1, bearer."),  # before the token is typed
    upgrade(b"Sec-WebSocket-Protocol: Bearer not-the-token"),  # misplaced: never checked
    upgrade(query=b"?token=not-the-token"),
    b"GET /api/sessions HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\n\r\n",  # empty
    b"GET /api/sessions?access_token=not-the-token HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Token not-the-token\r\n\r\n",
]


def test_requests_without_a_token_never_lock_out_the_right_token(serve: Serve) -> None:
    """Review 10-1: tokenless and misplaced requests are 401s that use up no bucket."""
    client = fresh_source()
    statuses = [
        status_of(raw_request(serve.port, request, source=client))
        for _ in range(4)  # 36 requests: more than three bursts' worth
        for request in TOKENLESS
    ]
    assert statuses == [401] * len(statuses)
    right = raw_request(
        serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode()), source=client
    )
    assert status_of(right) == 101
    rest = raw_request(
        serve.port,
        b"GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % TOKEN.encode(),
        source=client,
    )
    assert status_of(rest) == 200
    # The bucket is whole: wrong tokens from the same address still get the full burst,
    # then 429; and even then a request without a token is told where the token goes.
    guesses = [
        status_of(
            raw_request(
                serve.port, upgrade(b"Sec-WebSocket-Protocol: bearer.guess-%d" % n), source=client
            )
        )
        for n in range(11)
    ]
    assert guesses == [401] * 10 + [429]
    tokenless = raw_request(serve.port, upgrade(), source=client)
    assert status_of(tokenless) == 401
    assert "Sec-WebSocket-Protocol: bearer.<token>" in body_of(tokenless)["message"]


def test_an_unsupported_websocket_version_is_426_naming_version_13(serve: Serve) -> None:
    request = upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode())
    answer = raw_request(serve.port, request.replace(b"Version: 13", b"Version: 8"))
    # RFC 6455 section 4.4: 426 Upgrade Required, and the versions the server speaks.
    assert status_of(answer) == 426
    assert header_of(answer, "Sec-WebSocket-Version") == "13"
    assert body_of(answer)["error"] == "upgrade_required"


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),  # no Origin: not a browser
        (b"http://127.0.0.1:%d", 101),  # the page the service itself served
        (b"https://evil.example", 403),
        (b"http://127.0.0.1:1", 403),  # same host, another port: another origin
        (b"null", 403),
    ],
)
def test_upgrades_from_other_origins_are_refused_before_the_token_is_checked(
    serve: Serve, origin: bytes | None, status: int
) -> None:
    host = b"Host: 127.0.0.1:%d" % serve.port
    request = upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode()).replace(
        b"Host: 127.0.0.1", host
    )
    if origin is not None:
        request = (
            request[:-2]
            + b"Origin: "
            + origin.replace(b"%d", str(serve.port).encode())
            + b"\r\n\r\n"
        )
    answer = raw_request(serve.port, request)
    assert status_of(answer) == status
    if status == 403:
        assert body_of(answer)["error"] == "forbidden_origin"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/sessions"])
def test_the_dashboard_is_served_with_security_headers(serve: Serve, path: str) -> None:
    answer = raw_request(
        serve.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
    )
    policy = header_of(answer, "Content-Security-Policy") or ""
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert header_of(answer, "X-Content-Type-Options") == "nosniff"
    assert header_of(answer, "Referrer-Policy") == "no-referrer"


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = b"\x01\x02\x03\x04"
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_client_that_floods_pings_then_resets_is_an_info_line_not_a_traceback(
    serve: Serve,
) -> None:
    before = serve.stderr.count('"msg":"WebSocket client disconnected"')
    sock = socket.socket()
    # A small receive window, set before connecting: the server's pongs back up at once,
    # so it is waiting to write (paused) when the reset arrives.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((fresh_source(), 0))
    sock.connect(("127.0.0.1", serve.port))
    sock.sendall(upgrade(b"Sec-WebSocket-Protocol: bearer." + TOKEN.encode()))
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    sock.settimeout(0.05)
    ping = _masked(0x9, b"p" * 125)
    deadline = time.monotonic() + 1.0
    sent = 0
    cut = False
    while time.monotonic() < deadline:
        try:
            sent += sock.send(ping * 64)
        except TimeoutError:
            break  # the server stopped reading: its pongs are not being taken
        except (ConnectionResetError, BrokenPipeError):
            cut = True  # the server cut it first: unread pongs past MAX_BUFFER_BYTES
            break
    assert cut or sent > 100_000
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # an RST, not a FIN
    serve.wait_for('"msg":"WebSocket client disconnected"', before + 1)
    last = [x for x in serve.lines() if x["msg"] == "WebSocket client disconnected"][-1]
    assert last["level"] == "info"
    assert last["reason"] in ("connection_reset", "backpressure_limit")
    assert '"level":"error"' not in serve.stderr
    assert "Traceback" not in serve.stderr


async def test_a_read_only_token_reads_like_any_other(serve: Serve) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{serve.port}/", protocols=("control-room.v1", f"bearer.{VIEWER}")
        )
        assert ws.protocol == "control-room.v1"
        await ws.close()
        headers = {"Authorization": f"Bearer {VIEWER}"}
        async with http.get(f"{serve.url}/api/stats", headers=headers) as resp:
            assert resp.status == 200
            stats = json.loads(await resp.text())
    assert "clients" in stats
    await asyncio.sleep(10 * MS)
