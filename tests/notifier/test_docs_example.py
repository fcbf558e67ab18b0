"""The receiver example in docs/how-to/webhooks.md works against real deliveries."""

from __future__ import annotations

import asyncio
import re
import threading
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MS
from tests.notifier.conftest import SECRET, NotifierFactory, Stream, eventually, outcome
from tests.notifier.receiver import Receiver

DOC = Path(__file__).parents[2] / "docs" / "how-to" / "webhooks.md"


def example() -> dict[str, Any]:
    """The doc's Python example, run as a module that is not __main__."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1
    namespace: dict[str, Any] = {"__name__": "webhook_example"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    namespace["SECRET"] = SECRET
    return namespace


async def test_the_documented_verify_accepts_real_deliveries_and_refuses_tampering(
    receiver: Receiver, make_notifier: NotifierFactory, stream: Stream
) -> None:
    verify = example()["verify"]
    notifier = await make_notifier(receiver.url)
    notifier.enqueue(stream.batch(2))
    await receiver.wait_accepted(2)
    for got in receiver.accepted:
        assert verify(SECRET, got.headers, got.body)["seq"] == got.seq
        with pytest.raises(ValueError, match="signature"):
            verify(SECRET, got.headers, got.body + b" ")
        with pytest.raises(ValueError, match="signature"):
            verify("whsec_" + "B" * 44, got.headers, got.body)
        with pytest.raises(ValueError, match="missing"):
            verify(SECRET, {}, got.body)


async def test_the_documented_server_takes_deliveries_in_order(
    make_notifier: NotifierFactory, stream: Stream, capsys: pytest.CaptureFixture[str]
) -> None:
    module = example()
    server = HTTPServer(("127.0.0.1", 0), module["Hook"])
    server.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 10 * MS}, daemon=True
    )
    thread.start()
    try:
        port = server.server_address[1]
        notifier = await make_notifier(f"http://127.0.0.1:{port}/hook")
        notifier.enqueue(stream.batch(3))
        await eventually(lambda: outcome(notifier.metrics, "delivered") == 3)
        assert outcome(notifier.metrics, "rejected") == 0
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == ["1", "2", "3"]
