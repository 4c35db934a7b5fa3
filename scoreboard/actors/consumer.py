"""The consumer: the worker's end of the actions queue.

It runs the broker's consumer in its own nursery, handing deliveries over through a channel that
holds the whole prefetch (the asyncio side never waits on trio), decodes each body, dead-letters
the ones that are not action envelopes, and forwards the rest to the router. It acknowledges
nothing itself: the scorer does, after the commit. When the consumer stops, the broker's consumer
and its AMQP channel close with it, so every unacknowledged delivery is redelivered.

It reports started once the broker's consumer is running. That consumer subscribes by itself and
keeps subscribing (after a reconnect, to its share of the shard queues, or as a hot standby while
other workers hold every shard), so "started" means "consuming or standing by", which is what a
worker is for.
"""

from __future__ import annotations

import functools
import logging
import math

import trio

from scoreboard import metrics
from scoreboard.actors.retry import call_with_retries
from scoreboard.actors.router import RouterHandle, route
from scoreboard.adapters.interfaces import Broker, Delivery, PublishFailed
from scoreboard.config import Config
from scoreboard.wire import MalformedMessage, decode_envelope

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 10.0


class ConsumerEnded(RuntimeError):
    """The broker's consumer returned, which it only does on failure."""


async def run(
    router: RouterHandle,
    *,
    broker: Broker,
    config: Config,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    prefetch = config.amqp.prefetch
    # At least the prefetch: the broker never has more unacknowledged deliveries out than that.
    deliveries_in, deliveries_out = trio.open_memory_channel[Delivery](prefetch)
    with router, deliveries_out:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_consume, broker, deliveries_in, prefetch)
            task_status.started()
            async for delivery in deliveries_out:
                if delivery.redelivered:
                    metrics.DELIVERIES_REDELIVERED.inc()
                try:
                    envelope = decode_envelope(delivery.body)
                except MalformedMessage as exc:
                    log.warning("consumer: dead-lettering a malformed message (%s)", exc)
                    await call_with_retries(
                        functools.partial(broker.settle, dead=[(delivery, f"malformed: {exc}")]),
                        what="dead-lettering a malformed message",
                        timeout_s=SETTLE_TIMEOUT_S,
                        attempts=math.inf,
                        also_retry=(PublishFailed,),  # settling it again is safe
                    )
                    continue
                await route(router, envelope, delivery)
            raise ConsumerEnded("the broker's consumer ended")


async def _consume(
    broker: Broker, deliveries: trio.MemorySendChannel[Delivery], prefetch: int
) -> None:
    with deliveries:
        await broker.consume_actions(deliveries, prefetch)
