"""What becomes of actions the database cannot take, on both backends alike (the tests run on
each): every one leaves its audit row with the reason; one the store refused is `failed`, and
an operator's `scoreboard failed replay`, once the cause is fixed, scores it exactly once."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio

from scoreboard.adapters.sqlite import database_path
from scoreboard.bridge import open_bridge
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope
from scoreboard.server import ServerHandle
from scoreboard.wire import decode_envelope
from tests.e2e.test_cli import scoreboard
from tests.http.conftest import Player, action, new_player

pytestmark = pytest.mark.timeout(90)

POINTS = 10  # complete_task
REFUSED_TASK = "t-refused"


def raw_envelope(player: Player, **data: Any) -> ActionEnvelope:
    """An action as it could reach the queue without passing this API's checks (an older API
    version, a tool that publishes directly)."""
    return ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=player.user_id,
        action_type="complete_task",
        action_data={"task_id": "t-1", "completion_time": int(time.time()), **data},
        nonce=uuid.uuid4().hex,
        received_at_ms=time.time_ns() // 1_000_000,
        user_agent="a test",
    )


async def action_state(
    client: httpx.AsyncClient, player: Player, action_id: str, *, until: str
) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            response = await client.get(f"/api/v1/actions/{action_id}", headers=player.auth)
            if response.status_code == 200 and response.json()["status"] == until:
                body: dict[str, Any] = response.json()
                return body
            assert response.status_code in (200, 404), response.text
            await trio.sleep(0.1)


async def score_of(server: ServerHandle, player: Player) -> int:
    assert server.services is not None
    user = await server.services.store.get_user(player.user_id)
    assert user is not None
    return user.score


async def test_an_action_holding_what_no_store_can_keep_is_rejected_with_its_audit_row(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    odd = {
        "task_id holds a control, format or surrogate character": raw_envelope(
            player, task_id="t-\x00-1"
        ),
        "user_agent holds the character U+0000": dataclasses.replace(
            raw_envelope(player), user_agent="curl\x00"
        ),
        "headers holds the character U+0000": dataclasses.replace(
            raw_envelope(player), headers={"x-forwarded-for": "203.0.113.9\x00"}
        ),
    }
    fine = raw_envelope(player, completion_time=int(time.time()) - 10)
    for envelope in (*odd.values(), fine):
        await server.services.broker.publish_action(envelope)
    for why, envelope in odd.items():
        record = await action_state(client, player, str(envelope.action_id), until="rejected")
        assert (record["error"], record["score_delta"]) == ("invalid_action", 0)
        assert why in record["message"], record
    await action_state(client, player, str(fine.action_id), until="completed")
    assert await score_of(server, player) == POINTS
    assert await server.services.broker.list_failed(10) == []


async def refuse_task(config: Config, refuse: bool) -> None:
    """A cause the operator can fix: the database refuses actions of one task (a constraint in
    the test's own PostgreSQL database, a trigger in its own SQLite file)."""
    if config.backend_mode == "embedded":
        statement = (
            "CREATE TRIGGER test_refuses BEFORE INSERT ON action_logs"
            f" WHEN json_extract(NEW.action_data, '$.task_id') = '{REFUSED_TASK}'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            if refuse
            else "DROP TRIGGER test_refuses"
        )

        def run() -> None:
            with sqlite3.connect(database_path(Path(config.embedded.data_dir))) as connection:
                connection.execute(statement)

        await trio.to_thread.run_sync(run)
        return
    statement = (
        "ALTER TABLE action_logs ADD CONSTRAINT test_refuses"
        f" CHECK ((action_data->>'task_id') IS DISTINCT FROM '{REFUSED_TASK}') NOT VALID"
        if refuse
        else "ALTER TABLE action_logs DROP CONSTRAINT test_refuses"
    )

    async def job() -> None:
        connection = await asyncpg.connect(config.database.url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async with open_bridge() as bridge:
        await bridge.run(job)


async def test_a_failed_action_replayed_once_its_cause_is_fixed_scores_once(
    server: ServerHandle, client: httpx.AsyncClient, app_config: Config
) -> None:
    player = await new_player(client, server)
    await refuse_task(app_config, True)
    body = action(task_id=REFUSED_TASK)
    response = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
    assert response.status_code == 202, response.text
    action_id = response.json()["action_id"]
    record = await action_state(client, player, action_id, until="failed")
    assert "the store refused the action" in record["message"], record
    code, output = await scoreboard(app_config, "failed", "list")
    assert code == 0, output
    assert action_id in output

    await refuse_task(app_config, False)  # the operator fixes the cause, then replays
    code, output = await scoreboard(app_config, "failed", "replay")
    assert code == 0, output
    assert "replayed 1 action(s)" in output
    record = await action_state(client, player, action_id, until="completed")
    assert record["score_delta"] == POINTS
    assert await score_of(server, player) == POINTS
    # Once: nothing is left to replay, and a copy of the message changes nothing.
    code, output = await scoreboard(app_config, "failed", "replay")
    assert "replayed 0 action(s)" in output
    assert server.services is not None
    copy = ActionEnvelope(
        action_id=uuid.UUID(action_id),
        user_id=player.user_id,
        action_type="complete_task",
        action_data=body["action_data"],  # type: ignore[arg-type]
        nonce=str(body["nonce"]),
        received_at_ms=time.time_ns() // 1_000_000,
    )
    await server.services.broker.publish_action(copy)
    await trio.sleep(1)
    assert await score_of(server, player) == POINTS


ATTEMPT_LOG = re.compile(r"scorer: the store refused action (\S+) \(attempt (\d+)\)")


def attempt_times(caplog: pytest.LogCaptureFixture) -> dict[str, list[float]]:
    """When the scorer saw each action refused, attempt by attempt (its log)."""
    times: dict[str, list[float]] = {}
    for record in caplog.records:
        if match := ATTEMPT_LOG.fullmatch(record.getMessage()):
            times.setdefault(match[1], []).append(record.created)
    return times


async def test_poison_actions_wait_longer_each_attempt_then_fail_and_replay_once(
    server: ServerHandle,
    client: httpx.AsyncClient,
    app_config: Config,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="scoreboard.actors.scorer")
    delays_s = [delay / 1000 for delay in app_config.amqp.retry_delays_ms]
    attempts = app_config.amqp.max_attempts
    assert (attempts, delays_s) == (3, [0.2, 0.4])  # growing, short for the test
    players = [await new_player(client, server) for _ in range(10)]
    await refuse_task(app_config, True)
    action_ids = []
    for player in players:
        response = await client.post(
            "/api/v1/actions/perform", json=action(task_id=REFUSED_TASK), headers=player.auth
        )
        assert response.status_code == 202, response.text
        action_ids.append(response.json()["action_id"])

    assert server.services is not None
    broker = server.services.broker
    with trio.fail_after(60):
        while len(letters := await broker.list_failed(100)) < len(players):
            await trio.sleep(0.1)
    reasons = {decode_envelope(body).action_id: reason for body, reason in letters}
    assert sorted(map(str, reasons)) == sorted(action_ids)
    assert all("the store refused the action" in reason for reason in reasons.values())
    times = attempt_times(caplog)
    for action_id in action_ids:
        seen = times[action_id]
        assert len(seen) == attempts, seen
        gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
        # Each wait is at least its configured delay: the broker holds the message that long.
        assert all(gap >= delay - 0.01 for gap, delay in zip(gaps, delays_s, strict=True)), gaps
        record = await action_state(
            client, players[action_ids.index(action_id)], action_id, until="failed"
        )
        assert "the store refused the action" in record["message"]

    await refuse_task(app_config, False)  # fixed: replay one action, twice
    fixed, fixed_player = action_ids[0], players[0]
    code, output = await scoreboard(app_config, "failed", "show", fixed)
    assert code == 0, output
    shown = json.loads(output)
    assert shown["action"]["action_id"] == fixed
    assert "the store refused the action" in shown["reason"]
    code, output = await scoreboard(app_config, "failed", "replay", "--action-id", fixed)
    assert code == 0, output
    assert output.startswith("replayed 1 action(s)"), output
    record = await action_state(client, fixed_player, fixed, until="completed")
    assert record["score_delta"] == POINTS
    code, output = await scoreboard(app_config, "failed", "replay", "--action-id", fixed)
    assert code == 0, output
    assert output.startswith("replayed 0 action(s)"), output
    await trio.sleep(0.5)
    assert await score_of(server, fixed_player) == POINTS
    assert len(await broker.list_failed(100)) == len(players) - 1

    code, output = await scoreboard(app_config, "failed", "show", str(uuid.uuid4()))
    assert code == 1
    code, output = await scoreboard(app_config, "failed", "purge", "--action-id", action_ids[1])
    assert code == 0, output
    assert output.startswith("purged 1 action(s)"), output
    code, output = await scoreboard(app_config, "failed", "purge", "--all")
    assert code == 0, output
    assert output.startswith(f"purged {len(players) - 2} action(s)"), output
    assert await broker.list_failed(100) == []
    for player in players[1:]:
        assert await score_of(server, player) == 0
