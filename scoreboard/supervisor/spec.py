"""What the supervisor needs to know about one child: how to start it, stop it and restart it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import trio

from scoreboard.supervisor.statistics import ChildStatistics

RestartType = Literal["permanent", "transient", "temporary"]
"""permanent: always restarted; transient: restarted only after an `Exception`; temporary: never."""


class BufferStatistics(Protocol):
    @property
    def current_buffer_used(self) -> int: ...


class InboxProbe(Protocol):
    """Anything reporting a buffer depth, e.g. the trio `MemorySendChannel` of the child's inbox."""

    def statistics(self) -> BufferStatistics: ...


@runtime_checkable
class Supervision(Protocol):
    """A supervisor of either kind, as its parent reports it: a child that runs one (a nested
    `Supervisor`, or an actor whose started value is the `DynamicSupervisor` of its workers) has
    its children listed after it in the parent's `statistics()`."""

    @property
    def all_running(self) -> bool: ...

    def statistics(self) -> list[ChildStatistics]: ...

    def inject_crash(self, child_id: str, error: Exception | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a `Supervisor`; for an actor, build it with `actor_spec`.

    `start` follows trio's `nursery.start` protocol: it takes a `task_status` keyword and calls
    `task_status.started()` only once it is truly ready; the supervisor keeps the value it
    reports (`Supervisor.started_value`). It is called again for every restart, so it must build
    whatever one incarnation owns (channel clones included) each time it is called.

    `shutdown`, when given, asks a running incarnation to stop gracefully (e.g. sets Hypercorn's
    shutdown trigger); the child is cancelled if it has not returned `shutdown_timeout` seconds
    later. Without it the child is cancelled at once.
    """

    id: str
    start: Callable[..., Awaitable[None]]
    restart: RestartType = "permanent"
    start_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    shutdown: Callable[[], None] | None = None
    inbox: InboxProbe | None = None


def actor_spec(
    id: str,
    run: Callable[..., Awaitable[None]],
    /,
    *args: Any,
    restart: RestartType = "permanent",
    **kwargs: Any,
) -> ChildSpec:
    """The child that runs `run(*args, **kwargs, task_status=...)`, every memory channel among
    the arguments cloned afresh for each incarnation.

    An actor closes the channels it was given when it ends (`with inbox, scorer:`); the originals
    stay with whoever opened them, so while the actor restarts its inbox stays open, what is
    buffered waits for the next incarnation, and its senders just wait. An actor's inbox is its
    first argument (the receiving end): the supervisor reports that channel's depth.
    """
    inbox = next(
        (value for value in args if isinstance(value, trio.MemoryReceiveChannel)),
        None,
    )

    async def start(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await run(
            *(_fresh(value) for value in args),
            **{name: _fresh(value) for name, value in kwargs.items()},
            task_status=task_status,
        )

    return ChildSpec(id=id, start=start, restart=restart, inbox=inbox)


def _fresh(value: Any) -> Any:
    if isinstance(value, trio.MemorySendChannel | trio.MemoryReceiveChannel):
        return value.clone()
    return value
