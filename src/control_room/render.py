"""Pure terminal formatting for the terminal commands: one line per delta or activity,
aligned tables, a session's timeline.

Nothing here does I/O: every function takes what it shows (and the time, the time zone,
whether to colour) as arguments, so the output is tested as plain strings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Final

from control_room import rfc3339
from control_room.models import Activity, JulesSession, Plan, PullRequest, SessionDelta

REPO_WIDTH: Final = 22  # fits `owner/repository` for most names; longer ones end with …
TITLE_WIDTH: Final = 48  # a title is a glance, not a read; the table gives the rest
MIN_TITLE_WIDTH: Final = 12  # below this, truncating to the terminal would hide the title
ELLIPSIS: Final = "…"
ARROW: Final = "→"
SEP: Final = " · "
COLUMN_GAP: Final = "  "

# SGR codes: plain 8-colour ones, readable on light and dark backgrounds alike.
RESET_SGR: Final = "\x1b[0m"
BOLD: Final = "1"
DIM: Final = "2"
RED: Final = "31"
GREEN: Final = "32"
YELLOW: Final = "33"
BLUE: Final = "34"
MAGENTA: Final = "35"
CYAN: Final = "36"

TYPE_STYLE: Final = {"created": GREEN, "updated": CYAN, "deleted": RED, "reset": MAGENTA}
TYPE_MARK: Final = {"created": "+", "updated": "~", "deleted": "-", "reset": "!"}

STATE_STYLE: Final = {
    "QUEUED": DIM,
    "PLANNING": BLUE,
    "AWAITING_PLAN_APPROVAL": YELLOW,  # the AWAITING_* states wait for the user: stand out
    "AWAITING_USER_FEEDBACK": YELLOW,
    "IN_PROGRESS": BLUE,
    "PAUSED": DIM,
    "COMPLETED": GREEN,
    "FAILED": RED,
}


def paint(text: str, style: str | None, color: bool) -> str:
    """`text` wrapped in an SGR colour when `color` is on and a style is given."""
    if not color or not style or not text:
        return text
    return f"\x1b[{style}m{text}{RESET_SGR}"


def truncate(text: str, width: int) -> str:
    """At most `width` characters, ending with … when cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS


def parse_time(timestamp: str) -> datetime | None:
    """An RFC 3339 timestamp (any case, offset, fraction) as an aware datetime; else None."""
    return rfc3339.parse(timestamp)


def clock(timestamp: str, tz: tzinfo | None = None) -> str:
    """`HH:MM:SS` in `tz` (the local zone when None); the raw text if it does not parse."""
    parsed = parse_time(timestamp)
    if parsed is None:
        return truncate(timestamp, 8).ljust(8)
    return parsed.astimezone(tz).strftime("%H:%M:%S")


def ago(timestamp: str, now: datetime) -> str:
    """A short relative time: `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`."""
    parsed = parse_time(timestamp)
    if parsed is None:
        return "?"
    seconds = int((now - parsed).total_seconds())
    if seconds < 0:
        return "just now"  # clocks disagree a little; the future is "now" to a reader
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86_400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86_400} d ago"


def state(value: str, color: bool) -> str:
    """A Jules state, coloured by what it asks of the reader."""
    return paint(value, STATE_STYLE.get(value), color)


def label(session: JulesSession) -> str:
    """What a person calls a session: its title, or its id when it has none."""
    return session.title.strip() or session.id


def pull_request_number(pr: PullRequest) -> str:
    """`#123` for a GitHub pull request URL, else the URL itself."""
    head, sep, number = pr.url.rstrip("/").rpartition("/pull/")
    return f"#{number}" if sep and head and number.isdigit() else pr.url


def _transition(name: str, old: str, new: str, color: bool, styled: bool = False) -> str:
    if styled:
        old, new = state(old, color), state(new, color)
    return f"{name} {old} {paint(ARROW, DIM, color)} {new}"


