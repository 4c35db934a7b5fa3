"""Fixtures for tests against the real PostgreSQL, Redis and RabbitMQ, and the embedded backends.

Each test run gets its own database (cloned per test from a migrated template), its own RabbitMQ
vhost, and its own Redis key prefix, so runs never see each other's data. A missing service is a
failure, never a skip: the suite is about the real stack.

The contract suites (`CONTRACT_SUITES`) run twice, parametrized by `backend_mode`: against the
real backends and against the embedded ones (a fresh SQLite data directory per test). The other
tests that take `config` drive a real service directly and run against the real backends only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from scoreboard.config import Config, load_config

PG_ADMIN_URL = os.environ.get(
    "SCOREBOARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("SCOREBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_HOST = os.environ.get("SCOREBOARD_TEST_AMQP_HOST", "127.0.0.1:5672")
RUN_ID = uuid.uuid4().hex[:8]

BACKEND_MODES = ("real", "embedded")
CONTRACT_SUITES = (
    "tests/http/",
    "tests/fuzz/",
    "tests/e2e/test_pipeline.py",
    "tests/e2e/test_slow_client.py",
)
# Tests of a contract suite that reach into RabbitMQ itself (rabbitmqctl delete_queue), or run
# the API and worker roles apart, which only the real backends can (embedded mode is one process).
REAL_ONLY_TESTS = frozenset(
    {
        "test_503_when_the_broker_cannot_confirm_then_the_same_nonce_is_accepted",
        "test_actions_are_scored_again_once_a_deleted_queue_is_back",
        "test_the_status_is_accepted_until_a_worker_scores_it",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_mode" not in metafunc.fixturenames:
        return
    path = metafunc.definition.path.relative_to(metafunc.config.rootpath).as_posix()
    if path.startswith(CONTRACT_SUITES) and metafunc.definition.originalname not in REAL_ONLY_TESTS:
        metafunc.parametrize("backend_mode", BACKEND_MODES, indirect=True)


@pytest.fixture
def backend_mode(request: pytest.FixtureRequest) -> str:
    """`real` unless the test is parametrized over `BACKEND_MODES`."""
    mode: str = getattr(request, "param", "real")
    return mode


def _require_port(name: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"{name} is not answering on {host}:{port} ({exc}); start it (see README)")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _pg_admin(*statements: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated database used as the template of each test's own database."""
    parts = urlsplit(PG_ADMIN_URL)
    _require_port("PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432)
    name = f"sbtest_{RUN_ID}_template"
    _pg_admin(f'CREATE DATABASE "{name}"')
    url = _with_database(PG_ADMIN_URL, name)
    from scoreboard.migrate import migrate

    trio.run(migrate, url)
    yield url
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"sbtest_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    template = urlsplit(pg_template).path.lstrip("/")
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _with_database(PG_ADMIN_URL, name)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    parts = urlsplit(REDIS_BASE_URL)
    _require_port("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    return REDIS_BASE_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"sbtest:{RUN_ID}:{uuid.uuid4().hex[:8]}:"
    yield prefix
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is needed to create the test vhost")
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_vhost_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test run's own, deleted afterwards."""
    host, _, port = AMQP_HOST.partition(":")
    _require_port("RabbitMQ", host, int(port or 5672))
    vhost = f"sbtest-{RUN_ID}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def amqp_names() -> dict[str, str]:
    """Queue and exchange names of this test's own inside the run's vhost."""
    tag = uuid.uuid4().hex[:8]
    return {
        "queue": f"user-actions-{tag}",
        "failed_queue": f"user-actions-{tag}.failed",
        "dead_letter_exchange": f"dlx-{tag}",
        "events_exchange": f"scoreboard.events-{tag}",
    }


@pytest.fixture
def config(request: pytest.FixtureRequest, backend_mode: str, tmp_path: Path) -> Config:
    """The server's configuration: pointed at this test's own database, prefix and queues, or,
    in embedded mode, at a data directory of its own."""
    # Tests register their players from one address, dozens a minute; the registration limits
    # have tests of their own (tests/http/test_account_limits.py), which set them.
    # A failing action waits before its next attempt: briefly in tests. Every test's requests
    # come from one address; the per-address limit has tests of its own, which set it.
    base = load_config(environ={}).replace(
        limits={"registrations_per_minute_per_ip": 10_000, "ip_requests_per_minute": 1_000_000},
        amqp={"retry_delays_ms": (200, 400)},
    )
    if backend_mode == "embedded":
        return base.replace(server={"port": 0}, embedded={"data_dir": str(tmp_path / "var")})
    return base.replace(
        server={"port": 0},
        database={"url": request.getfixturevalue("database_url"), "pool_min": 1, "pool_max": 4},
        redis={
            "url": request.getfixturevalue("redis_url"),
            "prefix": request.getfixturevalue("redis_prefix"),
        },
        amqp={
            "url": request.getfixturevalue("amqp_vhost_url"),
            **request.getfixturevalue("amqp_names"),
        },
    )
