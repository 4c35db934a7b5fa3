"""PostgreSQL (asyncpg) behind the asyncio bridge: the `Store`, and the migration runner's SQL.

Every public method crosses the bridge once. The asyncio side of each is one coroutine below
(`_commit_actions`, `_get_user`, …) that acquires a connection, runs its statements, in a
transaction where it writes, and releases the connection before it returns, so a trio
cancellation unwinds all of it on the asyncio loop and never leaves a connection behind.

Every writer to `action_logs` first locks the user's row (`FOR UPDATE`). That serialises the
writers of one user, so what a transaction reads from `action_logs` before inserting is still
true when it inserts, and each row's `new_score` can be written once, at insert time (the log is
append-only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.bridge import Bridge

T = TypeVar("T")

CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)
MAINTENANCE_DATABASE = "postgres"
# Any bigint of our own: every `scoreboard migrate` takes it, so only one migrates at a time.
MIGRATION_LOCK_KEY = 0x73622D6D69677261

async def _crossing(bridge: Bridge, job: Callable[..., Awaitable[T]], *args: Any) -> T:
    """One bridge crossing, with transport failures reported as `BackendUnavailable`."""
    try:
        return await bridge.run(job, *args)
    except CONNECTION_ERRORS as exc:
        raise BackendUnavailable(f"PostgreSQL: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Migrations


class MigrationError(RuntimeError):
    """The migration files and the database's record of them disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(
    bridge: Bridge, database_url: str, migrations: Sequence[Migration]
) -> list[str]:
    """Create the database if it is missing, then apply the migrations not yet recorded, in order,
    each in its own transaction. Returns the versions applied (empty when already up to date)."""
    return await _crossing(bridge, _apply_migrations, database_url, migrations)


async def _apply_migrations(database_url: str, migrations: Sequence[Migration]) -> list[str]:
    conn = await _connect_creating_database(database_url)
    try:
        # A session lock: held across the per-file transactions, released when we disconnect.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_MIGRATIONS_TABLE)
        recorded = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        applied: list[str] = []
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} changed after it was "
                        "applied; add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration.version)
        return applied
    finally:
        await conn.close()


async def _connect_creating_database(database_url: str) -> Any:
    try:
        return await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        await _create_database(database_url)
    return await asyncpg.connect(database_url)


async def _create_database(database_url: str) -> None:
    parts = urlsplit(database_url)
    name = unquote(parts.path.lstrip("/"))
    conn = await asyncpg.connect(urlunsplit(parts._replace(path=f"/{MAINTENANCE_DATABASE}")))
    try:
        # Utility statements take no parameters: the name goes in as a quoted identifier.
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # another process created it in the meantime
    finally:
        await conn.close()
