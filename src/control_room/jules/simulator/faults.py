"""Faults armed for the next requests: errors, 429s, garbage, wrong shapes, delays, a bad page.

Pure bookkeeping: the HTTP layer asks for the fault of each request (`take`) and applies it.
A fault can be restricted to some request kinds (`only="list_activities"`, see
`accounting.REQUEST_KINDS`), so a test can break the activities calls while the listing works.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from control_room.jules.simulator.accounting import REQUEST_KINDS

FaultKind = Literal["fail", "rate_limit", "garbage", "wrong_shape", "delay"]

RETRY_AFTER_DEFAULT: Final = 1  # seconds; the SDK's backoff base
WRONG_SHAPE_BODY: Final[dict[str, Any]] = {"sessions": "oops"}
GARBAGE_BODY: Final = b"<!DOCTYPE html><html><body>502 upstream hiccup</body></html>"
# Declared as JSON on purpose: a lying Content-Type is the harder case for a client.
GARBAGE_CONTENT_TYPE: Final = "application/json"


@dataclass(frozen=True, slots=True)
class Fault:
    """One misbehaviour the HTTP layer applies to one request instead of (or before) answering."""

    kind: FaultKind
    status: int = 500
    retry_after: int | None = None
    seconds: float = 0.0
    body: object = None


@dataclass(slots=True, eq=False)  # identity: `remove` must drop this very entry
class _Armed:
    fault: Fault
    remaining: int
    only: frozenset[str] | None = None  # request kinds it applies to; None: any request


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError("a fault must be armed for at least one request")


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error (400-599)")


def _kinds(only: str | Iterable[str] | None) -> frozenset[str] | None:
    if only is None:
        return None
    kinds = frozenset((only,) if isinstance(only, str) else only)
    if not kinds:
        raise ValueError("only= names at least one request kind")
    unknown = kinds.difference(REQUEST_KINDS)
    if unknown:  # a typo would arm a fault that never fires
        raise ValueError(f"unknown request kinds {sorted(unknown)}; see REQUEST_KINDS")
    return kinds


class Faults:
    """Faults armed for the next requests, consumed one per request in the order armed."""

    __slots__ = ("_pages", "_queue")

    def __init__(self) -> None:
        self._queue: deque[_Armed] = deque()
        self._pages: dict[int, _Armed] = {}

    def _arm(self, fault: Fault, n: int, only: str | Iterable[str] | None) -> None:
        _check_count(n)
        self._queue.append(_Armed(fault, n, _kinds(only)))

    def fail(
        self, n: int = 1, status: int = 500, *, only: str | Iterable[str] | None = None
    ) -> None:
        """The next `n` requests (of the kinds in `only`) answer `status` in Google's envelope."""
        _check_status(status)
        self._arm(Fault("fail", status=status), n, only)

    def rate_limit(
        self,
        n: int = 1,
        retry_after: int | None = RETRY_AFTER_DEFAULT,
        *,
        only: str | Iterable[str] | None = None,
    ) -> None:
        """The next `n` requests answer 429 RESOURCE_EXHAUSTED (`retry_after=None`: no header)."""
        self._arm(Fault("rate_limit", status=429, retry_after=retry_after), n, only)

    def garbage(self, n: int = 1, *, only: str | Iterable[str] | None = None) -> None:
        """The next `n` requests answer 200 with a body that is not JSON."""
        self._arm(Fault("garbage", status=200), n, only)

    def wrong_shape(
        self,
        n: int = 1,
        body: object = WRONG_SHAPE_BODY,
        *,
        only: str | Iterable[str] | None = None,
    ) -> None:
        """The next `n` requests answer 200 with valid JSON of the wrong shape."""
        self._arm(Fault("wrong_shape", status=200, body=body), n, only)

    def delay(self, seconds: float, n: int = 1, *, only: str | Iterable[str] | None = None) -> None:
        """The next `n` requests are answered normally, `seconds` late."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._arm(Fault("delay", seconds=seconds), n, only)

    def fail_page(self, page_index: int, n: int = 1, status: int = 500) -> None:
        """Listing requests for page `page_index` (0 is the first page) fail `n` times."""
        if page_index < 0:
            raise ValueError("page_index starts at 0")
        _check_status(status)
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

    def take(self, kind: str | None = None) -> Fault | None:
        """The fault for a request of `kind` now arriving, if any (consumes it).

        The first armed fault that applies to `kind` wins; faults restricted with `only=`
        never apply to a request of unknown kind (`kind=None`).
        """
        for armed in self._queue:
            if armed.only is None or (kind is not None and kind in armed.only):
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._queue.remove(armed)
                return armed.fault
        return None

    def take_page(self, page_index: int) -> Fault | None:
        """The fault for a listing request of page `page_index`, if any (consumes it)."""
        armed = self._pages.get(page_index)
        if armed is None:
            return None
        armed.remaining -= 1
        if armed.remaining == 0:
            del self._pages[page_index]
        return armed.fault
