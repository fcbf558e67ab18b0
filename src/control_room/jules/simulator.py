"""A simulator of the Jules REST API: a pure lifecycle engine, fault injection and an HTTP server.

The engine (`Simulator`) holds sessions as plain dicts in the real API's wire shape and moves
them through Jules' lifecycle one deterministic `tick()` at a time; it does no I/O, so its
tests need no event loop. `create_app` serves it under `/v1alpha` with the real paths, paging,
API-key check and Google error envelope, and consumes the faults armed on `sim.faults` one
request at a time. `SimulatorServer` binds it to a port (and ticks it) for tests and the demo.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import dataclasses
import hmac
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from control_room import logging as log

Resource = dict[str, Any]
"""A Session or Activity exactly as it goes on the wire. Treat it as read-only."""

_log: Final = log.get("simulator")

API_PREFIX: Final = "/v1alpha"
API_KEY_HEADER: Final = "X-Goog-Api-Key"

# --- Limits of the real API (see the reference) --------------------------------------------------

DEFAULT_PAGE_SIZE: Final = 30  # sessions.list default, per the API reference
MAX_PAGE_SIZE: Final = 100  # sessions.list coerces anything larger to 100
DEFAULT_ACTIVITY_PAGE_SIZE: Final = 50  # activities.list default, per the API reference
MAX_ACTIVITY_PAGE_SIZE: Final = 100  # activities.list maximum, per the API reference

# --- Lifecycle pacing of `tick()` ----------------------------------------------------------------

DEFAULT_MAX_SESSIONS: Final = 12  # a board a person can take in at a glance in the demo
CREATE_PROBABILITY: Final = 0.6  # with a ~13-tick lifetime this keeps ~8 sessions on the board
ADVANCE_PROBABILITY: Final = 0.5  # a coin flip per tick so sessions move at uneven, real paces
AUTO_APPROVE_TICKS: Final = 3  # nobody approves plans in the demo; this stands in for the user
FEEDBACK_ANSWER_TICKS: Final = 2  # likewise, the simulated user answers questions this fast
MIN_WORK_TICKS: Final = 2  # real work takes a while; never finish in the tick work started
LINGER_TICKS: Final = (3, 6)  # finished sessions stay visible this many ticks, then vanish
REQUIRE_APPROVAL_PROBABILITY: Final = 0.75  # most demo sessions show the approval step
# Outcomes of a finished stretch of work, as cumulative thresholds on one roll.
COMPLETE_BELOW: Final = 0.70
FAIL_BELOW: Final = 0.85  # the rest (15 %) stop to ask the user something
WARMUP_TICKS: Final = 12  # `serve_simulator` starts with a populated, mixed board

# --- Wire details --------------------------------------------------------------------------------

ID_RANGE: Final = (10**18, 10**19)  # Jules ids are long decimal strings, 19 digits here
FRACTION_DIGITS: Final = (0, 3, 6, 9)  # Google's RFC 3339 timestamps use one of these
TITLE_FROM_PROMPT_MAX: Final = 60  # generated titles are a short first line of the prompt
RETRY_AFTER_DEFAULT: Final = 1  # seconds; the SDK's backoff base
WRONG_SHAPE_BODY: Final[Resource] = {"sessions": "oops"}
GARBAGE_BODY: Final = b"<!DOCTYPE html><html><body>502 upstream hiccup</body></html>"
# Declared as JSON on purpose: a lying Content-Type is the harder case for a client.
GARBAGE_CONTENT_TYPE: Final = "application/json"
SHUTDOWN_TIMEOUT: Final = 1.0  # seconds; a simulator has nothing worth waiting a minute for

QUEUED: Final = "QUEUED"
PLANNING: Final = "PLANNING"
AWAITING_PLAN_APPROVAL: Final = "AWAITING_PLAN_APPROVAL"
AWAITING_USER_FEEDBACK: Final = "AWAITING_USER_FEEDBACK"
IN_PROGRESS: Final = "IN_PROGRESS"
PAUSED: Final = "PAUSED"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"

FINISHED: Final = frozenset({COMPLETED, FAILED})
LIFECYCLE_STATES: Final = (
    QUEUED,
    PLANNING,
    AWAITING_PLAN_APPROVAL,
    IN_PROGRESS,
    AWAITING_USER_FEEDBACK,
    COMPLETED,
    FAILED,
)
# A message wakes these up; in the others it is recorded and the state stays.
MESSAGE_RESUMES: Final = frozenset({AWAITING_USER_FEEDBACK, COMPLETED, PAUSED})
MESSAGE_REJECTED: Final = frozenset({FAILED})
# Fields `update` may not touch: they are derived, or have their own method.
READ_ONLY_FIELDS: Final = frozenset({"name", "id", "url", "state", "createTime", "updateTime"})

REPOS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("acme/web-app", ("main", "develop")),
    ("acme/payments-api", ("main", "release/2.4")),
    ("acme/mobile", ("main",)),
    ("globex/data-pipeline", ("main", "staging")),
    ("globex/infra", ("main",)),
    ("initech/tps-reports", ("master",)),
)
TASKS: Final[tuple[tuple[str, str], ...]] = (
    ("Fix flaky login test", "The login e2e test fails one run in ten; find the race and fix it."),
    ("Add dark mode toggle", "Add a dark mode toggle to the settings page, stored per user."),
    ("Upgrade to Python 3.12", "Upgrade the project to Python 3.12 and fix what breaks."),
    ("Paginate the orders endpoint", "GET /orders returns everything; add cursor pagination."),
    ("Write tests for the CSV exporter", "The CSV exporter has no tests; cover the edge cases."),
    ("Remove deprecated config keys", "Drop the config keys deprecated in 2.0 and their shims."),
    ("Speed up the nightly ETL", "The nightly ETL takes 4 hours; profile it and cut the time."),
    ("Document the retry policy", "Write docs for how the client retries and backs off."),
    ("Fix timezone bug in reports", "Reports show UTC times to users in other zones; fix it."),
    ("Migrate CI to GitHub Actions", "Move the Jenkins pipeline to GitHub Actions workflows."),
    ("Add rate limiting to the API", "Add per-key rate limiting to the public API."),
    ("Bump dependencies", "Update all dependencies to their latest minor versions."),
)
FAILURE_REASONS: Final = (
    "The build failed and could not be fixed.",
    "Could not clone the repository.",
    "The task needs access the agent does not have.",
)
QUESTIONS: Final = (
    "Should the change keep backwards compatibility with the old API?",
    "Which of the two failing tests is the intended behaviour?",
    "May I add a new dependency for this?",
)

SessionOrder = tuple[int, str]
"""A session's place in the newest-first listing: (-createTime in ns, id)."""


