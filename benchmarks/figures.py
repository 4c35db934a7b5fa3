"""Percentiles, process measurements and the plain-text tables the benchmarks print."""

from __future__ import annotations

import math
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
    }


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resident_kib() -> int:
    """This process's resident set size (VmRSS) in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class MachineCpu:
    """How busy all CPUs of the machine were (from /proc/stat) since this object was made:
    the server, the clients, PostgreSQL, Redis, RabbitMQ and anything else running."""

    def __init__(self) -> None:
        self.start = self.ticks()

    @staticmethod
    def ticks() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def busy(self) -> float:
        busy, total = self.ticks()
        return (busy - self.start[0]) / max(1, total - self.start[1])


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


@dataclass
class Table:
    """A titled table of right-aligned columns, with notes printed under it."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(cell) for cell in cells])

    def render(self) -> str:
        widths = [
            max([len(column)] + [len(row[i]) for row in self.rows])
            for i, column in enumerate(self.columns)
        ]

        def line(cells: Sequence[str]) -> str:
            return "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

        lines = [self.title, line(self.columns), *(line(row) for row in self.rows)]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)
