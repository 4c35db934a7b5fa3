"""Opening the backends, and closing them in reverse: the real ones (PostgreSQL, Redis and
RabbitMQ behind the asyncio bridge) or the embedded ones (SQLite, an in-process broker and an
in-memory board), as `Config.backend_mode` says."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import trio

from scoreboard.adapters.embedded_broker import EmbeddedBroker
from scoreboard.adapters.interfaces import Board, Broker, EdgeGuard, Store
from scoreboard.adapters.memory_board import MemoryBoard, MemoryEdgeGuard
from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.postgres import open_postgres_store
from scoreboard.adapters.rabbitmq import open_rabbitmq
from scoreboard.adapters.redis import open_redis
from scoreboard.adapters.sqlite import SQLiteStore, database_path, open_sqlite
from scoreboard.auth.key_encryption import load_key_encryption
from scoreboard.backoff import Backoff
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config, ConfigError
from scoreboard.private_files import private_directory, private_file

log = logging.getLogger(__name__)

SERVE_LOCK_FILE = "serve.lock"


@dataclass(frozen=True, slots=True)
class Backends:
    bridge: Bridge | None  # the asyncio bridge of the real backends; None in embedded mode
    store: Store
    board: Board
    guard: EdgeGuard
    broker: Broker


def describe_backends(config: Config) -> str:
    """One line for the log: which backends, and where (no credentials)."""
    if config.backend_mode == "embedded":
        return (
            f"embedded mode: SQLite {database_path(Path(config.embedded.data_dir))}, in-process "
            "broker, in-memory leaderboard (set SCOREBOARD_DATABASE_URL, SCOREBOARD_REDIS_URL and "
            "SCOREBOARD_AMQP_URL for PostgreSQL, Redis and RabbitMQ)"
        )
    where = ", ".join(
        f"{name} {_host(url)}"
        for name, url in (
            ("PostgreSQL", config.database.url),
            ("Redis", config.redis.url),
            ("RabbitMQ", config.amqp.url),
        )
    )
    return f"real backends: {where}"


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}{f':{parts.port}' if parts.port else ''}{parts.path}"


@contextlib.asynccontextmanager
async def open_backends(config: Config, *, exclusive: bool = True) -> AsyncIterator[Backends]:
    """The configured backends. In embedded mode `exclusive` keeps other processes that want
    it exclusive (another server) off the data directory: its board and broker live in one
    process. The CLI's `verify` and `failed` pass False."""
    if config.backend_mode == "embedded":
        async with _open_embedded(config, exclusive=exclusive) as backends:
            yield backends
        return
    key_encryption = load_key_encryption(config)
    async with (
        open_bridge() as bridge,
        open_postgres_store(bridge, config.database, key_encryption) as store,
        open_redis(bridge, config.redis) as redis,
        open_rabbitmq(bridge, config.amqp) as broker,
    ):
        yield Backends(
            bridge=bridge, store=store, board=redis.board, guard=redis.guard, broker=broker
        )


@contextlib.asynccontextmanager
async def _open_embedded(config: Config, *, exclusive: bool) -> AsyncIterator[Backends]:
    """SQLite (migrated on open), the outbox broker on the same file, and the board rebuilt
    from the store."""
    data_dir = Path(config.embedded.data_dir)
    with _held_exclusively(data_dir) if exclusive else contextlib.nullcontext():
        key_encryption = load_key_encryption(config)
        async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
            store = SQLiteStore(database, key_encryption)
            broker = EmbeddedBroker(database, config.amqp)
            board = MemoryBoard()
            await board.rebuild(await store.board_entries())
            yield Backends(
                bridge=None, store=store, board=board, guard=MemoryEdgeGuard(broker), broker=broker
            )


@contextlib.contextmanager
def _held_exclusively(data_dir: Path) -> Iterator[None]:
    private_directory(data_dir)
    private_file(data_dir / SERVE_LOCK_FILE)
    with (data_dir / SERVE_LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another scoreboard server uses {data_dir} (embedded mode runs in one process); "
                "stop it, or set SCOREBOARD_EMBEDDED_DATA_DIR to another directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


STARTUP_BACKOFF = Backoff(minimum=0.5, maximum=10.0)


async def wait_for_backends(config: Config) -> None:
    """Return once all three backends answer; log and back off while one is down at start-up.
    The embedded backends are files and memory: there is nothing to wait for."""
    if config.backend_mode == "embedded":
        return
    delays = STARTUP_BACKOFF.delays()
    while True:
        try:
            async with open_backends(config) as backends:
                await backends.store.ping()
                await backends.board.ping()
                await backends.broker.ping()
        except Exception as exc:
            delay = next(delays)
            log.warning("backends not ready (%s); retrying in %.1f s", exc, delay)
            await trio.sleep(delay)
        else:
            return
