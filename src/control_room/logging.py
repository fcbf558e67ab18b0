"""Structured logs: one event name per thing that happens, fields not sentences.

`json` writes one object per line with `level`, `time`, `msg` and the event's fields (the
seed's format); `console` writes the same for humans. Every line the process writes goes
through here, the libraries' too (aiohttp, asyncio, warnings): `configure` puts the one
handler on the root logger as well, at the configured level.

What reaches a line is guarded, because much of it comes from whoever can reach the port:
- secrets never do: callers pass fields, and no field ever holds a token or key; as a
  second line of defence, every registered secret (`add_secrets`) and the password of any
  URL is replaced by `***` in the finished line;
- a library's line keeps its message, cut to `LIBRARY_MESSAGE_MAX_CHARS`; an error the
  client caused (a malformed request, a reset connection) loses its traceback and its
  exception text, which quotes the request, and becomes one info line naming the class;
- events an outsider can trigger at will (every library logger, and the service's
  `server` and `auth` loggers) are rate-limited per event: `LOG_BURST` lines at once,
  then `LOG_REFILL_PER_S`; the next line let through says how many were `suppressed`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from aiohttp import WebSocketError
from aiohttp.http_exceptions import HttpProcessingError

ROOT: Final = "control_room"
RATE_LIMITED: Final = frozenset({f"{ROOT}.server", f"{ROOT}.auth"})
"""The service's own loggers whose events outsiders trigger (refusals, bad requests)."""
LOG_BURST: Final = 20
"""Lines of one event let through at once: enough to see what a burst looked like."""
LOG_REFILL_PER_S: Final = 1.0
"""Then one line of that event a second: a flood costs a line a second, not megabytes."""
MAX_RATE_KEYS: Final = 1_000
"""Distinct events tracked; library message templates are few, so this is never reached."""
LIBRARY_MESSAGE_MAX_CHARS: Final = 300
"""A library's message is kept to a line's worth; anything longer is quoting input."""
TRACEBACK_MAX_CHARS: Final = 8_000
"""A traceback of the service's own failure is kept whole up to this size."""
REDACTED: Final = "***"
NODE_FIELD: Final = "nodeId"
"""The field naming the cluster node a line comes from (`set_node`)."""
CLIENT_ERRORS: Final = (
    HttpProcessingError,
    ConnectionError,
    asyncio.IncompleteReadError,
    WebSocketError,
)
"""Exceptions a client causes (malformed input, vanishing): one line, never a traceback."""

_encoder: Final = msgspec.json.Encoder()
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_URL_USERINFO: Final = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@\"']+@")


class _Secrets:
    """The registered secrets, replaced wherever they appear in a finished line."""

    def __init__(self) -> None:
        self.values: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            self.values = self.values | {v for v in values if v}

    def scrub(self, text: str) -> str:
        for secret in self.values:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "@" in text:
            text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
        return text


_secrets: Final = _Secrets()


def add_secrets(values: Iterable[str]) -> None:
    """Register secrets (tokens, keys) that must never appear in a log line."""
    _secrets.add(values)


