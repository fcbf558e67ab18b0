"""The terminal clients: `control-room watch` (live deltas and activities) and
`control-room sessions`, and the plumbing every client command shares.

They are thin: `control_room.client` speaks the protocol, `control_room.render` formats.
They find the service as the service finds its settings: `HOST`, `PORT` and `LOCAL_TOKEN`
(or `LOCAL_TOKEN_FILE`) from the environment over a `.env` file in the working directory;
`--url` and `--token` win over both.
Exit codes: 0 on success and on Ctrl-C/SIGTERM, 1 when the service cannot be reached or is
not ready (`sessions` only: `watch` keeps retrying), 2 for bad arguments, 3 when the token
is rejected (or, for commands, read-only), 4 when the service refuses a command (see
`control_room.controls`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

import msgspec

from control_room import render
from control_room.client import (
    NOT_READY_WAIT_S,
    BadRequest,
    Connected,
    ConnectionStatus,
    ControlRoomClient,
    ControlRoomError,
    Encoding,
    Message,
    NotReady,
    Reset,
    Snapshot,
    TokenRevoked,
    Unauthorized,
    as_json,
)
from control_room.config import DEFAULT_PORT, read_dotenv
from control_room.messages import TOKEN_REVOKED, ActivityMessage
from control_room.models import SESSION_STATES, JulesSession, SessionDelta
from control_room.ws.params import MAX_INTEGER_DIGITS

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_URL: Final = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
TOKEN_ENV: Final = "LOCAL_TOKEN"
TOKEN_FILE_ENV: Final = "LOCAL_TOKEN_FILE"
DOTENV: Final = Path(".env")
# A service bound to every address is reached on loopback, as a browser on the host would.
ANY_ADDRESS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": DEFAULT_HOST}

EXIT_OK: Final = 0
EXIT_UNREACHABLE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAUTHORIZED: Final = 3
EXIT_REFUSED: Final = 4

Command = Callable[[argparse.Namespace], int]


def wants_color(stream: TextIO, no_color_flag: bool, environ: dict[str, str]) -> bool:
    """Colour only on a terminal, unless `--no-color`, NO_COLOR (any value) or TERM=dumb."""
    if no_color_flag or environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_INTEGER_DIGITS):
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer of at most {MAX_INTEGER_DIGITS} digits"
        )
    return int(text)


def _state(text: str) -> str:
    """A session state the server can filter on (any other could never match)."""
    if text not in SESSION_STATES:
        raise argparse.ArgumentTypeError("expected one of " + ", ".join(SESSION_STATES))
    return text


@dataclass(frozen=True)
class ServiceAddress:
    """Where the service configured by an environment listens, and a token it accepts."""

    url: str
    token: str


class BadEnvironment(ValueError):
    """The environment names the service in a way a client cannot use; says which variable."""


def service_environment(environ: Mapping[str, str], dotenv: Path | None = DOTENV) -> dict[str, str]:
    """The variables the service would read: `environ` over the `.env` file (if any)."""
    env = read_dotenv(dotenv) if dotenv is not None else {}
    env.update(environ)
    return env


def service_url(env: Mapping[str, str]) -> str:
    """The URL of the service that `env` configures: `http://HOST:PORT`.

    `HOST` 0.0.0.0 or :: becomes loopback (an IPv6 address gets brackets). Raises
    BadEnvironment for a `PORT` a client cannot connect to (0 means "any free port").
    """
    raw_host = env.get("HOST", "").strip()
    host = ANY_ADDRESS.get(raw_host, raw_host)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    raw_port = env.get("PORT", "").strip() or str(DEFAULT_PORT)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise BadEnvironment(f"PORT={raw_port!r} is not a port a client can connect to; pass --url")
    return f"http://{host}:{int(raw_port)}"


def service_token(env: Mapping[str, str]) -> str:
    """A token the service that `env` configures accepts; "" when none is set.

    The first of `LOCAL_TOKEN` (which may list several, comma-separated), else the first
    line of the `LOCAL_TOKEN_FILE`; BadEnvironment when that file cannot be read.
    """
    listed = [t.strip() for t in env.get(TOKEN_ENV, "").split(",") if t.strip()]
    if listed:
        return listed[0]
    path = env.get(TOKEN_FILE_ENV, "").strip()
    if not path:
        return ""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadEnvironment(f"{TOKEN_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
    return next((line.strip() for line in lines if line.strip()), "")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return value


def connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help=f"the service's base URL (default: http://HOST:PORT from the environment or"
        f" .env, as `serve` reads them; else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"the service's token (default: {TOKEN_ENV} or {TOKEN_FILE_ENV}, from the"
        " environment or .env)",
    )
    parser.add_argument("--no-color", action="store_true", help="never colour the output")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `watch` and `sessions` on the CLI's sub-command parsers."""
    watch = sub.add_parser(
        "watch",
        help="print every session delta as it happens",
        description="Print one line per session delta, live; reconnects and resumes by itself.",
    )
    connection_args(watch)
    watch.add_argument("--json", action="store_true", help="print the raw deltas, one per line")
    watch.add_argument("--since", type=_seq, metavar="SEQ", help="resume after this seq")
    watch.add_argument("--epoch", default=None, help="the epoch SEQ belongs to (with --since)")
    watch.add_argument(
        "--activities",
        action="store_true",
        help="also print what Jules does: plans, messages, progress, completion",
    )
    watch.add_argument(
        "--activities-since",
        type=_seq,
        metavar="SEQ",
        help="with --activities and --since: resume the activities after this seq",
    )
    watch.add_argument(
        "--session",
        action="append",
        metavar="ID",
        help="only this session (repeatable)",
    )
    watch.add_argument(
        "--state",
        action="append",
        type=_state,
        metavar="STATE",
        help="only sessions in this state, e.g. AWAITING_PLAN_APPROVAL (repeatable)",
    )
    watch.add_argument(
        "--repository",
        action="append",
        metavar="OWNER/REPO",
        help="only sessions of this repository (repeatable)",
    )
    watch.add_argument(
        "--msgpack",
        action="store_true",
        help="receive MessagePack frames instead of JSON (--json still prints JSON)",
    )
    watch.set_defaults(func=cmd_watch)
    sessions = sub.add_parser(
        "sessions",
        help="print the current sessions as a table",
        description="Print every session the service knows, latest update first.",
    )
    connection_args(sessions)
    sessions.add_argument("--json", action="store_true", help="print the listing as JSON")
    sessions.add_argument(
        "--wait",
        type=_seconds,
        default=NOT_READY_WAIT_S,
        metavar="SECONDS",
        help="how long to wait for a service that is not ready yet, e.g. still waiting for"
        f" the Jules API (default {NOT_READY_WAIT_S:.0f}; 0: do not wait)",
    )
    sessions.set_defaults(func=cmd_sessions)


