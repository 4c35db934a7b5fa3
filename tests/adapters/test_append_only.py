"""`action_logs` and `action_failures` are append-only for the application's role on the real
PostgreSQL: `scoreboard migrate`, run as the schema's owner, grants the role of `database.url`
INSERT and SELECT on them and nothing more, and everything the store writes still goes through
as that role."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scoreboard.adapters.migrations import load_migrations
from scoreboard.adapters.postgres import PostgresStore, apply_migrations, open_postgres_store
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config, ConfigError, load_config
from scoreboard.migrate import application_role, migrate, migrate_configured
from tests.adapters.test_postgres import completed, envelope, new_user, pool_config, rejected, sql
from tests.conftest import PG_ADMIN_URL, RUN_ID, _pg_admin, _with_database

APPEND_ONLY = (
    "action_logs",
    "action_failures",
    "action_unique_keys",
    "user_suspensions",
    "edge_refusals",
)


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{role}@{host}:{parts.port or 5432}"))


@pytest.fixture
def app_role(database_url: str) -> Iterator[str]:
    """A login role of this test's own, dropped afterwards with what it was granted."""
    role = f"sbtest_app_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE ROLE "{role}" LOGIN')
    yield role

    async def revoke() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP OWNED BY "{role}"')
        finally:
            await conn.close()

    asyncio.run(revoke())
    _pg_admin(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A database of this test's own, created by the first migration."""
    name = f"sbtest_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    yield _with_database(PG_ADMIN_URL, name)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    async with open_bridge() as bridge:
        yield bridge


@pytest.fixture
async def app_store(
    bridge: Bridge, config: Config, database_url: str, app_role: str
) -> AsyncIterator[PostgresStore]:
    """The store as the server runs it: connected as the application's role, after the owner's
    `scoreboard migrate`."""
    split = config.replace(
        database={"url": as_role(database_url, app_role), "owner_url": database_url}
    )
    await migrate_configured(split)
    async with open_postgres_store(bridge, pool_config(split.database.url)) as store:
        yield store


async def test_the_application_role_may_not_update_or_delete_the_action_log(
    bridge: Bridge, database_url: str, app_role: str, app_store: PostgresStore
) -> None:
    user_id = await new_user(app_store)
    await app_store.commit_actions([completed(envelope(user_id), 10)])
    await app_store.fail_action(envelope(user_id, nonce="poison"), "exhausted 3 attempts")
    app_url = as_role(database_url, app_role)
    for table in APPEND_ONLY:
        for statement in (
            f"UPDATE {table} SET user_id = user_id",
            f"DELETE FROM {table}",
            f"TRUNCATE {table}",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await sql(bridge, app_url, statement)
    # It may read them, and still change what the application changes elsewhere.
    [[count]] = await sql(bridge, app_url, "SELECT count(*) FROM action_logs")
    assert count == 1
    await sql(bridge, app_url, "UPDATE users SET updated_at = now() WHERE id = $1", user_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await sql(bridge, app_url, "DELETE FROM schema_migrations")
    # The owner still can (an operator's repair is a deliberate act under the owner's role).
    [[owned]] = await sql(bridge, database_url, "SELECT count(*) FROM action_failures")
    assert owned == 1


async def test_the_store_records_everything_it_did_before_as_the_application_role(
    app_store: PostgresStore,
) -> None:
    user_id = await new_user(app_store)
    first, refused = await app_store.commit_actions(
        [completed(envelope(user_id), 8), rejected(envelope(user_id))]
    )
    assert (first.outcome.status, refused.outcome.status) == ("completed", "rejected")
    poison = envelope(user_id, nonce="poison-1")
    await app_store.fail_action(poison, "exhausted 3 attempts")
    await app_store.fail_action(poison, "again")
    record = await app_store.get_action(poison.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.message, record.outcome.new_score) == (
        "failed",
        "exhausted 3 attempts",
        8,
    )
    # Replayed once its cause is fixed: a row of its own, scored once; the failure stays.
    [replayed] = await app_store.commit_actions([completed(poison, 5)])
    assert (replayed.outcome.status, replayed.duplicate, replayed.new_score) == (
        "completed",
        False,
        13,
    )
    [again] = await app_store.commit_actions([completed(poison, 5)])
    assert (again.duplicate, again.new_score) == (True, 13)
    await app_store.fail_action(poison, "a late copy of the failure")
    record = await app_store.get_action(poison.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.score_delta) == ("completed", 5)
    assert await app_store.find_action_by_nonce(user_id, "poison-1") == record
    assert await app_store.score_discrepancies() == []
    # A sign-in's upgrade of an old password hash.
    assert await app_store.replace_password_hash(user_id, "argon2-hash", "argon2-hash-2")


async def test_a_failure_settled_later_keeps_both_rows_flagged(
    bridge: Bridge, database_url: str, app_store: PostgresStore
) -> None:
    user_id = await new_user(app_store)
    poison = envelope(user_id)
    await app_store.fail_action(poison, "exhausted 3 attempts")
    await app_store.commit_actions([completed(poison, 5)])
    [failure] = await sql(
        bridge,
        database_url,
        "SELECT reason, score FROM action_failures WHERE action_id = $1",
        poison.action_id,
    )
    assert (failure["reason"], failure["score"]) == ("exhausted 3 attempts", 0)
    [row] = await sql(
        bridge,
        database_url,
        "SELECT status, flags FROM action_logs WHERE action_id = $1",
        poison.action_id,
    )
    assert (row["status"], row["flags"]) == ("completed", ["settled_after_failure"])


async def test_the_grant_refuses_the_role_that_owns_the_schema(database_url: str) -> None:
    owner = urlsplit(database_url).username or "postgres"
    with pytest.raises(asyncpg.RaiseError, match="owns the schema"):
        await migrate(database_url, owner)


def test_an_owner_url_needs_the_application_role_named() -> None:
    base = load_config(environ={})
    assert application_role(base) is None
    named = base.replace(
        database={"url": "postgresql://app@db/sb", "owner_url": "postgresql://owner@db/sb"}
    )
    assert application_role(named) == "app"
    same = named.replace(database={"owner_url": "postgresql://app@db/sb"})
    assert application_role(same) is None
    with pytest.raises(ConfigError, match="name the application's role"):
        application_role(named.replace(database={"url": "postgresql://db/sb"}))


async def test_the_migration_moves_failed_rows_out_of_the_action_log(
    bridge: Bridge, empty_database_url: str
) -> None:
    before = [m for m in load_migrations() if m.version < "0007"]
    await apply_migrations(bridge, empty_database_url, before)
    url = empty_database_url
    [[user_id]] = await sql(
        bridge,
        url,
        "INSERT INTO users (username, email, password_hash, score, username_normalized,"
        " email_normalized) VALUES ('ada', 'ada@example.test', 'h', 10, 'ada',"
        " 'ada@example.test') RETURNING id",
    )
    done, failed = uuid.uuid4(), uuid.uuid4()
    await sql(
        bridge,
        url,
        "INSERT INTO action_logs (action_id, user_id, nonce, action_type, status, score_delta,"
        " new_score, message, received_at, processed_at) VALUES"
        " ($1, $3, 'n1', 'complete_task', 'completed', 10, 10, NULL, now(), now()),"
        " ($2, $3, 'n2', 'complete_task', 'failed', 0, 10, 'exhausted 3 attempts', now(), now())",
        done,
        failed,
        user_id,
    )
    assert await apply_migrations(bridge, url, load_migrations()) == ["0007"]
    logged = await sql(bridge, url, "SELECT action_id FROM action_logs")
    assert [row["action_id"] for row in logged] == [done]
    [failure] = await sql(bridge, url, "SELECT action_id, reason, score FROM action_failures")
    assert tuple(failure) == (failed, "exhausted 3 attempts", 10)
    with pytest.raises(asyncpg.CheckViolationError):
        await sql(
            bridge,
            url,
            "INSERT INTO action_logs (action_id, user_id, nonce, action_type, status,"
            " score_delta, new_score, received_at) VALUES"
            " ($1, $2, 'n3', 'complete_task', 'failed', 0, 10, now())",
            uuid.uuid4(),
            user_id,
        )
