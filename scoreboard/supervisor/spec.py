"""What the supervisor needs to know about one child: how to start it, stop it and restart it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

RestartType = Literal["permanent", "transient", "temporary"]
"""permanent: always restarted; transient: restarted only after an `Exception`; temporary: never."""


class BufferStatistics(Protocol):
    @property
    def current_buffer_used(self) -> int: ...


class InboxProbe(Protocol):
    """Anything reporting a buffer depth, e.g. the trio `MemorySendChannel` of the child's inbox."""

    def statistics(self) -> BufferStatistics: ...


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a `Supervisor`.

    `start` follows trio's `nursery.start` protocol: it takes a `task_status` keyword and calls
    `task_status.started()` only once it is truly ready. It is called again for every restart, so
    it must build whatever one incarnation owns (channel clones included) each time it is called.

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
