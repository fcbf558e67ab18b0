"""Pure mapping of Jules Sessions to the control room's JulesSession shape."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from control_room import rfc3339
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

UNSPECIFIED: Final = "STATE_UNSPECIFIED"  # what an absent or null `state` reads as
BEFORE_APPROVAL: Final = frozenset({UNSPECIFIED, "QUEUED", "PLANNING", "AWAITING_PLAN_APPROVAL"})
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
    state = session.state or UNSPECIFIED
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
    for output in session.outputs or ():
        pr = output.pullRequest if output is not None else None
        if pr is not None and pr.url:
            return PullRequest(url=pr.url, title=pr.title or "")
    return None


def map_session(session: Session, previous: JulesSession | None = None) -> JulesSession:
    """Map one Jules Session; `previous` is what this service last showed for the same id.

    Absent and `null` fields alike become the empty value of the seed's shape.
    """
    context = session.sourceContext
    repo_context = context.githubRepoContext if context is not None else None
    state = session.state or UNSPECIFIED
    return JulesSession(
        id=session.session_id,
        repository=repository_of(context.source or "") if context is not None else "",
        branch=(repo_context.startingBranch or "") if repo_context is not None else "",
        title=session.title or "",
        state=state,
        planStatus=PLAN_STATUS.get(state, "pending"),
        approval=approval_of(session, previous),
        participants=(),
        createdAt=session.createTime or "",
        updatedAt=session.updateTime or "",
        url=session.url or "",
        pullRequest=pull_request_of(session),
    )


RESYNC_WINDOW: Final = 8
"""How far (in positions) an unchanged session is looked for when the listing shifted:
sessions created above it or deleted before it move it by one place each; more than eight
such changes in one poll is rare, and then the session is simply decoded again."""


RejectKind = Literal["undecodable", "identity_conflict", "no_id"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A listing entry that could not be used: which sessions it may be, and why not.

    `ids` holds the ids the entry names (none when it names none, two when `id` and `name`
    disagree); `kept` those of them whose last good version stands in for it.
    """

    ids: tuple[str, ...]
    kind: RejectKind
    reason: str
    kept: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The entry's id(s) for a log line (`?` when it names none)."""
        return " / ".join(self.ids) or "?"


class MappedListing:
    """A complete upstream listing, mapped; remembers each entry's raw JSON and id.

    The next listing recognises an unchanged session by comparing its bytes with the entry
    at the same position last time (one memcmp, exact): no copy, no hash, no decode.
    What the listing got wrong is kept for the poller to report: `rejected` entries (not
    decodable, no id, `id` and `name` disagreeing), `duplicates` (an id listed again) and
    `stale` (a version older than the one already shown, which is kept).
    """

    __slots__ = (
        "duplicates",
        "fresh",
        "ids",
        "page_ends",
        "raws",
        "rejected",
        "sessions",
        "stale",
    )

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
        self.rejected: list[Rejected] = []
        self.duplicates: list[str] = []
        self.stale: list[str] = []
        # Where each page of the listing ended (indices into `raws`), when it was paged.
        self.page_ends: Sequence[int] = ()

    @classmethod
    def empty(cls) -> MappedListing:
        """A listing with no sessions (the state before the first poll)."""
        return cls((), (), {})

    @classmethod
    def of(cls, sessions: dict[str, JulesSession]) -> MappedListing:
        """A listing known only by its mapped sessions (loaded from a store)."""
        return cls((), (), sessions, None)

    def order(self) -> list[str]:
        """Every session id, in listing order where the raw listing is known."""
        listed = [sid for sid in self.ids if sid is not None and sid in self.sessions]
        seen = set(listed)
        return listed + sorted(sid for sid in self.sessions if sid not in seen)

    def seams(self) -> list[str]:
        """The last usable session of every page but the last: where an offset-paged
        listing that shifted between two page requests skips sessions (right after it)."""
        found: list[str] = []
        for end in self.page_ends:
            if end >= len(self.ids):
                continue
            sid = next((s for s in reversed(self.ids[:end]) if s is not None), None)
            if sid is not None:
                found.append(sid)
        return found


