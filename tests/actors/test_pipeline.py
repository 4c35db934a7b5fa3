"""The worker's actors together (consumer → router → user actors → scorer → keeper) against the
real RabbitMQ, PostgreSQL and Redis: every action scored exactly once, Redis equal to Postgres,
nothing lost when the worker stops at any moment, poison dead-lettered."""

from __future__ import annotations

import contextlib
import functools
import random
import uuid
from collections.abc import Sequence

import aio_pika
import pytest
import trio

from scoreboard.records import ActionEnvelope, ActionFinished
from scoreboard.wire import encode_envelope
from tests.actors.stack import EventTap, Stack, running_worker, tap_events

pytestmark = pytest.mark.timeout(120)

T0 = 1_764_500_000_000
POINTS = 2  # collect_item: no rule makes it count once


def envelopes(user_ids: Sequence[int], per_user: int, spacing_ms: int) -> list[ActionEnvelope]:
    """`per_user` item collections for each user, `spacing_ms` apart, interleaved across users."""
    return [
        ActionEnvelope(
            action_id=uuid.uuid4(),
            user_id=user_id,
            action_type="collect_item",
            action_data={"item_id": f"item-{n}", "quantity": 1},
            nonce=uuid.uuid4().hex,
            received_at_ms=T0 + n * spacing_ms,
        )
        for n in range(per_user)
        for user_id in user_ids
    ]


async def publish(stack: Stack, items: Sequence[ActionEnvelope]) -> None:
    """As the API does: persistent, confirmed. Several publishers at once, each user's actions
    from one of them, in order."""
    publishers = 8

    async def publisher(share: Sequence[ActionEnvelope]) -> None:
        for item in share:
            await stack.broker.publish_action(item)

    async with trio.open_nursery() as nursery:
        for n in range(publishers):
            nursery.start_soon(publisher, [i for i in items if i.user_id % publishers == n])


async def publish_raw(stack: Stack, body: bytes) -> None:
    """A message that did not come from our API."""
    amqp = stack.config.amqp

    async def job() -> None:
        connection = await aio_pika.connect(amqp.url)
        async with connection:
            channel = await connection.channel()
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=amqp.queue)

    await stack.bridge.run(job)


def finished_ids(tap: EventTap) -> set[uuid.UUID]:
    return {e.action_id for e in tap.events if isinstance(e, ActionFinished)}


def _finished_at_least(tap: EventTap, count: int, _events: object) -> bool:
    return len(finished_ids(tap)) >= count


async def all_finished(
    tap: EventTap, items: Sequence[ActionEnvelope], timeout_s: float = 60
) -> None:
    wanted = {item.action_id for item in items}
    await tap.wait_for(lambda events: wanted <= finished_ids(tap), timeout_s)


async def drained(stack: Stack, timeout_s: float = 30) -> None:
    """Until every delivery is acknowledged: an outcome is published before its delivery is
    acknowledged, so the last outcomes can arrive while the last acks are still on their way."""
    with trio.fail_after(timeout_s):
        while await stack.queue_depth():
            await trio.sleep(0.1)


async def assert_scored_exactly_once(stack: Stack, items: Sequence[ActionEnvelope]) -> None:
    expected: dict[int, int] = {}
    for item in items:
        expected[item.user_id] = expected.get(item.user_id, 0) + POINTS
    scores = {entry.user_id: entry.score for entry in await stack.store.board_entries()}
    assert scores == expected
    assert await stack.store.score_discrepancies() == []
    assert await stack.board.scores() == scores
    for item in random.sample(list(items), min(50, len(items))):
        record = await stack.store.get_action(item.action_id)
        assert record is not None
        assert record.outcome.status == "completed"
    assert await stack.queue_depth() == 0


async def test_every_action_is_scored_once_and_redis_follows_postgres(stack: Stack) -> None:
    users = [await stack.new_user() for _ in range(10)]
    # 6 s apart: inside the default limits (5 s cooldown, 10 a minute), so all complete.
    items = envelopes(users, per_user=30, spacing_ms=6_000)
    await publish(stack, items)
    async with tap_events(stack.broker) as tap, running_worker(stack):
        await all_finished(tap, items)
        await drained(stack)
    await assert_scored_exactly_once(stack, items)


