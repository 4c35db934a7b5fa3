"""The router: one user actor per active user, started on demand and reaped when idle.

Time is trio's (autojump_clock). A user actor shows itself through the store: each new one loads
its user's history once.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from scoreboard.actors import router
from scoreboard.actors.messages import Route, RouterMsg, Score, ScorerMsg, Unjudged
from scoreboard.actors.user import CRASHED
from scoreboard.adapters.interfaces import Delivery
from scoreboard.catalogue import load_catalogue
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, RecentAction
from scoreboard.supervisor import DynamicSupervisor
from tests.actors.scorer_side import answering_barriers, handed_over

T0 = 1_764_500_000_000
CATALOGUE = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "actions.toml")


@dataclass
class HistoryLoads:
    """The store, as far as user actors use it; counts history loads per user."""

    loads: dict[int, int] = field(default_factory=dict)
    # Users whose next load raises what no retry helps: their actor crashes.
    broken: set[int] = field(default_factory=set)

    async def recent_actions(self, user_id: int, since_ms: int) -> list[RecentAction]:
        await trio.lowlevel.checkpoint()
        self.loads[user_id] = self.loads.get(user_id, 0) + 1
        if user_id in self.broken:
            self.broken.discard(user_id)
            raise RuntimeError(f"a bug met user {user_id}'s history")
        return []


@dataclass
class Router:
    inbox: trio.MemorySendChannel[RouterMsg]
    scores: trio.MemoryReceiveChannel[ScorerMsg]
    store: HistoryLoads
    users: DynamicSupervisor
    tags: int = 0

    async def route(self, user_id: int, at_ms: int) -> None:
        self.tags += 1
        item = ActionEnvelope(
            action_id=uuid.uuid4(),
            user_id=user_id,
            action_type="collect_item",
            action_data={"item_id": f"item-{self.tags}", "quantity": 1},
            nonce=f"nonce-{self.tags:08d}",
            received_at_ms=at_ms,
        )
        await self.inbox.send(Route(item, Delivery(self.tags, 1, b"", None, False)))

    async def take(self, count: int) -> list[Score]:
        out = []
        for _ in range(count):
            out.append(await answering_barriers(self.scores))
        return out


@asynccontextmanager
async def start_router(
    scorer_buffer: int = 1000, config: Config | None = None
) -> AsyncIterator[Router]:
    inbox_send, inbox_receive = trio.open_memory_channel[RouterMsg](router.INBOX_SIZE)
    scores_send, scores_receive = trio.open_memory_channel[ScorerMsg](scorer_buffer)
    store = HistoryLoads()
    async with trio.open_nursery() as nursery:
        users = await nursery.start(
            functools.partial(
                router.run,
                inbox_receive,
                scores_send,
                store=store,  # type: ignore[arg-type]
                catalogue=CATALOGUE,
                config=config or Config(),
            )
        )
        with inbox_send:
            yield Router(inbox_send, scores_receive, store, users)


@pytest.fixture
async def running() -> AsyncIterator[Router]:
    async with start_router() as started:
        yield started


async def test_each_user_gets_one_actor_and_keeps_their_order(running: Router) -> None:
    for n in range(30):
        await running.route(user_id=1 + n % 3, at_ms=T0 + n * 10_000)
    scores = await running.take(30)
    assert running.store.loads == {1: 1, 2: 1, 3: 1}
    for user_id in (1, 2, 3):
        tags = [s.delivery.delivery_tag for s in scores if s.decision.envelope.user_id == user_id]
        assert tags == sorted(tags)
        assert len(tags) == 10


async def test_an_idle_user_actor_is_reaped_and_a_later_action_starts_a_new_one(
    running: Router, autojump_clock: trio.testing.MockClock
) -> None:
    await running.route(user_id=1, at_ms=T0)
    await running.take(1)
    await trio.sleep(router.IDLE_REAP_S / 2)
    await running.route(user_id=1, at_ms=T0 + 10_000)  # keeps the actor busy
    await running.take(1)
    await trio.sleep(router.IDLE_REAP_S - 1)
    await running.route(user_id=1, at_ms=T0 + 20_000)
    await running.take(1)
    assert running.store.loads == {1: 1}  # never idle for the whole period
    await trio.sleep(router.IDLE_REAP_S + router.REAP_EVERY_S)
    await running.route(user_id=1, at_ms=T0 + 30_000)
    await running.take(1)
    assert running.store.loads == {1: 2}  # reaped, then started again


async def test_a_busy_user_actor_is_not_reaped_however_long_it_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with start_router(scorer_buffer=0) as running:
        await running.route(user_id=1, at_ms=T0)
        # The scorer does not read: the user actor is stuck handing over its decision.
        await trio.sleep(10 * router.IDLE_REAP_S)
        await running.route(user_id=1, at_ms=T0 + 10_000)
        await running.take(2)
        assert running.store.loads == {1: 1}


async def test_only_idle_actors_are_reaped(
    running: Router, autojump_clock: trio.testing.MockClock
) -> None:
    await running.route(user_id=1, at_ms=T0)
    await running.take(1)
    for n in range(1, 20):  # user 2 acts every 5 s for 95 s, user 1 stays idle
        await running.route(user_id=2, at_ms=T0 + n * 6_000)
        await running.take(1)
        await trio.sleep(5)
    await running.route(user_id=1, at_ms=T0 + 200_000)
    await running.route(user_id=2, at_ms=T0 + 200_000)
    await running.take(2)
    assert running.store.loads == {1: 2, 2: 1}


async def test_a_crashed_user_actor_restarts_alone_and_hands_on_what_it_held(
    running: Router, autojump_clock: trio.testing.MockClock
) -> None:
    running.store.broken.add(2)
    for n in range(9):  # tags 1..9: user 2 has tags 2, 5, 8
        await running.route(user_id=1 + n % 3, at_ms=T0 + n * 10_000)
    handed = [await handed_over(running.scores) for _ in range(9)]
    # The action user 2's actor held when it crashed is neither lost nor decided: the scorer
    # gets it back to retry; the rest of that user's actions waited in its inbox.
    (unjudged,) = [h for h in handed if isinstance(h, Unjudged)]
    assert (unjudged.delivery.delivery_tag, unjudged.reason) == (2, CRASHED)
    scored = [h for h in handed if isinstance(h, Score)]
    tags = {
        u: [s.delivery.delivery_tag for s in scored if s.decision.envelope.user_id == u]
        for u in (1, 2, 3)
    }
    assert tags == {1: [1, 4, 7], 2: [5, 8], 3: [3, 6, 9]}
    # Only that actor restarted (it loaded the history again); the others and the router ran on.
    assert running.store.loads == {1: 1, 2: 2, 3: 1}
    summary = running.users.statistics()[0]
    assert (summary.children, summary.restarts) == (3, 1)
    await running.route(user_id=2, at_ms=T0 + 100_000)
    assert (await running.take(1))[0].delivery.delivery_tag == 10


async def test_when_the_consumer_goes_the_router_ends_after_its_users_drain() -> None:
    inbox_send, inbox_receive = trio.open_memory_channel[RouterMsg](router.INBOX_SIZE)
    scores_send, scores_receive = trio.open_memory_channel[ScorerMsg](1000)
    running = Router(inbox_send, scores_receive, HistoryLoads(), DynamicSupervisor("unused"))
    counted: list[int] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    router.run,
                    inbox_receive,
                    scores_send,
                    store=running.store,  # type: ignore[arg-type]
                    catalogue=CATALOGUE,
                    config=Config(),
                )
            )
            nursery.start_soon(count_until_closed, scores_receive, counted)
            for n in range(50):
                await running.route(user_id=n % 5, at_ms=T0 + n * 10_000)
            inbox_send.close()
    # Every decision made it to the scorer, and the scorer's channel closed behind the last.
    assert counted == [50]


async def count_until_closed(
    scores: trio.MemoryReceiveChannel[ScorerMsg], counted: list[int]
) -> None:
    count = 0
    with contextlib.suppress(trio.EndOfChannel):
        while True:
            await answering_barriers(scores)
            count += 1
    counted.append(count)
