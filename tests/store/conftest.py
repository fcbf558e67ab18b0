"""One factory per store backend, so every contract test runs against SQLite and PostgreSQL.

PostgreSQL comes from TEST_DATABASE_URL (default: the CI machine's server). Each test gets
a schema and a login role of its own, dropped afterwards, so runs never collide. Without a
reachable server the PostgreSQL tests skip with the reason, unless CI is set: then they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from control_room.store.base import Store
from control_room.store.postgres import PostgresStore
from control_room.store.sqlite import DB_FILE, SqliteStore

TEST_DATABASE_URL: Final = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
CONNECT_TIMEOUT_S: Final = 3.0  # a local server answers in milliseconds; longer means absent
FAIL_FAST_S: Final = 0.2  # how long a store waits on a lock or a dead database in tests


def in_ci() -> bool:
    """True when the CI variable is set (CI=true, CI=1, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redacted(url: str) -> str:
    """The URL without a password, for skip messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


async def admin_connection() -> asyncpg.Connection:
    """A superuser connection to the test database, or skip/fail with the reason."""
    try:
        return await asyncpg.connect(TEST_DATABASE_URL, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL not reachable at {redacted(TEST_DATABASE_URL)}: {exc}"
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
        pytest.skip(reason)


class Backend:
    """One database for one test: makes stores over it, and can make it fail."""

    name: str

    def __init__(self) -> None:
        self.stores: list[Store] = []

    def store(self) -> Store:
        """A new, unopened store over this test's database."""
        raise NotImplementedError

    def service_settings(self) -> dict[str, Any]:
        """Settings overrides that make a Service persist to this database."""
        raise NotImplementedError

    def unavailable(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While inside, writes to this database fail; afterwards they work again."""
        raise NotImplementedError

    async def set_schema_version(self, version: int) -> None:
        """Write a schema version behind the store's back (a newer service was here)."""
        raise NotImplementedError

    async def make(self) -> Store:
        """A store over this database, closed at the end of the test."""
        store = self.store()
        self.stores.append(store)
        return store

    async def close(self) -> None:
        """Close every store made."""
        for store in self.stores:
            await store.close()


class SqliteBackend(Backend):
    """A DATA_DIR under the test's tmp_path."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.data_dir = tmp_path / "data"

    def store(self) -> Store:
        return SqliteStore(self.data_dir, busy_timeout_ms=int(FAIL_FAST_S * 1000))

    def service_settings(self) -> dict[str, Any]:
        return {"persist": True, "data_dir": self.data_dir}

    @contextlib.asynccontextmanager
    async def unavailable(self) -> AsyncIterator[None]:
        # Another connection takes the write lock, as a backup or an operator's shell would:
        # every write of the store then fails with "database is locked" after its timeout.
        other = sqlite3.connect(self.data_dir / DB_FILE, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    async def set_schema_version(self, version: int) -> None:
        with contextlib.closing(sqlite3.connect(self.data_dir / DB_FILE)) as db, db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


class PostgresBackend(Backend):
    """A schema owned by a login role of its own, in the test database."""

    name = "postgres"

    def __init__(self, admin: asyncpg.Connection) -> None:
        super().__init__()
        self.admin = admin
        suffix = f"{os.getpid()}_{secrets.token_hex(4)}"
        self.schema = f"cr_test_{suffix}"
        self.role = f"cr_test_{suffix}"
        self._password = secrets.token_hex(8)

    async def create(self) -> None:
        """The role and its schema."""
        await self.admin.execute(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self._password}'")
        await self.admin.execute(f"CREATE SCHEMA {self.schema} AUTHORIZATION {self.role}")

    async def drop(self) -> None:
        """Everything this test created."""
        await self.admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        await self._terminate()
        await self.admin.execute(f"DROP ROLE IF EXISTS {self.role}")

    @property
    def url(self) -> str:
        """The store's URL: this test's role, with its schema first on the search path."""
        parts = urlsplit(TEST_DATABASE_URL)
        netloc = f"{self.role}:{self._password}@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        query = urlencode({"search_path": self.schema})
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def store(self) -> Store:
        return PostgresStore(self.url, timeout=FAIL_FAST_S * 5)

    def service_settings(self) -> dict[str, Any]:
        return {"persist": True, "database_url": self.url}

    async def _terminate(self) -> None:
        await self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            self.role,
        )

    @contextlib.asynccontextmanager
    async def unavailable(self) -> AsyncIterator[None]:
        # The database goes away for this service: its connections are killed and new ones
        # are refused, as when the server restarts or a failover is under way.
        await self.admin.execute(f"ALTER ROLE {self.role} NOLOGIN")
        await self._terminate()
        try:
            yield
        finally:
            await self.admin.execute(f"ALTER ROLE {self.role} LOGIN")

    async def set_schema_version(self, version: int) -> None:
        await self.admin.execute(
            f"UPDATE {self.schema}.meta SET value = $1 WHERE key = 'schema_version'", str(version)
        )


@contextlib.asynccontextmanager
async def postgres_backend() -> AsyncIterator[PostgresBackend]:
    """A PostgreSQL backend for one test, dropped afterwards."""
    admin = await admin_connection()
    backend = PostgresBackend(admin)
    try:
        await backend.create()
        yield backend
    finally:
        await backend.close()
        await backend.drop()
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend in turn: the contract suite runs once per backend."""
    if request.param == "sqlite":
        sqlite = SqliteBackend(tmp_path)
        yield sqlite
        await sqlite.close()
    else:
        async with postgres_backend() as pg:
            yield pg


@pytest.fixture
async def pg_backend() -> AsyncIterator[PostgresBackend]:
    """PostgreSQL alone (for tests that compare it with SQLite)."""
    async with postgres_backend() as pg:
        yield pg
