"""The fast tier: the whole server in this process on the embedded backends (SQLite in a fresh
data directory, the in-process broker and board), driven through Quart's test client.

No PostgreSQL, Redis or RabbitMQ, no sockets between client and application: a request is a
call into the application, so these tests take seconds. They check the application's answers;
the listener, the lean perform route and the WebSocket path are the real-service suites' job
(`tests/http/`, which also run on the embedded backends over real connections).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from scoreboard.auth.tokens import issue_access_token
from scoreboard.config import Config, load_config
from scoreboard.http.app import create_app
from scoreboard.http.services import Services
from scoreboard.server import ServerHandle, run_server
from tests.http.conftest import PASSWORD, Player


@pytest.fixture
def fast_config(tmp_path: Path) -> Config:
    return load_config(environ={}).replace(
        server={"port": 0},
        embedded={"data_dir": str(tmp_path / "var")},
        limits={"registrations_per_minute_per_ip": 10_000},
    )


@pytest.fixture
async def services(fast_config: Config, nursery: trio.Nursery) -> Services:
    with trio.fail_after(30):
        handle: ServerHandle = await nursery.start(run_server, fast_config)
    assert handle.services is not None
    return handle.services


@pytest.fixture
async def client(services: Services) -> AsyncIterator[Client]:
    app = create_app(services)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def new_player(client: Client, services: Services) -> Player:
    username = f"p{uuid.uuid4().hex[:12]}"
    response = await client.post(
        "/api/v1/users",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201, await response.get_data(as_text=True)
    user_id = (await response.get_json())["user_id"]
    token, _claims = issue_access_token(
        services.keyring,
        config=services.config,
        user_id=user_id,
        client_id="scoreboard-web",
        scope="read write",
    )
    return Player(user_id, username, token)
