"""PostgreSQL (asyncpg) behind the asyncio bridge: the `Store`, and the migration runner's SQL.

Every public method crosses the bridge once. The asyncio side of each is one coroutine below
(`_commit_actions`, `_get_user`, …) that acquires a connection, runs its statements, in a
transaction where it writes, and releases the connection before it returns, so a trio
cancellation unwinds all of it on the asyncio loop and never leaves a connection behind.

Every writer to `action_logs` and `action_failures` first locks the user's row (`FOR UPDATE`).
That serialises the writers of one user, so what a transaction reads from them before inserting
is still true when it inserts, and each row's `new_score` can be written once, at insert time:
both are append-only (the application's role may not UPDATE or DELETE them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import trio

from scoreboard.adapters.commit_plan import (
    ScoreChange,
    Settled,
    StoredAction,
    TakenKey,
    check_deltas,
    outcome_columns,
    plan_commit,
    unique_keys_of,
)
from scoreboard.adapters.interfaces import (
    ClientExists,
    EmailTaken,
    Purgeable,
    Purged,
    Store,
    UnknownUser,
    UsernameTaken,
)
from scoreboard.adapters.migrations import Migration, MigrationError
from scoreboard.anticheat.records import (
    Flag,
    FlagQuery,
    FlagRecord,
    evidence_as_json,
    evidence_from_json,
)
from scoreboard.auth.key_encryption import KeyEncryption
from scoreboard.bridge import Bridge, Crossing
from scoreboard.config import DatabaseConfig
from scoreboard.records import (
    ActionEnvelope,
    ActionRecord,
    AuditCursor,
    AuditEntry,
    AuthorizationCodeRecord,
    BoardEntry,
    CommitResult,
    Decision,
    EdgeRefusal,
    GrantRecord,
    GrantRevoked,
    OAuthClientRecord,
    RecentAction,
    Revocation,
    SigningKeyRecord,
    SuspensionChange,
    UserRecord,
    normalized_identity,
)
from scoreboard.storable import storable, storable_all, storable_refusal
from scoreboard.wire import decode_outcome

T = TypeVar("T")
log = logging.getLogger(__name__)

# What the database or the link to it answers instead of an answer about the data: each says
# "try again later", never "this action is bad". asyncpg raises `InternalClientError` ("cannot
# switch to state ...; another operation is in progress") when a connection dies mid-operation.
CONNECTION_ERRORS = (
    OSError,  # TimeoutError included
    asyncpg.PostgresConnectionError,  # 08: connection exception
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,  # 57: admin or crash shutdown, cannot connect now, cancel
    asyncpg.InsufficientResourcesError,  # 53: too many connections, out of memory, disk full
    asyncpg.TransactionRollbackError,  # 40: serialization failure, deadlock; the retry may pass
    asyncpg.PostgresSystemError,  # 58: I/O error in the server
    asyncpg.IdleInTransactionSessionTimeoutError,
)
POOL_CLOSE_TIMEOUT_S = 10.0
MAINTENANCE_DATABASE = "postgres"
# Any bigint of our own: every `scoreboard migrate` takes it, so only one migrates at a time.
MIGRATION_LOCK_KEY = 0x73622D6D69677261

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def _epoch_ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MILLISECOND


def _crossing(bridge: Bridge) -> Crossing:
    """Crossings to PostgreSQL: its transport failures are answered as `BackendUnavailable`."""
    return Crossing(bridge, "PostgreSQL", CONNECTION_ERRORS)


# ---------------------------------------------------------------------------------------------
# Migrations

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(
    bridge: Bridge,
    database_url: str,
    migrations: Sequence[Migration],
    application_role: str | None = None,
) -> list[str]:
    """Create the database if it is missing, then apply the migrations not yet recorded, in order,
    each in its own transaction. Returns the versions applied (empty when already up to date).

    With `application_role`, the role the server connects as (not the one migrating, which owns
    the schema), grant it what the application needs and no more: append-only `action_logs`."""
    return await _crossing(bridge)(_apply_migrations, database_url, migrations, application_role)


async def _apply_migrations(
    database_url: str, migrations: Sequence[Migration], application_role: str | None
) -> list[str]:
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
                if migration.check is not None:
                    problems = [row[0] for row in await conn.fetch(migration.check)]
                    if problems:
                        raise migration.refuse(problems)
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration.version)
        if application_role is not None:
            await conn.execute("SELECT scoreboard_grant_application_role($1)", application_role)
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


# ---------------------------------------------------------------------------------------------
# The store


@contextlib.asynccontextmanager
async def open_postgres_store(
    bridge: Bridge, config: DatabaseConfig, key_encryption: KeyEncryption | None = None
) -> AsyncIterator[PostgresStore]:
    """A connection pool on the bridge loop for the block's duration; closed, shielded, after.
    Signing keys are sealed with `key_encryption` (kept as they are without it)."""
    pool = await _crossing(bridge)(_open_pool, config)
    try:
        yield PostgresStore(bridge, pool, key_encryption or KeyEncryption())
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(_close_pool, pool)


async def _open_pool(config: DatabaseConfig) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        config.url, min_size=config.pool_min, max_size=config.pool_max, reset=_keep_session
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: no use of the pool changes its
    session (no SET, LISTEN, cursor or advisory lock; the migration lock has a connection of its
    own), and asyncpg rolls back a transaction left open before calling this. Its default reset
    query was one more round trip for every commit of the worker."""


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
    except TimeoutError:
        # A cancelled close() has already terminated every connection: nothing is left open.
        log.warning(
            "PostgreSQL pool did not close within %.0f s; terminated it", POOL_CLOSE_TIMEOUT_S
        )


