"""Jules Activities: their wire shapes and the pure mapping to the control room's Activity.

Source: the Jules REST reference (`sessions.activities`) and the official SDK, summarised
in shared/reference/jules-api.md. The API is alpha: every field may be absent or `null`,
unknown kinds are kept by their name, and unknown fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import msgspec
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from control_room.models import (
    ACTIVITY_KINDS,
    Activity,
    Artifact,
    BashOutputSummary,
    ChangeSetSummary,
    FileChange,
    MediaSummary,
    Plan,
    PlanStep,
)

BASH_OUTPUT_LIMIT: Final = 4_096
"""Characters of a command's output pushed to clients: the tail of a failing test run fits,
and 100 clients x 20 sessions of megabyte-long build logs do not flood anyone."""
MESSAGE_LIMIT: Final = 64 * 1024
"""Characters of one message or plan step kept; a longer one is cut (Jules' own are far
shorter; this only bounds what a misbehaving upstream can make us hold and push)."""
COMMON_KEYS: Final = frozenset(
    {"name", "id", "description", "createTime", "originator", "artifacts", "updateTime"}
)
"""Top-level Activity fields that are not the kind's own union member."""


class _Step(msgspec.Struct, frozen=True):
    id: str | None = None
    title: str | None = None
    description: str | None = None
    index: int | None = None


class _Plan(msgspec.Struct, frozen=True):
    id: str | None = None
    steps: list[_Step] | None = None
    createTime: str | None = None


class _PlanGenerated(msgspec.Struct, frozen=True):
    plan: _Plan | None = None


class _PlanApproved(msgspec.Struct, frozen=True):
    planId: str | None = None


class _AgentMessaged(msgspec.Struct, frozen=True):
    agentMessage: str | None = None


class _UserMessaged(msgspec.Struct, frozen=True):
    userMessage: str | None = None


class _ProgressUpdated(msgspec.Struct, frozen=True):
    title: str | None = None
    description: str | None = None


class _SessionFailed(msgspec.Struct, frozen=True):
    reason: str | None = None


class _GitPatch(msgspec.Struct, frozen=True):
    unidiffPatch: str | None = None
    baseCommitId: str | None = None
    suggestedCommitMessage: str | None = None


class _ChangeSet(msgspec.Struct, frozen=True):
    source: str | None = None
    gitPatch: _GitPatch | None = None


class _BashOutput(msgspec.Struct, frozen=True):
    command: str | None = None
    output: str | None = None
    exitCode: int | None = None


class _Media(msgspec.Struct, frozen=True):
    data: str | None = None
    mimeType: str | None = None


class RawArtifact(msgspec.Struct, frozen=True):
    """One entry of `artifacts[]`: a union of change set, bash output and media."""

    changeSet: _ChangeSet | None = None
    bashOutput: _BashOutput | None = None
    media: _Media | None = None


class RawActivity(msgspec.Struct, frozen=True):
    """A Jules Activity as sent; exactly one kind member is expected to be set."""

    name: str | None = None
    id: str | None = None
    description: str | None = None
    createTime: str | None = None
    originator: str | None = None
    artifacts: list[RawArtifact] | None = None
    planGenerated: _PlanGenerated | None = None
    planApproved: _PlanApproved | None = None
    agentMessaged: _AgentMessaged | None = None
    userMessaged: _UserMessaged | None = None
    progressUpdated: _ProgressUpdated | None = None
    sessionCompleted: dict[str, object] | None = None
    sessionFailed: _SessionFailed | None = None


class ListActivitiesResponse(msgspec.Struct, frozen=True):
    """One page of `sessions.activities.list`: activities stay raw until mapped one by one,
    so one activity that does not decode does not cost the whole page."""

    activities: list[msgspec.Raw] | None = None
    nextPageToken: str | None = None


@dataclass(frozen=True, slots=True)
class ActivityListing:
    """A session's activities as read from Jules, oldest first, each decoded on its own.

    `bad` says why each unusable activity was skipped (one bad activity does not cost the
    others); `newest_time` is the `createTime` of the newest activity listed, usable or
    not, when it could be read: the bound of the next `filter=create_time>`.
    """

    activities: list[Activity]
    bad: list[str] = field(default_factory=list)
    newest_time: str | None = None


class BadActivity(ValueError):
    """An activity that cannot be decoded or lacks an id; the message says why."""


class _CreateTime(msgspec.Struct, frozen=True):
    createTime: str | None = None


_create_time_decoder: Final = msgspec.json.Decoder(_CreateTime)
_keys_decoder: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_activity_decoder: Final = msgspec.json.Decoder(RawActivity)
list_activities_decoder: Final = msgspec.json.Decoder(ListActivitiesResponse)


def _cut(text: str | None, limit: int = MESSAGE_LIMIT) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit]


def create_time_of(body: bytes | msgspec.Raw) -> str | None:
    """The `createTime` of a raw activity, even one that does not map; None if unreadable."""
    try:
        return _create_time_decoder.decode(body).createTime or None
    except msgspec.MsgspecError:
        return None


def kind_of(keys: dict[str, msgspec.Raw]) -> str:
    """The activity's kind: its known union member, else the first unknown member's name.

    A member that is `null` counts as absent.
    """
    present = [key for key, value in keys.items() if bytes(value) != b"null"]
    for kind in ACTIVITY_KINDS:
        if kind in present:
            return kind
    for key in present:
        if key not in COMMON_KEYS:
            return key
    return "unknown"


