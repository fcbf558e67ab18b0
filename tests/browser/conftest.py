"""Browser fixtures: Debian's Chromium driven by Playwright, one fresh browser per test.

The tests skip (with the reason shown) only when Chromium is missing on a developer machine;
under CI they fail instead, so a CI image without Chromium cannot pass silently.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM: Final = Path(os.environ.get("CONTROL_ROOM_CHROMIUM", "/usr/bin/chromium"))
"""Debian's Chromium; CONTROL_ROOM_CHROMIUM points elsewhere (another distribution, a Mac)."""
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox needs user namespaces we may not have
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Nothing but the service under test: no update checks, no sync, no phoning home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT: Final = {"width": 1440, "height": 900}
TEST_MS: Final = float(os.environ.get("CONTROL_ROOM_TEST_MS", "1"))
BACKOFF_BASE_MS: Final = 50 * TEST_MS
"""The page's first reconnect waits 0.5-1 s in production; tests shrink it like every timer."""
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts"


def in_ci() -> bool:
    """True when the CI environment variable says so (CI=true, CI=1, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so the browser tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium, closed after the test."""
    if not CHROMIUM.is_file():
        _unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh context; an uncaught JavaScript error fails the test."""
    context = await browser.new_context(viewport=VIEWPORT)
    await context.add_init_script(
        f"window.controlRoomOptions = {{backoffBaseMs: {BACKOFF_BASE_MS}}};"
    )
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