def changes(before: JulesSession, after: JulesSession, color: bool = False) -> list[str]:
    """What an update changed, one phrase per field: `state PLANNING → IN_PROGRESS`."""
    out: list[str] = []
    if before.state != after.state:
        out.append(_transition("state", before.state, after.state, color, styled=True))
    if before.planStatus != after.planStatus:
        out.append(_transition("planStatus", before.planStatus, after.planStatus, color))
    if before.approval.state != after.approval.state:
        out.append(_transition("approval", before.approval.state, after.approval.state, color))
    old_pr, new_pr = before.pullRequest, after.pullRequest
    if old_pr != new_pr:
        if old_pr is None and new_pr is not None:
            out.append(f"pull request added {paint(new_pr.url, BOLD, color)}")
        elif new_pr is None:
            out.append("pull request removed")
        elif old_pr is not None and old_pr.url == new_pr.url:
            out.append(f"pull request retitled {new_pr.title!r}")
        else:
            out.append(f"pull request {paint(ARROW, DIM, color)} {paint(new_pr.url, BOLD, color)}")
    if before.title != after.title:
        out.append(_transition("title", repr(before.title), repr(after.title), color))
    if before.branch != after.branch:
        out.append(_transition("branch", before.branch, after.branch, color))
    if before.repository != after.repository:
        out.append(_transition("repository", before.repository, after.repository, color))
    if before.participants != after.participants:
        joined = set(after.participants) - set(before.participants)
        left = set(before.participants) - set(after.participants)
        moves = [f"+{p}" for p in sorted(joined)] + [f"-{p}" for p in sorted(left)]
        out.append("participants " + (" ".join(moves) or "reordered"))
    if before.url != after.url:
        out.append(f"url {paint(ARROW, DIM, color)} {after.url}")
    if not out:
        out.append(paint("touched (updatedAt only)", DIM, color))
    return out


def _head(timestamp: str, kind: str, color: bool, tz: tzinfo | None) -> str:
    mark = TYPE_MARK.get(kind, "?")
    tag = paint(f"{mark} {kind:<7}", TYPE_STYLE.get(kind), color)
    return f"{paint(clock(timestamp, tz), DIM, color)}  {tag}"


def format_delta(delta: SessionDelta, color: bool = False, tz: tzinfo | None = None) -> str:
    """One line: `14:03:09  ~ updated  acme/api  Fix login · state QUEUED → PLANNING`."""
    session = delta.after or delta.before
    repo = session.repository if session is not None else ""
    repo_cell = paint(truncate(repo, REPO_WIDTH).ljust(REPO_WIDTH), BOLD, color)
    name = truncate(label(session), TITLE_WIDTH) if session is not None else delta.sessionId
    parts = [name]
    if delta.type == "created" and delta.after is not None:
        parts.append(state(delta.after.state, color))
    elif delta.type == "updated" and delta.before is not None and delta.after is not None:
        parts.extend(changes(delta.before, delta.after, color))
    elif delta.type == "deleted" and delta.before is not None:
        parts.append(f"was {state(delta.before.state, color)}")
    head = _head(delta.timestamp, delta.type, color, tz)
    return f"{head}  {repo_cell}  {SEP.join(parts)}"


def format_reset(
    epoch: str, seq: int, reason: str, timestamp: str, color: bool = False, tz: tzinfo | None = None
) -> str:
    """The line for a reset: the stream restarted, what happened in the gap is not shown."""
    head = _head(timestamp, "reset", color, tz)
    why = {
        "epoch_changed": "not the service's epoch (it restarted without its history,"
        " or the epoch is wrong)",
        "history_expired": "the missed deltas are no longer kept",
        "too_far_behind": "too many deltas were missed to replay them",
        "ahead_of_server": "the service is behind this position (its store restored?)",
    }.get(reason, reason)
    text = f"{why} ({reason}); now at epoch {epoch}, seq {seq}; changes in the gap are not shown"
    return f"{head}  {paint(text, MAGENTA, color)}"


TABLE_COLUMNS: Final = (
    "UPDATED",
    "REPOSITORY",
    "BRANCH",
    "STATE",
    "PLAN",
    "APPROVAL",
    "PR",
    "TITLE",
)


def _updated_key(session: JulesSession) -> datetime:
    return parse_time(session.updatedAt) or datetime.min.replace(tzinfo=UTC)


