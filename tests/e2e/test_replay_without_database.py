"""A replayed nonce whose first answer was 202 is answered 202 again even while the database
drops every connection (the test's own database, pg_terminate_backend in a loop): that the
action is queued is known without it."""

from __future__ import annotations

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player
from tests.http.test_actions_api import assert_accepted
from tests.pgfaults import BackendTerminator

pytestmark = pytest.mark.timeout(60)

REPLAYS = 40


async def test_a_replay_of_an_accepted_action_needs_no_database(
    server: ServerHandle, client: httpx.AsyncClient, app_config: Config
) -> None:
    player = await new_player(client, server)
    body = action()
    action_id = assert_accepted(
        await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
    )
    terminator = BackendTerminator(app_config.database.url, every_s=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(terminator.run)
        for _ in range(REPLAYS):
            replay = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
            assert assert_accepted(replay, replayed=True) == action_id
        nursery.cancel_scope.cancel()
    assert terminator.terminated > 0
