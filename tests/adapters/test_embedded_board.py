"""The in-memory board and edge guard: the Redis adapters' contract tests, run against them,
and what only they need (a guard that forgot everything in a restart)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from scoreboard.adapters.embedded_broker import EmbeddedBroker
from scoreboard.adapters.interfaces import Accepted, PendingAction, Replayed
from scoreboard.adapters.memory_board import MemoryBoard, MemoryEdgeGuard
from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.sqlite import SQLiteStore, open_sqlite
from scoreboard.config import AmqpConfig
from scoreboard.records import ActionEnvelope, Decision, Outcome
from tests.adapters.test_redis import (
    T0,
    claim,
    entry,
    test_a_claimed_action_is_pending_until_released,
    test_a_known_nonce_is_replayed_with_its_first_answer,
    test_a_missing_board_is_never_read_as_empty,
    test_a_queued_or_unknown_claim_is_never_released,
    test_a_refused_claim_records_nothing,
    test_apply_ignores_stale_entries,
    test_apply_sets_absolute_scores_and_reports_rank_changes,
    test_around_gives_the_neighbours_on_each_side,
    test_big_score_keeps_every_digit,
    test_cooldown_is_per_user_and_action_type,
    test_equal_scores_rank_by_who_reached_them_first,
    test_ip_limit_counts_every_user_from_that_ip,
    test_limits_disabled_admits_everything_but_still_replays,
    test_marking_queued_binds_a_released_nonce_and_spares_others,
    test_ping,
    test_rebuild_if_missing_never_replaces_a_board,
    test_rebuild_with_no_entries_leaves_an_empty_built_board,
    test_release_undoes_a_claim,
    test_replay_is_answered_even_when_limited,
    test_retry_after_is_the_longest_wait,
    test_the_guard_passes_the_rate_cases,
    test_user_limit_is_a_sliding_minute,
)

__all__ = [
    "test_a_claimed_action_is_pending_until_released",
    "test_a_known_nonce_is_replayed_with_its_first_answer",
    "test_a_missing_board_is_never_read_as_empty",
    "test_a_queued_or_unknown_claim_is_never_released",
    "test_a_refused_claim_records_nothing",
    "test_apply_ignores_stale_entries",
    "test_apply_sets_absolute_scores_and_reports_rank_changes",
    "test_around_gives_the_neighbours_on_each_side",
    "test_big_score_keeps_every_digit",
    "test_cooldown_is_per_user_and_action_type",
    "test_equal_scores_rank_by_who_reached_them_first",
    "test_ip_limit_counts_every_user_from_that_ip",
    "test_limits_disabled_admits_everything_but_still_replays",
    "test_marking_queued_binds_a_released_nonce_and_spares_others",
    "test_ping",
    "test_rebuild_if_missing_never_replaces_a_board",
    "test_rebuild_with_no_entries_leaves_an_empty_built_board",
    "test_release_undoes_a_claim",
    "test_replay_is_answered_even_when_limited",
    "test_retry_after_is_the_longest_wait",
    "test_the_guard_passes_the_rate_cases",
    "test_user_limit_is_a_sliding_minute",
]


@dataclass
class EmbeddedBoardAndGuard:
    """What the reused tests call `backend`: a board and a guard (as `RedisBackend` has)."""

    board: MemoryBoard
    guard: MemoryEdgeGuard
    store: SQLiteStore
    broker: EmbeddedBroker


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[EmbeddedBoardAndGuard]:
    async with open_sqlite(tmp_path / "var", load_sqlite_migrations()) as database:
        broker = EmbeddedBroker(database, AmqpConfig())
        yield EmbeddedBoardAndGuard(
            MemoryBoard(), MemoryEdgeGuard(broker), SQLiteStore(database), broker
        )


async def test_apply_without_a_board_answers_none(backend: EmbeddedBoardAndGuard) -> None:
    assert await backend.board.apply([entry(1, 10, T0)], top_n=10) is None
    assert await backend.board.scores() == {}
    await backend.board.rebuild([])
    assert await backend.board.apply([entry(1, 10, T0)], top_n=10) is not None


def _envelope(user_id: int, nonce: str) -> ActionEnvelope:
    return ActionEnvelope(uuid.uuid4(), user_id, "complete_task", {"task_id": "t"}, nonce, T0)


async def test_after_a_restart_a_nonce_of_a_queued_or_stored_action_is_still_replayed(
    backend: EmbeddedBoardAndGuard,
) -> None:
    user_id = await backend.store.create_user("ada", "ada@example.test", "hash")
    queued, stored = _envelope(user_id, "queued-0001"), _envelope(user_id, "stored-0001")
    await backend.broker.publish_action(queued)
    await backend.store.commit_actions([Decision(stored, Outcome("completed", 10))])
    forgetful = MemoryEdgeGuard(backend.broker)  # a new process: nothing in memory

    got = await claim(backend, user_id=user_id, nonce="queued-0001")  # type: ignore[arg-type]
    assert got == Replayed(queued.action_id, 202)
    backend.guard = forgetful
    got = await claim(backend, user_id=user_id, nonce="stored-0001")  # type: ignore[arg-type]
    assert got == Replayed(stored.action_id, 202)
    got = await claim(backend, user_id=user_id, nonce="fresh-00001")  # type: ignore[arg-type]
    assert got == Accepted()
    # A queued action is pending for `GET /actions/<id>` after a restart too.
    assert await forgetful.pending_action(queued.action_id) == PendingAction(
        user_id, "complete_task", "queued-0001", T0
    )
    assert await forgetful.pending_action(stored.action_id) is None


async def test_two_concurrent_claims_of_one_nonce_accept_once(
    backend: EmbeddedBoardAndGuard,
) -> None:
    answers = []

    async def one() -> None:
        answers.append(await claim(backend, nonce="racing-0001"))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert sum(isinstance(answer, Accepted) for answer in answers) == 1
    assert sum(isinstance(answer, Replayed) for answer in answers) == 9


async def test_remove_takes_users_off_and_a_missing_board_answers_false(
    backend: EmbeddedBoardAndGuard,
) -> None:
    board = backend.board
    assert await board.remove([1]) is False
    await board.rebuild([entry(1, 30, T0), entry(2, 20, T0), entry(3, 10, T0)])
    assert await board.remove([2, 99]) is True
    assert await board.scores() == {1: 30, 3: 10}
    top, _updated_at = await board.top(10)
    assert [e.user_id for e in top] == [1, 3]
    assert await board.around(2, 5) is None
    assert await board.apply([entry(2, 25, T0 + 1)], top_n=10) is not None
    assert await board.scores() == {1: 30, 2: 25, 3: 10}
