"""`scoreboard verify` through the real console script: 0 when consistent, non-zero otherwise."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import redis
import trio

from scoreboard.adapters.redis import board_keys
from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.e2e.processes import server_environment
from tests.http.conftest import action, new_player

SCOREBOARD = Path(sys.executable).parent / "scoreboard"


async def run_verify(config: Config) -> subprocess.CompletedProcess[str]:
    env = server_environment(config, port=0, role="all", limits_enabled=True)
    result = await trio.run_process(
        [str(SCOREBOARD), "verify"], env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def execute_sql(url: str, statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


async def test_verify_exits_zero_when_consistent_and_non_zero_on_any_difference(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    player = await new_player(client, server)
    response = await client.post(
        "/api/v1/actions/perform", json=action(), headers={**player.auth, "Prefer": "wait=10"}
    )
    assert response.status_code == 200, response.text

    result = await run_verify(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout

    await trio.to_thread.run_sync(
        execute_sql,
        config.database.url,
        f"UPDATE users SET score = score + 5 WHERE id = {player.user_id}",
    )
    result = await run_verify(config)
    assert result.returncode == 1
    assert f"user {player.user_id}: score 15 != sum of completed deltas 10" in result.stdout
    assert f"user {player.user_id}: postgres 15 != redis 10" in result.stdout

    await trio.to_thread.run_sync(
        execute_sql, config.database.url, f"UPDATE users SET score = 10 WHERE id = {player.user_id}"
    )
    assert (await run_verify(config)).returncode == 0

    cache = redis.Redis.from_url(config.redis.url)
    try:
        board = board_keys(config.redis.prefix)[0]
        members = cache.zrange(board, 0, -1)
        assert members
        first = members[0]
        assert isinstance(first, bytes)
        cache.zadd(board, {first: 999})
    finally:
        cache.close()
    result = await run_verify(config)
    assert result.returncode == 1
    assert "redis 999" in result.stdout
