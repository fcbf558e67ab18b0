"""Pure rules for sessions that vanished from a listing: which to check, which are deleted.

A listing is never trusted blindly: paging while the list shifts, an empty `{}` answer or
a page cut short all make sessions vanish that still exist. So a bounded, evenly spread
sample of the vanished sessions is checked one by one (`GET /sessions/{id}`), whatever
their number, and the answers decide:

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
"""Vanished sessions checked per listing. Tears are contiguous runs (a page boundary that
moved), so 16 evenly spread checks catch any tear wider than 1/16 of the vanished sessions;
at 4 in flight and ~0.2 s per GET they take under a second."""


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


def sample(vanished: Iterable[str], order: Sequence[str], limit: int = CHECK_SAMPLE) -> list[str]:
    """At most `limit` vanished ids, evenly spread over their places in the previous listing.

    `order` is the previous listing's ids in listing order; ids missing from it go last.
    All of them when there are no more than `limit`.
    """
    gone = set(vanished)
    ordered = [sid for sid in order if sid in gone]
    ordered += sorted(gone.difference(ordered))
    n = len(ordered)
    if n <= limit:
        return ordered
    # The first and the last, and `limit - 2` evenly between: both ends of any run.
    return [ordered[round(i * (n - 1) / (limit - 1))] for i in range(limit)]


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
