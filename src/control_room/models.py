"""The control room's own types: the session shape clients see and the deltas they receive."""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

DeltaType = Literal["created", "updated", "deleted"]

SESSION_STATES: Final = (
    "STATE_UNSPECIFIED",
    "QUEUED",
    "PLANNING",
    "AWAITING_PLAN_APPROVAL",
    "AWAITING_USER_FEEDBACK",
    "IN_PROGRESS",
    "PAUSED",
    "COMPLETED",
    "FAILED",
    "ACTIVE",
)
"""Every session state Jules is known to report (ACTIVE: older clients' legacy name). A
filter on any other state could never match, so it is refused; a state Jules adds later is
still shown (kept as sent) and is added here to become filterable."""

GITHUB_OWNER: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
"""A GitHub user or organisation: letters, digits and hyphens, not starting with a hyphen,
at most 39 characters."""
GITHUB_REPO: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")
"""A GitHub repository name: letters, digits, `.`, `_` and `-`, at most 100 characters
(and never `.` or `..`, which GitHub refuses and which would walk an upstream path)."""


def is_repository(text: str) -> bool:
    """Whether `text` is a GitHub `owner/repo` that GitHub itself would accept."""
    owner, slash, repo = text.partition("/")
    return (
        slash == "/"
        and GITHUB_OWNER.fullmatch(owner) is not None
        and GITHUB_REPO.fullmatch(repo) is not None
        and repo not in (".", "..")
    )


class Approval(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Whether the session's plan has been approved, and when this service first saw it."""

    state: Literal["pending", "approved"]
    approvedAt: str | None = None


class PullRequest(msgspec.Struct, frozen=True, gc=False):
    """The first pull request a session produced."""

    url: str
    title: str


class JulesSession(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """One Jules session as the control room shows it (the seed's shape, plus Jules' own state)."""

    id: str
    repository: str
    branch: str
    title: str
    state: str
    planStatus: str
    approval: Approval
    participants: tuple[str, ...]
    createdAt: str
    updatedAt: str
    url: str
    pullRequest: PullRequest | None = None
    stalledSince: str | None = None
    """Set while the session is IN_PROGRESS with no new activity for STALL_AFTER: when the
    last activity (or state change) was seen. Absent otherwise."""


ActivityKind = str
"""`planGenerated`, `planApproved`, `agentMessaged`, `userMessaged`, `progressUpdated`,
`sessionCompleted`, `sessionFailed`, or an unknown kind kept by its name (the API is alpha)."""
ACTIVITY_KINDS: Final = (
    "planGenerated",
    "planApproved",
    "agentMessaged",
    "userMessaged",
    "progressUpdated",
    "sessionCompleted",
    "sessionFailed",
)


class PlanStep(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """One numbered step of a plan."""

    id: str
    index: int
    title: str
    description: str | None = None


class Plan(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """A plan Jules generated, with its steps in order."""

    id: str
    steps: tuple[PlanStep, ...] = ()
    createdAt: str | None = None


class FileChange(msgspec.Struct, frozen=True, gc=False):
    """One file of a change set, with its added and removed line counts."""

    path: str
    added: int
    removed: int


class ChangeSetSummary(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """A change set artifact without its patch (the patch is served by REST, not pushed)."""

    files: tuple[FileChange, ...] = ()
    commitMessage: str | None = None
    baseCommitId: str | None = None


class BashOutputSummary(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """A command the agent ran: its exit code and output, cut to a limit."""

    command: str
    exitCode: int | None = None
    output: str = ""
    truncated: bool = False


class MediaSummary(msgspec.Struct, frozen=True, gc=False):
    """A media artifact: its type and size in bytes (the data itself is not pushed)."""

    mimeType: str
    size: int


class Artifact(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """One artifact of an activity, summarised; exactly one field is set."""

    changeSet: ChangeSetSummary | None = None
    bashOutput: BashOutputSummary | None = None
    media: MediaSummary | None = None


class Activity(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """One thing that happened in a session (the control room's shape of a Jules Activity).

    The fields after `createdAt` are set according to `kind`: `plan` (planGenerated),
    `planId` (planApproved), `message` (agentMessaged, userMessaged), `title` and
    `description` (progressUpdated), `reason` (sessionFailed).
    """

    id: str
    sessionId: str
    kind: ActivityKind
    originator: str
    createdAt: str
    description: str | None = None
    plan: Plan | None = None
    planId: str | None = None
    message: str | None = None
    title: str | None = None
    reason: str | None = None
    artifacts: tuple[Artifact, ...] = ()


class Change(msgspec.Struct, frozen=True, gc=False):
    """One difference between two snapshots, before it is numbered and stamped."""

    type: DeltaType
    sessionId: str
    before: JulesSession | None
    after: JulesSession | None


class SessionDelta(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True, gc=False):
    """A numbered, timestamped change: exactly what clients and webhooks receive."""

    type: DeltaType
    sessionId: str
    before: JulesSession | None = None
    after: JulesSession | None = None
    timestamp: str
    seq: int


class Position(msgspec.Struct, frozen=True):
    """A point in the stream: which unbroken history (epoch) and how far along each channel
    is: `seq` on the sessions channel (the seed's), `activities_seq` on the activities one."""

    epoch: str
    seq: int
    activities_seq: int = 0


Snapshot = dict[str, JulesSession]
"""Every known session, by id."""


encoder: Final = msgspec.json.Encoder()
"""The one JSON encoder: encoding a delta once gives the bytes every client receives."""


def encode(value: object) -> bytes:
    """Encode any model (or plain value) to compact JSON bytes."""
    return encoder.encode(value)
