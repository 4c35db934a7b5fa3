"""An OTP-style supervisor in plain trio: start children in order, restart, stop in reverse.

Whoever wires the children opens every channel and keeps the originals; the supervisor only
calls `start` functions, and a restart is another call of the same `start`. `actor_spec` builds
an actor's child so that each call hands its incarnation fresh clones of the channels:

    scorer_handle, scorer_inbox = scorer.open_inbox()  # a memory channel of scorer.INBOX_SIZE
    supervisor = Supervisor(
        [
            actor_spec("scorer", scorer.run, scorer_inbox, store=store),
            actor_spec("router", router.run, router_inbox, scorer_handle, store=store),
        ],
        strategy="rest_for_one",
    )
    await nursery.start(supervisor.run)

Each incarnation closes its own clones when it ends (`with inbox:`); the originals stay open, so
while the scorer restarts its inbox stays open, its buffered messages wait for the next
incarnation and senders simply block. The supervisor reports the depth of each actor's inbox.

What a child reports with `task_status.started(value)` the supervisor keeps while that
incarnation runs (`started_value`): a child's results go up that way, never through callbacks.
A child that must be stopped through a trigger rather than cancelled, such as an HTTP server,
gets a `shutdown` hook; `start` makes a fresh trigger for each incarnation:

    class WebServer:
        async def run(self, *, task_status: trio.TaskStatus[str]) -> None:
            self._stop = trio.Event()
            await serve(app, self._stop, task_status=task_status)  # reports its URL

        def shutdown(self) -> None:
            self._stop.set()

    ChildSpec("http", web.run, shutdown=web.shutdown)

Supervisors nest: `ChildSpec("worker", inner.run)`; so do the dynamic ones (`dynamic.py`) of an
actor that reports one as its started value. Cancelling a supervisor stops its children in
reverse order just as `stop` does, so it needs no `shutdown` hook. Its parent lists its children
in `statistics()` and counts them in `all_running`. A supervisor that gives up raises
`SupervisorGaveUp`, which its parent treats as a crash like any other.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import trio

from scoreboard import clock
from scoreboard.backoff import Backoff, Jitter
from scoreboard.supervisor.intensity import RestartIntensity
from scoreboard.supervisor.spec import ChildSpec, Supervision
from scoreboard.supervisor.statistics import ChildState, ChildStatistics

logger = logging.getLogger(__name__)

Strategy = Literal["one_for_one", "rest_for_one", "one_for_all"]
"""Which children a crash restarts: the crashed one; it and those started after it; all."""


class SupervisorGaveUp(Exception):
    """More than `intensity` restarts happened within `period` seconds; every child was stopped."""

    def __init__(self, supervisor: str, child_id: str, last_error: Exception | None) -> None:
        reason = describe_error(last_error) if last_error is not None else "returned"
        super().__init__(f"supervisor {supervisor!r} gave up after child {child_id!r}: {reason}")
        self.supervisor = supervisor
        self.child_id = child_id
        self.last_error = last_error


def _nested_all_running(incarnation: _Incarnation) -> bool:
    return incarnation.nested is None or incarnation.nested.all_running


def describe_error(error: BaseException) -> str:
    """A crash as the statistics show it: `Type: message`."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(eq=False)
class _Incarnation:
    """One call of a child's `start`."""

    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    running_since: float | None = None
    started_at: float | None = None
    stopping: bool = False
    ended: bool = False
    error: Exception | None = None
    value: Any = None  # what it reported started with
    nested: Supervision | None = None
    injected: Exception | None = None  # `inject_crash`: end as if this had been raised


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    state: ChildState = "stopped"
    incarnation: _Incarnation | None = None
    restart_at: float | None = None
    restarts: int = 0
    backoff_attempt: int = 0
    last_error: str | None = None
    inbox_peak: int = 0


class _IncarnationStatus(trio.TaskStatus[Any]):
    """The `task_status` a child gets: notes when it started, and whether it is a supervisor."""

    def __init__(self, task_status: trio.TaskStatus[Any], incarnation: _Incarnation) -> None:
        self._task_status = task_status
        self._incarnation = incarnation

    def started(self, value: Any = None) -> None:
        self._task_status.started(value)
        self._incarnation.value = value
        if isinstance(value, Supervision):
            self._incarnation.nested = value
        self._incarnation.running_since = trio.current_time()
        self._incarnation.started_at = clock.now_s()

    def adopt(self, supervisor: Supervisor) -> None:
        """Let the parent include `supervisor`'s children in its statistics and readiness."""
        self._incarnation.nested = supervisor


