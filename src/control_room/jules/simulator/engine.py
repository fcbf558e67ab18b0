"""The simulator's engine: Jules sessions, their activities and their lifecycle, with no I/O.

Sessions and activities are plain dicts in the real API's wire shape. A session's dict is
replaced, never mutated, on every change, so a dict handed out earlier stays a faithful
snapshot of its moment. Everything random comes from one `random.Random(seed)` and every time
from one clock, so a seed and a clock give the same history.

**updateTime moves with activities.** Every change to a session, and every new activity, sets
the session's `updateTime` (a new activity's `createTime` *is* the session's new `updateTime`).
The control room relies on this: it fetches a session's activities only when its `updateTime`
moved, and then only those newer than the last it has (`filter=create_time>"..."`).

A session's life, as the real API shows it:
QUEUED -> PLANNING -> `planGenerated` (a plan for every session) -> AWAITING_PLAN_APPROVAL when
the session requires approval, until `:approvePlan` (`planApproved` from the user), else
`planApproved` from the system at once -> IN_PROGRESS, one `progressUpdated` per plan step
(some carrying a `changeSet` or `bashOutput` artifact, rarely `media`) -> now and then an
`agentMessaged` question (AWAITING_USER_FEEDBACK until `:sendMessage`) or a stop in PAUSED that
never resumes on its own -> `sessionCompleted` (outputs: a pull request with AUTO_CREATE_PR,
else the change set) or `sessionFailed {reason}`, both from the agent. A message to a
COMPLETED or PAUSED session sets it moving again. A simulated user stands in for the real one
(approves, answers, sometimes follows up) so an unattended simulator keeps moving.

Two ways of living, chosen at construction:
- **board** (`Simulator(seed)`, the demo): each `tick()` is one step of a dozen sessions that
  start, move on coin flips, finish and are deleted a few ticks later.
- **account** (`Simulator(seed, active=n)`, or `Simulator.large_account(total, active)`):
  thousands of mostly finished sessions that are never deleted, and `n` in flight; `tick()`
  moves each in-flight session by the clock, about one activity per `activity_interval`
  seconds, and when one settles starts another (or, now and then, reopens a finished one).
"""

from __future__ import annotations

import bisect
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from control_room.jules.simulator.accounting import RequestCounts
from control_room.jules.simulator.content import (
    ANSWERS,
    FAILURE_REASONS,
    FOLLOW_UPS,
    QUESTIONS,
    REPOS,
    SOURCE_PREFIX,
    TASKS,
    Repo,
    Resource,
    Task,
    bash_output,
    change_set,
    hex_id,
    media,
    plan,
    progress_note,
    source_resource,
)
from control_room.jules.simulator.errors import (
    ActivitiesNotReady,
    ActivityNotFound,
    FailedPrecondition,
    InvalidArgument,
    SessionNotFound,
    SourceNotFound,
)
from control_room.jules.simulator.faults import Faults
from control_room.jules.simulator.filters import TimeBound
from control_room.jules.simulator.timestamps import FRACTION_DIGITS, format_timestamp

# --- States and names of the real API ------------------------------------------------------------

QUEUED: Final = "QUEUED"
PLANNING: Final = "PLANNING"
AWAITING_PLAN_APPROVAL: Final = "AWAITING_PLAN_APPROVAL"
AWAITING_USER_FEEDBACK: Final = "AWAITING_USER_FEEDBACK"
IN_PROGRESS: Final = "IN_PROGRESS"
PAUSED: Final = "PAUSED"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"

FINISHED: Final = frozenset({COMPLETED, FAILED})
# Nothing more happens to these without a message (PAUSED sessions never resume on their own).
SETTLED: Final = frozenset({COMPLETED, FAILED, PAUSED})
WAITING: Final = frozenset({AWAITING_PLAN_APPROVAL, AWAITING_USER_FEEDBACK})
LIFECYCLE_STATES: Final = (
    QUEUED,
    PLANNING,
    AWAITING_PLAN_APPROVAL,
    IN_PROGRESS,
    AWAITING_USER_FEEDBACK,
    PAUSED,
    COMPLETED,
    FAILED,
)
# A message sets these moving; in the others it is recorded and the state stays.
MESSAGE_RESUMES: Final = frozenset({AWAITING_USER_FEEDBACK, COMPLETED, PAUSED})
MESSAGE_REJECTED: Final = frozenset({FAILED})
# Fields `update` may not touch: they are derived, or have their own method.
READ_ONLY_FIELDS: Final = frozenset({"name", "id", "url", "state", "createTime", "updateTime"})

USER: Final = "user"
AGENT: Final = "agent"
SYSTEM: Final = "system"
AUTO_CREATE_PR: Final = "AUTO_CREATE_PR"

# --- The board (`tick()` of the demo) ------------------------------------------------------------

