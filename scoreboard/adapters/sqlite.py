"""SQLite (the standard library's `sqlite3`) behind the `Store`: embedded mode's source of truth.

One connection, used by one worker thread at a time (`trio.to_thread.run_sync` with a
`CapacityLimiter(1)`): each store method is one job run off the trio loop, and each job that
writes is one transaction (`BEGIN IMMEDIATE`; SQLite has a single writer anyway). WAL mode with
`synchronous=FULL`: a committed transaction is on disk, which the in-process broker's outbox
(`embedded_broker.py`, same file) relies on: a 202 survives `kill -9` and a power cut.

A trio cancellation does not interrupt a job: its thread finishes it (committed or rolled back)
and the cancellation is delivered afterwards, so a cancelled call never leaves a transaction open.
Every writer of `action_logs` runs inside the one writer's transaction, so what it reads before
inserting is still true when it inserts (the Postgres store gets this from row locks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from scoreboard import clock
from scoreboard.adapters.commit_plan import (
    STORED_ACTION_COLUMNS,
    Settled,
    StoredAction,
    check_deltas,
    outcome_columns,
    plan_commit,
    unique_keys_of,
)
from scoreboard.adapters.interfaces import (
    BackendUnavailable,
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
from scoreboard.private_files import private_directory, private_file, restrict_if_present
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

DATABASE_FILE = "scoreboard.sqlite3"
# A CLI process (`verify`, `failed replay`) may hold the write lock for a moment.
BUSY_TIMEOUT_MS = 10_000


def database_path(data_dir: Path) -> Path:
    return data_dir / DATABASE_FILE


def private_database(data_dir: Path) -> None:
    """The data directory (0700) and the database file (0600), before SQLite opens it: SQLite
    gives its -wal and -shm files the database file's mode."""
    path = database_path(data_dir)
    private_directory(data_dir)
    private_file(path)
    for companion in ("-wal", "-shm", "-journal"):
        restrict_if_present(path.with_name(path.name + companion))


