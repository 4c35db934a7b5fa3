"""The SQLite store: the PostgreSQL store's contract tests, run against it, and the SQLite
counterparts of the tests that look inside PostgreSQL."""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.sqlite import SQLiteStore, database_path, open_sqlite
from tests.adapters.test_postgres import (
    RECEIVED_AT_MS,
    completed,
    envelope,
    new_user,
    test_a_failure_is_recorded_once_and_a_later_delivery_settles_it_once,
    test_a_failure_is_recorded_whatever_the_action_holds,
    test_a_negative_delta_is_refused_before_anything_is_written,
    test_a_password_hash_is_replaced_only_while_it_is_the_one_read,
    test_a_replayed_nonce_under_a_new_action_id_is_rejected_and_not_stored,
    test_a_taken_username_or_email_is_refused,
    test_actions_of_unknown_users_raise_and_write_nothing,
    test_an_action_id_twice_in_one_batch_counts_once,
    test_board_entries_rank_equal_scores_by_who_reached_them_first,
    test_committing_the_same_batch_again_moves_no_score,
    test_create_and_read_users,
    test_fail_action_leaves_a_stored_action_alone_and_ignores_unknown_users,
    test_ping,
    test_recent_actions_since_a_time_oldest_first,
    test_rejected_actions_are_stored_with_no_delta_and_their_reason,
    test_score_reached_at_moves_only_when_the_score_does,
    test_signing_keys_oldest_first_and_the_first_insert_of_a_kid_wins,
    test_what_the_store_cannot_keep_is_mended_in_the_row_never_refused,
)

