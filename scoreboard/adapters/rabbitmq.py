"""RabbitMQ behind the `Broker` protocol (aio-pika on the bridge loop).

Topology (names from `AmqpConfig`): the durable actions queue with exactly the published
arguments (TTL, dead-letter exchange, max priority), so that a client declaring it with
those arguments agrees with us; the direct dead-letter exchange and the failed queue bound to it;
the fanout events exchange.

Retries wait: an action the worker gives up on for now (the store refused it, its user actor
crashed) is published to the headers exchange `<queue>.retry` with a per-message TTL of the
configured delay (`amqp.retry_delays_ms`, growing per attempt), which routes it to the delay
queue of that delay, `<queue>.retry.<ms>ms`. Nobody consumes a delay queue: when the message
expires, the broker dead-letters it back to the exchange actions are published to, under the
routing key it was published with, and it is delivered again. One queue per delay keeps every
message in a queue expiring in order (RabbitMQ expires only at a queue's head). After
`amqp.max_attempts` the scorer records the action failed and it goes to the failed queue.

Two robust connections, reconnecting `RECONNECT_INTERVAL_S` after a loss: one for publishing,
one for consuming, so that a consumer's trouble (a flood of deliveries, a channel closing under
load) never holds up a publish or its confirm. Publishes share one robust channel in confirm
mode: many publishes from many trio tasks pipeline on it, each waiting for its own confirm.
Consumers do NOT use robust channels: aio-pika would restore an exclusive consumer by itself
after a reconnect, and when a hot standby has taken the queue meanwhile that restore fails and
stalls the whole connection's recovery, and it cannot restore a server-named queue at all. So
each consumer opens a plain channel, and opens a new one itself whenever that channel closes.

No broker call is interrupted half-way. aiormq answers a cancelled RPC by closing its channel
while the broker may still be answering it; a `Basic.Consume` cancelled with a backlog in the
queue left the whole connection silent (no channel opened, no confirm read) until the heartbeat
gave up on it minutes later. So a trio cancellation never reaches an RPC here: a one-shot call
(publish, settle, ping...) goes on in the background and its caller leaves at once; a consumer
is asked to stop and stops between RPCs, closing its channel. And a watchdog per connection
opens a channel every `WATCHDOG_EVERY_S` and watches the oldest confirm still awaited: if either
stalls (`PROBE_TIMEOUT_S`, `amqp.publish_timeout_s`), it closes that connection, which
reconnects. (A broker that blocks publishers for a memory or disk alarm looks stalled as well:
its connection is replaced now and then, and publishes fail either way until the alarm clears.)

A delivery's `channel_id` is the incarnation of the consuming channel (a counter of this broker
object), not the AMQP channel number, which a reopened channel reuses with delivery tags counted
from 1 again. Tags of a closed incarnation are never settled: the broker redelivers those messages,
and their effect is idempotent downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import aiormq
import trio
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from scoreboard import clock
from scoreboard.adapters.interfaces import (
    Delivery,
    PublishFailed,
    PublishOutcomeUnknown,
)
from scoreboard.bridge import Bridge, Crossing
from scoreboard.config import AmqpConfig
from scoreboard.model import ActionEnvelope, MalformedMessage

T = TypeVar("T")
log = logging.getLogger(__name__)

# Actions are published to the default exchange, routed by queue name; expired retries are
# dead-lettered back to it.
ACTIONS_EXCHANGE = ""
# The header the retry exchange routes a delayed action by (to the delay queue of its delay).
RETRY_DELAY_HEADER = "retry-delay"  # no "x-": a headers exchange ignores those
# `scoreboard failed replay|purge --action-id` looks this deep into the failed queue.
FAILED_SCAN_LIMIT = 100_000
CONNECT_TIMEOUT_S = 10.0
# How soon a lost connection is tried again (aio-pika's default is 5 s).
RECONNECT_INTERVAL_S = 0.5
# How often a hot standby asks for the exclusive consumer, and how soon a consumer whose channel
# closed tries again.
CONSUME_RETRY_INTERVAL_S = 1.0
# How long a stopping consumer may take to finish the RPC it is in and close its channel; past
# that it is cancelled (its connection is wedged, and the watchdog is replacing it).
CONSUMER_STOP_TIMEOUT_S = 10.0
# The watchdog: a channel open and close taking longer than this on a broker that answers in
# milliseconds means the connection is stuck; so does a confirm awaited longer than any request
# waits for one (`amqp.publish_timeout_s`).
WATCHDOG_EVERY_S = 1.0
PROBE_TIMEOUT_S = 3.0
# The connection is down or going: the caller may retry later.
UNAVAILABLE_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)
# Anything the broker or the link can answer instead of success, channel errors included.
TRANSPORT_ERRORS = (aiormq.exceptions.AMQPError, *UNAVAILABLE_ERRORS)


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    dropped_events: int  # events not handed to trio because its channel was full
    requeued_deliveries: int  # deliveries sent back because the trio channel was full or closed
    watchdog_resets: int  # connections the watchdog closed because they had stalled


class RabbitBroker:
    """The `Broker`: publishes with confirms, exclusive consumption, dead letters, events."""

    def __init__(
        self,
        bridge: Bridge,
        config: AmqpConfig,
        publishing: AbstractRobustConnection,
        consuming: AbstractRobustConnection,
        publish_channel: aio_pika.abc.AbstractRobustChannel,
    ):
        self._bridge = bridge
        # Run to their end even if the trio caller leaves first: no RPC is cut off half-way
        # (each ends with its answer, or with its connection).
        self._run = Crossing(bridge, "rabbitmq", UNAVAILABLE_ERRORS, detached=True)
        self._config = config
        self._publishing = publishing
        self._consuming = consuming
        self._publish_channel = publish_channel
        self._dead_letter_exchange = self._exchange(config.dead_letter_exchange)
        self._events_exchange = self._exchange(config.events_exchange)
        self._retry_exchange = self._exchange(_retry_exchange(config))
        self._incarnations = itertools.count(1)
        # Asyncio side: consuming channels still open, and their unsettled deliveries.
        self._live_incarnations: set[int] = set()
        self._unsettled: dict[tuple[int, int], AbstractIncomingMessage] = {}
        self._background: set[asyncio.Future[Any]] = set()
        # When each publish still waiting for its confirm started (loop time), by a token.
        self._awaiting_confirm: dict[int, float] = {}
        self._publish_tokens = itertools.count()
        self._watchdog_resets = 0
        # Trio side.
        self._dropped_events = 0
        self._requeued_deliveries = 0

    def _exchange(self, name: str) -> AbstractExchange:
        """A handle to publish to an exchange that `declare_topology` declares."""
        return aio_pika.Exchange(self._publish_channel, name, passive=True)

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            self._dropped_events, self._requeued_deliveries, self._watchdog_resets
        )

    def _in_background(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(_forget(self._background))
        return task

    async def _plain_channel(
        self, connection: AbstractRobustConnection | None = None
    ) -> aio_pika.Channel:
        """A channel that is not restored after a reconnect: its user reopens it when it must."""
        connection = connection or self._consuming
        await connection.ready()
        channel = aio_pika.Channel(connection, publisher_confirms=False)
        await channel.initialize()
        return channel

    async def ping(self) -> None:
        """Open and close a channel on each connection: two round trips to the broker each."""
        await self._run(self._ping)

    async def _ping(self) -> None:
        await _all(_open_and_close(self, c) for c in (self._publishing, self._consuming))

    # The watchdog

    async def _watch(self, connection: AbstractRobustConnection, name: str) -> None:
        """Close `connection` (it reconnects by itself) when a probe or a confirm stalls."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_EVERY_S)
            if not connection.connected.is_set():
                continue  # reconnecting already
            probe = self._in_background(_open_and_close(self, connection))
            done, _ = await asyncio.wait({probe}, timeout=PROBE_TIMEOUT_S)
            stalled = "a channel open" if not done else None
            if connection is self._publishing and self._awaiting_confirm:
                oldest = min(self._awaiting_confirm.values())
                if loop.time() - oldest > self._config.publish_timeout_s:
                    stalled = "a publisher confirm"
            if stalled is not None:
                await self._reset(connection, f"{stalled} stalled on the {name} connection")

    async def _reset(self, connection: AbstractRobustConnection, why: str) -> None:
        transport = connection.transport
        if transport is None:
            return
        self._watchdog_resets += 1
        log.warning("rabbitmq: %s; closing it to reconnect", why)
        with contextlib.suppress(Exception):
            await transport.connection.close(ConnectionResetError(why))

    # Topology

    async def declare_topology(self) -> None:
        await self._run(self._declare_topology)

    async def _declare_topology(self) -> None:
        config = self._config
        channel = await self._plain_channel()
        try:
            await channel.declare_queue(
                config.queue,
                durable=True,
                arguments={
                    "x-message-ttl": config.message_ttl_ms,
                    "x-dead-letter-exchange": config.dead_letter_exchange,
                    "x-max-priority": config.max_priority,
                },
            )
            dead_letters = await channel.declare_exchange(
                config.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            failed = await channel.declare_queue(config.failed_queue, durable=True)
            await failed.bind(dead_letters, routing_key="")
            # The broker dead-letters an expired action with the actions queue's name as routing
            # key (the queue has no x-dead-letter-routing-key); without this binding an accepted
            # action that waited past the TTL would vanish instead of waiting in the failed queue.
            await failed.bind(dead_letters, routing_key=config.queue)
            await channel.declare_exchange(
                config.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
            )
            retry = await channel.declare_exchange(
                _retry_exchange(config), aio_pika.ExchangeType.HEADERS, durable=True
            )
            for delay_ms in sorted(set(config.retry_delays_ms)):
                delayed = await channel.declare_queue(
                    f"{config.queue}.retry.{delay_ms}ms",
                    durable=True,
                    # No x-dead-letter-routing-key: an expired retry keeps the routing key it
                    # was published with, the one that leads to its actions queue.
                    arguments={"x-dead-letter-exchange": ACTIONS_EXCHANGE},
                )
                await delayed.bind(
                    retry, arguments={"x-match": "all", RETRY_DELAY_HEADER: _delay_tag(delay_ms)}
                )
        finally:
            await channel.close()

    # Publishing

    async def _publish_confirmed(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        routing_key: str,
        *,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the broker's ack. A nack or a return is `PublishFailed` (the
        broker did not queue it); anything else, `PublishOutcomeUnknown` (it may have)."""
        token = next(self._publish_tokens)
        self._awaiting_confirm[token] = asyncio.get_running_loop().time()
        try:
            result = await exchange.publish(message, routing_key, mandatory=mandatory)
        except aiormq.exceptions.PublishError as exc:
            raise PublishFailed(f"unroutable: returned by the broker ({routing_key!r})") from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishFailed("the broker refused the message (nack)") from exc
        except TRANSPORT_ERRORS as exc:
            raise PublishOutcomeUnknown(f"the channel failed: {exc!r}") from exc
        finally:
            del self._awaiting_confirm[token]
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise PublishFailed(f"the broker did not confirm the message: {result!r}")

    async def publish_action(self, envelope: ActionEnvelope) -> None:
        await self._bridge.run(self._publish_action, envelope, detached=True)

    async def publish_actions(self, envelopes: Sequence[ActionEnvelope]) -> list[Exception | None]:
        return await self._bridge.run(self._publish_actions, list(envelopes), detached=True)

    async def _publish_actions(self, envelopes: list[ActionEnvelope]) -> list[Exception | None]:
        """All on the confirm channel at once, so the batch costs about one confirm round trip."""
        results = await asyncio.gather(
            *(self._publish_action(envelope) for envelope in envelopes), return_exceptions=True
        )
        outcomes: list[Exception | None] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # a cancellation is the whole call's, not one envelope's
            outcomes.append(result)
        return outcomes

    async def _publish_action(self, envelope: ActionEnvelope) -> None:
        await self._publish_to_actions(envelope.encode(), str(envelope.action_id))

    async def _publish_to_actions(
        self, body: bytes, message_id: str, *, delay_ms: int | None = None
    ) -> None:
        """Every publish of an action (accepted, retried, replayed) goes through here: the one
        place that picks its way to the actions queue. With `delay_ms`, it waits that long in
        a delay queue first, and the broker then routes it as it would have at once."""
        routing_key = self._config.queue
        if delay_ms is None:
            exchange = self._publish_channel.default_exchange
            message = _action_message(body, message_id)
        else:
            exchange = self._retry_exchange
            message = _action_message(
                body,
                message_id,
                expiration=dt.timedelta(milliseconds=delay_ms),
                headers={RETRY_DELAY_HEADER: _delay_tag(delay_ms)},
            )
        await self._publish_confirmed(exchange, message, routing_key)

    async def publish_events(self, bodies: Sequence[bytes]) -> None:
        """Transient messages to the fanout, all confirmed together; nobody listening is fine."""
        await self._bridge.run(self._publish_events, list(bodies), detached=True)

    async def _publish_events(self, bodies: list[bytes]) -> None:
        await _all(
            self._publish_confirmed(
                self._events_exchange,
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                "",
                mandatory=False,
            )
            for body in bodies
        )

    # Consuming actions

    async def consume_actions(
        self, deliveries: trio.MemorySendChannel[Delivery], prefetch: int
    ) -> None:
        await self._consume(self._consume_actions, deliveries, prefetch)

    async def _consume(self, consumer: Callable[..., Awaitable[None]], *args: Any) -> None:
        # Not detached: cancelling the caller stops the consumer (`_until_stopped`).
        await Crossing(self._bridge, "rabbitmq", UNAVAILABLE_ERRORS)(
            _until_stopped, consumer, *args
        )

    async def _consume_actions(
        self, deliveries: trio.MemorySendChannel[Delivery], prefetch: int, stop: asyncio.Event
    ) -> None:
        waiting_logged = False
        while not stop.is_set():
            if not await self._consuming_connection_ready(stop):
                return
            try:
                await self._consume_actions_once(deliveries, prefetch, stop)
            except aiormq.exceptions.ChannelAccessRefused:
                # Another worker holds the exclusive consumer: stand by until it lets go.
                if not waiting_logged:
                    log.info("rabbitmq: %s is consumed elsewhere; standing by", self._config.queue)
                    waiting_logged = True
            except TRANSPORT_ERRORS as exc:
                if self._consuming.is_closed:
                    raise
                log.warning("rabbitmq: consuming %s failed (%r); retrying", self._config.queue, exc)
            else:
                if stop.is_set():
                    return
                log.warning("rabbitmq: the channel consuming %s closed", self._config.queue)
                waiting_logged = False
            await _wait_or_timeout(stop, CONSUME_RETRY_INTERVAL_S)

    async def _consume_actions_once(
        self, deliveries: trio.MemorySendChannel[Delivery], prefetch: int, stop: asyncio.Event
    ) -> None:
        """Consume on a channel of its own until that channel closes or `stop` is set."""
        incarnation = next(self._incarnations)
        channel = await self._plain_channel()
        self._live_incarnations.add(incarnation)

        async def on_message(message: AbstractIncomingMessage) -> None:
            tag = message.delivery_tag
            assert tag is not None, "a consumer with manual acks gets delivery tags"
            self._unsettled[(incarnation, tag)] = message
            delivery = Delivery(
                tag, incarnation, message.body, message.message_id, bool(message.redelivered)
            )
            # If trio is gone, closing the channel returns the message to the queue.
            with contextlib.suppress(trio.RunFinishedError):
                self._bridge.to_trio_nowait(self._hand_over, deliveries, delivery)

        cancelled_by_broker = asyncio.Event()
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(lambda _frame: cancelled_by_broker.set())
        try:
            if stop.is_set():
                return
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(self._config.queue, ensure=False)
            await queue.consume(on_message, no_ack=False, exclusive=True)
            log.info("rabbitmq: consuming %s", self._config.queue)
            # The broker cancels a consumer whose queue was deleted but keeps the channel open.
            await _first_of(channel.closed(), cancelled_by_broker.wait(), stop.wait())
            if cancelled_by_broker.is_set() and not stop.is_set():
                log.warning("rabbitmq: the broker cancelled the consumer of %s", self._config.queue)
                await self._declare_topology()
        finally:
            self._live_incarnations.discard(incarnation)
            for key in [key for key in self._unsettled if key[0] == incarnation]:
                del self._unsettled[key]
            if not channel.is_closed:
                # Closing returns every unacknowledged delivery to the queue for the next consumer.
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await channel.close()

    async def _consuming_connection_ready(self, stop: asyncio.Event) -> bool:
        """Wait until the consuming connection is up (it may be reconnecting), or `stop`."""
        await _first_of(self._consuming.ready(), stop.wait())
        return not stop.is_set()

    def _hand_over(self, deliveries: trio.MemorySendChannel[Delivery], delivery: Delivery) -> None:
        """Trio side: the channel holds the whole prefetch, so it is full only by mistake."""
        try:
            deliveries.send_nowait(delivery)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._requeued_deliveries += 1
            key = (delivery.channel_id, delivery.delivery_tag)
            self._bridge.to_asyncio_nowait(self._requeue, key)

    def _requeue(self, key: tuple[int, int]) -> None:
        message = self._unsettled.pop(key, None)
        if message is not None:
            self._in_background(_ignoring_transport_errors(message.nack(requeue=True)))

    # Settling

    async def settle(
        self,
        *,
        ack: Sequence[Delivery] = (),
        retry: Sequence[tuple[Delivery, ActionEnvelope]] = (),
        dead: Sequence[tuple[Delivery, str]] = (),
    ) -> None:
        """Deliveries not known here (settled already, or from a channel that closed) are
        skipped: the broker redelivers the latter. A retry or dead letter whose publish fails
        stays unsettled, so calling `settle` again with the same arguments is safe; after the
        rest is done, the first failure is raised (`PublishFailed`)."""
        await self._run(self._settle, list(ack), list(retry), list(dead))

    async def _settle(
        self,
        ack: list[Delivery],
        retry: list[tuple[Delivery, ActionEnvelope]],
        dead: list[tuple[Delivery, str]],
    ) -> None:
        for delivery in ack:
            message = self._unsettled.pop(_key(delivery), None)
            if message is not None:
                await self._ack(message)
        moves = []
        for delivery, envelope in retry:
            message = self._unsettled.pop(_key(delivery), None)
            if message is not None:
                moves.append(self._move(_key(delivery), message, self._retried(envelope)))
        for delivery, reason in dead:
            message = self._unsettled.pop(_key(delivery), None)
            if message is not None:
                letter = self._dead_letter(message, reason)
                moves.append(self._move(_key(delivery), message, letter))
        await _all(moves)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        # A channel that closed meanwhile has returned the message to the queue already.
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await message.ack()

    async def _move(
        self, key: tuple[int, int], message: AbstractIncomingMessage, publish: Awaitable[None]
    ) -> None:
        """Publish the message's successor, then ack the message; keep it unsettled on failure."""
        try:
            await publish
        except BaseException:
            if key[0] in self._live_incarnations:
                self._unsettled[key] = message
            raise
        await self._ack(message)

    async def _retried(self, envelope: ActionEnvelope) -> None:
        again = dataclasses.replace(envelope, attempts=envelope.attempts + 1)
        await self._publish_to_actions(
            again.encode(),
            str(envelope.action_id),
            delay_ms=self._config.retry_delay_ms(again.attempts),
        )

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        letter = aio_pika.Message(
            message.body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            content_type=message.content_type,
            headers={"x-failure-reason": reason, "x-failed-at": clock.now_ms()},
        )
        await self._publish_confirmed(self._dead_letter_exchange, letter, "")

    # Events

    async def consume_events(self, events: trio.MemorySendChannel[bytes]) -> None:
        await self._consume(self._consume_events, events)

    async def _consume_events(
        self, events: trio.MemorySendChannel[bytes], stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            if not await self._consuming_connection_ready(stop):
                return
            try:
                await self._consume_events_once(events, stop)
            except TRANSPORT_ERRORS as exc:
                if self._consuming.is_closed:
                    raise
                log.warning("rabbitmq: the events subscription failed (%r); retrying", exc)
            else:
                if stop.is_set():
                    return
                log.warning("rabbitmq: the events channel closed; subscribing again")
            await _wait_or_timeout(stop, CONSUME_RETRY_INTERVAL_S)

    async def _consume_events_once(
        self, events: trio.MemorySendChannel[bytes], stop: asyncio.Event
    ) -> None:
        channel = await self._plain_channel()

        async def on_event(message: AbstractIncomingMessage) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                self._bridge.to_trio_nowait(self._offer_event, events, message.body)

        try:
            if stop.is_set():
                return
            # Server-named, exclusive, auto-delete: it lives exactly as long as this subscription.
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(self._config.events_exchange)
            await queue.consume(on_event, no_ack=True)
            await _first_of(channel.closed(), stop.wait())
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await channel.close()

    def _offer_event(self, events: trio.MemorySendChannel[bytes], body: bytes) -> None:
        """Trio side: an event that does not fit is dropped; the next snapshot supersedes it."""
        try:
            events.send_nowait(body)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._dropped_events += 1

    # The failed queue

    async def queue_depths(self) -> dict[str, int]:
        """The queues' ready messages (unacknowledged deliveries not included), declared
        passively: a missing queue raises rather than being created."""
        return await self._run(self._queue_depths)

    async def _queue_depths(self) -> dict[str, int]:
        channel = await self._plain_channel()
        try:
            depths = {}
            for name, queue in (
                ("actions", self._config.queue),
                ("failed", self._config.failed_queue),
            ):
                declared = await channel.declare_queue(queue, passive=True)
                depths[name] = declared.declaration_result.message_count or 0
            return depths
        finally:
            await channel.close()

    async def list_failed(self, limit: int) -> list[tuple[bytes, str]]:
        """Up to `limit` dead letters, oldest first, with their reasons. They are got without
        an ack and returned by closing the channel, which puts them back in their places."""
        return await self._run(self._list_failed, limit)

    async def _list_failed(self, limit: int) -> list[tuple[bytes, str]]:
        channel = await self._plain_channel()
        try:
            return [(m.body, _failure_reason(m)) for m in await self._get_failed(channel, limit)]
        finally:
            await channel.close()

    async def replay_failed(self, limit: int, action_id: str | None = None) -> int:
        """Move up to `limit` dead letters (of `action_id` only, if given) back to the actions
        queue with their attempts reset, each acked only once its copy is confirmed. Raises
        `PublishFailed` if any copy failed (those stay in the failed queue); otherwise answers
        how many moved."""
        return await self._run(self._replay_failed, limit, action_id)

    async def _replay_failed(self, limit: int, action_id: str | None) -> int:
        channel = await self._plain_channel()
        try:
            letters = await self._get_failed(channel, limit, action_id)
            await _all(self._replay(letter) for letter in letters)
            return len(letters)
        finally:
            await channel.close()

    async def purge_failed(self, action_id: str | None = None) -> int:
        """Delete every dead letter (of `action_id` only, if given); how many were deleted."""
        return await self._run(self._purge_failed, action_id)

    async def _purge_failed(self, action_id: str | None) -> int:
        channel = await self._plain_channel()
        try:
            if action_id is None:
                queue = await channel.get_queue(self._config.failed_queue, ensure=False)
                purged = await queue.purge()
                return int(purged.message_count or 0)
            letters = await self._get_failed(channel, FAILED_SCAN_LIMIT, action_id)
            await _all(letter.ack() for letter in letters)
            return len(letters)
        finally:
            await channel.close()

    async def _get_failed(
        self, channel: aio_pika.Channel, limit: int, action_id: str | None = None
    ) -> list[AbstractIncomingMessage]:
        """Up to `limit` dead letters (of `action_id` only, if given), unacked: the ones not
        acked go back to their places when the channel closes. Looking for one action reads
        at most `FAILED_SCAN_LIMIT` letters."""
        queue = await channel.get_queue(self._config.failed_queue, ensure=False)
        letters: list[AbstractIncomingMessage] = []
        seen = 0
        while len(letters) < limit and (action_id is None or seen < FAILED_SCAN_LIMIT):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            seen += 1
            if action_id is None or message.message_id == action_id:
                letters.append(message)
        return letters

    async def _replay(self, letter: AbstractIncomingMessage) -> None:
        body = letter.body
        with contextlib.suppress(MalformedMessage):
            body = dataclasses.replace(ActionEnvelope.decode(body), attempts=0).encode()
        await self._publish_to_actions(body, letter.message_id or "")
        await letter.ack()

    async def _close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(self._publishing.close(), self._consuming.close())


def _key(delivery: Delivery) -> tuple[int, int]:
    return (delivery.channel_id, delivery.delivery_tag)


def _action_message(
    body: bytes,
    message_id: str,
    *,
    expiration: dt.timedelta | None = None,
    headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        content_type="application/json",
        expiration=expiration,
        headers=headers,
    )


def _retry_exchange(config: AmqpConfig) -> str:
    return f"{config.queue}.retry"


def _delay_tag(delay_ms: int) -> str:
    return f"{delay_ms}ms"


def _failure_reason(message: AbstractIncomingMessage) -> str:
    """Ours (`x-failure-reason`), else the broker's own (`x-death`: expired, rejected...)."""
    reason = message.headers.get("x-failure-reason")
    if reason is None:
        deaths = message.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            reason = deaths[0].get("reason")
            reason = f"dead-lettered by the broker: {_text(reason)}" if reason else None
    return _text(reason) if reason is not None else ""


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def _all(awaitables: Iterable[Awaitable[None]]) -> None:
    """Await them concurrently, let every one finish, then raise the first failure."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _ignoring_transport_errors(awaitable: Awaitable[None]) -> None:
    with contextlib.suppress(*TRANSPORT_ERRORS):
        await awaitable


async def _connect_one(config: AmqpConfig, role: str) -> AbstractRobustConnection:
    return await aio_pika.connect_robust(
        config.url,
        timeout=CONNECT_TIMEOUT_S,
        reconnect_interval=RECONNECT_INTERVAL_S,
        client_properties={"connection_name": f"scoreboard {role}"},
    )


async def _connect(bridge: Bridge, config: AmqpConfig) -> RabbitBroker:
    connections: list[AbstractRobustConnection] = []
    try:
        for role in ("publishing", "consuming"):
            connections.append(await _connect_one(config, role))
        publishing, consuming = connections
        channel = await publishing.channel(publisher_confirms=True, on_return_raises=True)
        broker = RabbitBroker(bridge, config, publishing, consuming, channel)
    except BaseException:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        raise
    broker._in_background(broker._watch(publishing, "publishing"))
    broker._in_background(broker._watch(consuming, "consuming"))
    return broker


@asynccontextmanager
async def open_rabbitmq(bridge: Bridge, config: AmqpConfig) -> AsyncIterator[RabbitBroker]:
    """Connect (robustly: it reconnects by itself later); close on exit, even when cancelled.
    Run the consumers inside this block: closing the connection ends them."""
    broker = await Crossing(bridge, "rabbitmq", UNAVAILABLE_ERRORS)(_connect, bridge, config)
    try:
        yield broker
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(broker._close)


async def _open_and_close(broker: RabbitBroker, connection: AbstractRobustConnection) -> None:
    channel = await broker._plain_channel(connection)
    await channel.close()


def _forget(tasks: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done callback: drop the task from `tasks`, and retrieve its exception (nobody else may)."""

    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


async def _until_stopped(consumer: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run `consumer(*args, stop)` until it returns; when this task is cancelled (its trio caller
    left), set `stop` and let the consumer finish the RPC it is in and close its channel."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(consumer(*args, stop))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({task}, timeout=CONSUMER_STOP_TIMEOUT_S)
        if not task.done():
            log.warning("rabbitmq: a consumer did not stop in time; cancelling it")
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise


async def _wait_or_timeout(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


async def _first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until one of these finishes; cancel the others."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
