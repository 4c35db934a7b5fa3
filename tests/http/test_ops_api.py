"""Operations endpoints against the real server (contract §5), and the JSON shape of errors the
framework raises (unknown route, wrong method)."""

from __future__ import annotations

import os
import re

import httpx
import pytest

from scoreboard.config import Config
from scoreboard.server import ServerHandle

# One Prometheus text-format sample: a metric name, optional labels, a number.
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?'
    r" -?[0-9.eE+-]+$"
)


async def test_healthz(server: ServerHandle, client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "pid": os.getpid()}


async def test_readyz_reports_actors_and_backends(
    server: ServerHandle, client: httpx.AsyncClient, app_config: Config
) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True
    assert body["actors_running"] is True
    assert body["backend_mode"] == app_config.backend_mode
    expected = {
        "real": {"postgres": True, "redis": True, "rabbitmq": True},
        "embedded": {"sqlite": True, "memory_board": True, "sqlite_outbox": True},
    }[app_config.backend_mode]
    assert body["backends"] == expected
    assert body["limits_enabled"] is True
    assert "warning" not in body


class TestLimitsDisabled:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"auth_timeout_s": 1.0}, limits={"enabled": False})

    async def test_readyz_reports_disabled_limits(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["limits_enabled"] is False
        assert "SCOREBOARD_LIMITS_ENABLED" in body["warning"]


async def test_supervisor_lists_every_actor(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/v1/supervisor")
    assert response.status_code == 200, response.text
    actors = response.json()["actors"]
    assert isinstance(actors, list)
    assert actors
    for actor in actors:
        assert {"id", "state", "restarts", "last_error", "inbox_depth"} <= set(actor), actor
        assert actor["state"] == "running", actor
        assert actor["restarts"] == 0, actor
        assert actor["last_error"] is None, actor
    ids = " ".join(actor["id"] for actor in actors)
    for name in ("hub", "events", "http", "keeper", "scorer", "router", "consumer"):
        assert name in ids, (name, ids)


async def test_metrics_is_prometheus_text(server: ServerHandle, client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert "version=0.0.4" in response.headers["content-type"]
    text = response.text
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    samples = 0
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            declared[name] = kind
            continue
        assert SAMPLE.match(line), line
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        assert any(name == family or name.startswith(family + "_") for family in declared), line
        samples += 1
    assert samples
    assert "scoreboard_websocket_connections 0" in text.splitlines()


async def test_unknown_routes_and_methods_are_json_errors(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/v1/nope")
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"] == "not_found"
    response = await client.get("/api/v1/actions/perform")
    # GET on perform reads as an action id that is not a UUID, after authentication.
    assert response.status_code == 401, response.text
    response = await client.delete("/api/v1/leaderboard")
    assert response.status_code == 405, response.text
    assert response.json()["error"] == "method_not_allowed"
    response = await client.put("/api/v1/users", json={})
    assert response.status_code == 405, response.text
