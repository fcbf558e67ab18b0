"""The terminal's controls: `show`, `approve`, `message`, `new`, `archive`, `unarchive`,
`delete` and `sources`, each one call of `control_room.client` (over REST: no stream is
open) printed by `control_room.render`.

They find the service as `watch` does (`--url`/`--token`, else the service's own settings).
Exit codes: 0 done; 1 the service (or Jules) could not be reached or did not answer in time,
or was rate-limited: trying again later may work; 2 bad arguments (the service's
`invalid_argument` included); 3 the token was rejected, or is read-only; 4 the service
refused the command: no such session (`not_found`) or not in a state that allows it
(`failed_precondition`). Every failure is one line on stderr with the service's reason,
e.g. `control-room approve: forbidden: this token is read-only`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import msgspec

from control_room import render
from control_room.client import (
    ControlRoomClient,
    ControlRoomError,
    FailedPrecondition,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unauthorized,
    UpstreamUnavailable,
)
from control_room.models import JulesSession
from control_room.watch import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    TOKEN_ENV,
    Out,
    connection_args,
    fail,
    make_client,
    quiet_broken_pipe,
    resolve,
    run_until_signal,
    wants_color,
)

STDIN_TEXT: Final = "-"  # `message ID -`: the text is read from standard input

Call = Callable[[ControlRoomClient], Awaitable[int]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the session commands on the CLI's sub-command parsers."""
    show = sub.add_parser(
        "show",
        help="a session and its timeline: plan, messages, progress, files changed",
        description="Print a session and its whole timeline, oldest first.",
    )
    connection_args(show)
    show.add_argument("id", metavar="ID", help="the session's id")
    show.add_argument("--json", action="store_true", help="print {session, activities} as JSON")
    show.set_defaults(func=cmd_show)

    approve = sub.add_parser("approve", help="approve the plan a session waits on")
    connection_args(approve)
    approve.add_argument("id", metavar="ID", help="the session's id")
    approve.set_defaults(func=cmd_approve)

    message = sub.add_parser(
        "message",
        help="send the agent a message (an answer, new instructions)",
        description="Send the agent of session ID a message; `-` reads it from stdin.",
    )
    connection_args(message)
    message.add_argument("id", metavar="ID", help="the session's id")
    message.add_argument("text", metavar="TEXT", nargs="+", help="the message (- for stdin)")
    message.set_defaults(func=cmd_message)

    new = sub.add_parser(
        "new",
        help="start a session",
        description="Start a Jules session on a repository. Its plan waits for your"
        " approval unless --no-plan-approval.",
    )
    connection_args(new)
    new.add_argument("--repo", metavar="OWNER/REPO", help="the repository (see `sources`)")
    new.add_argument("--branch", help="the branch to start from (default: the repository's)")
    new.add_argument("--title", help="the session's title (default: from the prompt)")
    new.add_argument(
        "--no-plan-approval",
        action="store_true",
        help="let Jules start on its plan without waiting for approval",
    )
    new.add_argument("--auto-pr", action="store_true", help="open a pull request when done")
    new.add_argument("--json", action="store_true", help="print the new session as JSON")
    new.add_argument("text", metavar="TEXT", nargs="+", help="the prompt (- for stdin)")
    new.set_defaults(func=cmd_new)

    for name, what in (
        ("archive", "archive a session (it leaves the control room)"),
        ("unarchive", "bring an archived session back"),
    ):
        parser = sub.add_parser(name, help=what)
        connection_args(parser)
        parser.add_argument("id", metavar="ID", help="the session's id")
        parser.set_defaults(func=cmd_archive if name == "archive" else cmd_unarchive)

    delete = sub.add_parser(
        "delete",
        help="delete a session for good",
        description="Delete a session for good. Asks first on a terminal; --yes confirms.",
    )
    connection_args(delete)
    delete.add_argument("id", metavar="ID", help="the session's id")
    delete.add_argument("--yes", action="store_true", help="confirm: delete without asking")
    delete.set_defaults(func=cmd_delete)

    sources = sub.add_parser("sources", help="the repositories Jules can work on")
    connection_args(sources)
    sources.add_argument("--json", action="store_true", help="print the sources as JSON")
    sources.set_defaults(func=cmd_sources)


def _run(command: str, args: argparse.Namespace, call: Call) -> int:
    """Resolve the service, run `call` with a client, turn failures into one line each."""
    address = resolve(command, args)
    if isinstance(address, int):
        return address
    client = make_client(command, address, None)
    if isinstance(client, int):
        return client

    async def main() -> int:
        async with client:
            return await call(client)

    try:
        return run_until_signal(main)
    except Unauthorized as exc:
        return fail(command, f"{exc}; check --token or {TOKEN_ENV}", EXIT_UNAUTHORIZED)
    except ControlRoomError as exc:
        return fail(command, str(exc), exit_code(exc))
    except BrokenPipeError:
        return quiet_broken_pipe()


def exit_code(exc: ControlRoomError) -> int:
    """The exit code of a failure (see the module doc)."""
    if isinstance(exc, Unauthorized | Forbidden):
        return EXIT_UNAUTHORIZED
    if isinstance(exc, InvalidArgument):
        return EXIT_USAGE
    if isinstance(exc, NotFound | FailedPrecondition):
        return EXIT_REFUSED
    return EXIT_UNREACHABLE  # unreachable, not ready, timed out, rate-limited, Jules down


