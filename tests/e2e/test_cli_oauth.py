"""The operator's OAuth tools through the real console script, next to a running server:
`clients add|list|remove`, `users add|disable` (whose revocation closes the user's open
WebSocket within 2 s, from another process) and `keys rotate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.e2e.processes import server_environment
from tests.http.oauth_client import (
    GENEROUS_LIMITS,
    THIRD_PARTY_REDIRECT,
    new_authorization,
    obtain_code,
    redeem,
    refresh,
    sign_in,
)

SCOREBOARD = Path(sys.executable).parent / "scoreboard"
PASSWORD = "a long enough password"


@pytest.fixture(params=["real", "embedded"])
def backend_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(oauth={**GENEROUS_LIMITS, "key_refresh_s": 0.2})


async def cli(config: Config, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = server_environment(config, port=0, role="all", limits_enabled=True)
    result = await trio.run_process(
        [str(SCOREBOARD), *args],
        env=env,
        stdin=stdin.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def test_clients_users_and_keys_from_the_command_line(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    assert server.services is not None
    assert server.url is not None

    added = await cli(
        config, "clients", "add", "app-cli", "--type", "confidential",
        "--redirect-uri", THIRD_PARTY_REDIRECT,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    secret = next(
        line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("client_")
    )
    listed = await cli(config, "clients", "list")
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows[0][:2] == ["scoreboard-web", "public"]
    assert rows[0][3].endswith("/callback")
    assert ["app-cli", "confidential", "read write", THIRD_PARTY_REDIRECT] in [r[:4] for r in rows]

    created = await cli(
        config, "users", "add", "cliuser", "--email", "cliuser@example.com", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr

    authorization = new_authorization(server, "app-cli", THIRD_PARTY_REDIRECT)
    code = await obtain_code(client, authorization, "cliuser", PASSWORD)
    tokens = (await redeem(client, authorization, code, client_secret=secret)).json()
    ws_url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    origin = [(b"Origin", server.services.public_origin.encode())]
    async with open_websocket_url(ws_url, extra_headers=origin) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": tokens["access_token"]}))
        assert json.loads(await ws.get_message())["type"] == "auth_ok"
        disabled = await cli(config, "users", "disable", "cliuser")
        assert disabled.returncode == 0, disabled.stderr
        with trio.fail_after(2):
            while (frame := json.loads(await ws.get_message()))["type"] != "error":
                pass
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        assert frame == {"type": "error", "error": "token_revoked"}
        assert closed.value.reason is not None
        assert closed.value.reason.code == 4401
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await client.get("/api/v1/oauth/userinfo", headers=bearer)).status_code == 401
    refused = await refresh(client, tokens["refresh_token"], "app-cli")
    assert refused.status_code in (400, 401)
    assert (await sign_in(client, authorization.params(), "cliuser", PASSWORD)).status_code == 401

    assert (await cli(config, "clients", "remove", "app-cli")).returncode == 0
    assert (await cli(config, "clients", "remove", "app-cli")).returncode == 1
    assert (await cli(config, "clients", "remove", "scoreboard-web")).returncode == 1

    rotated = await cli(config, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "added signing key key-2" in rotated.stdout
    with trio.fail_after(5):
        while await published_kids(client) != ["key-1", "key-2"]:
            await trio.sleep(0.1)
    # key-1 keeps signing until key-2 has been published everywhere for key_activation_s.
    assert server.services.keyring.signer()[0] == "key-1"


async def published_kids(client: httpx.AsyncClient) -> list[str]:
    return [key["kid"] for key in (await client.get("/.well-known/jwks.json")).json()["keys"]]