def fail(command: str, message: str, code: int) -> int:
    print(f"control-room {command}: {message}", file=sys.stderr, flush=True)
    return code


def resolve(command: str, args: argparse.Namespace) -> ServiceAddress | int:
    """`--url` and `--token`, else the service's own settings; or a usage error's exit code."""
    url, token = args.url, args.token
    if not (url and token):
        env = service_environment(os.environ)
        try:  # only what a flag did not give is read: a bad PORT does not matter with --url
            url = url or service_url(env)
            token = token or service_token(env)
        except BadEnvironment as exc:
            return fail(command, str(exc), EXIT_USAGE)
    if not token:
        return fail(
            command,
            f"no token: pass --token, or set {TOKEN_ENV} (in the environment or .env)",
            EXIT_USAGE,
        )
    return ServiceAddress(url, token)


def make_client(
    command: str,
    address: ServiceAddress,
    on_status: Callable[[ConnectionStatus], None] | None,
    encoding: Encoding = "json",
) -> ControlRoomClient | int:
    """The client for the address, or the exit code of a one-line usage error."""
    try:
        return ControlRoomClient(address.url, address.token, on_status=on_status, encoding=encoding)
    except ValueError as exc:
        return fail(command, str(exc), EXIT_USAGE)


def run_until_signal(main: Callable[[], Awaitable[int]]) -> int:
    """Run `main`; SIGINT or SIGTERM cancels it and the exit code is 0."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main())
        stopped = False

        def stop() -> None:
            nonlocal stopped
            stopped = True
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            return await task
        except asyncio.CancelledError:
            if stopped:
                return EXIT_OK
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


class Out:
    """Line output that flushes each line (a pipe must see deltas as they come)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        if hasattr(stream, "reconfigure"):  # never die on a terminal that cannot show →
            stream.reconfigure(errors="replace")

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def quiet_broken_pipe() -> int:
    """The reader went away (`| head`): stop quietly, as Unix tools do."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


class _StatusPrinter:
    """Connection changes, one line each on stderr, so stdout stays deltas only."""

    def __init__(self, url: str, color: bool, view: str = "", activities: bool = False) -> None:
        self._url = url
        self._view = view
        self._activities = activities  # say the activities channel's position too
        self._color = color
        self._ever_connected = False
        self._last_reason = ""
        self._err = Out(sys.stderr)

    def __call__(self, status: ConnectionStatus) -> None:
        c = self._color
        if isinstance(status, Connected):
            pos = status.position
            where = f"from seq {pos.seq} (epoch {pos.epoch})" if pos is not None else "from now"
            if pos is not None and (pos.activities_seq or self._activities):
                where = (
                    f"from seq {pos.seq}, activities seq {pos.activities_seq} (epoch {pos.epoch})"
                )
            if self._ever_connected or status.attempt:
                text = render.paint(
                    f"reconnected to {self._url}; resuming {where}", render.GREEN, c
                )
            else:
                view = f"; {self._view}" if self._view else ""
                text = render.paint(
                    f"watching {self._url}, {where}{view}; Ctrl-C to stop", render.DIM, c
                )
            self._ever_connected = True
            self._last_reason = ""
        else:
            if status.was_connected:
                what = f"connection lost — {status.reason}"
            elif status.reason == self._last_reason:
                what = "still unreachable"  # the reason was said already: keep repeats short
            else:
                what = f"cannot reach the service — {status.reason}"
            self._last_reason = status.reason
            retry = f"retrying in {status.retry_in:.1f} s (attempt {status.attempt})"
            text = render.paint(f"{what}; {retry}", render.YELLOW, c)
        self._err.line(text)


def describe_view(args: argparse.Namespace) -> str:
    """The watched view in words, for the first status line; "" for every session."""
    parts = []
    if args.session:
        parts.append("session " + ", ".join(args.session))
    if args.repository:
        parts.append("repository " + ", ".join(args.repository))
    if args.state:
        parts.append("state " + ", ".join(args.state))
    if args.activities:
        parts.append("with activities")
    return "; ".join(parts)


def _watch_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of watch's flags, if anything."""
    if args.epoch is not None and args.since is None:
        return "--epoch needs --since"
    if args.activities_since is not None and (args.since is None or not args.activities):
        return "--activities-since needs --since and --activities"
    if args.activities and args.since is not None and args.activities_since is None:
        return "--since with --activities needs --activities-since (the activities' position)"
    return None


