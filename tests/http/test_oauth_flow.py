"""The browser-style OAuth flow end to end against the real app on port 0 (contract §1, §4)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import new_player
from tests.http.oauth_client import (
    GENEROUS_LIMITS,
    new_authorization,
    obtain_code,
    redeem,
    refresh,
)


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(websocket={"auth_timeout_s": 1.0}, oauth=GENEROUS_LIMITS)


def ws_url(server: ServerHandle) -> str:
    assert server.url is not None
    return server.url.replace("http://", "ws://") + "/api/v1/ws"


async def test_the_whole_flow_from_login_form_to_revocation(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    authorization = new_authorization(server)
    code = await obtain_code(client, authorization, player.username)

    issued = await redeem(client, authorization, code)
    assert issued.status_code == 200, issued.text
    assert issued.headers["Cache-Control"] == "no-store"
    tokens = issued.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert tokens["scope"] == "read write"

    me = await client.get(
        "/api/v1/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 200, me.text
    assert me.json()["sub"] == str(player.user_id)

    assert server.url is not None
    origin = server.services.public_origin if server.services else ""
    async with open_websocket_url(
        ws_url(server), extra_headers=[(b"Origin", origin.encode())]
    ) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": tokens["access_token"]}))
        assert json.loads(await ws.get_message())["type"] == "auth_ok"

        refreshed = await refresh(client, tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        new_tokens = refreshed.json()
        assert new_tokens["refresh_token"] != tokens["refresh_token"]
        await ws.send_message(json.dumps({"type": "auth", "token": new_tokens["access_token"]}))
        while (frame := json.loads(await ws.get_message()))["type"] != "auth_ok":
            pass

        revoked = await client.post(
            "/api/v1/oauth/revoke",
            data={"token": new_tokens["refresh_token"], "token_type_hint": "refresh_token"},
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json() == {"revoked": True}
        with trio.fail_after(2):
            while (frame := json.loads(await ws.get_message()))["type"] != "error":
                pass
        assert frame == {"type": "error", "error": "token_revoked"}
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 4401

    after = await client.get(
        "/api/v1/oauth/userinfo",
        headers={"Authorization": f"Bearer {new_tokens['access_token']}"},
    )
    assert after.status_code == 401
    assert (await refresh(client, new_tokens["refresh_token"])).json()["error"] == "invalid_grant"


async def test_metadata_jwks_and_userinfo(client: httpx.AsyncClient, server: ServerHandle) -> None:
    assert server.services is not None
    origin = server.services.public_origin
    metadata = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["issuer"] == server.services.config.issuer
    assert metadata["authorization_endpoint"] == f"{origin}/api/v1/oauth/authorize"
    assert metadata["token_endpoint"] == f"{origin}/api/v1/oauth/token"
    assert metadata["revocation_endpoint"] == f"{origin}/api/v1/oauth/revoke"
    assert metadata["jwks_uri"] == f"{origin}/.well-known/jwks.json"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert metadata["response_types_supported"] == ["code"]

    keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
    assert [key["kid"] for key in keys] == ["key-1"]
    assert all("d" not in key and key["alg"] == "RS256" for key in keys)

    player = await new_player(client, server)
    me = await client.get("/api/v1/oauth/userinfo", headers=player.auth)
    assert me.json() == {
        "sub": str(player.user_id),
        "username": player.username,
        "email": f"{player.username}@example.com",
        "email_verified": False,
    }
    assert (await client.get("/api/v1/oauth/userinfo")).status_code == 401
