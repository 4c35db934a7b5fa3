"""`python -m benchmarks [--quick] [--only NAME]` (or `just bench ...`): print the figures."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence

import trio

from benchmarks.figures import Table
from benchmarks.isolation import IsolatedBackends, isolated_backends
from benchmarks.stages import (
    Ledger,
    Plan,
    adapters_stage,
    broadcast_stage,
    correctness_check,
    http_stage,
)
from scoreboard.server import GC_THRESHOLDS, ServerHandle, run_server

STAGES = ("http", "broadcast", "adapters")
SERVER_START_TIMEOUT_S = 60

FULL = Plan(
    http_rates=(200, 500, 1000, 1500),
    http_seconds=5,
    http_players=200,
    http_connections=100,
    broadcast_clients=(100, 500),
    broadcast_seconds=5,
    publishes=5000,
    commit_batches=10,
    board_applies=20,
)
QUICK = Plan(
    http_rates=(200, 500),
    http_seconds=2,
    http_players=50,
    http_connections=50,
    broadcast_clients=(100,),
    broadcast_seconds=3,
    publishes=1000,
    commit_batches=3,
    board_applies=5,
)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (under a minute)")
    parser.add_argument(
        "--only",
        choices=STAGES,
        action="append",
        help="run only this stage (repeatable); http includes the scoring throughput",
    )
    return parser.parse_args(argv)


async def run_stages(backends: IsolatedBackends, plan: Plan, stages: Sequence[str]) -> list[Table]:
    tables: list[Table] = []
    if "http" in stages or "broadcast" in stages:
        ledger = Ledger(backends)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(SERVER_START_TIMEOUT_S):
                server: ServerHandle = await nursery.start(run_server, backends.config)
            if "http" in stages:
                await http_stage(server, ledger, plan, tables)
            if "broadcast" in stages:
                await broadcast_stage(server, ledger, plan, tables)
            await correctness_check(server, ledger, tables)
            await server.supervisor.shutdown()
            server.request_shutdown()
    if "adapters" in stages:
        await adapters_stage(backends.config, plan, tables)
    return tables


async def main(arguments: argparse.Namespace) -> None:
    plan = QUICK if arguments.quick else FULL
    stages = arguments.only or STAGES
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    async with isolated_backends() as backends:
        tables = await run_stages(backends, plan, stages)
    config = backends.config
    print()
    print(f"$ python -m benchmarks {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; server in this process "
        f"(role=all, limits.enabled={config.limits.enabled}, gc thresholds {GC_THRESHOLDS}, "
        f"database pool {config.database.pool_min}-{config.database.pool_max}, "
        f"amqp prefetch {config.amqp.prefetch}, scorer max_batch {config.scorer.max_batch}), "
        "clients in a separate process, loopback only"
    )
    print(
        f"load average (1 min) at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}: "
        "other work on the machine shares the CPUs with the whole stack"
    )
    for table in tables:
        print()
        print(table.render())
    print(f"\ntotal {time.monotonic() - started:.0f} s")


def run(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    gc.set_threshold(*GC_THRESHOLDS)  # as `scoreboard serve` does
    trio.run(main, arguments)


if __name__ == "__main__":
    run()