class SimulatorError(Exception):
    """Base of the errors the engine raises on a bad request."""


class SessionNotFound(SimulatorError, LookupError):
    """No session with that id."""


class FailedPrecondition(SimulatorError):
    """The session is not in a state that allows the action."""


class InvalidArgument(SimulatorError, ValueError):
    """A malformed argument (page token, page size, body)."""


# --- Time ----------------------------------------------------------------------------------------


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch -> RFC 3339, Z-normalised, with 0, 3, 6 or 9 fraction digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction == 0:
        return f"{stamp}Z"
    if fraction % 1_000_000 == 0:
        return f"{stamp}.{fraction // 1_000_000:03d}Z"
    if fraction % 1_000 == 0:
        return f"{stamp}.{fraction // 1_000:06d}Z"
    return f"{stamp}.{fraction:09d}Z"


# --- Page tokens ---------------------------------------------------------------------------------


def encode_page_token(kind: str, page_index: int, position: int, key: str = "") -> str:
    """An opaque token: which listing, which page it fetches, and where that page starts."""
    raw = f"{kind}:{page_index}:{position}:{key}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, kind: str) -> tuple[int, int, str]:
    """The token's (page index, position, key); `InvalidArgument` when it is not one of ours."""
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        token_kind, page, position, key = raw.split(":", 3)
        page_index, offset = int(page), int(position)
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidArgument("Invalid page token.") from exc
    if token_kind != kind or page_index < 1:
        raise InvalidArgument("Invalid page token.")
    return page_index, offset, key


def parse_page_size(value: str | None, default: int, maximum: int) -> int:
    """`pageSize` as the real API reads it: 0 or absent is the default, above max is coerced."""
    if value is None or value == "":
        return default
    try:
        size = int(value)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid value for pageSize: {value!r}.") from exc
    if size < 0:
        raise InvalidArgument("pageSize must not be negative.")
    if size == 0:
        return default
    return min(size, maximum)


