"""The publisher: the API process's durable publishes of accepted actions, in batches.

Request handlers call `publish` (each under its own `amqp.publish_timeout_s`). Batching is
natural: the publisher waits for one request, takes whatever else is already waiting, up to
`MAX_BATCH`, and hands the envelopes to `Broker.publish_actions`: one bridge crossing and about
one confirm round trip for the batch (one SQLite transaction in embedded mode) instead of one of
each per request. Every requester is
answered with its own envelope's outcome; one refused envelope fails no other.

Up to `MAX_BATCHES_IN_FLIGHT` batches are confirmed at once: with a single one, a request that
arrives just after a batch left waits for that batch's whole round trip before its own even
starts. Only when every slot is taken do requests pile up in the inbox, so batches grow with the
load and stay single requests when it is light.

It never waits on a requester (`inbox.reply`). A requester that gave up before its batch was
sent has closed its reply receiver (`inbox.gone`); its envelope is skipped, so an action whose
claim the handler has released is not published behind its back.

A batch not confirmed within `amqp.publish_timeout_s` is abandoned and each of its requesters
answered `PublishOutcomeUnknown` (the broker may still queue it), so a stuck broker holds the
publisher no longer than it holds a request. Anything the broker raises instead of answering goes
to every requester of the batch, as if each had published by itself.

Once the requesters have their answers, the nonces of the confirmed actions are marked queued in
the edge guard, in one call for the batch: from then on a replay of such a nonce is answered 202
at once instead of publishing the action again (which is safe, but costs a message). If that
call fails, nothing is lost: a replay publishes again.
"""

from __future__ import annotations

import functools
import logging

import trio

from scoreboard import metrics
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.messages import Publish, PublisherMsg
from scoreboard.adapters.interfaces import (
    BackendUnavailable,
    Broker,
    EdgeGuard,
    PublishOutcomeUnknown,
)
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope

log = logging.getLogger(__name__)

INBOX_SIZE = 1024  # requests waiting while every batch slot is confirming; past it, handlers wait

# Enough to amortise the confirm round trip over a burst of requests, small enough that one
# batch's confirms come back well within a request's publish timeout.
MAX_BATCH = 256
MAX_BATCHES_IN_FLIGHT = 4
MARK_TIMEOUT_S = 2.0

PublisherHandle = trio.MemorySendChannel[PublisherMsg]
"""How request handlers reach the publisher: the sending end of its inbox."""


def open_inbox() -> tuple[PublisherHandle, trio.MemoryReceiveChannel[PublisherMsg]]:
    """The publisher's inbox: the handle request handlers use, and the end the publisher reads."""
    return trio.open_memory_channel[PublisherMsg](INBOX_SIZE)


async def publish(publisher: PublisherHandle, envelope: ActionEnvelope) -> None:
    """Publish `envelope` durably, in the publisher's next batch; returns once the broker
    confirmed it. Raises what the broker answered instead (`PublishFailed`: refused, not
    queued; `PublishOutcomeUnknown`: no confirm in time, maybe queued; anything else the broker
    raised). Cancelled before its batch left (the caller's timeout), the envelope is not sent."""
    failure = await inboxes.call(publisher, functools.partial(Publish, envelope))
    if failure is not None:
        raise failure


async def run(
    inbox: trio.MemoryReceiveChannel[PublisherMsg],
    *,
    broker: Broker,
    guard: EdgeGuard,
    config: Config,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    free_slots = trio.Semaphore(MAX_BATCHES_IN_FLIGHT)
    with inbox:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await free_slots.acquire()
                try:
                    batch = await inboxes.receive_batch(inbox, MAX_BATCH)
                except trio.EndOfChannel:
                    return
                wanted = [request for request in batch if not inboxes.gone(request.reply)]
                nursery.start_soon(_publish_in_slot, broker, guard, config, wanted, free_slots)


async def _publish_in_slot(
    broker: Broker,
    guard: EdgeGuard,
    config: Config,
    batch: list[Publish],
    slot: trio.Semaphore,
) -> None:
    try:
        if batch:
            queued = await _publish(broker, config, batch)
            await _mark_queued(guard, queued)
    finally:
        slot.release()


async def _publish(broker: Broker, config: Config, batch: list[Publish]) -> list[Publish]:
    """Publish the batch and answer each requester; the ones confirmed."""
    timeout_s = config.amqp.publish_timeout_s
    failures: list[Exception | None] = [
        PublishOutcomeUnknown(f"the broker did not confirm within {timeout_s} s") for _ in batch
    ]
    with trio.move_on_after(timeout_s):
        try:
            metrics.BATCH_SIZE.labels("publisher").observe(len(batch))
            failures = await broker.publish_actions([request.envelope for request in batch])
        except Exception as exc:
            failures = [exc for _ in batch]
    for request, failure in zip(batch, failures, strict=True):
        inboxes.reply(request.reply, failure)
    return [request for request, failure in zip(batch, failures, strict=True) if failure is None]


async def _mark_queued(guard: EdgeGuard, queued: list[Publish]) -> None:
    if not queued:
        return
    actions = [(p.envelope.user_id, p.envelope.nonce, p.envelope.action_id) for p in queued]
    try:
        with trio.fail_after(MARK_TIMEOUT_S):
            await guard.mark_queued(actions)
    except (BackendUnavailable, trio.TooSlowError) as exc:
        log.warning("publisher: could not mark %d nonces queued (%r)", len(actions), exc)
