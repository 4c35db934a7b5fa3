"""`statistics()`, `all_running` and nested supervisors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing

from scoreboard.supervisor import (
    ChildSpec,
    ChildStatistics,
    Supervisor,
    SupervisorGaveUp,
)
from tests.supervisor.workers import CrashLoop, Worker, supervising


async def test_statistics_report_state_restarts_error_and_uptime(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = Worker("scorer", [])
    supervisor = Supervisor([worker.spec()], backoff_min=1)
    before = supervisor.statistics()[0]
    assert (before.state, before.restarts, before.uptime_s, before.started_at) == (
        "stopped",
        0,
        None,
        None,
    )
    async with supervising(supervisor):
        await trio.sleep(5)
        record = supervisor.statistics()[0]
        assert record == ChildStatistics(
            id="scorer",
            state="running",
            restarts=0,
            last_error=None,
            started_at=record.started_at,
            uptime_s=5.0,
            inbox_depth=None,
            inbox_peak=None,
        )
        assert record.started_at is not None
        worker.crash(ValueError("bad batch"))
        await trio.testing.wait_all_tasks_blocked()
        record = supervisor.statistics()[0]
        assert (record.state, record.restarts, record.last_error, record.uptime_s) == (
            "restarting",
            1,
            "ValueError: bad batch",
            None,
        )
        assert not supervisor.all_running
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        record = supervisor.statistics()[0]
        assert (record.state, record.restarts, record.uptime_s) == ("running", 1, 0)
        assert record.last_error == "ValueError: bad batch"
        assert supervisor.all_running
    assert supervisor.statistics()[0].state == "stopped"


async def test_inbox_depth_and_peak_of_a_memory_channel() -> None:
    send, receive = trio.open_memory_channel[int](10)
    received = trio.Event()

    async def actor(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await received.wait()
        async with receive.clone() as inbox:
            await inbox.receive()
            await inbox.receive()
            await trio.sleep_forever()

    supervisor = Supervisor([ChildSpec("actor", actor, inbox=send)])
    with send, receive:
        async with supervising(supervisor):
            for message in range(3):
                send.send_nowait(message)
            record = supervisor.statistics()[0]
            assert (record.inbox_depth, record.inbox_peak) == (3, 3)
            received.set()
            await trio.testing.wait_all_tasks_blocked()
            record = supervisor.statistics()[0]
            assert (record.inbox_depth, record.inbox_peak) == (1, 3)


@dataclass(frozen=True)
class Depth:
    current_buffer_used: int


class Gauge:
    """An inbox probe without a peak of its own, like channels of older trio versions."""

    def __init__(self) -> None:
        self.depth = 0

    def statistics(self) -> Depth:
        return Depth(self.depth)


async def test_inbox_peak_is_tracked_for_probes_that_report_only_depth() -> None:
    gauge = Gauge()
    supervisor = Supervisor([ChildSpec("actor", Worker("actor", []).run, inbox=gauge)])
    async with supervising(supervisor):
        for depth, peak in [(4, 4), (9, 9), (2, 9), (0, 9)]:
            gauge.depth = depth
            record = supervisor.statistics()[0]
            assert (record.inbox_depth, record.inbox_peak) == (depth, peak)


async def test_all_running_counts_only_permanent_children(autojump_clock: trio.abc.Clock) -> None:
    permanent, transient = Worker("permanent", []), Worker("job", [])
    supervisor = Supervisor([permanent.spec(), transient.spec(restart="transient")])
    assert not supervisor.all_running
    async with supervising(supervisor):
        transient.finish()
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.statistics()[1].state == "stopped"
        assert supervisor.all_running


async def test_nested_supervisor_restarts_its_own_children(autojump_clock: trio.abc.Clock) -> None:
    log: list[str] = []
    scorer, keeper, http = Worker("scorer", log), Worker("keeper", log), Worker("http", log)
    worker = Supervisor([keeper.spec(), scorer.spec()], strategy="rest_for_one", name="worker")
    root = Supervisor([ChildSpec("worker", worker.run), http.spec()], name="root")
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        assert log == ["start keeper", "start scorer", "start http"]
        assert [record.id for record in root.statistics()] == [
            "worker",
            "worker/keeper",
            "worker/scorer",
            "http",
        ]
        scorer.crash()
        await trio.testing.wait_all_tasks_blocked()
        assert not root.all_running
        await scorer.wait_started(2)
        await trio.testing.wait_all_tasks_blocked()
        assert root.all_running
        states = {record.id: (record.state, record.restarts) for record in root.statistics()}
        assert states == {
            "worker": ("running", 0),
            "worker/keeper": ("running", 0),
            "worker/scorer": ("running", 1),
            "http": ("running", 0),
        }
        del log[:]
        nursery.cancel_scope.cancel()
    assert log == ["stop http", "stop scorer", "stop keeper"]


async def test_a_nested_supervisor_giving_up_is_a_crash_of_the_parent_child(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[str] = []
    loop = CrashLoop("loop")
    inner = Supervisor([Worker("steady", log).spec(), loop.spec()], intensity=1, name="inner")
    outer = Supervisor([ChildSpec("inner", inner.run)], intensity=2, name="outer")
    with pytest.raises(SupervisorGaveUp) as gave_up:
        await outer.run()
    assert gave_up.value.child_id == "inner"
    assert isinstance(gave_up.value.last_error, SupervisorGaveUp)
    assert gave_up.value.last_error.child_id == "loop"
    assert log == ["start steady", "stop steady"] * 3
    assert outer.statistics()[0].restarts == 2
