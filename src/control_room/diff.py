"""Pure diff of two snapshots into created / updated / deleted changes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from control_room.models import Change, JulesSession


def diff(
    previous: Mapping[str, JulesSession],
    current: Mapping[str, JulesSession],
    candidates: Iterable[str] | None = None,
) -> list[Change]:
    """Changes that turn `previous` into `current`, keyed by id.

    Order is deterministic: deletions, then creations and updates, each by ascending id.
    Deletions go first so a client never holds more sessions than either snapshot had.
    `candidates`, when given, are the only ids of `current` that may differ from
    `previous` (the mapping knows which sessions it decoded afresh); every other id must
    hold the very same object, so the scan of thousands of unchanged ids is skipped.
    """
    changes: list[Change] = [
        Change("deleted", sid, previous[sid], None)
        for sid in sorted(previous.keys() - current.keys())
    ]
    touched: list[Change] = []
    ids = current.keys() if candidates is None else candidates
    for sid in ids:
        after = current.get(sid)
        if after is None:
            continue  # a candidate that is gone (a command's re-read): deleted above
        before = previous.get(sid)
        if before is None:
            touched.append(Change("created", sid, None, after))
        elif before is not after and before != after:
            touched.append(Change("updated", sid, before, after))
    touched.sort(key=_by_id)
    changes.extend(touched)
    return changes


def _by_id(change: Change) -> str:
    return change.sessionId


def apply(snapshot: Mapping[str, JulesSession], changes: list[Change]) -> dict[str, JulesSession]:
    """Apply changes to a snapshot (what a client does); the inverse of `diff`."""
    result = dict(snapshot)
    for change in changes:
        if change.after is None:
            result.pop(change.sessionId, None)
        else:
            result[change.sessionId] = change.after
    return result
