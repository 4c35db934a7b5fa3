"""The measured stages: HTTP accept rate with scoring throughput, broadcast, adapters."""

from __future__ import annotations

import gc
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from benchmarks.clients import run_load_generator, start_load_generator
from benchmarks.figures import MachineCpu, Table, cpu_seconds, fmt, resident_kib
from benchmarks.isolation import IsolatedBackends
from scoreboard.actors.publisher import MAX_BATCH
from scoreboard.adapters.interfaces import Store
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import open_backends
from scoreboard.config import Config
from scoreboard.model import ActionEnvelope, BoardEntry, Decision
from scoreboard.server import ServerHandle
from scoreboard.verify import verify

PASSWORD = "correct horse battery"
SCORED_TIMEOUT_S = 120.0
SCORED_POLL_S = 0.02
BOARD_CONVERGENCE_TIMEOUT_S = 10.0
MISMATCHES_SHOWN = 5
IDLE_SETTLE_S = 1.0  # after the last WebSocket connected, before reading the server's RSS
FINAL_UPDATE_GRACE_S = 0.5  # one hub tick and the event's trip, before checking final boards
BROADCAST_ACTIONS_PER_S = 100
RACERS = 10  # players whose actions keep changing the top 10
PUBLISH_CONCURRENCY = 100
ADAPTER_BATCH = 500

COMPLETED_COUNTS = """
SELECT count(*) FILTER (WHERE status = 'completed') AS completed, count(*) AS stored
FROM action_logs
"""


@dataclass(frozen=True)
class Plan:
    """How much of everything: `--quick` and the full run differ only here."""

    http_rates: Sequence[int]
    http_seconds: float
    http_players: int
    http_connections: int
    broadcast_clients: Sequence[int]
    broadcast_seconds: float
    publishes: int
    commit_batches: int
    board_applies: int


async def create_users(store: Store, count: int, label: str) -> list[int]:
    password_hash = await Passwords().hash(PASSWORD)
    run = uuid.uuid4().hex[:6]
    return [
        await store.create_user(f"{label}{run}{i}", f"{label}{run}{i}@example.com", password_hash)
        for i in range(count)
    ]


def issue_tokens(server: ServerHandle, user_ids: Sequence[int]) -> list[str]:
    """A read-write access token for each user."""
    assert server.services is not None
    services = server.services
    return [
        issue_access_token(
            services.keyring,
            config=services.config,
            user_id=user_id,
            client_id="scoreboard-web",
            scope="read write",
        )[0]
        for user_id in user_ids
    ]


async def new_players(server: ServerHandle, count: int, label: str) -> list[str]:
    """The tokens of `count` new players."""
    assert server.services is not None
    return issue_tokens(server, await create_users(server.services.store, count, label))


async def leaders(server: ServerHandle, count: int) -> list[str]:
    """The tokens of the board's current top `count` (new players fill an emptier board), so
    that every action they perform changes the top and makes a leaderboard update."""
    assert server.services is not None
    top, _updated_at = await server.services.board.top(count)
    user_ids = [entry.user_id for entry in top]
    user_ids += await create_users(server.services.store, count - len(user_ids), "racer")
    return issue_tokens(server, user_ids)


class Ledger:
    """Every action the server accepted so far, and waiting until the store has scored them."""

    def __init__(self, backends: IsolatedBackends) -> None:
        self.backends = backends
        self.accepted = 0

    async def counts(self) -> tuple[int, int]:
        row = await self.backends.fetchrow(COMPLETED_COUNTS)
        return row["completed"], row["stored"]

    async def wait_until_stored(self) -> float:
        """time.monotonic() at which every accepted action was stored."""
        with trio.fail_after(SCORED_TIMEOUT_S):
            while True:
                _completed, stored = await self.counts()
                if stored >= self.accepted:
                    return time.monotonic()
                await trio.sleep(SCORED_POLL_S)


