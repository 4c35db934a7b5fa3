"""The API's answers when the broker does not confirm, on the real stack, with the broker
reached through a TCP proxy of the test's own (the shared RabbitMQ is never touched)."""

from __future__ import annotations

import json
import re
import shutil
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.server import ServerHandle, run_server
from tests.conftest import AMQP_HOST
from tests.faultproxy import FaultProxy
from tests.http.conftest import action, new_player
from tests.http.test_actions_api import assert_accepted, score_of, wait_for_status
from tests.http.test_ws_api import authenticate, connect, receive_until

pytestmark = pytest.mark.timeout(120)

PERFORM = "/api/v1/actions/perform"
PUBLISH_TIMEOUT_S = 1.0
POINTS = 10  # complete_task


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> FaultProxy:
    host, _, port = AMQP_HOST.partition(":")
    fault_proxy = FaultProxy(host, int(port or 5672))
    fault_proxy.port = await nursery.start(fault_proxy.serve)
    return fault_proxy


@pytest.fixture
def proxied_config(app_config: Config, proxy: FaultProxy) -> Config:
    parts = urlsplit(app_config.amqp.url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return app_config.replace(
        amqp={
            "url": urlunsplit(parts._replace(netloc=netloc)),
            "publish_timeout_s": PUBLISH_TIMEOUT_S,
        }
    )


@pytest.fixture
async def proxied_server(proxied_config: Config, nursery: trio.Nursery) -> ServerHandle:
    with trio.fail_after(60):
        handle: ServerHandle = await nursery.start(run_server, proxied_config)
    return handle


@pytest.fixture
async def proxied_client(proxied_server: ServerHandle) -> Any:
    assert proxied_server.url is not None
    async with httpx.AsyncClient(base_url=proxied_server.url, timeout=30) as http:
        yield http


async def rabbitmqctl(config: Config, *args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    vhost = unquote(urlsplit(config.amqp.url).path.lstrip("/"))
    done = await trio.run_process([ctl, "-q", *args, "-p", vhost], capture_stdout=True)
    return done.stdout.decode()


async def refuse_publishes(config: Config, refuse: bool) -> None:
    """A policy of this test's own queue: the broker nacks every publish to it (or no longer)."""
    name = f"refuse-{config.amqp.queue}"
    if refuse:
        pattern = f"^{re.escape(config.amqp.queue)}$"
        limits = '{"max-length": 0, "overflow": "reject-publish"}'
        await rabbitmqctl(config, "set_policy", "--apply-to", "queues", name, pattern, limits)
    else:
        await rabbitmqctl(config, "clear_policy", name)
    # The broker applies a policy asynchronously; the queue lists it once it has.
    with trio.fail_after(20):
        while (name in await rabbitmqctl(config, "list_queues", "name", "policy")) != refuse:
            await trio.sleep(0.1)


async def queued_messages(config: Config) -> int:
    listing = await rabbitmqctl(config, "list_queues", "name", "messages")
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        if name == config.amqp.queue:
            return int(count)
    raise AssertionError(listing)


async def test_a_503_for_a_queued_action_says_unknown_and_the_retry_gives_its_real_state(
    proxied_server: ServerHandle, proxied_client: httpx.AsyncClient, proxy: FaultProxy
) -> None:
    client = proxied_client
    player = await new_player(client, proxied_server)
    body = action()
    # The broker gets the message and confirms it, but the confirm does not come back in time.
    proxy.hold_replies()
    response = await client.post(PERFORM, json=body, headers=player.auth)
    proxy.restore()
    assert response.status_code == 503, response.text
    refusal = response.json()
    assert refusal["error"] == "unavailable"
    assert response.headers["Retry-After"] == str(refusal["retry_after"])

    # The retry with the same nonce answers the action that was queued, and it counts once.
    with trio.fail_after(30):
        while (
            retry := await client.post(PERFORM, json=body, headers=player.auth)
        ).status_code == 503:
            await trio.sleep(0.2)
    action_id = assert_accepted(retry, replayed=True)
    record = await wait_for_status(client, player, action_id, "completed")
    assert record["score_delta"] == POINTS
    again = await client.post(PERFORM, json=body, headers=player.auth)
    assert assert_accepted(again, replayed=True) == action_id
    await trio.sleep(0.5)  # the second copy of the message, if any, is consumed meanwhile
    assert await score_of(client, player) == POINTS
    assert proxied_server.services is not None
    stored = await proxied_server.services.store.find_action_by_nonce(
        player.user_id,
        body["nonce"],  # type: ignore[arg-type]
    )
    assert stored is not None
    assert str(stored.action_id) == action_id
    # And the 503 had said so.
    assert refusal["outcome"] == "unknown"
    assert "same nonce" in refusal["message"]


async def test_a_replay_before_the_confirm_answers_no_id_that_then_vanishes(
    proxied_server: ServerHandle,
    proxied_client: httpx.AsyncClient,
    proxied_config: Config,
    proxy: FaultProxy,
) -> None:
    client = proxied_client
    player = await new_player(client, proxied_server)
    body = action()
    await refuse_publishes(proxied_config, True)  # the broker will nack the publish ...
    proxy.hold_replies()  # ... but not before the replay has arrived
    answers: dict[str, httpx.Response] = {}

    async def perform(name: str) -> None:
        answers[name] = await client.post(PERFORM, json=body, headers=player.auth)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(perform, "first")
        await trio.sleep(0.3)  # the first request has claimed the nonce and is publishing
        nursery.start_soon(perform, "replay")
        await trio.sleep(0.3)
        proxy.restore()  # the nacks come back
    assert answers["first"].status_code == 503, answers["first"].text
    replay = answers["replay"]
    assert replay.status_code == 503, replay.text  # not 202 with an id that was never queued
    assert await queued_messages(proxied_config) == 0
    assert answers["first"].json()["outcome"] == "not_queued"

    # Once the broker takes messages again, the nonce gets the action queued, once.
    await refuse_publishes(proxied_config, False)
    with trio.fail_after(30):
        while (
            retry := await client.post(PERFORM, json=body, headers=player.auth)
        ).status_code == 503:
            await trio.sleep(0.2)
    action_id = retry.json()["action_id"]
    assert retry.status_code == 202, retry.text
    await wait_for_status(client, player, action_id, "completed")
    assert await score_of(client, player) == POINTS


async def test_over_the_websocket_an_unconfirmed_action_says_its_outcome_is_unknown(
    proxied_server: ServerHandle, proxied_client: httpx.AsyncClient, proxy: FaultProxy
) -> None:
    player = await new_player(proxied_client, proxied_server)
    frame = action()
    async with connect(proxied_server) as socket:
        await authenticate(socket, player)
        proxy.hold_replies()
        await socket.send_message(json.dumps({"type": "action", **frame}))
        result = await receive_until(socket, lambda f: f["type"] == "action_result")
        proxy.restore()
        data = result["data"]
        assert (data["error"], data["outcome"], data["action_id"]) == (
            "unavailable",
            "unknown",
            None,
        )
        # The same nonce again gets the action queued, once, with its id.
        await socket.send_message(json.dumps({"type": "action", **frame}))
        with trio.fail_after(30):
            while True:
                result = await receive_until(socket, lambda f: f["type"] == "action_result")
                if result["data"]["status"] != "rejected":
                    break
                await socket.send_message(json.dumps({"type": "action", **frame}))
        assert result["data"]["action_id"] is not None
    record = await wait_for_status(proxied_client, player, result["data"]["action_id"], "completed")
    assert record["score_delta"] == POINTS
