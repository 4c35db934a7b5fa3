"""`kill -9` of a real worker process while actions are in flight: nothing lost, nothing doubled."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from scoreboard.adapters.interfaces import Store
from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import Backends, open_backends
from scoreboard.config import Config
from scoreboard.verify import verify
from tests.e2e.processes import ServerProcess
from tests.http.conftest import PASSWORD, action

PLAYERS = 20
ACTIONS_PER_PLAYER = 20
KILL_AFTER_ACCEPTED = 120


@pytest.fixture
def processes(config: Config, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
async def backends(config: Config) -> AsyncIterator[Backends]:
    async with open_backends(config) as opened:
        yield opened


def spawn(
    config: Config, tmp_path: Path, processes: list[ServerProcess], role: str
) -> ServerProcess:
    process = ServerProcess(config, tmp_path, role=role)
    processes.append(process)
    process.start()
    return process


async def wait_until_stored(store: Store, action_ids: list[str], timeout_s: float) -> None:
    pending = {uuid.UUID(a) for a in action_ids}
    with trio.fail_after(timeout_s):
        while pending:
            for action_id in list(pending):
                if await store.get_action(action_id) is not None:
                    pending.discard(action_id)
            if pending:
                await trio.sleep(0.2)


async def test_killing_the_worker_mid_flight_loses_and_doubles_nothing(
    config: Config, tmp_path: Path, processes: list[ServerProcess], backends: Backends
) -> None:
    api = spawn(config, tmp_path, processes, "api")
    worker = spawn(config, tmp_path, processes, "worker")
    await api.wait_ready()
    await worker.wait_ready()
    keyring = await load_or_create_keyring(backends.store)
    api_config = config.replace(server={"port": api.port})

    accepted: Counter[int] = Counter()
    action_ids: list[str] = []
    killed = trio.Event()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        tokens: dict[int, str] = {}
        for _ in range(PLAYERS):
            name = f"k{uuid.uuid4().hex[:12]}"
            response = await client.post(
                "/api/v1/users",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            user_id = response.json()["user_id"]
            tokens[user_id], _ = issue_access_token(
                keyring,
                config=api_config,
                user_id=user_id,
                client_id="scoreboard-web",
                scope="read write",
            )

        async def perform(user_id: int, index: int) -> None:
            body = action(task_id=f"task-{index}")
            headers = {"Authorization": f"Bearer {tokens[user_id]}"}
            response = await client.post("/api/v1/actions/perform", json=body, headers=headers)
            assert response.status_code == 202, response.text
            accepted[user_id] += 1
            action_ids.append(response.json()["action_id"])
            if len(action_ids) == KILL_AFTER_ACCEPTED:
                worker.kill()
                killed.set()

        async with trio.open_nursery() as nursery:
            limiter = trio.Semaphore(10)

            async def paced(user_id: int, index: int) -> None:
                async with limiter:
                    await perform(user_id, index)

            for index in range(ACTIONS_PER_PLAYER):
                for user_id in tokens:
                    nursery.start_soon(paced, user_id, index)

    assert killed.is_set()
    restarted = spawn(config, tmp_path, processes, "worker")
    await restarted.wait_ready()
    await wait_until_stored(backends.store, action_ids, timeout_s=60)

    for user_id, count in accepted.items():
        user = await backends.store.get_user(user_id)
        assert user is not None
        assert user.score == 10 * count, (user_id, user.score, count)
    for action_id in action_ids:
        record = await backends.store.get_action(uuid.UUID(action_id))
        assert record is not None
        assert record.outcome.status == "completed", record
    with trio.fail_after(10):
        while not (report := await verify(backends.store, backends.board)).ok:
            await trio.sleep(0.2)
    assert report.checked_users >= PLAYERS
    assert await restarted.terminate() == 0
    assert await api.terminate() == 0
