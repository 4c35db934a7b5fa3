"""Roles apart: two API processes and a worker; an action sent to one API reaches both APIs'
WebSocket clients (events travel over the RabbitMQ fanout exchange). An API that started before
the board existed sends it once it does, and one that was off the broker while the board changed
sends the change once it is back, with no event to bring either."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from scoreboard.config import Config
from tests.conftest import AMQP_HOST
from tests.e2e.processes import ServerProcess, access_token, registered_user, signing_keys
from tests.faultproxy import FaultProxy
from tests.http.conftest import action


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


async def tokens_for(config: Config, user_id: int, apis: list[ServerProcess]) -> list[str]:
    """An access token for each API (each is its own issuer, by its port)."""
    keys = await signing_keys(config)
    return [access_token(keys, config, api, user_id) for api in apis]


@asynccontextmanager
async def signed_in(api: ServerProcess, token: str) -> AsyncIterator[WebSocketConnection]:
    ws_url = api.url.replace("http://", "ws://") + "/api/v1/ws"
    async with open_websocket_url(ws_url, extra_headers=[(b"Origin", api.url.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": token}))
        yield ws


async def next_board(ws: WebSocketConnection) -> dict[int, int]:
    """The next leaderboard update's scores by user."""
    while (message := json.loads(await ws.get_message()))["type"] != "leaderboard_update":
        pass
    return {row["user_id"]: row["score"] for row in message["data"]["leaderboard"]}


async def first_leaderboard_with(api: ServerProcess, token: str, user_id: int, score: int) -> None:
    async with signed_in(api, token) as ws:
        while (await next_board(ws)).get(user_id) != score:
            pass


async def test_two_api_processes_both_broadcast_every_update(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    apis = [ServerProcess(config, tmp_path, role="api") for _ in range(2)]
    worker = ServerProcess(config, tmp_path, role="worker")
    processes.extend([*apis, worker])
    for process in processes:
        process.start()
    for process in processes:
        await process.wait_ready()

    async with httpx.AsyncClient(base_url=apis[0].url, timeout=30) as client:
        user_id = await registered_user(client)
        tokens = await tokens_for(config, user_id, apis)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for api, token in zip(apis, tokens, strict=True):
                    nursery.start_soon(first_leaderboard_with, api, token, user_id, 10)
                await trio.sleep(0.5)
                response = await client.post(
                    "/api/v1/actions/perform",
                    json=action(),
                    headers={"Authorization": f"Bearer {tokens[0]}"},
                )
                assert response.status_code == 202, response.text
    for process in processes:
        assert await process.terminate() == 0


async def test_an_api_that_started_without_the_board_sends_it_once_it_exists_without_an_event(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    """A fresh deployment: the API comes up before any keeper has built the board in Redis, and
    the board then appears with no update published that this API hears (the keeper's first one
    can go out before the API's events queue is bound; here the API's own REST read rebuilds
    it). A signed-in client gets the board all the same, though nothing else happens."""
    api = ServerProcess(config, tmp_path, role="api")
    processes.append(api)
    api.start()
    await api.wait_started(60)  # never ready: no worker consumes
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        (token,) = await tokens_for(config, await registered_user(client), [api])
        async with signed_in(api, token) as ws:
            with trio.move_on_after(1):
                await next_board(ws)
                raise AssertionError("a board before anyone built one")
            rebuilt = await client.get("/api/v1/leaderboard")
            assert rebuilt.status_code == 200, rebuilt.text
            # A hang guard: the events actor reads the board again within 5 s.
            with trio.fail_after(30):
                assert await next_board(ws) == {}
    assert rebuilt.json()["leaderboard"] == []
    assert "events: read the board after a gap in the events" in api.log()


async def test_a_change_made_while_an_api_was_off_the_broker_reaches_its_clients_when_it_is_back(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    """API A loses RabbitMQ (its own fault proxy); meanwhile API B accepts an action and the
    worker scores it, so A's subscription never hears the update. Once A is back on the broker,
    its client shows the new top 10 though nothing else happens."""
    host, _, port = AMQP_HOST.partition(":")
    proxy = FaultProxy(host, int(port or 5672))
    async with trio.open_nursery() as nursery:
        proxy.port = await nursery.start(proxy.serve)
        amqp = urlsplit(config.amqp.url)
        netloc = f"{amqp.username}:{amqp.password}@127.0.0.1:{proxy.port}"
        proxied = config.replace(amqp={"url": urlunsplit(amqp._replace(netloc=netloc))})
        cut_off = ServerProcess(proxied, tmp_path, role="api")
        direct = ServerProcess(config, tmp_path, role="api")
        worker = ServerProcess(config, tmp_path, role="worker")
        processes.extend([cut_off, direct, worker])
        for process in processes:
            process.start()
        for process in processes:
            await process.wait_ready(60)
        async with httpx.AsyncClient(base_url=direct.url, timeout=30) as client:
            user_id = await registered_user(client)
            cut_off_token, direct_token = await tokens_for(config, user_id, [cut_off, direct])
            async with signed_in(cut_off, cut_off_token) as ws:
                await next_board(ws)
                proxy.cut()
                response = await client.post(
                    "/api/v1/actions/perform",
                    json=action(),
                    headers={"Authorization": f"Bearer {direct_token}"},
                )
                assert response.status_code == 202, response.text
                with trio.fail_after(30):  # a hang guard: the worker scores it
                    while user_id not in [
                        row["user_id"]
                        for row in (await client.get("/api/v1/leaderboard")).json()["leaderboard"]
                    ]:
                        await trio.sleep(0.1)
                proxy.restore()
                with trio.fail_after(30):  # a hang guard: A subscribes again within seconds
                    while (await next_board(ws)).get(user_id) != 10:
                        pass
        nursery.cancel_scope.cancel()
