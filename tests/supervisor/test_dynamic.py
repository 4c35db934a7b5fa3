"""The dynamic supervisor (simple_one_for_one): children started on demand, each restarted
alone, forgotten once they return, and shown in the statistics as a count and the busiest few."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from scoreboard.supervisor import (
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
    SupervisorGaveUp,
    actor_spec,
)
from scoreboard.supervisor.dynamic import BUSIEST


@dataclass
class Member:
    """One child's inbox and what its incarnations did."""

    id: str
    inbox: trio.MemorySendChannel[str]
    receive: trio.MemoryReceiveChannel[str]
    starts: list[float] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)

    def spec(self) -> ChildSpec:
        return actor_spec(self.id, self.run, self.receive)

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handles messages until its inbox closes; "crash" crashes it, "park" parks it."""
        with inbox:
            task_status.started()
            self.starts.append(trio.current_time())
            async for message in inbox:
                if message == "crash":
                    raise ValueError(f"{self.id} crashed")
                if message == "park":
                    await trio.sleep_forever()
                self.handled.append(message)


def member(id: str) -> Member:
    send, receive = trio.open_memory_channel[str](100)
    return Member(id, send, receive)


@asynccontextmanager
async def running(supervisor: DynamicSupervisor) -> AsyncIterator[DynamicSupervisor]:
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield supervisor
        nursery.cancel_scope.cancel()


async def test_a_crashed_child_restarts_alone_on_its_inbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    members = [member(str(n)) for n in range(3)]
    async with running(DynamicSupervisor("users")) as users:
        for one in members:
            users.start_child(one.spec())
        await trio.testing.wait_all_tasks_blocked()
        for message in ("a", "crash", "b"):
            members[1].inbox.send_nowait(message)
        for one in (members[0], members[2]):
            one.inbox.send_nowait("x")
        await trio.sleep(20)  # past any backoff
        assert members[1].handled == ["a", "b"]
        assert len(members[1].starts) == 2
        assert members[1].starts[1] - members[1].starts[0] >= users.backoff.minimum
        for one in (members[0], members[2]):
            assert (len(one.starts), one.handled) == (1, ["x"])
        (summary,) = users.statistics()
        assert (summary.id, summary.children, summary.restarts) == ("users", 3, 1)
        assert summary.last_error == "ValueError: 1 crashed"


async def test_a_child_that_returns_is_forgotten() -> None:
    one, other = member("1"), member("2")
    async with running(DynamicSupervisor("users")) as users:
        users.start_child(one.spec())
        users.start_child(other.spec())
        await trio.testing.wait_all_tasks_blocked()
        assert len(users) == 2
        one.inbox.send_nowait("last")
        one.inbox.close()
        await trio.testing.wait_all_tasks_blocked()
        assert (len(users), one.handled, len(one.starts)) == (1, ["last"], 1)
        other.inbox.close()
        with trio.fail_after(1):
            await users.wait_until_empty()
        assert users.statistics()[0].children == 0


async def test_too_many_crashes_and_it_gives_up_stopping_every_child(
    autojump_clock: trio.abc.Clock,
) -> None:
    steady, flaky = member("steady"), member("flaky")
    users = DynamicSupervisor("users", intensity=2, period=60)
    with pytest.RaisesGroup(SupervisorGaveUp) as gave_up:
        async with trio.open_nursery() as nursery:
            await nursery.start(users.run)
            users.start_child(steady.spec())
            users.start_child(flaky.spec())
            for _ in range(3):
                flaky.inbox.send_nowait("crash")
            await trio.sleep_forever()
    (error,) = gave_up.value.exceptions
    assert isinstance(error, SupervisorGaveUp)
    assert error.child_id == "flaky"
    assert len(users) == 0
    assert not users.all_running
    assert users.statistics()[0].state == "failed"


async def test_the_statistics_show_a_count_and_the_busiest_few() -> None:
    members = [member(str(n)) for n in range(20)]
    async with running(DynamicSupervisor("users")) as users:
        for one in members:
            users.start_child(one.spec())
        await trio.testing.wait_all_tasks_blocked()
        # The first ten park on their first message; the rest of their inbox waits.
        for depth, one in enumerate(members[:10]):
            for _ in range(depth + 1):
                one.inbox.send_nowait("park")
        await trio.testing.wait_all_tasks_blocked()
        summary, *busiest = users.statistics()
        assert summary.children == 20
        assert summary.inbox_depth == sum(range(10))
        assert len(busiest) == BUSIEST
        assert [row.id for row in busiest] == [f"users/{n}" for n in range(9, 9 - BUSIEST, -1)]
        assert [row.inbox_depth for row in busiest] == list(range(9, 9 - BUSIEST, -1))


async def test_under_an_actor_that_reports_it_the_tree_shows_it_and_crashes_reach_one_child(
    autojump_clock: trio.abc.Clock,
) -> None:
    members = [member(str(n)) for n in range(3)]

    async def owner(*, task_status: trio.TaskStatus[DynamicSupervisor]) -> None:
        users = DynamicSupervisor("users")
        async with trio.open_nursery() as nursery:
            await nursery.start(users.run)
            for one in members:
                users.start_child(one.spec())
            task_status.started(users)

    root = Supervisor([ChildSpec("router", owner)], name="root")
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await trio.testing.wait_all_tasks_blocked()
        root.inject_crash("router/users/1", ValueError("drill"))
        await trio.testing.wait_all_tasks_blocked()
        rows = {row.id: row for row in root.statistics()}
        assert list(rows) == ["router", "router/users", "router/users/1"]
        assert rows["router/users/1"].state == "restarting"
        assert rows["router/users"].children == 3
        assert root.all_running  # a user actor waiting for its restart keeps no one from work
        await trio.sleep(20)
        assert [len(one.starts) for one in members] == [1, 2, 1]
        assert [row.id for row in root.statistics()] == ["router", "router/users"]
        assert root.statistics()[0].restarts == 0
        with pytest.raises(LookupError):
            root.inject_crash("router/users/nobody")
        nursery.cancel_scope.cancel()


async def test_a_crash_injected_twice_before_it_lands_is_one_crash(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Each injection that is accepted is one crash and one restart: a second one, before the
    child has crashed with the first, is refused, so a fault drill counts what really happened."""
    one = member("1")
    async with running(DynamicSupervisor("users")) as users:
        users.start_child(one.spec())
        await trio.testing.wait_all_tasks_blocked()
        users.inject_crash("users/1")
        with pytest.raises(LookupError):
            users.inject_crash("users/1")
        await trio.sleep(20)  # past any backoff
        users.inject_crash("users/1")
        await trio.sleep(20)
        assert len(one.starts) == 3
        assert users.statistics()[0].restarts == 2
