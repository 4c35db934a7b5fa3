"""The parent's side of the watcher processes: start them, pass them commands, merge their
figures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from scoreboard.loadtest.histogram import Histogram, Series

WATCHER_COMMAND = [sys.executable, "-m", "scoreboard.loadtest.watchers"]
EVENTS_BUFFER = 64
# A watcher process that reads its sockets later than this after the data arrived (p99) is
# falling behind: the server sends each client an update per tick (100 ms by default), and a
# process that needs longer than a tick to read one tick's frames gets further behind with each.
BEHIND_P99_MS = 100.0


class WorkerFailed(Exception):
    """A watcher process exited before it answered."""


class WatcherProcess:
    """One `python -m scoreboard.loadtest.watchers` and the last progress it reported."""

    def __init__(self, process: trio.Process, clients: int) -> None:
        self.process = process
        self.clients = clients
        self.progress: dict[str, Any] = {"connected": 0, "refused": 0, "frames": 0, "dropped": 0}
        self.ready: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.ready_event = trio.Event()
        self.result_event = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")

    async def read_events(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while True:
            chunk = await self.process.stdout.receive_some(1 << 20)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                event = json.loads(line)
                kind = event.pop("event")
                if kind == "progress":
                    self.progress = event
                elif kind == "ready":
                    self.ready = event
                    self.ready_event.set()
                elif kind == "result":
                    self.result = event
                    self.result_event.set()
        self.ready_event.set()
        self.result_event.set()

    async def wait_ready(self) -> dict[str, Any]:
        await self.ready_event.wait()
        if self.ready is None:
            raise WorkerFailed(f"watcher process {self.pid} exited while connecting")
        return self.ready

    async def wait_result(self) -> dict[str, Any]:
        await self.result_event.wait()
        if self.result is None:
            raise WorkerFailed(f"watcher process {self.pid} exited without its figures")
        return self.result


async def start_watchers(
    nursery: trio.Nursery, jobs: Sequence[dict[str, Any]]
) -> list[WatcherProcess]:
    processes = []
    for job in jobs:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                WATCHER_COMMAND,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        watcher = WatcherProcess(process, len(job["clients"]))
        nursery.start_soon(watcher.read_events)
        await watcher.send(job)
        processes.append(watcher)
    return processes


@dataclass
class FleetFigures:
    """The watcher processes' figures, merged."""

    clients: int = 0
    connected: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    connect_retries: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_in_window: int = 0
    open_at_end: int = 0
    frames: int = 0
    other_frames: int = 0
    malformed: int = 0
    window_updates: list[int] = field(default_factory=list)
    updates_per_second: Counter[int] = field(default_factory=Counter)
    lag: Histogram = field(default_factory=Histogram)
    lag_series: Series = field(default_factory=Series)
    gap: Histogram = field(default_factory=Histogram)
    read_delay: Histogram = field(default_factory=Histogram)
    a2s: Histogram = field(default_factory=Histogram)
    a2s_series: Series = field(default_factory=Series)
    a2s_late: int = 0
    a2s_tracked_clients: int = 0
    a2s_tracked_actions: int = 0
    a2s_sampling_step: int = 1
    on_final_board: int = 0
    snapshots_distinct: int = 0

    def behind_warning(self) -> str | None:
        """What to say when the watcher processes did not keep up with their sockets."""
        p99 = self.read_delay.percentile(99)
        if p99 is None or p99 <= BEHIND_P99_MS:
            return None
        return (
            f"the watcher processes read their sockets up to {p99:,.0f} ms (p99) after the data "
            f"arrived (max {self.read_delay.max_ms:,.0f} ms): the latencies count from the "
            "kernel's arrival times and do not include it, but watchers that stay behind let "
            "the sockets' receive buffers fill and the server then sees slow readers; use more "
            "--client-processes or a second machine"
        )

    def merge(self, result: dict[str, Any]) -> None:
        self.clients += result["clients"]
        self.connected += result["connected"]
        self.refused.update(result["refused"])
        self.connect_retries += result["connect_retries"]
        self.dropped.update(result["dropped"])
        self.dropped_in_window += result["dropped_in_window"]
        self.open_at_end += result["open_at_end"]
        self.frames += result["frames"]
        self.other_frames += result["other_frames"]
        self.malformed += result["malformed"]
        self.window_updates += result["window_updates"]
        self.updates_per_second.update({int(s): n for s, n in result["updates_per_second"].items()})
        self.lag.merge(Histogram.from_json(result["lag"]))
        self.lag_series.merge(Series.from_json(result["lag_series"]))
        self.gap.merge(Histogram.from_json(result["gap"]))
        self.read_delay.merge(Histogram.from_json(result["read_delay"]))
        self.a2s.merge(Histogram.from_json(result["a2s"]))
        self.a2s_series.merge(Series.from_json(result["a2s_series"]))
        self.a2s_late += result["a2s_late"]
        self.a2s_tracked_clients += result["a2s_tracked_clients"]
        self.a2s_tracked_actions = max(self.a2s_tracked_actions, result["a2s_tracked_actions"])
        self.a2s_sampling_step = max(self.a2s_sampling_step, result["a2s_sampling_step"])
        self.on_final_board += result["on_final_board"]
        self.snapshots_distinct = max(self.snapshots_distinct, result["snapshots_distinct"])