def _text(words: list[str]) -> str:
    """The words of a TEXT argument, or standard input for `-`."""
    if words == [STDIN_TEXT]:
        return sys.stdin.read()
    return " ".join(words)


def _said(session: JulesSession | None, done: str, session_id: str) -> str:
    """`approved the plan of 123 · Fix login · now IN_PROGRESS`."""
    if session is None:
        return f"{done} {session_id}"
    return f"{done} {session.id}{render.SEP}{render.label(session)}{render.SEP}now {session.state}"


def cmd_show(args: argparse.Namespace) -> int:
    """`control-room show ID`: the session, then its timeline oldest first."""
    color = wants_color(sys.stdout, args.no_color, dict(os.environ))
    out = Out(sys.stdout)

    async def call(client: ControlRoomClient) -> int:
        try:
            session = await client.session(args.id)
        except NotFound as exc:
            raise NotFound(
                exc.code,
                f"{exc.message}; an archived session is hidden until"
                f" `control-room unarchive {args.id}`",
            ) from exc
        try:
            page = await client.activities(args.id)
        except (NotFound, UpstreamUnavailable) as exc:  # the session is still worth showing
            problem: ControlRoomError | None = exc
            activities = []
        else:
            problem, activities = None, list(page.activities)
        if args.json:
            body = {"session": session, "activities": activities}
            out.line(msgspec.json.encode(body).decode())
        else:
            for line in render.session_header(session, datetime.now(UTC), color):
                out.line(line)
            out.line("")
            lines = render.timeline(activities, session, color)
            for line in lines or ([] if problem else ["  (no activity yet)"]):
                out.line(line)
            hint = render.waiting_hint(session)
            if hint is not None:
                out.line("")
                out.line(render.paint(hint, render.YELLOW, color))
        if problem is not None:
            return fail("show", f"cannot read the timeline: {problem}", EXIT_UNREACHABLE)
        return EXIT_OK

    return _run("show", args, call)


def _act(
    command: str,
    args: argparse.Namespace,
    act: Callable[[ControlRoomClient], Awaitable[JulesSession | None]],
    done: str,
) -> int:
    """Run one command on session `args.id` and say what it did, in one line."""
    out = Out(sys.stdout)

    async def call(client: ControlRoomClient) -> int:
        out.line(_said(await act(client), done, args.id))
        return EXIT_OK

    return _run(command, args, call)


def cmd_approve(args: argparse.Namespace) -> int:
    """`control-room approve ID`: approve the plan the session waits on."""
    return _act(
        "approve", args, lambda client: client.approve_plan(args.id), "approved the plan of"
    )


def cmd_message(args: argparse.Namespace) -> int:
    """`control-room message ID TEXT`: send the agent a message (`-`: from stdin)."""
    text = _text(args.text)
    return _act("message", args, lambda client: client.send_message(args.id, text), "sent to")


def cmd_archive(args: argparse.Namespace) -> int:
    """`control-room archive ID`: the session leaves the control room (and Jules' list)."""
    return _act("archive", args, lambda client: client.archive(args.id), "archived")


def cmd_unarchive(args: argparse.Namespace) -> int:
    """`control-room unarchive ID`."""
    return _act("unarchive", args, lambda client: client.unarchive(args.id), "unarchived")


def cmd_new(args: argparse.Namespace) -> int:
    """`control-room new [--repo OWNER/REPO] ... TEXT`: start a session; prints it."""
    out = Out(sys.stdout)
    prompt = _text(args.text)

    async def call(client: ControlRoomClient) -> int:
        session = await client.create_session(
            prompt,
            repository=args.repo,
            branch=args.branch,
            title=args.title,
            require_plan_approval=not args.no_plan_approval,
            auto_create_pr=args.auto_pr or None,
        )
        if args.json:
            out.line(msgspec.json.encode(session).decode())
            return EXIT_OK
        where = session.repository or "no repository"
        out.line(
            f"created {session.id}{render.SEP}{where}{render.SEP}{session.state}"
            f"{render.SEP}{render.label(session)}"
        )
        out.line(f"  {session.url}")
        return EXIT_OK

    return _run("new", args, call)


def _confirmed(session_id: str) -> bool:
    """Ask on the terminal; False when stdin is not one (then --yes is needed)."""
    if not (sys.stdin is not None and sys.stdin.isatty()):
        return False
    try:
        answer = input(f"Delete session {session_id} for good? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_delete(args: argparse.Namespace) -> int:
    """`control-room delete ID --yes`: delete for good (asks on a terminal without --yes)."""
    if not args.yes and not _confirmed(args.id):
        return fail(
            "delete", f"not deleted: deleting {args.id} cannot be undone; add --yes", EXIT_USAGE
        )
    return _act("delete", args, lambda client: client.delete(args.id), "deleted")


def cmd_sources(args: argparse.Namespace) -> int:
    """`control-room sources`: the repositories `new --repo` takes, with their branches."""
    out = Out(sys.stdout)

    async def call(client: ControlRoomClient) -> int:
        sources = await client.sources()
        if args.json:
            out.line(msgspec.json.encode({"sources": sources}).decode())
            return EXIT_OK
        width = max((len(s.repository) for s in sources), default=0)
        for source in sorted(sources, key=lambda s: s.repository):
            branches = ", ".join(source.branches) or source.defaultBranch or ""
            private = "  (private)" if source.isPrivate else ""
            out.line(f"{source.repository.ljust(width)}  {branches}{private}".rstrip())
        if not sources:
            out.line("no sources: connect a repository to Jules first")
        return EXIT_OK

    return _run("sources", args, call)
