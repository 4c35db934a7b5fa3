"""The events actor: the API process's subscription to the worker's events fanout.

It runs the broker's events consumer in its own nursery and forwards each decoded event to the
hub (a message holds one event, or all the events of a committed batch), taking every message
that waits at one wake-up and handing the hub all their events with one checkpoint; a
revocation goes to the process's deny-list instead, which refuses requests at once and has the
hub close the sockets. A body that does not decode is dropped with a warning: events are
notifications, and the next leaderboard snapshot supersedes whatever was lost.

What is lost while the subscription is down (the broker restarting, or the process subscribing
only after the keeper published), or dropped for lack of room, is made up for: at each
`EVENTS_GAP` the actor reads the board from Redis, backing off while it does not answer, and hands
the hub that top, unless a leaderboard event came meanwhile (it came after the gap, so it is at
least as new). On an idle system no later event would ever correct a top that changed while the
process was not listening.
"""

from __future__ import annotations

import logging

import trio

from scoreboard.actors import hub as hubs
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.hub import HubHandle
from scoreboard.actors.revocations import DenyList
from scoreboard.adapters.interfaces import EVENTS_GAP, BackendUnavailable, Board, Broker
from scoreboard.backoff import Backoff
from scoreboard.records import Event, LeaderboardChanged, TokensRevoked
from scoreboard.wire import MalformedMessage, decode_events

log = logging.getLogger(__name__)

EVENTS_BUFFER = 1024  # the broker hands events over without waiting and drops them when it is full
# Broker messages taken at one wake-up: all that waits, as one trip through trio's run queue
# costs as much as handling hundreds of them.
MESSAGES_PER_WAKEUP = EVENTS_BUFFER


# The board read again after a gap in the events, while Redis does not answer.
RESYNC_BACKOFF = Backoff(minimum=0.5, maximum=5.0)


class EventsSubscriptionEnded(RuntimeError):
    """The broker's events consumer returned, which it only does on failure."""


class _Resync:
    """The board read that makes up for events missed before an `EVENTS_GAP`."""

    def __init__(self, board: Board, size: int, hub: HubHandle, nursery: trio.Nursery) -> None:
        self.board = board
        self.size = size
        self.hub = hub
        self.nursery = nursery
        self.reading: trio.CancelScope | None = None

    def start(self) -> None:
        self.superseded()
        self.reading = trio.CancelScope()
        self.nursery.start_soon(self._read, self.reading)

    def superseded(self) -> None:
        """A leaderboard event came through the subscription: the read is not needed."""
        if self.reading is not None:
            self.reading.cancel()
            self.reading = None

    async def _read(self, scope: trio.CancelScope) -> None:
        with scope:
            for tries, delay in enumerate(RESYNC_BACKOFF.delays(), 1):
                try:
                    snapshot = await hubs.read_top(self.board, self.size)
                except (BackendUnavailable, trio.TooSlowError) as exc:
                    log.debug("events: the board is unavailable (%s); reading it again", exc)
                    await trio.sleep(delay)
                    continue
                # An event forwarded while the read was in flight cancelled it, though the read
                # may have returned first. From here into the hub's inbox nothing yields (or, with
                # the inbox full, a later event cancels the send), so no later event goes in first.
                if scope.cancel_called:
                    return
                self.reading = None
                log.info("events: read the board after a gap in the events (try %d)", tries)
                await hubs.notify_all(self.hub, [snapshot])
                return


async def run(
    hub: HubHandle,
    *,
    broker: Broker,
    deny_list: DenyList,
    board: Board,
    board_size: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    events_in, events_out = trio.open_memory_channel[bytes](EVENTS_BUFFER)
    with hub, events_out:
        async with trio.open_nursery() as nursery:
            resync = _Resync(board, board_size, hub, nursery)
            nursery.start_soon(_consume, broker, events_in)
            task_status.started()
            while True:
                try:
                    bodies = await inboxes.receive_batch(events_out, MESSAGES_PER_WAKEUP)
                except trio.EndOfChannel:
                    break
                await _forward(bodies, hub, deny_list, resync)
            raise EventsSubscriptionEnded("the events subscription ended")


async def _forward(
    bodies: list[bytes], hub: HubHandle, deny_list: DenyList, resync: _Resync
) -> None:
    """The events of `bodies`, in order, to the hub in one go, and the revocations among them
    to the deny-list where they come; a gap in the events starts a resync."""
    pending: list[Event] = []
    for raw in bodies:
        if raw == EVENTS_GAP:
            resync.start()
            continue
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
                if isinstance(event, LeaderboardChanged):
                    resync.superseded()
                pending.append(event)
    await hubs.notify_all(hub, pending)


async def _consume(broker: Broker, events: trio.MemorySendChannel[bytes]) -> None:
    with events:
        await broker.consume_events(events)
