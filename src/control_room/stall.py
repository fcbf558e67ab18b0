"""Pure stall rule: an IN_PROGRESS session with no sign of life for STALL_AFTER is flagged.

The flag is part of the session shape (`stalledSince`: when the last sign of life was
seen), so it reaches clients as an `updated` delta, and disappears (another `updated`) when
the session moves again. It is derived from time, not from the upstream's answer: the
poller re-applies it to every session on every poll, because the mapping reuses the
previous poll's objects for sessions whose bytes did not change.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Final

import msgspec

from control_room import rfc3339
from control_room.models import JulesSession

WORKING: Final = "IN_PROGRESS"
"""The one state in which silence means something is wrong: waiting states wait for a
person, and finished ones have nothing left to do."""


def last_sign_of_life(session: JulesSession, last_activity: str | None) -> str:
    """The later of the session's last known activity and its `updatedAt` (RFC 3339)."""
    if last_activity and rfc3339.later(last_activity, session.updatedAt):
        return last_activity
    return session.updatedAt or last_activity or ""


def stalled_since(
    session: JulesSession, last_activity: str | None, now: float, stall_after: float
) -> str | None:
    """When the session went quiet, if it is IN_PROGRESS and quiet for `stall_after` seconds
    at `now` (Unix seconds); else None. A time that does not parse never flags."""
    if session.state != WORKING:
        return None
    last = last_sign_of_life(session, last_activity)
    when = rfc3339.parse(last)
    if when is None or now - when.timestamp() < stall_after:
        return None
    return last


def apply_stalls(
    sessions: MutableMapping[str, JulesSession],
    last_activity: Callable[[str], str | None],
    now: float,
    stall_after: float,
) -> list[str]:
    """Set or clear `stalledSince` on every session that needs it; the ids changed.

    Sessions are replaced (they are frozen), never mutated.
    """
    changed: list[str] = []
    for sid, session in sessions.items():
        if session.state != WORKING and session.stalledSince is None:
            continue
        wanted = stalled_since(session, last_activity(sid), now, stall_after)
        if wanted != session.stalledSince:
            changed.append(sid)
    for sid in changed:
        session = sessions[sid]
        wanted = stalled_since(session, last_activity(sid), now, stall_after)
        sessions[sid] = msgspec.structs.replace(session, stalledSince=wanted)
    return changed