class PostgresStore(Store):
    """The `Store` on PostgreSQL. Build it with `open_postgres_store`."""

    def __init__(self, bridge: Bridge, pool: asyncpg.Pool, key_encryption: KeyEncryption) -> None:
        self._cross = _crossing(bridge)
        self._pool = pool
        self._key_encryption = key_encryption

    async def ping(self) -> None:
        await self._cross(_ping, self._pool)

    async def commit_actions(self, decisions: Sequence[Decision]) -> list[CommitResult]:
        if not decisions:
            return []
        check_deltas(decisions)
        return await self._cross(_commit_actions, self._pool, storable_all(decisions))

    async def recent_actions(self, user_id: int, since_ms: int) -> list[RecentAction]:
        return await self._cross(_recent_actions, self._pool, user_id, since_ms)

    async def get_action(self, action_id: uuid.UUID) -> ActionRecord | None:
        return await self._cross(_get_action, self._pool, action_id)

    async def find_action_by_nonce(self, user_id: int, nonce: str) -> ActionRecord | None:
        return await self._cross(_find_action_by_nonce, self._pool, user_id, nonce)

    async def board_entries(self, user_ids: Sequence[int] | None = None) -> list[BoardEntry]:
        return await self._cross(_board_entries, self._pool, user_ids)

    async def score_discrepancies(self) -> list[tuple[int, int, int]]:
        return await self._cross(_score_discrepancies, self._pool)

    async def fail_action(self, envelope: ActionEnvelope, reason: str) -> None:
        """Stores the reason as the action's `message`; its `error` stays empty. The row holds
        the action as `storable` makes it; if even that is refused, the row is kept without the
        action's data (and the reason says so), so that no failure goes unrecorded."""
        await self._cross(_fail_action, self._pool, storable(envelope), reason)

    async def record_edge_refusals(self, refusals: Sequence[EdgeRefusal]) -> None:
        kept = [storable_refusal(refusal) for refusal in refusals]
        await self._cross(_record_edge_refusals, self._pool, kept)

    async def audit_trail(
        self, user_id: int, *, since_ms: int, before: AuditCursor | None, limit: int
    ) -> list[AuditEntry]:
        return await self._cross(_audit_trail, self._pool, user_id, since_ms, before, limit)

    async def create_user(self, username: str, email: str, password_hash: str) -> int:
        return await self._cross(_create_user, self._pool, username, email, password_hash)

    async def get_user(self, user_id: int) -> UserRecord | None:
        return await self._cross(_get_user, self._pool, user_id)

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        return await self._cross(_get_user_by_username, self._pool, username)

    async def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        return await self._cross(_replace_password_hash, self._pool, user_id, old_hash, new_hash)

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Every key, retired ones included, oldest first, decrypted."""
        stored = await self._cross(_signing_keys, self._pool)
        return [self._key_encryption.opened(record) for record in stored]

    async def add_signing_key(self, key: SigningKeyRecord) -> None:
        """A key whose `kid` is stored already is left as it is: concurrent creators of one
        generation agree on whichever was inserted first."""
        sealed = self._key_encryption.sealed(key)
        await self._cross(_add_signing_key, self._pool, sealed)

    async def reseal_signing_keys(self, *, plain_only: bool) -> list[str]:
        stored = await self._cross(_signing_keys, self._pool)
        changes = [
            (record.kid, record.private_pem, resealed)
            for record in stored
            if (resealed := self._key_encryption.resealed(record, plain_only=plain_only))
        ]
        if not changes:
            return []
        return await self._cross(_replace_private_pems, self._pool, changes)

    async def retire_signing_key(self, kid: str, retired_at_ms: int) -> None:
        await self._cross(_retire_signing_key, self._pool, kid, retired_at_ms)

    async def disable_user(self, username: str, revocation_expires_at_ms: int) -> list[str] | None:
        return await self._cross(_disable_user, self._pool, username, revocation_expires_at_ms)

    async def set_admin(
        self, username: str, admin: bool, revocation_expires_at_ms: int
    ) -> list[str] | None:
        return await self._cross(_set_admin, self._pool, username, admin, revocation_expires_at_ms)

    async def set_suspended(
        self, username: str, suspended: bool, changed_by: str
    ) -> tuple[int, bool] | None:
        return await self._cross(_set_suspended, self._pool, username, suspended, changed_by)

    async def suspension_changes(self, after_id: int, limit: int) -> list[SuspensionChange]:
        return await self._cross(_suspension_changes, self._pool, after_id, limit)

    async def suspension_state(self) -> tuple[int, list[int]]:
        return await self._cross(_suspension_state, self._pool)

    async def add_flags(self, flags: Sequence[Flag]) -> list[int]:
        return await self._cross(_add_flags, self._pool, list(flags))

    async def list_flags(self, query: FlagQuery) -> list[FlagRecord]:
        return await self._cross(_list_flags, self._pool, query)

    async def clear_flag(self, flag_id: int, cleared_by: str) -> FlagRecord | None:
        return await self._cross(_clear_flag, self._pool, flag_id, cleared_by)

    async def cleared_flags(self, since_ms: int) -> list[FlagRecord]:
        return await self._cross(_cleared_flags, self._pool, since_ms)

    async def add_client(self, client: OAuthClientRecord) -> None:
        await self._cross(_add_client, self._pool, client)

    async def get_client(self, client_id: str) -> OAuthClientRecord | None:
        return await self._cross(_get_client, self._pool, client_id)

    async def list_clients(self) -> list[OAuthClientRecord]:
        return await self._cross(_list_clients, self._pool)

    async def remove_client(
        self, client_id: str, revocation_expires_at_ms: int
    ) -> list[str] | None:
        return await self._cross(_remove_client, self._pool, client_id, revocation_expires_at_ms)

    async def save_authorization_code(self, code: AuthorizationCodeRecord) -> None:
        await self._cross(_save_authorization_code, self._pool, code)

    async def redeem_authorization_code(
        self, code_hash: str, client_id: str, now_ms: int, revocation_expires_at_ms: int
    ) -> AuthorizationCodeRecord | GrantRevoked | None:
        return await self._cross(
            _redeem_authorization_code,
            self._pool,
            code_hash,
            client_id,
            now_ms,
            revocation_expires_at_ms,
        )

    async def add_refresh_token(
        self, grant_id: str, token_hash: str, now_ms: int, expires_at_ms: int
    ) -> bool:
        return await self._cross(
            _add_refresh_token,
            self._pool,
            grant_id,
            token_hash,
            now_ms,
            expires_at_ms,
        )

    async def rotate_refresh_token(
        self, token_hash: str, client_id: str, now_ms: int, revocation_expires_at_ms: int
    ) -> GrantRecord | GrantRevoked | None:
        return await self._cross(
            _rotate_refresh_token,
            self._pool,
            token_hash,
            client_id,
            now_ms,
            revocation_expires_at_ms,
        )

    async def find_refresh_token(self, token_hash: str) -> GrantRecord | None:
        return await self._cross(_find_refresh_token, self._pool, token_hash)

    async def revoke(
        self, *, grant_ids: Sequence[str], jtis: Sequence[str], expires_at_ms: int
    ) -> None:
        await self._cross(_revoke, self._pool, list(grant_ids), list(jtis), expires_at_ms)

    async def revocations(self, now_ms: int) -> list[Revocation]:
        return await self._cross(_revocations, self._pool, now_ms)

    async def purge_expired(self, what: Purgeable, before_ms: int, limit: int) -> Purged:
        return await self._cross(_purge_expired, self._pool, what, before_ms, limit)


# The asyncio side: one coroutine per store method, each run on the bridge loop.

_FROM_EPOCH_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"


async def _ping(pool: asyncpg.Pool) -> None:
    await pool.fetchval("SELECT 1")


# -- commit_actions

_LOCK_USERS = """
SELECT id, username, score, score_reached_at, suspended_at IS NOT NULL AS suspended FROM users
WHERE id = ANY($1::bigint[])
ORDER BY id
FOR UPDATE
"""

_STORED_ACTIONS = """
SELECT action_id, user_id, nonce, status, score_delta, new_score, error, message, retry_after_s
FROM action_logs
WHERE action_id = ANY($1::uuid[])
UNION
SELECT l.action_id, l.user_id, l.nonce, l.status, l.score_delta, l.new_score, l.error, l.message,
       l.retry_after_s
