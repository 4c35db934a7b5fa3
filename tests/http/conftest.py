"""The real application on port 0 against the real services, and clients that talk to it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import trio

from scoreboard.auth.tokens import issue_access_token
from scoreboard.config import Config
from scoreboard.server import ServerHandle, run_server

PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Player:
    user_id: int
    username: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def app_config(config: Config) -> Config:
    """The test configuration; tests override limits and timeouts through `config.replace`."""
    return config.replace(websocket={"auth_timeout_s": 1.0})


@pytest.fixture
async def server(app_config: Config, nursery: trio.Nursery) -> ServerHandle:
    with trio.fail_after(60):
        handle: ServerHandle = await nursery.start(run_server, app_config)
    return handle


@pytest.fixture
async def client(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    assert server.url is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def ops_client(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the server's operations listener."""
    assert server.ops_url is not None
    async with httpx.AsyncClient(base_url=server.ops_url, timeout=30) as http:
        yield http


def issue_token(
    server: ServerHandle, user_id: int, scope: str = "read write", ttl_s: int | None = None
) -> str:
    assert server.services is not None
    config = server.services.config
    if ttl_s is not None:
        config = config.replace(auth={"access_token_ttl_s": ttl_s})
    token, _claims = issue_access_token(
        server.services.keyring,
        config=config,
        user_id=user_id,
        client_id="scoreboard-web",
        scope=scope,
    )
    return token


async def new_player(
    client: httpx.AsyncClient, server: ServerHandle, scope: str = "read write"
) -> Player:
    username = f"p{uuid.uuid4().hex[:12]}"
    response = await client.post(
        "/api/v1/users",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201, response.text
    user_id = response.json()["user_id"]
    return Player(user_id, username, issue_token(server, user_id, scope))


def action(
    nonce: str | None = None, action_type: str = "complete_task", **data: object
) -> dict[str, object]:
    defaults: dict[str, object] = {
        # Fresh ids: the catalogue counts a task, and a match against one opponent, once.
        "complete_task": {
            "task_id": f"t-{uuid.uuid4().hex[:8]}",
            "completion_time": int(time.time()),
        },
        "win_match": {"match_id": f"m-{uuid.uuid4().hex[:8]}", "opponent_id": "o-1"},
        "daily_login": {"day": "2026-11-30"},
        "collect_item": {"item_id": "i-1", "quantity": 1},
    }[action_type]  # type: ignore[assignment]
    return {
        "action_type": action_type,
        "action_data": {**defaults, **data},
        "nonce": nonce or uuid.uuid4().hex,
    }
