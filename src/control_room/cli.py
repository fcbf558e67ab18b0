"""The `control-room` command: serve, demo, simulate; watch, sessions, show and the session
controls (approve, message, new, archive, unarchive, delete, sources)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import gc
import importlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TextIO

from control_room import config, render
from control_room import logging as logs
from control_room.broker.base import BrokerUnavailable
from control_room.store.base import SchemaTooNew, StoreError
from control_room.tasks import run_loop

if TYPE_CHECKING:
    from control_room.app import Service
    from control_room.broker.base import Batch

EXIT_CONFIG: Final = 2
DEMO_POLL_INTERVAL_S: Final = 1.0  # the demo should feel live; real accounts keep 5 s
DEMO_TICK_S: Final = 2.0  # the simulated sessions move every couple of seconds
DEMO_START_SESSIONS: Final = 8  # enough rows to show every state without scrolling
DEMO_WARMUP_TICKS: Final = 60  # a bound on the warm-up, whatever the seed
DEMO_QUIET_LOGGERS: Final = ("control_room.ws",)
"""A line per delta and per client connecting: the demo's one summary line per poll says it
all, and `serve` keeps them (LOG_LEVEL=debug keeps them in the demo too)."""
DEMO_REMIND_S: Final = 60.0
"""At most this often, a summary line is followed by the dashboard URL: at one poll with
changes every couple of seconds, a minute of summaries is about a screenful."""
STDIN_READ_BYTES: Final = 1024  # a line typed at the demo; only its arrival matters
GC_THRESHOLDS: Final = (50_000, 50, 1_000)

log = logs.get("cli")


def _run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main` until it returns or SIGTERM/SIGINT asks it to stop (via the event)."""
    # Thousands of long-lived connection objects make the default collector (gen0 every
    # 700 allocations) scan them again and again: at 10,000 clients it took 1.9 s of 6.3 s
    # CPU while connecting, with 322 ms pauses; with these thresholds 0.35 s and 53 ms
    # (docs/benchmarks.md). Cycles are still collected, just in larger batches.
    gc.set_threshold(*GC_THRESHOLDS)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    run_loop(runner())


