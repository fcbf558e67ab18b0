"""The broker interface: numbers events per channel, keeps their history, delivers them.

Two channels, one epoch. `sessions` carries the seed's deltas (`created` / `updated` /
`deleted`): its `seq` grows by one per delta, so the default stream is exactly the seed's.
`activities` carries every new activity of every session, numbered on its own. Brokers and
stores deal in encoded events (`Entry`: JSON bytes plus what views need to route them),
never in WebSocket frames: framing and per-variant encodings belong to `ws/`, which caches
them on the batch (`Batch.prepared`, `Batch.forms`) for as long as the batch is delivered.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Final, Literal, Protocol

import msgspec

from control_room.messages import ActivityMessage
from control_room.models import Activity, Change, JulesSession, Position, SessionDelta, encode

Channel = Literal["sessions", "activities"]
SESSIONS: Final = "sessions"
ACTIVITIES: Final = "activities"

Tag = tuple[str, str]
"""What views filter a session on besides its id: (repository, state)."""

_delta_decoder: Final = msgspec.json.Decoder(SessionDelta)
_activity_decoder: Final = msgspec.json.Decoder(ActivityMessage)


class Fenced(ValueError):
    """This node may no longer publish: another node holds the lease (a newer fencing token)."""


class BrokerUnavailable(Exception):
    """The shared broker could not be reached; whether the last publish landed is unknown."""


class HistoryGone(Exception):
    """The requested position is older than the retained history (or from another epoch)."""

    def __init__(self, reason: str, oldest_seq: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.oldest_seq = oldest_seq


def tag_of(session: JulesSession | None) -> Tag | None:
    """The routing tag of a session (None for an absent one)."""
    return None if session is None else (session.repository, session.state)


class Entry:
    """One event in history: channel, number, session, JSON bytes (encoded once), route.

    `before` and `after` are the session's routing tags around the event: for a delta,
    those of its `before` and `after` (None when absent); for an activity, the session's
    tag when the activity was published (both the same). They let a filtered view decide
    membership without decoding. An entry read back from a store may lack them: they are
    then derived from the payload, once, on first use.
    """

    __slots__ = (
        "_after",
        "_before",
        "_routed",
        "channel",
        "payload",
        "seq",
        "session_id",
    )

    def __init__(
        self,
        seq: int,
        session_id: str,
        payload: bytes,
        channel: Channel = SESSIONS,
        route: tuple[Tag | None, Tag | None] | None = None,
    ) -> None:
        self.seq = seq
        self.session_id = session_id
        self.payload = payload
        self.channel: Channel = channel
        self._routed = route is not None
        self._before, self._after = route if route is not None else (None, None)

    def _route(self) -> None:
        if self.channel == SESSIONS:
            delta = _delta_decoder.decode(self.payload)
            self._before, self._after = tag_of(delta.before), tag_of(delta.after)
        self._routed = True

    @property
    def before(self) -> Tag | None:
        """The session's tag before the event (None: it did not exist)."""
        if not self._routed:
            self._route()
        return self._before

    @property
    def after(self) -> Tag | None:
        """The session's tag after the event (None: it no longer exists)."""
        if not self._routed:
            self._route()
        return self._after

    @property
    def route(self) -> tuple[Tag | None, Tag | None]:
        """(before, after): what stores keep so filtered replays need no decode."""
        return (self.before, self.after)

    @property
    def type(self) -> str:
        """`created`, `updated`, `deleted` or `activity`."""
        if self.channel == ACTIVITIES:
            return "activity"
        if self.before is None:
            return "created"
        return "deleted" if self.after is None else "updated"

    @classmethod
    def of_delta(cls, delta: SessionDelta) -> Entry:
        """An entry for a stamped delta, encoded now."""
        route = (tag_of(delta.before), tag_of(delta.after))
        return cls(delta.seq, delta.sessionId, encode(delta), SESSIONS, route)

    @classmethod
    def of_activity(cls, message: ActivityMessage, tag: Tag | None) -> Entry:
        """An entry for a stamped activity of a session whose tag is `tag` now."""
        return cls(message.seq, message.sessionId, encode(message), ACTIVITIES, (tag, tag))