FROM action_logs AS l
JOIN unnest($2::bigint[], $3::text[]) AS k (user_id, nonce)
  ON l.user_id = k.user_id AND l.nonce = k.nonce
UNION
SELECT f.action_id, f.user_id, f.nonce, 'failed', 0, f.score, NULL, f.reason, NULL
FROM action_failures AS f
WHERE f.action_id = ANY($1::uuid[])
   OR (f.user_id, f.nonce) IN (SELECT * FROM unnest($2::bigint[], $3::text[]))
"""

# What the batch needs to read under the users' locks, in one round trip: the stored actions
# (`stored`) and the used unique keys of `unique_keys_of` ($4-$6, not `stored`).
_STORED_ACTIONS_AND_USED_KEYS = f"""
SELECT true AS stored, s.*, NULL::text AS action_type, NULL::text AS unique_key
FROM ({_STORED_ACTIONS}) AS s
UNION ALL
SELECT false, NULL, k.user_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, k.action_type,
       k.unique_key
FROM action_unique_keys AS k
JOIN unnest($4::bigint[], $5::text[], $6::text[]) AS b (user_id, action_type, unique_key)
  ON k.user_id = b.user_id AND k.action_type = b.action_type AND k.unique_key = b.unique_key
"""

# The batch's writes in one statement (one round trip): its actions, the unique keys they take,
# the users' scores; it answers how many actions were inserted, and each changed user's
# score_reached_at. The score is reached when this statement runs, after the users' locks were
# granted; the transaction's start (now()) may be long before, while it waited for a lock. The
# keys have no ON CONFLICT: a key taken despite the user lock is a bug, and the batch must not
# commit (nor may an action that was stored meanwhile: the caller compares the count).
_WRITE_BATCH = f"""
WITH inserted AS (
    INSERT INTO action_logs (
        action_id, user_id, nonce, action_type, action_data, status, score_delta, new_score, error,
        message, retry_after_s, flags, ip_address, user_agent, request_headers, received_at,
        processed_at
    )
    SELECT a.action_id, a.user_id, a.nonce, a.action_type, a.action_data::jsonb, a.status,
           a.score_delta, a.new_score, a.error, a.message, a.retry_after_s,
           ARRAY(SELECT jsonb_array_elements_text(a.flags::jsonb)),
           NULLIF(a.ip_address, ''), NULLIF(a.user_agent, ''), a.request_headers::jsonb,
           {_FROM_EPOCH_MS.format("a.received_at_ms")}, now()
    FROM unnest(
        $1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
        $8::bigint[], $9::text[], $10::text[], $11::int[], $12::text[], $13::text[], $14::text[],
        $15::text[], $16::bigint[]
    ) AS a (
        action_id, user_id, nonce, action_type, action_data, status, score_delta, new_score, error,
        message, retry_after_s, flags, ip_address, user_agent, request_headers, received_at_ms
    )
    ON CONFLICT DO NOTHING
    RETURNING action_id
), taken AS (
    INSERT INTO action_unique_keys (user_id, action_type, unique_key, action_id)
    SELECT * FROM unnest($17::bigint[], $18::text[], $19::text[], $20::uuid[])
), scored AS (
    UPDATE users AS u
    SET score = u.score + d.delta,
        score_reached_at = CASE WHEN d.delta > 0 THEN statement_timestamp()
                                ELSE u.score_reached_at END,
        last_action_at = GREATEST(
            u.last_action_at, {_FROM_EPOCH_MS.format("d.last_received_ms")}
        ),
        updated_at = now()
    FROM unnest($21::bigint[], $22::bigint[], $23::bigint[]) AS d (user_id, delta, last_received_ms)
    WHERE u.id = d.user_id
    RETURNING u.id, u.score_reached_at
)
SELECT (SELECT count(*) FROM inserted) AS written,
       (SELECT coalesce(array_agg(id), '{{}}') FROM scored) AS user_ids,
       (SELECT coalesce(array_agg(score_reached_at), '{{}}') FROM scored) AS reached_at
"""


def _stored_actions(rows: Sequence[asyncpg.Record]) -> list[StoredAction]:
    return [StoredAction.from_row(dict(row)) for row in rows]


def _insert_columns(new: Sequence[tuple[Decision, Settled]]) -> list[list[Any]]:
    rows = [
        (
            d.envelope.action_id,
            d.envelope.user_id,
            d.envelope.nonce,
            d.envelope.action_type,
            json.dumps(dict(d.envelope.action_data)),
            *outcome_columns(s.outcome),
            json.dumps(list(d.flags)),
            d.envelope.ip,
            d.envelope.user_agent,
            json.dumps(dict(d.envelope.headers)),
            d.envelope.received_at_ms,
        )
        for d, s in new
    ]
    return [list(column) for column in zip(*rows, strict=True)]


def _score_change_columns(changes: dict[int, ScoreChange]) -> list[list[int]]:
    """The score arrays of `_WRITE_BATCH`: user ids, deltas, latest received_at_ms."""
    return [
        list(changes),
        [change.delta for change in changes.values()],
        [change.last_received_at_ms for change in changes.values()],
    ]


async def _commit_actions(pool: asyncpg.Pool, decisions: Sequence[Decision]) -> list[CommitResult]:
    user_ids = sorted({d.envelope.user_id for d in decisions})
    async with pool.acquire() as conn, conn.transaction():
        users = {row["id"]: row for row in await conn.fetch(_LOCK_USERS, user_ids)}
        if missing := set(user_ids) - users.keys():
            raise UnknownUser(missing)
        keys = unique_keys_of(decisions)
        key_columns = [list(column) for column in zip(*keys, strict=True)] if keys else [[]] * 3
        read = await conn.fetch(
            _STORED_ACTIONS_AND_USED_KEYS,
            [d.envelope.action_id for d in decisions],
            [d.envelope.user_id for d in decisions],
            [d.envelope.nonce for d in decisions],
            *key_columns,
        )
        plan = plan_commit(
            decisions,
            {user_id: row["score"] for user_id, row in users.items()},
            _stored_actions([row for row in read if row["stored"]]),
            [
                (row["user_id"], row["action_type"], row["unique_key"])
                for row in read
                if not row["stored"]
            ],
            suspended={user_id for user_id, row in users.items() if row["suspended"]},
        )
        reached_at = {user_id: row["score_reached_at"] for user_id, row in users.items()}
        settling = [*plan.new, *plan.superseding]
        if settling:
            written = await conn.fetchrow(
                _WRITE_BATCH,
                *_insert_columns(settling),
                *_taken_key_columns(plan.taken_keys),
                *_score_change_columns(plan.score_changes()),
            )
            assert written is not None, "the statement answers one row"
            if written["written"] != len(settling):
                raise RuntimeError(
                    "an action was stored while its user was locked: a writer of action_logs "
                    "skipped the user lock"
                )
            reached_at.update(zip(written["user_ids"], written["reached_at"], strict=True))
    return plan.results(
        {user_id: row["username"] for user_id, row in users.items()},
        {user_id: _epoch_ms(moment) for user_id, moment in reached_at.items()},
    )


def _taken_key_columns(keys: Sequence[TakenKey]) -> list[list[Any]]:
    return [
        [key.user_id for key in keys],
        [key.action_type for key in keys],
        [key.key for key in keys],
        [key.action_id for key in keys],
    ]


# -- actions

# Not once the action is settled (a failure redelivered after its replay), nor twice.
_FAIL_ACTION = f"""
INSERT INTO action_failures (
    action_id, user_id, nonce, action_type, action_data, score, reason, ip_address, user_agent,
    request_headers, received_at
)
SELECT $1, u.id, $3, $4, $5::jsonb, u.score, $6, NULLIF($7, ''), NULLIF($8, ''), $9::jsonb,
       {_FROM_EPOCH_MS.format("$10::bigint")}
