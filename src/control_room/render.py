"""Pure terminal formatting for `watch` and `sessions`: one line per delta, aligned tables.

Nothing here does I/O: every function takes what it shows (and the time, the time zone,
whether to colour) as arguments, so the output is tested as plain strings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Final

from control_room import rfc3339
from control_room.models import JulesSession, PullRequest, SessionDelta

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
        "epoch_changed": "the service restarted without its history",
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
