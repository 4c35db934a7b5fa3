"""`/api/v1/leaderboard` and `/api/v1/leaderboard/me` against the real server (contract §3)."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import trio

from scoreboard.server import ServerHandle
from tests.http.conftest import Player, action, new_player

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
POINTS = {"complete_task": 10, "win_match": 25, "daily_login": 5, "collect_item": 2}


async def score(client: httpx.AsyncClient, player: Player, *action_types: str) -> int:
    """Perform these actions one by one, each waited for; the player's new score."""
    new_score = 0
    for action_type in action_types:
        response = await client.post(
            "/api/v1/actions/perform",
            json=action(action_type=action_type),
            headers={**player.auth, "Prefer": "wait=10"},
        )
        assert response.status_code == 200, response.text
        new_score = response.json()["new_score"]
    return new_score


async def board_when(
    client: httpx.AsyncClient, expected: list[tuple[int, int]], limit: int | None = None
) -> dict[str, Any]:
    """Poll until the board's (user_id, score) pairs are `expected`; the whole body."""
    params = {} if limit is None else {"limit": str(limit)}
    with trio.fail_after(10):
        while True:
            response = await client.get("/api/v1/leaderboard", params=params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if [(e["user_id"], e["score"]) for e in body["leaderboard"]] == expected:
                return body
            await trio.sleep(0.02)


def assert_rfc3339_utc(value: Any) -> datetime:
    assert isinstance(value, str), value
    assert RFC3339.match(value), value
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0)
    return moment


async def test_limit_must_be_an_integer_from_1_to_100(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    for bad in ("0", "101", "abc", "-1", "", "1.5", " 5", "+5", "1e2", "²", "٣", "0x10", "9" * 40):
        response = await client.get("/api/v1/leaderboard", params={"limit": bad})
        assert response.status_code == 400, (bad, response.text)
        body = response.json()
        assert body["success"] is False, body
        assert body["error"] == "invalid_request", body
        assert isinstance(body["message"], str), body
    for good in ("1", "100", "10", "007"):
        response = await client.get("/api/v1/leaderboard", params={"limit": good})
        assert response.status_code == 200, (good, response.text)


async def test_an_empty_leaderboard(server: ServerHandle, client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/leaderboard")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"leaderboard", "updated_at"}
    assert body["leaderboard"] == []
    assert_rfc3339_utc(body["updated_at"])


async def test_ordering_by_score_then_who_reached_it_first(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    a, b, c = [await new_player(client, server) for _ in range(3)]
    assert await score(client, a, "complete_task") == 10
    assert await score(client, b, "complete_task") == 10
    body = await board_when(client, [(a.user_id, 10), (b.user_id, 10)])
    assert body["leaderboard"] == [
        {"rank": 1, "user_id": a.user_id, "username": a.username, "score": 10},
        {"rank": 2, "user_id": b.user_id, "username": b.username, "score": 10},
    ]
    # B reaches 12 first, then A: B ranks above A although A reached 10 first.
    assert await score(client, b, "collect_item") == 12
    assert await score(client, a, "collect_item") == 12
    assert await score(client, c, "win_match") == 25
    body = await board_when(client, [(c.user_id, 25), (b.user_id, 12), (a.user_id, 12)])
    assert [e["rank"] for e in body["leaderboard"]] == [1, 2, 3]
    before = datetime.now(UTC)
    # updated_at moves with the board.
    first_update = assert_rfc3339_utc(body["updated_at"])
    assert first_update <= before + timedelta(seconds=1)
    assert await score(client, a, "daily_login") == 17
    body = await board_when(client, [(c.user_id, 25), (a.user_id, 17), (b.user_id, 12)])
    assert assert_rfc3339_utc(body["updated_at"]) >= first_update


async def test_the_default_is_the_top_10_and_limit_chooses_how_many(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    # Twelve players with distinct scores: sums of distinct action types.
    subsets = [
        combo
        for size in (1, 2, 3)
        for combo in itertools.combinations(POINTS, size)
        if sum(POINTS[t] for t in combo) not in (2, 5)  # keep the sums distinct
    ][:12]
    assert len({sum(POINTS[t] for t in combo) for combo in subsets}) == 12
    players = [await new_player(client, server) for _ in subsets]

    async def play(player: Player, combo: tuple[str, ...]) -> None:
        await score(client, player, *combo)

    async with trio.open_nursery() as nursery:
        for player, combo in zip(players, subsets, strict=True):
            nursery.start_soon(play, player, combo)
    ranked = sorted(
        ((p.user_id, sum(POINTS[t] for t in c)) for p, c in zip(players, subsets, strict=True)),
        key=lambda pair: -pair[1],
    )
    body = await board_when(client, ranked[:10])
    assert [e["rank"] for e in body["leaderboard"]] == list(range(1, 11))
    names = {p.user_id: p.username for p in players}
    assert all(e["username"] == names[e["user_id"]] for e in body["leaderboard"])
    assert all(set(e) == {"rank", "user_id", "username", "score"} for e in body["leaderboard"])
    body = await board_when(client, ranked, limit=100)
    body = await board_when(client, ranked[:3], limit=3)
    body = await board_when(client, ranked[:1], limit=1)

    # /me in the middle of the board: five neighbours each side.
    me_user_id = ranked[6][0]
    me = next(p for p in players if p.user_id == me_user_id)
    response = await client.get("/api/v1/leaderboard/me", headers=me.auth)
    assert response.status_code == 200, response.text
    view = response.json()
    assert set(view) == {"rank", "user_id", "username", "score", "above", "below"}
    assert view["rank"] == 7
    assert view["user_id"] == me.user_id
    assert view["username"] == me.username
    assert view["score"] == ranked[6][1]
    assert [(e["rank"], e["user_id"], e["score"]) for e in view["above"]] == [
        (rank, *ranked[rank - 1]) for rank in range(2, 7)
    ]
    assert [(e["rank"], e["user_id"], e["score"]) for e in view["below"]] == [
        (rank, *ranked[rank - 1]) for rank in range(8, 13)
    ]
    # The leader has nobody above; the last has nobody below.
    leader = next(p for p in players if p.user_id == ranked[0][0])
    view = (await client.get("/api/v1/leaderboard/me", headers=leader.auth)).json()
    assert view["rank"] == 1
    assert view["above"] == []
    assert [e["rank"] for e in view["below"]] == [2, 3, 4, 5, 6]
    last = next(p for p in players if p.user_id == ranked[-1][0])
    view = (await client.get("/api/v1/leaderboard/me", headers=last.auth)).json()
    assert view["rank"] == 12
    assert [e["rank"] for e in view["above"]] == [7, 8, 9, 10, 11]
    assert view["below"] == []


async def test_me_needs_a_bearer_token(server: ServerHandle, client: httpx.AsyncClient) -> None:
    player = await new_player(client, server, scope="read")
    for response in (
        await client.get("/api/v1/leaderboard/me"),
        await client.get("/api/v1/leaderboard/me", headers={"Authorization": "Bearer nope"}),
        await client.get(f"/api/v1/leaderboard/me?access_token={player.token}"),
    ):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert response.json()["error"] == "invalid_token"
    # A read-only token is enough.
    response = await client.get("/api/v1/leaderboard/me", headers=player.auth)
    assert response.status_code == 200, response.text


async def test_me_before_scoring(server: ServerHandle, client: httpx.AsyncClient) -> None:
    player = await new_player(client, server)
    response = await client.get("/api/v1/leaderboard/me", headers=player.auth)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "rank": None,
        "user_id": player.user_id,
        "username": player.username,
        "score": 0,
        "above": [],
        "below": [],
    }
