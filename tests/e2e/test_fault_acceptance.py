"""The fault drill of issue 9, on the real stack, bounded to about a minute.

Up to 100 actions/s for 20 s against the real app (API and worker in this process; the clients in a
process of their own, `fault_load.py`), with the broker reached through a proxy of the test's
own, while:
- every connection to this test's database is terminated every 50 ms (pg_terminate_backend),
- the worker's actors crash one after another (the supervisor's `inject_crash`: each is stopped
  and restarted with the actors after it, exactly as a crash of its own would be),
- both AMQP connections are dropped once (the proxy cuts them).

The clients do what the contract tells them: a 503 is retried with the same nonce. At the end:
no action is stuck, dead-lettered, or answered 503 and scored; every 202 is scored exactly once;
Redis equals Postgres; the broker answered within 2 s throughout; the process is up.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import trio

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config
from scoreboard.server import ServerHandle, run_server
from scoreboard.verify import verify
from tests.e2e.test_broker_faults import proxied_config, proxy, queued_messages
from tests.faultproxy import FaultProxy
from tests.http.conftest import new_player
from tests.pgfaults import BackendTerminator

__all__ = ["proxied_config", "proxy"]

pytestmark = [pytest.mark.alone, pytest.mark.timeout(240)]

RATE_PER_S = 100
FAULT_S = 20.0
TERMINATE_EVERY_S = 0.05
PLAYERS = 20
POINTS = 10  # complete_task
CRASHES = (
    (3.0, "worker/scorer"),
    (7.0, "worker/router"),
    (11.0, "worker/consumer"),
    (15.0, "worker/keeper"),
)
AMQP_CUT_AT_S = 9.0
AMQP_CUT_FOR_S = 0.3
PING_EVERY_S = 0.25
PING_WITHIN_S = 2.0
DRAIN_TIMEOUT_S = 90.0


@dataclass
class BrokerWatch:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


async def watch_the_broker(server: ServerHandle, watch: BrokerWatch) -> None:
    """Every quarter second: how long until the broker answers a ping (a channel opened and
    closed on each connection), trying again while a connection is being replaced."""
    assert server.services is not None
    broker = server.services.broker
    while True:
        started = trio.current_time()
        try:
            with trio.fail_after(PING_WITHIN_S):
                while True:
                    try:
                        await broker.ping()
                        break
                    except BackendUnavailable:
                        await trio.sleep(0.05)
        except trio.TooSlowError:
            watch.failures += 1
        watch.latencies.append(trio.current_time() - started)
        await trio.sleep(PING_EVERY_S)


async def faults(server: ServerHandle, proxy: FaultProxy, terminator: BackendTerminator) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(terminator.run)
        for at_s, what in sorted([*CRASHES, (AMQP_CUT_AT_S, "amqp")]):
            await trio.sleep_until(start + at_s)
            if what == "amqp":
                proxy.cut()
                await trio.sleep(AMQP_CUT_FOR_S)
                proxy.restore()
            else:
                server.supervisor.inject_crash(what, BackendUnavailable("fault drill"))
        await trio.sleep_until(start + FAULT_S)
        nursery.cancel_scope.cancel()


async def clients(url: str, players: list[list[Any]]) -> dict[str, Any]:
    done = await trio.run_process(
        [sys.executable, "-m", "tests.e2e.fault_load", url, str(RATE_PER_S), str(FAULT_S)],
        stdin=json.dumps(players).encode(),
        capture_stdout=True,
    )
    results: dict[str, Any] = json.loads(done.stdout)
    return results


async def stored_actions(bridge: Bridge, url: str) -> dict[str, tuple[str, int, str]]:
    """action id -> (status, delta, nonce), read straight from action_logs."""

    async def read() -> list[Any]:
        connection = await asyncpg.connect(url)
        try:
            return list(
                await connection.fetch(
                    "SELECT action_id, status, score_delta, nonce FROM action_logs"
                )
            )
        finally:
            await connection.close()

    rows = await bridge.run(read)
    return {str(r["action_id"]): (r["status"], r["score_delta"], r["nonce"]) for r in rows}


async def test_faults_under_load_lose_nothing_double_nothing_and_stay_up(
    proxied_config: Config, proxy: FaultProxy, nursery: trio.Nursery
) -> None:
    config = proxied_config.replace(limits={"enabled": False}, amqp={"publish_timeout_s": 5.0})
    with trio.fail_after(60):
        server: ServerHandle = await nursery.start(run_server, config)
    assert server.url is not None
    assert server.services is not None
    watch = BrokerWatch()
    terminator = BackendTerminator(config.database.url, TERMINATE_EVERY_S)
    async with (
        open_bridge() as bridge,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        players = [await new_player(client, server) for _ in range(PLAYERS)]
        results: dict[str, Any] = {}

        async def load() -> None:
            results.update(await clients(server.url or "", [[p.user_id, p.token] for p in players]))

        async with trio.open_nursery() as drill:
            drill.start_soon(watch_the_broker, server, watch)
            async with trio.open_nursery() as storm:
                storm.start_soon(faults, server, proxy, terminator)
                storm.start_soon(load)
            accepted = {
                action_id: (nonce, user_id) for nonce, user_id, action_id in results["accepted"]
            }
            drain_started = trio.current_time()
            with trio.fail_after(DRAIN_TIMEOUT_S):
                while (
                    not accepted.keys()
                    <= (await stored_actions(bridge, config.database.url)).keys()
                ):
                    await trio.sleep(0.5)
            drain_s = trio.current_time() - drain_started
            drill.cancel_scope.cancel()

        # Every 202 is scored exactly once, and nothing else is.
        stored = await stored_actions(bridge, config.database.url)
        for action_id in accepted:
            assert stored[action_id][:2] == ("completed", POINTS), stored[action_id]
        assert len(stored) == len(accepted)
        stored_nonces = {nonce for _, _, nonce in stored.values()}
        for nonce, _user_id, outcome in results["given_up"]:
            assert nonce not in stored_nonces, f"answered {outcome} and scored"
        expected: Counter[int] = Counter()
        for _nonce, user_id in accepted.values():
            expected[user_id] += POINTS
        scores = {e.user_id: e.score for e in await server.services.store.board_entries()}
        assert scores == dict(expected)
        with trio.fail_after(20):
            while not (report := await verify(server.services.store, server.services.board)).ok:
                await trio.sleep(0.2)
        # Nothing stuck in the queue, nothing dead-lettered.
        with trio.fail_after(20):
            while await queued_messages(config):
                await trio.sleep(0.2)
        assert await server.services.broker.list_failed(10) == []
        # The broker answered within 2 s throughout, and the process is up and whole.
        assert (await client.get("/healthz")).status_code == 200
        with trio.fail_after(30):
            while not server.supervisor.all_running:
                await trio.sleep(0.1)
        restarts = {r.id: r.restarts for r in server.supervisor.statistics() if r.restarts}

    sent = results["sent"]
    print(
        f"\n{sent} actions sent in {results['sent_in_s']:.1f} s "
        f"({sent / results['sent_in_s']:.0f}/s), all settled in {results['done_in_s']:.1f} s; "
        f"answers {dict(results['answers'])}; accepted {len(accepted)}, scored {len(stored)}, "
        f"given up {len(results['given_up'])}"
        f"\ndatabase connections terminated: {terminator.terminated} in {terminator.rounds} "
        f"rounds; crashes injected: {[what for _, what in CRASHES]}; AMQP cut once for "
        f"{AMQP_CUT_FOR_S} s; restarts: {restarts}"
        f"\nbroker ping: {len(watch.latencies)} probes, max {max(watch.latencies):.2f} s, "
        f"{watch.failures} over {PING_WITHIN_S} s; drained {drain_s:.1f} s after the load; "
        f"verify: {report.lines()[-1]}"
    )
    assert watch.failures == 0, watch.latencies
    assert results["given_up"] == []
    assert restarts.get("worker", 0) == 0  # the worker's supervisor never gave up
    assert restarts.get("api/http", 0) == 0
