"""The publisher's logic, through its inbox, with a small in-test class for the one protocol
method it calls (`publish_actions`). Against the real brokers: the adapter contract tests of
`publish_actions`, and the HTTP suites (202 only after the confirm, 503 when refused)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from scoreboard.actors import publisher
from scoreboard.actors.messages import Publish, PublisherMsg
from scoreboard.adapters.interfaces import PublishFailed, PublishOutcomeUnknown
from scoreboard.bridge import BridgeClosed
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope

INBOX = 1024


def envelope() -> ActionEnvelope:
    return ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=1,
        action_type="daily_login",
        action_data={"day": "day-1"},
        nonce=uuid.uuid4().hex,
        received_at_ms=1_764_500_000_000,
    )


@dataclass
class Outbox:
    """A broker that records each batch; it refuses the envelopes in `refused`, waits for
    `gate` (when set) before answering, and raises `outage` (when set) instead."""

    batches: list[list[ActionEnvelope]] = field(default_factory=list)
    refused: set[uuid.UUID] = field(default_factory=set)
    gate: trio.Event | None = None
    outage: Exception | None = None

    async def publish_actions(self, envelopes: Sequence[ActionEnvelope]) -> list[Exception | None]:
        self.batches.append(list(envelopes))
        await trio.lowlevel.checkpoint()
        if self.gate is not None:
            await self.gate.wait()
        if self.outage is not None:
            raise self.outage
        return [
            PublishFailed("the broker refused the message (nack)")
            if e.action_id in self.refused
            else None
            for e in envelopes
        ]

    def published(self) -> list[ActionEnvelope]:
        return [e for batch in self.batches for e in batch]


@dataclass
class Guard:
    """Records the nonces marked queued (the one guard method the publisher calls)."""

    marked: list[tuple[int, str, uuid.UUID]] = field(default_factory=list)

    async def mark_queued(self, actions: Sequence[tuple[int, str, uuid.UUID]]) -> None:
        self.marked.extend(actions)


@asynccontextmanager
async def running(
    outbox: Outbox, config: Config | None = None, guard: Guard | None = None
) -> AsyncIterator[trio.MemorySendChannel[PublisherMsg]]:
    send, receive = trio.open_memory_channel[PublisherMsg](INBOX)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: publisher.run(
                receive,
                broker=outbox,  # type: ignore[arg-type]
                guard=guard or Guard(),  # type: ignore[arg-type]
                config=config or Config(),
                task_status=task_status,
            )
        )
        yield send
        nursery.cancel_scope.cancel()


async def publish(
    inbox: trio.MemorySendChannel[PublisherMsg], item: ActionEnvelope
) -> Exception | None:
    """What a request handler does (`scoreboard/intake.py`)."""
    reply_send, reply_receive = trio.open_memory_channel[Exception | None](1)
    with reply_receive:
        await inbox.send(Publish(item, reply_send))
        return await reply_receive.receive()


async def publish_all(
    inbox: trio.MemorySendChannel[PublisherMsg], items: Sequence[ActionEnvelope]
) -> dict[uuid.UUID, Exception | None]:
    outcomes: dict[uuid.UUID, Exception | None] = {}

    async def one(item: ActionEnvelope) -> None:
        outcomes[item.action_id] = await publish(inbox, item)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    return outcomes


async def test_concurrent_publishes_go_in_few_batches() -> None:
    outbox = Outbox(gate=trio.Event())
    items = [envelope() for _ in range(600)]
    async with running(outbox) as inbox, trio.open_nursery() as nursery:
        outcomes: dict[uuid.UUID, Exception | None] = {}

        async def publish_them() -> None:
            outcomes.update(await publish_all(inbox, items))

        nursery.start_soon(publish_them)
        # Everything is waiting in the inbox or in the first (held) batch.
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.gate is not None
        outbox.gate.set()
    assert outcomes == {item.action_id: None for item in items}
    assert sorted(e.action_id for e in outbox.published()) == sorted(e.action_id for e in items)
    sizes = [len(batch) for batch in outbox.batches]
    assert max(sizes) <= publisher.MAX_BATCH
    # The first batches took what was ready when they left; the rest waited for a free slot and
    # then went in full batches.
    assert len(sizes) <= publisher.MAX_BATCHES_IN_FLIGHT + -(-len(items) // publisher.MAX_BATCH)


async def test_each_requester_gets_its_own_outcome() -> None:
    items = [envelope() for _ in range(20)]
    refused = {item.action_id for item in items[::3]}
    outbox = Outbox(refused=set(refused))
    guard = Guard()
    async with running(outbox, guard=guard) as inbox:
        outcomes = await publish_all(inbox, items)
    for item in items:
        outcome = outcomes[item.action_id]
        if item.action_id in refused:
            assert isinstance(outcome, PublishFailed)
        else:
            assert outcome is None
    # Only the confirmed ones are marked queued in the edge guard.
    assert sorted(guard.marked) == sorted(
        (e.user_id, e.nonce, e.action_id) for e in items if e.action_id not in refused
    )


async def test_a_broker_that_raises_fails_its_batch_and_the_publisher_goes_on() -> None:
    outbox = Outbox(outage=BridgeClosed("the asyncio bridge is closed"))
    async with running(outbox) as inbox:
        outcomes = await publish_all(inbox, [envelope() for _ in range(5)])
        assert all(isinstance(outcome, BridgeClosed) for outcome in outcomes.values())
        outbox.outage = None
        assert await publish(inbox, envelope()) is None


async def test_an_unconfirmed_batch_fails_after_the_publish_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(gate=trio.Event())  # never set: the broker never answers
    config = Config().replace(amqp={"publish_timeout_s": 3.0})
    async with running(outbox, config) as inbox:
        started = trio.current_time()
        outcome = await publish(inbox, envelope())
        assert isinstance(outcome, PublishOutcomeUnknown)  # the broker may queue it yet
        assert trio.current_time() - started == pytest.approx(3.0)
        outbox.gate = None
        assert await publish(inbox, envelope()) is None


async def test_a_requester_that_gave_up_does_not_hold_the_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(gate=trio.Event())
    in_flight = [envelope() for _ in range(publisher.MAX_BATCHES_IN_FLIGHT)]
    waiting, later = envelope(), envelope()
    async with running(outbox) as inbox:
        # These give up while their batches are being confirmed, taking every slot ...
        for item in in_flight:
            with trio.move_on_after(0.1):
                await publish(inbox, item)
        # ... and this one while it waits for a slot.
        with trio.move_on_after(0.1):
            await publish(inbox, waiting)
        assert outbox.gate is not None
        outbox.gate.set()
        outbox.gate = None
        with trio.fail_after(5):
            assert await publish(inbox, later) is None
    # The one still waiting was never published: its handler had given up on it.
    published = [e.action_id for e in outbox.published()]
    assert published == [item.action_id for item in (*in_flight, later)]
