"""The audit trail for operators over HTTP (`GET /api/v1/admin/audit`): every attempt of a user
(settled by the worker, failed, refused at the edge over HTTP and the WebSocket) with its time,
type, delta, address, user agent and selected headers; paged with a cursor; admins only; and
malformed, oversized and replayed queries."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.records import ActionEnvelope
from scoreboard.server import ServerHandle
from tests.http.conftest import Player, action, issue_token, new_player
from tests.http.test_admin_scope import make_admin
from tests.http.test_ws_api import authenticate, connect, not_leaderboard, receive_until

AUDIT = "/api/v1/admin/audit"
PERFORM = "/api/v1/actions/perform"
USER_AGENT = "audit-test/1.0"
# The auditor writes refusals in batches, a moment after the answer: wait for them this long.
SETTLE_S = 20


@pytest.fixture
def app_config(config: Config) -> Config:
    # No limits at the edge: a repeated task reaches the worker, which refuses it
    # (test_audit_rate_limits.py has the edge's 429s).
    return config.replace(websocket={"auth_timeout_s": 1.0}, limits={"enabled": False})


async def new_admin(client: httpx.AsyncClient, server: ServerHandle) -> dict[str, str]:
    admin = await new_player(client, server)
    await make_admin(server, admin.username)
    token = issue_token(server, admin.user_id, "read write admin")
    return {"Authorization": f"Bearer {token}"}


def bearer(player: Player, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {player.token}", "User-Agent": USER_AGENT, **headers}


async def trail(
    client: httpx.AsyncClient, admin: dict[str, str], username: str, **params: str
) -> dict[str, Any]:
    response = await client.get(AUDIT, params={"user": username, **params}, headers=admin)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def trail_until(
    client: httpx.AsyncClient, admin: dict[str, str], username: str, count: int
) -> list[dict[str, Any]]:
    """The whole trail once it holds `count` entries (refusals arrive a moment later)."""
    entries: list[dict[str, Any]] = []
    with trio.move_on_after(SETTLE_S):
        while len(entries) < count:
            await trio.sleep(0.05)
            entries = (await trail(client, admin, username))["entries"]
    assert len(entries) >= count, [(e["outcome"], e["channel"], e["status_code"]) for e in entries]
    return entries


async def test_every_attempt_is_in_the_trail_newest_first(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    admin = await new_admin(client, server)
    player = await new_player(client, server)
    done = action()
    answered = await client.post(
        PERFORM, json=done, headers=bearer(player, Prefer="wait=5", **{"Accept-Language": "fr-CH"})
    )
    assert answered.status_code == 200, answered.text
    # The worker refuses the same task again (the catalogue counts it once).
    again = action(task_id=done["action_data"]["task_id"])  # type: ignore[index]
    refused_by_worker = await client.post(
        PERFORM, json=again, headers=bearer(player, Prefer="wait=5")
    )
    assert refused_by_worker.status_code in (422, 429), refused_by_worker.text
    # The edge refuses a malformed action, and a read-only token.
    malformed = {**action(), "action_data": {"task_id": "t-x"}}
    assert (await client.post(PERFORM, json=malformed, headers=bearer(player))).status_code == 400
    reader = Player(player.user_id, player.username, issue_token(server, player.user_id, "read"))
    assert (await client.post(PERFORM, json=action(), headers=bearer(reader))).status_code == 403
    # A refused action frame on the WebSocket.
    async with connect(server) as socket:
        await authenticate(socket, player)
        await socket.send_message(json.dumps({"type": "action", **action(), "extra": 1}))
        result = await receive_until(socket, not_leaderboard)
        assert result["data"]["status"] == "rejected", result
    # A failure the store recorded (what the worker does after the last attempt).
    failed = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=player.user_id,
        action_type="complete_task",
        action_data={"task_id": "t-f"},
        nonce="failed-nonce-1",
        received_at_ms=time.time_ns() // 1_000_000,
    )
    await server.services.store.fail_action(failed, "exhausted 3 attempts")

    entries = await trail_until(client, admin, player.username, 6)
    assert len(entries) == 6
    times = [entry["at"] for entry in entries]
    assert times == sorted(times, reverse=True)
    by_outcome: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_outcome.setdefault(entry["outcome"], []).append(entry)
    [completed] = by_outcome["completed"]
    assert (completed["action_type"], completed["nonce"], completed["score_delta"]) == (
        "complete_task",
        done["nonce"],
        10,
    )
    assert completed["user_agent"] == USER_AGENT
    assert completed["headers"]["accept-language"] == "fr-CH"
    assert completed["ip"]
    [rejected] = by_outcome["rejected"]
    assert (rejected["nonce"], rejected["score_delta"]) == (again["nonce"], 0)
    assert rejected["error"] == refused_by_worker.json()["error"]
    refusals = {(e["channel"], e["status_code"], e["error"]) for e in by_outcome["refused"]}
    assert refusals == {
        ("http", 400, "invalid_request"),
        ("http", 403, "insufficient_scope"),
        ("websocket", 400, "invalid_request"),
    }
    for refusal in by_outcome["refused"]:
        # The scope is checked before the body is read.
        read = refusal["status_code"] != 403
        assert refusal["action_type"] == ("complete_task" if read else None)
        assert refusal["user_agent"] == (USER_AGENT if refusal["channel"] == "http" else None)
        assert refusal["ip"]
    [failure] = by_outcome["failed"]
    assert (failure["nonce"], failure["message"]) == ("failed-nonce-1", "exhausted 3 attempts")
    stats = server.services.auditor.stats
    assert (stats.recorded, stats.dropped) == (3, 0)


async def test_pages_follow_the_cursor_without_gaps_or_repeats(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    admin = await new_admin(client, server)
    player = await new_player(client, server)
    for _ in range(7):
        bad = {**action(), "action_data": {}}
        assert (await client.post(PERFORM, json=bad, headers=bearer(player))).status_code == 400
    whole = await trail_until(client, admin, player.username, 7)
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await trail(client, admin, player.username, **params)
        # Replayed, the same query gives the same page.
        assert await trail(client, admin, player.username, **params) == page
        seen.extend(page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole
    assert [len(seen)] == [7]
    # `since` keeps the newer ones only.
    newest = whole[0]["at"]
    assert (await trail(client, admin, player.username, since=newest))["entries"][0] == whole[0]


async def test_only_an_admin_reads_the_trail(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    params = {"user": player.username}
    assert (await client.get(AUDIT, params=params)).status_code == 401
    forged = {"Authorization": "Bearer not.a.token"}
    assert (await client.get(AUDIT, params=params, headers=forged)).status_code == 401
    # A player's own token, even one claiming the scope without the account's admin mark.
    for scope in ("read write", "read write admin"):
        token = issue_token(server, player.user_id, scope)
        response = await client.get(
            AUDIT, params=params, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user": ""},
        {"user": "u" * 65},
        {"user": "x", "limit": "0"},
        {"user": "x", "limit": "501"},
        {"user": "x", "limit": "ten"},
        {"user": "x", "since": "yesterday"},
        {"user": "x", "since": "2026-12-06T07:00:00"},
        {"user": "x", "since": "9" * 41},
        {"user": "x", "cursor": "abc"},
        {"user": "x", "cursor": "99999999999999999999.1.1"},
        {"user": "x", "cursor": "1.7.1"},
        {"user": "x", "other": "1"},
    ],
)
async def test_malformed_or_oversized_queries_are_refused(
    client: httpx.AsyncClient, server: ServerHandle, params: dict[str, str]
) -> None:
    admin = await new_admin(client, server)
    response = await client.get(AUDIT, params=params, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


async def test_an_unknown_user_is_404_and_a_repeated_parameter_400(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    admin = await new_admin(client, server)
    response = await client.get(AUDIT, params={"user": "nobody-here"}, headers=admin)
    assert (response.status_code, response.json()["error"]) == (404, "not_found")
    response = await client.get(f"{AUDIT}?user=a&user=b", headers=admin)
    assert response.status_code == 400


async def test_a_replayed_action_is_one_entry(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    admin = await new_admin(client, server)
    player = await new_player(client, server)
    sent = action()
    for _ in range(3):
        response = await client.post(PERFORM, json=sent, headers=bearer(player, Prefer="wait=5"))
        assert response.status_code == 200, response.text
    entries = (await trail(client, admin, player.username))["entries"]
    assert [(e["outcome"], e["nonce"]) for e in entries] == [("completed", sent["nonce"])]
