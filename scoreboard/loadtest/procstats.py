"""CPU and memory of processes on this machine, read from /proc (Linux).

The server is found by the port it listens on (every process holding a listening socket on that
port: several with SO_REUSEPORT), widened to its process tree: a parent that is itself a
`scoreboard serve` (a supervisor of API and worker processes) and every descendant, found
again at each sample so that a restarted child is counted too. `--server-pid` names the root
instead.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTEN_STATE = "0A"
SERVE_COMMAND = re.compile(r"scoreboard\S*\s+(?:\S+\s+)*serve\b")


@dataclass(frozen=True)
class ProcessSample:
    cpu_s: float
    rss_kib: int
    pss_kib: int | None


def read_sample(pid: int) -> ProcessSample | None:
    """CPU seconds so far and resident memory of one process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        rss_kib = 0
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_kib = int(line.split()[1])
                    break
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return ProcessSample(cpu_s, rss_kib, _pss_kib(pid))


def _pss_kib(pid: int) -> int | None:
    """Proportional set size: memory shared between forked processes is split among them, so
    the sum over a process tree does not count shared pages twice."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(roots: Iterable[int]) -> set[int]:
    """The roots and every process below them."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        parent = parent_of(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending += children.get(pid, [])
    return found


def listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows)
                for row in rows:
                    columns = row.split()
                    local, state, inode = columns[1], columns[3], columns[9]
                    if state == LISTEN_STATE and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def listening_pids(port: int) -> set[int]:
    """Processes holding a socket that listens on this TCP port (any local address)."""
    targets = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    if not targets:
        return set()
    pids: set[int] = set()
    for pid in all_pids():
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{descriptor}") in targets:
                    pids.add(pid)
                    break
            except OSError:
                continue
    return pids


def ancestors(pid: int) -> set[int]:
    found: set[int] = set()
    while (parent := parent_of(pid)) is not None and parent > 0 and parent not in found:
        found.add(parent)
        pid = parent
    return found


def server_roots(port: int) -> set[int]:
    """The listening processes, each replaced by its topmost ancestor that is still a
    `scoreboard serve` (the supervisor of several API and worker processes) without climbing
    into this process's own ancestors."""
    ours = ancestors(os.getpid()) | {os.getpid()}
    roots: set[int] = set()
    for pid in listening_pids(port) - {os.getpid()}:
        root = pid
        while (parent := parent_of(root)) is not None and parent > 1 and parent not in ours:
            if not SERVE_COMMAND.search(command_line(parent)):
                break
            root = parent
        roots.add(root)
    return roots


@dataclass
class TreeSample:
    at: float  # time.monotonic()
    cpu_s: float  # CPU seconds of every process seen so far, the exited ones included
    rss_kib: int
    pss_kib: int | None
    processes: int


@dataclass
class ProcessTree:
    """A process tree sampled over time. CPU time of processes that exit stays counted."""

    roots: set[int]
    excluded: set[int] = field(default_factory=set)  # roots of trees that are not part of it
    samples: list[TreeSample] = field(default_factory=list)
    _last_cpu: dict[int, float] = field(default_factory=dict)
    _gone_cpu_s: float = 0.0

    def sample(self) -> TreeSample:
        pids = descendants(self.roots) - descendants(self.excluded)
        readings = {pid: read_sample(pid) for pid in pids}
        alive = {pid: reading for pid, reading in readings.items() if reading is not None}
        for pid in set(self._last_cpu) - set(alive):
            self._gone_cpu_s += self._last_cpu.pop(pid)
        for pid, reading in alive.items():
            self._last_cpu[pid] = reading.cpu_s
        pss = [reading.pss_kib for reading in alive.values()]
        sample = TreeSample(
            at=time.monotonic(),
            cpu_s=self._gone_cpu_s + sum(self._last_cpu.values()),
            rss_kib=sum(reading.rss_kib for reading in alive.values()),
            pss_kib=None if not pss or None in pss else sum(p for p in pss if p is not None),
            processes=len(alive),
        )
        self.samples.append(sample)
        return sample


def cpu_share(first: TreeSample, last: TreeSample) -> float:
    """Average CPU use between two samples, 1.0 = one core busy."""
    elapsed = last.at - first.at
    return (last.cpu_s - first.cpu_s) / elapsed if elapsed > 0 else 0.0


class MachineCpu:
    """How busy all CPUs were between two readings of /proc/stat (everything on the machine)."""

    @staticmethod
    def ticks() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            values = [int(value) for value in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle and iowait
        return sum(values) - idle, sum(values)

    @staticmethod
    def busy(first: tuple[int, int], last: tuple[int, int]) -> float:
        """Share of all CPUs that was busy, 1.0 = every core."""
        return (last[0] - first[0]) / max(1, last[1] - first[1])
