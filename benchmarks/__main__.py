"""`python -m benchmarks [--quick] [--only KIND] [--server-processes N]` (or `just bench ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from benchmarks.adapters import AdapterPlan, adapters_stage
from benchmarks.figures import Table
from benchmarks.isolation import bench_backends
from benchmarks.results import git_commit, machine, markdown, row
from benchmarks.scenarios import Outcome, Plan, run_scenario
from benchmarks.servers import processes_option_available

KINDS = ("matrix", "idle", "fanout", "adapters")
RESULTS = Path(__file__).resolve().parent / "results"

FULL = Plan(
    matrix_clients=(100, 1000, 5000),
    matrix_rates=(200, 500, 1000, 2000),
    matrix_duration_s=10,
    idle_clients=10_000,
    idle_duration_s=5,
    fanout_clients=10_000,
    fanout_rate=50,
    fanout_duration_s=10,
    users=50,
    drain_timeout_s=20,
)
QUICK = Plan(
    matrix_clients=(100,),
    matrix_rates=(200, 500),
    matrix_duration_s=4,
    idle_clients=1000,
    idle_duration_s=2,
    fanout_clients=1000,
    fanout_rate=50,
    fanout_duration_s=4,
    users=20,
    drain_timeout_s=10,
)
ADAPTERS_FULL = AdapterPlan(publishes=5000, commit_batches=10, board_applies=20)
ADAPTERS_QUICK = AdapterPlan(publishes=1000, commit_batches=3, board_applies=5)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a small matrix of short runs (a smoke test)"
    )
    parser.add_argument(
        "--only", choices=KINDS, action="append", help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        help="pass --processes N to `scoreboard serve` (default: the server's own default, "
        "when it has the option)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="where the dated JSON and markdown files go (default: benchmarks/results)",
    )
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Session:
    """What one `just bench` decided and measured."""

    arguments: argparse.Namespace
    processes: int | None
    server_processes: str
    work_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    adapter_lines: list[str] = field(default_factory=list)


async def measure(session: Session) -> None:
    arguments = session.arguments
    plan = QUICK if arguments.quick else FULL
    kinds = set(arguments.only or KINDS)
    async with bench_backends() as backends:
        scenarios = plan.scenarios(kinds)
        for number, scenario in enumerate(scenarios, 1):
            say(f"[{number}/{len(scenarios)}] {scenario.name}: {' '.join(scenario.arguments())}")
            outcome = await run_scenario(
                backends, scenario, session.work_dir, processes=session.processes
            )
            session.outcomes.append(outcome)
            say(f"    {outcome.seconds:.0f} s: " + ", ".join(row(outcome)[3:]))
        if "adapters" in kinds:
            say("adapters")
            tables: list[Table] = []
            async with backends.fresh() as config:
                await adapters_stage(
                    config, ADAPTERS_QUICK if arguments.quick else ADAPTERS_FULL, tables
                )
            session.adapter_lines = [line for t in tables for line in t.render().splitlines()]


def run(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers and clients inherit it
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M") + ("-quick" if arguments.quick else "")
    out: Path = arguments.out
    work_dir = out / f"{stamp}-runs"  # charts, loadtest JSON and server logs: not in git
    work_dir.mkdir(parents=True, exist_ok=True)
    has_processes = processes_option_available()
    if arguments.server_processes is not None and not has_processes:
        say("this `scoreboard serve` has no --processes option: one process per server")
    processes = arguments.server_processes if has_processes else None
    server_processes = (
        f"--processes {processes}"
        if processes is not None
        else ("the server's default --processes" if has_processes else "one server process")
    )
    session = Session(arguments, processes, server_processes, work_dir)
    trio.run(measure, session)
    header = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "just bench " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "server_command": ["scoreboard", "serve", "--host", "127.0.0.1", "--port", "<free>"]
        + ([f"--processes={processes}"] if processes is not None else []),
        "server_processes": server_processes,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "total_s": time.monotonic() - started,
    }
    table = markdown(session.outcomes, header, session.adapter_lines)
    json_path, markdown_path = out / f"{stamp}.json", out / f"{stamp}.md"
    document = {
        **header,
        "runs": [outcome.as_json() for outcome in session.outcomes],
        "adapters": session.adapter_lines,
    }
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    markdown_path.write_text(table)
    print(table)
    say(f"wrote {markdown_path} and {json_path} (charts and logs in {work_dir})")
    sys.exit(0 if all(outcome.error is None for outcome in session.outcomes) else 1)


if __name__ == "__main__":
    run()
