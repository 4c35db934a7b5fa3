"""The frozen record `Supervisor.statistics()` returns for each child."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ChildState = Literal["starting", "running", "restarting", "stopped", "failed"]
"""starting: `start` has not reported started yet; restarting: waiting out its backoff;
stopped: not running and not to be restarted (never started, returned normally, or stopped by the
supervisor); failed: crashed and will not be restarted (temporary child, or the supervisor gave up).
"""


@dataclass(frozen=True, slots=True)
class ChildStatistics:
    id: str
    state: ChildState
    restarts: int
    """Restarts scheduled for this child, whether for its own exit or a sibling's (strategy)."""
    last_error: str | None
    started_at: float | None
    """Wall-clock time (`clock.now_s()`) the running incarnation reported started, else None."""
    uptime_s: float | None
    """Seconds since the running incarnation reported started (trio clock), else None."""
    inbox_depth: int | None
    """Messages waiting in the inbox registered with `ChildSpec.inbox`, else None."""
    inbox_peak: int | None
    """The largest inbox depth seen (the channel's own peak where trio reports one)."""
    children: int | None = None
    """For a dynamic supervisor's row: how many children it runs (its row sums their restarts and
    inbox depths; the busiest few follow it, one row each). None for any other child."""
