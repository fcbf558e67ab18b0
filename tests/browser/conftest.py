"""Browser fixtures: Debian's Chromium driven by Playwright, one browser per test module.

Starting Playwright's driver and Chromium costs about a second on a busy machine; each test
gets a fresh browser *context* (its own storage, permissions and pages) from the module's
browser instead, which isolates tests just as well. A browser belongs to the event loop that
started it, so every test and async fixture of a browser module runs in the module's loop:
the modules mark themselves with `LOOP`, and the shared service fixtures are redefined here
for that loop.

The tests skip (with the reason shown) only when Chromium is missing on a developer machine;
under CI they fail instead, so a CI image without Chromium cannot pass silently.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from control_room.jules.simulator import Simulator, SimulatorServer
from tests.conftest import API_KEY, ServiceFactory, _services

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

LOOP: Final = pytest.mark.asyncio(loop_scope="module")
"""Run a browser module's tests in the module's event loop, where its browser lives."""
module_loop = pytest_asyncio.fixture(loop_scope="module")
"""A per-test async fixture that runs in the module's event loop."""


def in_ci() -> bool:
    """True when the CI environment variable says so (CI=true, CI=1, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so the browser tests must run", pytrace=False)
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium shared by the tests of one module, closed after the last."""
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


async def new_context(browser: Browser, **options: Any) -> BrowserContext:
    """A fresh context (storage, permissions) with the page's timers shrunk for tests."""
    options.setdefault("viewport", VIEWPORT)
    context = await browser.new_context(**options)
    await context.add_init_script(
        f"window.controlRoomOptions = {{backoffBaseMs: {BACKOFF_BASE_MS}}};"
    )
    return context


@module_loop
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh context; an uncaught JavaScript error fails the test."""
    context = await new_context(browser)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


# The shared service fixtures of tests/conftest.py, in the module's loop (the same parts).


@module_loop
async def upstream(sim: Simulator) -> AsyncIterator[SimulatorServer]:
    """The simulator served over real HTTP on 127.0.0.1."""
    async with SimulatorServer(sim, API_KEY) as server:
        yield server


@module_loop
async def make_service(upstream: SimulatorServer) -> AsyncIterator[ServiceFactory]:
    """Start services pointed at the simulator; all are stopped at the end of the test."""
    async for make in _services(upstream.base_url):
        yield make


@module_loop
async def service(make_service: ServiceFactory) -> Any:
    """A running service whose baseline poll is done."""
    svc = await make_service()
    assert svc.poller is not None and svc.poller.ready
    return svc


@module_loop
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A real HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session
