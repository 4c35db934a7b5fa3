"""The events actor: the API process's subscription to the worker's events fanout.

It runs the broker's events consumer in its own nursery and forwards each decoded event to the
hub (a message holds one event, or all the events of a committed batch), taking every message
that waits at one wake-up and handing the hub all their events with one checkpoint; a
revocation goes to the process's deny-list instead, which refuses requests at once and has the
hub close the sockets. A body that does not decode is dropped with a warning: events are
notifications, and the next leaderboard snapshot supersedes whatever was lost.
"""

from __future__ import annotations

import logging

import trio

from scoreboard.actors import hub as hubs
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.hub import HubHandle
from scoreboard.actors.revocations import DenyList
from scoreboard.adapters.interfaces import Broker
from scoreboard.records import Event, TokensRevoked
from scoreboard.wire import MalformedMessage, decode_events

log = logging.getLogger(__name__)

EVENTS_BUFFER = 1024  # the broker hands events over without waiting and drops them when it is full
# Broker messages taken at one wake-up: all that waits, as one trip through trio's run queue
# costs as much as handling hundreds of them.
MESSAGES_PER_WAKEUP = EVENTS_BUFFER


class EventsSubscriptionEnded(RuntimeError):
    """The broker's events consumer returned, which it only does on failure."""


async def run(
    hub: HubHandle,
    *,
    broker: Broker,
    deny_list: DenyList,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    events_in, events_out = trio.open_memory_channel[bytes](EVENTS_BUFFER)
    with hub, events_out:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_consume, broker, events_in)
            task_status.started()
            while True:
                try:
                    bodies = await inboxes.receive_batch(events_out, MESSAGES_PER_WAKEUP)
                except trio.EndOfChannel:
                    break
                await _forward(bodies, hub, deny_list)
            raise EventsSubscriptionEnded("the events subscription ended")


async def _forward(bodies: list[bytes], hub: HubHandle, deny_list: DenyList) -> None:
    """The events of `bodies`, in order, to the hub in one go, and the revocations among them
    to the deny-list where they come."""
    pending: list[Event] = []
    for raw in bodies:
        try:
            events = decode_events(raw)
        except MalformedMessage as exc:
            log.warning("events: dropped a malformed event (%s)", exc)
            continue
        for event in events:
            if isinstance(event, TokensRevoked):
                await hubs.notify_all(hub, pending)
                pending = []
                await deny_list.deny(event)
            else:
                pending.append(event)
    await hubs.notify_all(hub, pending)


async def _consume(broker: Broker, events: trio.MemorySendChannel[bytes]) -> None:
    with events:
        await broker.consume_events(events)
