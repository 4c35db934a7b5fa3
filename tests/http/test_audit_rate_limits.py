"""Refusals of the edge's rate limits (429) reach the audit trail (the edge limits on, as
configured by default; tests/http/test_audit_api.py has the rest of the trail)."""

from __future__ import annotations

import httpx

from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player
from tests.http.test_audit_api import PERFORM, bearer, new_admin, trail_until


async def test_rate_limited_attempts_are_in_the_trail(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    admin = await new_admin(client, server)
    player = await new_player(client, server)
    statuses = [
        (await client.post(PERFORM, json=action(), headers=bearer(player))).status_code
        for _ in range(3)
    ]
    # The catalogue's cooldown: the first counts, the next two come too soon.
    assert statuses == [202, 429, 429]
    # The counted action and both refusals: the two kinds reach the trail by different ways,
    # so waiting for two entries could see the action and only one refusal.
    entries = await trail_until(client, admin, player.username, 3)
    refused = [e for e in entries if e["outcome"] == "refused"]
    assert [(e["status_code"], e["error"]) for e in refused] == [
        (429, "rate_limit_exceeded"),
        (429, "rate_limit_exceeded"),
    ]