def format_table(
    sessions: Iterable[JulesSession],
    now: datetime,
    color: bool = False,
    width: int | None = None,
) -> list[str]:
    """Sessions as aligned rows, latest update first; the title is cut to fit `width`."""
    ordered = sorted(sessions, key=_updated_key, reverse=True)
    rows = [
        (
            ago(s.updatedAt, now),
            s.repository,
            s.branch,
            s.state,
            s.planStatus,
            s.approval.state,
            pull_request_number(s.pullRequest) if s.pullRequest is not None else "",
            label(s),
        )
        for s in ordered
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(TABLE_COLUMNS)]
    fixed = sum(widths[:-1]) + len(COLUMN_GAP) * (len(widths) - 1)
    title_width = widths[-1]
    if width is not None:
        title_width = max(MIN_TITLE_WIDTH, min(title_width, width - fixed))
    styles: Sequence[str | None] = (DIM, BOLD, None, None, None, None, None, None)
    header = COLUMN_GAP.join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths, strict=True))
    lines = [paint(header.rstrip(), BOLD, color)]
    for row in rows:
        cells: list[str] = []
        for i, (text, w) in enumerate(zip(row, widths, strict=True)):
            if i == len(row) - 1:
                cells.append(truncate(text, title_width))
            elif i == 3:
                cells.append(state(text, color) + " " * (w - len(text)))
            else:
                cells.append(paint(text.ljust(w), styles[i], color))
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return lines


def summary(sessions: Sequence[JulesSession], color: bool = False) -> str:
    """`12 sessions: 3 IN_PROGRESS, 2 AWAITING_PLAN_APPROVAL, …` (most frequent first)."""
    if not sessions:
        return "no sessions"
    counts = Counter(s.state for s in sessions)
    noun = "session" if len(sessions) == 1 else "sessions"
    parts = [f"{n} {state(name, color)}" for name, n in counts.most_common()]
    return f"{len(sessions)} {noun}: " + ", ".join(parts)


DELTA_TYPES: Final = ("created", "updated", "deleted")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def poll_summary(
    types: Iterable[str], sessions: int, clients: int, now: datetime, tz: tzinfo | None = None
) -> str:
    """One line per poll that changed something, for the demo's console.

    `12:00:03  3 changes: 1 created, 2 updated  (8 sessions, 2 clients)`: the types of the
    poll's deltas counted (in lifecycle order), then how many sessions and clients there are.
    """
    counts = Counter(types)
    total = sum(counts.values())
    order = [*DELTA_TYPES, *sorted(counts.keys() - set(DELTA_TYPES))]
    parts = ", ".join(f"{counts[kind]} {kind}" for kind in order if counts[kind])
    stamp = now.astimezone(tz).strftime("%H:%M:%S")
    state = f"{_count(sessions, 'session')}, {_count(clients, 'client')}"
    return f"{stamp}  {_count(total, 'change')}: {parts}  ({state})"


# -- activities and a session's timeline (`watch --activities`, `show`) -------------------

PLAN_PREVIEW_STEPS: Final = 3  # a plan in a watch line: its first steps say what it is about
MESSAGE_WIDTH: Final = 160  # a message in a watch line; `show` prints it whole
FILES_SHOWN: Final = 3  # files of a change set named in a line; the count says the rest
INDENT: Final = " " * 20  # `HH:MM:SS  label     `: where a timeline entry's text starts

ACTIVITY_LABEL: Final = {
    "planGenerated": "plan",
    "planApproved": "plan ok",
    "agentMessaged": "agent",
    "userMessaged": "user",
    "progressUpdated": "step",
    "sessionCompleted": "done",
    "sessionFailed": "failed",
}
"""A kind's label, at most 7 characters so activity lines align with delta lines."""
QUESTION_LABEL: Final = "asks"
ACTIVITY_STYLE: Final = {
    "planGenerated": YELLOW,
    "planApproved": GREEN,
    "sessionCompleted": GREEN,
    "sessionFailed": RED,
    QUESTION_LABEL: YELLOW,
}
ACTIVITY_MARK: Final = "*"
QUESTION_MARK: Final = "?"
WAITING_STATES: Final = ("AWAITING_PLAN_APPROVAL", "AWAITING_USER_FEEDBACK")
"""The states in which a session waits for its user ("needs you")."""


