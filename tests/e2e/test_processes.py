"""`scoreboard serve --processes 2` on the real stack, through the real entry point: two API
processes share the port (SO_REUSEPORT) and a worker scores; an update reaches the WebSocket
clients of both API processes; a child killed with SIGKILL is started again; SIGTERM stops all
of them and the parent exits 0.

Which process serves a connection is read from the kernel (`/proc/net/tcp` and each child's file
descriptors) for WebSockets, and from the `pid` of `/healthz` for plain requests.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from scoreboard.config import Config
from tests.e2e.processes import ServerProcess, access_token, registered_user, signing_keys
from tests.http.conftest import action

pytestmark = pytest.mark.timeout(180)

STARTED = re.compile(r"started child (\S+) \(pid (\d+)\)")
MAX_CONNECTIONS_TO_MEET_EVERY_CHILD = 64  # each lands on one of 2 children as the kernel hashes


@pytest.fixture
def server(config: Config, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(config, tmp_path, role="all", processes=2)
    yield process
    process.stop()
    for pid in children(process).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def children(server: ServerProcess) -> dict[str, int]:
    """The latest process id of each child, from the parent's log."""
    return {name: int(pid) for name, pid in STARTED.findall(server.log())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server side of the loopback connection from `client_port`."""
    wanted = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@asynccontextmanager
async def watcher(url: str, token: str) -> AsyncIterator[WebSocketConnection]:
    """An authenticated WebSocket that has received its first leaderboard."""
    ws_url = url.replace("http://", "ws://") + "/api/v1/ws"
    async with open_websocket_url(ws_url, extra_headers=[(b"Origin", url.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": token}))
        while json.loads(await ws.get_message())["type"] != "leaderboard_update":
            pass
        yield ws


async def wait_for_score(ws: WebSocketConnection, user_id: int, score: int) -> None:
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == "leaderboard_update":
            rows = {row["user_id"]: row["score"] for row in message["data"]["leaderboard"]}
            if rows.get(user_id) == score:
                return


async def healthz_pid(url: str) -> int:
    """`/healthz` on a new connection, so that the kernel picks a child afresh."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    pid: int = response.json()["pid"]
    return pid


async def test_two_api_processes_share_the_port_and_the_parent_keeps_them_running(
    config: Config, server: ServerProcess
) -> None:
    server.start()
    await server.wait_ready(timeout_s=60)
    started = children(server)
    assert sorted(started) == ["api-0", "api-1", "worker-0"], server.log()
    api_pids = [started["api-0"], started["api-1"]]

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        user_id = await registered_user(client)
    token = access_token(await signing_keys(config), config, server, user_id)

    # One authenticated WebSocket on each API process, then an action: both see it.
    met: set[int] = set()

    async def watch(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with watcher(server.url, token) as ws:
            local = ws.local
            assert not isinstance(local, str)
            pid = serving_pid(server.port, local.port, api_pids)
            assert pid is not None
            if pid in met:
                task_status.started()
                return
            met.add(pid)
            task_status.started()
            await wait_for_score(ws, user_id, 10)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(MAX_CONNECTIONS_TO_MEET_EVERY_CHILD):
                await nursery.start(watch)
                if met == set(api_pids):
                    break
            assert met == set(api_pids)
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                response = await client.post(
                    "/api/v1/actions/perform",
                    json=action(),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 202, response.text

    # Plain requests reach both children too.
    seen: set[int] = set()
    with trio.fail_after(60):
        while seen != set(api_pids):
            seen.add(await healthz_pid(server.url))

    # SIGKILL one API child: the parent starts it again, and it serves on the same port.
    os.kill(api_pids[0], signal.SIGKILL)
    with trio.fail_after(60):
        while children(server)["api-0"] == api_pids[0]:
            await trio.sleep(0.1)
        restarted = children(server)["api-0"]
        while await healthz_pid(server.url) != restarted:
            pass
    assert "child api-0 was killed by SIGKILL" in server.log()
    assert alive(api_pids[1])

    # A second server on the same port is refused, rather than take a share of the connections.
    second = ServerProcess(
        config, server.log_path.parent, role="all", processes=2, port=server.port
    )
    second.start()
    try:
        assert await second.wait_exit(timeout_s=30) == 1, second.log()
    finally:
        second.stop()
    assert "cannot listen on 127.0.0.1" in second.log()
    assert "Address already in use" in second.log()

    # SIGTERM: every child drains and exits, then the parent exits 0.
    latest = list(children(server).values())
    assert await server.terminate(timeout_s=60) == 0, server.log()
    assert not any(alive(pid) for pid in latest), server.log()
    log = server.log()
    assert "received SIGTERM: stopping every child" in log
    assert log.count("scoreboard ready") == 1
