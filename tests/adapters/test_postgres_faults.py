"""The PostgreSQL store while its connections are dropped again and again (pg_terminate_backend
on the test's own database): every failure is `BackendUnavailable`, never a verdict on the data."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import trio

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.adapters.postgres import PostgresStore, open_postgres_store
from scoreboard.bridge import open_bridge
from tests.adapters.test_postgres import completed, envelope, new_user, pool_config
from tests.pgfaults import BackendTerminator

pytestmark = pytest.mark.timeout(60)

FAULT_S = 5.0
TERMINATE_EVERY_S = 0.02
CALLERS = 4


async def test_a_dropped_connection_is_always_backend_unavailable(database_url: str) -> None:
    async with (
        open_bridge() as bridge,
        open_postgres_store(bridge, pool_config(database_url)) as store,
    ):
        user_id = await new_user(store)
        outcomes: Counter[str] = Counter()

        async def calls(store: PostgresStore) -> list[Callable[[], Awaitable[object]]]:
            return [
                lambda: store.commit_actions([completed(envelope(user_id))]),
                lambda: store.recent_actions(user_id, 0),
                lambda: store.get_action(uuid.uuid4()),
                lambda: store.board_entries(),
                lambda: store.revocations(0),
                lambda: store.fail_action(envelope(user_id), "a reason"),
            ]

        async def caller() -> None:
            while True:
                for call in await calls(store):
                    try:
                        await call()
                    except BackendUnavailable:
                        outcomes["unavailable"] += 1
                    else:
                        outcomes["answered"] += 1

        terminator = BackendTerminator(database_url, TERMINATE_EVERY_S)
        async with trio.open_nursery() as nursery:
            await nursery.start(terminator.run)
            for _ in range(CALLERS):
                nursery.start_soon(caller)
            await trio.sleep(FAULT_S)
            nursery.cancel_scope.cancel()
        print(f"\n{dict(outcomes)}; {terminator.terminated} connections terminated")
        assert outcomes["unavailable"] > 0
        assert outcomes["answered"] > 0
        # And the pool is fine once the faults stop.
        with trio.fail_after(10):
            await store.ping()
            await store.commit_actions([completed(envelope(user_id))])
            assert await store.recent_actions(user_id, 0)
