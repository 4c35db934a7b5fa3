"""Operations endpoints of real `scoreboard serve` processes, through the real entry point: a
`--role worker` process (no public port) is observable on its operations listener, and the
counters of the API and worker processes match the actions performed; each child of
`--processes N` has its own operations port (`ops.port` + its index); `--log-format json` writes
JSON lines that carry an action's id from the HTTP request to its broadcast.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from scoreboard.config import Config
from tests.e2e.processes import ServerProcess, access_token, registered_user, signing_keys
from tests.http.conftest import action
from tests.prometheus import sample, samples, total

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


async def new_token(config: Config, server: ServerProcess) -> tuple[int, str]:
    """A new account registered through `server`, and an access token for it."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        user_id = await registered_user(client)
    return user_id, access_token(await signing_keys(config), config, server, user_id)


async def perform_and_wait(url: str, token: str) -> str:
    """One daily login, answered once scored; its action id."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post(
            "/api/v1/actions/perform",
            json=action(action_type="daily_login"),
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait=20"},
        )
    assert response.status_code == 200, response.text
    action_id: str = response.json()["action_id"]
    return action_id


async def get(url: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.get(path)


async def test_a_worker_process_is_observable_and_counters_match_the_actions(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    api = ServerProcess(config, tmp_path, role="api")
    worker = ServerProcess(config, tmp_path, role="worker")
    processes += [api, worker]
    for process in processes:
        process.start()
    for process in processes:
        await process.wait_ready(timeout_s=60)
    [api_ops] = api.ops_urls()
    [worker_ops] = worker.ops_urls()
    assert api_ops != worker_ops

    readiness = await get(worker_ops, "/readyz")
    assert readiness.status_code == 200, readiness.text
    assert readiness.json()["role"] == "worker"
    assert (await get(worker_ops, "/healthz")).status_code == 200
    actors = (await get(worker_ops, "/api/v1/supervisor")).json()["actors"]
    ids = {actor["id"] for actor in actors}
    assert {"ops", "worker/consumer", "worker/scorer", "worker/keeper"} <= ids, ids
    assert not any(actor_id.startswith("api/") for actor_id in ids), ids

    performed = 3
    for _ in range(performed):
        _user_id, token = await new_token(config, api)
        await perform_and_wait(api.url, token)

    api_metrics = (await get(api_ops, "/metrics")).text
    worker_metrics = (await get(worker_ops, "/metrics")).text
    print(f"api accepted {total(api_metrics, 'scoreboard_actions_accepted_total')}")
    print(f"worker committed {total(worker_metrics, 'scoreboard_actions_committed_total')}")
    assert total(api_metrics, "scoreboard_actions_accepted_total", type="daily_login") == performed
    assert total(worker_metrics, "scoreboard_actions_accepted_total") == 0
    committed = total(
        worker_metrics, "scoreboard_actions_committed_total", type="daily_login", status="completed"
    )
    assert committed == performed
    assert total(api_metrics, "scoreboard_actions_committed_total") == 0
    assert sample(worker_metrics, "scoreboard_actor_running", actor="worker/consumer") == 1
    assert sample(worker_metrics, "scoreboard_queue_depth", queue="failed") is not None
    assert sample(worker_metrics, "scoreboard_websocket_connections") is None  # no API role
    assert sample(api_metrics, "scoreboard_websocket_connections") == 0
    assert total(worker_metrics, "scoreboard_bridge_call_seconds_count") > 0
    # Nothing operational on the API's public port but the probes.
    assert (await get(api.url, "/metrics")).status_code == 404
    assert (await get(api.url, "/readyz")).status_code == 200


def consecutive_free_ports(count: int) -> int:
    """A port `p` such that `p` … `p + count - 1` are free on loopback just now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError("no run of free ports")


async def test_each_child_has_its_own_ops_port(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    base = consecutive_free_ports(3)
    server = ServerProcess(
        config,
        tmp_path,
        role="all",
        processes=2,
        environment={"SCOREBOARD_OPS_PORT": str(base)},
    )
    processes.append(server)
    server.start()
    await server.wait_ready(timeout_s=90)
    urls = sorted(server.ops_urls())
    assert urls == [f"http://127.0.0.1:{base + i}" for i in range(3)], server.log()
    roles = []
    for url in urls:
        response = await get(url, "/readyz")
        assert response.status_code == 200, response.text
        roles.append(response.json()["role"])
        samples((await get(url, "/metrics")).text)  # each parses
    assert sorted(roles) == ["api", "api", "worker"]


@pytest.mark.parametrize("backend_mode", ["embedded"], indirect=True)
async def test_json_logs_carry_the_action_id_from_http_to_broadcast(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    server = ServerProcess(
        config, tmp_path, role="all", arguments=["--log-level", "DEBUG", "--log-format", "json"]
    )
    processes.append(server)
    server.start()
    await server.wait_ready(timeout_s=60)
    _user_id, token = await new_token(config, server)
    action_id = await perform_and_wait(server.url, token)
    with trio.fail_after(10):
        while not any(
            line.get("logger") == "scoreboard.actors.hub" for line in about(server, action_id)
        ):
            await trio.sleep(0.05)
    lines = about(server, action_id)
    loggers = {line["logger"] for line in lines}
    assert {
        "scoreboard.intake",
        "scoreboard.actors.router",
        "scoreboard.actors.scorer",
        "scoreboard.actors.hub",
    } <= loggers, lines
    for line in lines:
        assert {"time", "level", "logger", "message", "pid"} <= set(line), line
    # Every log line is JSON; the rest of the output is the start-up announcement on stdout.
    text_lines = [row for row in server.log().splitlines() if row and not row.startswith("{")]
    assert not any(" INFO " in row or " DEBUG " in row for row in text_lines), text_lines


def about(server: ServerProcess, action_id: str) -> list[dict[str, Any]]:
    lines = []
    for row in server.log().splitlines():
        if row.startswith("{"):
            line = json.loads(row)
            if line.get("action_id") == action_id:
                lines.append(line)
    return lines
