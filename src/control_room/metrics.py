"""Prometheus metrics, one registry per service (so several services can live in one process).

Hot paths touch these once per broadcast or per event, never once per client per message:
per-client counts are plain integers on the connection, summed here in bulk.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from control_room.jules.requests import REQUEST_KINDS

CLOSE_REASONS: Final = (
    "normal",
    "heartbeat_timeout",
    "backpressure_limit",
    "message_too_big",
    "shutdown",
    "error",
    "command_flood",
    "resync",
    "history_unavailable",
    "connection_reset",
    "protocol_error",
    "token_revoked",
)
REJECT_REASONS: Final = ("unauthorized", "throttled", "forbidden_origin", "bad_request")
"""Why an upgrade was refused before the handshake, exported at zero from the start."""
AUTH_TRANSPORTS: Final = ("websocket", "rest")
SERVER_REFUSALS: Final = ("max_connections", "no_file_descriptors")
POLL_FAILURE_KINDS: Final = (
    "timeout",
    "network",
    "server_error",
    "rate_limited",
    "bad_response",
    "unauthorized",
    "client_error",
)
"""Every `UpstreamError.kind`, exported at zero from the start so rates work at once."""
RESUME_OUTCOMES: Final = (
    "recovered",
    "epoch_changed",
    "history_expired",
    "too_far_behind",
    "ahead_of_server",
)
"""A resume either replays (`recovered`) or resets, for one of these reasons."""
LISTING_ANOMALIES: Final = (
    "undecodable",
    "identity_conflict",
    "no_id",
    "duplicate_id",
    "stale_version",
    "token_loop",
    "empty_pages",
    "too_many_pages",
)
"""What a listing entry can get wrong (see jules/mapping.py), or its paging (a listing
that loops, pages on through empty pages, or past MAX_PAGES: jules/client.py); none of
them becomes a delta."""
DELETION_CHECK_OUTCOMES: Final = ("gone", "present", "unknown")
"""What a `GET /sessions/{id}` of a vanished session said (see deletions.py)."""
ACTIVITY_READ_OUTCOMES: Final = ("ok", "not_found_yet", "gone", "failed")
"""What one read of a session's activities came to (see cursors.py): read, Jules' transient
404 after a create (read again), a 404 past the grace period (dropped), any other failure
(read again, backing off)."""
LISTING_KINDS: Final = ("complete", "first_page")
"""A poll lists every page, or only the first one (see schedule.py)."""
FAST_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Broadcast and diff take well under a millisecond to tens of milliseconds."""
SLOW_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upstream polls and store writes are network round trips: tens of ms to seconds."""


class Metrics:
    """Every metric the service exports, registered in its own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "control_room_"
        self.connections_active = Gauge(
            p + "connections_active", "Open WebSocket connections", registry=r
        )
        self.connections_accepted = Counter(
            p + "connections_accepted", "WebSocket connections accepted", registry=r
        )
        self.connections_rejected = Counter(
            p + "connections_rejected",
            "WebSocket upgrades refused before the handshake",
            ["reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            p + "connections_closed", "WebSocket connections closed", ["reason"], registry=r
        )
        self.deltas_published = Counter(
            p + "deltas_published", "Deltas published", ["type"], registry=r
        )
        self.messages_sent = Counter(
            p + "messages_sent", "WebSocket messages handed to clients", registry=r
        )
        self.bytes_sent = Counter(
            p + "sent_bytes", "WebSocket bytes handed to clients, framing included", registry=r
        )
        self.broadcast_duration = Histogram(
            p + "broadcast_duration_seconds",
            "Time to hand one poll's deltas to every client",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.payload_size = Histogram(
            p + "delta_payload_bytes",
            "Size of one encoded delta",
            buckets=(256, 512, 1024, 2048, 4096, 8192, 16384, 65536),
            registry=r,
        )
        self.poll_duration = Histogram(
            p + "poll_duration_seconds",
            "Time to read one poll's listing: the first page, or every page",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.poll_failures = Counter(
            p + "poll_failures", "Upstream listings that failed", ["kind"], registry=r
        )
        self.diff_duration = Histogram(
            p + "diff_duration_seconds",
            "Time to map and diff one listing",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.deltas_per_poll = Histogram(
            p + "deltas_per_poll",
            "Deltas found by one successful poll",
            buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000),
            registry=r,
        )
        self.sessions_tracked = Gauge(
            p + "sessions_tracked", "Sessions in the current snapshot", registry=r
        )
        self.poll_overruns = Counter(
            p + "poll_overruns",
            "Polls that took longer than the poll interval (changes were late)",
            registry=r,
        )
        self.listings_torn = Counter(
            p + "listings_torn",
            "Listings that missed sessions a GET showed still exist",
            registry=r,
        )
        self.deletion_checks = Counter(
            p + "deletion_checks",
            "GETs of sessions missing from a listing, by what they said",
            ["outcome"],
            registry=r,
        )
        self.sessions_unconfirmed = Gauge(
            p + "sessions_unconfirmed",
            "Sessions missing from the last listing, kept because their deletion is unconfirmed",
            registry=r,
        )
        self.listings_incomplete = Counter(
            p + "listings_incomplete",
            "Complete listings cut short by a page that failed or hung, by failure kind",
            ["kind"],
            registry=r,
        )
        self.listing_anomalies = Counter(
            p + "listing_anomalies",
            "Listing entries that were not used as given, by what was wrong",
            ["kind"],
            registry=r,
        )
        self.sessions_undecodable = Gauge(
            p + "sessions_undecodable",
            "Listing entries in the last listing that could not be used (last good kept)",
            registry=r,
        )
        self.upstream_requests = Counter(
            p + "upstream_requests",
            "Requests sent to the Jules API, retries included, by kind",
            ["kind"],
            registry=r,
        )
        self.listings = Counter(
            p + "listings",
            "Successful session listings by kind: every page, or the first page only",
            ["kind"],
            registry=r,
        )
        self.hot_sessions = Gauge(
            p + "hot_sessions_read",
            "Working sessions beyond the first page read one by one in the last partial poll",
            registry=r,
        )
        self.hot_sessions_deferred = Gauge(
            p + "hot_sessions_deferred",
            "Working sessions beyond the first page left to the complete listing (over the cap)",
            registry=r,
        )
        self.activity_reads = Counter(
            p + "activity_reads",
            "Reads of one session's new activities, by outcome",
            ["outcome"],
            registry=r,
        )
        self.activities_published = Counter(
            p + "activities_published", "New activities published", registry=r
        )
        self.activities_skipped = Counter(
            p + "activities_skipped",
            "Activities that could not be decoded and were skipped",
            registry=r,
        )
        self.activity_reads_due = Gauge(
            p + "activity_reads_due",
            "Sessions whose new activities wait for a later poll (failed, not found yet, deferred)",
            registry=r,
        )
        self.sessions_stalled = Gauge(
            p + "sessions_stalled",
            "IN_PROGRESS sessions flagged stalled (no activity for STALL_AFTER)",
            registry=r,
        )
        self.heartbeat_pings = Counter(p + "heartbeat_pings", "Pings sent", registry=r)
        self.store_write_duration = Histogram(
            p + "store_write_duration_seconds",
            "Time to persist one poll's deltas",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.store_failures = Counter(p + "store_failures", "Store writes that failed", registry=r)
        self.replays = Counter(p + "resume", "Resume requests by outcome", ["outcome"], registry=r)
        self.webhook_deliveries = Counter(
            p + "webhook_deliveries",
            "Webhook deliveries by outcome",
            ["outcome"],
            registry=r,
        )
        self.webhook_retries = Counter(p + "webhook_retries", "Webhook retries", registry=r)
        self.webhook_queue_depth = Gauge(
            p + "webhook_queue_depth", "Deliveries waiting, all endpoints", registry=r
        )
        self.webhook_oldest_age = Gauge(
            p + "webhook_oldest_pending_age_seconds",
            "Age of the oldest delivery still waiting",
            registry=r,
        )
        self.auth_failures = Counter(
            p + "auth_failures",
            "Requests refused for a missing or wrong token",
            ["transport"],
            registry=r,
        )
        self.auth_throttled = Counter(
            p + "auth_throttled",
            "Requests answered 429 because their address failed too often",
            ["transport"],
            registry=r,
        )
        self.token_revocations = Counter(
            p + "token_revocations", "Tokens removed by a reload of the token file", registry=r
        )
        self.server_connections = Gauge(
            p + "server_connections", "Open TCP connections (HTTP and WebSocket)", registry=r
        )
        self.server_max_connections = Gauge(
            p + "server_max_connections", "The connection cap (MAX_CONNECTIONS)", registry=r
        )
        self.server_refused = Counter(
            p + "server_refused_connections",
            "TCP connections answered 503 at once: over the cap, or out of descriptors",
            ["reason"],
            registry=r,
        )
        self.http_bad_requests = Counter(
            p + "http_bad_requests", "Malformed HTTP requests answered 400", registry=r
        )
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for reason in REJECT_REASONS:
            self.connections_rejected.labels(reason)
        for transport in AUTH_TRANSPORTS:
            self.auth_failures.labels(transport)
            self.auth_throttled.labels(transport)
        for reason in SERVER_REFUSALS:
            self.server_refused.labels(reason)
        for kind in ("created", "updated", "deleted"):
            self.deltas_published.labels(kind)
        for kind in POLL_FAILURE_KINDS:
            self.poll_failures.labels(kind)
            self.listings_incomplete.labels(kind)
        for outcome in RESUME_OUTCOMES:
            self.replays.labels(outcome)
        for kind in LISTING_ANOMALIES:
            self.listing_anomalies.labels(kind)
        for outcome in DELETION_CHECK_OUTCOMES:
            self.deletion_checks.labels(outcome)
        for request in REQUEST_KINDS:
            self.upstream_requests.labels(request)
        for listing in LISTING_KINDS:
            self.listings.labels(listing)
        for outcome in ACTIVITY_READ_OUTCOMES:
            self.activity_reads.labels(outcome)


LEASE_OUTCOMES: Final = ("gained", "lost", "released")
RESYNC_REASONS: Final = ("epoch_changed", "gap", "rolled_back")
REDIS_OPERATIONS: Final = ("read", "publish", "history", "lease", "refresh", "report")


class ClusterMetrics:
    """What a cluster member (REDIS_URL) exports besides the service's own metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        p = "control_room_cluster_"
        self.leader = Gauge(p + "leader", "1 while this node holds the lease and polls", registry=r)
        self.fence = Gauge(
            p + "fence",
            "Fencing number of the current leader, as this node last saw it",
            registry=r,
        )
        self.lease_changes = Counter(
            p + "lease_changes",
            "This node's lease gained, lost or released",
            ["outcome"],
            registry=r,
        )
        self.lag_events = Gauge(
            p + "stream_lag_events",
            "Sessions deltas published to the shared stream and not yet delivered on this node",
            registry=r,
        )
        self.stream_delay = Histogram(
            p + "stream_delay_seconds",
            "From a batch's publish in Redis (Redis clock) to its delivery on this node",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.publish_duration = Histogram(
            p + "publish_duration_seconds",
            "Leader: from the publish script's call to the batch's delivery on this node",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.resyncs = Counter(
            p + "resyncs",
            "Times this node reloaded the shared state because history changed under it",
            ["reason"],
            registry=r,
        )
        self.redis_errors = Counter(
            p + "redis_errors", "Redis calls that failed, by operation", ["operation"], registry=r
        )
        for outcome in LEASE_OUTCOMES:
            self.lease_changes.labels(outcome)
        for reason in RESYNC_REASONS:
            self.resyncs.labels(reason)
        for operation in REDIS_OPERATIONS:
            self.redis_errors.labels(operation)