async def test_limits_are_judged_where_actions_are_scored(stack: Stack) -> None:
    user = await stack.new_user()
    # One a second: the 5 s cooldown lets one in five through.
    items = envelopes([user], per_user=20, spacing_ms=1_000)
    await publish(stack, items)
    async with tap_events(stack.broker) as tap, running_worker(stack):
        await all_finished(tap, items)
    outcomes = {e.action_id: e for e in tap.events if isinstance(e, ActionFinished)}
    statuses = [outcomes[item.action_id].outcome.status for item in items]
    assert statuses == ["completed", "rejected", "rejected", "rejected", "rejected"] * 4
    rejected = outcomes[items[1].action_id]
    assert (rejected.outcome.error, rejected.outcome.retry_after_s) == ("rate_limit_exceeded", 4)
    (entry,) = await stack.store.board_entries([user])
    assert entry.score == 4 * POINTS


async def test_stopping_the_worker_at_any_moment_loses_nothing_and_counts_nothing_twice(
    stack: Stack,
) -> None:
    """Deliveries are acknowledged only after their commit: stopped at any moment, every action
    is committed or still in the queue (or both), and the next worker finishes the rest, counting
    each once. (An outcome event can be lost with a stopped worker; the stored outcome is not.)"""
    fast = stack.with_config(
        limits={"enabled": False}, amqp={"prefetch": 64}, scorer={"max_batch": 32}
    )
    users = [await fast.new_user() for _ in range(20)]
    items = envelopes(users, per_user=50, spacing_ms=1)
    await publish(fast, items)
    async with tap_events(fast.broker) as tap:
        for stop_after in (100, 350, 600):
            async with running_worker(fast):
                await tap.wait_for(functools.partial(_finished_at_least, tap, stop_after))
                await trio.sleep(random.uniform(0, 0.05))
            assert await committed(fast) + await fast.queue_depth() >= len(items)
        async with running_worker(fast):
            with trio.fail_after(60):
                while await committed(fast) < len(items) or await fast.queue_depth():
                    await trio.sleep(0.1)
    await assert_scored_exactly_once(fast, items)


async def committed(stack: Stack) -> int:
    return sum(entry.score for entry in await stack.store.board_entries()) // POINTS


async def test_poison_is_dead_lettered_and_the_rest_is_scored(stack: Stack) -> None:
    user = await stack.new_user()
    items = envelopes([user], per_user=5, spacing_ms=6_000)
    stranger = envelopes([987_654_321], per_user=1, spacing_ms=1)
    await publish(stack, [*items[:2], *stranger, *items[2:]])
    await publish_raw(stack, b"this is not an action")
    async with tap_events(stack.broker) as tap, running_worker(stack):
        await all_finished(tap, items)
        with trio.fail_after(10):
            while len(failed := await stack.broker.list_failed(10)) < 2:
                await trio.sleep(0.05)
        await drained(stack)
    reasons = {body: reason for body, reason in failed}
    assert reasons[encode_envelope(stranger[0])] == "unknown user 987654321"
    assert reasons[b"this is not an action"].startswith("malformed: ")
    await assert_scored_exactly_once(stack, items)


async def test_a_crashing_user_actor_restarts_alone_and_loses_nothing(stack: Stack) -> None:
    """One user's actor crashes again and again (the supervisor's `inject_crash`) while every
    user's actions flow: only it restarts, never the router, the consumer or the other users'
    actors; what it held comes back (as an unjudged action, republished), and every action is
    scored exactly once. Attempts are raised so that no action is failed for its crashes."""
    fast = stack.with_config(
        limits={"enabled": False},
        amqp={"prefetch": 64, "max_attempts": 1000},
        scorer={"max_batch": 32},
    )
    users = [await fast.new_user() for _ in range(10)]
    victim = users[0]
    items = envelopes(users, per_user=30, spacing_ms=1)
    await publish(fast, items)
    crashes = 0
    async with tap_events(fast.broker) as tap, running_worker(fast) as worker:
        with trio.fail_after(60):
            while crashes < 5:
                with contextlib.suppress(LookupError):  # not running: waiting for its restart
                    worker.inject_crash(f"router/users/{victim}", RuntimeError("fault drill"))
                    crashes += 1
                await trio.sleep(0.05)
        await all_finished(tap, items)
        await drained(fast)
        restarts = {row.id: row.restarts for row in worker.statistics()}
    assert restarts["router/users"] == crashes
    assert restarts["router"] == restarts["consumer"] == restarts["scorer"] == 0
    await assert_scored_exactly_once(fast, items)
