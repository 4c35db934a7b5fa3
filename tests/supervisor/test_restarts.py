"""Which children a crash restarts, when, and when the supervisor gives up."""

from __future__ import annotations

import logging
import random
from itertools import pairwise

import pytest
import trio
import trio.testing

from scoreboard.supervisor import (
    ChildSpec,
    RestartType,
    Supervisor,
    SupervisorGaveUp,
    backoff_delay,
)
from tests.supervisor.workers import CrashLoop, Worker, supervising


class CeilingRandom(random.Random):
    """Always draws the top of the range, so every delay equals its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_one_for_one_restarts_only_the_crashed_child(autojump_clock: trio.abc.Clock) -> None:
    log: list[str] = []
    a, b, c = (Worker(id, log) for id in "abc")
    supervisor = Supervisor([a.spec(), b.spec(), c.spec()], strategy="one_for_one")
    async with supervising(supervisor):
        b.crash()
        await b.wait_started(2)
        assert log == ["start a", "start b", "start c", "stop b", "start b"]
        assert (a.incarnations, b.incarnations, c.incarnations) == (1, 2, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.all_running


async def test_rest_for_one_restarts_the_crashed_child_and_later_ones(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[str] = []
    a, b, c, d = (Worker(id, log) for id in "abcd")
    supervisor = Supervisor([w.spec() for w in (a, b, c, d)], strategy="rest_for_one")
    async with supervising(supervisor):
        del log[:]
        b.crash()
        await d.wait_started(2)
        assert log == ["stop b", "stop d", "stop c", "start b", "start c", "start d"]
        assert a.incarnations == 1
        assert [record.restarts for record in supervisor.statistics()] == [0, 1, 1, 1]


async def test_one_for_all_restarts_every_child(autojump_clock: trio.abc.Clock) -> None:
    log: list[str] = []
    a, b, c = (Worker(id, log) for id in "abc")
    supervisor = Supervisor([w.spec() for w in (a, b, c)], strategy="one_for_all")
    async with supervising(supervisor):
        del log[:]
        b.crash()
        await c.wait_started(2)
        assert log == ["stop b", "stop c", "stop a", "start a", "start b", "start c"]


async def test_temporary_siblings_are_not_restarted_with_the_group(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[str] = []
    a, b = Worker("a", log), Worker("b", log)
    supervisor = Supervisor([a.spec(), b.spec(restart="temporary")], strategy="one_for_all")
    async with supervising(supervisor):
        a.crash()
        await a.wait_started(2)
        await trio.sleep(60)
        assert b.incarnations == 1
        assert [record.state for record in supervisor.statistics()] == ["running", "stopped"]


@pytest.mark.parametrize(
    ("restart", "crashes", "restarted", "state"),
    [
        ("permanent", False, True, "running"),
        ("permanent", True, True, "running"),
        ("transient", False, False, "stopped"),
        ("transient", True, True, "running"),
        ("temporary", False, False, "stopped"),
        ("temporary", True, False, "failed"),
    ],
)
async def test_restart_types(
    autojump_clock: trio.abc.Clock,
    restart: RestartType,
    crashes: bool,
    restarted: bool,
    state: str,
) -> None:
    log: list[str] = []
    worker = Worker("w", log)
    supervisor = Supervisor([worker.spec(restart=restart)])
    async with supervising(supervisor):
        if crashes:
            worker.crash()
        else:
            worker.finish()
        await trio.sleep(60)
        assert worker.incarnations == (2 if restarted else 1)
        assert supervisor.statistics()[0].state == state


async def test_backoff_grows_exponentially_within_jitter_bounds(
    autojump_clock: trio.abc.Clock,
) -> None:
    child = CrashLoop("loop")
    supervisor = Supervisor(
        [child.spec()],
        intensity=100,
        period=1_000,
        backoff_min=0.5,
        backoff_max=8,
        rng=random.Random(7),
    )
    async with supervising(supervisor):
        while len(child.start_times) < 10:
            await trio.sleep(1)
    delays = [later - earlier for earlier, later in pairwise(child.start_times)]
    expected_rng = random.Random(7)
    expected = [
        backoff_delay(attempt, minimum=0.5, maximum=8, jitter="full", rng=expected_rng)
        for attempt in range(9)
    ]
    assert delays == pytest.approx(expected)
    for attempt, delay in enumerate(delays):
        assert 0.5 <= delay <= min(8, 0.5 * 2**attempt) + 1e-9


async def test_backoff_resets_after_a_healthy_period(autojump_clock: trio.abc.Clock) -> None:
    worker = Worker("w", [])
    supervisor = Supervisor(
        [worker.spec()],
        intensity=100,
        backoff_min=1,
        backoff_max=100,
        backoff_reset_after=50,
        rng=CeilingRandom(),
    )
    async with supervising(supervisor):
        for incarnation in range(1, 4):
            worker.crash()
            await worker.wait_started(incarnation + 1)
        await trio.sleep(50)
        worker.crash()
        await worker.wait_started(5)
    gaps = [later - earlier for earlier, later in pairwise(worker.start_times)]
    assert gaps == pytest.approx([1, 2, 4, 50 + 1])


async def test_gives_up_after_more_than_intensity_restarts_in_period(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    before, after = Worker("before", log), Worker("after", log)
    child = CrashLoop("loop")
    supervisor = Supervisor(
        [before.spec(), child.spec(), after.spec()], intensity=3, period=30, name="worker"
    )
    with pytest.raises(SupervisorGaveUp) as gave_up:
        await supervisor.run()
    assert gave_up.value.child_id == "loop"
    assert isinstance(gave_up.value.last_error, ValueError)
    assert gave_up.value.__cause__ is gave_up.value.last_error
    assert len(child.start_times) == 4
    assert log == ["start before", "start after", "stop after", "stop before"]
    assert [record.state for record in supervisor.statistics()] == ["stopped", "failed", "stopped"]
    assert "giving up" in caplog.text


async def test_restarts_spread_beyond_the_period_do_not_give_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    worker = Worker("w", [])
    supervisor = Supervisor([worker.spec()], intensity=2, period=10)
    async with supervising(supervisor):
        for incarnation in range(1, 8):
            await trio.sleep(6)
            worker.crash()
            await worker.wait_started(incarnation + 1)
        assert supervisor.statistics()[0].restarts == 7


async def test_start_failure_counts_as_crash_and_is_retried_with_backoff(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    flaky = Worker("db", log, fail_starts=2)
    later = Worker("consumer", log)
    supervisor = Supervisor([flaky.spec(), later.spec()], backoff_min=1, rng=CeilingRandom())
    async with trio.open_nursery() as nursery:
        began = trio.current_time()
        await nursery.start(supervisor.run)
        assert trio.current_time() - began == pytest.approx(1 + 2)
        assert log == ["start db", "start consumer"]
        db, consumer = supervisor.statistics()
        assert (db.state, db.restarts, db.last_error) == (
            "running",
            2,
            "ConnectionError: db cannot connect",
        )
        assert consumer.restarts == 0
        nursery.cancel_scope.cancel()
    assert "'db' failed to start" in caplog.text


async def test_start_timeout_counts_as_crash(autojump_clock: trio.abc.Clock) -> None:
    attempts: list[float] = []

    async def hangs_once(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            await trio.sleep_forever()
        task_status.started()
        await trio.sleep_forever()

    supervisor = Supervisor([ChildSpec("slow", hangs_once, start_timeout=5)], backoff_min=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert attempts[1] - attempts[0] == pytest.approx(5 + 1)
        record = supervisor.statistics()[0]
        assert record.restarts == 1
        assert record.last_error == "TimeoutError: did not report started within 5 s"
        nursery.cancel_scope.cancel()


async def test_start_failing_for_ever_gives_up_without_reporting_started(
    autojump_clock: trio.abc.Clock,
) -> None:
    never = Worker("never", [], fail_starts=1_000)
    supervisor = Supervisor([never.spec()], intensity=2)
    async with trio.open_nursery() as nursery:
        with pytest.raises(SupervisorGaveUp, match="never"):
            await nursery.start(supervisor.run)


async def test_crash_logs_error_and_restart_logs_warning_with_delay(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker("scorer", [])
    supervisor = Supervisor([worker.spec()], backoff_min=0.25, name="worker")
    async with supervising(supervisor):
        worker.crash(ValueError("bad batch"))
        await worker.wait_started(2)
    crash = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "'scorer' crashed" in crash.getMessage()
    assert crash.exc_info is not None
    assert isinstance(crash.exc_info[1], ValueError)
    restart = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert restart.getMessage() == "worker: restarting 'scorer' in 0.25 s"


async def test_one_for_one_restarts_do_not_wait_for_a_siblings_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    slow, quick = Worker("slow", []), Worker("quick", [])
    supervisor = Supervisor(
        [slow.spec(), quick.spec()],
        intensity=10,
        backoff_min=1,
        backoff_max=100,
        rng=CeilingRandom(),
    )
    async with supervising(supervisor):
        for incarnation in range(1, 4):
            slow.crash()
            await slow.wait_started(incarnation + 1)
        crashed_at = trio.current_time()
        slow.crash()
        await trio.testing.wait_all_tasks_blocked()
        quick.crash()
        await quick.wait_started(2)
        assert quick.start_times[1] - crashed_at == pytest.approx(1)
        assert slow.incarnations == 4
        await slow.wait_started(5)
        assert slow.start_times[4] - crashed_at == pytest.approx(8)


async def test_an_injected_crash_restarts_as_a_crash_would(autojump_clock: trio.abc.Clock) -> None:
    log: list[str] = []
    a, b, c = (Worker(id, log) for id in "abc")
    inner = Supervisor([b.spec(), c.spec()], strategy="rest_for_one", name="inner")
    root = Supervisor([a.spec(), ChildSpec(id="inner", start=inner.run)], strategy="one_for_one")
    async with supervising(root):
        del log[:]
        root.inject_crash("inner/b", ValueError("drill"))
        await c.wait_started(2)
        assert log == ["stop b", "stop c", "start b", "start c"]
        assert [(r.id, r.restarts) for r in root.statistics()][2:] == [
            ("inner/b", 1),
            ("inner/c", 1),
        ]
        assert root.statistics()[2].last_error == "ValueError: drill"
        assert a.incarnations == 1
        with pytest.raises(LookupError):
            root.inject_crash("inner/nobody")
        with pytest.raises(LookupError):
            root.inject_crash("a/b")
