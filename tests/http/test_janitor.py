"""The janitor in a running server (its worker side), on both backends: expired authorization
codes, refresh tokens, grants and deny-list entries disappear without anyone asking."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.records import AuthorizationCodeRecord, GrantRecord
from scoreboard.server import ServerHandle
from tests.http.conftest import new_player

RETENTION_S = 1.0


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(
        websocket={"auth_timeout_s": 1.0},
        janitor={"interval_s": 0.1, "batch_size": 2, "retention_s": RETENTION_S},
    )


async def test_expired_oauth_rows_are_deleted_by_the_running_server(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    assert server.services is not None
    store = server.services.store
    player = await new_player(client, server)
    now_ms = time.time_ns() // 1_000_000
    long_expired = now_ms - int(RETENTION_S * 1000) - 5_000
    grants = []
    for _ in range(5):
        grant = GrantRecord(str(uuid.uuid4()), "scoreboard-web", player.user_id, "read write")
        await store.save_authorization_code(
            AuthorizationCodeRecord(
                uuid.uuid4().hex, grant, "https://x/cb", None, None, long_expired
            )
        )
        grants.append(grant.grant_id)
    live = GrantRecord(str(uuid.uuid4()), "scoreboard-web", player.user_id, "read write")
    await store.save_authorization_code(
        AuthorizationCodeRecord(uuid.uuid4().hex, live, "https://x/cb", None, None, now_ms + 60_000)
    )
    await store.revoke(grant_ids=[], jtis=["old-jti"], expires_at_ms=now_ms - 1)

    async def grant_exists(grant_id: str) -> bool:
        # An already expired refresh token: the janitor deletes it along with the grant.
        return await store.add_refresh_token(grant_id, uuid.uuid4().hex, now_ms, long_expired)

    with trio.fail_after(15):
        while any([await grant_exists(grant_id) for grant_id in grants]):
            await trio.sleep(0.2)
    assert await store.add_refresh_token(live.grant_id, uuid.uuid4().hex, now_ms, now_ms + 60_000)
    assert server.ops_url is not None
    async with httpx.AsyncClient(base_url=server.ops_url) as ops:
        response = await ops.get("/api/v1/supervisor")
    janitor = next(actor for actor in response.json()["actors"] if "janitor" in actor["id"])
    assert janitor["state"] == "running", janitor
    assert janitor["restarts"] == 0, janitor
