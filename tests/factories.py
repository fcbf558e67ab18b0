"""Model factories shared by the unit and store tests."""

from __future__ import annotations

from control_room.models import Approval, JulesSession


def session(sid: str, state: str = "QUEUED", title: str = "Fix the flaky test") -> JulesSession:
    """A plausible mapped session."""
    return JulesSession(
        id=sid,
        repository="acme/api",
        branch="main",
        title=title,
        state=state,
        planStatus="pending",
        approval=Approval(state="pending"),
        participants=(),
        createdAt="2026-01-01T00:00:00Z",
        updatedAt="2026-01-01T00:00:00Z",
        url=f"https://jules.google.com/session/{sid}",
    )
