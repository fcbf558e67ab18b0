"""The dashboard's timestamp parsing in a real Chromium: every RFC 3339 form (issue 9.8)."""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from control_room.app import Service

pytestmark = pytest.mark.browser

TEN = 1_767_261_660_000  # 2026-01-01T10:01:00Z in milliseconds


async def test_every_rfc3339_form_sorts_and_shows_by_its_instant(
    page: Page, service: Service
) -> None:
    await page.goto(f"{service.url}/static/format.js")  # same origin, so the import is allowed
    parsed = await page.evaluate(
        """async (stamps) => {
            const { parseTime } = await import('/static/format.js');
            return stamps.map((s) => (Number.isNaN(parseTime(s)) ? null : parseTime(s)));
        }""",
        [
            "2026-01-01T10:01:00Z",
            "2026-01-01t10:01:00z",
            "2026-01-01T11:31:00+01:30",
            "2026-01-01T05:01:00.000000000-05:00",
            "2026-01-01T10:01:00.123456789Z",
            "2026-01-01T10:00:60Z",
            "2026-01-01T10:01:00",
            "2026-13-01T10:01:00Z",
            "soon",
            "",
        ],
    )
    assert parsed == [TEN, TEN, TEN, TEN, TEN + 123, TEN, TEN, None, None, None]
