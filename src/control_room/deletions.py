"""Pure rules for sessions that vanished from a listing: which to check, which are deleted.

A listing is never trusted blindly: paging while the list shifts, an empty `{}` answer or
a page cut short all make sessions vanish that still exist. So a bounded sample of the
vanished sessions is checked one by one (`GET /sessions/{id}`), whatever their number:
evenly spread over them, plus the ones right after each page boundary (where an
offset-paged listing skips sessions when the list shifts between two page requests). The
answers decide:

- every sampled session is really gone (404, or archived): the listing is vouched for,
  and every vanished session is deleted, the unsampled ones included (a mass clean-up);
- any sampled session still exists: the listing is *torn*; the poller lists again;
- otherwise (a check failed or ran out of time): only the sessions whose deletion was
  confirmed are deleted; the others are kept as they were, and checked again next poll.

Nothing here does I/O; the poller runs the checks and applies the `Verdict`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from control_room.jules.types import Session

CHECK_SAMPLE: Final = 16
"""Vanished sessions checked per listing, evenly spread: any contiguous run of sessions
that still exist wider than 1/16 of the vanished ones is hit (the runs at page boundaries,
where offset paging tears, are sampled apart: SEAM_SAMPLE); at 4 in flight and ~0.2 s per
GET they take under a second."""
SEAM_SAMPLE: Final = 16
"""Vanished sessions checked at page boundaries, on top of CHECK_SAMPLE: the first and the
last of the run that vanished right after a page's last session, for up to eight
boundaries (nearest the top first). A tear with offset paging is exactly such a run, and
can be far narrower than 1/16 of a mass deletion in the same poll; a boundary followed by
vanished sessions is otherwise rare, so this costs nothing in a normal poll."""


class Outcome(enum.Enum):
    """What one check said about one vanished session."""

    GONE = "gone"  # 404 NOT_FOUND, or the session is archived
    PRESENT = "present"  # it exists and is not archived: the listing missed it
    UNKNOWN = "unknown"  # the check failed, answered nonsense, or ran out of time


@dataclass(frozen=True, slots=True)
class Check:
    """The answer for one session: the outcome, the session when PRESENT, why when UNKNOWN."""

    outcome: Outcome
    session: Session | None = None
    why: str = ""


GONE: Final = Check(Outcome.GONE)


@dataclass(slots=True)
class Verdict:
    """What to do with each vanished session."""

    deleted: set[str] = field(default_factory=set)
    present: dict[str, Session] = field(default_factory=dict)  # kept, with the GET's data
    unconfirmed: set[str] = field(default_factory=set)  # kept as they were: not proven gone

    @property
    def torn(self) -> bool:
        """True when the listing missed sessions that still exist."""
        return bool(self.present)


def sample(
    vanished: Iterable[str],
    order: Sequence[str],
    limit: int = CHECK_SAMPLE,
    seams: Iterable[str] = (),
    seam_limit: int = SEAM_SAMPLE,
) -> list[str]:
    """The vanished ids to check: at most `limit` evenly spread over their places in the
    previous listing, and at most `seam_limit` more at page boundaries.

    `order` is the previous listing's ids in listing order; ids missing from it go last.
    All of them when there are no more than `limit`. `seams` are the ids of the last
    session of each page of the current listing (MappedListing.seams): for each, the first
    and the last of the vanished sessions that follow it without a gap in `order`.
    """
    gone = set(vanished)
    ordered = [sid for sid in order if sid in gone]
    ordered += sorted(gone.difference(ordered))
    n = len(ordered)
    if n <= limit:
        return ordered
    # The first and the last, and `limit - 2` evenly between: both ends of any run.
    picked = [ordered[round(i * (n - 1) / (limit - 1))] for i in range(limit)]
    place = {sid: i for i, sid in enumerate(order)}
    at_seams: list[str] = []
    for seam in seams:
        start = place.get(seam)
        if start is None:
            continue
        end = start + 1
        while end < len(order) and order[end] in gone:
            end += 1
        if end > start + 1:
            at_seams += [order[start + 1], order[end - 1]]
    chosen = dict.fromkeys(picked)
    extra = [sid for sid in dict.fromkeys(at_seams) if sid not in chosen]
    return [*chosen, *extra[:seam_limit]]


def judge(vanished: Iterable[str], checks: Mapping[str, Check]) -> Verdict:
    """Decide every vanished session from the checks of a sample of them (see the module)."""
    vouched = bool(checks) and all(c.outcome is Outcome.GONE for c in checks.values())
    verdict = Verdict()
    for sid in vanished:
        check = checks.get(sid)
        if check is None:
            (verdict.deleted if vouched else verdict.unconfirmed).add(sid)
        elif check.outcome is Outcome.GONE:
            verdict.deleted.add(sid)
        elif check.outcome is Outcome.PRESENT and check.session is not None:
            verdict.present[sid] = check.session
        else:
            verdict.unconfirmed.add(sid)
    return verdict