async def http_stage(server: ServerHandle, ledger: Ledger, plan: Plan, tables: list[Table]) -> None:
    tokens = await new_players(server, plan.http_players, "http")
    accept = Table(
        f"HTTP accept rate: open-loop POST /api/v1/actions/perform, {plan.http_seconds:g} s per "
        f"rate, {plan.http_players} users, {plan.http_connections} keep-alive connections",
        [
            "target/s",
            "achieved/s",
            "sent",
            "202",
            "other",
            "errors",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "server CPU",
            "client CPU",
            "machine CPU",
        ],
    )
    scoring = Table(
        "Scoring throughput: first 202 → every accepted action stored (polling action_logs)",
        ["target/s", "accepted", "actions/s end to end", "drain after last 202 s"],
    )
    for rate in plan.http_rates:
        machine = MachineCpu()
        cpu_before = cpu_seconds()
        result = await run_load_generator(
            {
                "kind": "http",
                "url": server.url,
                "tokens": tokens,
                "rate": rate,
                "duration_s": plan.http_seconds,
                "connections": plan.http_connections,
            }
        )
        server_cpu = cpu_seconds() - cpu_before
        machine_busy = machine.busy()
        ledger.accepted += result["accepted"]
        stored_at = await ledger.wait_until_stored()
        latency = result["latency_ms"]
        other = sum(n for code, n in result["statuses"].items() if code != "202")
        accept.add(
            rate,
            fmt(result["accepted"] / result["elapsed_s"]),
            result["sent"],
            result["accepted"],
            other,
            sum(result["errors"].values()),
            fmt(latency["p50"]),
            fmt(latency["p95"]),
            fmt(latency["p99"]),
            fmt(latency["max"]),
            f"{server_cpu / result['elapsed_s']:.0%}",
            f"{result['cpu_s'] / result['elapsed_s']:.0%}",
            f"{machine_busy:.0%}",
        )
        refused = {code: n for code, n in result["statuses"].items() if code != "202"}
        if refused or result["errors"]:
            accept.notes.append(f"at {rate}/s: other statuses {refused}, errors {result['errors']}")
        if result["worst_dispatch_lag_ms"] > 50:
            accept.notes.append(
                f"at {rate}/s the load generator fell up to "
                f"{result['worst_dispatch_lag_ms']:,.0f} ms behind its schedule (short of CPU); "
                "latencies still count from the due time"
            )
        if result["first_accept_at"] is not None:
            scoring.add(
                rate,
                result["accepted"],
                fmt(result["accepted"] / (stored_at - result["first_accept_at"])),
                fmt(stored_at - result["last_accept_at"], 2),
            )
    accept.notes.append(
        "latency counts from the moment each request was due; CPU is the process's CPU time over "
        "the sending window (100% = one core; the server process includes the scoring pipeline); "
        f"machine CPU: all {os.cpu_count()} CPUs, everything on the machine"
    )
    tables += [accept, scoring]


async def broadcast_stage(
    server: ServerHandle, ledger: Ledger, plan: Plan, tables: list[Table]
) -> None:
    assert server.url is not None
    racers = await leaders(server, RACERS)
    table = Table(
        f"Broadcast: N authenticated WebSockets watch the leaderboard while {RACERS} players "
        f"perform {BROADCAST_ACTIONS_PER_S} actions/s over HTTP for {plan.broadcast_seconds:g} s",
        [
            "clients",
            "connect s",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/idle conn",
            "updates",
            "min/client",
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU",
            "machine CPU",
            "final board",
            "failed",
        ],
    )
    for clients in plan.broadcast_clients:
        watchers_tokens = await new_players(server, clients, f"watch{clients}-")
        gc.collect()
        rss_before = resident_kib()
        async with trio.open_nursery() as nursery:
            watchers = await start_load_generator(
                nursery,
                {
                    "kind": "ws",
                    "ws_url": server.url.replace("http://", "ws://") + "/api/v1/ws",
                    "origin": server.url,
                    "tokens": watchers_tokens,
                },
            )
            ready = await watchers.receive()
            await trio.sleep(IDLE_SETTLE_S)
            rss_after = resident_kib()
            machine = MachineCpu()
            cpu_before = cpu_seconds()
            actions = await run_load_generator(
                {
                    "kind": "http",
                    "url": server.url,
                    "tokens": racers,
                    "rate": BROADCAST_ACTIONS_PER_S,
                    "duration_s": plan.broadcast_seconds,
                    "connections": 16,
                }
            )
            ledger.accepted += actions["accepted"]
            await ledger.wait_until_stored()
            await trio.sleep(FINAL_UPDATE_GRACE_S)
            server_cpu = cpu_seconds() - cpu_before
            machine_busy = machine.busy()
            await watchers.send({"stop": True})
            result = await watchers.receive()
        latency = result["latency_ms"]
        table.add(
            clients,
            fmt(ready["connect_s"], 2),
            fmt(rss_before / 1024),
            fmt(rss_after / 1024),
            fmt((rss_after - rss_before) / clients),
            result["updates"],
            result["updates_per_client_min"],
            fmt(result["updates"] / actions["elapsed_s"], 0),
            fmt(latency["p50"]),
            fmt(latency["p99"]),
            fmt(latency["max"]),
            f"{server_cpu / actions['elapsed_s']:.0%}",
            f"{machine_busy:.0%}",
            f"{result['saw_final_board']}/{clients}",
            sum(result["failed"].values()) or 0,
        )
        if result["failed"]:
            table.notes.append(f"{clients} clients: failures {result['failed']}")
    table.notes += [
        "delivery latency: the keeper's commit timestamp in the frame → the client's receipt "
        "(includes the events exchange, the hub's tick of "
        f"{server.services.config.websocket.min_update_interval_s if server.services else '?'} s "
        "and the socket)",
        "KiB/idle conn: server RSS after connecting, authenticating and idling "
        f"{IDLE_SETTLE_S:g} s, minus before, per connection; "
        "final board: clients whose last update equals GET /api/v1/leaderboard at the end",
    ]
    tables.append(table)


