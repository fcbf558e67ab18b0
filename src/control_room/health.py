"""How the upstream and the store have been answering, and what that means for readiness.

One small mutable record (`UpstreamHealth`) that the poller writes and the REST routes and
the WebSocket handshake read, plus the pure rules that turn it into `/healthz` reasons and
the `not_ready` explanation. Reasons are stable names, safe to show without a token: the
detail text (host:port, OS reason) stays in `last_error` / `store_error`, which only logs,
`/api/stats` and the authenticated 503 body carry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

# --- Reasons (the `reasons` of /healthz; a metric-safe, fixed vocabulary) -------------------

WAITING_FOR_FIRST_POLL: Final = "waiting_for_first_poll"
UPSTREAM_UNAUTHORIZED: Final = "upstream_unauthorized"
UPSTREAM_TIMEOUT: Final = "upstream_timeout"
UPSTREAM_NETWORK: Final = "upstream_network"
UPSTREAM_RATE_LIMITED: Final = "upstream_rate_limited"
UPSTREAM_SERVER_ERROR: Final = "upstream_server_error"
UPSTREAM_BAD_RESPONSE: Final = "upstream_bad_response"
UPSTREAM_CLIENT_ERROR: Final = "upstream_client_error"
UPSTREAM_LISTING_INCONSISTENT: Final = "upstream_listing_inconsistent"
UPSTREAM_LISTING_INCOMPLETE: Final = "upstream_listing_incomplete"
"""The last complete listing was cut short by a failed or hanging page: changes on the
pages read are published, deletions (and changes beyond) wait for a complete one."""
UPSTREAM_SESSION_UNDECODABLE: Final = "upstream_session_undecodable"
POLL_OVERRUN: Final = "poll_overrun"
STORE_UNAVAILABLE: Final = "store_unavailable"
REDIS_UNAVAILABLE: Final = "redis_unavailable"
"""A cluster member (REDIS_URL) cannot reach Redis: it keeps its clients and its last state,
but hears of no change until Redis answers again."""

UPSTREAM_FAILURE_REASONS: Final = {
    "unauthorized": UPSTREAM_UNAUTHORIZED,
    "timeout": UPSTREAM_TIMEOUT,
    "network": UPSTREAM_NETWORK,
    "rate_limited": UPSTREAM_RATE_LIMITED,
    "server_error": UPSTREAM_SERVER_ERROR,
    "bad_response": UPSTREAM_BAD_RESPONSE,
    "client_error": UPSTREAM_CLIENT_ERROR,
}
"""`UpstreamError.kind` -> reason."""

REASONS: Final = (
    WAITING_FOR_FIRST_POLL,
    *UPSTREAM_FAILURE_REASONS.values(),
    UPSTREAM_LISTING_INCONSISTENT,
    UPSTREAM_LISTING_INCOMPLETE,
    UPSTREAM_SESSION_UNDECODABLE,
    POLL_OVERRUN,
    STORE_UNAVAILABLE,
    REDIS_UNAVAILABLE,
)
"""Every reason /healthz can give, in the order it lists them."""


@dataclass
class UpstreamHealth:
    """The poller's record of the upstream and the store; times are Unix seconds."""

    interval: float = 0.0  # the poll period: a poll longer than this has overrun
    last_success: float | None = None
    last_error: str | None = None  # detail for logs and authenticated answers only
    last_error_kind: str | None = None  # UpstreamError.kind of the last failure
    last_error_time: float | None = None
    consecutive_failures: int = 0
    outage_started: float | None = None
    store_error: str | None = None  # detail for logs and authenticated answers only
    baseline_done: bool = False
    sessions: int = 0
    next_poll_at: float | None = None
    poll_started: float | None = None  # set while a poll runs
    last_poll_seconds: float | None = None
    last_poll_overran: bool = False
    broker_error: str | None = None  # cluster: why Redis fails (logs and authenticated only)
    undecodable: int = 0  # sessions whose latest version could not be decoded
    unconfirmed: int = 0  # vanished sessions kept because their deletion was not confirmed
    listing_cut: str | None = None  # why the last complete listing is partial (detail)
    started: float = field(default_factory=time.time)

    @property
    def degraded(self) -> bool:
        """True while any reason holds (the upstream, the store, or the poll's pace)."""
        return bool(self.reasons())

    def overrunning(self, now: float | None = None) -> bool:
        """True when the last poll took longer than its period, or the current one does."""
        if self.last_poll_overran:
            return True
        if self.poll_started is None or self.interval <= 0:
            return False
        return (now if now is not None else time.time()) - self.poll_started > self.interval

    def failure_reason(self) -> str | None:
        """The reason of the failure in progress, if the upstream is failing."""
        if not self.consecutive_failures or self.last_error_kind is None:
            return None
        return UPSTREAM_FAILURE_REASONS.get(self.last_error_kind, UPSTREAM_BAD_RESPONSE)

    def reasons(self, now: float | None = None) -> list[str]:
        """Why the service is not fully well, as stable names (empty when it is)."""
        found: list[str] = []
        if not self.baseline_done:
            found.append(WAITING_FOR_FIRST_POLL)
        failure = self.failure_reason()
        if failure is not None:
            found.append(failure)
        if self.unconfirmed:
            found.append(UPSTREAM_LISTING_INCONSISTENT)
        if self.listing_cut is not None:
            found.append(UPSTREAM_LISTING_INCOMPLETE)
        if self.undecodable:
            found.append(UPSTREAM_SESSION_UNDECODABLE)
        if self.overrunning(now):
            found.append(POLL_OVERRUN)
        if self.store_error is not None:
            found.append(STORE_UNAVAILABLE)
        if self.broker_error is not None:
            found.append(REDIS_UNAVAILABLE)
        return found

    def retry_in(self, now: float | None = None) -> float | None:
        """Seconds until the next poll, while the upstream or the store is failing."""
        if self.next_poll_at is None or not (self.consecutive_failures or self.store_error):
            return None
        return max(0.0, self.next_poll_at - (now if now is not None else time.time()))

    def not_ready(self, now: float | None = None) -> NotReady:
        """Why nothing consistent can be served yet, for the authenticated 503 body."""
        retry = self.retry_in(now)
        failure = self.failure_reason()
        if failure is not None:
            detail = self.last_error
            waiting_for = "the Jules API"
        elif self.store_error is not None:
            failure, detail, waiting_for = STORE_UNAVAILABLE, self.store_error, "the store"
        else:
            return NotReady(
                WAITING_FOR_FIRST_POLL,
                "waiting for the first poll of the Jules API",
                None,
                None,
                self.consecutive_failures,
            )
        message = f"waiting for {waiting_for}: {detail}"
        if retry is not None:
            message += f"; retrying in {retry:.0f} s" if retry >= 1 else "; retrying in under 1 s"
        return NotReady(failure, message, detail, retry, self.consecutive_failures)


@dataclass(frozen=True)
class NotReady:
    """Why the service cannot answer yet: a reason name, a sentence, and when it retries."""

    reason: str
    message: str
    detail: str | None
    retry_in: float | None
    consecutive_failures: int