class Supervisor:
    """Starts `children` in order, restarts them by `strategy`, stops them in reverse order.

    Restarts wait an exponentially growing delay between `backoff_min` and `backoff_max` seconds
    with `jitter` drawn from `rng`; a child's delay starts over once it has run for
    `backoff_reset_after` seconds. More than `intensity` restarts within `period` seconds and the
    supervisor stops everything and raises `SupervisorGaveUp`.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        strategy: Strategy = "one_for_one",
        *,
        intensity: int = 5,
        period: float = 30.0,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        backoff_reset_after: float = 30.0,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
        name: str = "supervisor",
    ) -> None:
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"child ids must be unique: {ids}")
        self._intensity = RestartIntensity(intensity, period)
        self._rng = rng if rng is not None else random.Random()
        self.backoff = Backoff(backoff_min, backoff_max, jitter, self._rng)
        self.strategy = strategy
        self.backoff_reset_after = backoff_reset_after
        self.name = name
        self._specs = tuple(children)
        self._children = [_Child(spec) for spec in self._specs]
        self._wakeup = trio.Event()
        self._stop_scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    def add_child(self, spec: ChildSpec) -> None:
        """Append a child (started after the others) to a supervisor that is not running yet:
        for children that need the supervisor itself, such as a server reporting its tree."""
        if self._stop_scope is not None:
            raise RuntimeError(f"supervisor {self.name!r} is running")
        if any(existing.id == spec.id for existing in self._specs):
            raise ValueError(f"child ids must be unique: {spec.id!r} exists")
        self._specs = (*self._specs, spec)
        self._children.append(_Child(spec))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child, report started, supervise until stopped, cancelled or given up."""
        if self._stop_scope is not None:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._children = [_Child(spec, state="starting") for spec in self._specs]
        self._intensity.clear()
        self._wakeup = trio.Event()
        self._stop_scope = trio.CancelScope()
        self._done = trio.Event()
        if isinstance(task_status, _IncarnationStatus):
            task_status.adopt(self)
        gave_up: SupervisorGaveUp | None = None
        try:
            async with trio.open_nursery() as relay:
                relay.start_soon(self._stop_when_cancelled, self._stop_scope)
                # A cancellation from outside would reach every child at once; the relay turns it
                # into a `stop`, which stops them one at a time in reverse order.
                with trio.CancelScope(shield=True):
                    gave_up = await self._run_children(self._stop_scope, task_status)
                relay.cancel_scope.cancel()
        finally:
            self._stop_scope = None
            self._done.set()
        if gave_up is not None:
            raise gave_up from gave_up.last_error

    async def _stop_when_cancelled(self, stop_scope: trio.CancelScope) -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop_scope.cancel()

    async def _run_children(
        self, stop_scope: trio.CancelScope, task_status: trio.TaskStatus[None]
    ) -> SupervisorGaveUp | None:
        gave_up: SupervisorGaveUp | None = None
        async with trio.open_nursery() as nursery:
            try:
                with stop_scope:
                    gave_up = await self._supervise(nursery, task_status)
            finally:
                await self._stop_all()
        return gave_up

    def stop(self) -> None:
        """Ask `run` to stop every child in reverse order and return; no effect when not running."""
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    async def shutdown(self) -> None:
        """`stop`, then wait until `run` has returned."""
        done = self._done
        self.stop()
        if done is not None:
            await done.wait()

    def started_value(self, child_id: str) -> Any:
        """What the running child `child_id` reported started with (a nested supervisor's child
        is named `api/http`). `LookupError` if it is not running."""
        head, _, rest = child_id.partition("/")
        incarnation = self._running(head)
        if rest:
            if not isinstance(incarnation.nested, Supervisor):
                raise LookupError(f"{self.name}: child {head!r} is not a supervisor")
            return incarnation.nested.started_value(rest)
        return incarnation.value

    def _running(self, child_id: str) -> _Incarnation:
        child = next((c for c in self._children if c.spec.id == child_id), None)
        incarnation = child.incarnation if child is not None else None
        if child is None or child.state != "running" or incarnation is None:
            raise LookupError(f"{self.name}: no running child {child_id!r}")
        return incarnation

    def inject_crash(self, child_id: str, error: Exception | None = None) -> None:
        """End a running child as if it had raised `error`: it is stopped at once (cancelled)
        and the strategy restarts what a crash of it restarts. For fault drills and tests; a
        nested supervisor's child is named `worker/scorer`. `LookupError` if it is not running."""
        head, _, rest = child_id.partition("/")
        incarnation = self._running(head)
        if rest:
            if incarnation.nested is None:
                raise LookupError(f"{self.name}: child {head!r} is not a supervisor")
            incarnation.nested.inject_crash(rest, error)
            return
        incarnation.injected = error or RuntimeError(f"a crash injected into {child_id!r}")
        incarnation.cancel_scope.cancel()

    @property
    def all_running(self) -> bool:
        """Every permanent child is running, nested supervisors' included: readiness."""
        return all(
            child.state == "running"
            and child.incarnation is not None
            and _nested_all_running(child.incarnation)
            for child in self._children
            if child.spec.restart == "permanent"
        )

    def statistics(self) -> list[ChildStatistics]:
        """A record per child in start order; a running nested supervisor's children follow it,
        their ids prefixed with its id and a slash (`worker/scorer`)."""
        records: list[ChildStatistics] = []
        for child in self._children:
            records.append(self._child_statistics(child))
            nested = child.incarnation.nested if child.incarnation is not None else None
            if nested is not None and child.state == "running":
                records += [
                    replace(record, id=f"{child.spec.id}/{record.id}")
                    for record in nested.statistics()
                ]
        return records

    def _child_statistics(self, child: _Child) -> ChildStatistics:
        incarnation = child.incarnation
        running = incarnation if child.state == "running" else None
        running_since = running.running_since if running is not None else None
        inbox_depth: int | None = None
        if child.spec.inbox is not None:
            inbox_statistics = child.spec.inbox.statistics()
            inbox_depth = inbox_statistics.current_buffer_used
            # Channels of recent trio track their true peak; others only show what we sample here.
            reported_peak = getattr(inbox_statistics, "peak_buffer_used", 0)
            child.inbox_peak = max(child.inbox_peak, inbox_depth, reported_peak)
        return ChildStatistics(
            id=child.spec.id,
            state=child.state,
            restarts=child.restarts,
            last_error=child.last_error,
            started_at=running.started_at if running is not None else None,
            uptime_s=None if running_since is None else trio.current_time() - running_since,
            inbox_depth=inbox_depth,
            inbox_peak=child.inbox_peak if child.spec.inbox is not None else None,
        )

    async def _supervise(
        self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]
    ) -> SupervisorGaveUp | None:
        now = trio.current_time()
        for child in self._children:
            child.restart_at = now
        all_started = False
        while True:
            gave_up = await self._handle_exits()
            if gave_up is None:
                gave_up = await self._start_due(nursery, in_order=self._in_order(all_started))
            if gave_up is not None:
                return gave_up
            if not all_started and all(child.restart_at is None for child in self._children):
                all_started = True
                logger.info("%s: all children started", self.name)
                task_status.started()
            with trio.move_on_at(self._next_start_at(in_order=self._in_order(all_started))):
                await self._wakeup.wait()
            # Replaced before the next scan of exits, so an exit after the scan sets the new one.
            self._wakeup = trio.Event()

    def _in_order(self, all_started: bool) -> bool:
        # Until everything has started once, a later child waits for the earlier ones under
        # every strategy: start order is dependency order.
        return self.strategy != "one_for_one" or not all_started

    def _next_start_at(self, *, in_order: bool) -> float:
        pending = [child.restart_at for child in self._children if child.restart_at is not None]
        if not pending:
            return math.inf
        return pending[0] if in_order else min(pending)

    async def _start_due(self, nursery: trio.Nursery, *, in_order: bool) -> SupervisorGaveUp | None:
        for child in self._children:
            if child.restart_at is None:
                continue
            if child.restart_at > trio.current_time():
                if in_order:
                    return None
                continue
            error = await self._start(nursery, child)
            if error is None:
                continue
            gave_up = await self._on_start_failure(child, error)
            if gave_up is not None or in_order:
                return gave_up
        return None

    async def _start(self, nursery: trio.Nursery, child: _Child) -> Exception | None:
        spec = child.spec
        incarnation = _Incarnation()
        child.incarnation = incarnation
        child.restart_at = None
        child.state = "starting"
        error: Exception
        try:
            with trio.fail_after(spec.start_timeout):
                await nursery.start(self._run_incarnation, child, incarnation)
        except trio.TooSlowError as exc:
            error = TimeoutError(f"did not report started within {spec.start_timeout:g} s")
            error.__cause__ = exc
        except Exception as exc:
            error = exc
        else:
            child.state = "running"
            logger.info("%s: child %r started", self.name, spec.id)
            return None
        # The child may have reported started just as the timeout expired.
        await self._stop(child)
        return error

    async def _run_incarnation(
        self, child: _Child, incarnation: _Incarnation, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        try:
            with incarnation.cancel_scope:
                await child.spec.start(task_status=_IncarnationStatus(task_status, incarnation))
            if incarnation.injected is not None:
                raise incarnation.injected
        except Exception as exc:
            if incarnation.running_since is None:
                raise
            incarnation.error = exc
            child.last_error = describe_error(exc)
            logger.exception("%s: child %r crashed", self.name, child.spec.id)
        finally:
            incarnation.finished.set()
        if incarnation.running_since is not None and not incarnation.stopping:
            incarnation.ended = True
            self._wakeup.set()

    async def _handle_exits(self) -> SupervisorGaveUp | None:
        for child in self._children:
            incarnation = child.incarnation
            if incarnation is None or not incarnation.ended:
                continue
            child.incarnation = None
            gave_up = await self._on_exit(child, incarnation)
            if gave_up is not None:
                return gave_up
        return None

    async def _on_exit(self, child: _Child, incarnation: _Incarnation) -> SupervisorGaveUp | None:
        error = incarnation.error
        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and error is None):
            child.state = "stopped" if error is None else "failed"
            logger.info("%s: child %r ended; %s, not restarted", self.name, child.spec.id, restart)
            return None
        assert incarnation.running_since is not None
        if trio.current_time() - incarnation.running_since >= self.backoff_reset_after:
            child.backoff_attempt = 0
        return await self._schedule_restart(child, error)

    async def _on_start_failure(self, child: _Child, error: Exception) -> SupervisorGaveUp | None:
        child.last_error = describe_error(error)
        logger.error("%s: child %r failed to start", self.name, child.spec.id, exc_info=error)
        if child.spec.restart == "temporary":
            child.state = "failed"
            return None
        return await self._schedule_restart(child, error)

    async def _schedule_restart(
        self, child: _Child, error: Exception | None
    ) -> SupervisorGaveUp | None:
        now = trio.current_time()
        if self._intensity.exceeded_by_one_more(now):
            child.state = "failed"
            logger.error(
                "%s: more than %d restarts in %g s, the last for child %r; giving up",
                self.name,
                self._intensity.intensity,
                self._intensity.period,
                child.spec.id,
            )
            return SupervisorGaveUp(self.name, child.spec.id, error)
        delay = self.backoff.delay(child.backoff_attempt)
        child.backoff_attempt += 1
        group = self._restart_group(child)
        for sibling in reversed(group):
            if sibling is not child:
                await self._stop(sibling)
        restart_at = now + delay
        for member in group:
            if member is not child and member.spec.restart == "temporary":
                member.state = "stopped"
                member.restart_at = None
                continue
            if member.restart_at is None:
                member.restarts += 1
                member.restart_at = restart_at
            else:
                member.restart_at = max(member.restart_at, restart_at)
            member.state = "restarting"
        logger.warning(
            "%s: restarting %s in %.2f s",
            self.name,
            ", ".join(repr(member.spec.id) for member in group),
            delay,
        )
        return None

    def _restart_group(self, child: _Child) -> list[_Child]:
        """The children restarted with `child`, in start order; stopped ones stay stopped."""
        if self.strategy == "one_for_one":
            return [child]
        candidates = self._children
        if self.strategy == "rest_for_one":
            candidates = candidates[self._children.index(child) :]
        return [
            member
            for member in candidates
            if member is child or member.incarnation is not None or member.restart_at is not None
        ]

    async def _stop(self, child: _Child) -> None:
        incarnation = child.incarnation
        if incarnation is None:
            return
        incarnation.stopping = True
        spec = child.spec
        if not incarnation.finished.is_set():
            if spec.shutdown is not None:
                try:
                    spec.shutdown()
                except Exception:
                    logger.exception("%s: shutdown hook of child %r failed", self.name, spec.id)
                with trio.move_on_after(spec.shutdown_timeout):
                    await incarnation.finished.wait()
                if not incarnation.finished.is_set():
                    logger.warning(
                        "%s: child %r still running %g s after its shutdown hook; cancelling",
                        self.name,
                        spec.id,
                        spec.shutdown_timeout,
                    )
            incarnation.cancel_scope.cancel()
            await incarnation.finished.wait()
        child.incarnation = None

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            if child.incarnation is not None:
                logger.info("%s: stopping child %r", self.name, child.spec.id)
            await self._stop(child)
            child.restart_at = None
            if child.state != "failed":
                child.state = "stopped"
