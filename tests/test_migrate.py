"""The migration runner against the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from scoreboard.adapters.migrations import Migration, MigrationError, load_migrations
from scoreboard.adapters.postgres import apply_migrations
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.migrate import migrate
from tests.conftest import PG_ADMIN_URL, RUN_ID, _pg_admin, _with_database


@pytest.fixture
def missing_database_url() -> Iterator[str]:
    """The URL of a database that does not exist yet; dropped afterwards if a test made it."""
    name = f"sbtest_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    yield _with_database(PG_ADMIN_URL, name)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def fetch(bridge: Bridge, url: str, query: str, *args: Any) -> list[Any]:
    async def job() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return await bridge.run(job)


def test_migration_files_are_numbered_from_0001_without_gaps() -> None:
    versions = [migration.version for migration in load_migrations()]
    assert versions == [f"{n:04d}" for n in range(1, len(versions) + 1)]


async def test_migrate_creates_a_missing_database_and_records_each_version(
    missing_database_url: str,
) -> None:
    applied = await migrate(missing_database_url)

    assert applied == [migration.version for migration in load_migrations()]
    async with open_bridge() as bridge:
        rows = await fetch(bridge, missing_database_url, "SELECT version FROM schema_migrations")
        tables = await fetch(
            bridge,
            missing_database_url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
    assert sorted(row["version"] for row in rows) == applied
    assert {"users", "action_logs", "signing_keys"} <= {row["table_name"] for row in tables}


async def test_migrating_an_up_to_date_database_applies_nothing(database_url: str) -> None:
    assert await migrate(database_url) == []
    assert await migrate(database_url) == []


async def test_two_concurrent_migrations_of_a_missing_database_apply_each_file_once(
    missing_database_url: str,
) -> None:
    outcomes: list[list[str]] = []

    async def run_migrate() -> None:
        outcomes.append(await migrate(missing_database_url))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_migrate)
        nursery.start_soon(run_migrate)

    everything = [migration.version for migration in load_migrations()]
    assert sorted(outcomes) == [[], everything]
    async with open_bridge() as bridge:
        rows = await fetch(bridge, missing_database_url, "SELECT version FROM schema_migrations")
    assert sorted(row["version"] for row in rows) == everything


async def test_a_later_migration_is_applied_on_top_and_a_failing_one_leaves_no_trace(
    database_url: str,
) -> None:
    shipped = load_migrations()
    later = Migration("9001", "later", "CREATE TABLE later_thing (id int PRIMARY KEY)")
    broken = Migration(
        "9002", "broken", "CREATE TABLE half_done (id int); SELECT no_such_column FROM later_thing"
    )
    async with open_bridge() as bridge:
        with pytest.raises(asyncpg.UndefinedColumnError):
            await apply_migrations(bridge, database_url, [*shipped, later, broken])

        versions = await fetch(bridge, database_url, "SELECT version FROM schema_migrations")
        half_done = await fetch(bridge, database_url, "SELECT to_regclass('half_done') AS t")
        assert "9001" in {row["version"] for row in versions}
        assert "9002" not in {row["version"] for row in versions}
        assert half_done[0]["t"] is None

        assert await apply_migrations(bridge, database_url, [*shipped, later]) == []


async def test_an_applied_migration_that_was_edited_is_refused(database_url: str) -> None:
    first, *rest = load_migrations()
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    async with open_bridge() as bridge:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(bridge, database_url, [edited, *rest])


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_fine.sql").write_text("SELECT 1")
    (tmp_path / "2_not_numbered_right.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1")
    (tmp_path / "0001_other.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="version 0001"):
        load_migrations(tmp_path)


def test_a_check_belongs_to_a_migration_of_its_name(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1")
    (tmp_path / "0001_one.check.sql").write_text("-- advice\nSELECT 'problem' WHERE false")
    (loaded,) = load_migrations(tmp_path)
    assert loaded.check is not None
    assert loaded.checksum == Migration("0001", "one", "SELECT 1").checksum
    (tmp_path / "0002_two.check.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"has no 0002_two\.sql"):
        load_migrations(tmp_path)


async def test_a_check_with_rows_stops_its_migration_with_them_and_its_advice(
    database_url: str,
) -> None:
    shipped = load_migrations()
    checked = Migration(
        "9001",
        "checked",
        "CREATE TABLE never_made (id int)",
        check="-- Fix them,\n-- then migrate again.\nSELECT 'one' UNION ALL SELECT 'two'",
    )
    async with open_bridge() as bridge:
        with pytest.raises(MigrationError) as refused:
            await apply_migrations(bridge, database_url, [*shipped, checked])
        made = await fetch(bridge, database_url, "SELECT to_regclass('never_made') AS t")
    assert str(refused.value) == (
        "migration 9001_checked cannot be applied to this database:\n  one\n  two\n"
        "Fix them, then migrate again."
    )
    assert made[0]["t"] is None