DEFAULT_MAX_SESSIONS: Final = 12  # a board a person can take in at a glance in the demo
CREATE_PROBABILITY: Final = 0.6  # with a ~20-tick lifetime this keeps the board about full
ADVANCE_PROBABILITY: Final = 0.5  # a coin flip per tick so sessions move at uneven, real paces
LINGER_TICKS: Final = (3, 6)  # settled sessions stay visible this many ticks, then vanish
BOARD_REOPEN_PROBABILITY: Final = 0.05  # per tick, a lingering COMPLETED one gets a follow-up
WARMUP_TICKS: Final = 12  # `serve_simulator` starts with a populated, mixed board

# --- The lifecycle (both ways of living) ---------------------------------------------------------

AUTO_APPROVE_STEPS: Final = 3  # the simulated user approves a plan after this many steps
FEEDBACK_ANSWER_STEPS: Final = 2  # ... and answers a question this fast
REQUIRE_APPROVAL_PROBABILITY: Final = 0.75  # most simulated sessions show the approval step
AUTO_PR_PROBABILITY: Final = 0.8  # most users let Jules open the pull request
REPOLESS_PROBABILITY: Final = 0.1  # sessions without a repository exist since January 2026
QUESTION_PROBABILITY: Final = 0.12  # per step of work: the agent asks the user something
PAUSE_PROBABILITY: Final = 0.02  # per step of work: the session dies mid-work (PAUSED)
FAIL_PROBABILITY: Final = 0.1  # at the end of the work; real accounts show a few % FAILED
CHANGE_SET_PROBABILITY: Final = 0.35  # a step of work carries a patch ...
BASH_OUTPUT_PROBABILITY: Final = 0.25  # ... or the output of a command it ran
MEDIA_PROBABILITY: Final = 0.03  # and rarely an image (real sessions attach screenshots)
FOLLOW_UP_STEPS: Final = ("Address the follow-up", "Check the change again")

# --- The account (`active=` / `large_account`) ---------------------------------------------------

ACTIVITY_INTERVAL_S: Final = 30.0  # real sessions log an activity every tens of seconds
MAX_CATCHUP_STEPS: Final = 5  # after a stall, a session catches up this much, not in a burst
ACCOUNT_REOPEN_PROBABILITY: Final = 0.1  # a slot that frees up goes to a reopened session
REOPEN_PICK_TRIES: Final = 20  # random picks to find a COMPLETED session to reopen
# The share of finished sessions in a real account (a survey of 562 real sessions).
COMPLETED_SHARE: Final = 0.94
PAUSED_SHARE: Final = 0.04  # the rest are FAILED
ACCOUNT_GAP_S: Final = 3600.0  # mean time between two past sessions: 2,500 span ~100 days
HISTORY_STEP_S: Final = (20.0, 120.0)  # time between two activities of a past session
ACTIVE_SINCE_S: Final = (60.0, 1800.0)  # in-flight sessions started this long before the build
ACTIVE_WARMUP_STEPS: Final = (0, 6)  # ... and have taken this many steps already

# --- Wire details --------------------------------------------------------------------------------

ID_RANGE: Final = (10**18, 10**19)  # Jules session ids are long decimal strings, 19 digits here
TITLE_FROM_PROMPT_MAX: Final = 60  # generated titles are a short first line of the prompt
# The real API 404s a new session's activities for a moment: long enough that a client asking
# right after its create meets the 404, short enough not to slow tests (which can set 0).
ACTIVITIES_NOT_FOUND_FOR_S: Final = 0.5
PR_NUMBER_START: Final = 100  # pull request numbers per repository start above this

SessionOrder = tuple[int, str]
"""A session's place in the newest-first listing: (-createTime in ns, id)."""

Clock = Callable[[], float]
"""Seconds since the epoch, like `time.time`."""


@dataclass(slots=True, eq=False)
class _Entry:
    """A session plus what the engine needs to drive it; `resource` is replaced, never mutated."""

    resource: Resource
    created_ns: int
    task: Task
    require_approval: bool
    auto_pr: bool
    ready_at: float  # clock reading before which its activities answer 404
    linger: int
    activities: list[Resource] = field(default_factory=list)
    activity_ns: list[int] = field(default_factory=list)  # createTimes, for the filter
    plan: Resource | None = None
    plan_approved: bool = False
    todo: list[str] = field(default_factory=list)  # steps of work still to do
    waits: int = 0  # steps spent waiting on the user in the current state
    attended: bool = False  # created by a client: only that client approves and answers
    state_tick: int = 0  # board: the tick of its last change (one step per tick)
    finished_tick: int | None = None  # board: the tick it settled, for the linger
    due: float = 0.0  # account: clock reading of its next step


