"""Every message on the wire, as typed structs in one place.

The WebSocket handler, the REST API and the Python client all use these. Server -> client
messages carry a `type` tag first so encoded bytes read like the seed's examples; fields
left at their default are omitted, never sent as `null`. Client -> server messages are
decoded in two steps (see `decode_command`): the envelope (`type`, `id`) first, so a
malformed message can still be answered with its `id`, then the command's own struct.
"""

from __future__ import annotations

from typing import Any, Final, Literal

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


class Subscribe(Subscription, frozen=True, kw_only=True, tag="subscribe", tag_field="type"):
    """Replace the connection's subscription; answered with the new view's snapshot."""

    id: MessageId = None


class ApprovePlan(msgspec.Struct, frozen=True, kw_only=True, tag="approvePlan", tag_field="type"):
    """Approve the plan a session is waiting on."""

    sessionId: str
    id: MessageId = None


class SendMessage(msgspec.Struct, frozen=True, kw_only=True, tag="sendMessage", tag_field="type"):
    """Send the agent a message (an answer to its question, or new instructions)."""

    sessionId: str
    prompt: str
    id: MessageId = None


class CreateSession(
    msgspec.Struct, frozen=True, kw_only=True, tag="createSession", tag_field="type"
):
    """Start a new session; `repository` is `owner/repo` (absent: no repository)."""

    prompt: str
    repository: str | None = None
    branch: str | None = None
    title: str | None = None
    requirePlanApproval: bool | None = None
    autoCreatePullRequest: bool | None = None
    id: MessageId = None


class ArchiveSession(
    msgspec.Struct, frozen=True, kw_only=True, tag="archiveSession", tag_field="type"
):
    """Archive a session (Jules hides it from the default listing)."""

    sessionId: str
    id: MessageId = None


class UnarchiveSession(
    msgspec.Struct, frozen=True, kw_only=True, tag="unarchiveSession", tag_field="type"
):
    """Bring an archived session back."""

    sessionId: str
    id: MessageId = None


class DeleteSession(
    msgspec.Struct, frozen=True, kw_only=True, tag="deleteSession", tag_field="type"
):
    """Delete a session for good."""

    sessionId: str
    id: MessageId = None


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


def decode_command(data: bytes, *, binary: bool = False) -> Command:
    """Decode one client message (JSON text, or MessagePack when `binary`).

    Raises BadMessage(code, message, id) when it cannot be used: `bad_message`, not an
    object with a string `type`; `unknown_type`, a type this server does not know;
    `invalid_argument`, a known type with missing or wrong fields (the message names the
    field, as msgspec reports it).
    """
    try:
        envelope: Envelope = _envelope_decoders[binary].decode(data)
    except msgspec.ValidationError as exc:
        raise BadMessage("bad_message", f"expected an object with a string `type`: {exc}") from None
    except msgspec.DecodeError:
        what = "MessagePack" if binary else "JSON"
        raise BadMessage("bad_message", f"not valid {what}") from None
    decoder = _command_decoders[binary].get(envelope.type)
    if decoder is None:
        known = ", ".join(sorted(COMMAND_TYPES))
        raise BadMessage(
            "unknown_type", f"unknown type {envelope.type[:64]!r}; known: {known}", envelope.id
        )
    try:
        command: Command = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BadMessage("invalid_argument", str(exc), envelope.id) from None
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
]
