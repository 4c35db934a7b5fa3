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
from urllib.parse import unquote, urlsplit

from scoreboard.adapters.migrations import load_migrations, load_sqlite_migrations
from scoreboard.adapters.postgres import apply_migrations
from scoreboard.adapters.sqlite import migrate_sqlite
from scoreboard.bridge import open_bridge
from scoreboard.config import Config, ConfigError


async def migrate(database_url: str, application_role: str | None = None) -> list[str]:
    """Bring the PostgreSQL database at `database_url` up to date, and grant `application_role`
    (when given) the application's privileges; returns the versions applied."""
    migrations = load_migrations()
    async with open_bridge() as bridge:
        return await apply_migrations(bridge, database_url, migrations, application_role)


def application_role(config: Config) -> str | None:
    """The role the server connects as, when migrations run as another one (the owner)."""
    if not config.database.owner_url:
        return None
    role = urlsplit(config.database.url).username
    if not role:
        raise ConfigError(
            "database.owner_url is set, so database.url must name the application's role "
            "(postgresql://ROLE@host/db) for `scoreboard migrate` to grant it its privileges"
        )
    owner = urlsplit(config.database.owner_url).username
    return None if unquote(role) == unquote(owner or "") else unquote(role)


async def migrate_configured(config: Config) -> tuple[str, list[str]]:
    """Bring the configured backend's database up to date: what it is, and the versions
    applied."""
    if config.backend_mode == "embedded":
        data_dir = Path(config.embedded.data_dir)
        applied = await migrate_sqlite(data_dir, load_sqlite_migrations())
        return f"SQLite in {data_dir}", applied
    owner_url = config.database.owner_url or config.database.url
    return "PostgreSQL", await migrate(owner_url, application_role(config))