def redact_url(url: str) -> str:
    """`url` with any user name and password replaced by `***`, for logs and messages."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # an unparsable URL: blank every userinfo-looking part
        return _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", url)
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}{port}"))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


def _ours(name: str) -> bool:
    return name == ROOT or name.startswith(f"{ROOT}.")


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
            line["error"] = self.formatException(record.exc_info)[-TRACEBACK_MAX_CHARS:]
        return _secrets.scrub(_encoder.encode(line).decode())


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 info  Broadcasting session delta type=updated sessionId=…` for humans; a
    cluster node's lines begin with its id (`12:00:01 [node-2] info …`), so the lines of
    several nodes sharing one terminal (`make cluster`) can be told apart."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        found = _fields(record)
        node = found.pop(NODE_FIELD, None)
        if node is not None:
            stamp = f"{stamp} [{node}]"
        fields = " ".join(f"{k}={v}" for k, v in found.items())
        text = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        if fields:
            text = f"{text}  {fields}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)[-TRACEBACK_MAX_CHARS:]
            text = f"{text}\n{trace}"
        return _secrets.scrub(text)


def _tame(record: logging.LogRecord) -> None:
    """Make a library's record safe: its message cut short, a client's error one line."""
    try:
        message = record.getMessage()
    except Exception:  # a library's bad format string: keep the template alone
        message = str(record.msg)
    if len(message) > LIBRARY_MESSAGE_MAX_CHARS:
        message = message[:LIBRARY_MESSAGE_MAX_CHARS] + "…"
    record.msg, record.args = message, None
    record.logger = record.name
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, CLIENT_ERRORS):
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.error = type(exc).__name__
        if record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, "INFO"


class _RateLimit:
    """Token buckets per event (logger, template, level), bounded in number."""

    def __init__(self, burst: float = LOG_BURST, refill_per_s: float = LOG_REFILL_PER_S) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self._buckets: OrderedDict[tuple[str, str, int], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: tuple[str, str, int]) -> tuple[bool, int]:
        """Whether a line of this event may go out now, and how many were suppressed."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = [float(self.burst), now, 0.0]
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.refill_per_s)
            allowed = tokens >= 1
            suppressed = 0
            if allowed:
                tokens -= 1
                suppressed, bucket[2] = int(bucket[2]), 0.0
            else:
                bucket[2] += 1
            bucket[0], bucket[1] = tokens, now
            self._buckets[key] = bucket
            while len(self._buckets) > MAX_RATE_KEYS:
                self._buckets.popitem(last=False)
        return allowed, suppressed


class _Node(logging.Filter):
    """Names this process's cluster node on every line (`nodeId`), once it is known."""

    def __init__(self) -> None:
        super().__init__()
        self.node_id: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True: the record only gains the field (a line's own `nodeId` stays)."""
        if self.node_id is not None and NODE_FIELD not in record.__dict__:
            setattr(record, NODE_FIELD, self.node_id)
        return True


_node: Final = _Node()


def set_node(node_id: str | None) -> None:
    """Put `node_id` on every later line of this process (None: no node named).

    One process is one node; nodes run in one process (tests) share the last name set.
    """
    _node.node_id = node_id


class Guard(logging.Filter):
    """Tames library records and rate-limits the events outsiders can trigger."""

    def __init__(self) -> None:
        super().__init__()
        self._limit = _RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        """False drops the record (rate limit); library records are rewritten in place."""
        ours = _ours(record.name)
        if ours and record.name not in RATE_LIMITED:
            return True
        key = (record.name, str(record.msg), record.levelno)
        if not ours:
            _tame(record)
        allowed, suppressed = self._limit.allow(key)
        if allowed and suppressed:
            record.suppressed = suppressed
        return allowed


class Occasional:
    """Counts repeated events and says when one more line about them is due.

    `count(n)` returns how many happened since the last line when at least `interval_s`
    has passed since it (the first call always), else None: one line per interval for a
    condition that may last (out of descriptors, at the connection cap).
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._pending = 0
        self._last = float("-inf")

    def count(self, n: int = 1) -> int | None:
        """Record `n` events; the number to report now, or None."""
        self._pending += n
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return None
        self._last, reported, self._pending = now, self._pending, 0
        return reported


def _not_protocol_mismatch(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("%s: Client protocols")


def drop_protocol_mismatch_warnings() -> None:
    """Drop aiohttp's "client protocols don't overlap" warning (it quotes the offer).

    The service selects the subprotocol itself, from every line of the offer (aiohttp reads
    only the first), and tells aiohttp none: that warning would fire on every upgrade,
    carrying the client's bearer entry. Idempotent.
    """
    logging.getLogger("aiohttp.websocket").addFilter(_not_protocol_mismatch)


def configure(level: str = "info", fmt: str = "json") -> None:
    """Send every log line of the process to stderr in the chosen format, guarded."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(Guard())
    handler.addFilter(_node)
    ours = logging.getLogger(ROOT)
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    # Libraries (aiohttp.server, aiohttp.web, aiohttp.websocket, asyncio, warnings) log
    # to their own loggers, which end at the root: the same handler, the same level.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    drop_protocol_mismatch_warnings()
    # aiohttp's access log is one line per request with no structure; ours says more.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(name: str) -> logging.Logger:
    """A logger under the service's root, e.g. `get("ws")`."""
    return logging.getLogger(f"{ROOT}.{name}")
