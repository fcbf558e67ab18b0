"""Every message on the wire, as typed structs in one place.

The WebSocket handler, the REST API and the Python client all use these. Server -> client
messages carry a `type` tag first so encoded bytes read like the seed's examples; fields
left at their default are omitted, never sent as `null`. Client -> server messages are
decoded in two steps (see `decode_command`): the envelope (`type`, `id`) first, so a
malformed message can still be answered with its `id`, then the command's own struct.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints

import msgspec

from control_room.models import Activity, JulesSession, SessionDelta

TOKEN_REVOKED: Final = 4001
"""Close code for a client whose token a reload removed (4000-4999: application codes);
the close reason is `token_revoked`."""

MessageId = str | int | float | bool | None
"""A client-chosen command id: any JSON scalar, echoed back in the `result`."""

ErrorCode = Literal[
    "bad_message",
    "unknown_type",
    "invalid_argument",
    "not_found",
    "failed_precondition",
    "forbidden",
    "rate_limited",
    "upstream_unavailable",
    "internal",
]
ERROR_CODES: Final[tuple[ErrorCode, ...]] = ErrorCode.__args__  # type: ignore[attr-defined]

ResetReason = Literal[
    "epoch_changed", "history_expired", "too_far_behind", "ahead_of_server", "resubscribed"
]


# -- server -> client -------------------------------------------------------------------


class ActivityMessage(msgspec.Struct, frozen=True, kw_only=True, tag="activity", tag_field="type"):
    """A new activity of a session, on the activities channel (its own `seq`)."""

    sessionId: str
    activity: Activity
    timestamp: str
    seq: int


class PatchDelta(msgspec.Struct, frozen=True, kw_only=True, tag="updated", tag_field="type"):
    """An `updated` delta as RFC 6902 operations from `before` to `after` (opt-in)."""

    sessionId: str
    patch: list[dict[str, object]]
    timestamp: str
    seq: int


class SnapshotMessage(
    msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, tag="snapshot", tag_field="type"
):
    """The current sessions (of the client's view) and the positions they correspond to."""

    epoch: str
    seq: int
    sessions: list[JulesSession]
    activitiesSeq: int | None = None


class ResetMessage(
    msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, tag="reset", tag_field="type"
):
    """Resume was impossible: reload the state, then apply what follows."""

    epoch: str
    seq: int
    reason: str
    activitiesSeq: int | None = None


class ErrorInfo(msgspec.Struct, frozen=True):
    """Why a command failed: a code from ERROR_CODES and a sentence for humans."""

    code: ErrorCode
    message: str


class ResultMessage(
    msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, tag="result", tag_field="type"
):
    """The answer to one client command; `ok` false carries `error`.

    Successful answers carry what the command produced: `session` (a created or changed
    session), or for `subscribe` the new view's `sessions` with `epoch`, `seq` and
    `activitiesSeq`, so the client replaces its picture atomically.
    """

    id: MessageId
    ok: bool
    error: ErrorInfo | None = None
    session: JulesSession | None = None
    sessions: list[JulesSession] | None = None
    epoch: str | None = None
    seq: int | None = None
    activitiesSeq: int | None = None
    subscription: Subscription | None = None


class BatchMessage(msgspec.Struct, frozen=True, kw_only=True, tag="batch", tag_field="type"):
    """Every message of one poll for this client, in order (opt-in)."""

    deltas: list[msgspec.Raw]


# -- client -> server -------------------------------------------------------------------


class Subscription(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """What a connection receives: filters (None = no filter on that field) and options."""

    sessionIds: list[str] | None = None
    repositories: list[str] | None = None
    states: list[str] | None = None
    activities: bool = False
    updates: Literal["full", "patch"] | None = None
    """`patch`: `updated` deltas as JSON Patch operations (absent: keep the current form)."""
    batch: bool | None = None
    """True: each poll's messages as one `batch` message (absent: keep the current choice)."""


class Envelope(msgspec.Struct, frozen=True):
    """The part every client message shares: read first, to route and to answer."""

    type: str
    id: MessageId = None


class Subscribe(
    Subscription,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag="subscribe",
    tag_field="type",
):
    """Replace the connection's subscription; answered with the new view's snapshot."""

    id: MessageId = None


class _Command(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"
):
    """What every command but `subscribe` shares: its message `type` (the tag), no fields
    but its own, and the client's `id`, echoed in the `result`."""

    id: MessageId = None


class ApprovePlan(_Command, frozen=True, kw_only=True, tag="approvePlan"):
    """Approve the plan a session is waiting on."""

    sessionId: str


class SendMessage(_Command, frozen=True, kw_only=True, tag="sendMessage"):
    """Send the agent a message (an answer to its question, or new instructions)."""

    sessionId: str
    prompt: str


class CreateSession(_Command, frozen=True, kw_only=True, tag="createSession"):
    """Start a new session; `repository` is `owner/repo` (absent: no repository)."""

    prompt: str
    repository: str | None = None
    branch: str | None = None
    title: str | None = None
    requirePlanApproval: bool | None = None
    autoCreatePullRequest: bool | None = None


class ArchiveSession(_Command, frozen=True, kw_only=True, tag="archiveSession"):
    """Archive a session (Jules hides it from the default listing)."""

    sessionId: str


class UnarchiveSession(_Command, frozen=True, kw_only=True, tag="unarchiveSession"):
    """Bring an archived session back."""

    sessionId: str


class DeleteSession(_Command, frozen=True, kw_only=True, tag="deleteSession"):
    """Delete a session for good."""

    sessionId: str


Command = (
    Subscribe
    | ApprovePlan
    | SendMessage
    | CreateSession
    | ArchiveSession
    | UnarchiveSession
    | DeleteSession
)
COMMAND_TYPES: Final[dict[str, type[Command]]] = {
    "subscribe": Subscribe,
    "approvePlan": ApprovePlan,
    "sendMessage": SendMessage,
    "createSession": CreateSession,
    "archiveSession": ArchiveSession,
    "unarchiveSession": UnarchiveSession,
    "deleteSession": DeleteSession,
}


# -- REST bodies ------------------------------------------------------------------------


class SessionList(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """`GET /api/sessions`: every session and the position it corresponds to."""

    sessions: list[JulesSession]
    seq: int
    epoch: str
    activitiesSeq: int | None = None


class ArchivedSessions(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /api/sessions/archived`: one page of Jules' archived sessions, newest first.

    Read from Jules on demand (archived sessions leave the polled listing); pass
    `nextPageToken` back as `pageToken` for the next page (null on the last)."""

    sessions: list[JulesSession]
    nextPageToken: str | None = None


class ActivityPage(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """`GET /api/sessions/{id}/activities`: one page, oldest first."""

    sessionId: str
    activities: list[Activity]
    nextPageToken: str | None = None
    activitiesSeq: int | None = None
    pending: bool = False
    """True when Jules has no timeline for the session yet (its transient 404 right after a
    create): the page is empty for now, not for good; read again after `Retry-After`."""


class ActivityDetail(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """`GET /api/sessions/{id}/activities/{activityId}`: one activity and its whole patches.

    `patches` are the change sets' unified diffs with their base commit and suggested commit
    message (`{source, unidiffPatch, baseCommitId, suggestedCommitMessage}`); media are
    described by type and size in `activity.artifacts`. Only REST serves patches: pushed
    activities carry the per-file summary.
    """

    sessionId: str
    activity: Activity
    patches: list[dict[str, str]] = msgspec.field(default_factory=list)


ServerMessage = (
    SessionDelta | ActivityMessage | PatchDelta | SnapshotMessage | ResetMessage | ResultMessage
)

encoder: Final = msgspec.json.Encoder()
msgpack_encoder: Final = msgspec.msgpack.Encoder()


class BadMessage(ValueError):
    """A client message that cannot be used; `code` says why and `id` is echoed if known."""

    def __init__(self, code: ErrorCode, message: str, id: MessageId = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.id = id


_Decoder = msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]
_envelope_decoders: Final[dict[bool, _Decoder]] = {
    False: msgspec.json.Decoder(Envelope),
    True: msgspec.msgpack.Decoder(Envelope),
}
_command_decoders: Final[dict[bool, dict[str, _Decoder]]] = {
    False: {name: msgspec.json.Decoder(kind) for name, kind in COMMAND_TYPES.items()},
    True: {name: msgspec.msgpack.Decoder(kind) for name, kind in COMMAND_TYPES.items()},
}


MAX_NAMED_UNKNOWN_FIELDS: Final = 8
"""Unknown fields an `invalid_argument` message names; past this it says how many more (a
message of thousands of stray keys must not make an answer of thousands of names)."""
FIELD_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""What an unknown field's name must look like to be named in an answer: an identifier a
client could have meant. Anything else (markup, control characters, kilobytes) is counted,
never quoted."""
_MISSING: Final = re.compile(r"Object missing required field `([A-Za-z_]\w*)`")
_AT: Final = re.compile(r" - at `\$\.?([A-Za-z_][\w.\[\]]*)`$")
_EXPECTED: Final = re.compile(r"^Expected `([^`]*)`")
_WORDS: Final[dict[str, str]] = {
    "str": "a string",
    "bool": "true or false",
    "int": "an integer",
    "array": "a list of strings",  # every list a command takes is of strings
    "object": "an object",
    "bool | int | float | str": "a string, a number, true, false or null",
}
"""msgspec's type names (`| null` removed) in the service's words."""


def peek_id(data: bytes, *, binary: bool = False) -> MessageId:
    """The `id` of a client message if it has one (to answer a refusal by it), else None.

    Reads only the envelope: what a message refused before it is used costs.
    """
    try:
        envelope: Envelope = _envelope_decoders[binary].decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return envelope.id


def _field_words(kind: type[Command], path: str) -> str | None:
    """The values a command's field takes when its type is a Literal; None otherwise."""
    name = re.split(r"[.\[]", path, maxsplit=1)[0]
    hint = get_type_hints(kind).get(name)
    choices = [v for t in (hint, *get_args(hint)) if get_origin(t) is Literal for v in get_args(t)]
    return " or ".join(str(v) for v in choices) or None


def _unknown_fields(data: bytes, binary: bool, kind: type[Command]) -> str:
    """A sentence naming the fields `kind` does not take (names that look like names)."""
    try:
        raw = msgspec.msgpack.decode(data) if binary else msgspec.json.decode(data)
    except msgspec.DecodeError:
        raw = {}
    known = {*kind.__struct_fields__, "type"}
    extra = [k for k in raw if k not in known] if isinstance(raw, dict) else []
    named = sorted({k for k in extra if isinstance(k, str) and FIELD_NAME.fullmatch(k)})
    shown = named[:MAX_NAMED_UNKNOWN_FIELDS]
    rest = len(extra) - len(shown)
    what = ", ".join(shown) if shown else ""
    if rest > 0:
        what = f"{what} and {rest} more" if what else f"{rest} unnamed"
    accepted = ", ".join(f for f in kind.__struct_fields__ if f != "id")
    return f"unknown fields: {what or 'one'}; {kind.__struct_config__.tag} takes {accepted} and id"


def describe_invalid(
    exc: msgspec.ValidationError, kind: type[Command], data: bytes, binary: bool
) -> str:
    """A msgspec validation error in the service's words: the field path and what it must
    be, never the value sent (msgspec quotes bad enum values)."""
    text = str(exc)
    missing = _MISSING.match(text)
    if missing:
        return f"{missing.group(1)} is required"
    if text.startswith("Object contains unknown field"):
        return _unknown_fields(data, binary, kind)
    at = _AT.search(text)
    path = at.group(1) if at else ""
    expected = _EXPECTED.match(text)
    words = _field_words(kind, path)  # a field with fixed values lists them, whatever came
    if words is None:
        found = _WORDS.get(expected.group(1).removesuffix(" | null")) if expected else None
        words = found or "a valid value"
    return f"{path or 'the message'} must be {words}"


def decode_command(data: bytes, *, binary: bool = False) -> Command:
    """Decode one client message (JSON text, or MessagePack when `binary`).

    Raises BadMessage(code, message, id) when it cannot be used: `bad_message`, not an
    object with a string `type`; `unknown_type`, a type this server does not know;
    `invalid_argument`, a known type with missing, unknown or wrong fields (the message
    names the field and what it must be, never the value sent).
    """
    what = "MessagePack" if binary else "JSON"
    try:
        envelope: Envelope = _envelope_decoders[binary].decode(data)
    except msgspec.ValidationError as exc:
        at = _AT.search(str(exc))
        if at is not None and at.group(1) == "id":
            problem = "id must be a string, a number, true, false or null"
        else:
            problem = f"a message is a {what} object with a string type"
        raise BadMessage("bad_message", problem) from None
    except msgspec.DecodeError:
        raise BadMessage("bad_message", f"not valid {what}") from None
    decoder = _command_decoders[binary].get(envelope.type)
    if decoder is None:
        known = ", ".join(sorted(COMMAND_TYPES))
        raise BadMessage("unknown_type", f"type must be one of {known}", envelope.id)
    try:
        command: Command = decoder.decode(data)
    except msgspec.ValidationError as exc:
        kind = COMMAND_TYPES[envelope.type]
        raise BadMessage(
            "invalid_argument", describe_invalid(exc, kind, data, binary), envelope.id
        ) from None
    return command


__all__ = [
    "ActivityDetail",
    "ActivityMessage",
    "ActivityPage",
    "ApprovePlan",
    "ArchiveSession",
    "BadMessage",
    "BatchMessage",
    "Command",
    "CreateSession",
    "DeleteSession",
    "ErrorInfo",
    "PatchDelta",
    "ResetMessage",
    "ResultMessage",
    "SendMessage",
    "SessionDelta",
    "SessionList",
    "SnapshotMessage",
    "Subscribe",
    "Subscription",
    "UnarchiveSession",
    "decode_command",
    "peek_id",
]
