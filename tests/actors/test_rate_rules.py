"""The user actor's rules (its `Ledger`) against the shared table of rate cases."""

from __future__ import annotations

import uuid

import pytest

from scoreboard.actors.user import Ledger
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope
from tests.rate_rules import RATE_CASES, T0, RateCase

USER_ID = 7


@pytest.mark.parametrize("case", RATE_CASES, ids=lambda case: case.name)
def test_the_ledger_passes_the_rate_cases(case: RateCase) -> None:
    config = Config().replace(limits={"user_actions_per_minute": case.user_limit})
    ledger = Ledger(case.catalogue(), config)
    ledger.add_history(T0 - ledger.window_ms, [])
    for attempt in case.attempts:
        at_ms = T0 + attempt.after_ms
        assert ledger.history_needed_since(at_ms) is None
        decision = ledger.decide(
            ActionEnvelope(
                action_id=uuid.uuid4(),
                user_id=USER_ID,
                action_type=attempt.action_type,
                action_data={"item": "x"},
                nonce=uuid.uuid4().hex,
                received_at_ms=at_ms,
            )
        )
        if attempt.retry_after_s is None:
            assert (decision.outcome.status, decision.outcome.error) == ("completed", None), attempt
        else:
            assert (
                decision.outcome.status,
                decision.outcome.error,
                decision.outcome.retry_after_s,
            ) == (
                "rejected",
                "rate_limit_exceeded",
                attempt.retry_after_s,
            ), attempt
