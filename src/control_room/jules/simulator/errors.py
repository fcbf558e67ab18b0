"""The errors the simulator's engine raises; the HTTP layer turns each into Google's envelope."""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of the errors the engine raises on a bad request."""


class NotFound(SimulatorError, LookupError):
    """No such session, activity or source: HTTP 404 NOT_FOUND."""


class SessionNotFound(NotFound):
    """No session with that id."""


class ActivityNotFound(NotFound):
    """No activity with that id in that session."""


class SourceNotFound(NotFound):
    """No source with that name (`sources/github/{owner}/{repo}`)."""


class ActivitiesNotReady(NotFound):
    """A session created moments ago: its activities answer 404 for a while, as real ones do."""


class FailedPrecondition(SimulatorError):
    """The session is not in a state that allows the action: HTTP 400 FAILED_PRECONDITION."""


class InvalidArgument(SimulatorError, ValueError):
    """A malformed argument (page token, page size, filter, body): HTTP 400 INVALID_ARGUMENT.

    `field` names the offending request field (`session.automation_mode`, `filter`) when there
    is one; the HTTP layer reports it as a `google.rpc.BadRequest` field violation.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
