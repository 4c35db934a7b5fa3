"""The versioned SQL files both stores migrate with, whatever the database runs them.

PostgreSQL's are `scoreboard/migrations/NNNN_what_it_does.sql`, embedded mode's (SQLite) are
`scoreboard/migrations/sqlite/NNNN_what_it_does.sql`; a file's version is `NNNN`, and its checksum
tells an edited file from the one applied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


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
