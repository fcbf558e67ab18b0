"""Settings from the environment (and a `.env` file); validation only, no side effects."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from control_room.auth import parse_tokens
from control_room.secret import MAX_SECRET_FILE_BYTES, SecretError, SecretSource, parse_single
from control_room.signing import BadSecret, secret_key

DEFAULT_PORT: Final = 3001
DEFAULT_JULES_API_BASE: Final = "https://jules.googleapis.com/v1alpha"
DEFAULT_POLL_INTERVAL_MS: Final = 5_000  # the seed's period: fresh enough, gentle on quota
DEFAULT_FULL_LISTING_INTERVAL_S: Final = 60.0
"""Every page is listed again within a minute of its last read: any change to an older
(mostly finished) session reaches clients within a minute, and deletions (which only a
complete listing may announce) too; between them a poll reads the first page only, so the
budget stays near 60 requests a minute at 2,500 sessions (see docs/topics/polling.md)."""
DEFAULT_STALL_AFTER_S: Final = 15 * 60.0
"""A working session silent for 15 minutes is flagged: Jules logs progress every minute or
so while it works, so a quarter of an hour of silence is worth a look."""
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 30_000  # the seed's period; proxies idle out at ~60 s
DEFAULT_MAX_BUFFER_BYTES: Final = 1_048_576  # the seed's 1 MiB, also Centrifugo's default
DEFAULT_HISTORY_SIZE: Final = 10_000  # ~10 MB of typical deltas; hours of a busy account
DEFAULT_DELTA_RETENTION_S: Final = 7 * 24 * 3600  # a week: covers a laptop closed over a weekend
DEFAULT_NOTIFY_TIMEOUT_MS: Final = 10_000  # a receiver slower than this is as good as down
DEFAULT_NOTIFY_MAX_AGE_S: Final = 24 * 3600  # a day of retries, then the delta is given up
DEFAULT_NOTIFY_QUEUE_SIZE: Final = 10_000  # bounded memory when nothing persists the outbox
DEFAULT_COMPRESSION_MIN_BYTES: Final = 512
"""Messages shorter than this go uncompressed: below about half a KiB the deflate framing
and the client's inflate cost more than the bytes saved."""
DEFAULT_LEASE_MS: Final = 10_000
"""The leader's lease: a killed leader is replaced within this (plus one retry), and a node
that stops hearing from Redis stops polling within it; ten seconds rides out a GC pause or
a slow Redis failover without a needless change of leader."""
MIN_LEASE_MS: Final = 100  # renewals run every third of it: shorter would be all renewing
DEFAULT_REDIS_PREFIX: Final = "control-room"
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "console")
T = TypeVar("T")


