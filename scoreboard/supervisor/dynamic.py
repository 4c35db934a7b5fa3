"""A dynamic supervisor, after OTP's simple_one_for_one: many children of one kind, started on
demand, each restarted alone.

Whoever owns it (the router, for the user actors) runs it in its own nursery and starts children
with `start_child`. A child that crashes is restarted after a backoff of its own, and only it: its
siblings and its owner carry on. A child that returns has finished (a user actor reaped when idle)
and is forgotten. More than `intensity` crashes among all the children within `period` seconds,
and the supervisor gives up: every child is stopped and `run` raises `SupervisorGaveUp`, so the
trouble goes to its owner's supervisor.

Thousands of children would drown the statistics in rows: `statistics()` gives one row for all of
them (`children`: how many; restarts since it started and inbox depths summed), then one row for
each of the busiest few (restarting, or with the deepest inboxes).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import trio

from scoreboard import clock
from scoreboard.backoff import Backoff, Jitter
from scoreboard.supervisor.intensity import RestartIntensity
from scoreboard.supervisor.spec import ChildSpec
from scoreboard.supervisor.statistics import ChildState, ChildStatistics
from scoreboard.supervisor.supervisor import SupervisorGaveUp, describe_error

logger = logging.getLogger(__name__)

BUSIEST = 5  # children listed one row each in the statistics


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    state: ChildState = "starting"
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    running_since: float | None = None
    started_at: float | None = None
    restarts: int = 0
    backoff_attempt: int = 0
    last_error: str | None = None
    injected: Exception | None = None
    inbox_peak: int = 0

    def inbox_depth(self) -> int:
        if self.spec.inbox is None:
            return 0
        depth = self.spec.inbox.statistics().current_buffer_used
        self.inbox_peak = max(self.inbox_peak, depth)
        return depth


class _ChildStatus(trio.TaskStatus[Any]):
    def __init__(self, child: _Child) -> None:
        self._child = child

    def started(self, value: Any = None) -> None:
        self._child.state = "running"
        self._child.running_since = trio.current_time()
        self._child.started_at = clock.now_s()


class DynamicSupervisor:
    """Children started by `start_child` under `name`, each restarted alone after a crash with a
    backoff between `backoff_min` and `backoff_max` seconds (reset once it has run
    `backoff_reset_after` seconds); more than `intensity` crashes in `period` seconds and it gives
    up. Child ids are for the statistics and `inject_crash`; they need not be unique."""

    def __init__(
        self,
        name: str,
        *,
        intensity: int = 20,
        period: float = 30.0,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        backoff_reset_after: float = 30.0,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        self._intensity = RestartIntensity(intensity, period)
        self._rng = rng if rng is not None else random.Random()
        self.backoff = Backoff(backoff_min, backoff_max, jitter, self._rng)
        self.name = name
        self.backoff_reset_after = backoff_reset_after
        self._children: set[_Child] = set()
        self._nursery: trio.Nursery | None = None
        self._gave_up: SupervisorGaveUp | None = None
        self._empty = trio.Event()
        self._restarts = 0
        self._last_error: str | None = None
        self._inbox_peak = 0
        self._running_since: float | None = None
        self._started_at: float | None = None

    def __len__(self) -> int:
        return len(self._children)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the children started from now on until cancelled or given up."""
        if self._nursery is not None:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._intensity.clear()
        self._gave_up = None
        self._restarts = 0
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._running_since = trio.current_time()
                self._started_at = clock.now_s()
                self._empty = trio.Event()
                self._empty.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._running_since = self._started_at = None
        if self._gave_up is not None:
            raise self._gave_up from self._gave_up.last_error

    def start_child(self, spec: ChildSpec) -> None:
        """Start a child now (without waiting for it to report started)."""
        if self._nursery is None:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        child = _Child(spec)
        self._children.add(child)
        if self._empty.is_set():
            self._empty = trio.Event()
        self._nursery.start_soon(self._supervise, child, name=f"{self.name}/{spec.id}")

    async def wait_until_empty(self) -> None:
        """Until every child has finished (returned), e.g. after their inboxes were closed."""
        await self._empty.wait()

    @property
    def all_running(self) -> bool:
        """Running and not given up: a child waiting for its restart keeps no one from work."""
        return self._nursery is not None and self._gave_up is None

    def inject_crash(self, child_id: str, error: Exception | None = None) -> None:
        """End the running children with id `child_id` (named `users/17`, as in the statistics)
        as if they had raised `error`. `LookupError` if there is none, or only ones with a crash
        injected that they have not yet crashed with (each injection is one crash, one restart)."""
        head, _, rest = child_id.partition("/")
        targets = [
            c
            for c in self._children
            if c.spec.id == rest and c.state == "running" and c.injected is None
        ]
        if head != self.name or not targets:
            raise LookupError(f"{self.name}: no running child {child_id!r}")
        for child in targets:
            child.injected = error or RuntimeError(f"a crash injected into {child_id!r}")
            child.cancel_scope.cancel()

    def statistics(self) -> list[ChildStatistics]:
        """One row for all the children, then one for each of the `BUSIEST` busiest."""
        depths = {child: child.inbox_depth() for child in self._children}
        total_depth = sum(depths.values())
        self._inbox_peak = max(self._inbox_peak, total_depth)
        running = self._running_since is not None
        summary = ChildStatistics(
            id=self.name,
            state="running" if running else "failed" if self._gave_up else "stopped",
            restarts=self._restarts,
            last_error=self._last_error,
            started_at=self._started_at,
            uptime_s=None
            if self._running_since is None
            else trio.current_time() - self._running_since,
            inbox_depth=total_depth,
            inbox_peak=self._inbox_peak,
            children=len(self._children),
        )
        busy = [c for c in self._children if c.state != "running" or depths[c]]
        busy.sort(key=lambda c: (c.state != "running", depths[c], c.restarts), reverse=True)
        return [summary, *(self._row(child, depths[child]) for child in busy[:BUSIEST])]

    def _row(self, child: _Child, depth: int) -> ChildStatistics:
        running_since = child.running_since if child.state == "running" else None
        return ChildStatistics(
            id=f"{self.name}/{child.spec.id}",
            state=child.state,
            restarts=child.restarts,
            last_error=child.last_error,
            started_at=child.started_at if running_since is not None else None,
            uptime_s=None if running_since is None else trio.current_time() - running_since,
            inbox_depth=depth if child.spec.inbox is not None else None,
            inbox_peak=child.inbox_peak if child.spec.inbox is not None else None,
        )

    async def _supervise(self, child: _Child) -> None:
        try:
            while True:
                error = await self._run_incarnation(child)
                if error is None:
                    return
                delay = self._restart_delay(child, error)
                if delay is None:
                    return
                child.state = "restarting"
                await trio.sleep(delay)
        finally:
            self._children.discard(child)
            if not self._children:
                self._empty.set()

    async def _run_incarnation(self, child: _Child) -> Exception | None:
        """One call of the child's `start`: the exception it crashed with, None if it returned."""
        child.cancel_scope = trio.CancelScope()
        child.state = "starting"
        child.running_since = None
        try:
            with child.cancel_scope:
                await child.spec.start(task_status=_ChildStatus(child))
            if child.injected is not None:
                raise child.injected
        except Exception as exc:
            child.injected = None
            child.last_error = self._last_error = describe_error(exc)
            logger.exception("%s: child %r crashed", self.name, child.spec.id)
            return exc
        child.state = "stopped"
        return None

    def _restart_delay(self, child: _Child, error: Exception) -> float | None:
        """When to restart `child` after `error`; None when that was one crash too many (the
        supervisor gives up and every child is stopped)."""
        now = trio.current_time()
        if self._intensity.exceeded_by_one_more(now):
            assert self._nursery is not None
            logger.error(
                "%s: more than %d crashes in %g s, the last of child %r; giving up",
                self.name,
                self._intensity.intensity,
                self._intensity.period,
                child.spec.id,
            )
            child.state = "failed"
            self._gave_up = SupervisorGaveUp(self.name, child.spec.id, error)
            self._nursery.cancel_scope.cancel()
            return None
        ran_since = child.running_since
        if ran_since is not None and now - ran_since >= self.backoff_reset_after:
            child.backoff_attempt = 0
        delay = self.backoff.delay(child.backoff_attempt)
        child.backoff_attempt += 1
        child.restarts += 1
        self._restarts += 1
        logger.warning("%s: restarting child %r in %.2f s", self.name, child.spec.id, delay)
        return delay
