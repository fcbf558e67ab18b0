"""What the SQLite and PostgreSQL stores share: schema version, row shapes, limits, errors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import msgspec

from control_room.broker.base import ACTIVITIES, SESSIONS, Batch, Channel, Entry
from control_room.models import JulesSession, Position, Snapshot, encode
from control_room.store.base import SchemaTooNew

SCHEMA_VERSION: Final = 2
"""The newest schema this code knows; each backend has one migration per version up to it."""

PRUNE_CHUNK: Final = 10_000
"""Deltas deleted per transaction when pruning: a few ms of work, so a prune that has a
backlog of a million rows (first start after a long stop) never holds up a poll's save."""

HISTORY_EXPIRED: Final = "history_expired"
"""The HistoryGone reason, the same word the memory ring uses."""

# Keys of the `meta` table (text values: one tiny table, read once at start).
META_SCHEMA_VERSION: Final = "schema_version"
META_EPOCH: Final = "epoch"
META_SEQ: Final = "seq"
META_PRUNED_THROUGH: Final = "pruned_through"
"""Every delta with seq <= this has been pruned; history after it is complete."""
META_ACTIVITIES_SEQ: Final = "activities_seq"
META_ACTIVITIES_PRUNED_THROUGH: Final = "activities_pruned_through"


@dataclass(frozen=True)
class ChannelLog:
    """Where one channel's events are kept: its table and its two meta keys."""

    channel: Channel
    table: str
    seq_key: str
    pruned_key: str


LOGS: Final = (
    ChannelLog(SESSIONS, "deltas", META_SEQ, META_PRUNED_THROUGH),
    ChannelLog(ACTIVITIES, "activity_log", META_ACTIVITIES_SEQ, META_ACTIVITIES_PRUNED_THROUGH),
)
LOG_OF: Final = {log.channel: log for log in LOGS}


def channel_entries(batch: Batch, channel: Channel) -> list[Entry]:
    """The batch's entries of one channel."""
    return batch.entries if channel == SESSIONS else batch.activities


def channel_seq(position: Position, channel: Channel) -> int:
    """The position's last seq on one channel."""
    return position.seq if channel == SESSIONS else position.activities_seq


def log_row(entry: Entry, ts: float) -> tuple[int, str, float, bytes, str | None, str | None]:
    """(seq, session_id, ts, payload, repository, state): one history row of any channel.

    Activities keep the session's (repository, state) at publish time, which a filtered
    replay needs and the payload does not hold; deltas derive theirs from the payload.
    """
    tag = entry.after if entry.channel == ACTIVITIES else None
    return (
        entry.seq,
        entry.session_id,
        ts,
        entry.payload,
        tag[0] if tag is not None else None,
        tag[1] if tag is not None else None,
    )


def history_entry(
    channel: Channel, seq: int, session_id: str, payload: bytes, repo: str | None, state: str | None
) -> Entry:
    """A history row back into an entry."""
    if channel == ACTIVITIES:
        tag = (repo, state) if repo is not None and state is not None else None
        return Entry(seq, session_id, payload, ACTIVITIES, (tag, tag))
    return Entry(seq, session_id, payload)


_decode_session: Final = msgspec.json.Decoder(JulesSession)


def decode_session(body: bytes) -> JulesSession:
    """A snapshot row back into a session."""
    return _decode_session.decode(body)


def snapshot_rows(sessions: Snapshot) -> list[tuple[str, bytes]]:
    """Every session as a (id, encoded) row: the whole snapshot, for a baseline."""
    return [(sid, encode(session)) for sid, session in sessions.items()]


def changed_rows(
    batch: Batch, sessions: Snapshot, overwritten: Iterable[str] = ()
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The snapshot rows a batch touches: (id, encoded) to upsert, and ids to delete.

    Only the sessions named by the batch are written, so a poll that changed 10 of 10,000
    sessions rewrites 10 rows. `overwritten` names the sessions of deltas this save replaces
    (see `first_seq_to_write`): their rows are set back to the current state as well.
    """
    upserts: list[tuple[str, bytes]] = []
    deletes: list[str] = []
    for sid in dict.fromkeys([*(e.session_id for e in batch.entries), *overwritten]):
        session = sessions.get(sid)
        if session is None:
            deletes.append(sid)
        else:
            upserts.append((sid, encode(session)))
    return upserts, deletes


def first_seq_to_write(entries: list[Entry], seq: int) -> int:
    """Where this save starts: rows from here on are replaced.

    A save whose commit was acknowledged too late (the connection dropped after COMMIT) is
    retried by the poller with the same seqs; deleting from here first makes the retry
    overwrite, instead of failing on the primary key forever or leaving stale rows beyond
    the new position. The lost commit's snapshot rows are repaired by `changed_rows`.
    """
    return entries[0].seq if entries else seq + 1


def check_version(found: int) -> None:
    """Raise SchemaTooNew when the database was written by newer code."""
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {found} is newer than this control-room understands "
            f"({SCHEMA_VERSION}); upgrade control-room or point it at another database"
        )
