"""The API role's supervision on the real stack: trouble in an actor the HTTP server does not
need (the publisher, the events subscription, the revocations poll) restarts that actor only,
never the server with every connection on it."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player
from tests.http.test_ws_api import authenticate, connect, receive_until

pytestmark = pytest.mark.timeout(60)

BESIDE_HTTP = ("api/publisher", "api/events", "api/revocations")


def restarts_of(server: ServerHandle) -> dict[str, int]:
    return {record.id: record.restarts for record in server.supervisor.statistics()}


async def crash_and_wait_for_the_restart(server: ServerHandle, child: str) -> None:
    before = restarts_of(server)[child]
    server.supervisor.inject_crash(child, BackendUnavailable("a connection reset"))
    with trio.fail_after(20):
        while restarts_of(server)[child] == before or not server.supervisor.all_running:
            await trio.sleep(0.05)


async def test_a_crash_beside_the_http_server_keeps_every_connection(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        for child in BESIDE_HTTP:
            await crash_and_wait_for_the_restart(server, child)
            # The same WebSocket and the same keep-alive HTTP connection still answer.
            await socket.send_message(json.dumps({"type": "ping", "timestamp": 1}))
            await receive_until(socket, lambda frame: frame["type"] == "pong")
            assert (await client.get("/healthz")).status_code == 200
        restarts = restarts_of(server)
        assert restarts["api/http"] == 0, restarts
        assert restarts["api/hub"] == 0, restarts
        for child in BESIDE_HTTP:
            assert restarts[child] >= 1, restarts
        response = await client.post("/api/v1/actions/perform", json=action(), headers=player.auth)
        assert response.status_code == 202, response.text