FROM (SELECT id, score FROM users WHERE id = $2 FOR UPDATE) AS u
WHERE NOT EXISTS (SELECT FROM action_logs WHERE action_id = $1)
ON CONFLICT DO NOTHING
"""


async def _fail_action(pool: asyncpg.Pool, envelope: ActionEnvelope, reason: str) -> None:
    try:
        await _insert_failure(pool, envelope, reason)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, CONNECTION_ERRORS):
            raise
        log.error("the failure of action %s is recorded without its data", envelope.action_id)
        bare = dataclasses.replace(envelope, action_data={}, ip="", user_agent="", headers={})
        await _insert_failure(pool, bare, f"{reason} (its data could not be stored: {exc!r})")


async def _insert_failure(pool: asyncpg.Pool, envelope: ActionEnvelope, reason: str) -> None:
    await pool.execute(
        _FAIL_ACTION,
        envelope.action_id,
        envelope.user_id,
        envelope.nonce,
        envelope.action_type,
        json.dumps(dict(envelope.action_data)),
        reason,
        envelope.ip,
        envelope.user_agent,
        json.dumps(dict(envelope.headers)),
        envelope.received_at_ms,
    )


_RECENT_ACTIONS = f"""
SELECT action_id, nonce, action_type, received_at, status FROM action_logs
WHERE user_id = $1 AND received_at >= {_FROM_EPOCH_MS.format("$2::bigint")}
ORDER BY received_at, id
"""


async def _recent_actions(pool: asyncpg.Pool, user_id: int, since_ms: int) -> list[RecentAction]:
    rows = await pool.fetch(_RECENT_ACTIONS, user_id, since_ms)
    return [
        RecentAction(
            action_id=row["action_id"],
            nonce=row["nonce"],
            action_type=row["action_type"],
            received_at_ms=_epoch_ms(row["received_at"]),
            status=row["status"],
        )
        for row in rows
    ]


# An action as the API reports it: its settled row, else its failure.
_ACTIONS_AS_REPORTED = """
SELECT * FROM (
    SELECT action_id, user_id, action_type, nonce, status, score_delta, new_score, error, message,
           retry_after_s, received_at, processed_at, 0 AS precedence
    FROM action_logs
    UNION ALL
    SELECT action_id, user_id, action_type, nonce, 'failed', 0, score, NULL, reason, NULL,
           received_at, failed_at, 1
    FROM action_failures
) AS a
"""


def _action_record(row: asyncpg.Record | None) -> ActionRecord | None:
    if row is None:
        return None
    processed_at: dt.datetime | None = row["processed_at"]
    return ActionRecord(
        action_id=row["action_id"],
        user_id=row["user_id"],
        action_type=row["action_type"],
        nonce=row["nonce"],
        outcome=decode_outcome(dict(row)),
        created_at_ms=_epoch_ms(row["received_at"]),
        processed_at_ms=None if processed_at is None else _epoch_ms(processed_at),
    )


async def _get_action(pool: asyncpg.Pool, action_id: uuid.UUID) -> ActionRecord | None:
    row = await pool.fetchrow(
        f"{_ACTIONS_AS_REPORTED} WHERE action_id = $1 ORDER BY precedence LIMIT 1", action_id
    )
    return _action_record(row)


async def _find_action_by_nonce(
    pool: asyncpg.Pool, user_id: int, nonce: str
) -> ActionRecord | None:
    row = await pool.fetchrow(
        f"{_ACTIONS_AS_REPORTED} WHERE user_id = $1 AND nonce = $2 ORDER BY precedence LIMIT 1",
        user_id,
        nonce,
    )
    return _action_record(row)


# -- the audit trail

_RECORD_EDGE_REFUSALS = f"""
INSERT INTO edge_refusals (
    user_id, action_type, nonce, channel, status_code, error, message, ip_address, user_agent,
    request_headers, refused_at
)
SELECT (SELECT id FROM users WHERE id = r.user_id), r.action_type, r.nonce, r.channel,
       r.status_code, r.error, r.message, NULLIF(r.ip, ''), NULLIF(r.user_agent, ''),
       r.headers::jsonb, {_FROM_EPOCH_MS.format("r.refused_at_ms")}
