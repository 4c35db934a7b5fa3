"""Supervision of the server's long-running tasks, after OTP (design §3).

See `scoreboard.supervisor.supervisor` for how to wire children and their channels.
"""

from scoreboard.supervisor.backoff import Jitter, backoff_delay
from scoreboard.supervisor.spec import BufferStatistics, ChildSpec, InboxProbe, RestartType
from scoreboard.supervisor.statistics import ChildState, ChildStatistics
from scoreboard.supervisor.supervisor import Strategy, Supervisor, SupervisorGaveUp

__all__ = [
    "BufferStatistics",
    "ChildSpec",
    "ChildState",
    "ChildStatistics",
    "InboxProbe",
    "Jitter",
    "RestartType",
    "Strategy",
    "Supervisor",
    "SupervisorGaveUp",
    "backoff_delay",
]
