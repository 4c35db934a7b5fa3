"""The operator's commands through the real console script: migrate, failed list / replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import trio

from scoreboard.config import Config
from scoreboard.records import ActionEnvelope
from scoreboard.server import ServerHandle
from tests.conftest import PG_ADMIN_URL
from tests.e2e.processes import server_environment
from tests.e2e.test_cli_verify import SCOREBOARD

UNKNOWN_USER_ID = 987_654_321


async def scoreboard(config: Config, *args: str) -> tuple[int, str]:
    env = server_environment(config, port=0, role="all", limits_enabled=True)
    result = await trio.run_process(
        [str(SCOREBOARD), *args], env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def drop_database(name: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(run())


async def test_migrate_creates_the_database_then_has_nothing_to_do(config: Config) -> None:
    name = f"sbtest_cli_{uuid.uuid4().hex[:10]}"
    url = config.database.url.rsplit("/", 1)[0] + f"/{name}"
    fresh = config.replace(database={"url": url})
    try:
        code, output = await scoreboard(fresh, "migrate")
        assert code == 0, output
        assert "migrations applied: 0001" in output
        code, output = await scoreboard(fresh, "migrate")
        assert code == 0, output
        assert "none (up to date)" in output
    finally:
        await trio.to_thread.run_sync(drop_database, name)


async def test_failed_actions_are_listed_with_their_reason_and_replayed(
    server: ServerHandle, client: httpx.AsyncClient, config: Config, tmp_path: Path
) -> None:
    assert server.services is not None
    poison = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=UNKNOWN_USER_ID,
        action_type="complete_task",
        action_data={"task_id": "t-1", "completion_time": int(time.time())},
        nonce=uuid.uuid4().hex,
        received_at_ms=time.time_ns() // 1_000_000,
    )
    await server.services.broker.publish_action(poison)
    with trio.fail_after(20):
        while True:
            code, output = await scoreboard(config, "failed", "list")
            assert code == 0, output
            if str(poison.action_id) in output:
                break
            await trio.sleep(0.2)
    assert f"unknown user {UNKNOWN_USER_ID}" in output

    code, output = await scoreboard(config, "failed", "replay")
    assert code == 0, output
    assert "replayed 1 action(s)" in output
    with trio.fail_after(20):
        while str(poison.action_id) not in (await scoreboard(config, "failed", "list"))[1]:
            await trio.sleep(0.2)
