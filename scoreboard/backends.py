"""Opening the three backends behind the asyncio bridge, in order, and closing them in reverse."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from scoreboard.adapters.interfaces import Board, Broker, EdgeGuard, Store
from scoreboard.adapters.postgres import open_postgres_store
from scoreboard.adapters.rabbitmq import open_rabbitmq
from scoreboard.adapters.redis import open_redis
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backends:
    bridge: Bridge
    store: Store
    board: Board
    guard: EdgeGuard
    broker: Broker


@contextlib.asynccontextmanager
async def open_backends(config: Config) -> AsyncIterator[Backends]:
    async with (
        open_bridge() as bridge,
        open_postgres_store(bridge, config.database) as store,
        open_redis(bridge, config.redis) as redis,
        open_rabbitmq(bridge, config.amqp) as broker,
    ):
        yield Backends(
            bridge=bridge, store=store, board=redis.board, guard=redis.guard, broker=broker
        )


STARTUP_RETRY_MIN_S = 0.5
STARTUP_RETRY_MAX_S = 10.0


async def wait_for_backends(config: Config) -> None:
    """Return once all three backends answer; log and back off while one is down at start-up."""
    delay = STARTUP_RETRY_MIN_S
    while True:
        try:
            async with open_backends(config) as backends:
                await backends.store.ping()
                await backends.board.ping()
                await backends.broker.ping()
        except Exception as exc:
            log.warning("backends not ready (%s); retrying in %.1f s", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, STARTUP_RETRY_MAX_S)
        else:
            return