class Batch:
    """The events of one poll, published together: deltas first, then activities.

    `entries` are the `sessions` channel's (what the store's delta log and webhooks take),
    `activities` the `activities` channel's. `prepared` holds what the delivering layer
    built from this batch, keyed by its own keys (frames per view and wire variant), so
    each is built once per broadcast, however many clients share it; `forms` what it made
    of each entry on the way (another view's form, MessagePack, compressed bytes). Both go
    with the batch: history keeps only each entry's JSON.
    """

    __slots__ = ("_activity_messages", "_deltas", "activities", "entries", "forms", "prepared")

    def __init__(
        self,
        deltas: Sequence[SessionDelta] = (),
        activities: Sequence[tuple[ActivityMessage, Tag | None]] = (),
    ) -> None:
        self._deltas: list[SessionDelta] | None = list(deltas)
        self.entries = [Entry.of_delta(d) for d in deltas]
        self._activity_messages: list[ActivityMessage] | None = [m for m, _ in activities]
        self.activities = [Entry.of_activity(m, tag) for m, tag in activities]
        self.prepared: dict[Hashable, tuple[bytes, int]] = {}
        self.forms: dict[Hashable, bytes] = {}

    @classmethod
    def of_entries(cls, entries: Sequence[Entry], activities: Sequence[Entry] = ()) -> Batch:
        """A batch of events already encoded elsewhere (read from a store or another node)."""
        batch = cls()
        batch.entries, batch.activities = list(entries), list(activities)
        batch._deltas = batch._activity_messages = None
        return batch

    @property
    def deltas(self) -> list[SessionDelta]:
        """The sessions channel's deltas as objects (decoded on first use if need be)."""
        if self._deltas is None:
            self._deltas = [_delta_decoder.decode(e.payload) for e in self.entries]
        return self._deltas

    @property
    def activity_messages(self) -> list[ActivityMessage]:
        """The activities channel's messages as objects (decoded on first use if need be)."""
        if self._activity_messages is None:
            self._activity_messages = [_activity_decoder.decode(e.payload) for e in self.activities]
        return self._activity_messages

    def __bool__(self) -> bool:
        return bool(self.entries or self.activities)

    @property
    def events(self) -> list[Entry]:
        """Every entry in publish order."""
        return self.entries + self.activities if self.activities else self.entries

    @property
    def first_seq(self) -> int:
        """The seq of the first delta."""
        return self.entries[0].seq

    @property
    def last_seq(self) -> int:
        """The seq of the last delta."""
        return self.entries[-1].seq

    def last_of(self, channel: Channel) -> int | None:
        """The last seq of `channel` in this batch (None: the batch has none)."""
        entries = self.entries if channel == SESSIONS else self.activities
        return entries[-1].seq if entries else None


def stamp_changes(changes: Sequence[Change], timestamp: str, seq: int) -> list[SessionDelta]:
    """Number changes on the sessions channel after `seq` (what every broker's stamp does)."""
    return [
        SessionDelta(
            type=c.type,
            sessionId=c.sessionId,
            before=c.before,
            after=c.after,
            timestamp=timestamp,
            seq=seq + i,
        )
        for i, c in enumerate(changes, start=1)
    ]


def stamp_activity_list(
    activities: Sequence[Activity], timestamp: str, seq: int
) -> list[ActivityMessage]:
    """Number activities on their channel after `seq`."""
    return [
        ActivityMessage(sessionId=a.sessionId, activity=a, timestamp=timestamp, seq=seq + i)
        for i, a in enumerate(activities, start=1)
    ]


class Sink(Protocol):
    """Something in this process that receives every published batch, synchronously."""

    def deliver(self, batch: Batch) -> None:
        """Take the batch; must not block or await (a slow reader is the sink's problem)."""


class Broker(Protocol):
    """Numbers events per channel, keeps history, fans batches out to this process's sinks."""

    @property
    def position(self) -> Position:
        """The epoch and the last seq of each channel."""

    def stamp(self, changes: Sequence[Change], timestamp: str) -> list[SessionDelta]:
        """Number changes on the sessions channel from the current position, unpublished."""

    def stamp_activities(
        self, activities: Sequence[Activity], timestamp: str
    ) -> list[ActivityMessage]:
        """Number activities on their channel from the current position, unpublished."""

    async def publish(self, batch: Batch) -> None:
        """Append a stamped batch to history and deliver it to every sink.

        Async because a shared broker (Redis) publishes over the network; the memory broker
        completes without suspending. Raises ValueError when the batch does not follow the
        position (and, for a shared broker, when this node may no longer publish).
        """

    def add_sink(self, sink: Sink) -> None:
        """Deliver every later batch to `sink`."""

    async def reach(self, seq: int, activities_seq: int | None = None) -> None:
        """Return once this process has delivered up to `seq` (and `activities_seq`) if the
        shared stream already holds them, waiting a bounded time for a lagging reader; at
        once when they were never published. A client's position ahead of `position` after
        this is ahead of the whole service (e.g. its history was restored from a backup)."""

    async def history(
        self,
        since: int,
        limit: int | None = None,
        session_id: str | None = None,
        channel: Channel = SESSIONS,
    ) -> list[Entry]:
        """Entries of `channel` after `since`, oldest first; HistoryGone when no longer kept."""
