"""The chaos suite: the real `scoreboard serve` processes (2 API, 2 workers, actions sharded
over 8 queues) on backends of the test's own, a RabbitMQ node and a `redis-server` it may stop
and flush (`tests/chaos/private.py`), and the shared PostgreSQL (a database of its own).

While 5,000 actions arrive (from a client process of their own, `chaos_load.py`) the workers are
killed with SIGKILL 5 times at random moments and started again, RabbitMQ is restarted once,
Redis is flushed once, and a worker is stopped with SIGTERM. Then: every 202-accepted action is
counted exactly once in PostgreSQL, Redis equals PostgreSQL (`scoreboard verify`), and every
WebSocket client's last snapshot is the final top 10. The figures are printed, not asserted on
time: the bounds are hang guards."""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from scoreboard.backends import open_backends
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config
from tests.chaos.private import PrivateRabbit, PrivateRedis
from tests.e2e.processes import ServerProcess, access_token, registered_user, signing_keys
from tests.e2e.test_cli_verify import run_verify

pytestmark = [pytest.mark.chaos, pytest.mark.alone, pytest.mark.timeout(300)]

ACTIONS = 5000
RATE_PER_S = 150.0
PLAYERS = 40
SHARDS = 8
POINTS = 10  # complete_task
KILLS = 5
WATCHERS = 4
SETTLE_TIMEOUT_S = 120.0
DRAIN_ENV = {"SCOREBOARD_SERVER_DRAIN_DELAY_S": "0.5", "SCOREBOARD_SERVER_DRAIN_TIMEOUT_S": "15"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    # Not under tmp_path: the server runs as the rabbitmq user when started as root, and pytest's
    # temporary directories are private to their owner.
    with tempfile.TemporaryDirectory(prefix="scoreboard-chaos-rabbitmq-") as directory:
        node = PrivateRabbit(Path(directory))
        node.start()
        try:
            yield node
        finally:
            node.stop()


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


def chaos_config(config: Config, redis: PrivateRedis, rabbit: PrivateRabbit) -> Config:
    return config.replace(
        redis={"url": redis.url}, amqp={"url": rabbit.url, "shards": SHARDS}, limits={}
    )


def held_shards(worker: ServerProcess) -> list[int] | None:
    """The shards the worker's latest start said it holds last (None before it said anything);
    its first balance may be logged before its ready line."""
    found = re.findall(r"holding shards (\S+) of \d+", worker.log_of_latest_start())
    if not found:
        return None
    return [] if found[-1] == "none" else [int(s) for s in found[-1].split(",")]


async def wait_for_split(workers: list[ServerProcess]) -> list[list[int]]:
    with trio.move_on_after(60):  # a hang guard
        while True:
            held = [held_shards(w) or [] for w in workers]
            if sorted(s for share in held for s in share) == list(range(SHARDS)) and all(held):
                return held
            await trio.sleep(0.2)
    balancing = [re.findall(r".*rabbitmq: (?:holding|balancing).*", w.log()) for w in workers]
    raise AssertionError(f"the workers never split the shards: {balancing}")


class Watcher:
    """A WebSocket client that reconnects whenever its socket closes, keeping the last
    leaderboard it was sent."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.last: list[tuple[int, int]] | None = None
        self.snapshots = 0
        self.connects = 0
        self.closes: Counter[int | None] = Counter()

    async def run(self) -> None:
        ws_url = self.url.replace("http://", "ws://") + "/api/v1/ws"
        while True:
            try:
                async with open_websocket_url(
                    ws_url, extra_headers=[(b"Origin", self.url.encode())]
                ) as ws:
                    self.connects += 1
                    await ws.send_message(json.dumps({"type": "auth", "token": self.token}))
                    while True:
                        message = json.loads(await ws.get_message())
                        if message["type"] == "leaderboard_update":
                            rows = message["data"]["leaderboard"]
                            self.last = [(row["user_id"], row["score"]) for row in rows]
                            self.snapshots += 1
            except ConnectionClosed as closed:
                self.closes[closed.reason.code if closed.reason else None] += 1
            except (HandshakeError, OSError, trio.BrokenResourceError):
                self.closes[None] += 1
            await trio.sleep(0.5)


async def stored_actions(bridge: Bridge, url: str) -> dict[str, tuple[str, int]]:
    """action id -> (status, delta), read straight from action_logs."""

    async def read() -> list[Any]:
        connection = await asyncpg.connect(url)
        try:
            return list(
                await connection.fetch("SELECT action_id, status, score_delta FROM action_logs")
            )
        finally:
            await connection.close()

    rows = await bridge.run(read)
    return {str(r["action_id"]): (r["status"], r["score_delta"]) for r in rows}


async def final_top(url: str) -> list[tuple[int, int]]:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/api/v1/leaderboard")
    assert response.status_code == 200, response.text
    body = response.json()
    rows = body["data"]["leaderboard"] if "data" in body else body["leaderboard"]
    return [(row["user_id"], row["score"]) for row in rows]


async def test_chaos_every_accepted_action_counts_once(
    config: Config,
    tmp_path: Path,
    private_redis: PrivateRedis,
    private_rabbit: PrivateRabbit,
    processes: list[ServerProcess],
) -> None:
    config = chaos_config(config, private_redis, private_rabbit)
    apis = [ServerProcess(config, tmp_path, role="api", environment=DRAIN_ENV) for _ in range(2)]
    workers = [
        ServerProcess(config, tmp_path, role="worker", environment=DRAIN_ENV) for _ in range(2)
    ]
    processes.extend([*apis, *workers])
    for process in processes:
        process.start()
    for process in processes:
        await process.wait_ready(60)
    split = await wait_for_split(workers)

    keys = await signing_keys(config)

    def token(api: ServerProcess, user_id: int) -> str:
        return access_token(keys, config, api, user_id)

    async with httpx.AsyncClient(base_url=apis[0].url, timeout=30) as client:
        users = [await registered_user(client) for _ in range(PLAYERS)]
    players = [[user, [token(api, user) for api in apis]] for user in users]
    watchers = [Watcher(apis[n % 2].url, token(apis[n % 2], users[n])) for n in range(WATCHERS)]
    events: list[str] = []
    terminating: set[ServerProcess] = set()  # stopped on purpose: not to be started again
    results: dict[str, Any] = {}
    sigterm: dict[str, tuple[int, float]] = {}
    rng = random.Random()

    load_started = trio.current_time()

    async def load() -> None:
        done = await trio.run_process(
            [
                sys.executable,
                "-m",
                "tests.chaos.chaos_load",
                ",".join(a.url for a in apis),
                str(ACTIONS),
                str(RATE_PER_S),
            ],
            stdin=json.dumps(players).encode(),
            capture_stdout=True,
        )
        results.update(json.loads(done.stdout))
        events.append(f"{trio.current_time() - load_started:.1f}s load done")

    async def chaos() -> None:
        start = trio.current_time()
        duration = ACTIONS / RATE_PER_S
        plan = sorted(
            [(rng.uniform(0.05, 0.9) * duration, "kill") for _ in range(KILLS)]
            + [
                (0.3 * duration, "flush redis"),
                (0.5 * duration, "restart rabbitmq"),
                (0.7 * duration, "sigterm API"),
                (0.8 * duration, "sigterm worker"),
            ]
        )
        for at_s, what in plan:
            await trio.sleep_until(start + at_s)
            elapsed = trio.current_time() - start
            if what == "kill":
                victim = rng.randrange(2)
                terminating.add(workers[victim])
                workers[victim].kill()
                events.append(f"{elapsed:.1f}s kill -9 worker {victim}")
                if len(events) == 1:
                    survivor = workers[1 - victim]
                    with trio.fail_after(30):  # a hang guard
                        while held_shards(survivor) != list(range(SHARDS)):
                            await trio.sleep(0.1)
                    events.append(
                        f"{trio.current_time() - start:.1f}s worker {1 - victim} holds every shard"
                    )
                workers[victim].start()
                terminating.discard(workers[victim])
            elif what == "flush redis":
                private_redis.flush()
                events.append(f"{elapsed:.1f}s FLUSHDB")
            elif what == "restart rabbitmq":
                await trio.to_thread.run_sync(private_rabbit.restart)
                events.append(
                    f"{elapsed:.1f}s RabbitMQ restarted "
                    f"(up again {trio.current_time() - start - elapsed:.1f}s later)"
                )
            else:
                kind, group = ("worker", workers) if what == "sigterm worker" else ("API", apis)
                victim = rng.randrange(2)
                # Its latest start must be over: a SIGTERM before the handler is set kills it.
                await group[victim].wait_started(60)
                terminating.add(group[victim])
                stopped_at = trio.current_time()
                code = await group[victim].terminate(30)
                sigterm[kind] = (code, trio.current_time() - stopped_at)
                events.append(
                    f"{elapsed:.1f}s SIGTERM {kind} {victim}: exit {code} after "
                    f"{sigterm[kind][1]:.1f} s"
                )
                group[victim].start()
                terminating.discard(group[victim])

    restarted: Counter[str] = Counter()

    async def process_manager() -> None:
        """What systemd or Kubernetes does: a process that exited (one that started while
        RabbitMQ was going down gives up) is started again."""
        while True:
            for process in (*apis, *workers):
                if process.exited and process not in terminating:
                    restarted[f"{process.role} {process.port}"] += 1
                    process.start()
            await trio.sleep(0.5)

    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        nursery.start_soon(process_manager)
        for watcher in watchers:
            nursery.start_soon(watcher.run)
        async with trio.open_nursery() as storm:
            storm.start_soon(chaos)
            storm.start_soon(load)

        accepted = {action_id: user_id for _nonce, user_id, action_id in results["accepted"]}
        settle_started = trio.current_time()
        with trio.fail_after(SETTLE_TIMEOUT_S):  # a hang guard
            while not accepted.keys() <= (await stored_actions(bridge, config.database.url)).keys():
                await trio.sleep(0.5)
        settled_s = trio.current_time() - settle_started
        stored = await stored_actions(bridge, config.database.url)

        with trio.fail_after(60):  # a hang guard: the board follows the last batches
            while (verified := await run_verify(config)).returncode != 0:
                await trio.sleep(0.5)
        top = await final_top(apis[0].url)
        async with httpx.AsyncClient() as client:
            readiness = [(await client.get(f"{api.url}/readyz")).json() for api in apis]
        with trio.fail_after(30):  # a hang guard: the last snapshot reaches every client
            while any(watcher.last != top for watcher in watchers):
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()

    expected: Counter[int] = Counter()
    for user_id in accepted.values():
        expected[user_id] += POINTS
    async with open_backends(config) as backends:
        scores = {e.user_id: e.score for e in await backends.store.board_entries(users)}
    final_split = [held_shards(w) for w in workers]
    print(
        f"\n{results['sent']} actions sent in {results['sent_in_s']:.1f} s, answers "
        f"{dict(results['answers'])}; accepted {len(accepted)}, stored {len(stored)}, given up "
        f"{len(results['given_up'])}; all stored {settled_s:.1f} s after the load"
        f"\nshards at the start {split}, at the end {final_split}"
        f"\nchaos: {'; '.join(events)}"
        f"\nRabbitMQ node started in {[round(s, 1) for s in private_rabbit.started_in_s]} s; "
        f"SIGTERM under load (exit code, seconds): {sigterm}"
        f"\nwatchers: {[(w.connects, w.snapshots, dict(w.closes)) for w in watchers]} "
        f"(connects, snapshots, closes by code); final top 10 {top[:3]}..."
        f"\nprocesses started again after exiting by themselves: {dict(restarted)}"
        f"\n/readyz of the APIs at the end: {[(r['ready'], r['reasons']) for r in readiness]}"
        f"\nverify: {verified.stdout.strip().splitlines()[-1] if verified.stdout.strip() else ''}"
    )
    for action_id in accepted:
        assert stored[action_id] == ("completed", POINTS), stored[action_id]
    assert len(stored) == len(accepted)
    assert scores == {user: expected.get(user, 0) for user in users}
    assert results["given_up"] == []
    assert [code for code, _seconds in sigterm.values()] == [0, 0]
    assert all(watcher.last == top for watcher in watchers)


async def readyz(client: httpx.AsyncClient) -> tuple[int, list[str]]:
    response = await client.get("/readyz")
    return response.status_code, response.json().get("reasons", [])


async def test_readyz_follows_redis_going_and_coming_back(
    config: Config,
    tmp_path: Path,
    private_redis: PrivateRedis,
    processes: list[ServerProcess],
) -> None:
    config = config.replace(redis={"url": private_redis.url})
    server = ServerProcess(config, tmp_path, role="all")
    processes.append(server)
    server.start()
    await server.wait_ready(60)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await readyz(client))[0] == 200
        private_redis.stop()
        stopped_at = trio.current_time()
        with trio.fail_after(60):  # a hang guard
            while (answer := await readyz(client))[0] == 200:
                await trio.sleep(0.1)
        down_s = trio.current_time() - stopped_at
        private_redis.start()
        started_at = trio.current_time()
        with trio.fail_after(60):  # a hang guard
            while (await readyz(client))[0] != 200:
                await trio.sleep(0.1)
        up_s = trio.current_time() - started_at
    print(
        f"\n/readyz: 503 {down_s:.2f} s after Redis stopped ({answer[1]}), "
        f"200 again {up_s:.2f} s after it started"
    )
    assert answer == (503, ["redis does not answer"])
