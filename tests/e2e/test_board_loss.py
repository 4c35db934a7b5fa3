"""The leaderboard after its Redis keys are lost (what a FLUSHDB or a Redis restart without
persistence does), on the real stack, with the server idle: never an empty 200."""

from __future__ import annotations

import httpx
import pytest
import redis
import trio

from scoreboard.adapters.redis import board_keys
from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import new_player
from tests.http.test_leaderboard_api import board_when, score

pytestmark = pytest.mark.timeout(60)


def drop_board(config: Config) -> None:
    """Delete this test's own board keys (its Redis prefix); nothing else is touched."""
    client = redis.Redis.from_url(config.redis.url)
    try:
        client.delete(*board_keys(config.redis.prefix))
    finally:
        client.close()


async def test_a_lost_board_is_rebuilt_at_once_never_served_empty(
    server: ServerHandle, client: httpx.AsyncClient, app_config: Config
) -> None:
    players = [await new_player(client, server) for _ in range(3)]
    for player, action_types in zip(players, (["win_match"], ["complete_task"], []), strict=True):
        await score(client, player, *action_types)
    expected = [(players[0].user_id, 25), (players[1].user_id, 10)]
    await board_when(client, expected)
    me = players[1]
    for _ in range(3):
        await trio.to_thread.run_sync(drop_board, app_config)
        # Many readers at once: the first rebuilds, the others wait their turn (503, Retry-After).
        answers: list[httpx.Response] = []

        async def read(
            path: str, headers: dict[str, str], answers: list[httpx.Response] = answers
        ) -> None:
            answers.append(await client.get(path, headers=headers))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(read, "/api/v1/leaderboard", {})
                nursery.start_soon(read, "/api/v1/leaderboard/me", me.auth)
        for response in answers:
            if response.status_code == 503:
                assert int(response.headers["Retry-After"]) >= 1
                continue
            assert response.status_code == 200, response.text
            body = response.json()
            if "leaderboard" in body:
                assert [(e["user_id"], e["score"]) for e in body["leaderboard"]] == expected
            else:
                assert (body["rank"], body["score"]) == (2, 10), body
        assert any(response.status_code == 200 for response in answers)
