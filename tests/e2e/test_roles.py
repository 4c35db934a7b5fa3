"""Roles apart: two API processes and a worker; an action sent to one API reaches both APIs'
WebSocket clients (events travel over the RabbitMQ fanout exchange). An API that started before
the board existed sends it once it does, and one that was off the broker while the board changed
sends the change once it is back, with no event to bring either."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import open_backends
from scoreboard.config import Config
from tests.conftest import AMQP_HOST
from tests.e2e.processes import ServerProcess
from tests.faultproxy import FaultProxy
from tests.http.conftest import PASSWORD, action


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


async def first_leaderboard_with(url: str, token: str, user_id: int, score: int) -> None:
    ws_url = url.replace("http://", "ws://") + "/api/v1/ws"
    async with open_websocket_url(ws_url, extra_headers=[(b"Origin", url.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": token}))
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] != "leaderboard_update":
                continue
            rows = {row["user_id"]: row["score"] for row in message["data"]["leaderboard"]}
            if rows.get(user_id) == score:
                return


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

    async with open_backends(config) as backends:
        keyring = await load_or_create_keyring(backends.store)
    async with httpx.AsyncClient(base_url=apis[0].url, timeout=30) as client:
        name = f"r{uuid.uuid4().hex[:12]}"
        response = await client.post(
            "/api/v1/users",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        user_id = response.json()["user_id"]
        tokens = [
            issue_access_token(
                keyring,
                config=config.replace(server={"port": api.port}),
                user_id=user_id,
                client_id="scoreboard-web",
                scope="read write",
            )[0]
            for api in apis
        ]
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for api, token in zip(apis, tokens, strict=True):
                    nursery.start_soon(first_leaderboard_with, api.url, token, user_id, 10)
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
    async with open_backends(config) as backends:
        keyring = await load_or_create_keyring(backends.store)
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        name = f"f{uuid.uuid4().hex[:12]}"
        response = await client.post(
            "/api/v1/users",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        assert response.status_code == 201, response.text
        token, _claims = issue_access_token(
            keyring,
            config=config.replace(server={"port": api.port}),
            user_id=response.json()["user_id"],
            client_id="scoreboard-web",
            scope="read write",
        )
        ws_url = api.url.replace("http://", "ws://") + "/api/v1/ws"
        async with open_websocket_url(ws_url, extra_headers=[(b"Origin", api.url.encode())]) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            with trio.move_on_after(1):
                while json.loads(await ws.get_message())["type"] != "leaderboard_update":
                    pass
                raise AssertionError("a board before anyone built one")
            rebuilt = await client.get("/api/v1/leaderboard")
            assert rebuilt.status_code == 200, rebuilt.text
            with trio.fail_after(
                30
            ):  # a hang guard: the events actor reads the board again within 5 s
                while (message := json.loads(await ws.get_message()))[
                    "type"
                ] != "leaderboard_update":
                    pass
    assert message["data"]["leaderboard"] == rebuilt.json()["leaderboard"] == []
    assert "events: subscribed; read the board" in api.log()


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
        async with open_backends(config) as backends:
            keyring = await load_or_create_keyring(backends.store)
        async with httpx.AsyncClient(base_url=direct.url, timeout=30) as client:
            name = f"o{uuid.uuid4().hex[:12]}"
            response = await client.post(
                "/api/v1/users",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            assert response.status_code == 201, response.text
            user_id = response.json()["user_id"]
            token_for = {
                api: issue_access_token(
                    keyring,
                    config=config.replace(server={"port": api.port}),
                    user_id=user_id,
                    client_id="scoreboard-web",
                    scope="read write",
                )[0]
                for api in (cut_off, direct)
            }
            ws_url = cut_off.url.replace("http://", "ws://") + "/api/v1/ws"
            async with open_websocket_url(
                ws_url, extra_headers=[(b"Origin", cut_off.url.encode())]
            ) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": token_for[cut_off]}))
                while json.loads(await ws.get_message())["type"] != "leaderboard_update":
                    pass
                proxy.cut()
                response = await client.post(
                    "/api/v1/actions/perform",
                    json=action(),
                    headers={"Authorization": f"Bearer {token_for[direct]}"},
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
                    while True:
                        message = json.loads(await ws.get_message())
                        if message["type"] != "leaderboard_update":
                            continue
                        rows = {r["user_id"]: r["score"] for r in message["data"]["leaderboard"]}
                        if rows.get(user_id) == 10:
                            break
        nursery.cancel_scope.cancel()
