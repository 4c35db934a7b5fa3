"""The real backends for the actors' integration tests: each test gets its own database, Redis
prefix and queue names (tests/conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from scoreboard.adapters.postgres import open_postgres_store
from scoreboard.adapters.rabbitmq import open_rabbitmq
from scoreboard.adapters.redis import open_redis
from scoreboard.bridge import open_bridge
from scoreboard.catalogue import configured_catalogue
from scoreboard.config import Config
from tests.actors.stack import Stack


@pytest.fixture
async def stack(config: Config) -> AsyncIterator[Stack]:
    catalogue = configured_catalogue(config)
    async with contextlib.AsyncExitStack() as backends:
        with trio.fail_after(30):
            bridge = await backends.enter_async_context(open_bridge())
            store = await backends.enter_async_context(open_postgres_store(bridge, config.database))
            redis = await backends.enter_async_context(open_redis(bridge, config.redis))
            broker = await backends.enter_async_context(open_rabbitmq(bridge, config.amqp))
            await broker.declare_topology()
        yield Stack(config, catalogue, bridge, store, redis.board, broker)