# --- Faults --------------------------------------------------------------------------------------

FaultKind = Literal["fail", "rate_limit", "garbage", "wrong_shape", "delay"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One misbehaviour the HTTP layer applies to one request instead of (or before) answering."""

    kind: FaultKind
    status: int = 500
    retry_after: int | None = None
    seconds: float = 0.0
    body: object = None


@dataclass(slots=True)
class _Armed:
    fault: Fault
    remaining: int


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError("a fault must be armed for at least one request")


class Faults:
    """Faults armed for the next requests, consumed one per request in the order armed."""

    __slots__ = ("_pages", "_queue")

    def __init__(self) -> None:
        self._queue: deque[_Armed] = deque()
        self._pages: dict[int, _Armed] = {}

    def _arm(self, fault: Fault, n: int) -> None:
        _check_count(n)
        self._queue.append(_Armed(fault, n))

    def fail(self, n: int = 1, status: int = 500) -> None:
        """The next `n` requests answer `status` with Google's error envelope."""
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error (400-599)")
        self._arm(Fault("fail", status=status), n)

    def rate_limit(self, n: int = 1, retry_after: int | None = RETRY_AFTER_DEFAULT) -> None:
        """The next `n` requests answer 429 RESOURCE_EXHAUSTED (`retry_after=None`: no header)."""
        self._arm(Fault("rate_limit", status=429, retry_after=retry_after), n)

    def garbage(self, n: int = 1) -> None:
        """The next `n` requests answer 200 with a body that is not JSON."""
        self._arm(Fault("garbage", status=200), n)

    def wrong_shape(self, n: int = 1, body: object = WRONG_SHAPE_BODY) -> None:
        """The next `n` requests answer 200 with valid JSON of the wrong shape."""
        self._arm(Fault("wrong_shape", status=200, body=body), n)

    def delay(self, seconds: float, n: int = 1) -> None:
        """The next `n` requests are answered normally, `seconds` late."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._arm(Fault("delay", seconds=seconds), n)

    def fail_page(self, page_index: int, n: int = 1, status: int = 500) -> None:
        """Listing requests for page `page_index` (0 is the first page) fail `n` times."""
        if page_index < 0:
            raise ValueError("page_index starts at 0")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error (400-599)")
        _check_count(n)
        self._pages[page_index] = _Armed(Fault("fail", status=status), n)

    def clear(self) -> None:
        """Disarm everything."""
        self._queue.clear()
        self._pages.clear()

    @property
    def pending(self) -> int:
        """How many requests still have a fault waiting for them."""
        return sum(a.remaining for a in self._queue) + sum(
            a.remaining for a in self._pages.values()
        )

    def take(self) -> Fault | None:
        """The fault for the request now arriving, if any (consumes it)."""
        if not self._queue:
            return None
        armed = self._queue[0]
        armed.remaining -= 1
        if armed.remaining == 0:
            self._queue.popleft()
        return armed.fault

    def take_page(self, page_index: int) -> Fault | None:
        """The fault for a listing request of page `page_index`, if any (consumes it)."""
        armed = self._pages.get(page_index)
        if armed is None:
            return None
        armed.remaining -= 1
        if armed.remaining == 0:
            del self._pages[page_index]
        return armed.fault


@dataclass(slots=True)
class RequestCounts:
    """Requests the HTTP layer received, counted on arrival (before auth and faults)."""

    total: int = 0
    list_calls: int = 0  # GET /sessions without a pageToken: a walk of the listing started
    page_calls: int = 0  # every GET /sessions, first page or not
    get_calls: int = 0
    create_calls: int = 0
    action_calls: int = 0  # :approvePlan and :sendMessage
    activity_calls: int = 0

    def reset(self) -> None:
        """Zero every counter."""
        for counter in dataclasses.fields(self):
            setattr(self, counter.name, 0)


# --- The engine ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A session plus what the engine needs to drive it; `resource` is replaced, never mutated."""

    resource: Resource
    created_ns: int
    require_approval: bool
    linger: int
    state_tick: int
    finished_tick: int | None = None
    activities: list[Resource] = field(default_factory=list)


class Simulator:
    """Jules sessions and their lifecycle; pure and deterministic for a seed and a clock."""

    def __init__(
        self,
        seed: int = 0,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.faults = Faults()
        self.requests = RequestCounts()
        self.max_sessions = max_sessions
        self._rng = random.Random(seed)
        self._clock = clock if clock is not None else time.time
        self._entries: dict[str, _Entry] = {}  # insertion order is creation order
        self._tick = 0
        self._last_ns = 0
        self._pr_numbers: dict[str, int] = {}
        self._order: list[SessionOrder] | None = None  # visible sessions, newest first

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
        return [self._entries[sid].resource for _, sid in self._visible_order()]

    def list_page(
        self, page_size: int, after: SessionOrder | None = None
    ) -> tuple[list[Resource], SessionOrder | None]:
        """One page of the listing after `after`, and the position to resume from (None: done)."""
        order = self._visible_order()
        start = 0 if after is None else bisect.bisect_right(order, after)
        chunk = order[start : start + page_size]
        page = [self._entries[sid].resource for _, sid in chunk]
        more = start + page_size < len(order)
        return page, (chunk[-1] if more and chunk else None)

    def activities(self, session_id: str) -> list[Resource]:
        """The session's activities, oldest first."""
        return self._entry(session_id).activities

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
    ) -> Resource:
        """Create a session (unset fields are picked from a pool of plausible ones)."""
        rng = self._rng
        if repo is None:
            repo, branches = rng.choice(REPOS)
            branch = branch or rng.choice(branches)
        elif branch is None:
            known = dict(REPOS).get(repo)
            branch = known[0] if known else "main"
        task_title, task_prompt = rng.choice(TASKS)
        if prompt is None:
            prompt = task_prompt
            title = title or task_title
        elif title is None:
            title = prompt.strip().splitlines()[0][:TITLE_FROM_PROMPT_MAX] if prompt.strip() else ""
        session_id = self._new_id()
        ns = self._now_ns()
        stamp = format_timestamp(ns)
        entry = _Entry(
            resource={
                "name": f"sessions/{session_id}",
                "id": session_id,
                "prompt": prompt,
                "title": title,
                "sourceContext": {
                    "source": f"sources/github/{repo}",
                    "githubRepoContext": {"startingBranch": branch},
                },
                "state": QUEUED,
                "url": f"https://jules.google.com/session/{session_id}",
                "outputs": [],
                "createTime": stamp,
                "updateTime": stamp,
            },
            created_ns=ns,
            require_approval=require_plan_approval,
            linger=rng.randint(*LINGER_TICKS),
            state_tick=self._tick,
        )
        self._entries[session_id] = entry
        self._order = None
        self._activity(
            entry, "user", "Session started", {"userMessaged": {"userMessage": prompt}}, ns=ns
        )
        if state != QUEUED:
            self._enter(entry, state, {})
        return entry.resource

    def bulk_create(self, n: int, *, state: str | None = None) -> list[Resource]:
        """Create `n` sessions, in a random mix of lifecycle states unless `state` is given."""
        rng = self._rng
        return [
            self.create(
                state=state if state is not None else rng.choice(LIFECYCLE_STATES),
                require_plan_approval=rng.random() < REQUIRE_APPROVAL_PROBABILITY,
            )
            for _ in range(n)
        ]

    def set_state(self, session_id: str, state: str) -> Resource:
        """Move a session to any state, even one Jules does not have (the API is alpha)."""
        entry = self._entry(session_id)
        self._enter(entry, state, {})
        return entry.resource

    def update(self, session_id: str, **fields: Any) -> Resource:
        """Set wire fields verbatim (title, prompt, outputs, unknown ones); bumps updateTime."""
        bad = READ_ONLY_FIELDS.intersection(fields)
        if bad:
            raise ValueError(f"read-only fields: {sorted(bad)} (use set_state for the state)")
        entry = self._entry(session_id)
        self._replace(entry, fields)
        if "archived" in fields:
            self._order = None
        return entry.resource

    def archive(self, session_id: str) -> Resource:
        """Archive a session: hidden from the listing, still readable one by one."""
        return self.update(session_id, archived=True)

    def delete(self, session_id: str) -> None:
        """Delete a session for good."""
        self._entry(session_id)
        del self._entries[session_id]
        self._order = None

    def approve_plan(self, session_id: str) -> Resource:
        """Approve the plan of a session awaiting approval; it starts working."""
        entry = self._entry(session_id)
        state = entry.resource["state"]
        if state != AWAITING_PLAN_APPROVAL:
            raise FailedPrecondition(f"Session is {state}; only a plan awaiting approval can be.")
        self._approve(entry)
        return entry.resource

    def send_message(self, session_id: str, prompt: str) -> Resource:
        """Send the agent a message: a session waiting for the user (or done) resumes work."""
        if not prompt.strip():
            raise InvalidArgument("prompt must not be empty.")
        entry = self._entry(session_id)
        state = entry.resource["state"]
        if state in MESSAGE_REJECTED:
            raise FailedPrecondition(f"Session is {state} and does not accept messages.")
        self._activity(entry, "user", "User messaged", {"userMessaged": {"userMessage": prompt}})
        if state in MESSAGE_RESUMES:
            self._enter(entry, IN_PROGRESS, {})
        else:
            self._replace(entry, {})
        return entry.resource

    def tick(self) -> None:
        """One step of life: delete long-finished sessions, move some on, maybe start one."""
        self._tick += 1
        now = self._tick
        rng = self._rng
        for entry in list(self._entries.values()):
            if entry.finished_tick is not None and now - entry.finished_tick >= entry.linger:
                self.delete(entry.resource["id"])
        for entry in list(self._entries.values()):
            if entry.resource.get("archived") or now <= entry.state_tick:
                continue
            self._advance(entry, now, rng)
        live = sum(1 for e in self._entries.values() if not e.resource.get("archived"))
        if live < self.max_sessions and rng.random() < CREATE_PROBABILITY:
            self.create(require_plan_approval=rng.random() < REQUIRE_APPROVAL_PROBABILITY)

    # -- internals --

    def _advance(self, entry: _Entry, now: int, rng: random.Random) -> None:
        state = entry.resource["state"]
        waited = now - entry.state_tick
        # Waiting on the (simulated) user does not depend on luck: the demo must keep moving.
        if state == AWAITING_PLAN_APPROVAL:
            if waited >= AUTO_APPROVE_TICKS:
                self._approve(entry)
            return
        if state == AWAITING_USER_FEEDBACK:
            if waited >= FEEDBACK_ANSWER_TICKS:
                answer = "Yes, go ahead."
                self._activity(
                    entry, "user", "User messaged", {"userMessaged": {"userMessage": answer}}
                )
                self._enter(entry, IN_PROGRESS, {})
            return
        if rng.random() >= ADVANCE_PROBABILITY:
            return
        if state == QUEUED:
            self._enter(entry, PLANNING, {})
        elif state == PLANNING:
            self._enter(
                entry, AWAITING_PLAN_APPROVAL if entry.require_approval else IN_PROGRESS, {}
            )
        elif state == IN_PROGRESS and waited >= MIN_WORK_TICKS:
            roll = rng.random()
            if roll < COMPLETE_BELOW:
                self._enter(entry, COMPLETED, {})
            elif roll < FAIL_BELOW:
                self._enter(entry, FAILED, {})
            else:
                self._enter(entry, AWAITING_USER_FEEDBACK, {})

    def _approve(self, entry: _Entry) -> None:
        plan_id = f"plan-{entry.resource['id']}"
        self._activity(entry, "user", "Plan approved", {"planApproved": {"planId": plan_id}})
        self._enter(entry, IN_PROGRESS, {})

    def _enter(self, entry: _Entry, state: str, fields: Resource) -> None:
        """Move to `state` with the side effects Jules shows (activities, PR output)."""
        resource = entry.resource
        sid = resource["id"]
        changes: Resource = {**fields, "state": state}
        entry.state_tick = self._tick
        entry.finished_tick = self._tick if state in FINISHED else None
        if state == PLANNING:
            self._activity(entry, "agent", "Planning", {"progressUpdated": {"title": "Planning"}})
        elif state == AWAITING_PLAN_APPROVAL:
            plan = {
                "id": f"plan-{sid}",
                "steps": [
                    {"id": f"{sid}-{i}", "title": step, "description": step, "index": i}
                    for i, step in enumerate(("Read the code", "Make the change", "Run tests"))
                ],
            }
            self._activity(entry, "agent", "Plan generated", {"planGenerated": {"plan": plan}})
        elif state == IN_PROGRESS:
            self._activity(entry, "agent", "Working", {"progressUpdated": {"title": "Working"}})
        elif state == AWAITING_USER_FEEDBACK:
            question = self._rng.choice(QUESTIONS)
            self._activity(
                entry, "agent", "Question", {"agentMessaged": {"agentMessage": question}}
            )
        elif state == COMPLETED:
            self._activity(entry, "system", "Session completed", {"sessionCompleted": {}})
            if not any("pullRequest" in o for o in resource.get("outputs", ())):
                changes["outputs"] = [*resource.get("outputs", ()), self._pull_request(resource)]
        elif state == FAILED:
            reason = self._rng.choice(FAILURE_REASONS)
            self._activity(entry, "system", "Session failed", {"sessionFailed": {"reason": reason}})
        self._replace(entry, changes)

    def _pull_request(self, resource: Resource) -> Resource:
        repo = resource["sourceContext"]["source"].removeprefix("sources/github/")
        number = self._pr_numbers.get(repo, 100) + 1
        self._pr_numbers[repo] = number
        return {
            "pullRequest": {
                "url": f"https://github.com/{repo}/pull/{number}",
                "title": resource["title"],
                "description": f"Opened by Jules for session {resource['id']}.",
            }
        }

    def _replace(self, entry: _Entry, changes: Resource) -> None:
        # Copy on write: a dict handed out earlier stays a faithful snapshot of that moment.
        entry.resource = {
            **entry.resource,
            **changes,
            "updateTime": format_timestamp(self._now_ns()),
        }

    def _activity(
        self,
        entry: _Entry,
        originator: str,
        description: str,
        payload: Resource,
        ns: int | None = None,
    ) -> None:
        ns = ns if ns is not None else self._now_ns()
        activity_id = f"{self._rng.getrandbits(64):016x}"
        entry.activities.append(
            {
                "name": f"{entry.resource['name']}/activities/{activity_id}",
                "id": activity_id,
                "description": description,
                "createTime": format_timestamp(ns),
                "originator": originator,
                **payload,
            }
        )

    def _entry(self, session_id: str) -> _Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(f"Session {session_id} not found.")
        return entry

    def _new_id(self) -> str:
        while True:
            session_id = str(self._rng.randrange(*ID_RANGE))
            if session_id not in self._entries:
                return session_id

    def _now_ns(self) -> int:
        """A strictly increasing time at a random one of Google's precisions."""
        micros = int(self._clock() * 1_000_000)
        digits = self._rng.choice(FRACTION_DIGITS)
        if digits == 9:
            ns = micros * 1_000 + self._rng.randrange(1, 1_000)
        else:
            unit = 10 ** (9 - digits)
            ns = micros * 1_000 // unit * unit
        # Strictly increasing so every mutation changes updateTime and createTimes never tie.
        ns = max(ns, self._last_ns + 1)
        self._last_ns = ns
        return ns

    def _visible_order(self) -> list[SessionOrder]:
        if self._order is None:
            self._order = sorted(
                (-e.created_ns, sid)
                for sid, e in self._entries.items()
                if not e.resource.get("archived")
            )
        return self._order


# --- HTTP ----------------------------------------------------------------------------------------

GOOGLE_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_encode: Final = msgspec.json.Encoder().encode


class _ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or GOOGLE_STATUS.get(code, "UNKNOWN")


def error_envelope(code: int, message: str, status: str | None = None) -> Resource:
    """Google's error envelope."""
    return {
        "error": {
            "code": code,
            "message": message,
            "status": status or GOOGLE_STATUS.get(code, "UNKNOWN"),
        }
    }


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encode(body), status=status, content_type="application/json", headers=headers
    )