def summarise_patch(patch: str) -> tuple[FileChange, ...]:
    """Files of a unified diff with their added and removed line counts (the `unidiff`
    library parses it: renames, binary files and `\\ No newline` markers included).

    A patch that does not parse gives no files rather than an error: the summary is a
    convenience, and the whole patch stays available over REST.
    """
    try:
        parsed = PatchSet(patch)
    except (UnidiffParseError, ValueError):
        return ()
    return tuple(FileChange(path=f.path, added=f.added, removed=f.removed) for f in parsed)


def _media_size(data: str | None) -> int:
    """Decoded size of base64 data, computed from its length (no decode)."""
    if not data:
        return 0
    text = data.strip()
    padding = len(text) - len(text.rstrip("="))
    return max(0, len(text) * 3 // 4 - padding)


def map_artifact(raw: RawArtifact) -> Artifact | None:
    """Summarise one artifact; None for an artifact of a kind this service does not know."""
    if raw.changeSet is not None:
        git = raw.changeSet.gitPatch
        return Artifact(
            changeSet=ChangeSetSummary(
                files=summarise_patch(git.unidiffPatch or "") if git is not None else (),
                commitMessage=_cut(git.suggestedCommitMessage) if git is not None else None,
                baseCommitId=git.baseCommitId if git is not None else None,
            )
        )
    if raw.bashOutput is not None:
        output = raw.bashOutput.output or ""
        truncated = len(output) > BASH_OUTPUT_LIMIT
        return Artifact(
            bashOutput=BashOutputSummary(
                command=_cut(raw.bashOutput.command) or "",
                exitCode=raw.bashOutput.exitCode,
                # The tail: where a failing command says why.
                output=output[-BASH_OUTPUT_LIMIT:] if truncated else output,
                truncated=truncated,
            )
        )
    if raw.media is not None:
        return Artifact(
            media=MediaSummary(
                mimeType=raw.media.mimeType or "application/octet-stream",
                size=_media_size(raw.media.data),
            )
        )
    return None


def _plan(raw: _Plan | None) -> Plan | None:
    if raw is None:
        return None
    steps = sorted(
        (
            PlanStep(
                id=s.id or str(i),
                index=s.index if s.index is not None else i,
                title=_cut(s.title) or "",
                description=_cut(s.description) or None,
            )
            for i, s in enumerate(raw.steps or ())
        ),
        key=lambda step: step.index,
    )
    return Plan(id=raw.id or "", steps=tuple(steps), createdAt=raw.createTime or None)


def decode_activity(body: bytes | msgspec.Raw, session_id: str) -> Activity:
    """Decode and map one raw activity of `session_id`; BadActivity if it is unusable."""
    try:
        keys = _keys_decoder.decode(body)
        raw = _activity_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise BadActivity(f"activity did not decode: {exc}") from None
    return map_activity(raw, session_id, kind_of(keys))


def activity_id(raw: RawActivity) -> str:
    """The id, falling back to the last part of `name` (`sessions/{s}/activities/{id}`)."""
    return raw.id or (raw.name or "").rpartition("/")[2]


def map_activity(raw: RawActivity, session_id: str, kind: str) -> Activity:
    """Map a decoded activity of `session_id` whose kind is `kind` (see `kind_of`)."""
    aid = activity_id(raw)
    if not aid:
        raise BadActivity("activity has neither id nor name")
    if not raw.createTime:
        raise BadActivity(f"activity {aid} has no createTime")
    description = raw.description or None
    title: str | None = None
    progress = raw.progressUpdated
    if kind == "progressUpdated" and progress is not None:
        title = _cut(progress.title) or None
        description = _cut(progress.description) or description
    message: str | None = None
    if kind == "agentMessaged" and raw.agentMessaged is not None:
        message = _cut(raw.agentMessaged.agentMessage)
    elif kind == "userMessaged" and raw.userMessaged is not None:
        message = _cut(raw.userMessaged.userMessage)
    artifacts = tuple(a for a in map(map_artifact, raw.artifacts or ()) if a is not None)
    return Activity(
        id=aid,
        sessionId=session_id,
        kind=kind,
        originator=raw.originator or "system",
        createdAt=raw.createTime,
        description=_cut(description),
        plan=_plan(raw.planGenerated.plan) if raw.planGenerated is not None else None,
        planId=(raw.planApproved.planId or None) if raw.planApproved is not None else None,
        message=message,
        title=title,
        reason=(
            (_cut(raw.sessionFailed.reason) or None) if raw.sessionFailed is not None else None
        ),
        artifacts=artifacts,
    )


def patches_of(body: bytes | msgspec.Raw) -> list[dict[str, str]]:
    """The whole git patches of one raw activity (for REST), with their commit messages."""
    try:
        raw = _activity_decoder.decode(body)
    except msgspec.MsgspecError:
        return []
    patches: list[dict[str, str]] = []
    for artifact in raw.artifacts or ():
        cs = artifact.changeSet
        if cs is None or cs.gitPatch is None:
            continue
        patches.append(
            {
                "source": cs.source or "",
                "unidiffPatch": cs.gitPatch.unidiffPatch or "",
                "baseCommitId": cs.gitPatch.baseCommitId or "",
                "suggestedCommitMessage": cs.gitPatch.suggestedCommitMessage or "",
            }
        )
    return patches
