import httpx
import trio

from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player


async def test_an_action_is_scored_end_to_end(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    response = await client.post(
        "/api/v1/actions/perform", json=action(), headers={**player.auth, "Prefer": "wait=10"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["new_score"] == 10
    with trio.fail_after(5):
        while True:
            board = (await client.get("/api/v1/leaderboard")).json()["leaderboard"]
            if board:
                break
            await trio.sleep(0.05)
    assert board[0]["user_id"] == player.user_id
    assert (await client.get("/readyz")).status_code == 200