class SQLiteDatabase:
    """One connection and the limiter that gives it to one thread at a time."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.path = path
        self._connection = connection
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job(connection)` in the database's thread."""
        if self._closed:
            raise BackendUnavailable("sqlite: the database is closed")
        try:
            return await trio.to_thread.run_sync(job, self._connection, limiter=self._limiter)
        except sqlite3.OperationalError as exc:  # locked too long, disk full, I/O error
            raise BackendUnavailable(f"sqlite: {exc}") from exc

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job(connection)` in the database's thread, as one transaction."""
        return await self.read(functools.partial(_in_transaction, job))

    async def close(self) -> None:
        """Wait for the job in flight, then close the connection."""
        with trio.CancelScope(shield=True):
            async with self._limiter:
                self._closed = True
                self._connection.close()


def _in_transaction(job: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection) -> T:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = job(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, fsync on commit."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


@contextlib.asynccontextmanager
async def open_sqlite(
    data_dir: Path, migrations: Sequence[Migration]
) -> AsyncIterator[SQLiteDatabase]:
    """The database file under `data_dir` (created, with the directory, if missing), brought up
    to date with `migrations`; closed on exit."""
    path = database_path(data_dir)

    def open_migrated() -> sqlite3.Connection:
        private_database(data_dir)
        connection = connect(path)
        try:
            apply_migrations(connection, migrations)
        except BaseException:
            connection.close()
            raise
        return connection

    try:
        connection = await trio.to_thread.run_sync(open_migrated)
    except (sqlite3.OperationalError, OSError) as exc:
        raise BackendUnavailable(f"sqlite: {path}: {exc}") from exc
    database = SQLiteDatabase(connection, path)
    try:
        yield database
    finally:
        await database.close()


# ---------------------------------------------------------------------------------------------
# Migrations: the same bookkeeping as the Postgres runner, in SQLite.

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version       TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    checksum      TEXT    NOT NULL,
    applied_at_ms INTEGER NOT NULL
)
"""


def apply_migrations(connection: sqlite3.Connection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction (the write
    lock taken first, so two processes migrating at once take turns). Returns those applied."""
    applied: list[str] = []
    connection.execute(_CREATE_MIGRATIONS_TABLE)
    for migration in migrations:
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute(
                "SELECT checksum FROM schema_migrations WHERE version = ?", (migration.version,)
            ).fetchone()
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"SQLite migration {migration.version}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                connection.execute("ROLLBACK")
                continue
            if migration.check is not None:
                problems = [row[0] for row in connection.execute(migration.check)]
                if problems:
                    raise migration.refuse(problems)
            # executescript() would commit first; each statement runs inside our transaction.
            for statement in _statements(migration.sql):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at_ms)"
                " VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, clock.now_ms()),
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        applied.append(migration.version)
    return applied


def _statements(script: str) -> list[str]:
    """The complete statements of a script (comments and blank lines dropped)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise MigrationError(f"an incomplete SQL statement at the end: {pending.strip()[:60]!r}")
    return statements


async def migrate_sqlite(data_dir: Path, migrations: Sequence[Migration]) -> list[str]:
    """`scoreboard migrate` in embedded mode."""

    def run() -> list[str]:
        private_database(data_dir)
        connection = connect(database_path(data_dir))
        try:
            return apply_migrations(connection, migrations)
        finally:
            connection.close()

    return await trio.to_thread.run_sync(run)


# ---------------------------------------------------------------------------------------------
# The store


class SQLiteStore(Store):
    """The `Store` on SQLite. Build it on a database from `open_sqlite`."""

    def __init__(self, database: SQLiteDatabase, key_encryption: KeyEncryption | None = None):
        self._db = database
        self._key_encryption = key_encryption or KeyEncryption()

    async def ping(self) -> None:
        await self._db.read(lambda connection: connection.execute("SELECT 1").fetchone())

    async def commit_actions(self, decisions: Sequence[Decision]) -> list[CommitResult]:
        if not decisions:
            return []
        check_deltas(decisions)
        return await self._db.write(functools.partial(_commit_actions, storable_all(decisions)))

    async def recent_actions(self, user_id: int, since_ms: int) -> list[RecentAction]:
        return await self._db.read(functools.partial(_recent_actions, user_id, since_ms))

    async def get_action(self, action_id: uuid.UUID) -> ActionRecord | None:
        return await self._db.read(
            functools.partial(_one_action, "action_id = ?", (str(action_id),))
        )

    async def find_action_by_nonce(self, user_id: int, nonce: str) -> ActionRecord | None:
        return await self._db.read(
            functools.partial(_one_action, "user_id = ? AND nonce = ?", (user_id, nonce))
        )

    async def board_entries(self, user_ids: Sequence[int] | None = None) -> list[BoardEntry]:
        chosen = None if user_ids is None else list(user_ids)
        return await self._db.read(functools.partial(_board_entries, chosen))

    async def score_discrepancies(self) -> list[tuple[int, int, int]]:
        return await self._db.read(_score_discrepancies)

    async def fail_action(self, envelope: ActionEnvelope, reason: str) -> None:
        """Stores the reason as the action's `message`; its `error` stays empty. The row holds
        the action as `storable` makes it (as PostgreSQL's does); if even that is refused, the
        row is kept without the action's data (and the reason says so)."""
        try:
            await self._db.write(functools.partial(_fail_action, storable(envelope), reason))
        except sqlite3.DatabaseError as exc:  # not an outage: `read` reports those
            bare = dataclasses.replace(envelope, action_data={}, ip="", user_agent="", headers={})
            why = f"{reason} (its data could not be stored: {exc!r})"
            await self._db.write(functools.partial(_fail_action, storable(bare), why))

    async def record_edge_refusals(self, refusals: Sequence[EdgeRefusal]) -> None:
        kept = [storable_refusal(refusal) for refusal in refusals]
        await self._db.write(functools.partial(_record_edge_refusals, kept))

    async def audit_trail(
        self, user_id: int, *, since_ms: int, before: AuditCursor | None, limit: int
    ) -> list[AuditEntry]:
        return await self._db.read(
            functools.partial(_audit_trail, user_id, since_ms, before, limit)
        )

    async def create_user(self, username: str, email: str, password_hash: str) -> int:
        return await self._db.write(functools.partial(_create_user, username, email, password_hash))

    async def get_user(self, user_id: int) -> UserRecord | None:
        return await self._db.read(functools.partial(_one_user, "id = ?", user_id))

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        return await self._db.read(
            functools.partial(_one_user, "username_normalized = ?", normalized_identity(username))
        )

    async def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        return await self._db.write(
            functools.partial(_replace_password_hash, user_id, old_hash, new_hash)
        )

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Every key, retired ones included, oldest first, decrypted."""
        stored = await self._db.read(_signing_keys)
        return [self._key_encryption.opened(record) for record in stored]

    async def add_signing_key(self, key: SigningKeyRecord) -> None:
        """A key whose `kid` is stored already is left as it is."""
        sealed = self._key_encryption.sealed(key)
        await self._db.write(functools.partial(_add_signing_key, sealed))

    async def reseal_signing_keys(self, *, plain_only: bool) -> list[str]:
        stored = await self._db.read(_signing_keys)
        changes = [
            (record.kid, record.private_pem, resealed)
            for record in stored
            if (resealed := self._key_encryption.resealed(record, plain_only=plain_only))
        ]
        if not changes:
            return []
        return await self._db.write(functools.partial(_replace_private_pems, changes))

    async def retire_signing_key(self, kid: str, retired_at_ms: int) -> None:
        await self._db.write(
            lambda connection: connection.execute(
                "UPDATE signing_keys SET retired_at_ms = COALESCE(retired_at_ms, ?) WHERE kid = ?",
                (retired_at_ms, kid),
            )
        )

    async def disable_user(self, username: str, revocation_expires_at_ms: int) -> list[str] | None:
        return await self._db.write(
            functools.partial(_disable_user, username, revocation_expires_at_ms)
        )

    async def set_admin(
        self, username: str, admin: bool, revocation_expires_at_ms: int
    ) -> list[str] | None:
        return await self._db.write(
            functools.partial(_set_admin, username, admin, revocation_expires_at_ms)
        )

    async def set_suspended(
        self, username: str, suspended: bool, changed_by: str
    ) -> tuple[int, bool] | None:
        return await self._db.write(
            functools.partial(_set_suspended, username, suspended, changed_by)
        )

    async def suspension_changes(self, after_id: int, limit: int) -> list[SuspensionChange]:
        return await self._db.read(functools.partial(_suspension_changes, after_id, limit))

    async def suspension_state(self) -> tuple[int, list[int]]:
        return await self._db.write(_suspension_state)

    async def add_flags(self, flags: Sequence[Flag]) -> list[int]:
        return await self._db.write(functools.partial(_add_flags, list(flags)))

    async def list_flags(self, query: FlagQuery) -> list[FlagRecord]:
        return await self._db.read(functools.partial(_list_flags, query))

    async def clear_flag(self, flag_id: int, cleared_by: str) -> FlagRecord | None:
        return await self._db.write(functools.partial(_clear_flag, flag_id, cleared_by))

    async def cleared_flags(self, since_ms: int) -> list[FlagRecord]:
        return await self._db.read(functools.partial(_cleared_flags, since_ms))

    async def add_client(self, client: OAuthClientRecord) -> None:
        await self._db.write(functools.partial(_add_client, client))

    async def get_client(self, client_id: str) -> OAuthClientRecord | None:
        clients = await self._db.read(
            functools.partial(_clients, "WHERE client_id = ?", (client_id,))
        )
        return clients[0] if clients else None

    async def list_clients(self) -> list[OAuthClientRecord]:
        return await self._db.read(functools.partial(_clients, "ORDER BY client_id", ()))

    async def remove_client(
        self, client_id: str, revocation_expires_at_ms: int
    ) -> list[str] | None:
        return await self._db.write(
            functools.partial(_remove_client, client_id, revocation_expires_at_ms)
        )

    async def save_authorization_code(self, code: AuthorizationCodeRecord) -> None:
        await self._db.write(functools.partial(_save_authorization_code, code))

    async def redeem_authorization_code(
        self, code_hash: str, client_id: str, now_ms: int, revocation_expires_at_ms: int
    ) -> AuthorizationCodeRecord | GrantRevoked | None:
        return await self._db.write(
            functools.partial(
                _redeem_authorization_code, code_hash, client_id, now_ms, revocation_expires_at_ms
            )
        )

    async def add_refresh_token(
        self, grant_id: str, token_hash: str, now_ms: int, expires_at_ms: int
    ) -> bool:
        return await self._db.write(
            functools.partial(_add_refresh_token, grant_id, token_hash, now_ms, expires_at_ms)
        )

    async def rotate_refresh_token(
        self, token_hash: str, client_id: str, now_ms: int, revocation_expires_at_ms: int
    ) -> GrantRecord | GrantRevoked | None:
        return await self._db.write(
            functools.partial(
                _rotate_refresh_token, token_hash, client_id, now_ms, revocation_expires_at_ms
            )
        )

    async def find_refresh_token(self, token_hash: str) -> GrantRecord | None:
        return await self._db.read(functools.partial(_find_refresh_token, token_hash))

    async def revoke(
        self, *, grant_ids: Sequence[str], jtis: Sequence[str], expires_at_ms: int
    ) -> None:
        await self._db.write(functools.partial(_revoke, list(grant_ids), list(jtis), expires_at_ms))

    async def revocations(self, now_ms: int) -> list[Revocation]:
        return await self._db.read(functools.partial(_revocations, now_ms))

    async def purge_expired(self, what: Purgeable, before_ms: int, limit: int) -> Purged:
        return await self._db.write(functools.partial(_purge_expired, what, before_ms, limit))


def _marks(count: int) -> str:
    return ", ".join("?" * count)


# -- commit_actions (planned by `commit_plan`, in one SQLite transaction)

# A failure as a row of `STORED_ACTION_COLUMNS`.
_STORED_FAILURE_COLUMNS = "action_id, user_id, nonce, 'failed', 0, score, NULL, reason, NULL"


def _stored_action(row: sqlite3.Row) -> StoredAction:
    return StoredAction.from_row(dict(row))


_INSERT_ACTION = """
INSERT INTO action_logs (
    action_id, user_id, nonce, action_type, action_data, status, score_delta, new_score, error,
    message, retry_after_s, flags, ip_address, user_agent, request_headers, received_at_ms,
    created_at_ms, processed_at_ms
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), NULLIF(?, ''), ?, ?, ?, ?)
"""

_ADD_TO_SCORE = """
UPDATE users
SET score = score + :delta,
    score_reached_at_ms = CASE WHEN :delta > 0 THEN :now ELSE score_reached_at_ms END,
    last_action_at_ms = MAX(COALESCE(last_action_at_ms, :latest), :latest),
    updated_at_ms = :now
WHERE id = :user_id
"""


def _commit_actions(
    decisions: list[Decision], connection: sqlite3.Connection
) -> list[CommitResult]:
    user_ids = sorted({d.envelope.user_id for d in decisions})
    users = {
        row["id"]: row
        for row in connection.execute(
            "SELECT id, username, score, score_reached_at_ms,"
            " suspended_at_ms IS NOT NULL AS suspended FROM users"
            f" WHERE id IN ({_marks(len(user_ids))})",
            user_ids,
        )
    }
    if missing := set(user_ids) - users.keys():
        raise UnknownUser(missing)
    # An action may have a failure and the row that settled it later: both are kept.
    stored: dict[tuple[str, str], sqlite3.Row] = {}
    for decision in decisions:
        envelope = decision.envelope
        for row in connection.execute(
            f"SELECT {STORED_ACTION_COLUMNS} FROM action_logs"
            " WHERE action_id = ? OR (user_id = ? AND nonce = ?)"
            f" UNION ALL SELECT {_STORED_FAILURE_COLUMNS} FROM action_failures"
            " WHERE action_id = ? OR (user_id = ? AND nonce = ?)",
            (str(envelope.action_id), envelope.user_id, envelope.nonce) * 2,
        ):
            stored[row["action_id"], row["status"]] = row
    used = [
        key
        for key in unique_keys_of(decisions)
        if connection.execute(
            "SELECT 1 FROM action_unique_keys"
            " WHERE user_id = ? AND action_type = ? AND unique_key = ?",
            key,
        ).fetchone()
    ]
    plan = plan_commit(
        decisions,
        {user_id: row["score"] for user_id, row in users.items()},
        [_stored_action(row) for row in stored.values()],
        used,
        suspended={user_id for user_id, row in users.items() if row["suspended"]},
    )
    reached_at = {user_id: row["score_reached_at_ms"] for user_id, row in users.items()}
    now = clock.now_ms()
    connection.executemany(
        _INSERT_ACTION,
        [
            (
                str(d.envelope.action_id),
                d.envelope.user_id,
                d.envelope.nonce,
                *_row_values(d, s),
                now,
                now,
            )
            for d, s in [*plan.new, *plan.superseding]
        ],
    )
    connection.executemany(
        "INSERT INTO action_unique_keys (user_id, action_type, unique_key, action_id)"
        " VALUES (?, ?, ?, ?)",
        [(k.user_id, k.action_type, k.key, str(k.action_id)) for k in plan.taken_keys],
    )
    changes = plan.score_changes()
    connection.executemany(
        _ADD_TO_SCORE,
        [
            {
                "delta": change.delta,
                "latest": change.last_received_at_ms,
                "now": now,
                "user_id": user_id,
            }
            for user_id, change in changes.items()
        ],
    )
    for user_id, change in changes.items():
        if change.delta > 0:
            reached_at[user_id] = now
    return plan.results({user_id: row["username"] for user_id, row in users.items()}, reached_at)


def _row_values(d: Decision, s: Settled) -> tuple[object, ...]:
    """The columns from action_type to received_at_ms, as `_INSERT_ACTION` lists them."""
    e = d.envelope
    return (
        e.action_type,
        json.dumps(dict(e.action_data)),
        *outcome_columns(s.outcome),
        json.dumps(list(d.flags)),
        e.ip,
        e.user_agent,
        json.dumps(dict(e.headers)),
        e.received_at_ms,
    )


# -- actions

# Not once the action is settled (a failure redelivered after its replay), nor twice.
_FAIL_ACTION = """
INSERT INTO action_failures (
    action_id, user_id, nonce, action_type, action_data, score, reason, ip_address, user_agent,
    request_headers, received_at_ms, failed_at_ms
)
SELECT :action_id, id, :nonce, :action_type, :action_data, score, :reason, NULLIF(:ip, ''),
       NULLIF(:user_agent, ''), :headers, :received_at_ms, :now
FROM users
WHERE id = :user_id AND NOT EXISTS (SELECT 1 FROM action_logs WHERE action_id = :action_id)
ON CONFLICT DO NOTHING
"""


def _fail_action(envelope: ActionEnvelope, reason: str, connection: sqlite3.Connection) -> None:
    now = clock.now_ms()
    connection.execute(
        _FAIL_ACTION,
        {
            "action_id": str(envelope.action_id),
            "user_id": envelope.user_id,
            "nonce": envelope.nonce,
            "action_type": envelope.action_type,
            "action_data": json.dumps(dict(envelope.action_data)),
            "reason": reason,
            "ip": envelope.ip,
            "user_agent": envelope.user_agent,
            "headers": json.dumps(dict(envelope.headers)),
            "received_at_ms": envelope.received_at_ms,
            "now": now,
        },
    )


def _recent_actions(
    user_id: int, since_ms: int, connection: sqlite3.Connection
) -> list[RecentAction]:
    rows = connection.execute(
        "SELECT action_id, nonce, action_type, received_at_ms, status FROM action_logs"
        " WHERE user_id = ? AND received_at_ms >= ? ORDER BY received_at_ms, id",
        (user_id, since_ms),
    )
    return [
        RecentAction(
            uuid.UUID(row["action_id"]),
            row["nonce"],
            row["action_type"],
            row["received_at_ms"],
            row["status"],
        )
        for row in rows
    ]


def _one_action(
    where: str, args: tuple[Any, ...], connection: sqlite3.Connection
) -> ActionRecord | None:
    row = connection.execute(
        "SELECT * FROM ("
        "SELECT action_id, user_id, action_type, nonce, status, score_delta, new_score, error,"
        " message, retry_after_s, received_at_ms, processed_at_ms, 0 AS precedence"
        " FROM action_logs"
        " UNION ALL SELECT action_id, user_id, action_type, nonce, 'failed', 0, score, NULL,"
        " reason, NULL, received_at_ms, failed_at_ms, 1 FROM action_failures"
        f") WHERE {where} ORDER BY precedence LIMIT 1",
        args,
    ).fetchone()
    if row is None:
        return None
    return ActionRecord(
        action_id=uuid.UUID(row["action_id"]),
        user_id=row["user_id"],
        action_type=row["action_type"],
        nonce=row["nonce"],
        outcome=decode_outcome(dict(row)),
        created_at_ms=row["received_at_ms"],
        processed_at_ms=row["processed_at_ms"],
    )


# -- the audit trail

_RECORD_EDGE_REFUSAL = """
INSERT INTO edge_refusals (
    user_id, action_type, nonce, channel, status_code, error, message, ip_address, user_agent,
    request_headers, refused_at_ms
)
VALUES ((SELECT id FROM users WHERE id = ?), ?, ?, ?, ?, ?, ?, NULLIF(?, ''), NULLIF(?, ''), ?, ?)
"""


def _record_edge_refusals(refusals: list[EdgeRefusal], connection: sqlite3.Connection) -> None:
    connection.executemany(
        _RECORD_EDGE_REFUSAL,
        [
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
        ],
    )


# As PostgreSQL's: newest first by (time, source, row id), the cursor's key excluded.
_AUDIT_TRAIL = """
SELECT * FROM (
    SELECT received_at_ms * 1000 AS at_us, 2 AS source, id, action_id, action_type, nonce,
           status AS outcome, score_delta, NULL AS status_code, error, message, NULL AS channel,
           ip_address, user_agent, request_headers
    FROM action_logs WHERE user_id = :user_id AND received_at_ms >= :since
    UNION ALL
    SELECT received_at_ms * 1000, 1, id, action_id, action_type, nonce, 'failed', 0, NULL, NULL,
           reason, NULL, ip_address, user_agent, request_headers
    FROM action_failures WHERE user_id = :user_id AND received_at_ms >= :since
    UNION ALL
    SELECT refused_at_ms * 1000, 0, id, NULL, action_type, nonce, 'refused', 0, status_code,
           error, message, channel, ip_address, user_agent, request_headers
    FROM edge_refusals WHERE user_id = :user_id AND refused_at_ms >= :since
)
WHERE :at_us IS NULL OR (at_us, source, id) < (:at_us, :source, :row_id)
ORDER BY at_us DESC, source DESC, id DESC
LIMIT :limit
"""


def _audit_trail(
    user_id: int,
    since_ms: int,
    before: AuditCursor | None,
    limit: int,
    connection: sqlite3.Connection,
) -> list[AuditEntry]:
    rows = connection.execute(
        _AUDIT_TRAIL,
        {
            "user_id": user_id,
            "since": since_ms,
            "at_us": None if before is None else before.at_us,
            "source": None if before is None else before.source,
            "row_id": None if before is None else before.row_id,
            "limit": limit,
        },
    )
    return [
        AuditEntry(
            cursor=AuditCursor(row["at_us"], row["source"], row["id"]),
            at_ms=row["at_us"] // 1000,
            outcome=row["outcome"],
            action_id=None if row["action_id"] is None else uuid.UUID(row["action_id"]),
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

_BOARD_ORDER = "ORDER BY score DESC, score_reached_at_ms, id"


def _board_entries(user_ids: list[int] | None, connection: sqlite3.Connection) -> list[BoardEntry]:
    # A suspended user is off the board.
    columns = (
        "SELECT id, username, score, score_reached_at_ms FROM users WHERE suspended_at_ms IS NULL"
    )
    if user_ids is None:
        rows = connection.execute(f"{columns} AND score > 0 {_BOARD_ORDER}")
    else:
        rows = connection.execute(
            f"{columns} AND id IN (SELECT value FROM json_each(?)) {_BOARD_ORDER}",
            (json.dumps(user_ids),),
        )
    return [
        BoardEntry(row["id"], row["username"], row["score"], row["score_reached_at_ms"])
        for row in rows
    ]


_SCORE_DISCREPANCIES = """
SELECT u.id, u.score, COALESCE(c.total, 0) AS total
FROM users AS u
LEFT JOIN (
    SELECT user_id, SUM(score_delta) AS total FROM action_logs
    WHERE status = 'completed'
    GROUP BY user_id
) AS c ON c.user_id = u.id
WHERE u.score <> COALESCE(c.total, 0)
ORDER BY u.id
"""


def _score_discrepancies(connection: sqlite3.Connection) -> list[tuple[int, int, int]]:
    return [
        (row["id"], row["score"], row["total"]) for row in connection.execute(_SCORE_DISCREPANCIES)
    ]


# -- users


def _create_user(
    username: str, email: str, password_hash: str, connection: sqlite3.Connection
) -> int:
    now = clock.now_ms()
    try:
        cursor = connection.execute(
            "INSERT INTO users (username, email, password_hash, username_normalized,"
            " email_normalized, score_reached_at_ms, created_at_ms, updated_at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                username,
                email,
                password_hash,
                normalized_identity(username),
                normalized_identity(email),
                now,
                now,
                now,
            ),
        )
    except sqlite3.IntegrityError as exc:
        # SQLite names the column, not the constraint: "UNIQUE constraint failed: users.email",
        # or `users.email_normalized` (the case-sensitive constraints stay, implied).
        if "users.username" in str(exc):
            raise UsernameTaken(username) from None
        if "users.email" in str(exc):
            raise EmailTaken(email) from None
        raise
    user_id = cursor.lastrowid
    assert user_id is not None, "an INSERT sets lastrowid"
    return user_id


def _one_user(where: str, value: object, connection: sqlite3.Connection) -> UserRecord | None:
    row = connection.execute(
        "SELECT id, username, email, password_hash, score, disabled, created_at_ms, admin,"
        f" suspended_at_ms IS NOT NULL AS suspended FROM users WHERE {where}",
        (value,),
    ).fetchone()
    if row is None:
        return None
    return UserRecord(
        user_id=row["id"],
        username=row["username"],
        email=row["email"],
        password_hash=row["password_hash"],
        score=row["score"],
        disabled=bool(row["disabled"]),
        created_at_ms=row["created_at_ms"],
        admin=bool(row["admin"]),
        suspended=bool(row["suspended"]),
    )


# -- signing keys


def _signing_keys(connection: sqlite3.Connection) -> list[SigningKeyRecord]:
    rows = connection.execute(
        "SELECT kid, private_pem, public_jwk, created_at_ms, retired_at_ms FROM signing_keys"
        " ORDER BY created_at_ms, kid"
    )
    return [
        SigningKeyRecord(
            kid=row["kid"],
            private_pem=row["private_pem"],
            public_jwk=json.loads(row["public_jwk"]),
            created_at_ms=row["created_at_ms"],
            retired_at_ms=row["retired_at_ms"],
        )
        for row in rows
    ]


def _add_signing_key(key: SigningKeyRecord, connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO signing_keys (kid, private_pem, public_jwk, created_at_ms, retired_at_ms)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kid) DO NOTHING",
        (
            key.kid,
            key.private_pem,
            json.dumps(dict(key.public_jwk)),
            key.created_at_ms,
            key.retired_at_ms,
        ),
    )


def _replace_private_pems(
    changes: Sequence[tuple[str, str, str]], connection: sqlite3.Connection
) -> list[str]:
    return [
        kid
        for kid, stored, replacement in changes
        if connection.execute(
            "UPDATE signing_keys SET private_pem = ? WHERE kid = ? AND private_pem = ?"
            " RETURNING kid",
            (replacement, kid, stored),
        ).fetchone()
    ]


# -- OAuth (the rules of the Postgres store; the one writer's transaction makes each atomic)


def _clients(
    clause: str, args: tuple[object, ...], connection: sqlite3.Connection
) -> list[OAuthClientRecord]:
    rows = connection.execute(
        "SELECT client_id, client_type, secret_hash, redirect_uris, scopes, name, created_at_ms"
        f" FROM oauth_clients {clause}",
        args,
    )
    return [
        OAuthClientRecord(
            client_id=row["client_id"],
            client_type=row["client_type"],
            secret_hash=row["secret_hash"],
            redirect_uris=tuple(json.loads(row["redirect_uris"])),
            scopes=tuple(json.loads(row["scopes"])),
            name=row["name"],
            created_at_ms=row["created_at_ms"],
        )
        for row in rows
    ]


def _add_client(client: OAuthClientRecord, connection: sqlite3.Connection) -> None:
    try:
        connection.execute(
            "INSERT INTO oauth_clients (client_id, client_type, secret_hash, redirect_uris,"
            " scopes, name, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                client.client_id,
                client.client_type,
                client.secret_hash,
                json.dumps(list(client.redirect_uris)),
                json.dumps(list(client.scopes)),
                client.name,
                client.created_at_ms,
            ),
        )
    except sqlite3.IntegrityError as exc:
        if "oauth_clients.client_id" in str(exc):
            raise ClientExists(client.client_id) from None
        raise


def _grant(row: sqlite3.Row) -> GrantRecord:
    return GrantRecord(row["grant_id"], row["client_id"], row["user_id"], row["scope"])


def _revoke_grants(
    grant_ids: Sequence[str], expires_at_ms: int, connection: sqlite3.Connection
) -> None:
    now = clock.now_ms()
    for grant_id in grant_ids:
        connection.execute(
            "UPDATE oauth_grants SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE grant_id = ?",
            (now, grant_id),
        )
    _deny("grant", grant_ids, expires_at_ms, connection)


def _deny(
    kind: str, values: Sequence[str], expires_at_ms: int, connection: sqlite3.Connection
) -> None:
    connection.executemany(
        "INSERT INTO oauth_revocations (kind, value, expires_at_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (kind, value) DO UPDATE"
        " SET expires_at_ms = MAX(expires_at_ms, excluded.expires_at_ms)",
        [(kind, value, expires_at_ms) for value in values],
    )


def _active_grants(column: str, value: object, connection: sqlite3.Connection) -> list[str]:
    return [
        row["grant_id"]
        for row in connection.execute(
            f"SELECT grant_id FROM oauth_grants WHERE {column} = ? AND revoked_at_ms IS NULL",
            (value,),
        )
    ]


def _remove_client(
    client_id: str, expires_at_ms: int, connection: sqlite3.Connection
) -> list[str] | None:
    deleted = connection.execute("DELETE FROM oauth_clients WHERE client_id = ?", (client_id,))
    if deleted.rowcount == 0:
        return None
    grant_ids = _active_grants("client_id", client_id, connection)
    _revoke_grants(grant_ids, expires_at_ms, connection)
    return grant_ids


def _replace_password_hash(
    user_id: int, old_hash: str, new_hash: str, connection: sqlite3.Connection
) -> bool:
    replaced = connection.execute(
        "UPDATE users SET password_hash = ?, updated_at_ms = ? WHERE id = ? AND password_hash = ?",
        (new_hash, clock.now_ms(), user_id, old_hash),
    )
    return replaced.rowcount == 1


def _disable_user(
    username: str, expires_at_ms: int, connection: sqlite3.Connection
) -> list[str] | None:
    row = connection.execute(
        "UPDATE users SET disabled = 1, updated_at_ms = ? WHERE username_normalized = ?"
        " RETURNING id",
        (clock.now_ms(), normalized_identity(username)),
    ).fetchone()
    if row is None:
        return None
    grant_ids = _active_grants("user_id", row["id"], connection)
    _revoke_grants(grant_ids, expires_at_ms, connection)
    return grant_ids


def _set_admin(
    username: str, admin: bool, expires_at_ms: int, connection: sqlite3.Connection
) -> list[str] | None:
    row = connection.execute(
        "UPDATE users SET admin = ?, updated_at_ms = ? WHERE username_normalized = ? RETURNING id",
        (int(admin), clock.now_ms(), normalized_identity(username)),
    ).fetchone()
    if row is None:
        return None
    if admin:
        return []
    grant_ids = [
        grant["grant_id"]
        for grant in connection.execute(
            "SELECT grant_id FROM oauth_grants WHERE user_id = ? AND revoked_at_ms IS NULL"
            " AND ' ' || scope || ' ' LIKE '% admin %'",
            (row["id"],),
        )
    ]
    _revoke_grants(grant_ids, expires_at_ms, connection)
    return grant_ids


def _set_suspended(
    username: str, suspended: bool, changed_by: str, connection: sqlite3.Connection
) -> tuple[int, bool] | None:
    row = connection.execute(
        "SELECT id, suspended_at_ms IS NOT NULL AS suspended FROM users"
        " WHERE username_normalized = ?",
        (normalized_identity(username),),
    ).fetchone()
    if row is None:
        return None
    if bool(row["suspended"]) == suspended:
        return row["id"], False
    now = clock.now_ms()
    connection.execute(
        "UPDATE users SET suspended_at_ms = ?, updated_at_ms = ? WHERE id = ?",
        (now if suspended else None, now, row["id"]),
    )
    connection.execute(
        "INSERT INTO user_suspensions (user_id, suspended, changed_by, changed_at_ms)"
        " VALUES (?, ?, ?, ?)",
        (row["id"], int(suspended), changed_by, now),
    )
    return row["id"], True


def _suspension_changes(
    after_id: int, limit: int, connection: sqlite3.Connection
) -> list[SuspensionChange]:
    rows = connection.execute(
        "SELECT id, user_id, suspended FROM user_suspensions WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    )
    return [SuspensionChange(row["id"], row["user_id"], bool(row["suspended"])) for row in rows]


def _suspension_state(connection: sqlite3.Connection) -> tuple[int, list[int]]:
    last = connection.execute("SELECT COALESCE(max(id), 0) FROM user_suspensions").fetchone()[0]
    rows = connection.execute(
        "SELECT id FROM users WHERE suspended_at_ms IS NOT NULL ORDER BY id"
    ).fetchall()
    return int(last), [row["id"] for row in rows]


_FLAG_COLUMNS = (
    "id, kind, user_id, address, window_start_ms, window_end_ms, raised_at_ms, evidence,"
    " cleared_at_ms, cleared_by"
)


def _flag_record(row: sqlite3.Row) -> FlagRecord:
    return FlagRecord(
        flag_id=row["id"],
        flag=Flag(
            user_id=row["user_id"],
            address=row["address"],
            window_start_ms=row["window_start_ms"],
            window_end_ms=row["window_end_ms"],
            raised_at_ms=row["raised_at_ms"],
            evidence=evidence_from_json(row["kind"], json.loads(row["evidence"])),
        ),
        cleared_at_ms=row["cleared_at_ms"],
        cleared_by=row["cleared_by"],
    )


def _add_flags(flags: list[Flag], connection: sqlite3.Connection) -> list[int]:
    ids: list[int] = []
    for flag in flags:
        cursor = connection.execute(
            "INSERT INTO behaviour_flags (kind, subject, user_id, address, window_start_ms,"
            " window_end_ms, raised_at_ms, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                flag.kind,
                flag.subject,
                flag.user_id,
                flag.address,
                flag.window_start_ms,
                flag.window_end_ms,
                flag.raised_at_ms,
                json.dumps(evidence_as_json(flag.evidence)),
            ),
        )
        assert cursor.lastrowid is not None, "an INSERT sets lastrowid"
        ids.append(cursor.lastrowid)
    return ids


def _list_flags(query: FlagQuery, connection: sqlite3.Connection) -> list[FlagRecord]:
    conditions: list[str] = []
    args: list[Any] = []
    for sql, value in (
        ("user_id = ?", query.user_id),
        ("raised_at_ms >= ?", query.since_ms),
        ("kind = ?", query.kind),
        ("id < ?", query.before_id),
    ):
        if value is not None:
            conditions.append(sql)
            args.append(value)
    if query.standing_only:
        conditions.append("cleared_at_ms IS NULL")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = connection.execute(
        f"SELECT {_FLAG_COLUMNS} FROM behaviour_flags {where} ORDER BY id DESC LIMIT ?",
        (*args, query.limit),
    )
    return [_flag_record(row) for row in rows]


def _clear_flag(flag_id: int, cleared_by: str, connection: sqlite3.Connection) -> FlagRecord | None:
    connection.execute(
        "UPDATE behaviour_flags SET cleared_at_ms = ?, cleared_by = ?"
        " WHERE id = ? AND cleared_at_ms IS NULL",
        (clock.now_ms(), cleared_by, flag_id),
    )
    row = connection.execute(
        f"SELECT {_FLAG_COLUMNS} FROM behaviour_flags WHERE id = ?", (flag_id,)
    ).fetchone()
    return None if row is None else _flag_record(row)


def _cleared_flags(since_ms: int, connection: sqlite3.Connection) -> list[FlagRecord]:
    rows = connection.execute(
        f"SELECT {_FLAG_COLUMNS} FROM behaviour_flags WHERE cleared_at_ms >= ?"
        " ORDER BY cleared_at_ms",
        (since_ms,),
    )
    return [_flag_record(row) for row in rows]


def _save_authorization_code(code: AuthorizationCodeRecord, connection: sqlite3.Connection) -> None:
    grant = code.grant
    connection.execute(
        "INSERT INTO oauth_grants (grant_id, client_id, user_id, scope, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (grant.grant_id, grant.client_id, grant.user_id, grant.scope, clock.now_ms()),
    )
    connection.execute(
        "INSERT INTO oauth_codes (code_hash, grant_id, redirect_uri, code_challenge,"
        " code_challenge_method, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
        (
            code.code_hash,
            grant.grant_id,
            code.redirect_uri,
            code.code_challenge,
            code.code_challenge_method,
            code.expires_at_ms,
        ),
    )


def _redeem_authorization_code(
    code_hash: str, client_id: str, now: int, expires_at_ms: int, connection: sqlite3.Connection
) -> AuthorizationCodeRecord | GrantRevoked | None:
    row = connection.execute(
        "SELECT c.code_hash, c.redirect_uri, c.code_challenge, c.code_challenge_method,"
        " c.expires_at_ms, c.consumed_at_ms, g.grant_id, g.client_id, g.user_id, g.scope,"
        " g.revoked_at_ms"
        " FROM oauth_codes AS c JOIN oauth_grants AS g ON g.grant_id = c.grant_id"
        " WHERE c.code_hash = ? AND g.client_id = ?",
        (code_hash, client_id),
    ).fetchone()
    if row is None:
        return None
    if row["consumed_at_ms"] is not None:
        if row["revoked_at_ms"] is not None:
            return None
        _revoke_grants([row["grant_id"]], expires_at_ms, connection)
        return GrantRevoked(row["grant_id"])
    if row["expires_at_ms"] <= now or row["revoked_at_ms"] is not None:
        return None
    connection.execute(
        "UPDATE oauth_codes SET consumed_at_ms = ? WHERE code_hash = ?", (now, code_hash)
    )
    return AuthorizationCodeRecord(
        code_hash=row["code_hash"],
        grant=_grant(row),
        redirect_uri=row["redirect_uri"],
        code_challenge=row["code_challenge"],
        code_challenge_method=row["code_challenge_method"],
        expires_at_ms=row["expires_at_ms"],
    )


def _add_refresh_token(
    grant_id: str, token_hash: str, now: int, expires_at_ms: int, connection: sqlite3.Connection
) -> bool:
    cursor = connection.execute(
        "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, created_at_ms, expires_at_ms)"
        " SELECT ?, grant_id, ?, ? FROM oauth_grants WHERE grant_id = ? AND revoked_at_ms IS NULL",
        (token_hash, now, expires_at_ms, grant_id),
    )
    return cursor.rowcount == 1


def _rotate_refresh_token(
    token_hash: str, client_id: str, now: int, expires_at_ms: int, connection: sqlite3.Connection
) -> GrantRecord | GrantRevoked | None:
    row = connection.execute(
        "SELECT t.expires_at_ms, t.rotated_at_ms, g.grant_id, g.client_id, g.user_id, g.scope,"
        " g.revoked_at_ms"
        " FROM oauth_refresh_tokens AS t JOIN oauth_grants AS g ON g.grant_id = t.grant_id"
        " WHERE t.token_hash = ? AND g.client_id = ?",
        (token_hash, client_id),
    ).fetchone()
    if row is None or row["revoked_at_ms"] is not None:
        return None
    if row["rotated_at_ms"] is not None:
        _revoke_grants([row["grant_id"]], expires_at_ms, connection)
        return GrantRevoked(row["grant_id"])
    if row["expires_at_ms"] <= now:
        return None
    connection.execute(
        "UPDATE oauth_refresh_tokens SET rotated_at_ms = ? WHERE token_hash = ?", (now, token_hash)
    )
    return _grant(row)


def _find_refresh_token(token_hash: str, connection: sqlite3.Connection) -> GrantRecord | None:
    row = connection.execute(
        "SELECT g.grant_id, g.client_id, g.user_id, g.scope FROM oauth_refresh_tokens AS t"
        " JOIN oauth_grants AS g ON g.grant_id = t.grant_id WHERE t.token_hash = ?",
        (token_hash,),
    ).fetchone()
    return None if row is None else _grant(row)


def _revoke(
    grant_ids: list[str], jtis: list[str], expires_at_ms: int, connection: sqlite3.Connection
) -> None:
    _revoke_grants(grant_ids, expires_at_ms, connection)
    _deny("jti", jtis, expires_at_ms, connection)


def _revocations(now: int, connection: sqlite3.Connection) -> list[Revocation]:
    return [
        Revocation(row["kind"], row["value"], row["expires_at_ms"])
        for row in connection.execute(
            "SELECT kind, value, expires_at_ms FROM oauth_revocations WHERE expires_at_ms > ?",
            (now,),
        )
    ]


# The janitor's batches, oldest expired first: (table, the grant its rows return). Codes and
# refresh tokens return their grant, which goes too once it has neither left.
_PURGE = {
    "codes": ("oauth_codes", "grant_id"),
    "refresh_tokens": ("oauth_refresh_tokens", "grant_id"),
    "revocations": ("oauth_revocations", "NULL"),
}


def _purge_expired(what: str, before_ms: int, limit: int, connection: sqlite3.Connection) -> Purged:
    table, grant = _PURGE[what]
    rows = connection.execute(
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
        f" WHERE expires_at_ms < ? ORDER BY expires_at_ms LIMIT ?) RETURNING {grant} AS grant_id",
        (before_ms, limit),
    ).fetchall()
    grant_ids = sorted({row["grant_id"] for row in rows if row["grant_id"] is not None})
    grants = 0
    if grant_ids:
        grants = connection.execute(
            f"DELETE FROM oauth_grants AS g WHERE g.grant_id IN ({_marks(len(grant_ids))})"
            " AND NOT EXISTS (SELECT 1 FROM oauth_codes AS c WHERE c.grant_id = g.grant_id)"
            " AND NOT EXISTS"
            " (SELECT 1 FROM oauth_refresh_tokens AS t WHERE t.grant_id = g.grant_id)",
            grant_ids,
        ).rowcount
    return Purged(len(rows), grants)
