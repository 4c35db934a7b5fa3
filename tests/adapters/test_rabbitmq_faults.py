"""The RabbitMQ adapter under faults, against the real broker (the run's own vhost)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from scoreboard.adapters.interfaces import (
    EVENTS_GAP,
    BackendUnavailable,
    Delivery,
    PublishFailed,
    PublishOutcomeUnknown,
)
from scoreboard.adapters.rabbitmq import RabbitBroker, open_rabbitmq
from scoreboard.bridge import Bridge
from scoreboard.config import AmqpConfig
from scoreboard.records import ActionEnvelope
from tests.adapters.test_rabbitmq import PREFETCH, amqp_config, bridge, broker, envelope
from tests.conftest import AMQP_HOST
from tests.faultproxy import FaultProxy

__all__ = ["amqp_config", "bridge", "broker"]

pytestmark = pytest.mark.timeout(120)

BACKLOG = 3000
CANCEL_ROUNDS = 8
ANSWER_WITHIN_S = 2.0
OUTAGE_S = 3


async def test_cancelling_the_consumer_mid_subscribe_leaves_the_connection_working(
    broker: RabbitBroker,
) -> None:
    for _ in range(BACKLOG // 500):
        assert await broker.publish_actions([envelope() for _ in range(500)]) == [None] * 500
    rng = random.Random(9)
    for _ in range(CANCEL_ROUNDS):
        send, receive = trio.open_memory_channel[Delivery](PREFETCH)
        with receive:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(broker.consume_actions, send, PREFETCH)
                await trio.sleep(rng.uniform(0, 0.030))
                nursery.cancel_scope.cancel()
        with trio.fail_after(ANSWER_WITHIN_S):
            await broker.ping()
            await broker.publish_action(envelope())
    # And the backlog is still consumed.
    send, receive = trio.open_memory_channel[Delivery](PREFETCH)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.consume_actions, send, PREFETCH)
        with trio.fail_after(ANSWER_WITHIN_S * 5):
            await broker.settle(ack=[await receive.receive()])
        nursery.cancel_scope.cancel()


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> FaultProxy:
    host, _, port = AMQP_HOST.partition(":")
    fault_proxy = FaultProxy(host, int(port or 5672))
    fault_proxy.port = await nursery.start(fault_proxy.serve)
    return fault_proxy


def through(proxy: FaultProxy, config: AmqpConfig) -> AmqpConfig:
    parts = urlsplit(config.url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return dataclasses.replace(config, url=urlunsplit(parts._replace(netloc=netloc)))


async def publish_until_it_works(
    publish: Callable[[], Awaitable[object]], timeout_s: float
) -> float:
    """Seconds until `publish` is confirmed again."""
    started = trio.current_time()
    with trio.fail_after(timeout_s):
        while True:
            try:
                with trio.move_on_after(1):
                    await publish()
                    return trio.current_time() - started
            except (BackendUnavailable, PublishFailed):
                await trio.sleep(0.05)


async def test_the_connections_are_back_within_a_second_of_the_broker(
    bridge: Bridge, amqp_config: AmqpConfig, proxy: FaultProxy
) -> None:
    async with open_rabbitmq(bridge, through(proxy, amqp_config)) as broker:
        await broker.declare_topology()
        await broker.publish_action(envelope())
        proxy.cut()
        with pytest.raises((BackendUnavailable, PublishFailed)):
            await broker.publish_action(envelope())
        await trio.sleep(OUTAGE_S)
        # Each of the two connections tries again every half second while the broker is away.
        assert proxy.refused >= 2 * OUTAGE_S, proxy.refused
        proxy.restore()
        back_after_s = await publish_until_it_works(
            lambda: broker.publish_action(envelope()), timeout_s=10
        )
        print(f"\npublishing again {back_after_s:.2f} s after the broker was back")


async def test_the_watchdog_replaces_a_connection_that_went_silent(
    bridge: Bridge, amqp_config: AmqpConfig, proxy: FaultProxy
) -> None:
    async with open_rabbitmq(bridge, through(proxy, amqp_config)) as broker:
        await broker.declare_topology()
        await broker.publish_action(envelope())
        connections_before = proxy.accepted
        proxy.blackhole()  # nothing answers on the open connections, and they do not close
        back_after_s = await publish_until_it_works(
            lambda: broker.publish_action(envelope()), timeout_s=20
        )
        assert broker.statistics().watchdog_resets >= 1
        assert proxy.accepted > connections_before
        with trio.fail_after(ANSWER_WITHIN_S):
            await broker.ping()
        print(f"\npublishing again {back_after_s:.2f} s after the connections went silent")


async def test_the_events_subscription_says_when_it_has_started_again(
    bridge: Bridge, amqp_config: AmqpConfig, proxy: FaultProxy
) -> None:
    """What the keeper published while the connection was down never reaches this process:
    `EVENTS_GAP` again tells the events actor to read the board."""
    async with open_rabbitmq(bridge, through(proxy, amqp_config)) as broker:
        await broker.declare_topology()
        send, receive = trio.open_memory_channel[bytes](100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.consume_events, send)
            with trio.fail_after(10):
                assert await receive.receive() == EVENTS_GAP
            proxy.cut()
            await trio.sleep(1)
            proxy.restore()
            with trio.fail_after(10):
                assert await receive.receive() == EVENTS_GAP
            # The publishing channel comes back on its own schedule: a publish may still meet
            # the closed one.
            await publish_until_it_works(lambda: broker.publish_events([b"after"]), timeout_s=10)
            with trio.fail_after(5):
                assert await receive.receive() == b"after"
            nursery.cancel_scope.cancel()


async def test_a_consumer_stops_at_once_while_the_broker_is_away(
    bridge: Bridge, amqp_config: AmqpConfig, proxy: FaultProxy
) -> None:
    async with open_rabbitmq(bridge, through(proxy, amqp_config)) as broker:
        await broker.declare_topology()
        proxy.cut()
        send, receive = trio.open_memory_channel[Delivery](PREFETCH)
        with receive, trio.fail_after(1 + ANSWER_WITHIN_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(broker.consume_actions, send, PREFETCH)
                await trio.sleep(1)  # it waits for the connection to come back
                nursery.cancel_scope.cancel()
        proxy.restore()


IN_FLIGHT = 50


@pytest.mark.parametrize("loss", ["cut", "watchdog"])
async def test_confirms_lost_mid_batch_leave_each_outcome_unknown(
    bridge: Bridge, amqp_config: AmqpConfig, proxy: FaultProxy, loss: str
) -> None:
    """The broker queued a batch, but its confirms never come back: the link is cut, or it stays
    silent until the watchdog closes it. Every envelope of the batch is `PublishOutcomeUnknown`
    (it may be queued: it is), and publishing works again on the reopened channel afterwards."""
    async with (
        open_rabbitmq(bridge, amqp_config) as direct,
        open_rabbitmq(bridge, through(proxy, amqp_config)) as broker,
    ):
        await direct.declare_topology()
        assert await broker.publish_actions([envelope()]) == [None]
        proxy.hold_replies()  # what the app sends gets through; the confirms wait in the proxy
        outcomes: list[Exception | None] = []

        async def publish(batch: list[ActionEnvelope]) -> None:
            outcomes.extend(await broker.publish_actions(batch))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, [envelope() for _ in range(IN_FLIGHT)])
            with trio.fail_after(10):  # a hang guard: the broker has queued the whole batch
                while (await direct.queue_depths())["actions"] < 1 + IN_FLIGHT:
                    await trio.sleep(0.05)
            if loss == "cut":
                proxy.cut()
            # else the watchdog's probe stalls too (its answer is held) and it closes the link.
        assert len(outcomes) == IN_FLIGHT
        assert all(isinstance(outcome, PublishOutcomeUnknown) for outcome in outcomes), outcomes
        if loss == "watchdog":
            assert broker.statistics().watchdog_resets >= 1
        proxy.restore()
        await publish_until_it_works(lambda: broker.publish_action(envelope()), timeout_s=10)
