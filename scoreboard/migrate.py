"""`scoreboard migrate`: apply the versioned SQL files of the configured backend, in order.

PostgreSQL's are `scoreboard/migrations/NNNN_what_it_does.sql`, embedded mode's (SQLite) are
`scoreboard/migrations/sqlite/NNNN_what_it_does.sql`; a file's version is `NNNN`. Each runs once,
in its own transaction, and is recorded with its checksum in `schema_migrations`; editing an
applied file is an error (write a new one). Two processes migrating at once take turns (an
advisory lock in PostgreSQL, the write lock in SQLite). A database that does not exist yet is
created first.
"""

from __future__ import annotations

from pathlib import Path

from scoreboard.adapters.migrations import load_migrations, load_sqlite_migrations
from scoreboard.adapters.postgres import apply_migrations
from scoreboard.adapters.sqlite import migrate_sqlite
from scoreboard.bridge import open_bridge
from scoreboard.config import Config


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
