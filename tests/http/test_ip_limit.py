"""The per-address request limit in one process, on both backends (the in-memory guard of
embedded mode, Redis on the real stack): 300 concurrent requests from one address, a forged
`X-Forwarded-For` on each, admit exactly the limit, and the rest are 429 with `Retry-After`.
The 1,000 requests across two API processes: tests/e2e/test_ip_limit.py."""

from __future__ import annotations

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.server import ServerHandle

LIMIT = 100
REQUESTS = 300


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(limits={"ip_requests_per_minute": LIMIT})


async def test_concurrent_requests_admit_exactly_the_limit(server: ServerHandle) -> None:
    assert server.url is not None
    statuses: list[int] = []
    retry_after: list[int] = []

    async def one(client: httpx.AsyncClient, index: int) -> None:
        forged = {"X-Forwarded-For": f"203.0.113.{index % 250}"}
        response = await client.get("/api/v1/actions/types", headers=forged)
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.append(int(response.headers["Retry-After"]))

    pool = httpx.Limits(max_connections=100)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60, limits=pool) as client,
        trio.open_nursery() as nursery,
    ):
        for index in range(REQUESTS):
            nursery.start_soon(one, client, index)
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == REQUESTS - LIMIT
    assert min(retry_after) >= 1
