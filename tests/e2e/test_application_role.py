"""The whole server on the real stack, connected as an application role that `scoreboard
migrate` (as the schema's owner) granted its privileges: it starts, scores, records refusals
and failures and reads the audit trail, all without UPDATE or DELETE on the logs."""

from __future__ import annotations

import uuid

import httpx
import pytest

from scoreboard.bridge import open_bridge
from scoreboard.config import Config
from scoreboard.migrate import migrate_configured
from scoreboard.records import ActionEnvelope
from scoreboard.server import ServerHandle
from tests.adapters.test_append_only import app_role, as_role
from tests.adapters.test_postgres import sql
from tests.http.conftest import action, new_player
from tests.http.test_audit_api import PERFORM, bearer, new_admin, trail_until

__all__ = ["app_role"]


@pytest.fixture
async def app_config(config: Config, database_url: str, app_role: str) -> Config:
    split = config.replace(
        database={"url": as_role(database_url, app_role), "owner_url": database_url},
        websocket={"auth_timeout_s": 1.0},
    )
    await migrate_configured(split)
    return split


async def test_the_server_runs_whole_as_the_application_role(
    server: ServerHandle,
    client: httpx.AsyncClient,
    app_config: Config,
    database_url: str,
    app_role: str,
) -> None:
    assert server.services is not None
    assert app_config.database.url != app_config.database.owner_url
    admin = await new_admin(client, server)
    player = await new_player(client, server)
    answered = await client.post(PERFORM, json=action(), headers=bearer(player, Prefer="wait=5"))
    assert answered.status_code == 200, answered.text
    bad = {**action(), "action_data": {}}
    assert (await client.post(PERFORM, json=bad, headers=bearer(player))).status_code == 400
    poison = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=player.user_id,
        action_type="complete_task",
        action_data={"task_id": "t-poison"},
        nonce="poison-nonce-1",
        received_at_ms=1_764_500_000_000,
    )
    await server.services.store.fail_action(poison, "exhausted 3 attempts")
    entries = await trail_until(client, admin, player.username, 3)
    assert sorted(e["outcome"] for e in entries) == ["completed", "failed", "refused"]
    assert server.services.auditor.stats.dropped == 0
    async with open_bridge() as bridge:
        roles = await sql(
            bridge,
            database_url,
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    assert {row["usename"] for row in roles} == {app_role}
