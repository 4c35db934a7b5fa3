"""`plan_commit` for a suspended user: a new action is refused `account_suspended` and takes no
unique key; a redelivered one keeps its stored outcome; other users are not touched."""

from __future__ import annotations

import uuid

from scoreboard.adapters.commit_plan import SUSPENDED_MESSAGE, StoredAction, plan_commit
from scoreboard.records import ActionEnvelope, Decision, Outcome, UniqueKey


def completed(user_id: int, points: int = 25, unique: str | None = None) -> Decision:
    envelope = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=user_id,
        action_type="daily_login",
        action_data={},
        nonce=uuid.uuid4().hex,
        received_at_ms=1_764_500_000_000,
    )
    key = None if unique is None else UniqueKey(unique, "once a day")
    return Decision(envelope, Outcome("completed", points), unique=key)


def test_a_suspended_users_new_action_is_refused_and_takes_no_key() -> None:
    mine, theirs = completed(1, unique="2026-12-06"), completed(2, unique="2026-12-06")
    plan = plan_commit([mine, theirs], {1: 100, 2: 50}, [], suspended={1})
    refused, counted = plan.settled
    assert (refused.outcome.status, refused.outcome.error, refused.outcome.message) == (
        "rejected",
        "account_suspended",
        SUSPENDED_MESSAGE,
    )
    assert (refused.outcome.score_delta, refused.outcome.new_score) == (0, 100)
    assert (counted.outcome.status, counted.outcome.new_score) == ("completed", 75)
    assert [key.user_id for key in plan.taken_keys] == [2]
    assert plan.score_changes()[1].delta == 0


def test_a_redelivery_keeps_its_stored_outcome_and_unsuspended_users_count() -> None:
    earlier = completed(1)
    stored = StoredAction(
        earlier.envelope.action_id,
        1,
        earlier.envelope.nonce,
        Outcome("completed", 25, 125),
    )
    plan = plan_commit([earlier, completed(1)], {1: 125}, [stored], suspended={1})
    assert plan.settled[0].outcome.status == "completed"
    assert plan.settled[0].duplicate
    assert plan.settled[1].outcome.error == "account_suspended"
    assert plan_commit([completed(1)], {1: 125}, []).settled[0].outcome.new_score == 150