class ConfigError(ValueError):
    """One or more settings are missing or invalid; each problem names its variable.

    `problems` lists every (variable, problem) found in one pass, so a user fixes them all
    at once; `variable` is the first one's name. `str()` gives one line per problem.
    """

    def __init__(self, variable: str, problem: str, *more: tuple[str, str]) -> None:
        self.problems: list[tuple[str, str]] = [(variable, problem), *more]
        super().__init__("\n".join(f"{v}: {p}" for v, p in self.problems))
        self.variable = variable

    @classmethod
    def of(cls, problems: list[tuple[str, str]]) -> ConfigError:
        """One error carrying every problem (at least one)."""
        return cls(*problems[0], *problems[1:])


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service can be told. Field names mirror the environment variables."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    local_token: str = field(default="", repr=False)
    local_token_file: Path | None = None
    local_readonly_token: str = field(default="", repr=False)
    local_readonly_token_file: Path | None = None
    max_connections: int = 0  # 0: derived from the file limit at start-up
    allowed_origins: tuple[str, ...] = ()  # empty: the service's own origin only
    jules_api_key: str = field(default="", repr=False)
    jules_api_key_file: Path | None = None  # instead of jules_api_key: re-read when it changes
    jules_api_base: str = DEFAULT_JULES_API_BASE
    poll_interval: float = DEFAULT_POLL_INTERVAL_MS / 1000
    full_listing_interval: float = DEFAULT_FULL_LISTING_INTERVAL_S
    stall_after: float = DEFAULT_STALL_AFTER_S
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_MS / 1000
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    log_level: str = "info"
    log_format: str = "json"
    persist: bool = False
    data_dir: Path = Path("data")
    database_url: str = field(default="", repr=False)
    history_size: int = DEFAULT_HISTORY_SIZE
    delta_retention: float = DEFAULT_DELTA_RETENTION_S
    notify_webhooks: tuple[str, ...] = ()
    notify_webhook_secret: str = field(default="", repr=False)
    notify_timeout: float = DEFAULT_NOTIFY_TIMEOUT_MS / 1000
    notify_max_age: float = DEFAULT_NOTIFY_MAX_AGE_S
    notify_queue_size: int = DEFAULT_NOTIFY_QUEUE_SIZE
    metrics_public: bool = False
    compression: bool = True
    compression_min_bytes: int = DEFAULT_COMPRESSION_MIN_BYTES
    redis_url: str = field(default="", repr=False)  # set: a cluster member (may hold a password)
    redis_prefix: str = DEFAULT_REDIS_PREFIX  # every key this cluster uses starts with it
    lease: float = DEFAULT_LEASE_MS / 1000
    node_id: str = ""  # empty: host name and port, known once the port is bound


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file: `KEY=value` lines, `#` comments, optional quotes and `export`."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _on_off(env: Mapping[str, str], name: str) -> bool:
    """`on` (the default) or `off`; 1/0 and true/false too."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "on", "1", "true", "yes"):
        return True
    if raw in ("off", "0", "false", "no"):
        return False
    raise ConfigError(name, f"expected on or off, got {raw!r}")


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(name, f"expected 1/0 or true/false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(name, f"expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(name, f"expected an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h` or `7d`."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (raw[:-1], raw[-1]) if raw[-1] in units else (raw, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ConfigError(
            name, f"expected a duration like 90s, 15m, 12h or 7d, got {raw!r}"
        ) from None
    if value <= 0:
        raise ConfigError(name, f"must be positive, got {raw!r}")
    return value


def _token_file(env: Mapping[str, str], variable: str, problems: _Problems) -> Path | None:
    """`<variable>_FILE` as a path after checking both forms' tokens; problems are noted.

    Setting both the variable and its file is a problem; so is a token browsers could not
    send (outside the RFC 7230 token set). The file is read here only to report problems
    at start-up with the others; the service reads (and watches) it again.
    """
    value = env.get(variable, "")
    file_variable = f"{variable}_FILE"
    raw_path = env.get(file_variable, "").strip()
    if value.strip():
        try:
            parse_tokens(value)
        except ValueError as exc:
            problems.add(variable, str(exc))
    if not raw_path:
        return None
    path = Path(raw_path)
    if value:
        problems.add(file_variable, f"set {variable} or {file_variable}, not both")
    try:
        if path.stat().st_size > MAX_SECRET_FILE_BYTES:
            problems.add(file_variable, f"{path} is too large for a token file")
            return path
        parse_tokens(path.read_text(encoding="utf-8"), lines=True)
    except OSError as exc:
        problems.add(file_variable, f"cannot read {path}: {exc.strerror}")
    except UnicodeDecodeError:
        problems.add(file_variable, f"{path} is not UTF-8 text")
    except ValueError as exc:
        problems.add(file_variable, str(exc))
    return path


def _origins(raw: str) -> tuple[str, ...]:
    """`ALLOWED_ORIGINS`: `scheme://host[:port]` entries, or `*` for any origin."""
    origins: list[str] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        if entry == "*":
            origins.append(entry)
            continue
        parts = urlsplit(entry)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.username
        ):
            raise ConfigError(
                "ALLOWED_ORIGINS",
                f"expected origins like https://example.com:8443 (or *), got {entry!r}",
            )
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


class _Problems:
    """Collects every ConfigError of one `load`, so all are reported together."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def check(self, read: Callable[[], T], fallback: T) -> T:
        """`read()`, or `fallback` with the problem noted."""
        try:
            return read()
        except ConfigError as exc:
            self.found.extend(exc.problems)
            return fallback

    def add(self, variable: str, problem: str) -> None:
        """Note a problem found without a reader."""
        self.found.append((variable, problem))