def is_question(activity: Activity, session_state: str | None) -> bool:
    """Whether an activity is the agent asking something: an agent message while its session
    awaits feedback, or one that ends with a question mark."""
    if activity.kind != "agentMessaged" or not activity.message:
        return False
    return session_state == "AWAITING_USER_FEEDBACK" or activity.message.rstrip().endswith("?")


def first_line(text: str, width: int = MESSAGE_WIDTH) -> str:
    """The first non-blank line of `text`, cut to `width`; … when anything was left out."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0]
    if len(lines) > 1 and len(head) < width:
        head += " " + ELLIPSIS
    return truncate(head, width)


def plan_preview(plan: Plan, steps: int = PLAN_PREVIEW_STEPS) -> str:
    """`3 steps: 1. Reproduce the flaky run; 2. Find the race; 3. Await the cookie`."""
    count = len(plan.steps)
    shown = [f"{s.index + 1}. {s.title}" for s in plan.steps[:steps]]
    if count > steps:
        shown.append(ELLIPSIS)
    noun = "step" if count == 1 else "steps"
    return f"{count} {noun}: " + "; ".join(shown) if shown else "an empty plan"


def artifact_summaries(activity: Activity) -> list[str]:
    """One phrase per artifact: files changed, a command run, media."""
    out: list[str] = []
    for artifact in activity.artifacts:
        if artifact.changeSet is not None:
            files = artifact.changeSet.files
            added = sum(f.added for f in files)
            removed = sum(f.removed for f in files)
            noun = "file" if len(files) == 1 else "files"
            names = ", ".join(f.path for f in files[:FILES_SHOWN])
            more = f", {ELLIPSIS}" if len(files) > FILES_SHOWN else ""
            out.append(f"{len(files)} {noun} changed (+{added} −{removed}): {names}{more}")
        if artifact.bashOutput is not None:
            bash = artifact.bashOutput
            code = "" if bash.exitCode is None else f" (exit {bash.exitCode})"
            out.append(f"$ {first_line(bash.command, 80)}{code}")
        if artifact.media is not None:
            out.append(f"{artifact.media.mimeType}, {artifact.media.size:,} bytes")
    return out


def activity_text(activity: Activity) -> str:
    """What an activity says, on one line (no colour): the plan's first steps, the message,
    the progress, the failure reason."""
    kind = activity.kind
    if kind == "planGenerated":
        text = plan_preview(activity.plan) if activity.plan is not None else "a plan"
    elif kind == "planApproved":
        text = "plan approved" + (" by the user" if activity.originator == "user" else "")
    elif kind in ("agentMessaged", "userMessaged"):
        text = first_line(activity.message or "")
    elif kind == "progressUpdated":
        parts = [p for p in (activity.title, activity.description) if p]
        text = first_line(" — ".join(parts)) if parts else "progress"
    elif kind == "sessionCompleted":
        text = "session completed"
    elif kind == "sessionFailed":
        text = "session failed" + (f": {first_line(activity.reason)}" if activity.reason else "")
    else:
        text = first_line(activity.description or activity.message or activity.title or kind)
    return SEP.join([text, *artifact_summaries(activity)]) if text else text


def _activity_head(activity: Activity, question: bool, color: bool, tz: tzinfo | None) -> str:
    """`14:03:07  * plan   ` (or `? asks   ` for a question), coloured by what it asks."""
    style: str | None
    if question:
        mark, name, style = QUESTION_MARK, QUESTION_LABEL, ACTIVITY_STYLE[QUESTION_LABEL]
    else:
        kind = activity.kind
        mark, name = ACTIVITY_MARK, ACTIVITY_LABEL.get(kind, "other")
        style = ACTIVITY_STYLE.get(kind, MAGENTA if kind not in ACTIVITY_LABEL else None)
    tag = paint(f"{mark} {name:<7}", style, color)
    return f"{paint(clock(activity.createdAt, tz), DIM, color)}  {tag}"


def format_activity(
    activity: Activity,
    session: JulesSession | None,
    color: bool = False,
    tz: tzinfo | None = None,
) -> str:
    """One `watch --activities` line: `14:03:07  * plan     acme/api  Fix login · 3 steps: …`.

    `session` (the activity's session as last seen, if known) gives the repository and the
    title, and tells a question (the agent asking while the session awaits feedback), which
    is marked `? asks` and highlighted.
    """
    question = is_question(activity, session.state if session is not None else None)
    head = _activity_head(activity, question, color, tz)
    repo = session.repository if session is not None else ""
    repo_cell = paint(truncate(repo, REPO_WIDTH).ljust(REPO_WIDTH), BOLD, color)
    name = truncate(label(session), TITLE_WIDTH) if session is not None else activity.sessionId
    text = activity_text(activity)
    if question:
        text = paint(text, f"{BOLD};{YELLOW}", color)
    return f"{head}  {repo_cell}  {name}{SEP}{text}"


def session_header(session: JulesSession, now: datetime, color: bool = False) -> list[str]:
    """What `show` prints above the timeline: title, where, state, links."""
    lines = [paint(label(session), BOLD, color)]
    where = SEP.join(p for p in (session.repository, session.branch) if p) or "no repository"
    lines.append(
        f"  {where}{SEP}{state(session.state, color)}"
        f" (plan {session.planStatus}, approval {session.approval.state})"
    )
    lines.append(f"  {session.url}")
    if session.pullRequest is not None:
        pr = session.pullRequest
        lines.append(f"  pull request {pull_request_number(pr)} {pr.url}  {pr.title}")
    if session.stalledSince is not None:
        lines.append(
            "  " + paint(f"stalled: last activity {ago(session.stalledSince, now)}", RED, color)
        )
    lines.append(
        f"  {paint(f'id {session.id}', DIM, color)}{SEP}created {ago(session.createdAt, now)}"
        f"{SEP}updated {ago(session.updatedAt, now)}"
    )
    return lines


def _indented(text: str) -> list[str]:
    return [INDENT + line.rstrip() if line.strip() else "" for line in text.strip().splitlines()]


def timeline(
    activities: Sequence[Activity],
    session: JulesSession | None = None,
    color: bool = False,
    tz: tzinfo | None = None,
) -> list[str]:
    """A session's activities, oldest first, each with its whole text: the plan as numbered
    steps, messages whole, progress, files changed, completion or failure.

    The last agent message of a session awaiting feedback is the question it waits on:
    marked and highlighted.
    """
    waiting_on = None
    if session is not None and session.state == "AWAITING_USER_FEEDBACK":
        asked = [a for a in activities if a.kind == "agentMessaged"]
        waiting_on = asked[-1].id if asked else None
    lines: list[str] = []
    for activity in activities:
        question = activity.id == waiting_on or is_question(activity, None)
        head = _activity_head(activity, question, color, tz)
        body = _entry_body(activity, question, color)
        lines.append(f"{head}  {body[0].lstrip()}" if body else head)
        lines.extend(body[1:])
    return lines


def _entry_body(activity: Activity, question: bool, color: bool) -> list[str]:
    """A timeline entry's lines, indented to INDENT (the first one is put after the head)."""
    kind = activity.kind
    body: list[str] = []
    if kind == "planGenerated" and activity.plan is not None:
        steps = activity.plan.steps
        body.append(INDENT + f"plan of {len(steps)} step{'s' if len(steps) != 1 else ''}:")
        for step in steps:
            body.append(INDENT + f"{step.index + 1:>2}. {step.title}")
            if step.description:
                body.extend("    " + line for line in _indented(step.description))
    elif kind in ("agentMessaged", "userMessaged") and activity.message:
        text = _indented(activity.message)
        body.extend(paint(line, f"{BOLD};{YELLOW}", color) if question else line for line in text)
    elif kind == "progressUpdated":
        body.append(INDENT + (activity.title or "progress"))
        if activity.description and activity.description != activity.title:
            body.extend(_indented(activity.description))
    else:
        body.append(INDENT + activity_text(activity).split(SEP)[0])
    body.extend(INDENT + phrase for phrase in artifact_summaries(activity))
    return body


def waiting_hint(session: JulesSession, command: str = "control-room") -> str | None:
    """What to run when the session waits for its user; None when it does not."""
    if session.state == "AWAITING_PLAN_APPROVAL":
        return f"Waiting for your approval of the plan: {command} approve {session.id}"
    if session.state == "AWAITING_USER_FEEDBACK":
        return f'Waiting for your answer: {command} message {session.id} "…"'
    return None
