"""The `admin` scope: granted only to users marked admin and only when asked for, and the
guard of the admin endpoints (401 without a token, 403 without the scope or the mark)."""

from __future__ import annotations

import httpx
import pytest

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import issue_token, new_player
from tests.http.oauth_client import (
    GENEROUS_LIMITS,
    new_authorization,
    query_of,
    redeem,
    refresh,
    sign_in,
)

ADMIN_ME = "/api/v1/admin/me"
REVOCATION_EXPIRY_MS = 4_102_444_800_000  # 2100-01-01


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(oauth=GENEROUS_LIMITS)


async def token_response(
    client: httpx.AsyncClient, server: ServerHandle, username: str, scope: str | None
) -> httpx.Response:
    authorization = new_authorization(server)
    signed_in = await sign_in(client, authorization.params(scope=scope), username)
    assert signed_in.status_code == 302, signed_in.text
    query = query_of(signed_in.headers["Location"])
    assert query["state"] == authorization.state
    if "code" not in query:
        return httpx.Response(400, json=query)
    return await redeem(client, authorization, query["code"])


async def make_admin(server: ServerHandle, username: str, admin: bool = True) -> list[str]:
    assert server.services is not None
    revoked = await server.services.store.set_admin(username, admin, REVOCATION_EXPIRY_MS)
    assert revoked is not None
    return revoked


async def test_a_user_who_is_not_an_admin_never_gets_the_scope(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    asked_all = await token_response(client, server, player.username, "read write admin")
    assert asked_all.status_code == 200, asked_all.text
    assert asked_all.json()["scope"] == "read write"
    bearer = {"Authorization": f"Bearer {asked_all.json()['access_token']}"}
    refused = await client.get(ADMIN_ME, headers=bearer)
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"

    asked_admin_only = await token_response(client, server, player.username, "admin")
    assert asked_admin_only.json() == {
        "error": "invalid_scope",
        "error_description": "this account may not have the requested scope",
        "state": asked_admin_only.json()["state"],
    }


async def test_an_admin_gets_the_scope_only_when_asking_for_it(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    await make_admin(server, player.username)

    by_default = await token_response(client, server, player.username, None)
    assert by_default.json()["scope"] == "read write"
    admin = await token_response(client, server, player.username, "read admin")
    assert admin.status_code == 200, admin.text
    assert admin.json()["scope"] == "read admin"
    bearer = {"Authorization": f"Bearer {admin.json()['access_token']}"}
    me = await client.get(ADMIN_ME, headers=bearer)
    assert me.status_code == 200, me.text
    assert me.json() == {"user_id": player.user_id, "scope": ["admin", "read"]}

    rotated = await refresh(client, admin.json()["refresh_token"])
    assert rotated.json()["scope"] == "read admin"


async def test_taking_the_mark_away_refuses_at_once_and_revokes_the_admin_grants(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    await make_admin(server, player.username)
    admin = (await token_response(client, server, player.username, "read admin")).json()
    plain = (await token_response(client, server, player.username, "read write")).json()

    revoked = await make_admin(server, player.username, admin=False)
    assert len(revoked) == 1
    bearer = {"Authorization": f"Bearer {admin['access_token']}"}
    assert (await client.get(ADMIN_ME, headers=bearer)).status_code in (401, 403)
    assert (await refresh(client, admin["refresh_token"])).json()["error"] == "invalid_grant"
    # The grant without the admin scope stands.
    assert (await refresh(client, plain["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "invalid_token"),
        ({"Authorization": "Bearer not-a-token"}, 401, "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "invalid_token"),
    ],
)
async def test_the_guard_without_a_valid_token(
    client: httpx.AsyncClient, headers: dict[str, str], status: int, error: str
) -> None:
    response = await client.get(ADMIN_ME, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_guard_without_the_scope_or_without_the_mark(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    await make_admin(server, player.username)
    without_scope = await client.get(ADMIN_ME, headers=player.auth)
    assert without_scope.status_code == 403
    assert without_scope.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="admin"'
    )
    # A token that carries the scope (however it was obtained) for an account without the mark.
    other = await new_player(client, server)
    forged_scope = {"Authorization": f"Bearer {issue_token(server, other.user_id, 'admin')}"}
    refused = await client.get(ADMIN_ME, headers=forged_scope)
    assert refused.status_code == 403
    assert refused.json()["message"] == "this account is not an admin"
