"""RabbitMQ behind the `Broker` protocol (aio-pika on the bridge loop).

Topology (names from `AmqpConfig`): the durable actions queue with exactly the published
arguments (TTL, dead-letter exchange, max priority), so that a client declaring it with those
arguments agrees with us; with `amqp.shards` > 1, the shard queues `<queue>.0` ... beside it, each
with `x-single-active-consumer` and the configured queue type; the direct dead-letter exchange and
the failed queue bound to it; the fanout events exchange.

Sharding (docs/scaling.md): an action goes to the shard queue of its user (`_queue_of`, the one
place that chooses, for first publishes, retries and replays alike), so one user's actions stay in
order in one queue, and one worker at a time consumes it. Each worker counts the workers (the
consumers of `<queue>.workers`, a queue nothing is published to) and every
`CONSUME_RETRY_INTERVAL_S` takes free shards up to its share and gives back those over it; a
worker that dies leaves its shards without a consumer, and the others take them at their next
look. Workers also consume the unsharded queue, exclusively, so what it held before sharding
is still processed.

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
mode: many publishes from many trio tasks pipeline on it, each waiting for its own confirm. They
go through aiormq's `basic_publish` on the channel's current underlying aiormq channel (aio-pika
replaces it after a reconnect) without waiting for each to be written out (`wait=False`, but for
one in `WRITTEN_OUT_EVERY`): aio-pika's `Exchange.publish` waits for every one, which makes a
batch's publishes leave one at a time, each with a few wake-ups of its own before the next may
start. This way a batch's publishes are queued to aiormq's writer a few at a time, and their
confirms awaited together. aiormq still writes each publish to the socket by itself.
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
import itertools
import logging
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import aiormq
import trio
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from scoreboard import clock
from scoreboard.adapters.event_offers import EventOffers
from scoreboard.adapters.interfaces import (
    EVENTS_GAP,
    Delivery,
    PublishFailed,
    PublishOutcomeUnknown,
)
from scoreboard.bridge import Bridge, Crossing
from scoreboard.config import AmqpConfig
from scoreboard.records import ActionEnvelope
from scoreboard.wire import MalformedMessage, decode_envelope, encode_envelope

T = TypeVar("T")
log = logging.getLogger(__name__)

# Actions are published to the default exchange, routed by queue name; expired retries are
# dead-lettered back to it.
ACTIONS_EXCHANGE = ""
# The header the retry exchange routes a delayed action by (to the delay queue of its delay).
RETRY_DELAY_HEADER = "retry-delay"  # no "x-": a headers exchange ignores those
# AMQP delivery modes: kept on disk by a durable queue, or not.
PERSISTENT = 2
TRANSIENT = 1
# Every this many publishes on the channel, one waits until aiormq's writer has written it out,
# and the channel's lock holds the next ones back until then: no more than this many of ours
# ever wait in aiormq's writer queue (10 frame groups), so a publish never blocks on a full
# queue. One that did when the connection closed would wait forever, its confirm never answered
# (aiormq's close stops the writer but does not wake a blocked put). The wait also passes the
# socket's backpressure on.
WRITTEN_OUT_EVERY = 5
# `scoreboard failed replay|purge --action-id` looks this deep into the failed queue.
FAILED_SCAN_LIMIT = 100_000
CONNECT_TIMEOUT_S = 10.0
# How soon a lost connection is tried again (aio-pika's default is 5 s).
RECONNECT_INTERVAL_S = 0.5
# How often a worker looks at the shards (takes free ones, gives back those over its share), and
# how soon a consumer whose channel closed tries again.
CONSUME_RETRY_INTERVAL_S = 1.0
# How long a stopping consumer may take to finish the RPC it is in and close its channel; past
# that it is cancelled (its connection is wedged, and the watchdog is replacing it).
CONSUMER_STOP_TIMEOUT_S = 10.0
# A stopping consumer waits at most this long for the batches in flight to be acknowledged, and
# gives up sooner when nothing was acknowledged for `IN_FLIGHT_QUIET_S`.
IN_FLIGHT_GRACE_S = 5.0
IN_FLIGHT_QUIET_S = 0.5
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
    """The `Broker`: publishes with confirms, sharded consumption, dead letters, events."""

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
        self._retry_exchange = _retry_exchange(config)
        self._incarnations = itertools.count(1)
        # Asyncio side: consuming channels still open, and their unsettled deliveries.
        self._live_incarnations: set[int] = set()
        self._unsettled: dict[tuple[int, int], DeliveredMessage] = {}
        # Deliveries taken out of `_unsettled` whose nack, or whose successor's publish and then
        # ack, is still under way: an ack of several at once must not cover them.
        self._settling: set[tuple[int, int]] = set()
        self._background: set[asyncio.Future[Any]] = set()
        # When each publish still waiting for its confirm started (loop time), by a token.
        self._awaiting_confirm: dict[int, float] = {}
        self._publish_tokens = itertools.count()
        self._publishes_queued = itertools.count()
        self._watchdog_resets = 0
        self._workers_queue = f"{config.queue}.workers"
        self._held_shards: list[int] = []
        # Trio side.
        self._event_offers = EventOffers()
        self._requeued_deliveries = 0

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            self._event_offers.dropped, self._requeued_deliveries, self._watchdog_resets
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

    async def unconsumed_queues(self) -> list[str]:
        return await self._run(self._unconsumed_queues)

    async def _unconsumed_queues(self) -> list[str]:
        channel = await self._plain_channel(self._publishing)
        try:
            return [n for n in self.action_queues() if await _consumer_count(channel, n) == 0]
        finally:
            await channel.close()

    def shard_queues(self) -> list[str]:
        """The queues actions are published to: the configured queue itself when unsharded,
        else `<queue>.0` ... `<queue>.<shards - 1>`."""
        return shard_queue_names(self._config)

    def action_queues(self) -> list[str]:
        """Every queue a worker consumes: the shards, and the pre-sharding queue to empty."""
        shards = self.shard_queues()
        return shards if self._config.queue in shards else [*shards, self._config.queue]

    def _queue_of(self, user_id: int) -> str:
        """The one place that picks a user's queue: every publish of an action (first, retried,
        replayed) goes through it, so a user's actions stay in one queue, in order."""
        return self.shard_queues()[shard_of(user_id, self._config.shards)]

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
            for name in self.action_queues():
                await channel.declare_queue(
                    name, durable=True, arguments=queue_arguments(config, name)
                )
            dead_letters = await channel.declare_exchange(
                config.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            failed = await channel.declare_queue(config.failed_queue, durable=True)
            await failed.bind(dead_letters, routing_key="")
            # The broker dead-letters an expired action with its queue's name as routing key (the
            # queues have no x-dead-letter-routing-key); without these bindings an accepted action
            # that waited past the TTL would vanish instead of waiting in the failed queue.
            for name in self.action_queues():
                await failed.bind(dead_letters, routing_key=name)
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
        exchange: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        routing_key: str,
        *,
        mandatory: bool = True,
    ) -> None:
        """Publish to `exchange` (one that `declare_topology` declares, or the default one) and
        wait for the broker's ack. A nack or a return is `PublishFailed` (the broker did not queue
        it); anything else, `PublishOutcomeUnknown` (it may have). Up to the wait for the confirm
        nothing here yields to the loop while the connection is up, so publishes started together
        are queued to the writer together (see the module's docstring)."""
        token = next(self._publish_tokens)
        self._awaiting_confirm[token] = asyncio.get_running_loop().time()
        try:
            if self._publish_channel.is_closed:
                # As aio-pika's publish: a channel that is closed (not one being restored) fails.
                raise aiormq.exceptions.ChannelInvalidStateError("the publishing channel closed")
            # After a reconnect the robust channel has a new underlying channel: ask each time.
            channel = await self._publish_channel.get_underlay_channel()
            # aiormq's abstract channel does not declare `wait`; its only channel class does.
            assert isinstance(channel, aiormq.Channel)
            result = await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                # Counted here, with no await before the channel's lock: in the lock's order.
                wait=next(self._publishes_queued) % WRITTEN_OUT_EVERY == 0,
            )
        except aiormq.exceptions.PublishError as exc:
            raise PublishFailed(f"unroutable: returned by the broker ({routing_key!r})") from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishFailed("the broker refused the message (nack)") from exc
        except TRANSPORT_ERRORS as exc:
            raise PublishOutcomeUnknown(f"the channel failed: {exc!r}") from exc
        except asyncio.CancelledError as exc:
            # aiormq rejects the confirms still awaited with the reason its connection closed,
            # a `CancelledError` when its reader was stopped (the watchdog's reset, a missed
            # heartbeat): the link was lost, not this task cancelled.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise PublishOutcomeUnknown("the connection closed before the confirm") from exc
        finally:
            del self._awaiting_confirm[token]
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise PublishFailed(f"the broker did not confirm the message: {result!r}")

    async def publish_action(self, envelope: ActionEnvelope) -> None:
        await self._bridge.run(self._publish_action, envelope, detached=True)

    async def publish_actions(self, envelopes: Sequence[ActionEnvelope]) -> list[Exception | None]:
        return await self._bridge.run(self._publish_actions, list(envelopes), detached=True)

    async def _publish_actions(self, envelopes: list[ActionEnvelope]) -> list[Exception | None]:
        """All on the confirm channel at once, so the batch costs about one confirm round trip.
        The publishes start in one loop turn and go to aiormq's writer `WRITTEN_OUT_EVERY` at a
        time."""
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
        await self._publish_to_actions(
            encode_envelope(envelope), str(envelope.action_id), self._queue_of(envelope.user_id)
        )

    async def _publish_to_actions(
        self, body: bytes, message_id: str, queue: str, *, delay_ms: int | None = None
    ) -> None:
        """Every publish of an action (accepted, retried, replayed) goes through here, to the
        actions queue `queue` that `_queue_of` chose. With `delay_ms`, it waits that long in a
        delay queue first, and the broker then routes it to `queue` as it would have at once."""
        if delay_ms is None:
            exchange = ACTIONS_EXCHANGE
            properties = _action_properties(message_id)
        else:
            exchange = self._retry_exchange
            properties = _action_properties(
                message_id,
                expiration_ms=delay_ms,
                headers={RETRY_DELAY_HEADER: _delay_tag(delay_ms)},
            )
        await self._publish_confirmed(exchange, body, properties, queue)

    async def publish_events(self, bodies: Sequence[bytes]) -> None:
        """Transient messages to the fanout, all confirmed together; nobody listening is fine."""
        await self._bridge.run(self._publish_events, list(bodies), detached=True)

    async def _publish_events(self, bodies: list[bytes]) -> None:
        await _all(
            self._publish_confirmed(
                self._config.events_exchange,
                body,
                aiormq.spec.Basic.Properties(delivery_mode=TRANSIENT, headers={}),
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
        """Hold this worker's share of the shard queues until `stop`, every
        `CONSUME_RETRY_INTERVAL_S` taking free shards up to the share and giving back those
        over it (`_balance`); each held queue has a task of its own (`_hold_queue`)."""
        held: dict[str, _Holding] = {}
        membership: aio_pika.Channel | None = None
        per_queue_prefetch = max(1, prefetch // len(self.action_queues()))
        try:
            while not stop.is_set():
                if not await self._consuming_connection_ready(stop):
                    return
                try:
                    if membership is None or membership.is_closed:
                        membership = await self._join_workers()
                    await self._balance(held, deliveries, per_queue_prefetch, stop)
                except TRANSPORT_ERRORS as exc:
                    if self._consuming.is_closed:
                        raise
                    log.warning("rabbitmq: balancing the action queues failed (%r)", exc)
                await _wait_or_timeout(stop, CONSUME_RETRY_INTERVAL_S)
        finally:
            for holding in held.values():
                holding.leave.set()
            await asyncio.gather(*(h.task for h in held.values()), return_exceptions=True)
            if membership is not None and not membership.is_closed:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await membership.close()

    async def _join_workers(self) -> aio_pika.Channel:
        """A consumer on the workers' queue, which nothing is published to: its consumer count
        is the number of workers, from which each computes its share of the shards."""
        channel = await self._plain_channel()
        queue = await channel.declare_queue(self._workers_queue, auto_delete=True)
        await queue.consume(_ignore, no_ack=True)
        return channel

    async def _balance(
        self,
        held: dict[str, _Holding],
        deliveries: trio.MemorySendChannel[Delivery],
        prefetch: int,
        stop: asyncio.Event,
    ) -> None:
        for name in [name for name, holding in held.items() if holding.task.done()]:
            del held[name]
        channel = await self._plain_channel()
        try:
            workers = await _consumer_count(channel, self._workers_queue)
            consumers = {name: await _consumer_count(channel, name) for name in self.shard_queues()}
        finally:
            await channel.close()
        share = -(-len(consumers) // max(1, workers))
        mine = [name for name in held if name in consumers]
        free = [name for name, count in consumers.items() if count == 0]
        random.shuffle(free)
        if len(mine) > share:
            # Given back: the broker hands it to a worker with fewer than its share.
            for name in random.sample(mine, len(mine) - share):
                held[name].leave.set()
        else:
            # Two workers that took the same free shard at once: one is active, the other stands
            # by; each gives it back by a coin toss while another shard has no consumer.
            for name in mine:
                if consumers[name] > 1 and free and random.random() < 0.5:
                    held[name].leave.set()
            for name in free[: max(0, share - len(mine))]:
                held[name] = self._start_holding(name, deliveries, prefetch, stop)
        legacy = self._config.queue
        if self._config.shards > 1 and legacy not in held:
            # What was queued before sharding: whoever gets its exclusive consumer empties it.
            held[legacy] = self._start_holding(legacy, deliveries, prefetch, stop)
        shards = [shard for shard, name in enumerate(consumers) if name in held]
        if shards != self._held_shards:
            self._held_shards = shards
            log.info(
                "rabbitmq: holding shards %s of %d (%d workers)",
                ",".join(map(str, shards)) or "none",
                len(consumers),
                workers,
            )

    def _start_holding(
        self,
        name: str,
        deliveries: trio.MemorySendChannel[Delivery],
        prefetch: int,
        stop: asyncio.Event,
    ) -> _Holding:
        leave = asyncio.Event()
        task = self._in_background(self._hold_queue(name, deliveries, prefetch, leave, stop))
        return _Holding(task, leave)

    def held_shards(self) -> list[int]:
        """The shard queues this worker consumes (or stands by for), by number."""
        return list(self._held_shards)

    async def _hold_queue(
        self,
        name: str,
        deliveries: trio.MemorySendChannel[Delivery],
        prefetch: int,
        leave: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        """Consume `name` on a channel of its own until that channel closes, or `leave` or
        `stop` is set; the broker refusing (another worker holds the legacy queue's exclusive
        consumer) ends it too, and the next balance tries again."""
        incarnation = next(self._incarnations)
        channel = await self._plain_channel()
        self._live_incarnations.add(incarnation)

        # aiormq's own consumer, not aio-pika's: aio-pika would wrap each delivery in an
        # IncomingMessage and run the callback in a second task, about a tenth of the worker's CPU
        # at 1,000 actions/s. aiormq calls this in delivery order (one task per delivery, started
        # in the order its reader meets them), which `_ack_all` relies on.
        async def on_message(message: DeliveredMessage) -> None:
            tag = message.delivery_tag
            assert tag is not None, "a consumer with manual acks gets delivery tags"
            self._unsettled[(incarnation, tag)] = message
            delivery = Delivery(
                tag,
                incarnation,
                message.body,
                message.header.properties.message_id,
                bool(message.redelivered),
            )
            # If trio is gone, closing the channel returns the message to the queue.
            with contextlib.suppress(trio.RunFinishedError):
                self._bridge.to_trio_nowait(self._hand_over, deliveries, delivery)

        cancelled_by_broker = asyncio.Event()
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(lambda _frame: cancelled_by_broker.set())
        try:
            if stop.is_set() or leave.is_set():
                return
            await channel.set_qos(prefetch_count=prefetch)
            # The single queue of an unsharded topology keeps its exclusive consumer; a shard
            # queue has x-single-active-consumer, which refuses exclusive consumers.
            exclusive = name == self._config.queue
            consume_ok = await underlay.basic_consume(
                name, on_message, no_ack=False, exclusive=exclusive
            )
            consumer_tag = consume_ok.consumer_tag
            assert consumer_tag is not None, "the broker names the consumer it started"
            log.info("rabbitmq: consuming %s", name)
            # The broker cancels a consumer whose queue was deleted but keeps the channel open.
            await _first_of(channel.closed(), cancelled_by_broker.wait(), stop.wait(), leave.wait())
            if cancelled_by_broker.is_set() and not stop.is_set():
                log.warning("rabbitmq: the broker cancelled the consumer of %s", name)
                await self._declare_topology()
            if (stop.is_set() or leave.is_set()) and not channel.is_closed:
                await self._finish_in_flight(underlay, consumer_tag, incarnation)
        except aiormq.exceptions.ChannelAccessRefused:
            pass  # another worker holds the legacy queue's exclusive consumer
        except TRANSPORT_ERRORS as exc:
            if not self._consuming.is_closed:
                log.warning("rabbitmq: consuming %s failed (%r)", name, exc)
        finally:
            self._live_incarnations.discard(incarnation)
            for key in [key for key in self._unsettled if key[0] == incarnation]:
                del self._unsettled[key]
            if not channel.is_closed:
                # Closing returns every unacknowledged delivery to the queue for the next consumer.
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await channel.close()

    async def _finish_in_flight(
        self, channel: aiormq.abc.AbstractChannel, consumer_tag: str, incarnation: int
    ) -> None:
        """A stopping worker: no more deliveries, then a short wait for the scorer to
        acknowledge the batches it is committing, so they are not redelivered to the next
        consumer. Deliveries that never reached a batch go back to the queue when the channel
        closes; their redelivery is harmless, only slower."""
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await channel.basic_cancel(consumer_tag)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IN_FLIGHT_GRACE_S
        settled_before = -1
        quiet_since = loop.time()
        while loop.time() < deadline:
            unsettled = sum(1 for key in self._unsettled if key[0] == incarnation)
            if unsettled == 0:
                return
            if unsettled != settled_before:
                settled_before, quiet_since = unsettled, loop.time()
            elif loop.time() - quiet_since > IN_FLIGHT_QUIET_S:
                return  # what is left was dropped with the consumer's channel, not in a batch
            await asyncio.sleep(0.05)

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
            self._settling.add(key)
            self._in_background(self._nack(key, message))

    async def _nack(self, key: tuple[int, int], message: DeliveredMessage) -> None:
        try:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await message.channel.basic_nack(_tag(message), requeue=True)
        finally:
            self._settling.discard(key)

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
        acking = {}
        for delivery in ack:
            key = _key(delivery)
            message = self._unsettled.pop(key, None)
            if message is not None:
                acking[key] = message
        await self._ack_all(acking)
        moves = []
        for delivery, envelope in retry:
            key = _key(delivery)
            message = self._unsettled.pop(key, None)
            if message is not None:
                moves.append(self._move(key, message, self._retried(envelope)))
        for delivery, reason in dead:
            key = _key(delivery)
            message = self._unsettled.pop(key, None)
            if message is not None:
                moves.append(self._move(key, message, self._dead_letter(message, reason)))
        await _all(moves)

    async def _ack_all(self, acking: dict[tuple[int, int], DeliveredMessage]) -> None:
        """Ack these deliveries (out of `_unsettled` already) with as few frames as is safe: per
        channel, one `multiple` ack for those below every delivery of that channel that is still
        unsettled or being settled, then one ack each for the rest. A channel's delivery tags
        count up in delivery order and every delivery is in `_unsettled` as soon as it arrives
        (`on_message` runs in delivery order), so every tag below the lowest unsettled one is in
        `acking` or was settled before. One frame instead of one per delivery: each frame is a
        socket write, and those were a tenth of the worker's CPU."""
        by_channel: dict[int, list[tuple[int, DeliveredMessage]]] = {}
        for (incarnation, tag), message in acking.items():
            by_channel.setdefault(incarnation, []).append((tag, message))
        for incarnation, tagged in by_channel.items():
            tagged.sort(key=lambda item: item[0])
            outstanding = [
                tag
                for keys in (self._unsettled, self._settling)
                for channel_of, tag in keys
                if channel_of == incarnation
            ]
            below = min(outstanding, default=tagged[-1][0] + 1)
            together = [message for tag, message in tagged if tag < below]
            if together:
                await self._ack(together[-1], multiple=True)
            for _, message in tagged[len(together) :]:
                await self._ack(message)

    async def _ack(self, message: DeliveredMessage, *, multiple: bool = False) -> None:
        # A channel that closed meanwhile has returned the message to the queue already.
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await message.channel.basic_ack(_tag(message), multiple=multiple)

    async def _move(
        self, key: tuple[int, int], message: DeliveredMessage, publish: Awaitable[None]
    ) -> None:
        """Publish the message's successor, then ack the message; keep it unsettled on failure."""
        self._settling.add(key)
        try:
            try:
                await publish
            except BaseException:
                if key[0] in self._live_incarnations:
                    self._unsettled[key] = message
                raise
            await self._ack(message)
        finally:
            self._settling.discard(key)

    async def _retried(self, envelope: ActionEnvelope) -> None:
        again = dataclasses.replace(envelope, attempts=envelope.attempts + 1)
        await self._publish_to_actions(
            encode_envelope(again),
            str(envelope.action_id),
            self._queue_of(envelope.user_id),
            delay_ms=self._config.retry_delay_ms(again.attempts),
        )

    async def _dead_letter(self, message: DeliveredMessage, reason: str) -> None:
        properties = message.header.properties
        letter = aiormq.spec.Basic.Properties(
            delivery_mode=PERSISTENT,
            message_id=properties.message_id,
            content_type=properties.content_type,
            headers={"x-failure-reason": reason, "x-failed-at": clock.now_ms()},
        )
        await self._publish_confirmed(self._config.dead_letter_exchange, message.body, letter, "")

    # Events

    async def consume_events(self, events: trio.MemorySendChannel[bytes]) -> None:
        try:
            await self._consume(self._consume_events, events)
        finally:
            self._event_offers.forget(events)

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
                self._bridge.to_trio_nowait(self._event_offers.offer, events, message.body)

        try:
            if stop.is_set():
                return
            # Server-named, exclusive, auto-delete: it lives exactly as long as this subscription.
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(self._config.events_exchange)
            await queue.consume(on_event, no_ack=True)
            # Ahead of every event this queue delivers: the deliveries' callbacks run only once
            # this coroutine yields, and everything crosses to trio in order.
            with contextlib.suppress(trio.RunFinishedError):
                self._bridge.to_trio_nowait(self._event_offers.offer, events, EVENTS_GAP)
            await _first_of(channel.closed(), stop.wait())
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await channel.close()

    # The failed queue

    async def queue_depths(self) -> dict[str, int]:
        """The queues' ready messages (unacknowledged deliveries not included), declared
        passively: a missing queue raises rather than being created."""
        return await self._run(self._queue_depths)

    async def _queue_depths(self) -> dict[str, int]:
        """`actions` sums the shard queues (and the queue of before sharding)."""
        channel = await self._plain_channel()
        try:
            depths = {"actions": 0, "failed": 0}
            named = [("actions", queue) for queue in self.action_queues()]
            for name, queue in [*named, ("failed", self._config.failed_queue)]:
                declared = await channel.declare_queue(queue, passive=True)
                depths[name] += declared.declaration_result.message_count or 0
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
        # A body that is no action goes to the first shard, whose consumer dead-letters it again.
        queue = self.shard_queues()[0]
        with contextlib.suppress(MalformedMessage):
            envelope = decode_envelope(body)
            body = encode_envelope(dataclasses.replace(envelope, attempts=0))
            queue = self._queue_of(envelope.user_id)
        await self._publish_to_actions(body, letter.message_id or "", queue)
        await letter.ack()

    async def _close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(self._publishing.close(), self._consuming.close())


def shard_of(user_id: int, shards: int) -> int:
    """A user's shard: the same in every process and Python version (CRC-32, not `hash`)."""
    return zlib.crc32(str(user_id).encode()) % shards


def shard_queue_names(config: AmqpConfig) -> list[str]:
    if config.shards == 1:
        return [config.queue]
    return [f"{config.queue}.{shard}" for shard in range(config.shards)]


def queue_arguments(config: AmqpConfig, name: str) -> dict[str, Any]:
    """The unsharded queue keeps the arguments it was always declared with (declaring it with
    others would fail, PRECONDITION_FAILED); a shard queue has a single active consumer and the
    configured type. Quorum queues have no priorities."""
    arguments: dict[str, Any] = {
        "x-message-ttl": config.message_ttl_ms,
        "x-dead-letter-exchange": config.dead_letter_exchange,
    }
    if name == config.queue:
        return {**arguments, "x-max-priority": config.max_priority}
    arguments["x-single-active-consumer"] = True
    arguments["x-queue-type"] = config.queue_type
    if config.queue_type == "classic":
        arguments["x-max-priority"] = config.max_priority
    return arguments


@dataclass(frozen=True, slots=True)
class _Holding:
    """A queue this worker consumes: the task that does, and the event that makes it stop."""

    task: asyncio.Task[None]
    leave: asyncio.Event


async def _consumer_count(channel: aio_pika.Channel, name: str) -> int:
    declared = await channel.declare_queue(name, passive=True)
    result = declared.declaration_result
    return 0 if result is None else int(result.consumer_count or 0)


async def _ignore(_message: AbstractIncomingMessage) -> None:
    """The workers' queue never receives a message; its consumers are only counted."""


def _key(delivery: Delivery) -> tuple[int, int]:
    return (delivery.channel_id, delivery.delivery_tag)


def _tag(message: DeliveredMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None, "a consumer with manual acks gets delivery tags"
    return tag


def _action_properties(
    message_id: str,
    *,
    expiration_ms: int | None = None,
    headers: dict[str, Any] | None = None,
) -> aiormq.spec.Basic.Properties:
    # What `aio_pika.Message(...).properties` gives, without building the Message (a few
    # percent of the publish path): no headers is an empty table, the expiration is in ms.
    return aiormq.spec.Basic.Properties(
        delivery_mode=PERSISTENT,
        message_id=message_id,
        content_type="application/json",
        expiration=None if expiration_ms is None else str(expiration_ms),
        headers=headers or {},
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
