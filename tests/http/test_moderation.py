"""Behavioural flags through the running pipeline, and the moderation endpoints: a scripted
cheater is flagged with its evidence, normal players are not; flags are listed and cleared; a
suspended user's actions are refused and the user leaves the board until unsuspended."""

from __future__ import annotations

import functools
import random
import time
import uuid
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import REGISTRY

from scoreboard.anticheat.records import Flag, SharedAddressEvidence
from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import Player, action, issue_token, new_player

PERFORM = "/api/v1/actions/perform"
FLAGS = "/api/v1/admin/flags"
NORMAL_PLAYERS = 12
CHEATER_ACTIONS = 40  # win_match, 25 points each: 1,000 points in bursts of 10


@pytest.fixture
def app_config(config: Config) -> Config:
    # Limits off: every attempt reaches the worker (with them on, the API refuses a script's
    # repeats within the cooldown itself, and those refusals reach the flags only through the
    # audit trail). The growth flag scaled to a short run: a population of 10, 500 points, the
    # population's statistics recomputed on every attempt.
    return config.replace(
        limits={"enabled": False},
        anticheat={
            "growth_min_population": 10,
            "growth_min_points": 500,
            "growth_refresh_s": 0.001,
        },
    )


def sample(name: str, **labels: str) -> float:
    """A counter of this process's metrics registry (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def admin_headers(client: httpx.AsyncClient, server: ServerHandle) -> dict[str, str]:
    assert server.services is not None
    admin = await new_player(client, server)
    await server.services.store.set_admin(admin.username, True, 4_102_444_800_000)
    return {"Authorization": f"Bearer {issue_token(server, admin.user_id, 'read admin')}"}


async def perform(
    client: httpx.AsyncClient, player: Player, action_type: str, **data: str
) -> dict[str, Any]:
    response = await client.post(
        PERFORM,
        json=action(action_type=action_type, **data),
        headers=player.auth,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for_outcome(
    client: httpx.AsyncClient, player: Player, action_id: str
) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            response = await client.get(f"/api/v1/actions/{action_id}", headers=player.auth)
            body: dict[str, Any] = response.json()
            if body["status"] != "accepted":
                return body
            await trio.sleep(0.05)


async def flags_of(
    client: httpx.AsyncClient, admin: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    response = await client.get(FLAGS, params={"limit": "500", **params}, headers=admin)
    assert response.status_code == 200, response.text
    flags: list[dict[str, Any]] = response.json()["flags"]
    return flags


async def play_like_a_person(client: httpx.AsyncClient, player: Player, seed: int) -> None:
    rng = random.Random(seed)
    for turn in range(6):
        if rng.random() < 0.5:
            outcome = await perform(client, player, "collect_item", item_id=f"i{turn}")
        else:
            outcome = await perform(client, player, "daily_login", day=f"d{turn}")
        await wait_for_outcome(client, player, outcome["action_id"])
        await trio.sleep(rng.uniform(0.1, 0.4))


async def test_a_scripted_cheater_is_flagged_with_evidence_and_people_are_not(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    admin = await admin_headers(client, server)
    dropped_before = sample("scoreboard_flags_dropped_total")
    bursts_before = sample("scoreboard_flags_raised_total", kind="burst")
    people = [await new_player(client, server) for _ in range(NORMAL_PLAYERS)]
    async with trio.open_nursery() as nursery:
        for seed, person in enumerate(people):
            nursery.start_soon(play_like_a_person, client, person, seed)

    cheater = await new_player(client, server)
    for burst in range(CHEATER_ACTIONS // 10):
        async with trio.open_nursery() as nursery:
            for shot in range(10):
                nursery.start_soon(
                    functools.partial(
                        perform, client, cheater, "win_match", match_id=f"m{burst}-{shot}"
                    )
                )

    with trio.fail_after(30):
        while True:
            kinds = {
                flag["kind"] for flag in await flags_of(client, admin, user=str(cheater.user_id))
            }
            if {"burst", "score_growth"} <= kinds:
                break
            await trio.sleep(0.1)
    cheater_flags = {
        flag["kind"]: flag for flag in await flags_of(client, admin, user=str(cheater.user_id))
    }
    burst_flag = cheater_flags["burst"]
    assert burst_flag["subject"] == f"user:{cheater.user_id}"
    assert burst_flag["address"] in ("127.0.0.1", "::1")
    assert burst_flag["cleared_at_ms"] is None
    assert burst_flag["evidence"]["actions"] >= 5
    assert burst_flag["evidence"]["span_ms"] <= 300
    assert burst_flag["evidence"]["action_types"] == ["win_match"]
    growth = cheater_flags["score_growth"]["evidence"]
    assert growth["points"] >= 500
    assert growth["robust_z"] >= 20
    assert growth["population"] >= 10

    every_flag = await flags_of(client, admin)
    people_ids = {person.user_id for person in people}
    assert [flag for flag in every_flag if flag["user_id"] in people_ids] == []
    # Every test client comes from the loopback address: more than 8 accounts from one address.
    shared = [flag for flag in every_flag if flag["kind"] == "shared_address"]
    assert len(shared) == 1
    assert shared[0]["user_id"] is None
    assert shared[0]["evidence"]["distinct_users"] >= 8

    assert sample("scoreboard_flags_dropped_total") == dropped_before
    assert sample("scoreboard_flags_raised_total", kind="burst") > bursts_before

    # Flags never change a score: the cheater's actions all count.
    with trio.fail_after(20):
        while (await client.get("/api/v1/leaderboard/me", headers=cheater.auth)).json()[
            "score"
        ] != 25 * CHEATER_ACTIONS:
            await trio.sleep(0.05)


async def test_listing_paging_filters_and_clearing(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    admin = await admin_headers(client, server)
    now = time.time_ns() // 1_000_000
    stored = [
        Flag(None, f"198.51.100.{n}", now - 1000, now, now - n, SharedAddressEvidence(8, (1, 2), 8))
        for n in range(5)
    ]
    ids = await server.services.store.add_flags(stored)
    assert ids == sorted(ids)

    first = await client.get(FLAGS, params={"limit": "2", "kind": "shared_address"}, headers=admin)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [flag["id"] for flag in page["flags"]] == ids[::-1][:2]
    assert page["next_before"] == ids[3]
    second = await client.get(
        FLAGS, params={"limit": "2", "before": str(page["next_before"])}, headers=admin
    )
    assert [flag["id"] for flag in second.json()["flags"]] == ids[::-1][2:4]
    assert page["flags"][0]["evidence"] == {
        "distinct_users": 8,
        "user_ids": [1, 2],
        "threshold_users": 8,
    }

    cleared = await client.post(f"{FLAGS}/{ids[0]}/clear", headers=admin)
    assert cleared.status_code == 200, cleared.text
    flag = cleared.json()["flag"]
    assert flag["cleared_at_ms"] is not None
    assert flag["cleared_by"].startswith("user:")
    # Replayed: the flag as it is, cleared once.
    again = await client.post(f"{FLAGS}/{ids[0]}/clear", headers=admin)
    assert again.json()["flag"] == flag
    standing = await flags_of(client, admin, standing="true", kind="shared_address")
    assert ids[0] not in {f["id"] for f in standing}
    assert (await client.post(f"{FLAGS}/999999999/clear", headers=admin)).status_code == 404
    in_the_future = await flags_of(client, admin, since=str(now + 60_000))
    assert in_the_future == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"user": "-1"},
        {"user": "\uff11"},  # a fullwidth digit one
        {"before": "99999999999999999999"},
        {"kind": "cheating"},
        {"standing": "yes"},
        {"since": "yesterday"},
        {"since": "2026-12-06T07:00:00"},
        {"colour": "red"},
    ],
)
async def test_malformed_queries_are_400(
    client: httpx.AsyncClient, server: ServerHandle, params: dict[str, str]
) -> None:
    admin = await admin_headers(client, server)
    response = await client.get(FLAGS, params=params, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


async def test_the_moderation_endpoints_need_an_admin(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    for method, path in [
        ("GET", FLAGS),
        ("POST", f"{FLAGS}/1/clear"),
        ("POST", f"/api/v1/admin/users/{player.user_id}/suspend"),
        ("POST", f"/api/v1/admin/users/{player.user_id}/unsuspend"),
    ]:
        assert (await client.request(method, path)).status_code == 401
        refused = await client.request(method, path, headers=player.auth)
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
    admin = await admin_headers(client, server)
    oversized = await client.post(f"{FLAGS}/1/clear", headers=admin, content=b"x" * 10_000)
    assert oversized.status_code == 413
    with_a_body = await client.post(f"{FLAGS}/1/clear", headers=admin, json={"why": "x"})
    assert with_a_body.status_code == 400


async def board_ids(client: httpx.AsyncClient) -> set[int]:
    response = await client.get("/api/v1/leaderboard", params={"limit": "100"})
    assert response.status_code == 200, response.text
    return {entry["user_id"] for entry in response.json()["leaderboard"]}


async def test_a_suspended_user_is_refused_and_off_the_board_until_unsuspended(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    admin = await admin_headers(client, server)
    player = await new_player(client, server)
    scored = await perform(client, player, "win_match")
    await wait_for_outcome(client, player, scored["action_id"])
    assert player.user_id in await board_ids(client)

    suspend = f"/api/v1/admin/users/{player.user_id}/suspend"
    suspended = await client.post(suspend, headers=admin)
    assert suspended.json() == {"user_id": player.user_id, "suspended": True, "changed": True}
    assert (await client.post(suspend, headers=admin)).json()["changed"] is False

    refused = await perform(client, player, "complete_task")
    outcome = await wait_for_outcome(client, player, refused["action_id"])
    assert outcome["status"] == "rejected", outcome
    assert outcome["error"] == "account_suspended"
    with trio.fail_after(20):
        while player.user_id in await board_ids(client):
            await trio.sleep(0.1)
    # Every rebuild of the board (the keeper's, the API's) leaves the user out.
    assert server.services is not None
    entries = await server.services.store.board_entries()
    assert player.user_id not in {entry.user_id for entry in entries}

    unsuspended = await client.post(
        f"/api/v1/admin/users/{player.user_id}/unsuspend", headers=admin
    )
    assert unsuspended.json()["changed"] is True
    with trio.fail_after(20):
        while player.user_id not in await board_ids(client):
            await trio.sleep(0.1)
    me = await client.get("/api/v1/leaderboard/me", headers=player.auth)
    assert me.json()["score"] == 25
    counted = await perform(client, player, "daily_login", day=uuid.uuid4().hex)
    assert (await wait_for_outcome(client, player, counted["action_id"]))["status"] == "completed"
    missing = await client.post("/api/v1/admin/users/999999999/suspend", headers=admin)
    assert missing.status_code == 404
