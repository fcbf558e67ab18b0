"""Pure subscription views: which events a connection receives, and in which form.

A view filters the sessions channel by session id, repository and state, and adds the
activities channel when asked. A session entering a view is `created` for it and one
leaving is `deleted`, with the original event's `seq`, so a client's picture of its view is
always consistent. Views are values (hashable): connections with equal subscriptions share
one view, and each broadcast is projected once per distinct view, never once per client.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from control_room.broker.base import ACTIVITIES, Entry, Tag
from control_room.models import SESSION_STATES, JulesSession, is_repository

MAX_FILTER_VALUES: Final = 1_000
"""Entries per filter field, counted as sent (duplicates included): a dashboard watching a
thousand sessions by id is already an unusual view, and a longer list is a client bug; the
bound keeps a subscription's size (and its hash, and the answer that echoes it) small."""
MAX_FILTER_VALUE_CHARS: Final = 256
"""Ids are ~20 digits and `owner/repo` at most ~140 characters on GitHub."""

Projection = Literal["pass", "created", "deleted", "drop"]
"""What a view makes of an event: as is, as an entry into the view, as a departure, none."""


class BadFilter(ValueError):
    """A subscription field is unusable; the message names the field and what it takes,
    never the value sent."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _any(value: str) -> bool:
    return True


_VALID: Final[dict[str, tuple[Callable[[str], bool], str]]] = {
    "sessionIds": (_any, "session ids"),
    "repositories": (is_repository, "GitHub repositories written owner/repo"),
    "states": (SESSION_STATES.__contains__, "states among " + ", ".join(SESSION_STATES)),
}
"""Per filter field, what a value must be to ever match, and how the refusal says so."""


def _values(field: str, values: Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    listed = list(itertools.islice(values, MAX_FILTER_VALUES + 1))
    if len(listed) > MAX_FILTER_VALUES:
        raise BadFilter(field, f"at most {MAX_FILTER_VALUES} values")
    found = frozenset(v.strip() for v in listed)
    if "" in found:
        raise BadFilter(field, "values must not be empty")
    if any(len(v) > MAX_FILTER_VALUE_CHARS for v in found):
        raise BadFilter(field, f"values are at most {MAX_FILTER_VALUE_CHARS} characters")
    valid, what = _VALID[field]
    if not all(valid(v) for v in found):
        raise BadFilter(field, f"values must be {what}")
    return found


@dataclass(frozen=True, slots=True)
class View:
    """A connection's filters (None: no filter on that field) and whether it gets activities.

    An empty set filters everything out of that field (a view of nothing is legal); an
    empty value, an unknown state or a repository that is not `owner/repo` is refused,
    since it could never match.
    """

    session_ids: frozenset[str] | None = None
    repositories: frozenset[str] | None = None
    states: frozenset[str] | None = None
    activities: bool = False

    @classmethod
    def of(
        cls,
        *,
        session_ids: Iterable[str] | None = None,
        repositories: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        activities: bool = False,
    ) -> View:
        """A view from filter values; BadFilter when one is over a limit."""
        return cls(
            _values("sessionIds", session_ids),
            _values("repositories", repositories),
            _values("states", states),
            activities,
        )

    def listed(self, field: Literal["sessionIds", "repositories", "states"]) -> list[str] | None:
        """A filter as the server understood it: de-duplicated, trimmed and sorted (the same
        list for every subscription that means the same view); None when absent."""
        values = {
            "sessionIds": self.session_ids,
            "repositories": self.repositories,
            "states": self.states,
        }[field]
        return sorted(values) if values is not None else None

    @property
    def filtered(self) -> bool:
        """True when some session can be left out."""
        return not (self.session_ids is None and self.repositories is None and self.states is None)

    def admits(self, session_id: str, tag: Tag | None) -> bool:
        """Whether a session with this id and (repository, state) tag is in the view."""
        if tag is None:
            return False
        if self.session_ids is not None and session_id not in self.session_ids:
            return False
        if self.repositories is not None and tag[0] not in self.repositories:
            return False
        return self.states is None or tag[1] in self.states

    def admits_session(self, session: JulesSession) -> bool:
        """Whether `session` is in the view."""
        return self.admits(session.id, (session.repository, session.state))

    def select(self, sessions: Mapping[str, JulesSession]) -> list[JulesSession]:
        """The sessions of a snapshot that are in the view, in the snapshot's order."""
        if not self.filtered:
            return list(sessions.values())
        return [s for s in sessions.values() if self.admits_session(s)]

    def project(self, entry: Entry) -> Projection:
        """What this view makes of one event."""
        if entry.channel == ACTIVITIES:
            return (
                "pass" if self.activities and self.admits(entry.session_id, entry.after) else "drop"
            )
        if not self.filtered:
            return "pass"
        was = self.admits(entry.session_id, entry.before)
        now = self.admits(entry.session_id, entry.after)
        if was and now:
            return "pass"
        if now:  # entering; a `created` delta already is one, as published
            return "created" if entry.before is not None else "pass"
        if was:  # leaving; likewise a `deleted` delta
            return "deleted" if entry.after is not None else "pass"
        return "drop"


DEFAULT_VIEW: Final = View()
"""No subscription: every session delta, no activities (the seed's stream)."""
