"""`scoreboard users grant-admin|revoke-admin` through the real console script, next to a
running server, on both backends."""

from __future__ import annotations

import httpx
import pytest

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.e2e.test_cli_oauth import cli
from tests.http.conftest import issue_token, new_player
from tests.http.oauth_client import GENEROUS_LIMITS


@pytest.fixture(params=["real", "embedded"])
def backend_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(oauth=GENEROUS_LIMITS)


async def test_grant_and_revoke_admin(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    player = await new_player(client, server)
    bearer = {"Authorization": f"Bearer {issue_token(server, player.user_id, 'read admin')}"}
    assert (await client.get("/api/v1/admin/me", headers=bearer)).status_code == 403

    granted = await cli(config, "users", "grant-admin", player.username)
    assert granted.returncode == 0, granted.stderr
    assert "may now be granted the admin scope" in granted.stdout
    assert (await client.get("/api/v1/admin/me", headers=bearer)).status_code == 200

    revoked = await cli(config, "users", "revoke-admin", player.username)
    assert revoked.returncode == 0, revoked.stderr
    assert (await client.get("/api/v1/admin/me", headers=bearer)).status_code == 403

    unknown = await cli(config, "users", "grant-admin", "nobody-here")
    assert unknown.returncode == 1
    assert "no user nobody-here" in unknown.stderr