class _EventPrinter:
    """`watch`'s stdout: a line per delta and activity (or the raw JSON), in order.

    Activities name only their session: their lines take its repository and title (and
    whether the agent is asking a question) from a picture of the sessions, which a snapshot
    fills and the deltas keep; a reset reloads it.
    """

    def __init__(
        self, client: ControlRoomClient, out: Out, color: bool, raw: bool, activities: bool
    ) -> None:
        self._client = client
        self._out = out
        self._color = color
        self._raw = raw
        self._activities = activities
        self.sessions: dict[str, JulesSession] = {}

    async def reload(self) -> None:
        """The picture from `GET /api/sessions` (kept as is when that fails)."""
        with contextlib.suppress(ControlRoomError):
            listing = await self._client.sessions(wait_ready=0)
            self.sessions = {s.id: s for s in listing.sessions}

    async def show(self, message: Message) -> None:
        event, color = message.event, self._color
        if isinstance(event, Snapshot):  # asked for only to name the sessions
            self.sessions = {s.id: s for s in event.sessions}
            return
        if isinstance(event, SessionDelta):
            if event.after is not None:
                self.sessions[event.sessionId] = event.after
            else:
                self.sessions.pop(event.sessionId, None)
        if self._raw:
            self._out.line(as_json(message))
        elif isinstance(event, SessionDelta):
            self._out.line(render.format_delta(event, color))
        elif isinstance(event, ActivityMessage):
            session = self.sessions.get(event.sessionId)
            self._out.line(render.format_activity(event.activity, session, color))
        else:
            now = datetime.now(UTC).isoformat()
            self._out.line(render.format_reset(event.epoch, event.seq, event.reason, now, color))
        if isinstance(event, Reset) and self._activities:
            await self.reload()