FROM unnest(
    $1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::bigint[]
) AS r (
    user_id, action_type, nonce, channel, status_code, error, message, ip, user_agent, headers,
    refused_at_ms
)
"""


async def _record_edge_refusals(pool: asyncpg.Pool, refusals: Sequence[EdgeRefusal]) -> None:
    rows = [
        (
            r.user_id,
            r.action_type,
            r.nonce,
            r.channel,
            r.status_code,
            r.error,
            r.message,
            r.ip,
            r.user_agent,
            json.dumps(dict(r.headers)),
            r.refused_at_ms,
        )
        for r in refusals
    ]
    if rows:
        await pool.execute(_RECORD_EDGE_REFUSALS, *[list(c) for c in zip(*rows, strict=True)])


_MICROSECONDS = "(extract(epoch FROM {}) * 1000000)::bigint"

# Newest first by (time, source, row id): the worker's rows (2), the failures (1), the edge's
# refusals (0). The cursor is the last entry's key; the next page starts strictly below it.
_AUDIT_TRAIL = f"""
SELECT * FROM (
    SELECT {_MICROSECONDS.format("received_at")} AS at_us, 2 AS source, id, action_id,
           action_type::text, nonce, status AS outcome, score_delta, NULL::int AS status_code,
           error, message, NULL AS channel, ip_address, user_agent, request_headers
    FROM action_logs WHERE user_id = $1 AND received_at >= {_FROM_EPOCH_MS.format("$2::bigint")}
    UNION ALL
    SELECT {_MICROSECONDS.format("received_at")}, 1, id, action_id, action_type::text, nonce,
           'failed', 0, NULL, NULL, reason, NULL, ip_address, user_agent, request_headers
    FROM action_failures
    WHERE user_id = $1 AND received_at >= {_FROM_EPOCH_MS.format("$2::bigint")}
    UNION ALL
    SELECT {_MICROSECONDS.format("refused_at")}, 0, id, NULL, action_type, nonce, 'refused', 0,
           status_code, error, message, channel, ip_address, user_agent, request_headers
    FROM edge_refusals
    WHERE user_id = $1 AND refused_at >= {_FROM_EPOCH_MS.format("$2::bigint")}
) AS trail
WHERE $3::bigint IS NULL OR (at_us, source, id) < ($3::bigint, $4::int, $5::bigint)
ORDER BY at_us DESC, source DESC, id DESC
LIMIT $6
"""


async def _audit_trail(
    pool: asyncpg.Pool, user_id: int, since_ms: int, before: AuditCursor | None, limit: int
) -> list[AuditEntry]:
    cursor = (None, None, None) if before is None else (before.at_us, before.source, before.row_id)
    rows = await pool.fetch(_AUDIT_TRAIL, user_id, since_ms, *cursor, limit)
    return [
        AuditEntry(
            cursor=AuditCursor(row["at_us"], row["source"], row["id"]),
            at_ms=row["at_us"] // 1000,
            outcome=row["outcome"],
            action_id=row["action_id"],
            action_type=row["action_type"],
            nonce=row["nonce"],
            score_delta=row["score_delta"],
            status_code=row["status_code"],
            error=row["error"],
            message=row["message"],
            channel=row["channel"],
            ip=row["ip_address"],
            user_agent=row["user_agent"],
            headers=json.loads(row["request_headers"]),
        )
        for row in rows
    ]


# -- scores

_BOARD_ORDER = "ORDER BY score DESC, score_reached_at, id"


async def _board_entries(pool: asyncpg.Pool, user_ids: Sequence[int] | None) -> list[BoardEntry]:
    # A suspended user is off the board.
    columns = "SELECT id, username, score, score_reached_at FROM users WHERE suspended_at IS NULL"
    if user_ids is None:
        rows = await pool.fetch(f"{columns} AND score > 0 {_BOARD_ORDER}")
    else:
        rows = await pool.fetch(
            f"{columns} AND id = ANY($1::bigint[]) {_BOARD_ORDER}", list(user_ids)
        )
    return [
        BoardEntry(
            user_id=row["id"],
            username=row["username"],
            score=row["score"],
            score_reached_at_ms=_epoch_ms(row["score_reached_at"]),
        )
        for row in rows
    ]


_SCORE_DISCREPANCIES = """
SELECT u.id, u.score, COALESCE(c.total, 0)::bigint AS total
FROM users AS u
LEFT JOIN (
    SELECT user_id, SUM(score_delta) AS total FROM action_logs
    WHERE status = 'completed'
    GROUP BY user_id
) AS c ON c.user_id = u.id
WHERE u.score <> COALESCE(c.total, 0)
ORDER BY u.id
"""


async def _score_discrepancies(pool: asyncpg.Pool) -> list[tuple[int, int, int]]:
    return [
        (row["id"], row["score"], row["total"]) for row in await pool.fetch(_SCORE_DISCREPANCIES)
    ]


# -- users

_USER_COLUMNS = (
    "id, username, email, password_hash, score, disabled, created_at, admin,"
    " suspended_at IS NOT NULL AS suspended"
)


def _user_record(row: asyncpg.Record | None) -> UserRecord | None:
    if row is None:
        return None
    return UserRecord(
        user_id=row["id"],
        username=row["username"],
        email=row["email"],
        password_hash=row["password_hash"],
        score=row["score"],
        disabled=row["disabled"],
        created_at_ms=_epoch_ms(row["created_at"]),
        admin=row["admin"],
        suspended=row["suspended"],
    )


async def _create_user(pool: asyncpg.Pool, username: str, email: str, password_hash: str) -> int:
    try:
        user_id: int = await pool.fetchval(
            "INSERT INTO users (username, email, password_hash, username_normalized,"
            " email_normalized) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            username,
            email,
            password_hash,
            normalized_identity(username),
            normalized_identity(email),
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "users_username_normalized_key":
            raise UsernameTaken(username) from None
        if exc.constraint_name == "users_email_normalized_key":
            raise EmailTaken(email) from None
        raise
    return user_id


async def _get_user(pool: asyncpg.Pool, user_id: int) -> UserRecord | None:
    return _user_record(
        await pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
    )


async def _get_user_by_username(pool: asyncpg.Pool, username: str) -> UserRecord | None:
    row = await pool.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE username_normalized = $1",
        normalized_identity(username),
    )
    return _user_record(row)


async def _replace_password_hash(
    pool: asyncpg.Pool, user_id: int, old_hash: str, new_hash: str
) -> bool:
    # One statement: it replaces the hash it was shown or nothing, however it is interrupted.
    replaced = await pool.fetchval(
        "UPDATE users SET password_hash = $3, updated_at = now()"
        " WHERE id = $1 AND password_hash = $2 RETURNING true",
        user_id,
        old_hash,
        new_hash,
    )
    return replaced is not None


# -- signing keys


async def _signing_keys(pool: asyncpg.Pool) -> list[SigningKeyRecord]:
    rows = await pool.fetch(
        "SELECT kid, private_pem, public_jwk, created_at, retired_at FROM signing_keys"
        " ORDER BY created_at, kid"
    )
    return [
        SigningKeyRecord(
            kid=row["kid"],
            private_pem=row["private_pem"],
            public_jwk=json.loads(row["public_jwk"]),
            created_at_ms=_epoch_ms(row["created_at"]),
            retired_at_ms=None if row["retired_at"] is None else _epoch_ms(row["retired_at"]),
        )
        for row in rows
    ]


_ADD_SIGNING_KEY = f"""
INSERT INTO signing_keys (kid, private_pem, public_jwk, created_at, retired_at)
VALUES ($1, $2, $3::jsonb, {_FROM_EPOCH_MS.format("$4::bigint")},
        {_FROM_EPOCH_MS.format("$5::bigint")})
