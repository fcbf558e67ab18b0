"""The terminal clients: `control-room watch` (live deltas) and `control-room sessions`.

Both are thin: `control_room.client` speaks the protocol, `control_room.render` formats.
Exit codes: 0 on success and on Ctrl-C/SIGTERM, 1 when the service cannot be reached
(`sessions` only: `watch` keeps retrying), 2 for bad arguments, 3 when the token is rejected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, TextIO

import msgspec

from control_room import render
from control_room.client import (
    BadRequest,
    Connected,
    ConnectionStatus,
    ControlRoomClient,
    ControlRoomError,
    Reset,
    Snapshot,
    Unauthorized,
)
from control_room.models import SessionDelta

DEFAULT_URL: Final = "http://127.0.0.1:3001"
TOKEN_ENV: Final = "LOCAL_TOKEN"

EXIT_OK: Final = 0
EXIT_UNREACHABLE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAUTHORIZED: Final = 3

Command = Callable[[argparse.Namespace], int]


def wants_color(stream: TextIO, no_color_flag: bool, environ: dict[str, str]) -> bool:
    """Colour only on a terminal, unless `--no-color`, NO_COLOR (any value) or TERM=dumb."""
    if no_color_flag or environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the service's base URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--token", default=None, help=f"the service's token (or {TOKEN_ENV})")
    parser.add_argument("--no-color", action="store_true", help="never colour the output")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `watch` and `sessions` on the CLI's sub-command parsers."""
    watch = sub.add_parser(
        "watch",
        help="print every session delta as it happens",
        description="Print one line per session delta, live; reconnects and resumes by itself.",
    )
    _connection_args(watch)
    watch.add_argument("--json", action="store_true", help="print the raw deltas, one per line")
    watch.add_argument("--since", type=_seq, metavar="SEQ", help="resume after this seq")
    watch.add_argument("--epoch", default=None, help="the epoch SEQ belongs to (with --since)")
    watch.set_defaults(func=cmd_watch)
    sessions = sub.add_parser(
        "sessions",
        help="print the current sessions as a table",
        description="Print every session the service knows, latest update first.",
    )
    _connection_args(sessions)
    sessions.add_argument("--json", action="store_true", help="print the listing as JSON")
    sessions.set_defaults(func=cmd_sessions)


def _fail(command: str, message: str, code: int) -> int:
    print(f"control-room {command}: {message}", file=sys.stderr, flush=True)
    return code


def _make_client(
    command: str, args: argparse.Namespace, on_status: Callable[[ConnectionStatus], None] | None
) -> ControlRoomClient | int:
    """The client for the arguments, or the exit code of a one-line usage error."""
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        return _fail(command, f"no token: pass --token or set {TOKEN_ENV}", EXIT_USAGE)
    try:
        return ControlRoomClient(args.url, token, on_status=on_status)
    except ValueError as exc:
        return _fail(command, str(exc), EXIT_USAGE)


def _run_until_signal(main: Callable[[], Awaitable[int]]) -> int:
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


class _Out:
    """Line output that flushes each line (a pipe must see deltas as they come)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        if hasattr(stream, "reconfigure"):  # never die on a terminal that cannot show →
            stream.reconfigure(errors="replace")

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _quiet_broken_pipe() -> int:
    """The reader went away (`| head`): stop quietly, as Unix tools do."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


class _StatusPrinter:
    """Connection changes, one line each on stderr, so stdout stays deltas only."""

    def __init__(self, url: str, color: bool) -> None:
        self._url = url
        self._color = color
        self._ever_connected = False
        self._last_reason = ""
        self._err = _Out(sys.stderr)

    def __call__(self, status: ConnectionStatus) -> None:
        c = self._color
        if isinstance(status, Connected):
            pos = status.position
            where = f"from seq {pos.seq} (epoch {pos.epoch})" if pos is not None else "at start"
            if self._ever_connected or status.attempt:
                text = render.paint(
                    f"reconnected to {self._url}; resuming {where}", render.GREEN, c
                )
            else:
                text = render.paint(f"watching {self._url}, {where}; Ctrl-C to stop", render.DIM, c)
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


def cmd_watch(args: argparse.Namespace) -> int:
    """`control-room watch`: one line per delta (or raw JSON), until Ctrl-C."""
    if args.epoch is not None and args.since is None:
        return _fail("watch", "--epoch needs --since", EXIT_USAGE)
    env = dict(os.environ)
    color = wants_color(sys.stdout, args.no_color, env)
    status = _StatusPrinter(args.url, wants_color(sys.stderr, args.no_color, env))
    client = _make_client("watch", args, status)
    if isinstance(client, int):
        return client
    out = _Out(sys.stdout)

    async def main() -> int:
        async with client, contextlib.aclosing(client.messages(args.since, args.epoch)) as stream:
            async for message in stream:
                event = message.event
                if args.json:
                    out.line(message.raw)
                elif isinstance(event, SessionDelta):
                    out.line(render.format_delta(event, color))
                elif isinstance(event, Reset):
                    now = datetime.now(UTC).isoformat()
                    out.line(render.format_reset(event.epoch, event.seq, event.reason, now, color))
                elif isinstance(event, Snapshot):  # not asked for; nothing to show
                    continue
        return EXIT_OK

    try:
        return _run_until_signal(main)
    except Unauthorized as exc:
        return _fail("watch", f"{exc}; check --token or {TOKEN_ENV}", EXIT_UNAUTHORIZED)
    except BadRequest as exc:
        return _fail("watch", str(exc), EXIT_USAGE)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def cmd_sessions(args: argparse.Namespace) -> int:
    """`control-room sessions`: the current sessions as a table (or JSON)."""
    color = wants_color(sys.stdout, args.no_color, dict(os.environ))
    client = _make_client("sessions", args, None)
    if isinstance(client, int):
        return client
    out = _Out(sys.stdout)

    async def main() -> int:
        async with client:
            listing = await client.sessions()
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
        return _run_until_signal(main)
    except Unauthorized as exc:
        return _fail("sessions", f"{exc}; check --token or {TOKEN_ENV}", EXIT_UNAUTHORIZED)
    except ControlRoomError as exc:  # Unavailable, mostly: unreachable or not ready
        return _fail("sessions", str(exc), EXIT_UNREACHABLE)
    except BrokenPipeError:
        return _quiet_broken_pipe()