class Simulator:
    """Jules sessions, activities and sources; pure and deterministic for a seed and a clock.

    `Simulator(seed)` is the demo board; `Simulator(seed, active=n)` an account that keeps `n`
    sessions in flight at `activity_interval` seconds per step and never deletes; see
    `large_account`. `activities_not_found_for` is the transient-404 window (seconds after a
    session's creation) of its activities. `faults` and `requests` serve the HTTP layer.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Clock | None = None,
        active: int | None = None,
        activity_interval: float = ACTIVITY_INTERVAL_S,
        activities_not_found_for: float = ACTIVITIES_NOT_FOUND_FOR_S,
    ) -> None:
        if active is not None and active < 0:
            raise ValueError("active must not be negative")
        if activity_interval <= 0:
            raise ValueError("activity_interval must be positive")
        if activities_not_found_for < 0:
            raise ValueError("activities_not_found_for must not be negative")
        self.faults = Faults()
        self.requests = RequestCounts()
        self.max_sessions = max_sessions
        self.active = active
        self.activity_interval = activity_interval
        self.activities_not_found_for = activities_not_found_for
        self._rng = random.Random(seed)
        self._clock = clock if clock is not None else time.time
        self._virtual_time: float | None = None  # set while back-dating a large account
        self._entries: dict[str, _Entry] = {}  # insertion order is creation order
        self._tick = 0
        self._last_ns = 0
        self._max_ns = 0
        self._pr_numbers: dict[str, int] = {}
        self._orders: dict[bool, list[SessionOrder]] = {}  # archived? -> newest first
        self._in_flight: dict[str, None] = {}  # account: sessions that move, as an ordered set
        self._repos: dict[str, Repo] = {repo.full_name: repo for repo in REPOS}
        self._sources: dict[str, Resource] = {
            f"{SOURCE_PREFIX}{repo.full_name}": source_resource(repo) for repo in REPOS
        }

    @classmethod
    def large_account(
        cls,
        total: int = 2500,
        active: int = 20,
        *,
        seed: int = 0,
        clock: Clock | None = None,
        activity_interval: float = ACTIVITY_INTERVAL_S,
        activities_not_found_for: float = ACTIVITIES_NOT_FOUND_FOR_S,
    ) -> Simulator:
        """An account like the real large ones: `total` sessions, `active` of them in flight.

        The others are finished, back-dated about an hour apart (newest first in the listing),
        with full activity histories: 94 % COMPLETED, 4 % PAUSED, the rest FAILED. The active
        ones started in the last half hour and move on with `tick()`. Raises `ValueError`
        unless 0 <= active <= total.
        """
        if not 0 <= active <= total:
            raise ValueError("need 0 <= active <= total")
        sim = cls(
            seed,
            clock=clock,
            active=active,
            activity_interval=activity_interval,
            activities_not_found_for=activities_not_found_for,
        )
        sim._fill_history(total - active)
        sim._start_in_flight(active)
        return sim

    # -- reading --

    @property
    def tick_count(self) -> int:
        """How many ticks have run."""
        return self._tick

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> Resource:
        """One session, archived or not; `SessionNotFound` when unknown."""
        return self._entry(session_id).resource

    def sessions_newest_first(self, *, include_archived: bool = False) -> list[Resource]:
        """Every session by createTime, newest first, then by id (archived hidden by default)."""
        if include_archived:
            entries = sorted(
                self._entries.values(), key=lambda e: (-e.created_ns, e.resource["id"])
            )
            return [e.resource for e in entries]
        return [self._entries[sid].resource for _, sid in self._order(False)]

    def list_page(
        self, page_size: int, after: SessionOrder | None = None, *, archived: bool = False
    ) -> tuple[list[Resource], SessionOrder | None]:
        """One page of the listing after `after`, and the position to resume from (None: done).

        `archived=True` lists the archived sessions instead (the real `filter=archived = true`).
        """
        order = self._order(archived)
        start = 0 if after is None else bisect.bisect_right(order, after)
        chunk = order[start : start + page_size]
        page = [self._entries[sid].resource for _, sid in chunk]
        more = start + page_size < len(order)
        return page, (chunk[-1] if more and chunk else None)

    def in_flight(self) -> list[str]:
        """Account: ids of the sessions that move on their own, oldest first ([] on the board)."""
        return list(self._in_flight)

    def activities(self, session_id: str) -> list[Resource]:
        """The session's activities, oldest first (no transient 404 here: this is the truth)."""
        return list(self._entry(session_id).activities)

    def activity_page(
        self,
        session_id: str,
        page_size: int,
        start: int = 0,
        *,
        after: TimeBound | None = None,
    ) -> tuple[list[Resource], int | None]:
        """Activities from position `start` (newer than `after`), and where the next page starts.

        Raises `SessionNotFound`, or `ActivitiesNotReady` for a session created less than
        `activities_not_found_for` seconds ago (the real API's transient 404).
        """
        entry = self._ready_entry(session_id)
        begin = start
        if after is not None:
            cut = bisect.bisect_left if after.inclusive else bisect.bisect_right
            begin = max(begin, cut(entry.activity_ns, after.after_ns))
        end = begin + page_size
        more = end < len(entry.activities)
        return entry.activities[begin:end], (end if more else None)

    def activity(self, session_id: str, activity_id: str) -> Resource:
        """One activity; `SessionNotFound`, `ActivitiesNotReady` or `ActivityNotFound`."""
        for activity in self._ready_entry(session_id).activities:
            if activity["id"] == activity_id:
                return activity
        raise ActivityNotFound(f"Activity {activity_id} not found in session {session_id}.")

    def sources(self, names: frozenset[str] | None = None) -> list[Resource]:
        """The connected repositories as Source resources, all or those named."""
        if names is None:
            return list(self._sources.values())
        return [source for name, source in self._sources.items() if name in names]

    def source(self, name: str) -> Resource:
        """One Source by name (`sources/github/{owner}/{repo}`); `SourceNotFound` when unknown."""
        found = self._sources.get(name)
        if found is None:
            raise SourceNotFound(f"Source {name} not found.")
        return found

    def stats(self) -> Resource:
        """What the simulator holds and what it was asked, for `GET /_sim/stats` (JSON-able)."""
        states = Counter(e.resource["state"] for e in self._entries.values())
        archived = sum(1 for e in self._entries.values() if e.resource.get("archived"))
        return {
            "requests": self.requests.as_dict(),
            "requestsTotal": self.requests.total(),
            "sessions": len(self._entries),
            "archived": archived,
            "inFlight": len(self._in_flight),
            "states": dict(sorted(states.items())),
            "activities": sum(len(e.activities) for e in self._entries.values()),
            "ticks": self._tick,
        }

    # -- writing --

    def create(
        self,
        *,
        repo: str | None = None,
        branch: str | None = None,
        title: str | None = None,
        prompt: str | None = None,
        state: str = QUEUED,
        require_plan_approval: bool = True,
        auto_create_pr: bool = True,
        repoless: bool = False,
        attended: bool = False,
    ) -> Resource:
        """Create a session (unset fields are picked from a pool of plausible ones).

        `repo` is `owner/name` (an unknown one is connected as a source); `repoless=True`
        makes a session without a repository (no `sourceContext`). `auto_create_pr` is the
        real `automationMode: AUTO_CREATE_PR`: only then does completion open a pull request.
        `attended=True` (a session created through the API) is left to its creator: the
        simulated user never approves its plan or answers its questions, as real Jules
        waits for the person who started it.
        A `state` other than QUEUED is reached with the activities that lead to it.
        """
        rng = self._rng
        task = rng.choice(TASKS)
        if prompt is None:
            prompt = task.prompt
            title = title or task.title
        elif title is None:
            lines = prompt.strip().splitlines()
            title = lines[0][:TITLE_FROM_PROMPT_MAX] if lines else ""
        session_id = self._new_id()
        ns = self._now_ns()
        stamp = format_timestamp(ns)
        resource: Resource = {
            "name": f"sessions/{session_id}",
            "id": session_id,
            "prompt": prompt,
            "title": title,
        }
        if not repoless:
            if repo is None:
                picked = rng.choice(REPOS)
                repo, branch = picked.full_name, branch or rng.choice(picked.branches)
            else:
                branch = branch or self._repos.get(repo, Repo(repo, ("main",))).branches[0]
                if repo not in self._repos:
                    self.add_source(repo, (branch,))
            resource["sourceContext"] = {
                "source": f"{SOURCE_PREFIX}{repo}",
                "githubRepoContext": {"startingBranch": branch},
            }
        if auto_create_pr:
            resource["automationMode"] = AUTO_CREATE_PR
        resource |= {
            "state": QUEUED,
            "url": f"https://jules.google.com/session/{session_id}",
            "createTime": stamp,
            "updateTime": stamp,
        }
        entry = _Entry(
            resource=resource,
            created_ns=ns,
            task=task,
            require_approval=require_plan_approval,
            auto_pr=auto_create_pr,
            ready_at=self._read_clock() + self.activities_not_found_for,
            linger=rng.randint(*LINGER_TICKS),
            state_tick=self._tick,
            attended=attended,
        )
        self._entries[session_id] = entry
        listed = self._orders.get(False)
        if listed is not None:
            bisect.insort(listed, (-ns, session_id))
        self._track(entry)
        if state != QUEUED:
            self._drive(entry, state)
        return entry.resource

    def bulk_create(self, n: int, *, state: str | None = None) -> list[Resource]:
        """Create `n` sessions, in a random mix of lifecycle states unless `state` is given."""
        rng = self._rng
        return [
            self._create_from_pool(state if state is not None else rng.choice(LIFECYCLE_STATES))
            for _ in range(n)
        ]

    def add_source(
        self, repo: str, branches: tuple[str, ...] = ("main",), *, private: bool = False
    ) -> Resource:
        """Connect a repository (`owner/name`) as a source; returns the Source resource."""
        owner, _, name = repo.partition("/")
        if not owner or not name or "/" in name:
            raise InvalidArgument(f"A repository is owner/name, not {repo!r}.")
        if not branches:
            raise InvalidArgument("A repository has at least one branch.")
        known = Repo(repo, tuple(branches), private)
        self._repos[repo] = known
        source = source_resource(known)
        self._sources[source["name"]] = source
        return source

    def set_state(self, session_id: str, state: str) -> Resource:
        """Move a session to any state, with the activities that lead there.

        AWAITING_PLAN_APPROVAL brings a (new) plan; IN_PROGRESS, AWAITING_USER_FEEDBACK and
        COMPLETED approve the plan first if needed; COMPLETED and FAILED end as the agent
        ends sessions. Other states, even ones Jules does not have (the API is alpha), are
        set without an activity.
        """
        entry = self._entry(session_id)
        self._drive(entry, state)
        return entry.resource

    def update(self, session_id: str, **fields: Any) -> Resource:
        """Set wire fields verbatim (title, prompt, outputs, unknown ones); bumps updateTime."""
        bad = READ_ONLY_FIELDS.intersection(fields)
        if bad:
            raise ValueError(f"read-only fields: {sorted(bad)} (use set_state for the state)")
        entry = self._entry(session_id)
        self._replace(entry, fields)
        if "archived" in fields:
            self._orders.clear()
            self._track(entry)
        return entry.resource

    def archive(self, session_id: str) -> Resource:
        """Archive a session: hidden from the default listing, still readable; it stands still.

        Archiving an archived session changes nothing (not even its updateTime).
        """
        entry = self._entry(session_id)
        if entry.resource.get("archived"):
            return entry.resource
        return self.update(session_id, archived=True)

    def unarchive(self, session_id: str) -> Resource:
        """Bring an archived session back to the default listing (no-op when not archived)."""
        entry = self._entry(session_id)
        if not entry.resource.get("archived"):
            return entry.resource
        self._replace(entry, {}, drop="archived")
        self._orders.clear()
        self._track(entry)
        return entry.resource

    def delete(self, session_id: str) -> None:
        """Delete a session for good."""
        self._entry(session_id)
        del self._entries[session_id]
        self._in_flight.pop(session_id, None)
        self._orders.clear()

    def approve_plan(self, session_id: str) -> Resource:
        """Approve the plan of a session awaiting approval; it starts working.

        Raises `SessionNotFound`, or `FailedPrecondition` in any other state.
        """
        entry = self._entry(session_id)
        state = entry.resource["state"]
        if state != AWAITING_PLAN_APPROVAL:
            raise FailedPrecondition(
                f"Session {session_id} is {state}: only a session in"
                f" {AWAITING_PLAN_APPROVAL} has a plan to approve."
            )
        self._approve(entry, USER)
        return entry.resource

    def send_message(self, session_id: str, prompt: str) -> Resource:
        """Send the agent a message (`userMessaged`): an answer, a follow-up, a nudge.

        AWAITING_USER_FEEDBACK, COMPLETED and PAUSED sessions start working again; in other
        states the message is recorded and the state stays. Raises `InvalidArgument` for an
        empty prompt, `SessionNotFound`, or `FailedPrecondition` for a FAILED session.
        """
        if not prompt.strip():
            raise InvalidArgument("prompt must not be empty.", field="prompt")
        entry = self._entry(session_id)
        state = entry.resource["state"]
        if state in MESSAGE_REJECTED:
            raise FailedPrecondition(f"Session {session_id} is {state}; it takes no messages.")
        if state in (COMPLETED, PAUSED):
            self._reopen(entry, prompt)
        else:
            self._user_message(entry, prompt, IN_PROGRESS if state in MESSAGE_RESUMES else None)
        return entry.resource

    def tick(self) -> None:
        """One step of life: of the board (see the module doc), or of the account by the clock."""
        self._tick += 1
        if self.active is None:
            self._tick_board()
        else:
            self._tick_account()

    # -- the two ways of living --

    def _tick_board(self) -> None:
        now = self._tick
        rng = self._rng
        for entry in list(self._entries.values()):
            if entry.finished_tick is not None and now - entry.finished_tick >= entry.linger:
                self.delete(entry.resource["id"])
        for entry in list(self._entries.values()):
            resource = entry.resource
            if resource.get("archived") or now <= entry.state_tick:
                continue
            state = resource["state"]
            if state in SETTLED:
                if state == COMPLETED and rng.random() < BOARD_REOPEN_PROBABILITY:
                    self._reopen(entry, rng.choice(FOLLOW_UPS))
            elif state in WAITING or rng.random() < ADVANCE_PROBABILITY:
                # Waiting on the (simulated) user does not depend on luck: the demo must move.
                self._step(entry)
        live = sum(1 for e in self._entries.values() if not e.resource.get("archived"))
        if live < self.max_sessions and rng.random() < CREATE_PROBABILITY:
            self._create_from_pool()

    def _tick_account(self) -> None:
        now = self._read_clock()
        for session_id in list(self._in_flight):
            entry = self._entries[session_id]
            for _ in range(MAX_CATCHUP_STEPS):
                if entry.due > now or session_id not in self._in_flight:
                    break
                self._step(entry)
                entry.due += self._pace()
            if entry.due <= now:  # far behind (a stalled event loop): resume at the pace
                entry.due = now + self._pace()
        self._refill()

    def _refill(self) -> None:
        """Keep `active` sessions in flight: reopen a finished one now and then, else start one."""
        assert self.active is not None
        rng = self._rng
        while len(self._in_flight) < self.active:
            if self._entries and rng.random() < ACCOUNT_REOPEN_PROBABILITY:
                ids = tuple(self._entries)
                for _ in range(REOPEN_PICK_TRIES):
                    entry = self._entries[rng.choice(ids)]
                    resource = entry.resource
                    if resource["state"] == COMPLETED and not resource.get("archived"):
                        self._reopen(entry, rng.choice(FOLLOW_UPS))
                        break
                else:
                    self._create_from_pool()
            else:
                self._create_from_pool()

    def _fill_history(self, n: int) -> None:
        """`n` finished sessions, back-dated one after the other up to an hour ago."""
        rng = self._rng
        completed = round(n * COMPLETED_SHARE)
        paused = min(n - completed, round(n * PAUSED_SHARE))
        fates = [COMPLETED] * completed + [PAUSED] * paused + [FAILED] * (n - completed - paused)
        rng.shuffle(fates)
        gaps = [rng.uniform(0.2, 1.8) * ACCOUNT_GAP_S for _ in fates]
        start = self._clock() - sum(gaps) - ACCOUNT_GAP_S
        for fate, gap in zip(fates, gaps, strict=True):
            start += gap
            self._virtual_time = start
            self._last_ns = 0  # a past session's times need only increase among themselves
            self._past_session(fate)
        self._virtual_time = None
        self._last_ns = self._max_ns

    def _past_session(self, fate: str) -> None:
        """One session's whole life, from creation to `fate`, in back-dated virtual time."""
        rng = self._rng
        entry = self._entries[self._create_from_pool()["id"]]
        self._later()
        self._enter(entry, PLANNING)
        self._later()
        self._plan_ready(entry)
        if entry.resource["state"] == AWAITING_PLAN_APPROVAL:
            self._later()
            self._approve(entry, USER)
        steps = len(entry.todo) if fate != PAUSED else rng.randrange(len(entry.todo) + 1)
        for _ in range(steps):
            self._later()
            if rng.random() < QUESTION_PROBABILITY:
                self._ask(entry)
                self._later()
                self._user_message(entry, rng.choice(ANSWERS), IN_PROGRESS)
                self._later()
            self._progress(entry)
        self._later()
        if fate == COMPLETED:
            self._complete(entry)
        elif fate == FAILED:
            self._fail(entry)
        else:
            self._enter(entry, PAUSED)

    def _start_in_flight(self, n: int) -> None:
        """`n` sessions started in the last half hour, some steps into their lives."""
        rng = self._rng
        now = self._clock()
        for _ in range(n):
            self._virtual_time = now - rng.uniform(*ACTIVE_SINCE_S)
            self._last_ns = 0
            entry = self._entries[self._create_from_pool()["id"]]
            for _ in range(rng.randint(*ACTIVE_WARMUP_STEPS)):
                self._later()
                if self._virtual_time >= now:
                    break
                if entry.resource["state"] != IN_PROGRESS:
                    self._step(entry)  # up to the plan's approval: none of these settle
                elif len(entry.todo) > 1:
                    self._progress(entry)  # work, but never the last step: it stays in flight
                else:
                    break
        self._virtual_time = None
        self._last_ns = self._max_ns
        for session_id in self._in_flight:  # staggered, so they do not all move together
            self._entries[session_id].due = now + rng.uniform(0, self.activity_interval)
        self._refill()

    # -- the lifecycle --

    def _step(self, entry: _Entry) -> None:
        """One thing happens to an unsettled session (waiting counts as a step)."""
        state = entry.resource["state"]
        if state == QUEUED:
            self._enter(entry, PLANNING)
        elif state == PLANNING:
            self._plan_ready(entry)
        elif state == AWAITING_PLAN_APPROVAL:
            entry.waits += 1
            if entry.waits >= AUTO_APPROVE_STEPS and not entry.attended:
                self._approve(entry, USER)
        elif state == AWAITING_USER_FEEDBACK:
            entry.waits += 1
            if entry.waits >= FEEDBACK_ANSWER_STEPS and not entry.attended:
                self._user_message(entry, self._rng.choice(ANSWERS), IN_PROGRESS)
        elif state == IN_PROGRESS:
            self._work(entry)
        # Settled states and states Jules does not have: nothing happens on its own.

    def _work(self, entry: _Entry) -> None:
        roll = self._rng.random()
        if entry.todo:
            if roll < PAUSE_PROBABILITY:
                self._enter(entry, PAUSED)
            elif roll < PAUSE_PROBABILITY + QUESTION_PROBABILITY:
                self._ask(entry)
            else:
                self._progress(entry)
        elif roll < FAIL_PROBABILITY:
            self._fail(entry)
        else:
            self._complete(entry)

    def _drive(self, entry: _Entry, state: str) -> None:
        """`set_state`: reach `state` with the activities that lead there."""
        if state == AWAITING_PLAN_APPROVAL:
            self._propose_plan(entry, await_approval=True)
        elif state == IN_PROGRESS:
            self._ensure_approved(entry)
            self._progress(entry)
        elif state == AWAITING_USER_FEEDBACK:
            self._ensure_approved(entry)
            self._ask(entry)
        elif state == COMPLETED:
            self._ensure_approved(entry)
            self._complete(entry)
        elif state == FAILED:
            self._fail(entry)
        else:
            self._enter(entry, state)

    def _plan_ready(self, entry: _Entry) -> None:
        """PLANNING ends: the plan, then approval by the user (later) or the system (now)."""
        self._propose_plan(entry, await_approval=entry.require_approval)
        if not entry.require_approval:
            self._approve(entry, SYSTEM)

    def _propose_plan(self, entry: _Entry, *, await_approval: bool) -> None:
        ns = self._now_ns()
        proposed = plan(self._rng, entry.task.steps, format_timestamp(ns))
        entry.plan = proposed
        entry.plan_approved = False
        entry.todo = list(entry.task.steps)
        self._emit(
            entry,
            AGENT,
            "Plan generated",
            {"planGenerated": {"plan": proposed}},
            changes={"state": AWAITING_PLAN_APPROVAL} if await_approval else None,
            ns=ns,
        )

    def _approve(self, entry: _Entry, originator: str) -> None:
        if entry.plan is None:
            self._propose_plan(entry, await_approval=False)
        assert entry.plan is not None
        entry.plan_approved = True
        self._emit(
            entry,
            originator,
            "Plan approved",
            {"planApproved": {"planId": entry.plan["id"]}},
            changes={"state": IN_PROGRESS},
        )

    def _ensure_approved(self, entry: _Entry) -> None:
        if not entry.plan_approved:
            self._approve(entry, USER if entry.require_approval else SYSTEM)

    def _progress(self, entry: _Entry) -> None:
        rng = self._rng
        task = entry.task
        title = entry.todo.pop(0) if entry.todo else "Continue working"
        artifacts: list[Resource] = []
        roll = rng.random()
        if roll < CHANGE_SET_PROBABILITY:
            artifacts.append({"changeSet": change_set(rng, task, self._source_of(entry))})
        elif roll < CHANGE_SET_PROBABILITY + BASH_OUTPUT_PROBABILITY:
            artifacts.append({"bashOutput": bash_output(rng, task)})
        if rng.random() < MEDIA_PROBABILITY:
            artifacts.append({"media": media()})
        update = {"title": title, "description": progress_note(rng, task)}
        self._emit(
            entry,
            AGENT,
            title,
            {"progressUpdated": update},
            artifacts=artifacts,
            changes={"state": IN_PROGRESS},
        )

    def _ask(self, entry: _Entry) -> None:
        question = self._rng.choice(QUESTIONS)
        self._emit(
            entry,
            AGENT,
            "Agent asked a question",
            {"agentMessaged": {"agentMessage": question}},
            changes={"state": AWAITING_USER_FEEDBACK},
        )

    def _user_message(self, entry: _Entry, text: str, state: str | None) -> None:
        self._emit(
            entry,
            USER,
            "User messaged",
            {"userMessaged": {"userMessage": text}},
            changes={"state": state} if state is not None else None,
        )

    def _reopen(self, entry: _Entry, text: str) -> None:
        """A message to a COMPLETED or PAUSED session: the agent does a little more work."""
        rng = self._rng
        entry.todo = [rng.choice(FOLLOW_UP_STEPS) for _ in range(rng.randint(1, 2))]
        self._user_message(entry, text, IN_PROGRESS)

    def _complete(self, entry: _Entry) -> None:
        rng = self._rng
        resource = entry.resource
        source = self._source_of(entry)
        change = change_set(rng, entry.task, source)
        outputs = [o for o in resource.get("outputs", ()) if "changeSet" not in o]
        if entry.auto_pr and source is not None:
            if not any("pullRequest" in o for o in outputs):
                outputs.append(self._pull_request(resource))
        else:
            outputs.append({"changeSet": change})
        entry.todo = []
        self._emit(
            entry,
            AGENT,
            "Session completed",
            {"sessionCompleted": {}},
            artifacts=[{"changeSet": change}],
            changes={"state": COMPLETED, "outputs": outputs},
        )

    def _fail(self, entry: _Entry) -> None:
        reason = self._rng.choice(FAILURE_REASONS)
        entry.todo = []
        self._emit(
            entry,
            AGENT,
            "Session failed",
            {"sessionFailed": {"reason": reason}},
            changes={"state": FAILED},
        )

    def _enter(self, entry: _Entry, state: str) -> None:
        """A change of state that comes with no activity (PLANNING, PAUSED, unknown states)."""
        self._replace(entry, {"state": state})

    def _pull_request(self, resource: Resource) -> Resource:
        repo = resource["sourceContext"]["source"].removeprefix(SOURCE_PREFIX)
        number = self._pr_numbers.get(repo, PR_NUMBER_START) + 1
        self._pr_numbers[repo] = number
        return {
            "pullRequest": {
                "url": f"https://github.com/{repo}/pull/{number}",
                "title": resource["title"],
                "description": f"Opened by Jules for session {resource['id']}.",
            }
        }

    # -- internals --

    def _emit(
        self,
        entry: _Entry,
        originator: str,
        description: str,
        payload: Resource,
        *,
        artifacts: list[Resource] | None = None,
        changes: Resource | None = None,
        ns: int | None = None,
    ) -> None:
        """Append an activity and apply `changes` at the same instant: its createTime is the
        session's new updateTime (what tells the control room to fetch activities)."""
        ns = ns if ns is not None else self._now_ns()
        stamp = format_timestamp(ns)
        activity_id = hex_id(self._rng)
        activity: Resource = {
            "name": f"{entry.resource['name']}/activities/{activity_id}",
            "id": activity_id,
            "description": description,
            "createTime": stamp,
            "originator": originator,
            **payload,
        }
        if artifacts:
            activity["artifacts"] = artifacts
        entry.activities.append(activity)
        entry.activity_ns.append(ns)
        self._replace(entry, changes or {}, stamp)

    def _replace(
        self, entry: _Entry, changes: Resource, stamp: str | None = None, drop: str | None = None
    ) -> None:
        """Apply `changes` with a new updateTime (`stamp`, else now); settle or track it."""
        # Copy on write: a dict handed out earlier stays a faithful snapshot of that moment.
        before = entry.resource
        resource = {
            **before,
            **changes,
            "updateTime": stamp if stamp is not None else format_timestamp(self._now_ns()),
        }
        if drop is not None:
            resource.pop(drop, None)
        entry.resource = resource
        entry.state_tick = self._tick
        if resource["state"] != before["state"]:
            entry.waits = 0
            entry.finished_tick = self._tick if resource["state"] in SETTLED else None
            self._track(entry)

    def _track(self, entry: _Entry) -> None:
        """Account: a session that can move is in flight; a settled or archived one is not."""
        if self.active is None:
            return
        resource = entry.resource
        session_id = resource["id"]
        if resource["state"] in SETTLED or resource.get("archived"):
            self._in_flight.pop(session_id, None)
        elif session_id not in self._in_flight:
            self._in_flight[session_id] = None
            entry.due = self._read_clock() + self._pace()

    def _create_from_pool(self, state: str = QUEUED) -> Resource:
        rng = self._rng
        return self.create(
            state=state,
            require_plan_approval=rng.random() < REQUIRE_APPROVAL_PROBABILITY,
            auto_create_pr=rng.random() < AUTO_PR_PROBABILITY,
            repoless=rng.random() < REPOLESS_PROBABILITY,
        )

    def _source_of(self, entry: _Entry) -> str | None:
        context = entry.resource.get("sourceContext")
        return context["source"] if context else None

    def _order(self, archived: bool) -> list[SessionOrder]:
        order = self._orders.get(archived)
        if order is None:
            order = sorted(
                (-e.created_ns, sid)
                for sid, e in self._entries.items()
                if bool(e.resource.get("archived")) == archived
            )
            self._orders[archived] = order
        return order

    def _entry(self, session_id: str) -> _Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(f"Session {session_id} not found.")
        return entry

    def _ready_entry(self, session_id: str) -> _Entry:
        entry = self._entry(session_id)
        if self._read_clock() < entry.ready_at:
            raise ActivitiesNotReady(f"Activities of session {session_id} are not ready yet.")
        return entry

    def _new_id(self) -> str:
        while True:
            session_id = str(self._rng.randrange(*ID_RANGE))
            if session_id not in self._entries:
                return session_id

    def _pace(self) -> float:
        """Seconds to an in-flight session's next step: around `activity_interval`, uneven."""
        return self._rng.uniform(0.5, 1.5) * self.activity_interval

    def _later(self) -> None:
        """Back-dating: move virtual time on to a past session's next activity."""
        assert self._virtual_time is not None
        self._virtual_time += self._rng.uniform(*HISTORY_STEP_S)

    def _read_clock(self) -> float:
        return self._clock() if self._virtual_time is None else self._virtual_time

    def _now_ns(self) -> int:
        """A strictly increasing time at a random one of Google's precisions."""
        micros = int(self._read_clock() * 1_000_000)
        roll = self._rng.random()  # one draw for both choices: this runs ~50,000 times per build
        digits = FRACTION_DIGITS[int(roll * len(FRACTION_DIGITS))]
        if digits == 9:
            ns = micros * 1_000 + 1 + int(roll * 997_000) % 999
        else:
            unit = 10 ** (9 - digits)
            ns = micros * 1_000 // unit * unit
        # Strictly increasing so every mutation changes updateTime and createTimes never tie.
        ns = max(ns, self._last_ns + 1)
        self._last_ns = ns
        self._max_ns = max(self._max_ns, ns)
        return ns
