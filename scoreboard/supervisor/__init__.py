"""Supervision of the server's long-running tasks, after OTP.

See `scoreboard.supervisor.supervisor` for how to wire children and their channels, and
`scoreboard.supervisor.dynamic` for children started on demand (the per-user actors).
"""

from scoreboard.backoff import Jitter, backoff_delay
from scoreboard.supervisor.dynamic import DynamicSupervisor
from scoreboard.supervisor.spec import (
    BufferStatistics,
    ChildSpec,
    InboxProbe,
    RestartType,
    Supervision,
    actor_spec,
)
from scoreboard.supervisor.statistics import ChildState, ChildStatistics
from scoreboard.supervisor.supervisor import Strategy, Supervisor, SupervisorGaveUp

__all__ = [
    "BufferStatistics",
    "ChildSpec",
    "ChildState",
    "ChildStatistics",
    "DynamicSupervisor",
    "InboxProbe",
    "Jitter",
    "RestartType",
    "Strategy",
    "Supervision",
    "Supervisor",
    "SupervisorGaveUp",
    "actor_spec",
    "backoff_delay",
]
