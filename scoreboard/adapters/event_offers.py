"""How both brokers hand events to their subscribers' channels (`Broker.consume_events`).

An event is handed over without waiting: one that does not fit the subscriber's channel is
dropped and counted, and the channel is marked, so that `EVENTS_GAP` goes ahead of the next event
that fits. Its reader then knows that events may be missing before it (and the events actor reads
the board again), as after a (re)subscription.
"""

from __future__ import annotations

import trio

from scoreboard.adapters.interfaces import EVENTS_GAP

EventChannel = trio.MemorySendChannel[bytes]


class EventOffers:
    """The trio side of a broker's event subscribers."""

    def __init__(self) -> None:
        self.dropped = 0
        self._gapped: set[EventChannel] = set()

    def offer(self, subscriber: EventChannel, body: bytes) -> None:
        try:
            if subscriber in self._gapped:
                subscriber.send_nowait(EVENTS_GAP)
                self._gapped.discard(subscriber)
            subscriber.send_nowait(body)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1
            self._gapped.add(subscriber)

    def forget(self, subscriber: EventChannel) -> None:
        """The subscription ended."""
        self._gapped.discard(subscriber)
