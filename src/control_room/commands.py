"""Client commands: a registry keyed by message `type`, each handler small and typed.

The WebSocket handler and the REST API both run commands through `Commands.run`, so a
command behaves the same whichever way it arrives: the read-only check, the mapping of
upstream failures to error codes, and the re-read of the session it touched (its delta
reaches every client within about a second, not at the next poll).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from control_room import logging as logs
from control_room.jules.client import UpstreamError
from control_room.messages import (
    ApprovePlan,
    ArchiveSession,
    Command,
    CreateSession,
    DeleteSession,
    ErrorCode,
    ErrorInfo,
    MessageId,
    ResultMessage,
    SendMessage,
    Subscribe,
    UnarchiveSession,
)
from control_room.models import JulesSession, is_repository

MAX_PROMPT_CHARS: Final = 100_000
"""A prompt or message longer than this is refused before it reaches Jules: real prompts
are a few thousand characters; this bounds what one client message can make us send."""

log = logs.get("commands")


class CommandError(Exception):
    """A command failed for a reason the client can act on: `code` and a sentence."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


class Actions(Protocol):
    """What commands need of the upstream (the Jules client)."""

    async def approve_plan(self, session_id: str) -> None:
        """Approve the pending plan; UpstreamError on failure."""

    async def send_message(self, session_id: str, prompt: str) -> None:
        """Send the agent a message; UpstreamError on failure."""

    async def create_session(self, request: CreateSession) -> JulesSession:
        """Create a session and return it mapped; UpstreamError on failure."""

    async def archive_session(self, session_id: str) -> None:
        """Archive; UpstreamError on failure."""

    async def unarchive_session(self, session_id: str) -> None:
        """Unarchive; UpstreamError on failure."""

    async def delete_session(self, session_id: str) -> None:
        """Delete; UpstreamError on failure."""


class Refresh(Protocol):
    """Re-read one session from the upstream now and publish what changed."""

    async def __call__(self, session_id: str, *, gone_is_deleted: bool = False) -> None:
        """`gone_is_deleted`: a session no longer found is announced deleted."""


Subscriber = Callable[[Subscribe], ResultMessage]
"""Replace the calling connection's subscription (synchronously); only sockets have one."""


@dataclass(frozen=True)
class Caller:
    """Who runs a command: a read-only token may only read and subscribe."""

    read_only: bool = False
    subscribe: Subscriber | None = None
    name: str = ""
    """How logs name the caller (`client 12`, `rest`), never a token."""


Handler = Callable[["Commands", Caller, Command], Awaitable[ResultMessage]]


@dataclass(frozen=True)
class Spec:
    """One registered command: its handler and whether it changes anything upstream."""

    handler: Handler
    mutating: bool


def upstream_error_code(exc: UpstreamError) -> ErrorCode:
    """The command error code for an upstream failure (Google's envelope status first)."""
    status, api_status = exc.status, exc.api_status
    if status == 404:
        return "not_found"
    if api_status == "FAILED_PRECONDITION" or status == 409:
        return "failed_precondition"
    if status == 400:
        return "invalid_argument"
    if status == 429:
        return "rate_limited"
    if api_status == "PERMISSION_DENIED":
        return "forbidden"
    return "upstream_unavailable"


def upstream_message(exc: UpstreamError) -> str:
    """What a client is told of an upstream failure, in one line: `Jules answered: …` only
    when Jules did answer; `Jules did not answer: …` when the request got no usable answer
    (connection refused, timeout, an answer cut short), so nobody is told Jules said
    something it did not."""
    if exc.answered:
        return f"Jules answered: {exc.detail}"
    return f"Jules did not answer: {exc.detail}"


def _ok(id: MessageId, session: JulesSession | None = None) -> ResultMessage:
    return ResultMessage(id=id, ok=True, session=session)


