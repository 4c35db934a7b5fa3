"""Every actor's inbox messages: frozen, slotted dataclasses, one union per inbox.

Worker: consumer → router → user actor (`Route`) → scorer (`Score`) → keeper (`Committed`), and
scorer → flags actor (`Observe`).
API: request handlers → publisher (`Publish`); events actor and connections → hub (`HubMsg`).
Requests that need an answer carry their own reply channel, which the answering actor fills with
`send_nowait` and never waits on. Only the actors' own modules build these: everyone else calls
their client functions (`publisher.publish`, `hub.register`, `scorer.barrier`, ...).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import trio

from scoreboard.actors.frames import Batch, Frame
from scoreboard.adapters.interfaces import Delivery
from scoreboard.anticheat.records import DecidedAction
from scoreboard.records import (
    ActionEnvelope,
    ActionFinished,
    CommitResult,
    Decision,
    LeaderboardChanged,
    ScoreChanged,
    TokensRevoked,
)

# Worker side.


@dataclass(frozen=True, slots=True)
class Route:
    """A decoded action and the delivery to settle once its effect is committed."""

    envelope: ActionEnvelope
    delivery: Delivery


RouterMsg = Route
UserMsg = Route


@dataclass(frozen=True, slots=True)
class Score:
    """A user actor's decision on its way into the scorer's next transaction."""

    decision: Decision
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Unjudged:
    """An action whose user actor crashed while judging it (a poison message, or a bug): the
    scorer settles it as it does one the store refused, retried until `amqp.max_attempts`, then
    recorded failed and dead-lettered; it is never acknowledged without a decision."""

    envelope: ActionEnvelope
    delivery: Delivery
    reason: str


@dataclass(frozen=True, slots=True)
class Barrier:
    """Answered (`send_nowait(None)` into `reply`, capacity ≥ 1) once everything sent to the
    scorer before it is committed: a new user actor waits for it before reading the user's
    history, so decisions still on their way to the store are in it."""

    reply: trio.MemorySendChannel[None]


ScorerMsg = Score | Unjudged | Barrier


@dataclass(frozen=True, slots=True)
class Committed:
    """The outcomes of one committed (and acknowledged) batch, in commit order."""

    results: tuple[CommitResult, ...]


KeeperMsg = Committed


@dataclass(frozen=True, slots=True)
class Observe:
    """Decided attempts, in the order decided, for the behavioural flags."""

    actions: tuple[DecidedAction, ...]


FlagsMsg = Observe

# API side.


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish the envelope durably; answer `reply` (capacity ≥ 1) with None once the broker
    confirmed it, else with the failure. A reply channel whose receiver is closed means the
    requester gave up: the envelope is not published."""

    envelope: ActionEnvelope
    reply: trio.MemorySendChannel[Exception | None]


PublisherMsg = Publish


class Subscriber(Protocol):
    """What the hub offers a connection's frames to (a WebSocket's latest-value mailbox); every
    call returns at once."""

    def offer_snapshot(self, frame: Frame) -> None:
        """The newest leaderboard: it replaces an unsent one."""

    def offer_personal_batch(self, batch: Batch) -> bool:
        """The user's own frames that became ready together, kept in order after those offered
        before; False once the client is too far behind (the subscriber has closed itself)."""

    def close(self, reason: str) -> None:
        """No more frames: the connection closes (the hub's reason: `TOKEN_REVOKED`)."""


@dataclass(frozen=True, slots=True)
class Register:
    """A connection is open for `user_id`; the hub sends it the current snapshot at once.
    `grant_id` and `jti` are its token's, so that revoking either closes it."""

    connection_id: int
    user_id: int | None
    mailbox: Subscriber
    grant_id: str | None = None
    jti: str | None = None


@dataclass(frozen=True, slots=True)
class Unregister:
    connection_id: int


@dataclass(frozen=True, slots=True)
class Rebind:
    """The connection re-authenticated; its personal frames now follow `user_id`, and it
    closes when its new token's grant or jti is revoked."""

    connection_id: int
    user_id: int | None
    grant_id: str | None = None
    jti: str | None = None


@dataclass(frozen=True, slots=True)
class WaitForAction:
    """Answer `reply` (capacity ≥ 1) with the action's outcome when it arrives, or at once if the
    hub saw it recently. Each waiter ends with `CancelWait`, answered or not."""

    action_id: uuid.UUID
    reply: trio.MemorySendChannel[ActionFinished]


@dataclass(frozen=True, slots=True)
class CancelWait:
    action_id: uuid.UUID


HubMsg = (
    Register
    | Unregister
    | Rebind
    | WaitForAction
    | CancelWait
    | LeaderboardChanged
    | ScoreChanged
    | ActionFinished
    | TokensRevoked
)
