"""The control room's own types: the session shape clients see and the deltas they receive."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

DeltaType = Literal["created", "updated", "deleted"]


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
    """A point in the delta stream: which unbroken history (epoch) and how far along (seq)."""

    epoch: str
    seq: int


Snapshot = dict[str, JulesSession]
"""Every known session, by id."""


encoder: Final = msgspec.json.Encoder()
"""The one JSON encoder: encoding a delta once gives the bytes every client receives."""


def encode(value: object) -> bytes:
    """Encode any model (or plain value) to compact JSON bytes."""
    return encoder.encode(value)