def _error(error: _ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return _json(error_envelope(error.code, error.message, error.status), error.code, headers)


def _fault_response(fault: Fault) -> web.Response | None:
    if fault.kind == "fail":
        return _error(_ApiError(fault.status, "Injected failure."))
    if fault.kind == "rate_limit":
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        return _error(_ApiError(429, "Quota exceeded for requests per minute."), headers)
    if fault.kind == "garbage":
        return web.Response(body=GARBAGE_BODY, headers={"Content-Type": GARBAGE_CONTENT_TYPE})
    if fault.kind == "wrong_shape":
        return _json(fault.body)
    return None  # delay: answered normally, late


_COUNTERS: Final = {
    "get": "get_calls",
    "create": "create_calls",
    "action": "action_calls",
    "activities": "activity_calls",
}


async def _read_object(request: web.Request, *, required: bool) -> Resource:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise _ApiError(400, "Request body is required.")
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _ApiError(400, "Request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _ApiError(400, "Request body must be a JSON object.")
    return body


class _Api:
    """The route handlers, bound to one simulator and key."""

    def __init__(self, sim: Simulator, api_key: str) -> None:
        self.sim = sim
        self._key = api_key.encode()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count, check the key, apply the next fault, and turn errors into Google's envelope."""
        counts = self.sim.requests
        counts.total += 1
        route = request.match_info.route.name
        if route == "list":
            counts.page_calls += 1
            if not request.query.get("pageToken"):
                counts.list_calls += 1
        elif route in _COUNTERS:
            attr = _COUNTERS[route]
            setattr(counts, attr, getattr(counts, attr) + 1)
        given = request.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(given, self._key):
            return _error(_ApiError(401, "Request is missing a valid API key."))
        fault = self.sim.faults.take()
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            else:
                response = _fault_response(fault)
                if response is not None:
                    return response
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error(exc)
        except SessionNotFound as exc:
            return _error(_ApiError(404, str(exc)))
        except FailedPrecondition as exc:
            return _error(_ApiError(400, str(exc), "FAILED_PRECONDITION"))
        except InvalidArgument as exc:
            return _error(_ApiError(400, str(exc)))
        except web.HTTPException as exc:  # routing: unknown path or method
            # Google answers an unknown method on a known path as an unknown resource.
            code = 404 if exc.status == 405 else exc.status
            return _error(_ApiError(code, exc.reason))

    async def list_sessions(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions: one page, newest first."""
        query = request.query
        size = parse_page_size(query.get("pageSize"), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        token = query.get("pageToken", "")
        after: SessionOrder | None = None
        page_index = 0
        if token:
            page_index, neg_ns, sid = decode_page_token(token, "s")
            after = (neg_ns, sid)
        fault = self.sim.faults.take_page(page_index)
        if fault is not None:
            response = _fault_response(fault)
            if response is not None:
                return response
        sessions, resume = self.sim.list_page(size, after)
        body: Resource = {}
        if sessions:
            body["sessions"] = sessions
        if resume is not None:
            body["nextPageToken"] = encode_page_token("s", page_index + 1, *resume)
        return _json(body)

    def _session_id(self, request: web.Request) -> str:
        value = request.match_info["id_action"]
        if ":" in value:
            raise _ApiError(404, f"Method not found: {value}.")
        return value

    async def get_session(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions/{id}."""
        return _json(self.sim.get(self._session_id(request)))

    async def create_session(self, request: web.Request) -> web.StreamResponse:
        """POST /sessions."""
        body = await _read_object(request, required=True)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(400, "prompt is required.")
        title = body.get("title")
        if title is not None and not isinstance(title, str):
            raise _ApiError(400, "title must be a string.")
        repo, branch = _source_of(body.get("sourceContext"))
        approval = body.get("requirePlanApproval", False)
        if not isinstance(approval, bool):
            raise _ApiError(400, "requirePlanApproval must be a boolean.")
        session = self.sim.create(
            repo=repo, branch=branch, title=title, prompt=prompt, require_plan_approval=approval
        )
        return _json(session)

    async def session_action(self, request: web.Request) -> web.StreamResponse:
        """POST /sessions/{id}:approvePlan and /sessions/{id}:sendMessage."""
        session_id, _, action = request.match_info["id_action"].partition(":")
        if action == "approvePlan":
            await _read_object(request, required=False)
            self.sim.approve_plan(session_id)
        elif action == "sendMessage":
            body = await _read_object(request, required=True)
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise _ApiError(400, "prompt is required.")
            self.sim.send_message(session_id, prompt)
        else:
            raise _ApiError(404, f"Method not found: {action or 'none'}.")
        return _json({})

    async def list_activities(self, request: web.Request) -> web.StreamResponse:
        """GET /sessions/{id}/activities: oldest first, paged."""
        query = request.query
        size = parse_page_size(
            query.get("pageSize"), DEFAULT_ACTIVITY_PAGE_SIZE, MAX_ACTIVITY_PAGE_SIZE
        )
        # Activities are append-only, so an offset is a stable position.
        token = query.get("pageToken", "")
        page_index, offset = 0, 0
        if token:
            page_index, offset, _ = decode_page_token(token, "a")
        activities = self.sim.activities(request.match_info["id"])
        chunk = activities[offset : offset + size]
        body: Resource = {}
        if chunk:
            body["activities"] = chunk
        if offset + size < len(activities):
            body["nextPageToken"] = encode_page_token("a", page_index + 1, offset + size)
        return _json(body)


def _source_of(context: object) -> tuple[str | None, str | None]:
    """`sourceContext` -> (owner/repo, branch); absent means "pick one"."""
    if context is None:
        return None, None
    if not isinstance(context, dict):
        raise _ApiError(400, "sourceContext must be an object.")
    source = context.get("source")
    prefix = "sources/github/"
    if not isinstance(source, str) or not source.startswith(prefix):
        raise _ApiError(400, "sourceContext.source must be sources/github/{owner}/{repo}.")
    repo = source.removeprefix(prefix)
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise _ApiError(400, "sourceContext.source must be sources/github/{owner}/{repo}.")
    github = context.get("githubRepoContext") or {}
    branch = github.get("startingBranch") if isinstance(github, dict) else None
    if branch is not None and not isinstance(branch, str):
        raise _ApiError(400, "startingBranch must be a string.")
    return repo, branch or None


def create_app(sim: Simulator, api_key: str) -> web.Application:
    """The simulator's HTTP app, serving the Jules API under `/v1alpha`."""
    if not api_key:
        raise ValueError("the simulator needs a non-empty API key")
    api = _Api(sim, api_key)
    app = web.Application(middlewares=[api.middleware])
    sessions = f"{API_PREFIX}/sessions"
    app.router.add_get(sessions, api.list_sessions, name="list")
    app.router.add_post(sessions, api.create_session, name="create")
    # `{id}:approvePlan` is one path segment; aiohttp cannot split it, so the handler does.
    app.router.add_get(sessions + "/{id_action}", api.get_session, name="get")
    app.router.add_post(sessions + "/{id_action}", api.session_action, name="action")
    app.router.add_get(sessions + "/{id}/activities", api.list_activities, name="activities")
    return app


# --- Running -------------------------------------------------------------------------------------


class SimulatorServer:
    """The simulator on a real socket, optionally ticking in the background."""

    def __init__(
        self,
        sim: Simulator,
        api_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tick_interval: float | None = None,
    ) -> None:
        self.sim = sim
        self.host = host
        self._requested_port = port
        self._tick_interval = tick_interval
        # Cancel a handler when its client goes away: a delayed response must not hold shutdown.
        self._runner = web.AppRunner(
            create_app(sim, api_key), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        self._ticker: asyncio.Task[None] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://host:port/v1alpha`, what a client is configured with."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    async def start(self) -> None:
        """Bind and serve; start ticking if asked."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        if self._tick_interval:
            self._ticker = asyncio.create_task(self._tick_forever(self._tick_interval))

    async def stop(self) -> None:
        """Stop ticking and serving."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self._runner.cleanup()

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.sim.tick()
            except Exception:
                _log.exception("simulator_tick_failed")

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve_simulator(
    host: str, port: int, api_key: str, seed: int, tick_interval: float
) -> None:
    """Serve a ticking simulator until cancelled (`control-room simulate`)."""
    sim = Simulator(seed)
    for _ in range(WARMUP_TICKS):
        sim.tick()
    async with SimulatorServer(
        sim, api_key, host=host, port=port, tick_interval=tick_interval or None
    ) as server:
        _log.info(
            "simulator_started",
            extra={"url": server.base_url, "seed": seed, "tickInterval": tick_interval},
        )
        try:
            await asyncio.Event().wait()
        finally:
            _log.info("simulator_stopped", extra={"url": server.base_url})