async def _serve_until(service: Service, stop: asyncio.Event) -> None:
    await service.start()
    # SIGHUP re-reads secret files (JULES_API_KEY_FILE, LOCAL_TOKEN_FILE) without a restart.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.reload_secrets)
    try:
        await stop.wait()
    finally:
        await service.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve against the upstream named by the environment."""
    from control_room.app import Service  # here, so `watch` and `sessions` start quickly

    settings = config.load()
    logs.configure(settings.log_level, settings.log_format)
    _run(lambda stop: _serve_until(Service(settings), stop))
    return 0


class DemoConsole:
    """The demo's stdout: how to connect, then one calm line per poll that changed something.

    A broker sink (`deliver` gets every published batch). Enter, when stdin is a terminal,
    shows how to connect again; a one-line reminder of the URL follows a summary when the
    URL was last shown more than DEMO_REMIND_S ago, so it never scrolls away for long, and
    an idle console stays still.
    """

    def __init__(
        self,
        service: Service,
        banner: str,
        reminder: str,
        *,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._banner = banner
        self._reminder = reminder
        self._out = out if out is not None else sys.stdout
        self._clock = clock
        self._shown_at = clock()

    def show(self) -> None:
        """Print how to connect (the banner)."""
        self._write(self._banner)
        self._shown_at = self._clock()

    def deliver(self, batch: Batch) -> None:
        """One line for a poll's deltas: what changed, and how many sessions and clients."""
        service = self._service
        sessions = len(service.poller.sessions) if service.poller is not None else 0
        types = (delta.type for delta in batch.deltas)
        self._write(render.poll_summary(types, sessions, len(service.hub), datetime.now(UTC)))
        if self._clock() - self._shown_at >= DEMO_REMIND_S:
            self._write(self._reminder)
            self._shown_at = self._clock()

    def listen_for_enter(self, loop: asyncio.AbstractEventLoop) -> None:
        """Show the banner again whenever Enter is pressed, if stdin is a terminal."""
        stdin = sys.stdin
        if stdin is None or not stdin.isatty():
            return
        fd = stdin.fileno()

        def typed() -> None:
            try:
                data = os.read(fd, STDIN_READ_BYTES)
            except OSError:
                data = b""
            if not data:  # end of input (Ctrl-D): stop listening
                loop.remove_reader(fd)
                return
            self.show()

        loop.add_reader(fd, typed)

    def _write(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()


def _demo_banner(service: Service, token: str, seed: int, interactive: bool) -> str:
    again = (
        "  Press Enter to show this again; stop with Ctrl-C."
        if interactive
        else ("  Stop with Ctrl-C.")
    )
    return (
        f"\n  Jules Control Room demo (simulated Jules API, seed {seed})\n"
        f"  Dashboard : {service.url}/#token={token}\n"
        f"  WebSocket : {service.ws_url}"
        f"  (Sec-WebSocket-Protocol: control-room.v1, bearer.{token})\n"
        f"  Token     : {token}\n"
        f"  Watch     : .venv/bin/control-room watch --url {service.url} --token {token}\n"
        f"{again}\n"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve against an embedded simulator, with a generated token, and say how to connect."""
    from control_room.app import Service
    from control_room.jules.simulator import Simulator, SimulatorServer

    env = dict(os.environ)
    env.setdefault("LOCAL_TOKEN", secrets.token_urlsafe(24))
    env.setdefault("LOG_FORMAT", "console")
    env.setdefault("POLL_INTERVAL_MS", str(int(DEMO_POLL_INTERVAL_S * 1000)))
    env["JULES_API_KEY"] = api_key = secrets.token_urlsafe(16)
    settings = config.load(env)
    logs.configure(settings.log_level, settings.log_format)
    if settings.log_level != "debug":
        for name in DEMO_QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)

    async def main(stop: asyncio.Event) -> None:
        sim = Simulator(seed)
        for _ in range(DEMO_WARMUP_TICKS):  # start with a board worth looking at
            if len(sim) >= DEMO_START_SESSIONS:
                break
            sim.tick()
        async with SimulatorServer(sim, api_key, tick_interval=args.tick) as upstream:
            service = Service(dataclasses.replace(settings, jules_api_base=upstream.base_url))
            await service.start()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, service.reload_secrets)
            interactive = sys.stdin is not None and sys.stdin.isatty()
            banner = _demo_banner(service, settings.local_token, seed, interactive)
            dashboard = f"{service.url}/#token={settings.local_token}"
            console = DemoConsole(service, banner, f"          Dashboard : {dashboard}")
            console.show()
            service.broker.add_sink(console)
            console.listen_for_enter(loop)
            try:
                await stop.wait()
            finally:
                await service.stop()

    _run(main)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the simulated Jules API alone, on its own port."""
    from control_room.jules.simulator import serve_simulator

    logs.configure("info", "console")
    key = args.api_key or os.environ.get("JULES_API_KEY") or ""
    if not key:
        print("control-room simulate: --api-key or JULES_API_KEY is required", file=sys.stderr)
        return EXIT_CONFIG
    large = args.large_account
    if large is not None and not 0 <= args.active <= large:
        print("control-room simulate: need 0 <= --active <= --large-account", file=sys.stderr)
        return EXIT_CONFIG
    # The demo board moves every couple of seconds; an account's tick only catches up with
    # the clock, so it keeps the simulator's own (short) default.
    tick = args.tick if args.tick is not None or large is not None else DEMO_TICK_S
    pace = {} if args.activity_interval is None else {"activity_interval": args.activity_interval}
    print(f"Simulated Jules API on http://{args.host}:{args.port}/v1alpha", flush=True)

    async def main(stop: asyncio.Event) -> None:
        task = asyncio.create_task(
            serve_simulator(
                args.host,
                args.port,
                key,
                args.seed or 0,
                tick,
                large_account=large,
                active=args.active,
                **pace,
            )
        )
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    _run(main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="control-room", description="Live deltas of your Jules sessions over WebSocket."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve against the Jules API (configured by env)")
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser(
        "demo",
        help="serve against an embedded simulated Jules API",
        description="Serve against an embedded simulated Jules API. Every `serve` setting"
        " but the Jules API's address and key is read from the environment as for serve"
        " (PORT, HOST, PERSIST, ...; see"
        " docs/reference/configuration.md); LOCAL_TOKEN is made up unless set — set it to"
        " keep the same token across restarts, so watchers and the dashboard reconnect.",
    )
    demo.add_argument("--seed", type=int, default=None, help="simulator seed (random if unset)")
    demo.add_argument("--tick", type=float, default=DEMO_TICK_S, help="seconds per life step")
    demo.set_defaults(func=cmd_demo)
    sim = sub.add_parser("simulate", help="run the simulated Jules API alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=3002)
    sim.add_argument("--api-key", default=None, help="key clients must send (or JULES_API_KEY)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--tick", type=float, default=None, help="seconds per life step")
    sim.add_argument(
        "--large-account",
        type=int,
        default=None,
        metavar="N",
        help="an account of N mostly finished sessions instead of the demo board",
    )
    sim.add_argument("--active", type=int, default=20, help="large account: sessions in flight")
    sim.add_argument(
        "--activity-interval",
        type=float,
        default=None,
        metavar="S",
        help="large account: seconds between two steps of an in-flight session (30)",
    )
    sim.set_defaults(func=cmd_simulate)
    _add_client_commands(sub)
    return parser


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The client commands live in their own modules (`watch` and `sessions`; the session
    controls); absent, they are simply not offered."""
    for name in ("control_room.watch", "control_room.controls"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            return
        module.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit code 2 with one line for a configuration problem."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except config.ConfigError as exc:
        for variable, problem in exc.problems:  # every problem at once, one line each
            print(f"control-room: configuration error: {variable}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except SchemaTooNew as exc:
        print(f"control-room: store error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:  # the store could not be opened: nothing to serve from
        print(f"control-room: store error: {exc}", file=sys.stderr)
        return 1
    except BrokerUnavailable as exc:  # a cluster member that cannot reach Redis at start
        print(f"control-room: cannot join the cluster: {exc}; is REDIS_URL right?", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"control-room: cannot listen: {exc.strerror}; another process has the port"
            " (stop it, or choose another with PORT=...)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
