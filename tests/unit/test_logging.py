"""Every line guarded: secrets and URL passwords scrubbed, library records tamed, floods cut."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from control_room import logging as logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The service's logging set up as `serve` does, writing to a buffer."""
    root, ours = logging.getLogger(), logging.getLogger(logs.ROOT)
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.level, ours.propagate)
    stream = io.StringIO()
    logs.set_node(None)  # an in-process cluster test may have named one
    logs.configure("info", "json")
    for logger in (root, ours):
        handler = logger.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]
    ours.handlers[:], ours.level, ours.propagate = saved[2], saved[3], saved[4]
    logging.captureWarnings(False)
    logs.set_node(None)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_redact_url_hides_user_and_password() -> None:
    assert logs.redact_url("http://user:pw@host:8080/v1?x=1") == "http://***@host:8080/v1?x=1"
    assert logs.redact_url("https://jules.googleapis.com/v1alpha") == (
        "https://jules.googleapis.com/v1alpha"
    )
    assert logs.redact_url("http://user:pw@[::1]/") == "http://***@[::1]/"


def test_registered_secrets_and_url_passwords_never_reach_a_line(captured: io.StringIO) -> None:
    logs.add_secrets(["registered-secret-0123"])
    log = logs.get("test")
    log.warning("oops", extra={"detail": "token registered-secret-0123 in http://a:b@h/x"})
    text = captured.getvalue()
    assert "registered-secret-0123" not in text and "a:b@" not in text
    assert lines(captured)[0]["detail"] == "token *** in http://***@h/x"


def test_a_library_error_caused_by_a_client_is_one_info_line(captured: io.StringIO) -> None:
    library = logging.getLogger("aiohttp.server")
    try:
        raise BadHttpMessage("Invalid header value char: b'Authorization: Bearer leaked'")
    except BadHttpMessage:
        library.exception("Error handling request from %s", "203.0.113.9")
    (line,) = lines(captured)
    assert line["level"] == "info"
    assert line["msg"] == "Error handling request from 203.0.113.9"
    assert (line["logger"], line["error"]) == ("aiohttp.server", "BadHttpMessage")
    assert "leaked" not in captured.getvalue() and "Traceback" not in captured.getvalue()


def test_a_library_message_is_cut_to_a_line(captured: io.StringIO) -> None:
    logging.getLogger("asyncio").error("%s", "x" * 10_000)
    (line,) = lines(captured)
    assert len(str(line["msg"])) <= logs.LIBRARY_MESSAGE_MAX_CHARS + 1


def test_a_flood_of_one_event_is_rate_limited_and_the_next_line_counts_the_rest(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    library = logging.getLogger("aiohttp.websocket")
    for _ in range(1000):
        library.warning("something from %s", "outside")
    assert len(lines(captured)) == logs.LOG_BURST
    now[0] += 1 / logs.LOG_REFILL_PER_S
    library.warning("something from %s", "outside")
    last = lines(captured)[-1]
    assert last["suppressed"] == 1000 - logs.LOG_BURST


def test_the_services_own_events_are_not_rate_limited(captured: io.StringIO) -> None:
    log = logs.get("hub")
    for n in range(100):
        log.info("Broadcasting session delta", extra={"seq": n})
    assert len(lines(captured)) == 100


def test_warnings_go_through_the_same_handler(captured: io.StringIO) -> None:
    logging.getLogger("py.warnings").warning("a DeprecationWarning text")
    assert lines(captured)[0]["logger"] == "py.warnings"


def test_a_cluster_nodes_lines_name_the_node(captured: io.StringIO) -> None:
    logs.set_node("node-2")
    logs.get("cluster").info("Leading", extra={"fence": 3})
    logs.get("cluster").info("Stopped leading", extra={"nodeId": "node-9"})  # its own stays
    assert [(line["msg"], line["nodeId"]) for line in lines(captured)] == [
        ("Leading", "node-2"),
        ("Stopped leading", "node-9"),
    ]
    record = logging.makeLogRecord({"msg": "Leading", "levelname": "INFO", "nodeId": "node-2"})
    assert " [node-2] info    Leading" in logs.ConsoleFormatter().format(record)
