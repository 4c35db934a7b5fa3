"""The catalogue's rules per action type (what counts once, value ranges, how old a time may be),
judged by the user actor's ledger and committed by the real store: the same table of cases on
PostgreSQL and on embedded SQLite.

Each case runs twice: with one ledger for the whole sequence (one user actor remembers what it
decided) and with a fresh ledger per action, its history loaded from the store (another worker's
actor, or one restarted after the window): then the store alone holds the rule."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scoreboard.actors.user import Ledger
from scoreboard.adapters.interfaces import Store
from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.postgres import open_postgres_store
from scoreboard.adapters.sqlite import SQLiteStore, open_sqlite
from scoreboard.bridge import open_bridge
from scoreboard.catalogue import load_catalogue
from scoreboard.config import Config, DatabaseConfig
from scoreboard.records import ActionEnvelope, Decision

CATALOGUE = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "actions.toml")
CONFIG = Config()

DAY_MS = 86_400_000
MIDNIGHT = 1_764_547_200_000  # 2025-12-01 00:00 UTC
NOON = MIDNIGHT + DAY_MS // 2
STEP_MS = 20_000  # past every cooldown

ONCE_A_DAY = "daily_login counts once per user and UTC day: already counted"
ONCE_PER_TASK = "complete_task counts once per user and action_data.task_id: already counted"
ONCE_PER_MATCH = (
    "win_match counts once per user and action_data.match_id and action_data.opponent_id:"
    " already counted"
)


@dataclass(frozen=True)
class Step:
    at_ms: int
    action_type: str
    data: dict[str, Any]
    status: str  # what the store answers
    message: str | None = None  # its reason, when refused


def login(at_ms: int, status: str = "completed", message: str | None = None) -> Step:
    return Step(at_ms, "daily_login", {"day": "whatever the client says"}, status, message)


def task(at_ms: int, task_id: str, status: str = "completed", message: str | None = None) -> Step:
    data = {"task_id": task_id, "completion_time": at_ms // 1000 - 60}
    return Step(at_ms, "complete_task", data, status, message)


def match(at_ms: int, match_id: str, opponent: str, status: str = "completed") -> Step:
    data = {"match_id": match_id, "opponent_id": opponent}
    return Step(at_ms, "win_match", data, status, None if status == "completed" else ONCE_PER_MATCH)


RULE_CASES: dict[str, list[Step]] = {
    "daily_login once per UTC day, the next day counts": [
        login(MIDNIGHT + 1_000),
        login(MIDNIGHT + 1_000 + STEP_MS, "rejected", ONCE_A_DAY),
        login(MIDNIGHT + DAY_MS - 1_000, "rejected", ONCE_A_DAY),  # 23:59:59 the same day
        login(MIDNIGHT + DAY_MS, "completed"),  # 00:00:00 the next day
        login(MIDNIGHT + DAY_MS + 3 * STEP_MS, "rejected", ONCE_A_DAY),
    ],
    "task_id once per user, whenever it comes again": [
        task(NOON, "t-1"),
        task(NOON + STEP_MS, "t-1", "rejected", ONCE_PER_TASK),
        task(NOON + 2 * STEP_MS, "t-2"),
        task(NOON + 3 * DAY_MS, "t-1", "rejected", ONCE_PER_TASK),  # long past every window
    ],
    "match_id once per user and opponent": [
        match(NOON, "m-1", "o-1"),
        match(NOON + STEP_MS, "m-1", "o-1", "rejected"),
        match(NOON + 2 * STEP_MS, "m-1", "o-2"),
        match(NOON + 3 * STEP_MS, "m-2", "o-1"),
        match(NOON + 2 * DAY_MS, "m-1", "o-2", "rejected"),
    ],
    "quantity within its range": [
        Step(NOON, "collect_item", {"item_id": "i", "quantity": 0}, "rejected", "between 1 and"),
        Step(NOON + STEP_MS, "collect_item", {"item_id": "i", "quantity": 1}, "completed"),
        Step(NOON + 2 * STEP_MS, "collect_item", {"item_id": "i", "quantity": 1000}, "completed"),
        Step(NOON + 3 * STEP_MS, "collect_item", {"item_id": "i", "quantity": 1001}, "rejected"),
    ],
    "completion_time at most max_age_s old": [
        Step(
            NOON,
            "complete_task",
            {"task_id": "old", "completion_time": (NOON - DAY_MS) // 1000 - 1},
            "rejected",
            "completion_time is more than 86400 s before the action was received",
        ),
        # Refused for its age, the task is still free.
        Step(
            NOON + STEP_MS,
            "complete_task",
            {"task_id": "old", "completion_time": (NOON - DAY_MS) // 1000 + 60},
            "completed",
        ),
    ],
}


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest) -> str | None:
    """A PostgreSQL database of this test's own, or None for embedded SQLite."""
    return request.getfixturevalue("database_url") if request.param == "postgres" else None


