"""The worker's actors while the database drops their connections again and again (the test's
own database, pg_terminate_backend in a loop): nothing crashes, no attempt is counted against
an action, and every action is scored exactly once."""

from __future__ import annotations

import logging

import pytest
import trio

from tests.actors.stack import Stack, running_worker, tap_events
from tests.actors.test_pipeline import (
    all_finished,
    assert_scored_exactly_once,
    drained,
    envelopes,
    finished_ids,
    publish,
)
from tests.pgfaults import BackendTerminator

pytestmark = pytest.mark.timeout(120)

TERMINATE_EVERY_S = 0.05
FAULT_S = 8.0


async def test_dropped_database_connections_count_no_attempt_and_crash_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    fast = stack.with_config(
        limits={"enabled": False}, amqp={"prefetch": 64}, scorer={"max_batch": 32}
    )
    users = [await fast.new_user() for _ in range(20)]
    items = envelopes(users, per_user=20, spacing_ms=1)
    await publish(fast, items)
    terminator = BackendTerminator(fast.config.database.url, TERMINATE_EVERY_S)
    with caplog.at_level(logging.WARNING):
        async with tap_events(fast.broker) as tap, running_worker(fast):
            async with trio.open_nursery() as faults:
                await faults.start(terminator.run)
                await trio.sleep(FAULT_S)
                faults.cancel_scope.cancel()
            scored_during_faults = len(finished_ids(tap))
            await all_finished(tap, items)
            await drained(fast)
    print(
        f"\n{terminator.terminated} connections terminated in {terminator.rounds} rounds; "
        f"{scored_during_faults} of {len(items)} actions scored during the faults"
    )
    assert terminator.terminated > 0
    refused = [r.getMessage() for r in caplog.records if "the store refused" in r.getMessage()]
    assert refused == []  # a dropped connection is no verdict on an action
    assert await fast.broker.list_failed(10) == []
    await assert_scored_exactly_once(fast, items)
