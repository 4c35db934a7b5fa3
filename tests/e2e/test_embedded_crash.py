"""`kill -9` of an embedded server under load, then a restart: no action that was answered 202
is lost or doubled, and clients retrying with their nonces get the first answer back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import open_backends
from scoreboard.config import Config, load_config
from tests.e2e.processes import ServerProcess
from tests.http.conftest import PASSWORD, action

pytestmark = pytest.mark.timeout(180)

PLAYERS = 20
ACTIONS_PER_PLAYER = 20
KILL_AFTER_ACCEPTED = 150
PERFORM = "/api/v1/actions/perform"


@pytest.fixture
def embedded_config(tmp_path: Path) -> Config:
    return load_config(environ={}).replace(embedded={"data_dir": str(tmp_path / "var")})


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


def spawn(
    config: Config, tmp_path: Path, processes: list[ServerProcess], port: int | None = None
) -> ServerProcess:
    process = ServerProcess(config, tmp_path, role="all", port=port)
    processes.append(process)
    process.start()
    return process


async def test_kill_9_under_load_then_restart_loses_and_doubles_nothing(
    embedded_config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    server = spawn(embedded_config, tmp_path, processes)
    await server.wait_ready()
    config = embedded_config.replace(server={"port": server.port})
    async with open_backends(config, exclusive=False) as backends:
        keyring = await load_or_create_keyring(backends.store)

    # nonce -> (user, body, action id) of every action answered 202 before the kill
    accepted: dict[str, tuple[int, dict[str, object], str]] = {}
    unanswered: list[tuple[int, dict[str, object]]] = []  # no answer: the client will retry
    tokens: dict[int, str] = {}
    killed = trio.Event()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for _ in range(PLAYERS):
            name = f"k{uuid.uuid4().hex[:12]}"
            response = await client.post(
                "/api/v1/users",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            user_id = response.json()["user_id"]
            tokens[user_id], _ = issue_access_token(
                keyring,
                config=config,
                user_id=user_id,
                client_id="scoreboard-web",
                scope="read write",
            )

        async def perform(user_id: int, body: dict[str, object]) -> None:
            headers = {"Authorization": f"Bearer {tokens[user_id]}"}
            try:
                response = await client.post(PERFORM, json=body, headers=headers)
            except httpx.TransportError:
                unanswered.append((user_id, body))
                return
            assert response.status_code == 202, response.text
            accepted[str(body["nonce"])] = (user_id, body, response.json()["action_id"])
            if len(accepted) == KILL_AFTER_ACCEPTED:
                server.kill()
                killed.set()

        limiter = trio.Semaphore(10)

        async def paced(user_id: int, body: dict[str, object]) -> None:
            async with limiter:
                await perform(user_id, body)

        async with trio.open_nursery() as nursery:
            for index in range(ACTIONS_PER_PLAYER):
                for user_id in tokens:
                    nursery.start_soon(paced, user_id, action(task_id=f"task-{index}"))
    assert killed.is_set()
    assert unanswered, "the kill came after the load: it proves nothing"

    restarted = spawn(embedded_config, tmp_path, processes, port=server.port)
    await restarted.wait_ready()
    answers: dict[str, str] = {}  # nonce -> action id, for every action the clients now know
    async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as client:

        async def retry(user_id: int, body: dict[str, object], expected: str | None) -> None:
            headers = {"Authorization": f"Bearer {tokens[user_id]}"}
            response = await client.post(PERFORM, json=body, headers=headers)
            assert response.status_code in (200, 202), response.text
            action_id = response.json()["action_id"]
            if expected is not None:  # answered 202 before the kill: now a replay of it
                assert response.headers.get("Idempotent-Replayed") == "true", response.text
                assert action_id == expected
            answers[str(body["nonce"])] = action_id

        async with trio.open_nursery() as nursery:
            for user_id, body in unanswered:
                nursery.start_soon(retry, user_id, body, None)
        # A sample of the accepted ones, sent again: replays, never a second action.
        async with trio.open_nursery() as nursery:
            for user_id, body, action_id in list(accepted.values())[:30]:
                nursery.start_soon(retry, user_id, body, action_id)

        every = {**{nonce: known[2] for nonce, known in accepted.items()}, **answers}
        assert len(set(every.values())) == len(every) == PLAYERS * ACTIONS_PER_PLAYER
        async with open_backends(config, exclusive=False) as backends:
            with trio.fail_after(60):
                for action_id in every.values():
                    while (record := await backends.store.get_action(uuid.UUID(action_id))) is None:
                        await trio.sleep(0.1)
                    assert record.outcome.status == "completed", record
            for user_id in tokens:
                user = await backends.store.get_user(user_id)
                assert user is not None
                assert user.score == 10 * ACTIONS_PER_PLAYER, (user_id, user.score)
            assert await backends.store.score_discrepancies() == []
            stored = {e.user_id: e.score for e in await backends.store.board_entries()}
        board = (await client.get("/api/v1/leaderboard", params={"limit": 100})).json()
        assert {e["user_id"]: e["score"] for e in board["leaderboard"]} == stored
    assert await restarted.terminate() == 0
