"""Migration 0003 on both databases: usernames and emails unique on their normalized form. On a
database whose accounts clash it refuses, listing every clash and what to do, and changes
nothing; once they are resolved it applies, and the accounts are found by any case of their
name while a new account cannot take one in another case."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest

from scoreboard.adapters.interfaces import EmailTaken, Store, UsernameTaken
from scoreboard.adapters.migrations import (
    Migration,
    MigrationError,
    load_migrations,
    load_sqlite_migrations,
)
from scoreboard.adapters.postgres import apply_migrations, open_postgres_store
from scoreboard.adapters.sqlite import SQLiteStore, connect, database_path, open_sqlite
from scoreboard.adapters.sqlite import apply_migrations as apply_sqlite_migrations
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import DatabaseConfig
from tests.conftest import PG_ADMIN_URL, RUN_ID, _pg_admin, _with_database

VERSION = "0003"
# Distinct accounts until now; three clashes: two by username, one by email.
ACCOUNTS = [
    ("Alice", "alice@example.com"),
    ("alice", "alice.other@example.com"),
    ("bob", "Bob@example.com"),
    ("carol", "bob@example.com"),
    ("Dave", "dave@example.com"),
    ("DAVE", "dave2@example.com"),
    ("erin", "erin@example.com"),
]
RESOLUTION = [
    "UPDATE users SET username = 'alice_2' WHERE username = 'alice'",
    "UPDATE users SET email = 'carol@example.com' WHERE username = 'carol'",
    "UPDATE users SET username = 'dave_2' WHERE username = 'DAVE'",
]


class OldDatabase(Protocol):
    """A database migrated up to the version before 0003, reachable the way an operator's SQL
    shell reaches it."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def add_account(self, username: str, email: str) -> None: ...

    async def versions(self) -> set[str]: ...

    async def migrate(self) -> list[str]: ...

    def store(self) -> AbstractAsyncContextManager[Store]: ...


def up_to_0002(migrations: list[Migration]) -> list[Migration]:
    return [migration for migration in migrations if migration.version < VERSION]


class PostgresDatabase:
    def __init__(self, bridge: Bridge, url: str) -> None:
        self.bridge = bridge
        self.url = url

    async def _run(self, sql: str, *args: Any) -> list[Any]:
        async def job() -> list[Any]:
            conn = await asyncpg.connect(self.url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return await self.bridge.run(job)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._run(sql, *args)

    async def add_account(self, username: str, email: str) -> None:
        await self.execute(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x')",
            username,
            email,
        )

    async def versions(self) -> set[str]:
        return {row["version"] for row in await self._run("SELECT version FROM schema_migrations")}

    async def migrate(self) -> list[str]:
        return await apply_migrations(self.bridge, self.url, load_migrations())

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        config = DatabaseConfig(url=self.url, pool_min=1, pool_max=2)
        async with open_postgres_store(self.bridge, config) as store:
            yield store


class SQLiteDatabase:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def execute(self, sql: str, *args: Any) -> None:
        connection = connect(database_path(self.data_dir))
        try:
            connection.execute(sql, args)
        finally:
            connection.close()

    async def add_account(self, username: str, email: str) -> None:
        await self.execute(
            "INSERT INTO users (username, email, password_hash, score_reached_at_ms,"
            " created_at_ms, updated_at_ms) VALUES (?, ?, 'x', 0, 0, 0)",
            username,
            email,
        )

    async def versions(self) -> set[str]:
        connection = connect(database_path(self.data_dir))
        try:
            return {row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
        finally:
            connection.close()

    async def migrate(self) -> list[str]:
        connection = connect(database_path(self.data_dir))
        try:
            return apply_sqlite_migrations(connection, load_sqlite_migrations())
        finally:
            connection.close()

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        async with open_sqlite(self.data_dir, load_sqlite_migrations()) as database:
            yield SQLiteStore(database)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    name = f"sbtest_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    yield _with_database(PG_ADMIN_URL, name)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgres", "sqlite"])
async def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        data_dir = tmp_path / "var"
        data_dir.mkdir()
        connection = connect(database_path(data_dir))
        try:
            apply_sqlite_migrations(connection, up_to_0002(load_sqlite_migrations()))
        finally:
            connection.close()
        yield SQLiteDatabase(data_dir)
        return
    url = request.getfixturevalue("fresh_pg_url")
    async with open_bridge() as bridge:
        await apply_migrations(bridge, url, up_to_0002(load_migrations()))
        yield PostgresDatabase(bridge, url)


async def test_clashing_accounts_stop_the_migration_with_a_list_of_them(
    old_database: OldDatabase,
) -> None:
    for username, email in ACCOUNTS:
        await old_database.add_account(username, email)

    with pytest.raises(MigrationError) as refused:
        await old_database.migrate()

    message = str(refused.value)
    assert "0003_normalized_identities cannot be applied" in message
    assert "username alice is shared by: Alice (id 1), alice (id 2)" in message
    assert "username dave is shared by: Dave (id 5), DAVE (id 6)" in message
    assert "email bob@example.com is shared by: Bob@example.com (id 3, bob), " in message
    assert "bob@example.com (id 4, carol)" in message
    assert "erin" not in message
    assert "UPDATE users SET username" in message  # how to resolve them
    assert "scoreboard migrate" in message
    assert VERSION not in await old_database.versions()
    # Nothing changed: an account can still be added the old way.
    await old_database.add_account("ERIN", "ERIN@example.com")
    await old_database.execute("DELETE FROM users WHERE username = 'ERIN'")


async def test_once_resolved_the_migration_applies_and_names_are_one_in_any_case(
    old_database: OldDatabase,
) -> None:
    for username, email in ACCOUNTS:
        await old_database.add_account(username, email)
    for statement in RESOLUTION:
        await old_database.execute(statement)

    applied = await old_database.migrate()
    assert applied[0] == VERSION, applied  # and any later migration after it

    async with old_database.store() as store:
        for typed, stored in [("ALICE", "Alice"), ("Alice_2", "alice_2"), ("dave", "Dave")]:
            found = await store.get_user_by_username(typed)
            assert found is not None
            assert found.username == stored
        with pytest.raises(UsernameTaken):
            await store.create_user("ERIN", "someone@example.com", "x")
        with pytest.raises(EmailTaken):
            await store.create_user("frank", "CAROL@example.com", "x")
        frank = await store.create_user("Frank", "Frank@Example.com", "x")
        found = await store.get_user_by_username("frank")
        assert found is not None
        assert (found.user_id, found.username, found.email) == (
            frank,
            "Frank",
            "Frank@Example.com",
        )


async def test_a_name_outside_ascii_stored_by_hand_is_reported(
    old_database: OldDatabase,
) -> None:
    await old_database.add_account("zoë", "zoe@example.com")
    with pytest.raises(MigrationError, match=r"account id 1 \(zoë, zoe@example.com\) has"):
        await old_database.migrate()
