"""Structured logs: one event name per thing that happens, fields not sentences.

`json` writes one object per line with `level`, `time`, `msg` and the event's fields (the
seed's format); `console` writes the same for humans. Secrets never reach this module:
callers pass fields, and no field ever holds a token or key.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

ROOT: Final = "control_room"
_encoder: Final = msgspec.json.Encoder()
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, time, msg, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname.lower(),
            "time": _iso(record.created),
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 info  Broadcasting session delta type=updated sessionId=…` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        if fields:
            text = f"{text}  {fields}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def configure(level: str = "info", fmt: str = "json") -> None:
    """Send the service's logs to stderr in the chosen format; quiet noisy libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger(ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp's access log is one line per request with no structure; ours says more.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(name: str) -> logging.Logger:
    """A logger under the service's root, e.g. `get("ws")`."""
    return logging.getLogger(f"{ROOT}.{name}")
