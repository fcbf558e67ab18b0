"""Event loop and background task helpers shared by the service, the CLI and the benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (Linux, the `fast` extra), else asyncio.

    The import is tried before running, so an ImportError raised *inside* `main` is never
    mistaken for a missing uvloop.
    """
    try:
        import uvloop  # optional: a faster event loop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel every task, then wait for each to finish unwinding."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