def _prompt(text: str, field: str = "prompt") -> str:
    if not text.strip():
        raise CommandError("invalid_argument", f"{field} is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise CommandError("invalid_argument", f"{field} is over {MAX_PROMPT_CHARS} characters")
    return text


def _session_id(value: str) -> str:
    value = value.strip()
    if not value or "/" in value or len(value) > 256:
        raise CommandError("invalid_argument", "sessionId must be a session id, like 1234567890")
    return value


async def _subscribe(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, Subscribe)
    if caller.subscribe is None:
        raise CommandError("failed_precondition", "subscribe is only for WebSocket connections")
    return caller.subscribe(command)


async def _approve(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, ApprovePlan)
    sid = _session_id(command.sessionId)
    await commands.actions.approve_plan(sid)
    return _ok(command.id, await commands.refreshed(sid))


async def _send(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, SendMessage)
    sid = _session_id(command.sessionId)
    await commands.actions.send_message(sid, _prompt(command.prompt))
    return _ok(command.id, await commands.refreshed(sid))


async def _create(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, CreateSession)
    _prompt(command.prompt)
    if command.repository is not None and not is_repository(command.repository):
        raise CommandError(
            "invalid_argument",
            "repository must be a GitHub owner/repo: an owner of letters, digits and hyphens,"
            " a name of letters, digits, '.', '_' and '-' (not '.' or '..')",
        )
    try:
        session = await commands.actions.create_session(command)
    except UpstreamError as exc:
        if exc.status == 404:
            # Jules' own words ("Requested entity was not found") do not say which entity.
            raise CommandError(
                "not_found",
                "Jules does not know that repository: connect it to Jules first;"
                " GET /api/sources (control-room sources) lists the ones it knows",
            ) from exc
        raise
    return _ok(command.id, await commands.refreshed(session.id) or session)


async def _archive(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, ArchiveSession)
    sid = _session_id(command.sessionId)
    await commands.actions.archive_session(sid)
    await commands.refreshed(sid, gone=True)
    return _ok(command.id)


async def _unarchive(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, UnarchiveSession)
    sid = _session_id(command.sessionId)
    await commands.actions.unarchive_session(sid)
    return _ok(command.id, await commands.refreshed(sid))


async def _delete(commands: Commands, caller: Caller, command: Command) -> ResultMessage:
    assert isinstance(command, DeleteSession)
    sid = _session_id(command.sessionId)
    await commands.actions.delete_session(sid)
    await commands.refreshed(sid, gone=True)
    return _ok(command.id)


REGISTRY: Final[Mapping[str, Spec]] = {
    "subscribe": Spec(_subscribe, mutating=False),
    "approvePlan": Spec(_approve, mutating=True),
    "sendMessage": Spec(_send, mutating=True),
    "createSession": Spec(_create, mutating=True),
    "archiveSession": Spec(_archive, mutating=True),
    "unarchiveSession": Spec(_unarchive, mutating=True),
    "deleteSession": Spec(_delete, mutating=True),
}
"""Every command by its message `type` (the same names as messages.COMMAND_TYPES)."""


class Commands:
    """Runs commands: permission, the upstream call, the re-read, errors as results."""

    def __init__(
        self,
        actions: Actions,
        refresh: Refresh,
        current: Callable[[str], JulesSession | None],
    ) -> None:
        self.actions = actions
        self._refresh = refresh
        self._current = current

    async def refreshed(self, session_id: str, *, gone: bool = False) -> JulesSession | None:
        """Re-read the session now so its delta goes out at once; its current state after.

        A failed re-read is not the command's failure (the command itself succeeded): the
        next poll will catch up, and the log says so.
        """
        try:
            await self._refresh(session_id, gone_is_deleted=gone)
        except UpstreamError as exc:
            log.warning(
                "Re-read after a command failed; the next poll catches up",
                extra={"sessionId": session_id, "kind": exc.kind},
            )
        return self._current(session_id)

    async def run(self, caller: Caller, command: Command) -> ResultMessage:
        """Run one command and answer it; never raises for a failure the client caused."""
        kind = type(command).__struct_config__.tag
        spec = REGISTRY[str(kind)]
        if spec.mutating and caller.read_only:
            return error_result(command.id, "forbidden", "this token is read-only")
        try:
            result = await spec.handler(self, caller, command)
        except CommandError as exc:
            return error_result(command.id, exc.code, str(exc))
        except UpstreamError as exc:
            code = upstream_error_code(exc)
            log.info(
                "Command refused by the upstream",
                extra={"command": kind, "caller": caller.name, "code": code, "kind": exc.kind},
            )
            return error_result(command.id, code, upstream_message(exc))
        log.info("Command done", extra={"command": kind, "caller": caller.name})
        return result


def error_result(id: MessageId, code: ErrorCode, message: str) -> ResultMessage:
    """A failed command's answer."""
    return ResultMessage(id=id, ok=False, error=ErrorInfo(code, message))
