"""Dropping a test's own database connections, again and again: what a PostgreSQL restart or a
network cut does to a client, without touching the shared server (other runs use it)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg
import trio

from scoreboard.bridge import open_bridge
from tests.conftest import PG_ADMIN_URL

_TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid()
"""


class BackendTerminator:
    """`pg_terminate_backend` of every connection to one database (never another's), every
    `every_s`, from a connection to the maintenance database."""

    def __init__(self, database_url: str, every_s: float) -> None:
        self._database = unquote(urlsplit(database_url).path.lstrip("/"))
        assert self._database.startswith("sbtest_"), "only a test's own database"
        self._every_s = every_s
        self.terminated = 0
        self.rounds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_bridge() as bridge:
            connection = await bridge.run(asyncpg.connect, PG_ADMIN_URL)
            try:
                task_status.started()
                while True:
                    self.terminated += await bridge.run(
                        connection.fetchval, _TERMINATE, self._database
                    )
                    self.rounds += 1
                    await trio.sleep(self._every_s)
            finally:
                with trio.CancelScope(shield=True):
                    await bridge.run(connection.close)
