"""The parent of `scoreboard serve --processes N`: which children it plans, and how it runs real
child processes (small Python programs here; `tests/e2e/test_processes.py` runs the server)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import trio

from scoreboard.config import Config
from scoreboard.processes import Child, ProcessesGaveUp, ProcessSupervisor, plan_children

REAL = {
    "database": {"url": "postgresql://127.0.0.1/scoreboard"},
    "redis": {"url": "redis://127.0.0.1:6379/0"},
    "amqp": {"url": "amqp://guest:guest@127.0.0.1:5672/"},
}

# Child programs: argv[1] is the descriptor of the link to the parent.
REPORT_READY = "import os, sys; os.write(int(sys.argv[1]), b'ready http://127.0.0.1:1\\n'); "
SERVES = REPORT_READY + "import time; time.sleep(600)"
IGNORES_SIGTERM = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    + REPORT_READY
    + "import time; time.sleep(600)"
)
CRASHES = "import sys; sys.exit(3)"


def program(code: str) -> ProcessSupervisor:
    return ProcessSupervisor(
        [Child("api-0", "api")],
        lambda child, fd: [sys.executable, "-c", code, str(fd)],
        grace_s=1.0,
        backoff_min=0.01,
        backoff_max=0.05,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_process_unless_more_are_asked_for_on_the_real_stack() -> None:
    real = Config().replace(**REAL)
    assert plan_children(real.replace(server={"processes": 1})) == ([], None)
    children, notice = plan_children(real.replace(server={"processes": 3}))
    assert notice is None
    assert [(c.name, c.role) for c in children] == [
        ("api-0", "api"),
        ("api-1", "api"),
        ("api-2", "api"),
        ("worker-0", "worker"),
    ]
    apis, _ = plan_children(real.replace(server={"processes": 2, "role": "api"}))
    assert [c.name for c in apis] == ["api-0", "api-1"]
    workers, _ = plan_children(real.replace(server={"processes": 2, "role": "worker"}))
    assert [(c.name, c.role) for c in workers] == [("worker-0", "worker"), ("worker-1", "worker")]


def test_processes_default_to_the_number_of_cores() -> None:
    children, _ = plan_children(Config().replace(**REAL, server={"processes": 0}))
    cores = os.cpu_count() or 1
    assert len(children) == (cores + 1 if cores > 1 else 0)


def test_embedded_mode_stays_one_process_and_says_so_when_more_are_asked() -> None:
    embedded = Config()
    children, notice = plan_children(embedded.replace(server={"processes": 4}))
    assert children == []
    assert notice is not None
    assert "one process" in notice
    assert "--processes 4" in notice
    assert plan_children(embedded.replace(server={"processes": 0})) == ([], None)


async def test_children_report_ready_and_stop_on_sigterm() -> None:
    group = program(SERVES)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        with trio.fail_after(20):
            await group.wait_all_ready()
        assert group.urls() == ["http://127.0.0.1:1"]
        (pid,) = group.pids().values()
        group.stop()
    assert not alive(pid)
    assert group.pids() == {}


async def test_a_dead_child_is_started_again() -> None:
    group = program(SERVES)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        with trio.fail_after(20):
            await group.wait_all_ready()
            (first,) = group.pids().values()
            os.kill(first, signal.SIGKILL)
            while group.pids().get("api-0", first) == first:
                await trio.sleep(0.02)
        group.stop()


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    group = program(IGNORES_SIGTERM)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        with trio.fail_after(20):
            await group.wait_all_ready()
        (pid,) = group.pids().values()
        started = trio.current_time()
        group.stop()
    assert 0.9 <= trio.current_time() - started < 10
    assert not alive(pid)


async def test_children_that_keep_dying_make_it_give_up() -> None:
    group = program(CRASHES)
    with trio.fail_after(30), pytest.raises(ProcessesGaveUp, match="exited with status 3"):
        await group.run()
    assert group.pids() == {}