def cmd_watch(args: argparse.Namespace) -> int:
    """`control-room watch`: one line per delta (and activity), or raw JSON, until Ctrl-C."""
    problem = _watch_usage(args)
    if problem is not None:
        return fail("watch", problem, EXIT_USAGE)
    address = resolve("watch", args)
    if isinstance(address, int):
        return address
    env = dict(os.environ)
    color = wants_color(sys.stdout, args.no_color, env)
    status = _StatusPrinter(
        address.url,
        wants_color(sys.stderr, args.no_color, env),
        describe_view(args),
        activities=args.activities,
    )
    encoding: Encoding = "msgpack" if args.msgpack else "json"
    client = make_client("watch", address, status, encoding)
    if isinstance(client, int):
        return client
    printer = _EventPrinter(client, Out(sys.stdout), color, args.json, args.activities)
    snapshot = args.activities and args.since is None  # to name the sessions of activities

    async def main() -> int:
        async with client:
            if args.activities and not snapshot:
                await printer.reload()
            stream = client.messages(
                args.since,
                args.epoch,
                snapshot,
                activities_since=args.activities_since,
                session_ids=args.session,
                repositories=args.repository,
                states=args.state,
                activities=args.activities,
            )
            async with contextlib.aclosing(stream) as messages:
                async for message in messages:
                    await printer.show(message)
        return EXIT_OK

    try:
        return run_until_signal(main)
    except TokenRevoked:
        return fail(
            "watch",
            f"the token was revoked (close code {TOKEN_REVOKED}); get a new one and pass it"
            f" with --token or {TOKEN_ENV}",
            EXIT_UNAUTHORIZED,
        )
    except Unauthorized as exc:
        return fail("watch", f"{exc}; check --token or {TOKEN_ENV}", EXIT_UNAUTHORIZED)
    except BadRequest as exc:
        return fail("watch", str(exc), EXIT_USAGE)
    except BrokenPipeError:
        return quiet_broken_pipe()


def cmd_sessions(args: argparse.Namespace) -> int:
    """`control-room sessions`: the current sessions as a table (or JSON)."""
    address = resolve("sessions", args)
    if isinstance(address, int):
        return address
    color = wants_color(sys.stdout, args.no_color, dict(os.environ))
    client = make_client("sessions", address, None)
    if isinstance(client, int):
        return client
    out = Out(sys.stdout)
    err = Out(sys.stderr)
    said = False

    def not_ready(exc: NotReady) -> None:
        """Say at once why the service cannot answer yet, then wait (quietly)."""
        nonlocal said
        if args.wait and not said:
            said = True
            err.line(f"control-room sessions: {exc}; waiting up to {args.wait:g} s for it")

    async def main() -> int:
        async with client:
            listing = await client.sessions(args.wait, on_not_ready=not_ready)
        if args.json:
            out.line(msgspec.json.encode(listing).decode())
            return EXIT_OK
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        if listing.sessions:
            for line in render.format_table(listing.sessions, datetime.now(UTC), color, width):
                out.line(line)
            out.line("")
        out.line(render.summary(listing.sessions, color))
        return EXIT_OK

    try:
        return run_until_signal(main)
    except Unauthorized as exc:
        return fail("sessions", f"{exc}; check --token or {TOKEN_ENV}", EXIT_UNAUTHORIZED)
    except NotReady as exc:
        still = f"still not ready after {args.wait:g} s" if args.wait else "not ready"
        return fail("sessions", f"{address.url} is {still}: {exc.reason}", EXIT_UNREACHABLE)
    except ControlRoomError as exc:  # Unavailable, mostly: unreachable
        return fail("sessions", str(exc), EXIT_UNREACHABLE)
    except BrokenPipeError:
        return quiet_broken_pipe()