@pytest.fixture
async def store(database: str | None, tmp_path: Path) -> AsyncIterator[Store]:
    if database is None:
        async with open_sqlite(tmp_path / "var", load_sqlite_migrations()) as embedded:
            yield SQLiteStore(embedded)
        return
    url = database
    async with (
        open_bridge() as bridge,
        open_postgres_store(bridge, DatabaseConfig(url=url, pool_min=1, pool_max=4)) as pg,
    ):
        yield pg


def envelope(user_id: int, step: Step) -> ActionEnvelope:
    return ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=user_id,
        action_type=step.action_type,
        action_data=step.data,
        nonce=uuid.uuid4().hex,
        received_at_ms=step.at_ms,
    )


async def decide(ledger: Ledger, store: Store, user_id: int, item: ActionEnvelope) -> Decision:
    """What the user actor does: load the history it lacks, then judge."""
    since = ledger.history_needed_since(item.received_at_ms)
    if since is not None:
        ledger.add_history(since, await store.recent_actions(user_id, since))
    return ledger.decide(item)


LEDGERS: dict[str, Callable[[Ledger], Callable[[], Ledger]]] = {
    "one actor": lambda shared: lambda: shared,
    "a fresh actor per action": lambda _: functools.partial(Ledger, CATALOGUE, CONFIG),
}


@pytest.mark.parametrize("ledgers", LEDGERS)
@pytest.mark.parametrize("case", RULE_CASES)
async def test_each_rule_refuses_with_its_reason_on_both_backends(
    store: Store, case: str, ledgers: str
) -> None:
    user_id = await store.create_user(f"u{uuid.uuid4().hex[:12]}", "", "hash")
    ledger_for = LEDGERS[ledgers](Ledger(CATALOGUE, CONFIG))
    expected_score = 0
    for index, step in enumerate(RULE_CASES[case]):
        item = envelope(user_id, step)
        decision = await decide(ledger_for(), store, user_id, item)
        [result] = await store.commit_actions([decision])
        assert (index, result.outcome.status) == (index, step.status), result.outcome.message
        if step.status == "rejected":
            assert result.outcome.error == "invalid_action"
            assert step.message is None or step.message in (result.outcome.message or "")
        else:
            expected_score += CATALOGUE.types[step.action_type].points
        # A redelivery of the same action answers the same, and counts nothing again.
        [again] = await store.commit_actions([decision])
        assert (again.outcome.status, again.outcome.message, again.duplicate) == (
            result.outcome.status,
            result.outcome.message,
            True,
        )
    entries = await store.board_entries([user_id])
    assert len(entries) <= 1
    assert (entries[0].score if entries else 0) == expected_score


async def test_two_workers_deciding_the_same_key_at_once_count_it_once(store: Store) -> None:
    """Two actors (two workers, or a batch holding both) each decide the key is free: the
    store's commit counts the first and refuses the second."""
    user_id = await store.create_user(f"u{uuid.uuid4().hex[:12]}", "", "hash")
    first, second = (
        Ledger(CATALOGUE, CONFIG).decide(envelope(user_id, login(NOON + offset)))
        for offset in (0, STEP_MS)
    )
    assert first.outcome.status == second.outcome.status == "completed"
    results = await store.commit_actions([first, second])
    assert [r.outcome.status for r in results] == ["completed", "rejected"]
    assert results[1].outcome.message == ONCE_A_DAY
    third = Ledger(CATALOGUE, CONFIG).decide(envelope(user_id, login(NOON + 2 * STEP_MS)))
    [result] = await store.commit_actions([third])
    assert (result.outcome.status, result.outcome.message, result.new_score) == (
        "rejected",
        ONCE_A_DAY,
        5,
    )
    record = await store.get_action(third.envelope.action_id)
    assert record is not None
    assert (record.outcome.status, record.outcome.error, record.outcome.message) == (
        "rejected",
        "invalid_action",
        ONCE_A_DAY,
    )
