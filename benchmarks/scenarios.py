"""The benchmark's load-test runs: what each asks of `scoreboard loadtest`, and running one
against a fresh server."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from benchmarks.isolation import BenchBackends
from benchmarks.servers import ServerFailed, running_server

LOADTEST_TIMEOUT_S = 600.0
ERROR_LINES = 12
REQUEST_TIMEOUT_S = 5.0  # bounds a run against a server slower than the offered rate


@dataclass(frozen=True)
class Scenario:
    kind: str  # matrix, idle or fanout
    clients: int
    rate: float
    duration_s: float
    users: int
    drain_timeout_s: float
    leader_rate: float | None = None

    @property
    def name(self) -> str:
        if self.kind == "idle":
            return f"idle-{self.clients}"
        if self.kind == "fanout":
            return f"fanout-{self.clients}x10hz"
        return f"c{self.clients}-r{self.rate:g}"

    def arguments(self) -> list[str]:
        arguments = [
            *("--clients", str(self.clients), "--rate", f"{self.rate:g}"),
            *("--duration", f"{self.duration_s:g}", "--users", str(self.users)),
            *("--drain-timeout", f"{self.drain_timeout_s:g}"),
            *("--request-timeout", f"{REQUEST_TIMEOUT_S:g}"),
        ]
        if self.leader_rate is not None:
            arguments += ["--leader-rate", f"{self.leader_rate:g}"]
        return arguments


@dataclass(frozen=True)
class Plan:
    matrix_clients: tuple[int, ...]
    matrix_rates: tuple[int, ...]
    matrix_duration_s: float
    idle_clients: int
    idle_duration_s: float
    fanout_clients: int
    fanout_rate: float  # every action by a leader: the top 10 changes at every 100 ms tick
    fanout_duration_s: float
    users: int
    drain_timeout_s: float

    def scenarios(self, kinds: set[str]) -> list[Scenario]:
        runs: list[Scenario] = []
        if "matrix" in kinds:
            runs += [
                Scenario(
                    "matrix",
                    clients,
                    rate,
                    self.matrix_duration_s,
                    self.users,
                    self.drain_timeout_s,
                )
                for clients in self.matrix_clients
                for rate in self.matrix_rates
            ]
        if "idle" in kinds:
            runs.append(
                Scenario("idle", self.idle_clients, 0, self.idle_duration_s, self.users, 0.0)
            )
        if "fanout" in kinds:
            runs.append(
                Scenario(
                    "fanout",
                    self.fanout_clients,
                    self.fanout_rate,
                    self.fanout_duration_s,
                    self.users,
                    self.drain_timeout_s,
                    leader_rate=self.fanout_rate,
                )
            )
        return runs


@dataclass
class Outcome:
    scenario: Scenario
    seconds: float
    result: dict[str, Any] | None
    error: str | None
    exit_status: int | None

    def as_json(self) -> dict[str, Any]:
        result = dict(self.result) if self.result else None
        if result is not None:
            result.pop("timeline", None)  # the chart holds it
        return {
            "name": self.scenario.name,
            "kind": self.scenario.kind,
            "arguments": self.scenario.arguments(),
            "seconds": round(self.seconds, 1),
            "exit_status": self.exit_status,
            "error": self.error,
            "result": result,
        }


async def run_scenario(
    backends: BenchBackends,
    scenario: Scenario,
    work_dir: Path,
    *,
    processes: int | None,
) -> Outcome:
    """One `scoreboard loadtest` run against a `scoreboard serve` of its own."""
    started = time.monotonic()
    json_path = work_dir / f"{scenario.name}.json"
    chart_path = work_dir / f"{scenario.name}.html"
    log_path = work_dir / f"{scenario.name}.server.log"
    try:
        async with (
            backends.fresh() as config,
            running_server(config, log_path, processes=processes) as server,
        ):
            command = [
                *(sys.executable, "-m", "scoreboard", "loadtest", "--url", server.url),
                *("--server-pid", str(server.pid), "--quiet"),
                *("--json", str(json_path), "--chart", str(chart_path)),
                *scenario.arguments(),
            ]
            with trio.fail_after(LOADTEST_TIMEOUT_S):
                done = await trio.run_process(
                    command, capture_stdout=True, capture_stderr=True, check=False
                )
    except (ServerFailed, trio.TooSlowError, OSError) as exc:
        return Outcome(scenario, time.monotonic() - started, None, str(exc), None)
    (work_dir / f"{scenario.name}.loadtest.log").write_bytes(done.stderr + done.stdout)
    result = json.loads(json_path.read_text()) if json_path.exists() else None
    error = None
    if done.returncode not in (0, 1) or result is None:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        reported = [line for line in lines if not line.startswith("loadtest: ")]
        error = "\n".join(reported[-ERROR_LINES:]) or f"exit status {done.returncode}"
    return Outcome(scenario, time.monotonic() - started, result, error, done.returncode)
