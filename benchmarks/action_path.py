"""The action path from outside: `python -m benchmarks.action_path [--processes N] [--profile DIR]`.

Starts `scoreboard serve` as its own process tree on backends of its own (limits off), offers
open-loop `POST /api/v1/actions/perform` at each rate (`benchmarks.loadgen`, a process of its
own), and prints per rate: accepted/s, processed/s (first 202 → every accepted action stored),
the 202 latencies, the CPU of the server's processes and of the machine. At the end every
accepted action must be stored exactly once and `verify` must pass. With `--profile DIR`, py-spy
records the serving process (the API process that took the most CPU) during each rate and the
top functions are printed (py-spy must be installed: `pip install py-spy`).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import trio

from benchmarks.clients import run_load_generator
from benchmarks.figures import MachineCpu, Table, fmt
from benchmarks.isolation import IsolatedBackends, isolated_backends
from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import open_backends
from scoreboard.config import Config
from scoreboard.verify import verify

PASSWORD = "correct horse battery"
READY_TIMEOUT_S = 90
STORED_TIMEOUT_S = 180
POLL_S = 0.05
BOARD_CONVERGENCE_TIMEOUT_S = 10.0
TOP_FUNCTIONS = 15
EVERY_STACK = (
    "Thread.",
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "main (scoreboard/cli.py)",
    "run_serve",
    "_run (scoreboard/cli.py)",
    "run (trio/_core/_run.py)",
    "unrolled_run",
    "Supervisor._run_incarnation",
    "start (scoreboard/supervisor/spec.py)",
    "DynamicSupervisor._",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTED = re.compile(r"started child (\S+) \(pid (\d+)\)")
STORED = "SELECT count(*) AS stored, count(DISTINCT action_id) AS distinct_ids FROM action_logs"


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.action_path", description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=[200, 500, 1000])
    parser.add_argument("--seconds", type=float, default=10.0, help="offered load per rate")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections")
    parser.add_argument("--processes", type=int, default=1, help="scoreboard serve --processes")
    parser.add_argument("--profile", type=Path, help="record each rate with py-spy into DIR")
    parser.add_argument(
        "--source",
        type=Path,
        help="serve from another checkout of the project (e.g. `git archive` of an older commit) "
        "for before/after figures; it runs as that version's `scoreboard serve` does (with "
        "--processes if it has that setting)",
    )
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_environment(
    config: Config, port: int, processes: int, source: Path | None
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}
    env.update(
        {
            "SCOREBOARD_DATABASE_URL": config.database.url,
            "SCOREBOARD_REDIS_URL": config.redis.url,
            "SCOREBOARD_REDIS_PREFIX": config.redis.prefix,
            "SCOREBOARD_AMQP_URL": config.amqp.url,
            "SCOREBOARD_LIMITS_ENABLED": "false",
            "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_IP": "1000000",
            "SCOREBOARD_SERVER_PORT": str(port),
        }
    )
    if source is None or has_processes_setting(source):
        env["SCOREBOARD_SERVER_PROCESSES"] = str(processes)
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
        env["SCOREBOARD_CONFIG_DIR"] = str(source.resolve() / "config")
    return env


def has_processes_setting(source: Path) -> bool:
    """Whether that checkout's server knows `server.processes`: an older one refuses the setting
    as unknown, and runs one process."""
    defaults = tomllib.loads((source / "config" / "default.toml").read_text())
    return "processes" in defaults.get("server", {})


def process_tree(root: int) -> list[int]:
    """`root` and its descendants."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents[ppid].append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


