"""A simulator of the Jules REST API, faithful enough to build and measure the control room on.

- `engine`: sessions, activities and sources, and their lifecycle; pure, seeded, no I/O
  (`Simulator`; `Simulator.large_account` for an account of thousands of sessions).
- `content`: what sessions are about: tasks, plans, unified diffs, command output.
- `faults`: misbehaviour armed for the next requests (`sim.faults`).
- `accounting`: requests counted by kind (`sim.requests`, a `Counter`).
- `filters`, `paging`, `timestamps`: the API's `filter`, `pageSize`/`pageToken` and times.
- `http`: the aiohttp app serving it under `/v1alpha` (and `GET /_sim/stats`).
- `server`: `SimulatorServer` (a real socket, ticking) and `serve_simulator` (the CLI).

Every new activity moves its session's `updateTime`: the control room relies on that to know
when to fetch a session's activities. See docs/reference/simulator.md.
"""

from control_room.jules.simulator.accounting import REQUEST_KINDS, RequestCounts
from control_room.jules.simulator.content import Resource
from control_room.jules.simulator.engine import (
    ACTIVITIES_NOT_FOUND_FOR_S,
    ACTIVITY_INTERVAL_S,
    AGENT,
    AUTO_APPROVE_STEPS,
    AUTO_CREATE_PR,
    AWAITING_PLAN_APPROVAL,
    AWAITING_USER_FEEDBACK,
    COMPLETED,
    FAILED,
    FEEDBACK_ANSWER_STEPS,
    FINISHED,
    IN_PROGRESS,
    LIFECYCLE_STATES,
    PAUSED,
    PLANNING,
    QUEUED,
    SETTLED,
    SYSTEM,
    USER,
    SessionOrder,
    Simulator,
)
from control_room.jules.simulator.errors import (
    ActivitiesNotReady,
    ActivityNotFound,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SessionNotFound,
    SimulatorError,
    SourceNotFound,
)
from control_room.jules.simulator.faults import Fault, Faults
from control_room.jules.simulator.filters import TimeBound
from control_room.jules.simulator.http import API_KEY_HEADER, API_PREFIX, STATS_PATH, create_app
from control_room.jules.simulator.paging import (
    decode_page_token,
    encode_page_token,
    parse_page_size,
)
from control_room.jules.simulator.server import SimulatorServer, serve_simulator
from control_room.jules.simulator.timestamps import format_timestamp, parse_timestamp

__all__ = [
    "ACTIVITIES_NOT_FOUND_FOR_S",
    "ACTIVITY_INTERVAL_S",
    "AGENT",
    "API_KEY_HEADER",
    "API_PREFIX",
    "AUTO_APPROVE_STEPS",
    "AUTO_CREATE_PR",
    "AWAITING_PLAN_APPROVAL",
    "AWAITING_USER_FEEDBACK",
    "COMPLETED",
    "FAILED",
    "FEEDBACK_ANSWER_STEPS",
    "FINISHED",
    "IN_PROGRESS",
    "LIFECYCLE_STATES",
    "PAUSED",
    "PLANNING",
    "QUEUED",
    "REQUEST_KINDS",
    "SETTLED",
    "STATS_PATH",
    "SYSTEM",
    "USER",
    "ActivitiesNotReady",
    "ActivityNotFound",
    "FailedPrecondition",
    "Fault",
    "Faults",
    "InvalidArgument",
    "NotFound",
    "RequestCounts",
    "Resource",
    "SessionNotFound",
    "SessionOrder",
    "Simulator",
    "SimulatorError",
    "SimulatorServer",
    "SourceNotFound",
    "TimeBound",
    "create_app",
    "decode_page_token",
    "encode_page_token",
    "format_timestamp",
    "parse_page_size",
    "parse_timestamp",
    "serve_simulator",
]