def _jules_key_file(
    env: Mapping[str, str], key: str, problems: _Problems, *, required: bool
) -> Path | None:
    """JULES_API_KEY_FILE, checked readable now; exactly one of it and JULES_API_KEY."""
    raw = env.get("JULES_API_KEY_FILE", "").strip()
    if not raw:
        if required and not key:
            problems.add(
                "JULES_API_KEY",
                "required (or JULES_API_KEY_FILE): the key sent as X-Goog-Api-Key",
            )
        return None
    if key:
        problems.add(
            "JULES_API_KEY_FILE", "set either JULES_API_KEY or JULES_API_KEY_FILE, not both"
        )
        return None
    path = Path(raw)
    try:
        SecretSource("JULES_API_KEY_FILE", parse_single("JULES_API_KEY_FILE"), path=path)
    except SecretError as exc:
        problems.add("JULES_API_KEY_FILE", str(exc).removeprefix("JULES_API_KEY_FILE: "))
        return None
    return path


def load(
    environ: Mapping[str, str] | None = None,
    *,
    dotenv: Path | None = Path(".env"),
    require_upstream: bool = True,
) -> Settings:
    """Build settings from the environment over a `.env` file.

    Raises ConfigError listing every missing or invalid variable (not just the first).
    """
    env: dict[str, str] = read_dotenv(dotenv) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)
    problems = _Problems()
    check = problems.check

    token = env.get("LOCAL_TOKEN", "")
    token_file = _token_file(env, "LOCAL_TOKEN", problems)
    readonly_file = _token_file(env, "LOCAL_READONLY_TOKEN", problems)
    key = env.get("JULES_API_KEY", "")
    if require_upstream and not token and token_file is None:
        problems.add(
            "LOCAL_TOKEN",
            "required (or LOCAL_TOKEN_FILE): the bearer token(s) clients must present",
        )
    key_file = _jules_key_file(env, key, problems, required=require_upstream)
    no_webhooks: tuple[str, ...] = ()
    webhooks = check(
        lambda: tuple(
            _http_url("NOTIFY_WEBHOOK", url.strip())
            for url in env.get("NOTIFY_WEBHOOK", "").split(",")
            if url.strip()
        ),
        no_webhooks,
    )
    webhook_secret = env.get("NOTIFY_WEBHOOK_SECRET", "")
    if webhook_secret:
        try:
            secret_key(webhook_secret)
        except BadSecret as exc:
            problems.add("NOTIFY_WEBHOOK_SECRET", str(exc))
    database_url = env.get("DATABASE_URL", "").strip()
    if database_url and urlsplit(database_url).scheme not in ("postgres", "postgresql"):
        problems.add("DATABASE_URL", "expected a postgresql:// URL")
    redis_url = env.get("REDIS_URL", "").strip()
    if redis_url and urlsplit(redis_url).scheme not in REDIS_SCHEMES:
        problems.add("REDIS_URL", "expected a redis://, rediss:// or unix:// URL")
    persist = check(lambda: _bool(env, "PERSIST"), False)
    if redis_url and persist and not database_url:
        problems.add(
            "REDIS_URL",
            "nodes of a cluster cannot share SQLite: with PERSIST=1 set"
            " DATABASE_URL=postgresql://..., or unset PERSIST",
        )
    settings = Settings(
        host=env.get("HOST", "").strip() or "127.0.0.1",
        port=check(lambda: _int(env, "PORT", DEFAULT_PORT, minimum=0), DEFAULT_PORT),
        local_token=token,
        local_token_file=token_file,
        local_readonly_token=env.get("LOCAL_READONLY_TOKEN", ""),
        local_readonly_token_file=readonly_file,
        max_connections=check(lambda: _int(env, "MAX_CONNECTIONS", 0), 0),
        allowed_origins=check(lambda: _origins(env.get("ALLOWED_ORIGINS", "")), ()),
        jules_api_key=key,
        jules_api_key_file=key_file,
        jules_api_base=check(
            lambda: _http_url(
                "JULES_API_BASE", env.get("JULES_API_BASE", "").strip() or DEFAULT_JULES_API_BASE
            ),
            DEFAULT_JULES_API_BASE,
        ),
        poll_interval=check(
            lambda: _int(env, "POLL_INTERVAL_MS", DEFAULT_POLL_INTERVAL_MS, minimum=10), 0
        )
        / 1000,
        full_listing_interval=check(
            lambda: _duration(env, "FULL_LISTING_INTERVAL", DEFAULT_FULL_LISTING_INTERVAL_S),
            0.0,
        ),
        stall_after=check(lambda: _duration(env, "STALL_AFTER", DEFAULT_STALL_AFTER_S), 0.0),
        heartbeat_interval=check(
            lambda: _int(env, "HEARTBEAT_INTERVAL_MS", DEFAULT_HEARTBEAT_INTERVAL_MS, minimum=10),
            0,
        )
        / 1000,
        max_buffer_bytes=check(
            lambda: _int(env, "MAX_BUFFER_BYTES", DEFAULT_MAX_BUFFER_BYTES, minimum=1024), 0
        ),
        log_level=check(lambda: _choice(env, "LOG_LEVEL", "info", LOG_LEVELS), "info"),
        log_format=check(lambda: _choice(env, "LOG_FORMAT", "json", LOG_FORMATS), "json"),
        persist=persist,
        data_dir=Path(env.get("DATA_DIR", "").strip() or "data"),
        database_url=database_url,
        history_size=check(lambda: _int(env, "HISTORY_SIZE", DEFAULT_HISTORY_SIZE), 0),
        delta_retention=check(
            lambda: _duration(env, "DELTA_RETENTION", DEFAULT_DELTA_RETENTION_S), 0.0
        ),
        notify_webhooks=webhooks,
        notify_webhook_secret=webhook_secret,
        notify_timeout=check(lambda: _int(env, "NOTIFY_TIMEOUT_MS", DEFAULT_NOTIFY_TIMEOUT_MS), 0)
        / 1000,
        notify_max_age=check(
            lambda: _duration(env, "NOTIFY_MAX_AGE", DEFAULT_NOTIFY_MAX_AGE_S), 0.0
        ),
        notify_queue_size=check(
            lambda: _int(env, "NOTIFY_QUEUE_SIZE", DEFAULT_NOTIFY_QUEUE_SIZE), 0
        ),
        metrics_public=check(lambda: _bool(env, "METRICS_PUBLIC"), False),
        compression=check(lambda: _on_off(env, "COMPRESSION"), True),
        compression_min_bytes=check(
            lambda: _int(env, "COMPRESSION_MIN_BYTES", DEFAULT_COMPRESSION_MIN_BYTES, minimum=0),
            DEFAULT_COMPRESSION_MIN_BYTES,
        ),
        redis_url=redis_url,
        redis_prefix=env.get("REDIS_PREFIX", "").strip() or DEFAULT_REDIS_PREFIX,
        lease=check(lambda: _int(env, "LEASE_MS", DEFAULT_LEASE_MS, minimum=MIN_LEASE_MS), 0)
        / 1000,
        node_id=env.get("NODE_ID", "").strip(),
    )
    if problems.found:
        raise ConfigError.of(problems.found)
    return settings
