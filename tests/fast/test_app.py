"""The application's answers on the embedded backends, through Quart's test client."""

from __future__ import annotations

import time
import uuid

from quart.typing import TestClientProtocol as Client

from scoreboard.http.services import Services
from tests.fast.conftest import new_player


def action(nonce: str | None = None, **data: object) -> dict[str, object]:
    return {
        "action_type": "complete_task",
        "action_data": {"task_id": "t-1", "completion_time": int(time.time()), **data},
        "nonce": nonce or uuid.uuid4().hex,
    }


async def test_the_server_is_ready_and_describes_itself(client: Client) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200, await ready.get_data(as_text=True)
    document = await (await client.get("/openapi.json")).get_json()
    assert "/api/v1/actions/perform" in document["paths"]
    types = await (await client.get("/api/v1/actions/types")).get_json()
    assert "complete_task" in {entry["action_type"] for entry in types["action_types"]}


async def test_an_action_is_scored_and_shows_on_the_board(
    client: Client, services: Services
) -> None:
    player = await new_player(client, services)
    response = await client.post(
        "/api/v1/actions/perform",
        json=action(),
        headers={**player.auth, "Prefer": "wait=10"},
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert (body["success"], body["score_delta"], body["new_score"]) == (True, 10, 10)
    board = await (await client.get("/api/v1/leaderboard")).get_json()
    assert {"user_id": player.user_id, "username": player.username, "score": 10} in [
        {key: entry[key] for key in ("user_id", "username", "score")}
        for entry in board["leaderboard"]
    ]
    me = await (await client.get("/api/v1/leaderboard/me", headers=player.auth)).get_json()
    assert (me["user_id"], me["score"]) == (player.user_id, 10)


async def test_the_same_nonce_again_is_a_replay_with_the_first_action_id(
    client: Client, services: Services
) -> None:
    player = await new_player(client, services)
    body = action()
    first = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
    assert first.status_code == 202
    again = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["action_id"] == (await first.get_json())["action_id"]


async def test_the_cooldown_refuses_a_second_action_at_once(
    client: Client, services: Services
) -> None:
    player = await new_player(client, services)
    first = await client.post("/api/v1/actions/perform", json=action(), headers=player.auth)
    assert first.status_code == 202
    second = await client.post("/api/v1/actions/perform", json=action(), headers=player.auth)
    assert second.status_code == 429
    body = await second.get_json()
    assert (body["error"], second.headers["Retry-After"]) == (
        "rate_limit_exceeded",
        str(body["retry_after"]),
    )


async def test_bad_input_is_refused_and_stores_nothing(client: Client, services: Services) -> None:
    player = await new_player(client, services)
    unknown_field = {**action(), "score": 1_000_000}
    response = await client.post("/api/v1/actions/perform", json=unknown_field, headers=player.auth)
    assert (response.status_code, (await response.get_json())["error"]) == (400, "invalid_request")
    unauthorized = await client.post("/api/v1/actions/perform", json=action())
    assert unauthorized.status_code == 401
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")
    oversized = action(task_id="x" * 5000)
    response = await client.post("/api/v1/actions/perform", json=oversized, headers=player.auth)
    assert response.status_code == 413
    me = await (await client.get("/api/v1/leaderboard/me", headers=player.auth)).get_json()
    assert me["score"] == 0


async def test_a_registration_with_a_taken_name_is_a_conflict(
    client: Client, services: Services
) -> None:
    player = await new_player(client, services)
    response = await client.post(
        "/api/v1/users",
        json={
            "username": player.username,
            "email": f"other-{player.username}@example.com",
            "password": "correct horse battery",
        },
    )
    assert (response.status_code, (await response.get_json())["error"]) == (409, "username_taken")
