"""The RabbitMQ adapter against the real broker: the run's own vhost, each test's own names."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import unquote, urlsplit

import pytest
import trio

from scoreboard.adapters.interfaces import EVENTS_GAP, Broker, Delivery, PublishFailed
from scoreboard.adapters.rabbitmq import RabbitBroker, open_rabbitmq, shard_of
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import AmqpConfig, ConfigError
from scoreboard.records import ActionEnvelope
from scoreboard.wire import decode_envelope, encode_envelope

pytestmark = pytest.mark.timeout(60)

PREFETCH = 64
THROUGHPUT_MESSAGES = 5000
THROUGHPUT_TASKS = 200
BATCH_MESSAGES = 500


# Short waits before a retry, growing: the first after attempt 1, the second after attempt 2.
RETRY_DELAYS_MS = (300, 600)


@pytest.fixture
def amqp_config(amqp_vhost_url: str, amqp_names: dict[str, str]) -> AmqpConfig:
    return AmqpConfig(
        url=amqp_vhost_url,
        queue=amqp_names["queue"],
        failed_queue=amqp_names["failed_queue"],
        dead_letter_exchange=amqp_names["dead_letter_exchange"],
        events_exchange=amqp_names["events_exchange"],
        retry_delays_ms=RETRY_DELAYS_MS,
    )


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    async with open_bridge() as opened:
        yield opened


@pytest.fixture
async def broker(bridge: Bridge, amqp_config: AmqpConfig) -> AsyncIterator[RabbitBroker]:
    async with open_rabbitmq(bridge, amqp_config) as opened:
        await opened.declare_topology()
        yield opened


def envelope(user_id: int = 1, attempts: int = 0) -> ActionEnvelope:
    return ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=user_id,
        action_type="complete_task",
        action_data={"task_id": "t-1", "completion_time": 1_764_500_000},
        nonce=uuid.uuid4().hex,
        received_at_ms=1_764_500_000_000,
        attempts=attempts,
    )


async def rabbitmqctl(config: AmqpConfig, *args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    vhost = unquote(urlsplit(config.url).path.lstrip("/"))
    done = await trio.run_process([ctl, "-q", *args, "-p", vhost], capture_stdout=True)
    return done.stdout.decode()


class Consumer:
    """`consume_actions` running in a nursery, with its deliveries at hand."""

    def __init__(
        self,
        broker: RabbitBroker,
        nursery: trio.Nursery,
        capacity: int = PREFETCH,
        prefetch: int = PREFETCH,
    ):
        self.broker = broker
        self.scope = trio.CancelScope()
        send, self.deliveries = trio.open_memory_channel[Delivery](capacity)
        nursery.start_soon(self._run, send, prefetch)

    async def _run(self, send: trio.MemorySendChannel[Delivery], prefetch: int) -> None:
        with self.scope, send:
            await self.broker.consume_actions(send, prefetch)

    async def receive(self, timeout_s: float = 10.0) -> Delivery:
        with trio.fail_after(timeout_s):
            return await self.deliveries.receive()

    async def nothing_within(self, seconds: float) -> bool:
        with trio.move_on_after(seconds):
            await self.deliveries.receive()
            return False
        return True

    def stop(self) -> None:
        self.scope.cancel()


async def test_topology_has_exactly_the_proposal_arguments(
    broker: RabbitBroker, amqp_config: AmqpConfig
) -> None:
    await broker.declare_topology()  # again: declarations are idempotent
    queues = json.loads(
        await rabbitmqctl(
            amqp_config, "list_queues", "name", "durable", "arguments", "--formatter", "json"
        )
    )
    by_name = {queue["name"]: queue for queue in queues}
    actions = by_name[amqp_config.queue]
    assert actions["durable"] is True
    # rabbitmqctl lists each argument as [name, AMQP type, value].
    assert {name: value for name, _type, value in actions["arguments"]} == {
        "x-message-ttl": 3_600_000,
        "x-dead-letter-exchange": amqp_config.dead_letter_exchange,
        "x-max-priority": 10,
    }
    assert by_name[amqp_config.failed_queue]["durable"] is True
    assert by_name[amqp_config.failed_queue]["arguments"] in ({}, [])
    exchanges = json.loads(
        await rabbitmqctl(
            amqp_config, "list_exchanges", "name", "type", "durable", "--formatter", "json"
        )
    )
    types = {e["name"]: (e["type"], e["durable"]) for e in exchanges}
    assert types[amqp_config.dead_letter_exchange] == ("direct", True)
    assert types[amqp_config.events_exchange] == ("fanout", True)
    bindings = json.loads(
        await rabbitmqctl(
            amqp_config,
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
        )
    )
    assert {
        b["routing_key"]
        for b in bindings
        if b["source_name"] == amqp_config.dead_letter_exchange
        and b["destination_name"] == amqp_config.failed_queue
    } == {"", amqp_config.queue}


async def test_declaring_with_other_arguments_is_refused(
    bridge: Bridge, broker: RabbitBroker, amqp_config: AmqpConfig
) -> None:
    other = dataclasses.replace(amqp_config, message_ttl_ms=1000)
    async with open_rabbitmq(bridge, other) as stranger:
        with pytest.raises(Exception, match="PRECONDITION_FAILED"):
            await stranger.declare_topology()
        await stranger.ping()  # the failed declaration only cost its own channel


async def test_publish_consume_ack(broker: RabbitBroker) -> None:
    sent = [envelope(user_id=n) for n in range(3)]
    for item in sent:
        await broker.publish_action(item)
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        got = [await consumer.receive() for _ in sent]
        assert [decode_envelope(d.body) for d in got] == sent
        assert [d.message_id for d in got] == [str(item.action_id) for item in sent]
        assert not any(d.redelivered for d in got)
        await broker.settle(ack=got)
        await broker.settle(ack=got)  # settled already: skipped
        consumer.stop()
    async with trio.open_nursery() as nursery:
        again = Consumer(broker, nursery)
        assert await again.nothing_within(0.5)
        again.stop()


async def test_unacked_deliveries_come_back_when_the_consumer_stops(broker: RabbitBroker) -> None:
    first, second = envelope(), envelope()
    await broker.publish_action(first)
    await broker.publish_action(second)
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        acked, dropped = await consumer.receive(), await consumer.receive()
        await broker.settle(ack=[acked])
        consumer.stop()
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        back = await consumer.receive()
        assert (decode_envelope(back.body), back.redelivered) == (second, True)
        # The old channel's tags are dead: settling them is skipped, never an error.
        await broker.settle(ack=[dropped], retry=[(dropped, second)], dead=[(dropped, "old")])
        await broker.settle(ack=[back])
        assert await consumer.nothing_within(0.5)
        consumer.stop()
    assert await broker.list_failed(10) == []


async def test_acking_many_at_once_never_settles_a_delivery_left_out(
    broker: RabbitBroker,
) -> None:
    """The acks of a batch go as one `multiple` ack where that is safe: never over a delivery
    still unsettled below them, nor over one that is being dead-lettered."""
    sent = [envelope(user_id=n) for n in range(6)]
    for item in sent:
        await broker.publish_action(item)
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        got = [await consumer.receive() for _ in sent]
        await broker.settle(ack=[got[0], got[1], got[3]], dead=[(got[4], "poison")])
        consumer.stop()
    async with trio.open_nursery() as nursery:
        again = Consumer(broker, nursery)
        back = [await again.receive() for _ in range(2)]
        assert [(decode_envelope(d.body), d.redelivered) for d in back] == [
            (sent[2], True),
            (sent[5], True),
        ]
        await broker.settle(ack=back)
        assert await again.nothing_within(0.5)
        again.stop()
    assert [decode_envelope(body) for body, _ in await broker.list_failed(10)] == [sent[4]]


async def test_a_second_consumer_stands_by_until_the_first_stops(
    bridge: Bridge, broker: RabbitBroker, amqp_config: AmqpConfig
) -> None:
    async with open_rabbitmq(bridge, amqp_config) as standby_broker, trio.open_nursery() as nursery:
        active = Consumer(broker, nursery)
        await broker.publish_action(first := envelope())
        assert decode_envelope((await active.receive()).body) == first
        standby = Consumer(standby_broker, nursery)
        await broker.publish_action(second := envelope())
        assert decode_envelope((await active.receive()).body) == second
        assert await standby.nothing_within(1.5)
        active.stop()  # without acks: both come back, to the standby
        taken_over = [await standby.receive(timeout_s=10) for _ in range(2)]
        assert [decode_envelope(d.body) for d in taken_over] == [first, second]
        assert all(d.redelivered for d in taken_over)
        await standby_broker.settle(ack=taken_over)
        standby.stop()


async def test_an_unroutable_publish_fails(broker: RabbitBroker, amqp_config: AmqpConfig) -> None:
    await rabbitmqctl(amqp_config, "delete_queue", amqp_config.queue)
    with pytest.raises(PublishFailed, match="unroutable"):
        await broker.publish_action(envelope())
    await broker.declare_topology()
    await broker.publish_action(ok := envelope())  # the channel is still usable
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        assert decode_envelope((await consumer.receive()).body) == ok
        consumer.stop()


async def test_retry_republishes_with_one_more_attempt(broker: RabbitBroker) -> None:
    await broker.publish_action(original := envelope(attempts=1))
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        delivery = await consumer.receive()
        await broker.settle(retry=[(delivery, decode_envelope(delivery.body))])
        # It waits its delay (the second, after a second attempt) before it comes again.
        assert await consumer.nothing_within(RETRY_DELAYS_MS[1] / 1000 / 2)
        again = await consumer.receive()
        assert decode_envelope(again.body) == dataclasses.replace(original, attempts=2)
        assert (again.message_id, again.redelivered) == (str(original.action_id), False)
        await broker.settle(ack=[again])
        assert await consumer.nothing_within(0.5)
        consumer.stop()


async def test_a_waiting_retry_holds_up_nothing_published_after_it(broker: RabbitBroker) -> None:
    await broker.publish_action(poison := envelope(attempts=1))
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        delivery = await consumer.receive()
        await broker.settle(retry=[(delivery, poison)])
        await broker.publish_action(fine := envelope())
        first, second = await consumer.receive(), await consumer.receive()
        assert [decode_envelope(d.body).action_id for d in (first, second)] == [
            fine.action_id,
            poison.action_id,
        ]
        await broker.settle(ack=[first, second])
        consumer.stop()


async def test_dead_letters_keep_their_reason_and_can_be_replayed(broker: RabbitBroker) -> None:
    await broker.publish_action(first := envelope(attempts=2))
    await broker.publish_action(second := envelope(attempts=2))
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        one, two = await consumer.receive(), await consumer.receive()
        await broker.settle(dead=[(one, "the store refused it"), (two, "malformed: not JSON")])
        assert await consumer.nothing_within(0.3)

        failed = [(body, reason) for body, reason in await broker.list_failed(10)]
        assert failed == [
            (encode_envelope(first), "the store refused it"),
            (encode_envelope(second), "malformed: not JSON"),
        ]
        assert await broker.list_failed(1) == failed[:1]
        assert await broker.list_failed(10) == failed  # listing takes nothing away, keeps order

        assert await broker.replay_failed(1) == 1
        replayed = await consumer.receive()
        assert decode_envelope(replayed.body) == dataclasses.replace(first, attempts=0)
        assert replayed.message_id == str(first.action_id)
        assert await broker.list_failed(10) == failed[1:]
        assert await broker.replay_failed(10) == 1
        assert decode_envelope((await consumer.receive()).body).action_id == second.action_id
        assert await broker.list_failed(10) == []
        assert await broker.replay_failed(10) == 0
        consumer.stop()


async def subscribe(broker: Broker, events: trio.MemorySendChannel[bytes]) -> None:
    """`consume_events` until cancelled, closing `events` when it ends."""
    with events:
        await broker.consume_events(events)


async def test_events_reach_every_subscriber(broker: RabbitBroker) -> None:
    async with trio.open_nursery() as nursery:
        inboxes = []
        for _ in range(2):
            send, receive = trio.open_memory_channel[bytes](100)
            nursery.start_soon(subscribe, broker, send)
            inboxes.append(receive)
        with trio.fail_after(10):
            for inbox in inboxes:
                assert await inbox.receive() == EVENTS_GAP  # subscribed
        await broker.publish_events([b"one", b"two", b"three"])
        for inbox in inboxes:
            with trio.fail_after(5):
                assert [await inbox.receive() for _ in range(3)] == [b"one", b"two", b"three"]
        nursery.cancel_scope.cancel()


async def test_a_subscription_says_it_has_started_before_any_event(broker: RabbitBroker) -> None:
    """`EVENTS_GAP` first: what was published before it may have been missed, what comes after
    it is received."""
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe, broker, send)
        with trio.fail_after(10):
            assert await receive.receive() == EVENTS_GAP
        await broker.publish_events([b"one"])
        with trio.fail_after(5):
            assert await receive.receive() == b"one"
        nursery.cancel_scope.cancel()


async def test_events_that_do_not_fit_are_dropped_counted_and_marked(broker: RabbitBroker) -> None:
    """A dropped event leaves a gap: `EVENTS_GAP` goes ahead of the next event that fits."""
    send, receive = trio.open_memory_channel[bytes](2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe, broker, send)
        with trio.fail_after(10):
            assert await receive.receive() == EVENTS_GAP  # subscribed: nothing is missed now
            await broker.publish_events([b"x"] * 7)
            while broker.statistics().dropped_events < 5:
                await trio.sleep(0.05)
        # The channel's two places hold what came first; the five after it were dropped.
        assert [receive.receive_nowait(), receive.receive_nowait()] == [b"x", b"x"]
        await broker.publish_events([b"after"])
        with trio.fail_after(5):
            assert [await receive.receive(), await receive.receive()] == [EVENTS_GAP, b"after"]
        nursery.cancel_scope.cancel()


async def test_a_full_delivery_channel_sends_deliveries_back(broker: RabbitBroker) -> None:
    sent = [envelope() for _ in range(3)]
    for item in sent:
        await broker.publish_action(item)
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery, capacity=1)  # below the prefetch: a misuse
        got: list[ActionEnvelope] = []
        while len(got) < 3:
            delivery = await consumer.receive()
            got.append(decode_envelope(delivery.body))
            await broker.settle(ack=[delivery])
        assert sorted(str(e.action_id) for e in got) == sorted(str(e.action_id) for e in sent)
        assert broker.statistics().requeued_deliveries >= 1
        consumer.stop()


async def test_a_timeout_in_the_middle_of_publishing_leaves_the_channel_usable(
    broker: RabbitBroker,
) -> None:
    for deadline in (0, 0.0005, 0.001, 0.002, 0.005):
        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(broker.publish_action, envelope())
    after = [envelope() for _ in range(50)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for item in after:
                nursery.start_soon(broker.publish_action, item)
    wanted = {item.action_id for item in after}
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        while wanted:
            delivery = await consumer.receive()
            wanted.discard(decode_envelope(delivery.body).action_id)
            await broker.settle(ack=[delivery])
        consumer.stop()


async def test_many_concurrent_publishes_pipeline(broker: RabbitBroker) -> None:
    per_task = THROUGHPUT_MESSAGES // THROUGHPUT_TASKS

    async def publisher() -> None:
        for _ in range(per_task):
            await broker.publish_action(envelope())

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(THROUGHPUT_TASKS):
            nursery.start_soon(publisher)
    publish_s = time.perf_counter() - started

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        received = 0
        while received < THROUGHPUT_MESSAGES:
            batch = [await consumer.receive()]
            while True:
                try:
                    batch.append(consumer.deliveries.receive_nowait())
                except trio.WouldBlock:
                    break
            await broker.settle(ack=batch)
            received += len(batch)
        consume_s = time.perf_counter() - started
        consumer.stop()
    print(
        f"\nconfirmed publishes: {THROUGHPUT_MESSAGES / publish_s:,.0f}/s "
        f"({THROUGHPUT_TASKS} trio tasks); consume+ack: {THROUGHPUT_MESSAGES / consume_s:,.0f}/s "
        f"(prefetch {PREFETCH}, one settle per batch)"
    )


async def test_a_batch_of_publishes_is_confirmed_together(broker: RabbitBroker) -> None:
    items = [envelope() for _ in range(BATCH_MESSAGES)]
    started = time.perf_counter()
    outcomes = await broker.publish_actions(items)
    publish_s = time.perf_counter() - started
    assert outcomes == [None] * len(items)
    wanted = {item.action_id for item in items}
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        while wanted:
            delivery = await consumer.receive()
            wanted.remove(decode_envelope(delivery.body).action_id)
            await broker.settle(ack=[delivery])
        consumer.stop()
    print(f"\none batch of {len(items)} confirmed publishes: {len(items) / publish_s:,.0f}/s")


@asynccontextmanager
async def refusing_publishes(config: AmqpConfig, queue: str) -> AsyncIterator[None]:
    """While inside, the broker nacks every publish to `queue` (a full queue that rejects)."""
    policy = f"refuse-{queue}"
    await rabbitmqctl(
        config,
        "set_policy",
        "--apply-to",
        "queues",
        policy,
        f"^{re.escape(queue)}$",
        '{"max-length": 0, "overflow": "reject-publish"}',
    )
    try:
        # The broker applies a policy asynchronously; the queue reports it once it has.
        with trio.fail_after(20):
            while policy not in await rabbitmqctl(config, "list_queues", "name", "policy"):
                await trio.sleep(0.1)
        yield
    finally:
        await rabbitmqctl(config, "clear_policy", policy)
    with trio.fail_after(20):
        while policy in await rabbitmqctl(config, "list_queues", "name", "policy"):
            await trio.sleep(0.1)


async def test_a_batch_the_queue_refuses_fails_every_envelope(
    broker: RabbitBroker, amqp_config: AmqpConfig
) -> None:
    async with refusing_publishes(amqp_config, amqp_config.queue):
        outcomes = await broker.publish_actions([envelope() for _ in range(20)])
        assert all(isinstance(outcome, PublishFailed) for outcome in outcomes), outcomes
        assert len(outcomes) == 20
    assert await broker.publish_actions([envelope()]) == [None]  # the channel is still usable


async def test_shutdown_with_consumers_running_hangs_nowhere(amqp_config: AmqpConfig) -> None:
    with trio.fail_after(15):
        async with open_bridge() as bridge, open_rabbitmq(bridge, amqp_config) as broker:
            await broker.declare_topology()
            await broker.publish_action(envelope())
            events_send, _events_receive = trio.open_memory_channel[bytes](10)
            async with trio.open_nursery() as nursery:
                consumer = Consumer(broker, nursery)
                await consumer.receive()  # held unacked through the shutdown
                nursery.start_soon(broker.consume_events, events_send)
                await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
        # Everything closed: a new connection sees the unacked message back in the queue.
        async with (
            open_bridge() as bridge,
            open_rabbitmq(bridge, amqp_config) as broker,
            trio.open_nursery() as nursery,
        ):
            consumer = Consumer(broker, nursery)
            assert (await consumer.receive()).redelivered
            consumer.stop()


# Sharded action queues: a user's actions always go to one shard queue, workers split the shards
# between them, and a worker that stops hands its shards to another.

SHARDS = 6
USERS = 60


@pytest.fixture
def sharded(amqp_config: AmqpConfig) -> AmqpConfig:
    return dataclasses.replace(amqp_config, shards=SHARDS)


@pytest.fixture
async def sharded_broker(bridge: Bridge, sharded: AmqpConfig) -> AsyncIterator[RabbitBroker]:
    async with open_rabbitmq(bridge, sharded) as opened:
        await opened.declare_topology()
        yield opened


def test_the_shard_of_a_user_is_stable_and_spread() -> None:
    assert [shard_of(user, 8) for user in (1, 2, 3, 1000)] == [
        shard_of(user, 8) for user in (1, 2, 3, 1000)
    ]
    assert shard_of(12345, 1) == 0
    spread = {shard_of(user, 8) for user in range(1, 200)}
    assert spread == set(range(8))
    with pytest.raises(ConfigError, match="shards"):
        AmqpConfig(shards=0)


async def test_shard_queues_have_a_single_active_consumer(
    sharded_broker: RabbitBroker, sharded: AmqpConfig
) -> None:
    queues = json.loads(
        await rabbitmqctl(sharded, "list_queues", "name", "arguments", "--formatter", "json")
    )
    arguments = {q["name"]: {n: v for n, _t, v in q["arguments"]} for q in queues}
    for shard in range(SHARDS):
        assert arguments[f"{sharded.queue}.{shard}"]["x-single-active-consumer"] is True
        assert arguments[f"{sharded.queue}.{shard}"]["x-queue-type"] == "classic"
    # The queue of before sharding keeps its arguments, so an upgraded deployment declares it.
    assert "x-single-active-consumer" not in arguments[sharded.queue]


async def test_each_user_stays_in_one_shard_in_order(
    sharded_broker: RabbitBroker, sharded: AmqpConfig
) -> None:
    broker = sharded_broker
    sent: dict[int, list[ActionEnvelope]] = defaultdict(list)
    for round_ in range(3):
        for user in range(1, USERS + 1):
            sent[user].append(envelope(user_id=user, attempts=round_))
    await broker.publish_actions([e for user in sent for e in sent[user]])
    received: dict[int, list[tuple[int, str]]] = defaultdict(list)
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        for _ in range(USERS * 3):
            delivery = await consumer.receive()
            decoded = decode_envelope(delivery.body)
            received[decoded.user_id].append((delivery.channel_id, str(decoded.action_id)))
            await broker.settle(ack=[delivery])
        consumer.stop()
    for user, envelopes in sent.items():
        channels = {channel for channel, _ in received[user]}
        assert len(channels) == 1, f"user {user} came through {channels}"
        assert [action for _, action in received[user]] == [str(e.action_id) for e in envelopes]


async def wait_for_split(brokers: list[RabbitBroker], shards: int) -> list[list[int]]:
    """Until the brokers hold disjoint shares covering every shard."""
    with trio.fail_after(30):  # a hang guard
        while True:
            held = [b.held_shards() for b in brokers]
            flat = [s for shares in held for s in shares]
            if sorted(flat) == list(range(shards)) and all(held):
                return held
            await trio.sleep(0.2)


async def test_two_workers_split_the_shards_and_one_takes_over_from_the_other(
    bridge: Bridge, sharded_broker: RabbitBroker, sharded: AmqpConfig
) -> None:
    broker = sharded_broker
    async with open_rabbitmq(bridge, sharded) as second, trio.open_nursery() as nursery:
        first_consumer = Consumer(broker, nursery)
        second_consumer = Consumer(second, nursery)
        split = await wait_for_split([broker, second], SHARDS)
        print("shards held by each worker:", split)
        assert all(len(share) == SHARDS // 2 for share in split)

        first_consumer.stop()
        with trio.fail_after(30):  # a hang guard
            while second.held_shards() != list(range(SHARDS)):
                await trio.sleep(0.2)
        print("after the first worker stopped:", second.held_shards())
        # Every user's actions now reach the remaining worker.
        await broker.publish_actions([envelope(user_id=user) for user in range(1, USERS + 1)])
        users = set()
        for _ in range(USERS):
            delivery = await second_consumer.receive()
            users.add(decode_envelope(delivery.body).user_id)
            await second.settle(ack=[delivery])
        assert users == set(range(1, USERS + 1))
        second_consumer.stop()


async def test_the_actions_depth_sums_the_shard_queues(sharded_broker: RabbitBroker) -> None:
    await sharded_broker.publish_actions([envelope(user_id=user) for user in range(1, 21)])
    assert await sharded_broker.queue_depths() == {"actions": 20, "failed": 0}


async def test_in_one_batch_each_envelope_gets_its_own_outcome(
    sharded_broker: RabbitBroker, sharded: AmqpConfig
) -> None:
    """One shard queue is gone (its envelopes come back unroutable), another refuses (nack);
    the envelopes of the other shards, published in the same batch, are confirmed and queued."""
    broker = sharded_broker
    gone, refusing = broker.shard_queues()[:2]
    await rabbitmqctl(sharded, "delete_queue", gone)
    items = [envelope(user_id=user) for user in range(1, USERS + 1)]
    shard_of_item = [broker.shard_queues()[shard_of(e.user_id, SHARDS)] for e in items]
    assert {gone, refusing} < set(shard_of_item)
    async with refusing_publishes(sharded, refusing):
        outcomes = await broker.publish_actions(items)
    assert len(outcomes) == len(items)
    expected = {gone: "unroutable", refusing: "nack"}
    for queue, outcome in zip(shard_of_item, outcomes, strict=True):
        if queue in expected:
            assert isinstance(outcome, PublishFailed), outcome
            assert expected[queue] in str(outcome), outcome
        else:
            assert outcome is None, outcome
    confirmed = sum(1 for queue in shard_of_item if queue not in (gone, refusing))
    await broker.declare_topology()  # the deleted shard again, empty
    assert (await broker.queue_depths())["actions"] == confirmed


@pytest.fixture
async def quorum_broker(
    bridge: Bridge, sharded: AmqpConfig
) -> AsyncIterator[tuple[RabbitBroker, AmqpConfig]]:
    quorum = dataclasses.replace(sharded, shards=2, queue_type="quorum")
    async with open_rabbitmq(bridge, quorum) as opened:
        await opened.declare_topology()
        yield opened, quorum


async def test_quorum_shard_queues_carry_actions_retries_and_dead_letters(
    quorum_broker: tuple[RabbitBroker, AmqpConfig],
) -> None:
    """`amqp.queue_type = "quorum"` (for a RabbitMQ cluster) on the one real node: the shard
    queues are quorum queues with a single active consumer and no priorities, each user's
    actions stay in one shard in order, a retry waits its delay in the delay queue and comes
    back, a dead letter reaches the failed queue with its reason, and what a stopped consumer
    left unacknowledged comes back to the next one."""
    broker, quorum = quorum_broker
    queues = json.loads(
        await rabbitmqctl(quorum, "list_queues", "name", "type", "arguments", "--formatter", "json")
    )
    by_name = {q["name"]: q for q in queues}
    for name in broker.shard_queues():
        assert by_name[name]["type"] == "quorum"
        arguments = {n: v for n, _t, v in by_name[name]["arguments"]}
        assert arguments["x-single-active-consumer"] is True
        assert "x-max-priority" not in arguments
    assert by_name[quorum.queue]["type"] == "classic"  # the queue of before sharding

    users = range(1, 21)
    sent = {user: [envelope(user_id=user, attempts=1) for _ in range(3)] for user in users}
    await broker.publish_actions([e for user in users for e in sent[user]])
    received: dict[int, list[uuid.UUID]] = defaultdict(list)
    async with trio.open_nursery() as nursery:
        consumer = Consumer(broker, nursery)
        kept: list[Delivery] = []  # the first three: to retry, to dead-letter, left unacked
        for _ in range(len(users) * 3):
            delivery = await consumer.receive()
            decoded = decode_envelope(delivery.body)
            received[decoded.user_id].append(decoded.action_id)
            if len(kept) < 3:
                kept.append(delivery)
            else:
                await broker.settle(ack=[delivery])
        assert received == {user: [e.action_id for e in sent[user]] for user in users}
        retried, dead, unacked = kept
        await broker.settle(
            retry=[(retried, decode_envelope(retried.body))], dead=[(dead, "the store refused it")]
        )
        again = await consumer.receive()
        assert decode_envelope(again.body) == dataclasses.replace(
            decode_envelope(retried.body), attempts=2
        )
        await broker.settle(ack=[again])
        assert await broker.list_failed(10) == [(dead.body, "the store refused it")]
        consumer.stop()
    async with trio.open_nursery() as nursery:
        successor = Consumer(broker, nursery)
        redelivered = await successor.receive()
        assert (redelivered.body, redelivered.redelivered) == (unacked.body, True)
        await broker.settle(ack=[redelivered])
        assert await successor.nothing_within(0.5)
        successor.stop()


async def test_a_quorum_shard_gives_what_a_stopped_worker_held_back_at_its_head(
    quorum_broker: tuple[RabbitBroker, AmqpConfig],
) -> None:
    """A user's order across a worker's death rests on where the queue puts what the worker
    held: on this RabbitMQ a quorum queue puts it back first, as a classic queue does. A
    RabbitMQ that does otherwise fails here (docs/scaling.md)."""
    broker, _quorum = quorum_broker
    sent = [envelope(user_id=1, attempts=n) for n in range(4)]
    await broker.publish_actions(sent)
    async with trio.open_nursery() as nursery:
        # One unacknowledged delivery per queue: the first action is held, the rest wait.
        worker = Consumer(broker, nursery, prefetch=len(broker.action_queues()))
        held = await worker.receive()
        assert decode_envelope(held.body) == sent[0]
        worker.stop()
    async with trio.open_nursery() as nursery:
        successor = Consumer(broker, nursery)
        order = []
        for _ in sent:
            delivery = await successor.receive()
            order.append((decode_envelope(delivery.body), delivery.redelivered))
            await broker.settle(ack=[delivery])
        successor.stop()
    assert order == [(sent[0], True), *((e, False) for e in sent[1:])]
