"""The acceptance run of the pipeline: 50 WebSocket clients watch 50 players perform 500 actions."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from scoreboard.config import Config
from scoreboard.records import ActionEnvelope
from scoreboard.server import ServerHandle
from scoreboard.verify import verify
from tests.http.conftest import Player, action, new_player

PLAYERS = 50
ACTIONS_PER_PLAYER = 10
WATCHERS = 50
CONCURRENT_REQUESTS = 25


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(limits={"enabled": False})


def ws_url(server: ServerHandle) -> str:
    assert server.url is not None
    return server.url.replace("http://", "ws://") + "/api/v1/ws"


class Watcher:
    """A WebSocket client that keeps the newest leaderboard it was sent."""

    def __init__(self) -> None:
        self.latest: list[dict[str, Any]] | None = None
        self.updates = 0

    async def run(
        self, server: ServerHandle, player: Player, *, task_status: trio.TaskStatus[None]
    ) -> None:
        assert server.url is not None
        async with open_websocket_url(
            ws_url(server), extra_headers=[(b"Origin", server.url.encode())]
        ) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": player.token}))
            first = json.loads(await ws.get_message())
            assert first["type"] == "auth_ok", first
            task_status.started()
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "leaderboard_update":
                    self.latest = message["data"]["leaderboard"]
                    self.updates += 1


async def perform_all(client: httpx.AsyncClient, players: list[Player]) -> list[str]:
    accepted: list[str] = []
    limiter = trio.Semaphore(CONCURRENT_REQUESTS)

    async def perform(player: Player, index: int) -> None:
        async with limiter:
            body = action(task_id=f"task-{index}")
            response = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
        assert response.status_code == 202, response.text
        accepted.append(response.json()["action_id"])

    async with trio.open_nursery() as nursery:
        for index in range(ACTIONS_PER_PLAYER):
            for player in players:
                nursery.start_soon(perform, player, index)
    return accepted


async def wait_until_processed(server: ServerHandle, action_ids: list[str]) -> None:
    assert server.services is not None
    store = server.services.store
    pending = {uuid.UUID(a) for a in action_ids}
    with trio.fail_after(60):
        while pending:
            for action_id in list(pending)[:200]:
                record = await store.get_action(action_id)
                if record is not None:
                    assert record.outcome.status == "completed", record
                    pending.discard(action_id)
            if pending:
                await trio.sleep(0.1)


async def test_fifty_watchers_see_the_final_board_and_every_action_counts_once(
    server: ServerHandle, client: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    assert server.services is not None
    players = [await new_player(client, server) for _ in range(PLAYERS)]
    watchers = [Watcher() for _ in range(WATCHERS)]
    for watcher, player in zip(watchers, players, strict=True):
        await nursery.start(watcher.run, server, player)

    accepted = await perform_all(client, players)
    assert len(accepted) == len(set(accepted)) == PLAYERS * ACTIONS_PER_PLAYER
    await wait_until_processed(server, accepted)

    store = server.services.store
    for player in players:
        user = await store.get_user(player.user_id)
        assert user is not None
        assert user.score == 10 * ACTIONS_PER_PLAYER
    report = await verify(store, server.services.board)
    assert report.ok, report.lines()

    final_top = (await client.get("/api/v1/leaderboard")).json()["leaderboard"]
    assert len(final_top) == 10
    with trio.fail_after(10):
        while any(w.latest != final_top for w in watchers):
            await trio.sleep(0.05)


async def test_a_redelivered_message_moves_the_score_once(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    envelope = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=player.user_id,
        action_type="complete_task",
        action_data=action()["action_data"],  # type: ignore[arg-type]
        nonce=uuid.uuid4().hex,
        received_at_ms=time.time_ns() // 1_000_000,
    )
    await server.services.broker.publish_action(envelope)
    await server.services.broker.publish_action(envelope)
    await wait_until_processed(server, [str(envelope.action_id)])
    with trio.fail_after(10):
        while True:
            user = await server.services.store.get_user(player.user_id)
            assert user is not None
            if user.score == 10:
                break
            await trio.sleep(0.05)
    await trio.sleep(1)
    user = await server.services.store.get_user(player.user_id)
    assert user is not None
    assert user.score == 10
    report = await verify(server.services.store, server.services.board)
    assert report.ok, report.lines()
