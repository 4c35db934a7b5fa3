"""Backends of the benchmark's own, set up the way the test suite does it, so a benchmark never
touches the data of a running server or of a test run.

`bench_backends()` (the load-test matrix): one RabbitMQ vhost and one migrated template database
per session; each run then gets a database cloned from the template (dropped afterwards), a
Redis key prefix (its keys deleted afterwards) and queue and exchange names of its own inside the
vhost (deleted with it). `isolated_backends()` (the in-process benchmarks): one fresh database,
prefix and vhost, with a connection to the database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio
import trio

from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config, load_config
from scoreboard.migrate import migrate

PG_ADMIN_URL = os.environ.get(
    "SCOREBOARD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SCOREBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_HOST = os.environ.get("SCOREBOARD_BENCH_AMQP_HOST", "127.0.0.1:5672")
RABBITMQCTL_TIMEOUT_S = 60


class BackendMissing(RuntimeError):
    """A service the benchmark needs is not answering."""


@dataclass(frozen=True)
class IsolatedBackends:
    config: Config
    bridge: Bridge
    database: Any  # an asyncpg connection to the benchmark's database, used on `bridge`

    async def fetchrow(self, query: str, *args: object) -> Any:
        return await self.bridge.run(self.database.fetchrow, query, *args)


def _require_port(name: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        raise BackendMissing(f"{name} is not answering on {host}:{port} ({exc})") from None


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise BackendMissing("rabbitmqctl is needed to create the benchmark's vhost")
    with trio.fail_after(RABBITMQCTL_TIMEOUT_S):
        await trio.run_process([ctl, "-q", *args], capture_stdout=True, capture_stderr=True)


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _delete_prefixed_keys(url: str, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass(frozen=True)
class BenchBackends:
    """The session's vhost and template; `fresh()` makes one run's configuration."""

    bridge: Bridge
    session: str
    template: str
    amqp_url: str

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[Config]:
        """A configuration (port 0, limits off, WebSocket caps out of the way) on backends of
        its own: a database cloned from the template, a key prefix, queue names."""
        run = uuid.uuid4().hex[:8]
        database = f"sbbench_{self.session}_{run}"
        await self.bridge.run(_admin, f'CREATE DATABASE "{database}" TEMPLATE "{self.template}"')
        prefix = f"sbbench:{self.session}:{run}:"
        config = load_config(environ={}).replace(
            server={"port": 0},
            database={"url": _with_database(PG_ADMIN_URL, database)},
            redis={"url": REDIS_URL, "prefix": prefix},
            amqp={
                "url": self.amqp_url,
                "queue": f"user-actions-{run}",
                "failed_queue": f"user-actions-{run}.failed",
                "dead_letter_exchange": f"dlx-{run}",
                "events_exchange": f"scoreboard.events-{run}",
            },
            limits={"enabled": False},
            # Every benchmark client connects from 127.0.0.1, many as the same player.
            websocket={"max_connections_per_ip": 1_000_000, "max_connections_per_user": 1_000_000},
        )
        try:
            yield config
        finally:
            with trio.CancelScope(shield=True):
                await self.bridge.run(_admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                await self.bridge.run(_delete_prefixed_keys, REDIS_URL, prefix)


@contextlib.asynccontextmanager
async def bench_backends() -> AsyncIterator[BenchBackends]:
    pg = urlsplit(PG_ADMIN_URL)
    rd = urlsplit(REDIS_URL)
    amqp_host, _, amqp_port = AMQP_HOST.partition(":")
    _require_port("PostgreSQL", pg.hostname or "127.0.0.1", pg.port or 5432)
    _require_port("Redis", rd.hostname or "127.0.0.1", rd.port or 6379)
    _require_port("RabbitMQ", amqp_host, int(amqp_port or 5672))
    session = uuid.uuid4().hex[:8]
    template = f"sbbench_{session}_template"
    vhost = f"sbbench-{session}"
    async with open_bridge() as bridge:
        await _rabbitmqctl("add_vhost", vhost)
        try:
            await _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            await migrate(_with_database(PG_ADMIN_URL, template))  # creates it first
            yield BenchBackends(
                bridge, session, template, f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
            )
        finally:
            with trio.CancelScope(shield=True):
                await bridge.run(_admin, f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
                await _rabbitmqctl("delete_vhost", vhost)


@contextlib.asynccontextmanager
async def isolated_backends() -> AsyncIterator[IsolatedBackends]:
    """The benchmark's configuration (port 0, limits off) and a connection to its database."""
    pg = urlsplit(PG_ADMIN_URL)
    rd = urlsplit(REDIS_URL)
    amqp_host, _, amqp_port = AMQP_HOST.partition(":")
    _require_port("PostgreSQL", pg.hostname or "127.0.0.1", pg.port or 5432)
    _require_port("Redis", rd.hostname or "127.0.0.1", rd.port or 6379)
    _require_port("RabbitMQ", amqp_host, int(amqp_port or 5672))

    run_id = uuid.uuid4().hex[:8]
    database = f"sbbench_{run_id}"
    database_url = _with_database(PG_ADMIN_URL, database)
    prefix = f"sbbench:{run_id}:"
    vhost = f"sbbench-{run_id}"
    config = load_config(environ={}).replace(
        server={"port": 0},
        database={"url": database_url},
        redis={"url": REDIS_URL, "prefix": prefix},
        amqp={"url": f"amqp://guest:guest@{AMQP_HOST}/{vhost}"},
        limits={"enabled": False},
        # Every benchmark client connects from 127.0.0.1.
        websocket={"max_connections_per_ip": 1_000_000},
    )
    async with open_bridge() as bridge:
        await _rabbitmqctl("add_vhost", vhost)
        try:
            await _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            await migrate(database_url)  # creates the database first
            connection = await bridge.run(asyncpg.connect, database_url)
            try:
                yield IsolatedBackends(config, bridge, connection)
            finally:
                with trio.CancelScope(shield=True):
                    await bridge.run(connection.close)
        finally:
            with trio.CancelScope(shield=True):
                await bridge.run(_admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                await bridge.run(_delete_prefixed_keys, REDIS_URL, prefix)
                await _rabbitmqctl("delete_vhost", vhost)
