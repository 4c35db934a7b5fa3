"""A WebSocket client that never reads must not delay anyone else's updates."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.e2e.test_pipeline import ws_url
from tests.http.conftest import Player, action, new_player

ROUNDS = 40
STALLED_CLIENTS = 3


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(limits={"enabled": False})


class TimedWatcher:
    """Records when each leaderboard that shows `player` at a new score arrived."""

    def __init__(self, player: Player) -> None:
        self.player = player
        self.seen_at: dict[int, float] = {}

    async def run(self, server: ServerHandle, *, task_status: trio.TaskStatus[None]) -> None:
        assert server.url is not None
        async with open_websocket_url(
            ws_url(server), extra_headers=[(b"Origin", server.url.encode())]
        ) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": self.player.token}))
            task_status.started()
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] != "leaderboard_update":
                    continue
                for row in message["data"]["leaderboard"]:
                    if row["user_id"] == self.player.user_id and row["score"] not in self.seen_at:
                        self.seen_at[row["score"]] = time.monotonic()


async def stalled_client(
    server: ServerHandle, token: str, *, task_status: trio.TaskStatus[None]
) -> None:
    """Authenticates, then never reads again: trio-websocket stops reading the socket once its
    one-message queue is full, so the server's sends to it back up for real."""
    assert server.url is not None
    async with open_websocket_url(
        ws_url(server), extra_headers=[(b"Origin", server.url.encode())], message_queue_size=1
    ) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": token}))
        task_status.started()
        await trio.sleep_forever()


async def test_a_client_that_never_reads_does_not_delay_the_others(
    server: ServerHandle, client: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    actor = await new_player(client, server)
    watchers = [TimedWatcher(actor) for _ in range(5)]
    for watcher in watchers:
        await nursery.start(watcher.run, server)
    for _ in range(STALLED_CLIENTS):
        await nursery.start(stalled_client, server, (await new_player(client, server)).token)

    delays: list[float] = []
    for round_number in range(1, ROUNDS + 1):
        sent_at = time.monotonic()
        body = action(task_id=f"t-{round_number}")
        response = await client.post(
            "/api/v1/actions/perform", json=body, headers={**actor.auth, "Prefer": "wait=10"}
        )
        assert response.status_code == 200, response.text
        score = response.json()["new_score"]
        with trio.fail_after(5):
            while not all(score in w.seen_at for w in watchers):
                await trio.sleep(0.005)
        delays += [w.seen_at[score] - sent_at for w in watchers]
    delays.sort()
    p50, p95 = delays[len(delays) // 2], delays[int(len(delays) * 0.95)]
    print(f"\nupdate latency, {STALLED_CLIENTS} stalled clients: p50 {p50:.3f} s, p95 {p95:.3f} s")
    assert p95 < 2.0
