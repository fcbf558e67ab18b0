"""The Jules API key never leaves the process, even when the upstream echoes it (review 10-3).

A real `control-room serve` polls a fake upstream on 127.0.0.1 that answers every listing
with an error quoting the key it was sent: a 400 in Google's envelope (the key in its
message and in a `?key=` URL) and a 500 in plain text. The key must appear in no log line
(at debug level, where every retry is logged), no 503 body, nor /healthz, /api/stats or
/metrics; and again after the key is rotated in its file (SIGHUP) to one the fake echoes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from control_room.logging import JsonFormatter
from tests.conftest import MS, TOKEN, ServiceFactory
from tests.fake_upstream import FakeUpstream, Reply
from tests.functional.serve import Serve

# Random, so no secret another test registered in this process is part of them (the log's
# redaction list is process-wide and only grows).
OLD_KEY = "AIzaSy" + secrets.token_hex(16)
NEW_KEY = "AIzaSy" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def echoing() -> Callable[[str], Reply]:
    """Replies that quote the key they were sent, alternating a 400 envelope and a 500."""
    turn = itertools.count()

    def reply(key: str) -> Reply:
        if next(turn) % 2 == 0:
            message = (
                f"API key not valid: {key}. Visit "
                f"https://console.example/apis/credentials?key={key}&project=42"
            )
            return Reply(
                400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
            )
        # Plain text, the key straddling where the quote of such a body is cut (200 chars).
        text = "x" * 190 + key + f" GET /v1alpha/sessions?pageSize=100&key={key}"
        return Reply(500, body=text.encode(), headers={"Content-Type": "text/plain"})

    return reply


async def requests_with(fake: FakeUpstream, key: str, count: int) -> None:
    """Wait until the fake has been sent `key` `count` times."""
    async with asyncio.timeout(10_000 * MS):
        while fake.keys_seen.count(key) < count:  # noqa: ASYNC110
            await asyncio.sleep(10 * MS)


async def answers(http: aiohttp.ClientSession, serve: Serve) -> dict[str, str]:
    """The text of every answer that could carry an upstream error, by route."""
    texts: dict[str, str] = {}
    for route, headers in [
        ("/api/sessions", AUTH),  # not ready: the 503 `not_ready` body
        ("/api/stats", AUTH),
        ("/healthz", {}),
        ("/readyz", {}),
        ("/metrics", AUTH),
    ]:
        async with http.get(serve.url + route, headers=headers) as resp:
            texts[route] = await resp.text()
    return texts


def assert_key_nowhere(key: str, serve: Serve, texts: dict[str, str]) -> None:
    assert key not in serve.stderr
    for route, text in texts.items():
        assert key not in text, route
    # The errors were captured (so redacted, not merely absent).
    assert "***" in texts["/api/stats"]
    assert "***" in texts["/api/sessions"]
    assert "not_ready" in texts["/api/sessions"]


async def test_a_key_echoed_by_the_upstream_is_redacted_everywhere_also_after_rotation(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key_file = tmp_path / "jules-api-key"
    key_file.write_text(OLD_KEY + "\n")
    async with FakeUpstream(OLD_KEY) as fake:
        fake.fail_with = echoing()
        serve = Serve(
            {
                "LOCAL_TOKEN": TOKEN,
                "JULES_API_KEY_FILE": str(key_file),
                "JULES_API_BASE": fake.base_url,
                "POLL_INTERVAL_MS": "50",
                "LOG_LEVEL": "debug",
            }
        )
        try:
            await asyncio.to_thread(serve.start)
            await requests_with(fake, OLD_KEY, 4)  # both kinds of answer, retries included
            await asyncio.to_thread(serve.wait_for, '"msg":"Upstream still failing"')
            assert_key_nowhere(OLD_KEY, serve, await answers(http, serve))

            fake.key = NEW_KEY
            key_file.write_text(NEW_KEY + "\n")
            serve.proc.send_signal(signal.SIGHUP)  # re-read now; the poller wakes up
            await requests_with(fake, NEW_KEY, 4)
            await asyncio.to_thread(serve.wait_for, '"msg":"Secret reloaded"')
            await asyncio.sleep(200 * MS)  # the last answer's error is recorded
            texts = await answers(http, serve)
            assert_key_nowhere(NEW_KEY, serve, texts)
            assert_key_nowhere(OLD_KEY, serve, texts)
        finally:
            assert serve.stop() == 0
        assert OLD_KEY not in serve.stderr and NEW_KEY not in serve.stderr
        serve.lines()  # every line is JSON


async def test_the_key_is_registered_with_log_redaction_at_start_and_on_rotation(
    make_fake_service: ServiceFactory, fake: FakeUpstream, tmp_path: Path
) -> None:
    """The second line of defence: a line that quotes the key anyway shows `***`."""
    key_file = tmp_path / "jules-api-key"
    key_file.write_text(OLD_KEY + "\n")
    fake.key = OLD_KEY
    service = await make_fake_service(jules_api_key="", jules_api_key_file=key_file)
    record = logging.LogRecord("control_room.test", logging.INFO, "", 0, "%s", (OLD_KEY,), None)
    assert OLD_KEY not in JsonFormatter().format(record)
    fake.key = NEW_KEY
    key_file.write_text(NEW_KEY + "\n")
    service.reload_secrets()
    for key in (OLD_KEY, NEW_KEY):
        record = logging.LogRecord("control_room.test", logging.INFO, "", 0, "k=%s.", (key,), None)
        line = JsonFormatter().format(record)
        assert key not in line and "***." in line
