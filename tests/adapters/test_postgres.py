"""The PostgreSQL store against the real server: every method, group commit, exactly-once
effect, and trio timeouts in the middle of a call."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import pytest
import trio

from scoreboard.adapters.interfaces import (
    BackendUnavailable,
    EmailTaken,
    UnknownUser,
    UsernameTaken,
)
from scoreboard.adapters.postgres import PostgresStore, open_postgres_store
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import DatabaseConfig
from scoreboard.records import ActionEnvelope, Decision, Outcome, SigningKeyRecord

RECEIVED_AT_MS = 1_764_500_000_123


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    async with open_bridge() as bridge:
        yield bridge


@pytest.fixture
async def store(bridge: Bridge, database_url: str) -> AsyncIterator[PostgresStore]:
    async with open_postgres_store(bridge, pool_config(database_url)) as store:
        yield store


def pool_config(database_url: str) -> DatabaseConfig:
    return DatabaseConfig(url=database_url, pool_min=1, pool_max=4)


async def sql(bridge: Bridge, url: str, query: str, *args: Any) -> list[Any]:
    """Run one statement on a connection of its own (what an operator's psql would do)."""

    async def job() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return await bridge.run(job)


async def new_user(store: PostgresStore, name: str | None = None) -> int:
    name = name or f"u{uuid.uuid4().hex[:12]}"
    return await store.create_user(name, f"{name}@example.test", "argon2-hash")


def envelope(
    user_id: int, *, nonce: str | None = None, action_id: uuid.UUID | None = None, **fields: Any
) -> ActionEnvelope:
    return ActionEnvelope(
        action_id=action_id or uuid.uuid4(),
        user_id=user_id,
        action_type=fields.pop("action_type", "complete_task"),
        action_data=fields.pop("action_data", {"task_id": "t-1"}),
        nonce=nonce or uuid.uuid4().hex,
        received_at_ms=fields.pop("received_at_ms", RECEIVED_AT_MS),
        **fields,
    )


def completed(
    env: ActionEnvelope, delta: int = 10, flags: tuple[str, ...] = (), **fields: Any
) -> Decision:
    return Decision(env, Outcome("completed", delta, **fields), flags)


def rejected(
    env: ActionEnvelope,
    error: Literal["rate_limit_exceeded", "invalid_action"] = "rate_limit_exceeded",
    flags: tuple[str, ...] = (),
    **fields: Any,
) -> Decision:
    return Decision(env, Outcome("rejected", 0, error=error, **fields), flags)


async def connection_states(bridge: Bridge, url: str) -> list[str]:
    """The state of every other client connection to the database."""
    rows = await sql(
        bridge,
        url,
        "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    return [row["state"] for row in rows]


async def assert_no_connection_left_in_a_transaction(bridge: Bridge, url: str) -> None:
    states = await connection_states(bridge, url)
    assert all(state == "idle" for state in states), states


WAITING_FOR_A_LOCK = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


async def hold_user_lock(bridge: Bridge, url: str, user_id: int) -> Any:
    """Another session holding the user's row lock; `release` ends it."""
    conn = await bridge.run(asyncpg.connect, url)
    await bridge.run(conn.execute, "BEGIN")
    await bridge.run(conn.execute, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
    return conn


async def lock_table(bridge: Bridge, url: str, table: str) -> Any:
    """Another session holding an exclusive lock on `table`; `release` ends it."""
    conn = await bridge.run(asyncpg.connect, url)
    await bridge.run(conn.execute, "BEGIN")
    await bridge.run(conn.execute, f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    return conn


async def release(bridge: Bridge, conn: Any) -> None:
    await bridge.run(conn.execute, "ROLLBACK")
    await bridge.run(conn.close)


# -- basics


async def test_ping(store: PostgresStore) -> None:
    await store.ping()


async def test_an_unreachable_server_is_backend_unavailable(bridge: Bridge) -> None:
    with pytest.raises(BackendUnavailable):
        async with open_postgres_store(bridge, pool_config("postgresql://postgres@127.0.0.1:1/x")):
            pass


async def test_a_connection_killed_under_a_running_query_is_backend_unavailable(
    bridge: Bridge, store: PostgresStore, database_url: str
) -> None:
    user_id = await new_user(store)
    blocker = await lock_table(bridge, database_url, "users")
    outcome: list[BaseException] = []

    async def read_user() -> None:
        try:
            await store.get_user(user_id)
        except BackendUnavailable as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_user)
        with trio.fail_after(10):
            # Only the server knows when the query waits; there is nothing to wait on but a poll.
            while not await sql(bridge, database_url, WAITING_FOR_A_LOCK):
                await trio.sleep(0.02)
        await sql(
            bridge,
            database_url,
            f"SELECT pg_terminate_backend(pid) FROM ({WAITING_FOR_A_LOCK}) AS waiting",
        )
    await release(bridge, blocker)

    assert len(outcome) == 1
    assert await store.get_user(user_id) is not None


# -- users


async def test_create_and_read_users(store: PostgresStore) -> None:
    before_ms = int(time.time() * 1000)
    user_id = await store.create_user("alice", "alice@example.test", "hash-a")

    user = await store.get_user(user_id)
    assert user is not None
    assert (user.user_id, user.username, user.email, user.password_hash) == (
        user_id,
        "alice",
        "alice@example.test",
        "hash-a",
    )
    assert (user.score, user.disabled) == (0, False)
    assert before_ms - 1000 <= user.created_at_ms <= int(time.time() * 1000) + 1000
    assert await store.get_user_by_username("alice") == user
    assert await store.get_user(user_id + 1000) is None
    assert await store.get_user_by_username("bob") is None


async def test_a_taken_username_or_email_is_refused(store: PostgresStore) -> None:
    await store.create_user("alice", "alice@example.test", "hash")
    with pytest.raises(UsernameTaken):
        await store.create_user("alice", "other@example.test", "hash")
    with pytest.raises(EmailTaken):
        await store.create_user("alicia", "alice@example.test", "hash")


async def test_a_password_hash_is_replaced_only_while_it_is_the_one_read(
    store: PostgresStore,
) -> None:
    user_id = await store.create_user("alice", "alice@example.test", "hash-old")
    other_id = await store.create_user("bob", "bob@example.test", "hash-old")

    assert await store.replace_password_hash(user_id, "hash-old", "hash-new")
    user = await store.get_user(user_id)
    assert user is not None
    assert user.password_hash == "hash-new"
    other = await store.get_user(other_id)
    assert other is not None
    assert other.password_hash == "hash-old"
    # Changed meanwhile (a second upgrade, a new password): what is stored stays.
    assert not await store.replace_password_hash(user_id, "hash-old", "hash-newer")
    assert await store.get_user_by_username("alice") == user
    assert not await store.replace_password_hash(other_id + 1000, "hash-old", "hash-new")


# -- signing keys


async def test_signing_keys_oldest_first_and_the_first_insert_of_a_kid_wins(
    store: PostgresStore,
) -> None:
    assert await store.signing_keys() == []
    old = SigningKeyRecord("key-1", "pem-1", {"kty": "RSA", "n": "abc", "e": "AQAB"}, 1_000, 2_000)
    new = SigningKeyRecord("key-2", "pem-2", {"kty": "RSA", "n": "def", "e": "AQAB"}, 3_000, None)
    await store.add_signing_key(new)
    await store.add_signing_key(old)
    await store.add_signing_key(SigningKeyRecord("key-2", "other", {}, 4_000, None))

    assert await store.signing_keys() == [old, new]


# -- commit_actions


async def test_commit_one_completed_action_and_read_it_back(
    bridge: Bridge, store: PostgresStore, database_url: str
) -> None:
    user_id = await new_user(store, "alice")
    env = envelope(
        user_id,
        nonce="nonce-0001",
        ip="203.0.113.7",
        user_agent="pytest",
        headers={"x-request-id": "r1"},
    )

    [result] = await store.commit_actions([completed(env, 10, flags=("rapid_fire",))])

    assert result.action_id == env.action_id
    assert (result.user_id, result.username, result.nonce) == (user_id, "alice", "nonce-0001")
    assert (
        result.outcome.status,
        result.outcome.score_delta,
        result.old_score,
        result.new_score,
    ) == (
        "completed",
        10,
        0,
        10,
    )
    assert (
        result.outcome.error,
        result.outcome.message,
        result.outcome.retry_after_s,
        result.duplicate,
    ) == (
        None,
        None,
        None,
        False,
    )
    record = await store.get_action(env.action_id)
    assert record is not None
    assert (record.user_id, record.action_type, record.nonce, record.outcome.status) == (
        user_id,
        "complete_task",
        "nonce-0001",
        "completed",
    )
    assert (
        record.outcome.score_delta,
        record.outcome.new_score,
        record.outcome.error,
        record.outcome.message,
    ) == (
        10,
        10,
        None,
        None,
    )
    assert record.processed_at_ms is not None
    assert await store.find_action_by_nonce(user_id, "nonce-0001") == record
    assert await store.find_action_by_nonce(user_id, "nonce-9999") is None
    assert await store.get_action(uuid.uuid4()) is None

    [row] = await sql(
        bridge,
        database_url,
        "SELECT action_data, flags, ip_address, user_agent, request_headers, received_at,"
        " (extract(epoch FROM received_at) * 1000)::bigint AS received_ms FROM action_logs",
    )
    assert row["action_data"] == '{"task_id": "t-1"}'
    assert row["flags"] == ["rapid_fire"]
    assert (row["ip_address"], row["user_agent"]) == ("203.0.113.7", "pytest")
    assert row["request_headers"] == '{"x-request-id": "r1"}'
    assert row["received_ms"] == RECEIVED_AT_MS
    [user] = await sql(bridge, database_url, "SELECT score, last_action_at FROM users")
    assert user["score"] == 10
    assert user["last_action_at"] == row["received_at"]


async def test_group_commit_of_a_thousand_actions_keeps_a_running_new_score_per_user(
    bridge: Bridge, store: PostgresStore, database_url: str
) -> None:
    users = [await new_user(store) for _ in range(7)]
    rng = random.Random(7)
    decisions = [completed(envelope(rng.choice(users)), rng.randint(0, 50)) for _ in range(1_000)]

    results = await store.commit_actions(decisions)

    running = dict.fromkeys(users, 0)
    for decision, result in zip(decisions, results, strict=True):
        user_id = decision.envelope.user_id
        assert result.action_id == decision.envelope.action_id
        assert result.old_score == running[user_id]
        running[user_id] += decision.outcome.score_delta
        assert result.new_score == running[user_id]
        assert not result.duplicate
    entries = await store.board_entries(users)
    assert {entry.user_id: entry.score for entry in entries} == running
    for result in results:
        reached = next(e for e in entries if e.user_id == result.user_id).score_reached_at_ms
        assert result.score_reached_at_ms == reached
    stored = await sql(
        bridge,
        database_url,
        "SELECT count(*) AS n, count(DISTINCT xmin::text) AS transactions FROM action_logs",
    )
    assert (stored[0]["n"], stored[0]["transactions"]) == (1_000, 1)
    assert await store.score_discrepancies() == []


async def test_committing_the_same_batch_again_moves_no_score(store: PostgresStore) -> None:
    users = [await new_user(store) for _ in range(3)]
    decisions = [
        completed(envelope(users[i % 3]), 5) if i % 4 else rejected(envelope(users[i % 3]))
        for i in range(60)
    ]
    first = await store.commit_actions(decisions)
    scores = {e.user_id: e.score for e in await store.board_entries(users)}

    again = await store.commit_actions(decisions)

    assert {e.user_id: e.score for e in await store.board_entries(users)} == scores
    assert [r.duplicate for r in again] == [True] * len(decisions)
    for before, after in zip(first, again, strict=True):
        assert (
            after.outcome.status,
            after.outcome.score_delta,
            after.old_score,
            after.new_score,
        ) == (
            before.outcome.status,
            before.outcome.score_delta,
            before.old_score,
            before.new_score,
        )
        assert (after.outcome.error, after.outcome.message, after.outcome.retry_after_s) == (
            before.outcome.error,
            before.outcome.message,
            before.outcome.retry_after_s,
        )
    assert await store.score_discrepancies() == []


async def test_an_action_id_twice_in_one_batch_counts_once(store: PostgresStore) -> None:
    user_id = await new_user(store)
    decision = completed(envelope(user_id), 7)

    first, second = await store.commit_actions([decision, decision])

    assert (first.duplicate, first.new_score) == (False, 7)
    assert (second.duplicate, second.outcome.status, second.new_score) == (True, "completed", 7)
    user = await store.get_user(user_id)
    assert user is not None
    assert user.score == 7


async def test_a_replayed_nonce_under_a_new_action_id_is_rejected_and_not_stored(
    store: PostgresStore,
) -> None:
    user_id = await new_user(store)
    original = envelope(user_id, nonce="same-nonce")
    await store.commit_actions([completed(original, 10)])
    replay = envelope(user_id, nonce="same-nonce")
    in_batch_a = envelope(user_id, nonce="batch-nonce")
    in_batch_b = envelope(user_id, nonce="batch-nonce")

    results = await store.commit_actions(
        [completed(replay, 10), completed(in_batch_a, 3), completed(in_batch_b, 3)]
    )

    replayed, fresh, replayed_in_batch = results
    for result, score in ((replayed, 10), (replayed_in_batch, 13)):
        assert (result.outcome.status, result.outcome.error, result.outcome.message) == (
            "rejected",
            "invalid_action",
            "duplicate nonce",
        )
        assert (result.outcome.score_delta, result.old_score, result.new_score) == (0, score, score)
        assert result.duplicate
    assert (fresh.new_score, fresh.duplicate) == (13, False)
    assert await store.get_action(replay.action_id) is None
    assert await store.get_action(in_batch_b.action_id) is None
    found = await store.find_action_by_nonce(user_id, "same-nonce")
    assert found is not None
    assert found.action_id == original.action_id


async def test_rejected_actions_are_stored_with_no_delta_and_their_reason(
    store: PostgresStore,
) -> None:
    user_id = await new_user(store)
    decisions = [
        completed(envelope(user_id), 10),
        Decision(
            envelope(user_id),
            Outcome("rejected", 10, None, "rate_limit_exceeded", "slow down", retry_after_s=4),
        ),
        rejected(envelope(user_id), "invalid_action", message="task already completed"),
        completed(envelope(user_id), 5),
    ]

    results = await store.commit_actions(decisions)

    assert [
        (r.outcome.status, r.outcome.score_delta, r.old_score, r.new_score) for r in results
    ] == [
        ("completed", 10, 0, 10),
        ("rejected", 0, 10, 10),
        ("rejected", 0, 10, 10),
        ("completed", 5, 10, 15),
    ]
    assert (
        results[1].outcome.error,
        results[1].outcome.message,
        results[1].outcome.retry_after_s,
    ) == (
        "rate_limit_exceeded",
        "slow down",
        4,
    )
    record = await store.get_action(decisions[2].envelope.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.score_delta, record.outcome.new_score) == (
        "rejected",
        0,
        10,
    )
    assert (record.outcome.error, record.outcome.message) == (
        "invalid_action",
        "task already completed",
    )
    assert record.created_at_ms == RECEIVED_AT_MS  # accepted then, whenever it was stored
    [redelivered] = await store.commit_actions([decisions[1]])
    assert (redelivered.duplicate, redelivered.outcome.retry_after_s) == (True, 4)
    assert await store.score_discrepancies() == []


async def test_a_negative_delta_is_refused_before_anything_is_written(
    store: PostgresStore,
) -> None:
    user_id = await new_user(store)
    with pytest.raises(ValueError, match="negative"):
        await store.commit_actions(
            [completed(envelope(user_id), 5), completed(envelope(user_id), -1)]
        )
    assert await store.recent_actions(user_id, 0) == []


async def test_actions_of_unknown_users_raise_and_write_nothing(store: PostgresStore) -> None:
    user_id = await new_user(store)
    ghosts = {user_id + 100, user_id + 200}
    decisions = [completed(envelope(user_id), 5), *(completed(envelope(g), 5) for g in ghosts)]

    with pytest.raises(UnknownUser) as caught:
        await store.commit_actions(decisions)

    assert caught.value.user_ids == ghosts
    assert await store.recent_actions(user_id, 0) == []
    user = await store.get_user(user_id)
    assert user is not None
    assert user.score == 0


async def test_score_reached_at_moves_only_when_the_score_does(store: PostgresStore) -> None:
    user_id = await new_user(store)

    async def reached_at_ms() -> int:
        [entry] = await store.board_entries([user_id])
        return entry.score_reached_at_ms

    created = await reached_at_ms()
    await trio.sleep(0.01)
    [zero] = await store.commit_actions([completed(envelope(user_id), 0)])
    [refused] = await store.commit_actions([rejected(envelope(user_id))])
    assert (
        zero.score_reached_at_ms == refused.score_reached_at_ms == created == await reached_at_ms()
    )

    await trio.sleep(0.01)
    scoring = completed(envelope(user_id), 3)
    [scored] = await store.commit_actions([scoring])
    assert scored.score_reached_at_ms > created
    assert scored.score_reached_at_ms == await reached_at_ms()

    await trio.sleep(0.01)
    [redelivered] = await store.commit_actions([scoring])
    assert redelivered.duplicate
    assert redelivered.score_reached_at_ms == scored.score_reached_at_ms == await reached_at_ms()


# -- reads


async def test_recent_actions_since_a_time_oldest_first(store: PostgresStore) -> None:
    user_id = await new_user(store)
    other = await new_user(store)
    times = [1_000, 5_000, 3_000, 9_000]
    decisions = [completed(envelope(user_id, received_at_ms=ms), 1) for ms in times]
    await store.commit_actions([*decisions, completed(envelope(other, received_at_ms=5_000), 1)])
    await store.commit_actions([rejected(envelope(user_id, received_at_ms=7_000))])

    recent = await store.recent_actions(user_id, 3_000)

    assert [(r.received_at_ms, r.status) for r in recent] == [
        (3_000, "completed"),
        (5_000, "completed"),
        (7_000, "rejected"),
        (9_000, "completed"),
    ]
    assert recent[0].action_id == decisions[2].envelope.action_id
    assert recent[0].nonce == decisions[2].envelope.nonce
    assert {r.action_type for r in recent} == {"complete_task"}


async def test_board_entries_rank_equal_scores_by_who_reached_them_first(
    store: PostgresStore,
) -> None:
    late, early, idle = [await new_user(store, name) for name in ("late", "early", "idle")]
    await store.commit_actions([completed(envelope(early), 10)])
    await trio.sleep(0.01)
    await store.commit_actions([completed(envelope(late), 10)])

    everyone = await store.board_entries()
    chosen = await store.board_entries([idle, late, late + 1000])

    assert [(e.username, e.score) for e in everyone] == [("early", 10), ("late", 10)]
    assert everyone[0].score_reached_at_ms < everyone[1].score_reached_at_ms
    assert [(e.username, e.score) for e in chosen] == [("late", 10), ("idle", 0)]


async def test_score_discrepancies_finds_a_score_changed_by_hand(
    bridge: Bridge, store: PostgresStore, database_url: str
) -> None:
    honest, tampered, untouched = [await new_user(store) for _ in range(3)]
    await store.commit_actions(
        [
            completed(envelope(honest), 10),
            completed(envelope(tampered), 4),
            rejected(envelope(tampered)),
        ]
    )
    assert await store.score_discrepancies() == []

    await sql(bridge, database_url, "UPDATE users SET score = score + 100 WHERE id = $1", tampered)
    await sql(bridge, database_url, "UPDATE users SET score = 7 WHERE id = $1", untouched)

    assert await store.score_discrepancies() == [(tampered, 104, 4), (untouched, 7, 0)]


# -- fail_action


async def test_a_failure_is_recorded_once_and_a_later_delivery_settles_it_once(
    store: PostgresStore,
) -> None:
    user_id = await new_user(store)
    await store.commit_actions([completed(envelope(user_id), 8)])
    poison = envelope(user_id, nonce="poison-1")

    await store.fail_action(poison, "exhausted 3 attempts")
    await store.fail_action(poison, "again")

    record = await store.get_action(poison.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.score_delta, record.outcome.new_score) == (
        "failed",
        0,
        8,
    )
    assert (record.outcome.error, record.outcome.message) == (None, "exhausted 3 attempts")
    assert record.created_at_ms == RECEIVED_AT_MS
    # The cause fixed, the action comes again (a replay of its dead letter): it is scored, once.
    [replayed] = await store.commit_actions([completed(poison, 5)])
    assert (replayed.outcome.status, replayed.duplicate, replayed.new_score) == (
        "completed",
        False,
        13,
    )
    [again] = await store.commit_actions([completed(poison, 5)])
    assert (again.outcome.status, again.duplicate, again.new_score) == ("completed", True, 13)
    record = await store.get_action(poison.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.score_delta, record.outcome.message) == (
        "completed",
        5,
        None,
    )
    # Another action with its nonce is still a replay of it.
    [copy] = await store.commit_actions([completed(envelope(user_id, nonce="poison-1"), 5)])
    assert (copy.outcome.status, copy.outcome.message) == ("rejected", "duplicate nonce")
    user = await store.get_user(user_id)
    assert user is not None
    assert user.score == 13
    assert await store.score_discrepancies() == []
    statuses = [a.status for a in await store.recent_actions(user_id, 0)]
    assert statuses == ["completed", "completed"]


async def test_what_the_store_cannot_keep_is_mended_in_the_row_never_refused(
    store: PostgresStore,
) -> None:
    user_id = await new_user(store)
    odd = {
        "nul": envelope(user_id, action_data={"task_id": "t\x00"}),
        "surrogate": envelope(user_id, action_data={"task\ud800": "t"}),
        "agent": envelope(user_id, user_agent="curl\x00"),
        "nan": envelope(user_id, action_data={"task_id": "t", "n": float("nan")}),
        "type": envelope(user_id, action_type="x" * 51),
        "time": envelope(user_id, received_at_ms=10**16),
    }
    decisions = [
        rejected(e, "invalid_action", message="the action cannot be stored") for e in odd.values()
    ]
    results = await store.commit_actions([completed(envelope(user_id), 5), *decisions])
    assert [r.outcome.status for r in results] == ["completed"] + ["rejected"] * len(odd)
    stored = await store.recent_actions(user_id, 0)
    assert len(stored) == 1 + len(odd)
    record = await store.get_action(odd["type"].action_id)
    assert record is not None
    assert record.action_type == "x" * 50


async def test_a_failure_is_recorded_whatever_the_action_holds(store: PostgresStore) -> None:
    user_id = await new_user(store)
    unstorable = envelope(
        user_id,
        action_type="complete_task\x00" + "x" * 60,
        action_data={"task_id": "t\x00\ud800", "bad\x00key": float("inf")},
        user_agent="agent\x00",
        headers={"x-h\x00": "v\udfff"},
        received_at_ms=-5,
    )
    await store.fail_action(unstorable, "the store cannot keep it: action_data holds U+0000")
    record = await store.get_action(unstorable.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.score_delta) == ("failed", 0)
    assert record.outcome.message == "the store cannot keep it: action_data holds U+0000"
    assert record.action_type == ("complete_task\ufffd" + "x" * 60)[:50]


async def test_fail_action_leaves_a_stored_action_alone_and_ignores_unknown_users(
    store: PostgresStore,
) -> None:
    user_id = await new_user(store)
    env = envelope(user_id)
    await store.commit_actions([completed(env, 8)])

    await store.fail_action(env, "late failure")
    await store.fail_action(envelope(user_id + 1000), "no such user")

    record = await store.get_action(env.action_id)
    assert record is not None
    assert record.outcome.status == "completed"
    assert await store.recent_actions(user_id + 1000, 0) == []


# -- a trio timeout in the middle of a call


async def test_a_commit_cancelled_while_waiting_for_a_lock_leaves_the_pool_usable(
    bridge: Bridge, database_url: str
) -> None:
    async with open_postgres_store(bridge, pool_config(database_url)) as store:
        user_id = await new_user(store)
        batch = [completed(envelope(user_id), 2) for _ in range(50)]
        blocker = await hold_user_lock(bridge, database_url, user_id)

        with trio.move_on_after(0.3) as scope:
            await store.commit_actions(batch)
        assert scope.cancelled_caught

        await release(bridge, blocker)
        await assert_no_connection_left_in_a_transaction(bridge, database_url)
        assert await store.recent_actions(user_id, 0) == []
        with trio.fail_after(10):
            results = await store.commit_actions(batch)
        assert results[-1].new_score == 100
        started_closing = trio.current_time()
    assert trio.current_time() - started_closing < 5


async def test_a_commit_cancelled_inside_a_slow_insert_rolls_back_and_frees_the_user(
    bridge: Bridge, database_url: str
) -> None:
    await sql(
        bridge,
        database_url,
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$",
    )
    await sql(
        bridge,
        database_url,
        "CREATE TRIGGER slow_insert BEFORE INSERT ON action_logs"
        " FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()",
    )
    async with open_postgres_store(bridge, pool_config(database_url)) as store:
        user_id = await new_user(store)
        batch = [completed(envelope(user_id), 1) for _ in range(100)]

        with trio.move_on_after(0.5) as scope:
            await store.commit_actions(batch)
        assert scope.cancelled_caught
        await assert_no_connection_left_in_a_transaction(bridge, database_url)

        await sql(bridge, database_url, "DROP TRIGGER slow_insert ON action_logs")
        with trio.fail_after(10):
            results = await store.commit_actions(batch)
            user = await store.get_user(user_id)
        assert [r.duplicate for r in results] == [False] * 100
        assert user is not None
        assert user.score == 100
        started_closing = trio.current_time()
    assert trio.current_time() - started_closing < 5


async def test_a_slow_read_cancelled_midway_leaves_the_pool_usable(
    bridge: Bridge, database_url: str
) -> None:
    async with open_postgres_store(bridge, pool_config(database_url)) as store:
        user_id = await new_user(store)
        blocker = await lock_table(bridge, database_url, "users")

        for _ in range(6):  # more than the pool holds: no cancelled call may keep its connection
            with trio.move_on_after(0.1) as scope:
                await store.get_user(user_id)
            assert scope.cancelled_caught

        await release(bridge, blocker)
        await assert_no_connection_left_in_a_transaction(bridge, database_url)
        with trio.fail_after(10):
            assert await store.get_user(user_id) is not None
            await store.ping()


async def test_commits_cancelled_at_random_moments_are_all_or_nothing(
    bridge: Bridge, database_url: str
) -> None:
    rng = random.Random(11)
    async with open_postgres_store(bridge, pool_config(database_url)) as store:
        users = [await new_user(store) for _ in range(5)]
        batches = [
            [completed(envelope(rng.choice(users)), rng.randint(1, 9)) for _ in range(300)]
            for _ in range(20)
        ]
        for batch in batches:
            with trio.move_on_after(rng.uniform(0, 0.03)):
                await store.commit_actions(batch)

        await assert_no_connection_left_in_a_transaction(bridge, database_url)
        assert await store.score_discrepancies() == []
        for batch in batches:
            [stored] = await sql(
                bridge,
                database_url,
                "SELECT count(*) AS n FROM action_logs WHERE action_id = ANY($1::uuid[])",
                [d.envelope.action_id for d in batch],
            )
            assert stored["n"] in (0, len(batch))
        with trio.fail_after(30):
            for batch in batches:
                await store.commit_actions(batch)
        expected = dict.fromkeys(users, 0)
        for decision in (d for batch in batches for d in batch):
            expected[decision.envelope.user_id] += decision.outcome.score_delta
        entries = await store.board_entries(users)
        assert {e.user_id: e.score for e in entries} == expected
