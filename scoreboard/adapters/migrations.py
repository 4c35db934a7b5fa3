"""The versioned SQL files both stores migrate with, whatever the database runs them.

PostgreSQL's are `scoreboard/migrations/NNNN_what_it_does.sql`, embedded mode's (SQLite) are
`scoreboard/migrations/sqlite/NNNN_what_it_does.sql`; a file's version is `NNNN`, and its checksum
tells an edited file from the one applied.

A migration that existing data can stand in the way of has a check beside it,
`NNNN_what_it_does.check.sql`: a query run first, in the migration's transaction, whose rows
(one text column) each describe a problem. Any row stops the migration before it changes
anything, with every problem listed and the check file's leading comment, which says how to
resolve them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?P<check>\.check)?\.sql")


class MigrationError(RuntimeError):
    """The migration files and the database's record of them disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str
    # The query whose rows stop this migration (the precondition, not part of the checksum).
    check: str | None = None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def refuse(self, problems: list[str]) -> MigrationError:
        """The error that stops this migration: every problem, then what to do about them."""
        advice = [
            line.removeprefix("--").strip()
            for line in itertools.takewhile(
                lambda line: line.startswith("--"), (self.check or "").splitlines()
            )
        ]
        return MigrationError(
            f"migration {self.version}_{self.name} cannot be applied to this database:\n"
            + "".join(f"  {problem}\n" for problem in problems)
            + " ".join(advice)
        )


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files of `directory` (the package's PostgreSQL ones by default), oldest
    first."""
    folder = directory or resources.files("scoreboard") / "migrations"
    migrations: dict[str, Migration] = {}
    checks: dict[str, tuple[str, str]] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"{entry.name}: a migration file is named NNNN_name.sql (its check NNNN_name"
                ".check.sql)"
            )
        version, name, text = match["version"], match["name"], entry.read_text(encoding="utf-8")
        if match["check"]:
            checks[version] = (name, text)
            continue
        if version in migrations:
            raise MigrationError(f"two migration files have version {version}")
        migrations[version] = Migration(version, name, text)
    for version, (name, check) in checks.items():
        migration = migrations.get(version)
        if migration is None or migration.name != name:
            raise MigrationError(f"{version}_{name}.check.sql has no {version}_{name}.sql")
        migrations[version] = dataclasses.replace(migration, check=check)
    return [migrations[version] for version in sorted(migrations)]


def load_sqlite_migrations() -> list[Migration]:
    return load_migrations(resources.files("scoreboard") / "migrations" / "sqlite")