ON CONFLICT (kid) DO NOTHING
"""


async def _add_signing_key(pool: asyncpg.Pool, key: SigningKeyRecord) -> None:
    await pool.execute(
        _ADD_SIGNING_KEY,
        key.kid,
        key.private_pem,
        json.dumps(dict(key.public_jwk)),
        key.created_at_ms,
        key.retired_at_ms,
    )


async def _replace_private_pems(
    pool: asyncpg.Pool, changes: Sequence[tuple[str, str, str]]
) -> list[str]:
    """Each (kid, stored value, new value) in one transaction; a row another process changed
    since it was read is left to that process. The kids changed here."""
    changed = []
    async with pool.acquire() as conn, conn.transaction():
        for kid, stored, replacement in changes:
            if await conn.fetchval(
                "UPDATE signing_keys SET private_pem = $3 WHERE kid = $1 AND private_pem = $2"
                " RETURNING kid",
                kid,
                stored,
                replacement,
            ):
                changed.append(kid)
    return changed


async def _retire_signing_key(pool: asyncpg.Pool, kid: str, retired_at_ms: int) -> None:
    await pool.execute(
        "UPDATE signing_keys SET retired_at = COALESCE(retired_at, "
        f"{_FROM_EPOCH_MS.format('$2::bigint')}) WHERE kid = $1",
        kid,
        retired_at_ms,
    )


# -- OAuth

_CLIENT_COLUMNS = "client_id, client_type, secret_hash, redirect_uris, scopes, name, created_at"


def _client_record(row: asyncpg.Record) -> OAuthClientRecord:
    return OAuthClientRecord(
        client_id=row["client_id"],
        client_type=row["client_type"],
        secret_hash=row["secret_hash"],
        redirect_uris=tuple(row["redirect_uris"]),
        scopes=tuple(row["scopes"]),
        name=row["name"],
        created_at_ms=_epoch_ms(row["created_at"]),
    )


def _grant_record(row: asyncpg.Record) -> GrantRecord:
    return GrantRecord(row["grant_id"], row["client_id"], row["user_id"], row["scope"])


async def _add_client(pool: asyncpg.Pool, client: OAuthClientRecord) -> None:
    try:
        await pool.execute(
            f"INSERT INTO oauth_clients ({_CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, "
            f"{_FROM_EPOCH_MS.format('$7::bigint')})",
            client.client_id,
            client.client_type,
            client.secret_hash,
            list(client.redirect_uris),
            list(client.scopes),
            client.name,
            client.created_at_ms,
        )
    except asyncpg.UniqueViolationError:
        raise ClientExists(client.client_id) from None


async def _get_client(pool: asyncpg.Pool, client_id: str) -> OAuthClientRecord | None:
    row = await pool.fetchrow(
        f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1", client_id
    )
    return None if row is None else _client_record(row)


async def _list_clients(pool: asyncpg.Pool) -> list[OAuthClientRecord]:
    rows = await pool.fetch(f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id")
    return [_client_record(row) for row in rows]


# Revokes the grants `WHERE {}` picks ($2 is its argument) and deny-lists them until $1 (ms).
_REVOKE_GRANTS = f"""
WITH revoked AS (
    UPDATE oauth_grants SET revoked_at = COALESCE(revoked_at, now())
    WHERE {{}}
    RETURNING grant_id
), listed AS (
    INSERT INTO oauth_revocations (kind, value, expires_at)
    SELECT 'grant', grant_id, {_FROM_EPOCH_MS.format("$1::bigint")} FROM revoked
    ON CONFLICT (kind, value)
    DO UPDATE SET expires_at = GREATEST(oauth_revocations.expires_at, EXCLUDED.expires_at)
)
SELECT grant_id FROM revoked
"""


async def _revoke_grants_where(
    conn: asyncpg.Connection, where: str, argument: Any, expires_at_ms: int
) -> list[str]:
    rows = await conn.fetch(_REVOKE_GRANTS.format(where), expires_at_ms, argument)
    return [row["grant_id"] for row in rows]


async def _remove_client(
    pool: asyncpg.Pool, client_id: str, expires_at_ms: int
) -> list[str] | None:
    async with pool.acquire() as conn, conn.transaction():
        removed = await conn.fetchval(
            "DELETE FROM oauth_clients WHERE client_id = $1 RETURNING client_id", client_id
        )
        if removed is None:
            return None
        return await _revoke_grants_where(
            conn, "client_id = $2 AND revoked_at IS NULL", client_id, expires_at_ms
        )


async def _disable_user(pool: asyncpg.Pool, username: str, expires_at_ms: int) -> list[str] | None:
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE users SET disabled = true, updated_at = now() WHERE username_normalized = $1"
            " RETURNING id",
            normalized_identity(username),
        )
        if user_id is None:
            return None
        return await _revoke_grants_where(
            conn, "user_id = $2 AND revoked_at IS NULL", user_id, expires_at_ms
        )


async def _set_admin(
    pool: asyncpg.Pool, username: str, admin: bool, expires_at_ms: int
) -> list[str] | None:
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE users SET admin = $2, updated_at = now() WHERE username_normalized = $1"
            " RETURNING id",
            normalized_identity(username),
            admin,
        )
        if user_id is None:
            return None
        if admin:
            return []
        return await _revoke_grants_where(
            conn,
            "user_id = $2 AND revoked_at IS NULL AND 'admin' = ANY(string_to_array(scope, ' '))",
            user_id,
            expires_at_ms,
        )


async def _set_suspended(
    pool: asyncpg.Pool, username: str, suspended: bool, changed_by: str
) -> tuple[int, bool] | None:
    async with pool.acquire() as conn, conn.transaction():
        # The user's row lock orders this against the scorer's commits.
        row = await conn.fetchrow(
            "SELECT id, suspended_at IS NOT NULL AS suspended FROM users"
            " WHERE username_normalized = $1 FOR UPDATE",
            normalized_identity(username),
        )
        if row is None:
            return None
        if row["suspended"] == suspended:
            return row["id"], False
        await conn.execute(
            "UPDATE users SET suspended_at = CASE WHEN $2 THEN now() END, updated_at = now()"
            " WHERE id = $1",
            row["id"],
            suspended,
        )
        await conn.execute(
            "INSERT INTO user_suspensions (user_id, suspended, changed_by) VALUES ($1, $2, $3)",
            row["id"],
            suspended,
            changed_by,
        )
        return row["id"], True


async def _suspension_changes(
    pool: asyncpg.Pool, after_id: int, limit: int
) -> list[SuspensionChange]:
    rows = await pool.fetch(
        "SELECT id, user_id, suspended FROM user_suspensions WHERE id > $1 ORDER BY id LIMIT $2",
        after_id,
        limit,
    )
    return [SuspensionChange(row["id"], row["user_id"], row["suspended"]) for row in rows]


async def _suspension_state(pool: asyncpg.Pool) -> tuple[int, list[int]]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        last = await conn.fetchval("SELECT COALESCE(max(id), 0) FROM user_suspensions")
        rows = await conn.fetch("SELECT id FROM users WHERE suspended_at IS NOT NULL ORDER BY id")
    return last, [row["id"] for row in rows]


_FLAG_COLUMNS = (
    "id, kind, user_id, address, window_start, window_end, raised_at, evidence, cleared_at,"
    " cleared_by"
)


def _flag_record(row: asyncpg.Record) -> FlagRecord:
    cleared_at = row["cleared_at"]
    return FlagRecord(
        flag_id=row["id"],
        flag=Flag(
            user_id=row["user_id"],
            address=row["address"],
            window_start_ms=_epoch_ms(row["window_start"]),
            window_end_ms=_epoch_ms(row["window_end"]),
            raised_at_ms=_epoch_ms(row["raised_at"]),
            evidence=evidence_from_json(row["kind"], json.loads(row["evidence"])),
        ),
        cleared_at_ms=None if cleared_at is None else _epoch_ms(cleared_at),
        cleared_by=row["cleared_by"],
    )


async def _add_flags(pool: asyncpg.Pool, flags: list[Flag]) -> list[int]:
    rows = await pool.fetch(
        "INSERT INTO behaviour_flags (kind, subject, user_id, address, window_start, window_end,"
        " raised_at, evidence)"
        f" SELECT f.kind, f.subject, f.user_id, f.address, {_FROM_EPOCH_MS.format('f.ws')},"
        f" {_FROM_EPOCH_MS.format('f.we')}, {_FROM_EPOCH_MS.format('f.ra')}, f.evidence::jsonb"
        " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],"
        " $6::bigint[], $7::bigint[], $8::text[]) WITH ORDINALITY"
        " AS f (kind, subject, user_id, address, ws, we, ra, evidence, n)"
        " ORDER BY f.n RETURNING id",
        [flag.kind for flag in flags],
        [flag.subject for flag in flags],
        [flag.user_id for flag in flags],
        [flag.address for flag in flags],
        [flag.window_start_ms for flag in flags],
        [flag.window_end_ms for flag in flags],
        [flag.raised_at_ms for flag in flags],
        [json.dumps(evidence_as_json(flag.evidence)) for flag in flags],
    )
    return [row["id"] for row in rows]


async def _list_flags(pool: asyncpg.Pool, query: FlagQuery) -> list[FlagRecord]:
    conditions: list[str] = []
    args: list[Any] = []

    def condition(sql: str, value: Any) -> None:
        args.append(value)
        conditions.append(sql.format(f"${len(args)}"))

    if query.user_id is not None:
        condition("user_id = {}", query.user_id)
    if query.since_ms is not None:
        condition(f"raised_at >= {_FROM_EPOCH_MS.format('{}::bigint')}", query.since_ms)
    if query.kind is not None:
        condition("kind = {}", query.kind)
    if query.before_id is not None:
        condition("id < {}", query.before_id)
    if query.standing_only:
        conditions.append("cleared_at IS NULL")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(query.limit)
    rows = await pool.fetch(
        f"SELECT {_FLAG_COLUMNS} FROM behaviour_flags {where} ORDER BY id DESC LIMIT ${len(args)}",
        *args,
    )
    return [_flag_record(row) for row in rows]


async def _clear_flag(pool: asyncpg.Pool, flag_id: int, cleared_by: str) -> FlagRecord | None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE behaviour_flags SET cleared_at = now(), cleared_by = $2"
            " WHERE id = $1 AND cleared_at IS NULL",
            flag_id,
            cleared_by,
        )
        row = await conn.fetchrow(
            f"SELECT {_FLAG_COLUMNS} FROM behaviour_flags WHERE id = $1", flag_id
        )
    return None if row is None else _flag_record(row)


async def _cleared_flags(pool: asyncpg.Pool, since_ms: int) -> list[FlagRecord]:
    rows = await pool.fetch(
        f"SELECT {_FLAG_COLUMNS} FROM behaviour_flags"
        f" WHERE cleared_at >= {_FROM_EPOCH_MS.format('$1::bigint')} ORDER BY cleared_at",
        since_ms,
    )
    return [_flag_record(row) for row in rows]


async def _save_authorization_code(pool: asyncpg.Pool, code: AuthorizationCodeRecord) -> None:
    grant = code.grant
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO oauth_grants (grant_id, client_id, user_id, scope)"
            " VALUES ($1, $2, $3, $4)",
            grant.grant_id,
            grant.client_id,
            grant.user_id,
            grant.scope,
        )
        await conn.execute(
            "INSERT INTO oauth_codes (code_hash, grant_id, redirect_uri, code_challenge,"
            " code_challenge_method, expires_at) VALUES ($1, $2, $3, $4, $5, "
            f"{_FROM_EPOCH_MS.format('$6::bigint')})",
            code.code_hash,
            grant.grant_id,
            code.redirect_uri,
            code.code_challenge,
            code.code_challenge_method,
            code.expires_at_ms,
        )


# Row locks make this the atomic step: of two concurrent redemptions the second waits for the
# first, then finds the code consumed.
_CONSUME_CODE = f"""
UPDATE oauth_codes AS c SET consumed_at = {_FROM_EPOCH_MS.format("$3::bigint")}
FROM oauth_grants AS g
WHERE c.code_hash = $1 AND g.grant_id = c.grant_id AND g.client_id = $2
  AND c.consumed_at IS NULL AND g.revoked_at IS NULL
  AND c.expires_at > {_FROM_EPOCH_MS.format("$3::bigint")}