def map_listing(listing: Iterable[RawSession], previous: MappedListing) -> MappedListing:
    """Map a complete listing of raw sessions, reusing every unchanged session's mapping.

    Only sessions whose bytes changed are decoded and mapped: a poll where 1 % of 10,000
    sessions changed decodes 100. An entry is matched against the previous listing at the
    same position, then within RESYNC_WINDOW places (the list shifted). Archived sessions
    are left out. Never raises on bad data: an entry that does not decode, names no session,
    or whose `id` and `name` disagree is `rejected`, and the sessions it names keep their
    previous version (a new one waits); a repeated id keeps its first occurrence (the
    newest, as the upstream lists newest first) and is noted in `duplicates`; a version
    whose `updateTime` is older than the one shown is `stale` and the shown one is kept.
    """
    raws = list(listing)
    ids: list[str | None] = [None] * len(raws)
    sessions: dict[str, JulesSession] = {}
    fresh: list[str] = []
    rejected: list[Rejected] = []
    duplicates: list[str] = []
    stale: list[str] = []
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
        if j >= 0 and prev_ids[j] is not None:
            sid = prev_ids[j]
            assert sid is not None
            if sid in sessions:
                duplicates.append(sid)
            else:
                ids[i] = sid
                sessions[sid] = prev_sessions[sid]
            continue
        # Changed bytes, or an entry skipped last time (archived, rejected): decode it.
        try:
            session = decode(raw)
        except msgspec.MsgspecError as exc:  # not JSON, or a field of the wrong type
            rejected.append(Rejected(_named_ids(raw), "undecodable", f"does not decode: {exc}"))
            continue
        if session.identity_conflict:
            named = (session.id or "", (session.name or "").rpartition("/")[2])
            reason = f"id {session.id!r} and name {session.name!r} disagree"
            rejected.append(Rejected(tuple(x for x in named if x), "identity_conflict", reason))
            continue
        sid = session.session_id
        if not sid:
            rejected.append(Rejected((), "no_id", "has neither id nor name"))
            continue
        if session.archived:
            continue
        if sid in sessions:
            duplicates.append(sid)
            continue
        before = prev_sessions.get(sid)
        if before is not None and is_older(session.updateTime, before.updatedAt):
            stale.append(sid)
            ids[i] = sid  # the same stale bytes next time keep the shown version again
            sessions[sid] = before
            continue
        ids[i] = sid
        sessions[sid] = map_session(session, before)
        fresh.append(sid)
    # Last, so that a good entry for the same id elsewhere in the listing wins.
    for index, entry in enumerate(rejected):
        kept = tuple(x for x in entry.ids if x not in sessions and x in prev_sessions)
        for sid in kept:
            sessions[sid] = prev_sessions[sid]
        rejected[index] = Rejected(entry.ids, entry.kind, entry.reason, kept)
    mapped = MappedListing(raws, ids, sessions, fresh)
    mapped.rejected, mapped.duplicates, mapped.stale = rejected, duplicates, stale
    return mapped


def _named_ids(raw: RawSession) -> tuple[str, ...]:
    """The ids an undecodable entry names, read as loosely as possible."""
    try:
        loose = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ()
    if not isinstance(loose, dict):
        return ()
    named = loose.get("id"), loose.get("name")
    found = [named[0]] if isinstance(named[0], str) and named[0] else []
    if isinstance(named[1], str) and named[1]:
        found.append(named[1].rpartition("/")[2])
    return tuple(dict.fromkeys(found))


def is_older(update_time: str | None, shown: str) -> bool:
    """True when `update_time` is strictly before `shown` (both RFC 3339; unparsable: no)."""
    if not update_time or not shown:
        return False
    new, old = rfc3339.parse(update_time), rfc3339.parse(shown)
    return new is not None and old is not None and new < old
