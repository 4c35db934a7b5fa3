"""`scoreboard migrate`: apply the versioned SQL files in `scoreboard/migrations/`, in order.

A file is named `NNNN_what_it_does.sql`; its version is `NNNN`. Each runs once, in its own
transaction, and is recorded with its checksum in `schema_migrations`; editing an applied file is
an error (write a new one). Two processes migrating at once take turns on an advisory lock.
A database that does not exist yet is created first.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from scoreboard.adapters.postgres import Migration, MigrationError, apply_migrations
from scoreboard.bridge import open_bridge

MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files of `directory` (the package's own by default), oldest first."""
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


async def migrate(database_url: str) -> list[str]:
    """Bring the database at `database_url` up to date; returns the versions applied."""
    migrations = load_migrations()
    async with open_bridge() as bridge:
        return await apply_migrations(bridge, database_url, migrations)