RETURNING c.code_hash, c.redirect_uri, c.code_challenge, c.code_challenge_method, c.expires_at,
          g.grant_id, g.client_id, g.user_id, g.scope
"""

_CONSUMED_CODE_GRANT = """
SELECT g.grant_id FROM oauth_codes AS c JOIN oauth_grants AS g ON g.grant_id = c.grant_id
WHERE c.code_hash = $1 AND g.client_id = $2 AND c.consumed_at IS NOT NULL
"""


async def _redeem_authorization_code(
    pool: asyncpg.Pool, code_hash: str, client_id: str, now_ms: int, expires_at_ms: int
) -> AuthorizationCodeRecord | GrantRevoked | None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_CONSUME_CODE, code_hash, client_id, now_ms)
        if row is not None:
            return AuthorizationCodeRecord(
                code_hash=row["code_hash"],
                grant=_grant_record(row),
                redirect_uri=row["redirect_uri"],
                code_challenge=row["code_challenge"],
                code_challenge_method=row["code_challenge_method"],
                expires_at_ms=_epoch_ms(row["expires_at"]),
            )
        grant_id = await conn.fetchval(_CONSUMED_CODE_GRANT, code_hash, client_id)
        if grant_id is None:
            return None
        await _revoke_grants_where(conn, "grant_id = $2", grant_id, expires_at_ms)
        return GrantRevoked(grant_id)


async def _add_refresh_token(
    pool: asyncpg.Pool, grant_id: str, token_hash: str, now_ms: int, expires_at_ms: int
) -> bool:
    try:
        status = await pool.execute(
            "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, created_at, expires_at)"
            f" SELECT $1, grant_id, {_FROM_EPOCH_MS.format('$3::bigint')},"
            f" {_FROM_EPOCH_MS.format('$4::bigint')}"
            " FROM oauth_grants WHERE grant_id = $2 AND revoked_at IS NULL",
            token_hash,
            grant_id,
            now_ms,
            expires_at_ms,
        )
    except asyncpg.ForeignKeyViolationError:
        return False  # the janitor removed the grant meanwhile
    return bool(status == "INSERT 0 1")


_ROTATE_REFRESH_TOKEN = f"""
UPDATE oauth_refresh_tokens AS t SET rotated_at = {_FROM_EPOCH_MS.format("$3::bigint")}
FROM oauth_grants AS g
WHERE t.token_hash = $1 AND g.grant_id = t.grant_id AND g.client_id = $2
  AND t.rotated_at IS NULL AND g.revoked_at IS NULL
  AND t.expires_at > {_FROM_EPOCH_MS.format("$3::bigint")}
