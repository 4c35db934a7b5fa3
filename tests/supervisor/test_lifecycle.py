"""Starting in order, reporting started, stopping in reverse: by cancel, `stop` and `shutdown`."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from scoreboard.supervisor import ChildSpec, Supervisor
from tests.supervisor.workers import Worker, supervising


async def test_starts_in_order_and_stops_in_reverse_when_cancelled() -> None:
    log: list[str] = []
    workers = [Worker(id, log) for id in "abc"]
    supervisor = Supervisor([worker.spec() for worker in workers])
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            assert log == ["start a", "start b", "start c"]
            scope.cancel()
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert [record.state for record in supervisor.statistics()] == ["stopped"] * 3


async def test_reports_started_only_after_every_child_started() -> None:
    log: list[str] = []
    ready = trio.Event()

    async def slow(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await ready.wait()
        task_status.started()
        await trio.sleep_forever()

    supervisor = Supervisor([Worker("a", log).spec(), ChildSpec("slow", slow)])
    reported = trio.Event()

    async def start_supervisor(nursery: trio.Nursery) -> None:
        await nursery.start(supervisor.run)
        reported.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_supervisor, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["start a"]
        assert not reported.is_set()
        assert [record.state for record in supervisor.statistics()] == ["running", "starting"]
        ready.set()
        await reported.wait()
        assert supervisor.all_running
        nursery.cancel_scope.cancel()


async def test_stop_returns_normally_after_stopping_in_reverse() -> None:
    log: list[str] = []
    supervisor = Supervisor([Worker(id, log).spec() for id in "ab"])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.stop()
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_shutdown_waits_until_run_has_returned() -> None:
    log: list[str] = []
    supervisor = Supervisor([Worker(id, log).spec() for id in "ab"])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await supervisor.shutdown()
        assert log == ["start a", "start b", "stop b", "stop a"]
        assert not supervisor.all_running
    await supervisor.shutdown()


async def test_cannot_run_twice_at_once() -> None:
    supervisor = Supervisor([Worker("a", []).spec()])
    async with supervising(supervisor):
        with pytest.raises(RuntimeError, match="already running"):
            await supervisor.run()


def test_child_ids_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([Worker("a", []).spec(), Worker("a", []).spec()])


async def test_graceful_hook_is_called_before_cancelling(autojump_clock: trio.abc.Clock) -> None:
    events: list[str] = []
    stop_requested = trio.Event()

    async def server(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await stop_requested.wait()
        await trio.sleep(2)
        events.append("drained")

    def request_stop() -> None:
        events.append("hook")
        stop_requested.set()

    spec = ChildSpec("http", server, shutdown=request_stop, shutdown_timeout=5)
    supervisor = Supervisor([spec])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        began = trio.current_time()
        await supervisor.shutdown()
        assert trio.current_time() - began == pytest.approx(2)
    assert events == ["hook", "drained"]


async def test_child_ignoring_its_hook_is_cancelled_after_shutdown_timeout(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled_at: list[float] = []
    hook_calls: list[float] = []

    async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            raise

    spec = ChildSpec(
        "stubborn",
        stubborn,
        shutdown=lambda: hook_calls.append(trio.current_time()),
        shutdown_timeout=7,
    )
    supervisor = Supervisor([spec])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await supervisor.shutdown()
    assert len(hook_calls) == 1
    assert cancelled_at == [pytest.approx(hook_calls[0] + 7)]
    assert "still running 7 s after its shutdown hook" in caplog.text


async def test_cancellation_passes_through_and_is_no_crash(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    supervisor = Supervisor([Worker(id, log).spec() for id in "ab"])
    with trio.move_on_after(60) as scope:
        await supervisor.run()
    assert scope.cancelled_caught
    assert log == ["start a", "start b", "stop b", "stop a"]
    assert [record.restarts for record in supervisor.statistics()] == [0, 0]
    assert [record.last_error for record in supervisor.statistics()] == [None, None]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_keyboard_interrupt_passes_through_and_is_no_crash() -> None:
    async def interrupted(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        raise KeyboardInterrupt

    log: list[str] = []
    supervisor = Supervisor([Worker("a", log).spec(), ChildSpec("interrupted", interrupted)])
    with pytest.RaisesGroup(KeyboardInterrupt, flatten_subgroups=True):
        await supervisor.run()
    assert log == ["start a", "stop a"]
    assert supervisor.statistics()[1].restarts == 0


async def test_cancelling_a_start_in_progress_stops_the_started_children() -> None:
    log: list[str] = []

    async def never_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep_forever()

    supervisor = Supervisor([Worker("a", log).spec(), ChildSpec("never", never_ready)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert log == ["start a", "stop a"]