class Server:
    """`scoreboard serve` as a process tree, its log in a file."""

    def __init__(
        self, config: Config, processes: int, log_path: Path, source: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config.replace(server={"port": self.port})
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scoreboard", "serve"],
                env=server_environment(config, self.port, processes, source),
                cwd=source,  # `python -m` imports from the working directory first
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self) -> None:
        with trio.fail_after(READY_TIMEOUT_S):
            while "scoreboard ready" not in self.log_path.read_text(errors="replace"):
                if self.process.poll() is not None:
                    raise RuntimeError(self.log_path.read_text(errors="replace"))
                await trio.sleep(0.1)
            async with httpx.AsyncClient(base_url=self.url) as client:
                while True:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                    await trio.sleep(0.1)

    def cpu_by_pid(self) -> dict[int, int]:
        return {pid: cpu_ticks(pid) for pid in process_tree(self.process.pid)}

    def names(self) -> dict[int, str]:
        """Each process of the tree by name: the children's from the parent's log."""
        named = {self.process.pid: "server"}
        for name, pid in STARTED.findall(self.log_path.read_text(errors="replace")):
            named[int(pid)] = name
        return named

    def serving(self) -> list[int]:
        """The processes that do the work: the children, or the one process."""
        tree = process_tree(self.process.pid)
        return [pid for pid in tree if pid != self.process.pid] or tree

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


async def players(config: Config, count: int) -> list[str]:
    async with open_backends(config, exclusive=False) as backends:
        keyring = await load_or_create_keyring(backends.store)
        password_hash = await Passwords().hash(PASSWORD)
        run = uuid.uuid4().hex[:6]
        user_ids = [
            await backends.store.create_user(f"ap{run}{i}", f"{run}{i}@example.com", password_hash)
            for i in range(count)
        ]
    return [
        issue_access_token(
            keyring, config=config, user_id=user_id, client_id="scoreboard-web", scope="read write"
        )[0]
        for user_id in user_ids
    ]


async def wait_until_stored(backends: IsolatedBackends, accepted: int) -> float:
    with trio.fail_after(STORED_TIMEOUT_S):
        while True:
            if (await backends.fetchrow(STORED))["stored"] >= accepted:
                return time.monotonic()
            await trio.sleep(POLL_S)


