"""The outbox broker: the RabbitMQ adapter's contract tests, run against it, and the embedded
counterparts of the tests that need a second connection or a broker restart."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from scoreboard.adapters.embedded_broker import EXPIRED_REASON, EmbeddedBroker
from scoreboard.adapters.interfaces import PublishFailed
from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.sqlite import database_path, open_sqlite
from scoreboard.config import AmqpConfig
from scoreboard.wire import decode_envelope, encode_envelope
from tests.adapters.test_rabbitmq import (
    RETRY_DELAYS_MS,
    Consumer,
    envelope,
    test_a_batch_of_publishes_is_confirmed_together,
    test_a_full_delivery_channel_sends_deliveries_back,
    test_a_subscription_says_it_has_started_before_any_event,
    test_a_timeout_in_the_middle_of_publishing_leaves_the_channel_usable,
    test_a_waiting_retry_holds_up_nothing_published_after_it,
    test_dead_letters_keep_their_reason_and_can_be_replayed,
    test_events_reach_every_subscriber,
    test_events_that_do_not_fit_are_dropped_counted_and_marked,
    test_many_concurrent_publishes_pipeline,
    test_publish_consume_ack,
    test_retry_republishes_with_one_more_attempt,
    test_unacked_deliveries_come_back_when_the_consumer_stops,
)

__all__ = [
    "test_a_batch_of_publishes_is_confirmed_together",
    "test_a_full_delivery_channel_sends_deliveries_back",
    "test_a_subscription_says_it_has_started_before_any_event",
    "test_a_timeout_in_the_middle_of_publishing_leaves_the_channel_usable",
    "test_a_waiting_retry_holds_up_nothing_published_after_it",
    "test_dead_letters_keep_their_reason_and_can_be_replayed",
    "test_events_reach_every_subscriber",
    "test_events_that_do_not_fit_are_dropped_counted_and_marked",
    "test_many_concurrent_publishes_pipeline",
    "test_publish_consume_ack",
    "test_retry_republishes_with_one_more_attempt",
    "test_unacked_deliveries_come_back_when_the_consumer_stops",
]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
async def broker(data_dir: Path) -> AsyncIterator[EmbeddedBroker]:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        yield EmbeddedBroker(database, AmqpConfig(retry_delays_ms=RETRY_DELAYS_MS))


async def test_a_second_consumer_stands_by_until_the_first_stops(broker: EmbeddedBroker) -> None:
    async with trio.open_nursery() as nursery:
        active = Consumer(broker, nursery)  # type: ignore[arg-type]
        await broker.publish_action(first := envelope())
        assert decode_envelope((await active.receive()).body) == first
        standby = Consumer(broker, nursery)  # type: ignore[arg-type]
        await broker.publish_action(second := envelope())
        assert decode_envelope((await active.receive()).body) == second
        assert await standby.nothing_within(0.5)
        active.stop()  # without acks: both come back, to the standby
        taken_over = [await standby.receive() for _ in range(2)]
        assert [decode_envelope(d.body) for d in taken_over] == [first, second]
        assert all(d.redelivered for d in taken_over)
        await broker.settle(ack=taken_over)
        standby.stop()


async def test_what_was_unacked_when_the_process_died_is_redelivered(data_dir: Path) -> None:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        broker = EmbeddedBroker(database, AmqpConfig())
        await broker.publish_action(held := envelope())
        await broker.publish_action(never_delivered := envelope())
        async with trio.open_nursery() as nursery:
            consumer = Consumer(broker, nursery)  # type: ignore[arg-type]
            await consumer.receive()
            await consumer.receive()
            nursery.cancel_scope.cancel()
    # The next process: the rows are still there, flagged as delivered before.
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        broker = EmbeddedBroker(database, AmqpConfig())
        async with trio.open_nursery() as nursery:
            consumer = Consumer(broker, nursery)  # type: ignore[arg-type]
            back = [await consumer.receive(), await consumer.receive()]
            assert [decode_envelope(d.body) for d in back] == [held, never_delivered]
            assert all(d.redelivered for d in back)
            await broker.settle(ack=back)
            assert await consumer.nothing_within(0.3)
            consumer.stop()


async def test_an_action_that_waited_past_the_ttl_is_dead_lettered(data_dir: Path) -> None:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        broker = EmbeddedBroker(database, AmqpConfig(message_ttl_ms=60_000))
        await broker.publish_action(stale := envelope())
        await broker.publish_action(fresh := envelope())
        connection = sqlite3.connect(database_path(data_dir))
        with connection:
            connection.execute(
                "UPDATE outbox SET published_at_ms = published_at_ms - 61000 WHERE message_id = ?",
                (str(stale.action_id),),
            )
        connection.close()
        async with trio.open_nursery() as nursery:
            consumer = Consumer(broker, nursery)  # type: ignore[arg-type]
            delivery = await consumer.receive()
            assert decode_envelope(delivery.body) == fresh
            assert await broker.list_failed(10) == [(encode_envelope(stale), EXPIRED_REASON)]
            consumer.stop()


async def test_rows_written_by_another_process_are_picked_up(
    data_dir: Path, broker: EmbeddedBroker
) -> None:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        other_process = EmbeddedBroker(database, AmqpConfig())  # e.g. `scoreboard failed replay`
        async with trio.open_nursery() as nursery:
            consumer = Consumer(broker, nursery)  # type: ignore[arg-type]
            assert await consumer.nothing_within(0.2)
            await other_process.publish_action(sent := envelope())
            assert decode_envelope((await consumer.receive(timeout_s=5)).body) == sent
            consumer.stop()


async def test_a_publish_that_cannot_be_written_fails(data_dir: Path) -> None:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        broker = EmbeddedBroker(database, AmqpConfig())
        locker = sqlite3.connect(database_path(data_dir), isolation_level=None, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            await database.read(lambda c: c.execute("PRAGMA busy_timeout = 100"))
            with pytest.raises(PublishFailed, match="locked"):
                await broker.publish_action(envelope())
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await broker.publish_action(envelope())  # usable again


async def test_a_batch_that_cannot_be_written_fails_every_envelope(data_dir: Path) -> None:
    async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
        broker = EmbeddedBroker(database, AmqpConfig())
        locker = sqlite3.connect(database_path(data_dir), isolation_level=None, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            await database.read(lambda c: c.execute("PRAGMA busy_timeout = 100"))
            outcomes = await broker.publish_actions([envelope() for _ in range(20)])
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert len(outcomes) == 20
        assert all(isinstance(outcome, PublishFailed) for outcome in outcomes), outcomes
        assert await broker.publish_actions([envelope()]) == [None]  # usable again
