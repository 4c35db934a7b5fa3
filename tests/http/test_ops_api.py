"""Operations endpoints on the operations listener and the public port, their token, the
Prometheus page and its counters against the actions performed, and the JSON shape of errors the
framework raises (unknown route, wrong method)."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player
from tests.prometheus import sample, samples, total

TOKEN = "ops-" + "t" * 40


async def test_healthz_on_both_ports(
    server: ServerHandle, client: httpx.AsyncClient, ops_client: httpx.AsyncClient
) -> None:
    for http in (client, ops_client):
        response = await http.get("/healthz")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "pid": os.getpid()}


async def test_readyz_reports_actors_and_backends(
    server: ServerHandle,
    client: httpx.AsyncClient,
    ops_client: httpx.AsyncClient,
    app_config: Config,
) -> None:
    for http in (client, ops_client):
        response = await http.get("/readyz")
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


async def test_ops_listener_is_on_loopback_apart_from_the_public_port(server: ServerHandle) -> None:
    assert server.ops_url is not None
    assert server.ops_url.startswith("http://127.0.0.1:")
    assert server.ops_url != server.url


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
    server: ServerHandle, ops_client: httpx.AsyncClient
) -> None:
    response = await ops_client.get("/api/v1/supervisor")
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
    for name in ("ops", "hub", "events", "http", "keeper", "scorer", "router", "consumer"):
        assert name in ids, (name, ids)
    # The per-user actors are one row with a count (and the busiest few, when busy).
    [users] = [actor for actor in actors if actor["id"] == "worker/router/users"]
    assert users["children"] == 0


async def test_metrics_and_supervisor_are_not_on_the_public_port(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    for path in ("/metrics", "/api/v1/supervisor"):
        response = await client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"] == "not_found"


async def test_metrics_parse_as_prometheus_text(
    server: ServerHandle, ops_client: httpx.AsyncClient
) -> None:
    response = await ops_client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert "version=0.0.4" in response.headers["content-type"]
    text = response.text
    found = samples(text)  # the parser raises on anything malformed
    assert found
    assert sample(text, "scoreboard_websocket_connections") == 0
    assert sample(text, "scoreboard_actor_running", actor="api/hub") == 1
    assert sample(text, "scoreboard_actor_restarts_total", actor="worker/scorer") == 0
    assert sample(text, "scoreboard_actor_children", actor="worker/router/users") == 0
    # Actors with an inbox have a depth; those without (the HTTP server, the janitor) have none.
    assert sample(text, "scoreboard_actor_inbox_depth", actor="worker/scorer") == 0
    assert sample(text, "scoreboard_actor_inbox_depth", actor="api/http") is None
    assert sample(text, "scoreboard_actor_inbox_depth", actor="worker/janitor") is None
    assert sample(text, "scoreboard_queue_depth", queue="failed") is not None
    assert any(name == "process_cpu_seconds_total" for name, _ in found) or os.name != "posix"


async def test_counters_match_the_actions_performed(
    server: ServerHandle, client: httpx.AsyncClient, ops_client: httpx.AsyncClient
) -> None:
    """Counters are deltas: every server of this test process shares the process's registry,
    as every API or worker process of a deployment has its own."""
    before = (await ops_client.get("/metrics")).text
    performed = 4
    for _ in range(performed):
        player = await new_player(client, server)
        body = action(action_type="daily_login")
        response = await client.post(
            "/api/v1/actions/perform", json=body, headers={**player.auth, "Prefer": "wait=10"}
        )
        assert response.status_code == 200, response.text
    # A replay (the same nonce) answers the stored outcome and counts nothing again.
    replay = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
    assert replay.status_code == 200, replay.text
    player = await new_player(client, server)
    refused = await client.post(
        "/api/v1/actions/perform", json={**action(), "nonce": "!"}, headers=player.auth
    )
    assert refused.status_code == 400, refused.text
    after = (await ops_client.get("/metrics")).text

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("scoreboard_actions_accepted_total", type="daily_login") == performed
    committed = grew("scoreboard_actions_committed_total", type="daily_login", status="completed")
    assert committed == performed
    assert grew("scoreboard_actions_refused_total", reason="invalid_request") == 1
    assert grew("scoreboard_action_commit_seconds_count") == performed
    assert grew("scoreboard_batch_size_count", stage="scorer") >= 1
    assert grew("scoreboard_actions_failed_total") == 0


async def test_ops_listener_survives_garbage_and_oversized_heads(server: ServerHandle) -> None:
    assert server.ops_url is not None
    host, port = server.ops_url.removeprefix("http://").rsplit(":", 1)
    for garbage in (
        b"\x00\xff" * 100 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70_000,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(garbage)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    answer = await stream.receive_some(4096)
                    assert not answer or answer.startswith(b"HTTP/1.1 4"), answer[:80]
    async with httpx.AsyncClient(base_url=server.ops_url) as ops:
        assert (await ops.get("/healthz")).status_code == 200


async def test_ops_listener_refuses_what_it_does_not_serve(server: ServerHandle) -> None:
    assert server.ops_url is not None
    async with httpx.AsyncClient(base_url=server.ops_url) as ops:
        response = await ops.get("/api/v1/leaderboard")
        assert response.status_code == 404, response.text
        response = await ops.post("/metrics", content=b"x" * 10_000)
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "GET, HEAD"
        response = await ops.head("/healthz")
        assert response.status_code == 200
        assert response.content == b""


class TestExposedOnThePublicPort:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(ops={"expose_on_public_port": True})

    async def test_public_port_serves_metrics_and_supervisor(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        assert sample(response.text, "scoreboard_websocket_connections") == 0
        response = await client.get("/api/v1/supervisor")
        assert response.status_code == 200, response.text
        assert response.json()["actors"]


class TestOpsToken:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(ops={"token": TOKEN, "expose_on_public_port": True})

    async def test_guarded_paths_need_the_token(
        self, server: ServerHandle, client: httpx.AsyncClient, ops_client: httpx.AsyncClient
    ) -> None:
        wrong = [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer " + TOKEN + "x"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer " + "é" * 5000},
        ]
        for http in (client, ops_client):
            for path in ("/metrics", "/api/v1/supervisor"):
                for headers in wrong:
                    try:
                        response = await http.get(path, headers=headers)
                    except UnicodeEncodeError:
                        continue  # httpx will not send it; the server never sees it
                    assert response.status_code in (401, 431), (path, headers, response.text)
                    if response.status_code == 401:
                        assert response.headers["www-authenticate"].startswith("Bearer")
                response = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 200, (path, response.text)
            # Probes need no token.
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200

    async def test_exception_text_only_with_the_token(
        self, server: ServerHandle, ops_client: httpx.AsyncClient
    ) -> None:
        secret = f"password=hunter2 {uuid.uuid4()}"
        server.supervisor.inject_crash("worker/janitor", RuntimeError(secret))

        async def janitor(headers: dict[str, str]) -> dict[str, object]:
            response = await ops_client.get("/api/v1/supervisor", headers=headers)
            assert response.status_code == 200, response.text
            return next(a for a in response.json()["actors"] if a["id"] == "worker/janitor")

        with trio.fail_after(10):
            while (await janitor({"Authorization": f"Bearer {TOKEN}"}))["restarts"] == 0:
                await trio.sleep(0.05)
        with_token = await janitor({"Authorization": f"Bearer {TOKEN}"})
        assert with_token["last_error"] == f"RuntimeError: {secret}"


class TestNoTokenHidesExceptionText:
    async def test_exception_type_only(
        self, server: ServerHandle, ops_client: httpx.AsyncClient
    ) -> None:
        server.supervisor.inject_crash("worker/janitor", RuntimeError("secret text"))
        with trio.fail_after(10):
            while True:
                response = await ops_client.get("/api/v1/supervisor")
                row = next(a for a in response.json()["actors"] if a["id"] == "worker/janitor")
                if row["restarts"]:
                    break
                await trio.sleep(0.05)
        assert row["last_error"] == "RuntimeError"
        assert "secret" not in response.text
        metrics = (await ops_client.get("/metrics")).text
        assert sample(metrics, "scoreboard_actor_restarts_total", actor="worker/janitor") == 1
        assert "secret" not in metrics


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


async def test_the_dashboard_and_the_docs_name_only_metrics_the_server_has(
    server: ServerHandle, ops_client: httpx.AsyncClient
) -> None:
    """`deploy/grafana/scoreboard.json` and `docs/operations.md` are built on these names: a
    renamed metric must not leave them pointing at nothing."""
    text = (await ops_client.get("/metrics")).text
    families = {family.name for family in text_string_to_metric_families(text)}
    for document, named in documented_metric_names().items():
        assert named, document
        for name in named:
            family = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert family in families, (document, name)


def documented_metric_names() -> dict[str, set[str]]:
    root = Path(__file__).resolve().parents[2]
    return {
        document: set(re.findall(r"\bscoreboard_[a-z_]+", (root / document).read_text()))
        for document in ("deploy/grafana/scoreboard.json", "docs/operations.md")
    }