async def correctness_check(server: ServerHandle, ledger: Ledger, tables: list[Table]) -> None:
    """Every accepted action stored as completed, and the invariants of `scoreboard verify`.
    The Redis board follows the store a moment later (the keeper applies after the commit), so
    verify is repeated until it passes or BOARD_CONVERGENCE_TIMEOUT_S runs out."""
    assert server.services is not None
    await ledger.wait_until_stored()
    completed, stored = await ledger.counts()
    started = time.monotonic()
    while True:
        report = await verify(server.services.store, server.services.board)
        waited_s = time.monotonic() - started
        if report.ok or waited_s > BOARD_CONVERGENCE_TIMEOUT_S:
            break
        await trio.sleep(SCORED_POLL_S)
    counts_ok = completed == stored == ledger.accepted
    table = Table(
        "Correctness after all stages",
        ["accepted", "stored", "completed", "verify", "board caught up after s", "result"],
    )
    table.add(
        ledger.accepted,
        stored,
        completed,
        report.lines()[-1],
        fmt(waited_s, 2),
        "PASS" if counts_ok and report.ok else "FAIL",
    )
    table.notes += report.lines()[:-1][:MISMATCHES_SHOWN]
    tables.append(table)


async def timed_ms(job: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await job()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def adapters_stage(config: Config, plan: Plan, tables: list[Table]) -> None:
    """The adapters alone, with the server stopped (what the queue receives stays unconsumed)."""
    table = Table(
        "Adapter microbenchmarks (server stopped; each call crosses the asyncio bridge once)",
        ["what", "calls", "median", "max", "throughput"],
    )
    async with open_backends(config) as backends:
        await backends.broker.declare_topology()  # done by the server, if it ran
        user_ids = await create_users(backends.store, ADAPTER_BATCH, "adapter")

        def envelope(index: int) -> ActionEnvelope:
            return ActionEnvelope(
                action_id=uuid.uuid4(),
                user_id=user_ids[index % len(user_ids)],
                action_type="complete_task",
                action_data={"task_id": f"adapter-{index}", "completion_time": int(time.time())},
                nonce=uuid.uuid4().hex,
                received_at_ms=time.time_ns() // 1_000_000,
            )

        pending = iter(range(plan.publishes))

        async def publisher() -> None:
            for index in pending:
                await backends.broker.publish_action(envelope(index))

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(PUBLISH_CONCURRENCY):
                nursery.start_soon(publisher)
        elapsed = time.perf_counter() - started
        table.add(
            f"confirmed publish, {PUBLISH_CONCURRENCY} concurrent",
            plan.publishes,
            "-",
            "-",
            f"{plan.publishes / elapsed:,.0f} publishes/s",
        )

        # What the API's publisher actor does: one crossing per batch of publishes.
        batches = [
            [envelope(index) for index in range(start, min(start + MAX_BATCH, plan.publishes))]
            for start in range(0, plan.publishes, MAX_BATCH)
        ]
        confirmed = 0
        started = time.perf_counter()
        for batch in batches:
            confirmed += (await backends.broker.publish_actions(batch)).count(None)
        elapsed = time.perf_counter() - started
        table.add(
            f"confirmed publish, batches of {MAX_BATCH}",
            plan.publishes,
            "-",
            "-",
            f"{confirmed / elapsed:,.0f} publishes/s",
        )

        async def commit_batch() -> None:
            decisions = [Decision(envelope(i), "completed", 10) for i in range(ADAPTER_BATCH)]
            await backends.store.commit_actions(decisions)

        commit_ms = await timed_ms(commit_batch, plan.commit_batches)
        table.add(
            f"group commit of {ADAPTER_BATCH} actions",
            plan.commit_batches,
            f"{statistics.median(commit_ms):.1f} ms",
            f"{max(commit_ms):.1f} ms",
            f"{ADAPTER_BATCH / statistics.median(commit_ms) * 1000:,.0f} actions/s",
        )

        entries = await backends.store.board_entries()
        await backends.board.rebuild(entries)
        rounds = iter(range(1, plan.board_applies + 1))

        async def apply_board() -> None:
            step = next(rounds)
            raised = [
                BoardEntry(e.user_id, e.username, e.score + 10 * step, e.score_reached_at_ms + step)
                for e in entries
            ]
            await backends.board.apply(raised, config.leaderboard.size)

        apply_ms = await timed_ms(apply_board, plan.board_applies)
        table.add(
            f"Redis board apply of {len(entries)} entries + top {config.leaderboard.size}",
            plan.board_applies,
            f"{statistics.median(apply_ms):.1f} ms",
            f"{max(apply_ms):.1f} ms",
            f"{len(entries) / statistics.median(apply_ms) * 1000:,.0f} entries/s",
        )
    tables.append(table)
