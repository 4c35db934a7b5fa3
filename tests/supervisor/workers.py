"""Children whose incarnations a test drives, and a log of what they did, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from scoreboard.supervisor import ChildSpec, Supervisor


class Worker:
    """A child that runs until the test tells its current incarnation to crash or return."""

    def __init__(self, id: str, log: list[str], *, fail_starts: int = 0) -> None:
        self.id = id
        self.log = log
        self.incarnations = 0
        self.start_times: list[float] = []
        self.fail_starts = fail_starts
        self._exit = trio.Event()
        self._error: Exception | None = None
        self._started = trio.Event()

    def spec(self, **options: Any) -> ChildSpec:
        return ChildSpec(id=self.id, start=self.run, **options)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.fail_starts:
            self.fail_starts -= 1
            raise ConnectionError(f"{self.id} cannot connect")
        self._exit = exit_now = trio.Event()
        self._error = None
        task_status.started()
        self.incarnations += 1
        self.start_times.append(trio.current_time())
        self.log.append(f"start {self.id}")
        self._started.set()
        self._started = trio.Event()
        try:
            await exit_now.wait()
        finally:
            self.log.append(f"stop {self.id}")
        if self._error is not None:
            raise self._error

    def crash(self, error: Exception | None = None) -> None:
        self._error = error or RuntimeError(f"{self.id} broke")
        self._exit.set()

    def finish(self) -> None:
        self._exit.set()

    async def wait_started(self, incarnations: int) -> None:
        while self.incarnations < incarnations:
            await self._started.wait()


class CrashLoop:
    """A child that crashes right after every start, recording when each incarnation started."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.start_times: list[float] = []

    def spec(self, **options: Any) -> ChildSpec:
        return ChildSpec(id=self.id, start=self.run, **options)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.start_times.append(trio.current_time())
        raise ValueError(f"{self.id} crash {len(self.start_times)}")


@asynccontextmanager
async def supervising(supervisor: Supervisor) -> AsyncIterator[None]:
    """`supervisor` started in the background, cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield
        nursery.cancel_scope.cancel()