RETURNING g.grant_id, g.client_id, g.user_id, g.scope
"""

_ROTATED_TOKEN_GRANT = """
SELECT g.grant_id FROM oauth_refresh_tokens AS t JOIN oauth_grants AS g ON g.grant_id = t.grant_id
WHERE t.token_hash = $1 AND g.client_id = $2 AND t.rotated_at IS NOT NULL
  AND g.revoked_at IS NULL
"""


async def _rotate_refresh_token(
    pool: asyncpg.Pool, token_hash: str, client_id: str, now_ms: int, expires_at_ms: int
) -> GrantRecord | GrantRevoked | None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_ROTATE_REFRESH_TOKEN, token_hash, client_id, now_ms)
        if row is not None:
            return _grant_record(row)
        grant_id = await conn.fetchval(_ROTATED_TOKEN_GRANT, token_hash, client_id)
        if grant_id is None:
            return None
        await _revoke_grants_where(conn, "grant_id = $2", grant_id, expires_at_ms)
        return GrantRevoked(grant_id)


async def _find_refresh_token(pool: asyncpg.Pool, token_hash: str) -> GrantRecord | None:
    row = await pool.fetchrow(
        "SELECT g.grant_id, g.client_id, g.user_id, g.scope FROM oauth_refresh_tokens AS t"
        " JOIN oauth_grants AS g ON g.grant_id = t.grant_id WHERE t.token_hash = $1",
        token_hash,
    )
    return None if row is None else _grant_record(row)


async def _revoke(
    pool: asyncpg.Pool, grant_ids: list[str], jtis: list[str], expires_at_ms: int
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if grant_ids:
            await _revoke_grants_where(conn, "grant_id = ANY($2::text[])", grant_ids, expires_at_ms)
        if jtis:
            await conn.execute(
                "INSERT INTO oauth_revocations (kind, value, expires_at)"
                f" SELECT 'jti', jti, {_FROM_EPOCH_MS.format('$1::bigint')}"
                " FROM unnest($2::text[]) AS jti"
                " ON CONFLICT (kind, value) DO UPDATE"
                " SET expires_at = GREATEST(oauth_revocations.expires_at, EXCLUDED.expires_at)",
                expires_at_ms,
                jtis,
            )


async def _revocations(pool: asyncpg.Pool, now_ms: int) -> list[Revocation]:
    rows = await pool.fetch(
        "SELECT kind, value, expires_at FROM oauth_revocations"
        f" WHERE expires_at > {_FROM_EPOCH_MS.format('$1::bigint')}",
        now_ms,
    )
    return [Revocation(row["kind"], row["value"], _epoch_ms(row["expires_at"])) for row in rows]


# The janitor's batches: the oldest expired rows first, skipping rows another process's janitor
# holds. Codes and refresh tokens return their grant, which goes too once it has neither left.
_PURGE = {
    "codes": """
        WITH doomed AS (
            SELECT code_hash FROM oauth_codes WHERE expires_at < {before}
            ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        DELETE FROM oauth_codes AS c USING doomed WHERE c.code_hash = doomed.code_hash
        RETURNING c.grant_id
    """,
    "refresh_tokens": """
        WITH doomed AS (
            SELECT token_hash FROM oauth_refresh_tokens WHERE expires_at < {before}
            ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        DELETE FROM oauth_refresh_tokens AS t USING doomed WHERE t.token_hash = doomed.token_hash
        RETURNING t.grant_id
    """,
    "revocations": """
        WITH doomed AS (
            SELECT kind, value FROM oauth_revocations WHERE expires_at < {before}
            ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        DELETE FROM oauth_revocations AS r USING doomed
        WHERE r.kind = doomed.kind AND r.value = doomed.value
        RETURNING NULL AS grant_id
    """,
}

_LOCK_GRANTS = (
    "SELECT grant_id FROM oauth_grants WHERE grant_id = ANY($1::text[]) ORDER BY grant_id"
    " FOR UPDATE"
)
_PURGE_EMPTY_GRANTS = """
DELETE FROM oauth_grants AS g WHERE g.grant_id = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM oauth_codes AS c WHERE c.grant_id = g.grant_id)
  AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tokens AS t WHERE t.grant_id = g.grant_id)
"""


async def _purge_expired(pool: asyncpg.Pool, what: str, before_ms: int, limit: int) -> Purged:
    statement = _PURGE[what].format(before=_FROM_EPOCH_MS.format("$1::bigint"))
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(statement, before_ms, limit)
        grant_ids = sorted({row["grant_id"] for row in rows if row["grant_id"] is not None})
        if not grant_ids:
            return Purged(len(rows))
        # Locked first, so that a refresh token added meanwhile either committed before the
        # check below (which then keeps its grant) or waits and finds the grant gone.
        await conn.execute(_LOCK_GRANTS, grant_ids)
        status = await conn.execute(_PURGE_EMPTY_GRANTS, grant_ids)
    return Purged(len(rows), int(status.rsplit(" ", 1)[1]))
