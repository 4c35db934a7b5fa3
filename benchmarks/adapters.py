"""The adapters alone: confirmed publishes, group commits, board applies."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from benchmarks.figures import Table
from scoreboard.actors.publisher import MAX_BATCH
from scoreboard.adapters.interfaces import Store
from scoreboard.auth.passwords import Passwords
from scoreboard.backends import open_backends
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, BoardEntry, Decision, Outcome

PASSWORD = "correct horse battery"
PUBLISH_CONCURRENCY = 100
ADAPTER_BATCH = 500


@dataclass(frozen=True)
class AdapterPlan:
    """How many calls of each microbenchmark: `--quick` and the full run differ only here."""

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


async def timed_ms(job: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await job()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def adapters_stage(config: Config, plan: AdapterPlan, tables: list[Table]) -> None:
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
            decisions = [
                Decision(envelope(i), Outcome("completed", 10)) for i in range(ADAPTER_BATCH)
            ]
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
