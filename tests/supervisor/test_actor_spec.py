"""`actor_spec`: each incarnation gets fresh clones of its channels, so a restarted actor reads
the same inbox; `started_value`: what a child reported started with; `add_child`."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from scoreboard.supervisor import ChildSpec, Supervisor, actor_spec
from tests.supervisor.workers import Worker, supervising


async def echo(
    inbox: trio.MemoryReceiveChannel[str],
    out: trio.MemorySendChannel[str],
    *,
    prefix: str,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forwards what it reads; "crash" crashes it."""
    with inbox, out:
        task_status.started(f"{prefix} ready")
        async for message in inbox:
            if message == "crash":
                raise RuntimeError("asked to crash")
            await out.send(f"{prefix}{message}")


async def test_a_restarted_actor_reads_the_same_inbox_and_its_senders_just_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    inbox_send, inbox = trio.open_memory_channel[str](10)
    out, received = trio.open_memory_channel[str](10)
    supervisor = Supervisor([actor_spec("echo", echo, inbox, out, prefix="> ")])
    async with supervising(supervisor):
        for message in ("a", "crash", "b", "c"):
            inbox_send.send_nowait(message)
        with trio.fail_after(30):
            assert [await received.receive() for _ in range(3)] == ["> a", "> b", "> c"]
        (record,) = supervisor.statistics()
        assert record.restarts == 1
        assert record.last_error == "RuntimeError: asked to crash"
        # The inbox's depth is reported from the channel the spec was given.
        inbox_send.send_nowait("crash")
        await trio.testing.wait_all_tasks_blocked()
        inbox_send.send_nowait("queued")
        assert supervisor.statistics()[0].inbox_depth == 1
    # The originals stay open: the wiring owns them.
    inbox_send.send_nowait("after")
    assert inbox.receive_nowait() == "queued"


async def test_the_supervisor_keeps_what_each_child_reported_started_with() -> None:
    _inbox_send, inbox = trio.open_memory_channel[str](10)
    out, _received = trio.open_memory_channel[str](10)
    inner = Supervisor([actor_spec("echo", echo, inbox, out, prefix="x")], name="inner")
    root = Supervisor([ChildSpec("inner", inner.run), Worker("plain", []).spec()])
    async with supervising(root):
        assert root.started_value("inner/echo") == "x ready"
        assert root.started_value("plain") is None
        with pytest.raises(LookupError):
            root.started_value("inner/nobody")
        with pytest.raises(LookupError):
            root.started_value("plain/echo")
    with pytest.raises(LookupError):
        root.started_value("plain")


async def test_children_added_before_the_start_run_after_the_others() -> None:
    log: list[str] = []
    supervisor = Supervisor([Worker("a", log).spec()])
    supervisor.add_child(Worker("b", log).spec())
    with pytest.raises(ValueError, match="unique"):
        supervisor.add_child(Worker("a", log).spec())
    async with supervising(supervisor):
        assert log == ["start a", "start b"]
        with pytest.raises(RuntimeError):
            supervisor.add_child(Worker("c", log).spec())
    assert [record.id for record in supervisor.statistics()] == ["a", "b"]
