"""`scoreboard migrate`: apply the versioned SQL files of the configured backend, in order.

PostgreSQL's are `scoreboard/migrations/NNNN_what_it_does.sql`, embedded mode's (SQLite) are
`scoreboard/migrations/sqlite/NNNN_what_it_does.sql`; a file's version is `NNNN`. Each runs once,
in its own transaction, and is recorded with its checksum in `schema_migrations`; editing an
applied file is an error (write a new one). Two processes migrating at once take turns (an
advisory lock in PostgreSQL, the write lock in SQLite). A database that does not exist yet is
created first.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from scoreboard.adapters.postgres import Migration, MigrationError, apply_migrations
from scoreboard.adapters.sqlite import migrate_sqlite
from scoreboard.bridge import open_bridge
from scoreboard.config import Config

MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files of `directory` (the package's PostgreSQL ones by default), oldest
    first."""
    folder = directory or resources.files("scoreboard") / "migrations"
    migrations: dict[str, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"{entry.name}: a migration file is named NNNN_name.sql")
        version = match["version"]
        if version in migrations:
            raise MigrationError(f"two migration files have version {version}")
        migrations[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    return [migrations[version] for version in sorted(migrations)]


def load_sqlite_migrations() -> list[Migration]:
    return load_migrations(resources.files("scoreboard") / "migrations" / "sqlite")


async def migrate(database_url: str) -> list[str]:
    """Bring the PostgreSQL database at `database_url` up to date; returns the versions applied."""
    migrations = load_migrations()
    async with open_bridge() as bridge:
        return await apply_migrations(bridge, database_url, migrations)


async def migrate_configured(config: Config) -> tuple[str, list[str]]:
    """Bring the configured backend's database up to date: what it is, and the versions
    applied."""
    if config.backend_mode == "embedded":
        data_dir = Path(config.embedded.data_dir)
        applied = await migrate_sqlite(data_dir, load_sqlite_migrations())
        return f"SQLite in {data_dir}", applied
    return "PostgreSQL", await migrate(config.database.url)
