"""The real backends for the actors' integration tests, and helpers to watch what they do.

Nothing here stands in for a backend: the store, board and broker are the production adapters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import redis
import trio

from scoreboard.adapters.interfaces import EVENTS_GAP
from scoreboard.adapters.postgres import PostgresStore
from scoreboard.adapters.rabbitmq import RabbitBroker
from scoreboard.adapters.redis import RedisBoard, board_keys
from scoreboard.bridge import Bridge
from scoreboard.catalogue import Catalogue
from scoreboard.config import Config
from scoreboard.records import Event
from scoreboard.server import worker_supervisor
from scoreboard.supervisor import Supervisor
from scoreboard.wire import decode_events


@dataclass
class Stack:
    config: Config
    catalogue: Catalogue
    bridge: Bridge
    store: PostgresStore
    board: RedisBoard
    broker: RabbitBroker

    def with_config(self, **sections: dict[str, object]) -> Stack:
        """The same backends, with the actors configured otherwise."""
        return dataclasses.replace(self, config=self.config.replace(**sections))

    async def new_user(self) -> int:
        name = f"u{uuid.uuid4().hex[:12]}"
        return await self.store.create_user(name, f"{name}@example.test", "argon2-hash")

    def drop_board(self) -> None:
        """What a Redis restart without persistence, or a FLUSHDB, does to the board."""
        client = redis.Redis.from_url(self.config.redis.url)
        try:
            client.delete(*board_keys(self.config.redis.prefix))
        finally:
            client.close()

    async def queue_depth(self) -> int:
        """Messages in the actions queue, ready or delivered and not yet acknowledged."""
        ctl = shutil.which("rabbitmqctl")
        assert ctl is not None
        vhost = unquote(urlsplit(self.config.amqp.url).path.lstrip("/"))
        done = await trio.run_process(
            [ctl, "-q", "list_queues", "-p", vhost, "name", "messages", "--formatter", "json"],
            capture_stdout=True,
        )
        depths = {queue["name"]: queue["messages"] for queue in json.loads(done.stdout)}
        return int(depths[self.config.amqp.queue])


@dataclass
class EventTap:
    """Everything on the events exchange, decoded, from the moment `tap_events` returns."""

    events: list[Event] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def wait_for(self, done: Callable[[list[Event]], bool], timeout_s: float = 30) -> None:
        with trio.fail_after(timeout_s):
            while not done(self.events):
                await self.arrived.wait()
                self.arrived = trio.Event()

    def of(self, kind: type[Event]) -> list[Event]:
        return [event for event in self.events if isinstance(event, kind)]


@asynccontextmanager
async def tap_events(broker: RabbitBroker) -> AsyncIterator[EventTap]:
    """Subscribe to the events exchange; returns once the subscription has started (the broker
    hands over `EVENTS_GAP`), so no event published afterwards is missed."""
    tap = EventTap()
    send, receive = trio.open_memory_channel[bytes](10_000)
    subscribed = trio.Event()

    async def collect() -> None:
        async for raw in receive:
            if raw == EVENTS_GAP:
                subscribed.set()
                continue
            tap.events.extend(decode_events(raw))
            tap.arrived.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(broker.consume_events, send))
        nursery.start_soon(collect)
        with trio.fail_after(10):
            await subscribed.wait()
        yield tap
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_worker(stack: Stack) -> AsyncIterator[Supervisor]:
    """The worker role as `scoreboard serve` runs it (`server.worker_supervisor`); leaving the
    block stops it, at whatever point its actors are."""
    worker = worker_supervisor(
        stack.config, stack.catalogue, store=stack.store, board=stack.board, broker=stack.broker
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        nursery.cancel_scope.cancel()
