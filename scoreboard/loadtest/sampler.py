"""Once a second: the server's processes, the load generator's own processes, the whole machine."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import trio

from scoreboard.loadtest.procstats import (
    MachineCpu,
    ProcessSample,
    ProcessTree,
    TreeSample,
    cpu_share,
    read_sample,
    server_roots,
)

SAMPLE_INTERVAL_S = 1.0
SATURATED = 0.9  # of one core: a load-generator process this busy bounds the figures


@dataclass
class Sampler:
    server: ProcessTree | None
    worker_pids: list[int] = field(default_factory=list)
    machine: list[tuple[float, tuple[int, int]]] = field(default_factory=list)
    own: dict[int, list[tuple[float, ProcessSample]]] = field(default_factory=dict)

    @classmethod
    def for_server(cls, port: int, server_pid: int | None) -> Sampler:
        roots = {server_pid} if server_pid else server_roots(port)
        tree = ProcessTree(roots, excluded={os.getpid()}) if roots else None
        return cls(tree)

    def sample(self) -> TreeSample | None:
        now = time.monotonic()
        self.machine.append((now, MachineCpu.ticks()))
        for pid in [os.getpid(), *self.worker_pids]:
            reading = read_sample(pid)
            if reading is not None:
                self.own.setdefault(pid, []).append((now, reading))
        return self.server.sample() if self.server else None

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(SAMPLE_INTERVAL_S)

    # -- figures over a window [start, end] of time.monotonic()

    def server_between(self, start: float, end: float) -> tuple[TreeSample, TreeSample] | None:
        if self.server is None:
            return None
        inside = [s for s in self.server.samples if start - 1.5 <= s.at <= end + 1.5]
        if len(inside) < 2:
            return None
        first = min(inside, key=lambda s: abs(s.at - start))
        last = min(inside, key=lambda s: abs(s.at - end))
        return (first, last) if last.at > first.at else None

    def server_cpu(self, start: float, end: float) -> float | None:
        pair = self.server_between(start, end)
        return cpu_share(*pair) if pair else None

    def machine_busy(self, start: float, end: float) -> float | None:
        inside = [m for m in self.machine if start - 1.5 <= m[0] <= end + 1.5]
        if len(inside) < 2:
            return None
        first = min(inside, key=lambda m: abs(m[0] - start))[1]
        last = min(inside, key=lambda m: abs(m[0] - end))[1]
        return MachineCpu.busy(first, last)

    def own_cpu(self, start: float, end: float) -> dict[int, float]:
        """CPU share of each load-generator process over the window (1.0 = one core)."""
        shares: dict[int, float] = {}
        for pid, readings in self.own.items():
            inside = [r for r in readings if start - 1.5 <= r[0] <= end + 1.5]
            if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
                elapsed = inside[-1][0] - inside[0][0]
                shares[pid] = (inside[-1][1].cpu_s - inside[0][1].cpu_s) / elapsed
        return shares