def summarise_profile(raw: Path) -> list[str]:
    """Top functions of a py-spy `raw` (collapsed stacks) file, inclusive and self; the thread,
    interpreter start-up and trio's scheduler frames, which every stack has, are left out."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")[1:]]
        total += count
        if not frames:
            continue  # py-spy caught the thread between frames: a sample with no stack
        for frame in set(frames):
            if not frame.startswith(EVERY_STACK):
                inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples; inclusive:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(TOP_FUNCTIONS)]
    lines.append("self:")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(TOP_FUNCTIONS)]
    return lines


def _short(frame: str) -> str:
    """`function (path/to/module.py:line)` → `function (package/module.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("site-packages", "scoreboard", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (1 if anchor != "scoreboard" else 0) :]
            break
    return f"{name} ({'/'.join(parts[-3:])})"


async def measure(arguments: argparse.Namespace) -> None:
    table = Table(
        f"POST /api/v1/actions/perform, open loop, {arguments.seconds:g} s per rate, "
        f"{arguments.users} users, {arguments.connections} keep-alive connections, "
        f"scoreboard serve --processes {arguments.processes} (limits off)"
        + (f", server from {arguments.source}" if arguments.source else ""),
        [
            "offered/s",
            "accepted/s",
            "processed/s",
            "drain s",
            "non-202",
            "errors",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU",
            "CPU ms/action",
            "busiest process",
            "loadgen CPU",
            "loadgen ms/request",
            "machine CPU",
        ],
    )
    profiles: list[str] = []
    async with isolated_backends() as backends:
        log_path = Path(f"/tmp/action-path-{uuid.uuid4().hex[:6]}.log")
        server = Server(backends.config, arguments.processes, log_path, arguments.source)
        accepted_total = 0
        try:
            await server.wait_ready()
            tokens = await players(server.config, arguments.users)
            for rate in arguments.rates:
                cpu_before = server.cpu_by_pid()
                machine = MachineCpu()
                names = server.names()
                spies: dict[str, subprocess.Popen[bytes]] = {}
                if arguments.profile is not None:
                    for pid in server.serving():
                        spies[names.get(pid, str(pid))] = start_py_spy(
                            arguments, pid, f"rate-{rate}-{names.get(pid, pid)}"
                        )
                result = await run_load_generator(
                    {
                        "kind": "http",
                        "url": server.url,
                        "tokens": tokens,
                        "rate": rate,
                        "duration_s": arguments.seconds,
                        "connections": arguments.connections,
                    }
                )
                elapsed = result["elapsed_s"]
                cpu_after = server.cpu_by_pid()
                machine_busy = machine.busy()
                used = {
                    pid: (ticks - cpu_before.get(pid, 0)) / CLOCK_TICKS / elapsed
                    for pid, ticks in cpu_after.items()
                }
                accepted_total += result["accepted"]
                stored_at = await wait_until_stored(backends, accepted_total)
                for name, spy in spies.items():
                    spy.wait()
                    raw = arguments.profile / f"rate-{rate}-{name}.txt"
                    profiles += [f"profile of {name} at {rate}/s ({raw}):", *summarise_profile(raw)]
                table.notes.append(
                    f"at {rate}/s CPU by process: "
                    + ", ".join(
                        f"{names.get(pid, pid)} {share:.0%}"
                        for pid, share in sorted(used.items(), key=lambda item: -item[1])
                    )
                )
                latency = result["latency_ms"]
                first, last = result["first_accept_at"], result["last_accept_at"]
                table.add(
                    rate,
                    fmt(result["accepted"] / elapsed),
                    fmt(result["accepted"] / (stored_at - first)) if first else "-",
                    fmt(stored_at - last, 2) if last else "-",
                    sum(n for code, n in result["statuses"].items() if code != "202"),
                    sum(result["errors"].values()),
                    fmt(latency["p50"]),
                    fmt(latency["p99"]),
                    fmt(latency["max"]),
                    f"{sum(used.values()):.0%}",
                    fmt(sum(used.values()) * elapsed * 1000 / max(1, result["accepted"]), 2),
                    f"{max(used.values()):.0%}",
                    f"{result['cpu_s'] / elapsed:.0%}",
                    fmt(result["cpu_s"] * 1000 / max(1, result["sent"]), 3),
                    f"{machine_busy:.0%}",
                )
                if result["worst_dispatch_lag_ms"] > 50:
                    table.notes.append(
                        f"at {rate}/s the load generator fell up to "
                        f"{result['worst_dispatch_lag_ms']:,.0f} ms behind its schedule"
                    )
            row = await backends.fetchrow(STORED)
            async with open_backends(server.config, exclusive=False) as checked:
                # The board follows the store a moment later (the keeper writes after commit).
                report = await verify(checked.store, checked.board)
                with trio.move_on_after(BOARD_CONVERGENCE_TIMEOUT_S):
                    while not report.ok:
                        await trio.sleep(POLL_S)
                        report = await verify(checked.store, checked.board)
            table.notes.append(
                f"accepted {accepted_total}, stored {row['stored']} "
                f"({row['distinct_ids']} distinct): lost {accepted_total - row['distinct_ids']}, "
                f"doubled {row['stored'] - row['distinct_ids']}; verify: {report.lines()[-1]}"
            )
        finally:
            exit_code = server.stop()
            table.notes.append(f"server exit status after SIGTERM: {exit_code}; log {log_path}")
    print(table.render())
    for line in profiles:
        print(line)


def start_py_spy(arguments: argparse.Namespace, pid: int, label: str) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    arguments.profile.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(arguments.seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            # Only the thread holding the GIL: the process's Python CPU, not threads waiting.
            "--gil",
            "--threads",
            "--output",
            str(arguments.profile / f"{label}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(argv: Sequence[str] | None = None) -> None:
    trio.run(measure, parse_arguments(argv))


if __name__ == "__main__":
    main()
