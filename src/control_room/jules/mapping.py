"""Pure mapping of Jules Sessions to the control room's JulesSession shape."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from control_room.jules.types import RawSession, Session, session_decoder
from control_room.models import Approval, JulesSession, PullRequest

GITHUB_PREFIX: Final = "sources/github/"
SOURCES_PREFIX: Final = "sources/"

PLAN_STATUS: Final[Mapping[str, str]] = {
    "QUEUED": "pending",
    "PLANNING": "pending",
    "AWAITING_PLAN_APPROVAL": "pending",
    "IN_PROGRESS": "in_progress",
    "AWAITING_USER_FEEDBACK": "in_progress",
    "PAUSED": "in_progress",
    # Older clients report a legacy ACTIVE; it only ever meant "working".
    "ACTIVE": "in_progress",
    "COMPLETED": "succeeded",
    "FAILED": "failed",
}
"""Jules state -> the seed's planStatus; anything else (the API is alpha) is `pending`."""

BEFORE_APPROVAL: Final = frozenset(
    {"STATE_UNSPECIFIED", "QUEUED", "PLANNING", "AWAITING_PLAN_APPROVAL"}
)
PAST_APPROVAL: Final = frozenset(
    {"IN_PROGRESS", "AWAITING_USER_FEEDBACK", "PAUSED", "COMPLETED", "ACTIVE"}
)
# FAILED and unknown states say nothing about approval: the previous verdict stands.

PENDING: Final = Approval(state="pending")
APPROVED_UNSEEN: Final = Approval(state="approved")


def repository_of(source: str) -> str:
    """`sources/github/owner/repo` -> `owner/repo`; other sources keep what follows `sources/`."""
    if source.startswith(GITHUB_PREFIX):
        return source[len(GITHUB_PREFIX) :]
    if source.startswith(SOURCES_PREFIX):
        return source[len(SOURCES_PREFIX) :]
    return source


def approval_of(session: Session, previous: JulesSession | None) -> Approval:
    """Approval as seen by this service: `approvedAt` only when it saw the plan move on."""
    state = session.state
    if state in BEFORE_APPROVAL:
        return PENDING
    if state in PAST_APPROVAL:
        if previous is None:
            return APPROVED_UNSEEN
        if previous.approval.state == "approved":
            return previous.approval
        return Approval(state="approved", approvedAt=session.updateTime or None)
    return previous.approval if previous is not None else PENDING


def pull_request_of(session: Session) -> PullRequest | None:
    """The first pull request among the outputs, if any."""
    for output in session.outputs:
        pr = output.pullRequest
        if pr is not None and pr.url:
            return PullRequest(url=pr.url, title=pr.title)
    return None


def map_session(session: Session, previous: JulesSession | None = None) -> JulesSession:
    """Map one Jules Session; `previous` is what this service last showed for the same id."""
    context = session.sourceContext
    repo_context = context.githubRepoContext if context is not None else None
    return JulesSession(
        id=session.session_id,
        repository=repository_of(context.source) if context is not None else "",
        branch=repo_context.startingBranch if repo_context is not None else "",
        title=session.title,
        state=session.state,
        planStatus=PLAN_STATUS.get(session.state, "pending"),
        approval=approval_of(session, previous),
        participants=(),
        createdAt=session.createTime,
        updatedAt=session.updateTime,
        url=session.url,
        pullRequest=pull_request_of(session),
    )


RESYNC_WINDOW: Final = 8
"""How far (in positions) an unchanged session is looked for when the listing shifted:
sessions created above it or deleted before it move it by one place each; more than eight
such changes in one poll is rare, and then the session is simply decoded again."""


class MappedListing:
    """A complete upstream listing, mapped; remembers each entry's raw JSON and id.

    The next listing recognises an unchanged session by comparing its bytes with the entry
    at the same position last time (one memcmp, exact): no copy, no hash, no decode.
    """

    __slots__ = ("fresh", "ids", "raws", "sessions")

    def __init__(
        self,
        raws: Sequence[RawSession],
        ids: Sequence[str | None],
        sessions: dict[str, JulesSession],
        fresh: list[str] | None = None,
    ) -> None:
        self.raws = raws
        self.ids = ids  # the session each raw entry became; None when it was skipped
        self.sessions = sessions
        # Ids mapped afresh from changed bytes: the only ones that can differ from the
        # previous listing (None: unknown, compare them all).
        self.fresh = fresh

    @classmethod
    def empty(cls) -> MappedListing:
        """A listing with no sessions (the state before the first poll)."""
        return cls((), (), {})

    @classmethod
    def of(cls, sessions: dict[str, JulesSession]) -> MappedListing:
        """A listing known only by its mapped sessions (loaded from a store)."""
        return cls((), (), sessions, None)


def map_listing(listing: Iterable[RawSession], previous: MappedListing) -> MappedListing:
    """Map a complete listing of raw sessions, reusing every unchanged session's mapping.

    Only sessions whose bytes changed are decoded and mapped: a poll where 1 % of 10,000
    sessions changed decodes 100. An entry is matched against the previous listing at the
    same position, then within RESYNC_WINDOW places (the list shifted). Archived sessions
    and entries with no id are left out; a repeated id (paging while the list shifts)
    keeps its first occurrence, the newest when the upstream lists newest first. A session
    that does not decode raises msgspec.ValidationError (or DecodeError): the listing as a
    whole is then unusable.
    """
    raws = list(listing)
    ids: list[str | None] = [None] * len(raws)
    sessions: dict[str, JulesSession] = {}
    fresh: list[str] = []
    prev_raws, prev_ids, prev_sessions = previous.raws, previous.ids, previous.sessions
    n_prev = len(prev_raws)
    decode = session_decoder.decode
    offset = 0
    for i, raw in enumerate(raws):
        j = i + offset
        if not (0 <= j < n_prev and raw == prev_raws[j]):
            j = -1
            for k in range(
                max(0, i + offset - RESYNC_WINDOW), min(n_prev, i + offset + RESYNC_WINDOW + 1)
            ):
                if raw == prev_raws[k]:
                    j = k
                    offset = k - i
                    break
        if j >= 0:
            sid = prev_ids[j]
            if sid is not None and sid not in sessions:
                ids[i] = sid
                sessions[sid] = prev_sessions[sid]
            continue
        session = decode(raw)
        sid = session.session_id
        if not sid or session.archived or sid in sessions:
            continue
        ids[i] = sid
        sessions[sid] = map_session(session, prev_sessions.get(sid))
        fresh.append(sid)
    return MappedListing(raws, ids, sessions, fresh)
