"""The router: sends each action to its user's actor, starting and reaping user actors.

It owns the map user id → user actor inbox and runs the user actors under a dynamic supervisor
of its own (`users`, its started value, so the worker's statistics list it under the router): a
user actor that crashes is restarted alone, on the same inbox, and hands on the action it held
(`user.InHand`); the router, the consumer and the other user actors carry on. The user actors
stop with the router (and restart with it under the worker's rest_for_one supervisor, when the
consumer's restart brings back, redelivered, whatever they held).

A user actor is reaped once it has had nothing to do for `IDLE_REAP_S`: nothing routed to it for
that long, an empty inbox, and the actor itself parked waiting on it (one waiting for its restart
is not). The router closes the inbox; the actor finds it closed and ends. A later action of that
user starts a fresh actor, which waits until the scorer has committed what it holds, then loads
the user's history from the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import assert_never

import trio

from scoreboard.actors import user
from scoreboard.actors.messages import Route, RouterMsg, UserMsg
from scoreboard.actors.scorer import ScorerHandle
from scoreboard.adapters.interfaces import ActionLog, Delivery
from scoreboard.catalogue import Catalogue
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope
from scoreboard.supervisor import DynamicSupervisor, actor_spec

log = logging.getLogger(__name__)

INBOX_SIZE = 1024  # more than the consumer's whole burst (`amqp.prefetch`, 256): it never waits
IDLE_REAP_S = 60.0
REAP_EVERY_S = 10.0  # how often idle user actors are looked for
# Crashes of user actors (all of them together) in `USER_CRASH_PERIOD_S` before the router gives
# up and crashes itself: a poison action crashes its actor up to `amqp.max_attempts` times.
USER_CRASH_INTENSITY = 20
USER_CRASH_PERIOD_S = 30.0


RouterHandle = trio.MemorySendChannel[RouterMsg]
"""How the consumer reaches the router: the sending end of its inbox."""


def open_inbox() -> tuple[RouterHandle, trio.MemoryReceiveChannel[RouterMsg]]:
    """The router's inbox: the handle the consumer uses, and the end the router reads."""
    return trio.open_memory_channel[RouterMsg](INBOX_SIZE)


async def route(router: RouterHandle, envelope: ActionEnvelope, delivery: Delivery) -> None:
    """Hand an action to its user's actor; `delivery` is settled once its effect is committed."""
    await router.send(Route(envelope, delivery))


@dataclass(slots=True)
class _UserActor:
    inbox: trio.MemorySendChannel[UserMsg]
    last_routed_at: float

    def idle_since(self, deadline: float) -> bool:
        """Nothing routed since `deadline`, nothing queued, and the actor waits for more."""
        stats = self.inbox.statistics()
        return (
            self.last_routed_at <= deadline
            and stats.current_buffer_used == 0
            and stats.tasks_waiting_receive > 0
        )


async def run(
    inbox: trio.MemoryReceiveChannel[RouterMsg],
    scorer: ScorerHandle,
    *,
    store: ActionLog,
    catalogue: Catalogue,
    config: Config,
    task_status: trio.TaskStatus[DynamicSupervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    actors: dict[int, _UserActor] = {}
    users = DynamicSupervisor("users", intensity=USER_CRASH_INTENSITY, period=USER_CRASH_PERIOD_S)

    def start_actor(user_id: int) -> _UserActor:
        # The inbox can hold every unacknowledged delivery (the prefetch), so routing never
        # waits on one slow user; memory channels allocate per message, not per capacity.
        send, receive = trio.open_memory_channel[UserMsg](config.amqp.prefetch)
        users.start_child(
            actor_spec(
                str(user_id),
                user.run,
                receive,
                scorer,
                user_id=user_id,
                store=store,
                catalogue=catalogue,
                config=config,
                in_hand=user.InHand(),
            )
        )
        return _UserActor(send, 0.0)

    with inbox, scorer:
        async with trio.open_nursery() as nursery:
            await nursery.start(users.run)
            task_status.started(users)
            # Reaping runs beside the loop, so that the loop's receive needs no deadline: a cancel
            # scope per message was 4 % of the worker's CPU. Both run in this one trio task tree,
            # so neither sees the map half-changed; an actor being routed to is never idle.
            nursery.start_soon(_reap_idle_every, actors, REAP_EVERY_S)
            async for msg in inbox:
                match msg:
                    case Route(envelope):
                        actor = actors.get(envelope.user_id)
                        if actor is None:
                            actor = actors[envelope.user_id] = start_actor(envelope.user_id)
                        actor.last_routed_at = trio.current_time()
                        # Guarded: not a str(UUID) per action for a line that is off.
                        if log.isEnabledFor(logging.DEBUG):
                            log.debug(
                                "routing action %s to user %d's actor",
                                envelope.action_id,
                                envelope.user_id,
                                extra={"action_id": str(envelope.action_id)},
                            )
                        await actor.inbox.send(msg)
                    case _:
                        assert_never(msg)
            # The consumer is gone: each user actor finishes what it holds, then ends.
            for actor in actors.values():
                actor.inbox.close()
            await users.wait_until_empty()
            nursery.cancel_scope.cancel()


async def _reap_idle_every(actors: dict[int, _UserActor], period_s: float) -> None:
    while True:
        await trio.sleep(period_s)
        _reap_idle(actors, trio.current_time() - IDLE_REAP_S)


def _reap_idle(actors: dict[int, _UserActor], deadline: float) -> None:
    for user_id in [user_id for user_id, actor in actors.items() if actor.idle_since(deadline)]:
        actors.pop(user_id).inbox.close()