__all__ = [
    "test_a_failure_is_recorded_once_and_a_later_delivery_settles_it_once",
    "test_a_failure_is_recorded_whatever_the_action_holds",
    "test_a_negative_delta_is_refused_before_anything_is_written",
    "test_a_password_hash_is_replaced_only_while_it_is_the_one_read",
    "test_a_replayed_nonce_under_a_new_action_id_is_rejected_and_not_stored",
    "test_a_taken_username_or_email_is_refused",
    "test_actions_of_unknown_users_raise_and_write_nothing",
    "test_an_action_id_twice_in_one_batch_counts_once",
    "test_board_entries_rank_equal_scores_by_who_reached_them_first",
    "test_committing_the_same_batch_again_moves_no_score",
    "test_create_and_read_users",
    "test_fail_action_leaves_a_stored_action_alone_and_ignores_unknown_users",
    "test_ping",
    "test_recent_actions_since_a_time_oldest_first",
    "test_rejected_actions_are_stored_with_no_delta_and_their_reason",
    "test_score_reached_at_moves_only_when_the_score_does",
    "test_signing_keys_oldest_first_and_the_first_insert_of_a_kid_wins",
    "test_what_the_store_cannot_keep_is_mended_in_the_row_never_refused",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[SQLiteStore]:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        yield SQLiteStore(database)


def _sqlite(path: Path, query: str, *args: object) -> list[sqlite3.Row]:
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute(query, args).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()


# The checks that look inside the database, in SQLite.


async def test_an_action_is_stored_with_its_audit_fields(
    data_dir: Path, store: SQLiteStore
) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    env = envelope(user_id, ip="203.0.113.7", user_agent="pytest", headers={"x-request-id": "r1"})
    [result] = await store.commit_actions([completed(env, 10, flags=("rapid_fire",))])
    assert (result.outcome.status, result.new_score, result.duplicate) == ("completed", 10, False)
    record = await store.get_action(env.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.score_delta, record.outcome.new_score) == (
        "completed",
        10,
        10,
    )
    assert record.processed_at_ms is not None
    assert await store.find_action_by_nonce(user_id, env.nonce) == record

    [row] = _sqlite(
        database_path(data_dir),
        "SELECT action_data, flags, ip_address, user_agent, request_headers, received_at_ms"
        " FROM action_logs",
    )
    assert json.loads(row["action_data"]) == {"task_id": "t-1"}
    assert json.loads(row["flags"]) == ["rapid_fire"]
    assert (row["ip_address"], row["user_agent"]) == ("203.0.113.7", "pytest")
    assert json.loads(row["request_headers"]) == {"x-request-id": "r1"}
    assert row["received_at_ms"] == RECEIVED_AT_MS
    [user] = _sqlite(database_path(data_dir), "SELECT score, last_action_at_ms FROM users")
    assert (user["score"], user["last_action_at_ms"]) == (10, RECEIVED_AT_MS)


async def test_the_database_is_durable_wal(data_dir: Path, store: SQLiteStore) -> None:
    await store.ping()
    [[mode]] = _sqlite(database_path(data_dir), "PRAGMA journal_mode")
    assert mode == "wal"


async def test_group_commit_is_one_transaction(data_dir: Path, store: SQLiteStore) -> None:
    users = [await new_user(store) for _ in range(7)]  # type: ignore[arg-type]
    rng = random.Random(7)
    decisions = [completed(envelope(rng.choice(users)), rng.randint(0, 50)) for _ in range(1_000)]
    # The last insert of the batch fails: nothing of the batch may be left.
    poison = decisions[-1].envelope.action_id
    _sqlite(
        database_path(data_dir),
        "CREATE TRIGGER poison BEFORE INSERT ON action_logs"
        f" WHEN NEW.action_id = '{poison}' BEGIN SELECT RAISE(ABORT, 'poison'); END",
    )
    with pytest.raises(sqlite3.IntegrityError, match="poison"):
        await store.commit_actions(decisions)
    assert await store.recent_actions(users[0], 0) == []
    assert {e.score for e in await store.board_entries(users)} == {0}

    _sqlite(database_path(data_dir), "DROP TRIGGER poison")
    results = await store.commit_actions(decisions)
    running = dict.fromkeys(users, 0)
    for decision, result in zip(decisions, results, strict=True):
        running[decision.envelope.user_id] += decision.outcome.score_delta
        assert result.new_score == running[decision.envelope.user_id]
    assert {e.user_id: e.score for e in await store.board_entries(users)} == running
    assert await store.score_discrepancies() == []


async def test_score_discrepancies_finds_a_score_changed_by_hand(
    data_dir: Path, store: SQLiteStore
) -> None:
    honest, tampered, untouched = [await new_user(store) for _ in range(3)]  # type: ignore[arg-type]
    await store.commit_actions([completed(envelope(honest), 10), completed(envelope(tampered), 4)])
    assert await store.score_discrepancies() == []
    path = database_path(data_dir)
    _sqlite(path, "UPDATE users SET score = score + 100 WHERE id = ?", tampered)
    _sqlite(path, "UPDATE users SET score = 7 WHERE id = ?", untouched)
    assert await store.score_discrepancies() == [(tampered, 104, 4), (untouched, 7, 0)]


async def test_commits_cancelled_at_random_moments_are_all_or_nothing(
    data_dir: Path, store: SQLiteStore
) -> None:
    rng = random.Random(11)
    users = [await new_user(store) for _ in range(5)]  # type: ignore[arg-type]
    batches = [
        [completed(envelope(rng.choice(users)), rng.randint(1, 9)) for _ in range(300)]
        for _ in range(20)
    ]
    for batch in batches:
        with trio.move_on_after(rng.uniform(0, 0.01)):
            await store.commit_actions(batch)
    assert await store.score_discrepancies() == []
    for batch in batches:
        ids = ", ".join(f"'{d.envelope.action_id}'" for d in batch)
        [[count]] = _sqlite(
            database_path(data_dir), f"SELECT count(*) FROM action_logs WHERE action_id IN ({ids})"
        )
        assert count in (0, len(batch))
    with trio.fail_after(30):
        for batch in batches:
            await store.commit_actions(batch)
    expected = dict.fromkeys(users, 0)
    for decision in (d for batch in batches for d in batch):
        expected[decision.envelope.user_id] += decision.outcome.score_delta
    assert {e.user_id: e.score for e in await store.board_entries(users)} == expected


async def test_everything_survives_reopening(data_dir: Path) -> None:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        store = SQLiteStore(database)
        user_id = await new_user(store)  # type: ignore[arg-type]
        env = envelope(user_id, received_at_ms=RECEIVED_AT_MS)
        await store.commit_actions([completed(env, 10)])
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        store = SQLiteStore(database)
        record = await store.get_action(env.action_id)
        assert record is not None
        assert (record.outcome.status, record.outcome.new_score) == ("completed", 10)
        assert await store.get_action(uuid.uuid4()) is None


async def test_the_action_log_and_its_failures_are_append_only(
    data_dir: Path, store: SQLiteStore
) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    await store.commit_actions([completed(envelope(user_id), 10)])
    await store.fail_action(envelope(user_id, nonce="poison"), "exhausted 3 attempts")
    for table in ("action_logs", "action_failures"):
        for statement in (f"UPDATE {table} SET nonce = 'forged'", f"DELETE FROM {table}"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                _sqlite(database_path(data_dir), statement)
    assert [
        row[0] for row in _sqlite(database_path(data_dir), "SELECT nonce FROM action_failures")
    ] == ["poison"]
