"""The leaderboard keeper against the real PostgreSQL, Redis and RabbitMQ: results come from real
commits, the board is the Redis board, and the events are read back from the exchange."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from scoreboard.actors import keeper
from scoreboard.actors.messages import Committed, KeeperMsg
from scoreboard.records import (
    ActionEnvelope,
    ActionFinished,
    BoardEntry,
    CommitResult,
    Decision,
    LeaderboardChanged,
    Outcome,
    RankedEntry,
    ScoreChanged,
)
from tests.actors.stack import EventTap, Stack, tap_events

pytestmark = pytest.mark.timeout(90)

T0 = 1_764_500_000_000


def decision(user_id: int, delta: int, status: str = "completed") -> Decision:
    envelope = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=user_id,
        action_type="daily_login",
        action_data={"day": "2025-11-30"},
        nonce=uuid.uuid4().hex,
        received_at_ms=T0,
    )
    if status == "completed":
        return Decision(envelope, Outcome("completed", delta))
    limited = Outcome("rejected", 0, error="rate_limit_exceeded", retry_after_s=3)
    return Decision(envelope, limited)


async def scored(stack: Stack, *users_and_deltas: tuple[int, int]) -> list[CommitResult]:
    return await stack.store.commit_actions([decision(u, d) for u, d in users_and_deltas])


@asynccontextmanager
async def running_keeper(stack: Stack) -> AsyncIterator[trio.MemorySendChannel[KeeperMsg]]:
    send, receive = trio.open_memory_channel[KeeperMsg](keeper.INBOX_SIZE)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                keeper.run,
                receive,
                store=stack.store,
                board=stack.board,
                broker=stack.broker,
                config=stack.config,
            )
        )
        with send:
            yield send
        nursery.cancel_scope.cancel()


async def usernames(stack: Stack, *user_ids: int) -> list[str]:
    entries = {e.user_id: e.username for e in await stack.store.board_entries(list(user_ids))}
    return [entries[u] for u in user_ids]


def tops(tap: EventTap) -> list[list[tuple[int, int]]]:
    return [
        [(e.user_id, e.score) for e in event.entries]
        for event in tap.of(LeaderboardChanged)
        if isinstance(event, LeaderboardChanged)
    ]


async def finished(tap: EventTap, results: list[CommitResult]) -> None:
    """Wait until the keeper published the outcome of every one of `results`."""
    ids = {r.action_id for r in results}
    await tap.wait_for(
        lambda events: ids <= {e.action_id for e in events if isinstance(e, ActionFinished)}
    )


async def drained(
    stack: Stack, tap: EventTap, inbox: trio.MemorySendChannel[KeeperMsg], user_id: int
) -> None:
    """Every event of the batches sent so far has arrived: the keeper publishes batch after
    batch, so once a later batch's outcome is here, the earlier batches' events are too."""
    marker = await stack.store.commit_actions([decision(user_id, 0, status="rejected")])
    await inbox.send(Committed(tuple(marker)))
    await finished(tap, marker)


def outcomes(tap: EventTap, results: list[CommitResult]) -> list[ActionFinished]:
    ids = {r.action_id for r in results}
    return [
        e for e in tap.of(ActionFinished) if isinstance(e, ActionFinished) and e.action_id in ids
    ]


async def test_on_start_a_missing_board_is_rebuilt_and_its_top_published(stack: Stack) -> None:
    a, b, c = [await stack.new_user() for _ in range(3)]
    await scored(stack, (a, 30), (b, 20), (c, 10), (b, 5))
    async with tap_events(stack.broker) as tap, running_keeper(stack):
        await tap.wait_for(lambda events: bool(events))
        assert tops(tap) == [[(a, 30), (b, 25), (c, 10)]]
        names = await usernames(stack, a, b, c)
        top, _updated_at = await stack.board.top(10)
        assert top == [
            RankedEntry(1, a, names[0], 30),
            RankedEntry(2, b, names[1], 25),
            RankedEntry(3, c, names[2], 10),
        ]


async def test_a_batch_moves_scores_and_publishes_what_changed(stack: Stack) -> None:
    a, b, c = [await stack.new_user() for _ in range(3)]
    await scored(stack, (a, 30), (b, 20))
    async with tap_events(stack.broker) as tap, running_keeper(stack) as inbox:
        await tap.wait_for(lambda events: bool(tops(tap)))
        results = await scored(stack, (b, 15), (b, 5), (c, 1))
        await inbox.send(Committed(tuple(results)))
        await drained(stack, tap, inbox, a)
        assert tops(tap)[-1] == [(b, 40), (a, 30), (c, 1)]
        changes = {e.user_id: e for e in tap.of(ScoreChanged) if isinstance(e, ScoreChanged)}
        name_b, name_c = await usernames(stack, b, c)
        assert changes == {
            b: ScoreChanged(b, name_b, old_score=20, new_score=40, rank=1, rank_change=1),
            c: ScoreChanged(c, name_c, old_score=0, new_score=1, rank=3, rank_change=0),
        }
        published = outcomes(tap, results)
        assert [
            (e.user_id, e.outcome.status, e.outcome.score_delta, e.outcome.new_score)
            for e in published
        ] == [
            (b, "completed", 15, 35),
            (b, "completed", 5, 40),
            (c, "completed", 1, 1),
        ]
        assert await stack.board.scores() == {a: 30, b: 40, c: 1}


async def test_batches_waiting_behind_the_keeper_are_handled_as_one(stack: Stack) -> None:
    """A keeper that fell behind writes and publishes the waiting batches together: one score
    change per user from the first old score to the last new one, every outcome in order."""
    a, b = [await stack.new_user() for _ in range(2)]
    batches = [
        await scored(stack, (a, 10)),
        await scored(stack, (b, 20)),
        await scored(stack, (a, 15)),
    ]
    send, receive = trio.open_memory_channel[KeeperMsg](keeper.INBOX_SIZE)
    for results in batches:  # all waiting before the keeper reads its inbox
        send.send_nowait(Committed(tuple(results)))
    every = [result for results in batches for result in results]
    async with tap_events(stack.broker) as tap, trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                keeper.run,
                receive,
                store=stack.store,
                board=stack.board,
                broker=stack.broker,
                config=stack.config,
            )
        )
        await finished(tap, every)
        changes = [e for e in tap.of(ScoreChanged) if isinstance(e, ScoreChanged)]
        name_a, name_b = await usernames(stack, a, b)
        assert sorted(changes, key=lambda e: e.user_id) == [
            ScoreChanged(a, name_a, old_score=0, new_score=25, rank=1, rank_change=0),
            ScoreChanged(b, name_b, old_score=0, new_score=20, rank=2, rank_change=0),
        ]
        assert [e.action_id for e in outcomes(tap, every)] == [r.action_id for r in every]
        assert await stack.board.scores() == {a: 25, b: 20}
        nursery.cancel_scope.cancel()


async def test_a_rejection_is_announced_without_moving_anything(stack: Stack) -> None:
    a = await stack.new_user()
    await scored(stack, (a, 30))
    async with tap_events(stack.broker) as tap, running_keeper(stack) as inbox:
        await tap.wait_for(lambda events: bool(tops(tap)))
        results = await stack.store.commit_actions([decision(a, 0, status="rejected")])
        await inbox.send(Committed(tuple(results)))
        await drained(stack, tap, inbox, a)
        (outcome,) = outcomes(tap, results)
        assert (outcome.outcome.status, outcome.outcome.error, outcome.outcome.retry_after_s) == (
            "rejected",
            "rate_limit_exceeded",
            3,
        )
        assert tap.of(ScoreChanged) == []
        assert len(tops(tap)) == 1


async def test_the_top_is_published_only_when_it_changes(stack: Stack) -> None:
    small = stack.with_config(leaderboard={"size": 2})
    a, b, c = [await stack.new_user() for _ in range(3)]
    await scored(stack, (a, 30), (b, 20), (c, 5))
    async with tap_events(stack.broker) as tap, running_keeper(small) as inbox:
        await tap.wait_for(lambda events: bool(tops(tap)))
        below_the_top = await scored(stack, (c, 1))
        await inbox.send(Committed(tuple(below_the_top)))
        await drained(stack, tap, inbox, a)
        assert len(tap.of(ScoreChanged)) == 1
        assert len(tops(tap)) == 1
        into_the_top = await scored(stack, (c, 20))
        await inbox.send(Committed(tuple(into_the_top)))
        await drained(stack, tap, inbox, a)
        assert tops(tap) == [[(a, 30), (b, 20)], [(a, 30), (c, 26)]]
        (_, climbed) = tap.of(ScoreChanged)
        assert isinstance(climbed, ScoreChanged)
        assert (climbed.rank, climbed.rank_change) == (2, 1)


async def test_a_board_lost_from_redis_is_rebuilt_by_the_next_batch(stack: Stack) -> None:
    a, b = await stack.new_user(), await stack.new_user()
    await scored(stack, (a, 30), (b, 20))
    async with tap_events(stack.broker) as tap, running_keeper(stack) as inbox:
        await tap.wait_for(lambda events: bool(tops(tap)))
        stack.drop_board()
        results = await scored(stack, (b, 15))
        await inbox.send(Committed(tuple(results)))
        await finished(tap, results)
        assert await stack.board.scores() == {a: 30, b: 35}
        assert await stack.store.score_discrepancies() == []


async def test_a_board_lost_while_idle_is_rebuilt_by_the_periodic_check(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper, "BOARD_CHECK_EVERY_S", 0.2)
    a = await stack.new_user()
    await scored(stack, (a, 30))
    async with running_keeper(stack):
        assert await stack.board.scores() == {a: 30}
        stack.drop_board()
        with trio.fail_after(10):
            while await stack.board.scores() != {a: 30}:
                await trio.sleep(0.05)


async def test_a_redelivered_action_brings_a_stale_board_up_to_date(stack: Stack) -> None:
    """A scorer that committed and then died never told the keeper; the redelivery is a
    duplicate, and the keeper reads the user's score back from Postgres."""
    a = await stack.new_user()
    await scored(stack, (a, 30))
    async with tap_events(stack.broker) as tap, running_keeper(stack) as inbox:
        await tap.wait_for(lambda events: bool(tops(tap)))
        lost = decision(a, 10)
        await stack.store.commit_actions([lost])  # committed; the keeper never heard
        assert await stack.board.scores() == {a: 30}
        redelivered = await stack.store.commit_actions([lost])
        assert redelivered[0].duplicate
        await inbox.send(Committed(tuple(redelivered)))
        await drained(stack, tap, inbox, a)
        assert await stack.board.scores() == {a: 40}
        assert tap.of(ScoreChanged) == []  # nothing moved in this batch itself


async def test_on_start_an_existing_board_is_brought_up_to_postgres(stack: Stack) -> None:
    """A keeper that stopped holding a batch it never wrote: the next one repairs the board."""
    a, b = await stack.new_user(), await stack.new_user()
    await scored(stack, (a, 30), (b, 20))
    async with running_keeper(stack):
        assert await stack.board.scores() == {a: 30, b: 20}
    await scored(stack, (b, 15))  # committed and acknowledged; its batch died with the keeper
    async with running_keeper(stack):
        assert await stack.board.scores() == {a: 30, b: 35}


async def suspend(stack: Stack, user_id: int, suspended: bool = True) -> None:
    user = await stack.store.get_user(user_id)
    assert user is not None
    assert await stack.store.set_suspended(user.username, suspended, "test") == (user_id, True)


async def test_on_start_users_suspended_meanwhile_leave_the_board(stack: Stack) -> None:
    a, b = await stack.new_user(), await stack.new_user()
    await scored(stack, (a, 30), (b, 20))
    async with running_keeper(stack):
        assert await stack.board.scores() == {a: 30, b: 20}
    await suspend(stack, b)
    async with running_keeper(stack):
        assert await stack.board.scores() == {a: 30}
    await stack.board.remove([a])  # whatever the board holds, a rebuild leaves b out
    await stack.board.rebuild(await stack.store.board_entries())
    assert await stack.board.scores() == {a: 30}


async def test_the_keeper_follows_suspensions_and_a_late_batch_does_not_bring_one_back(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper, "BOARD_CHECK_EVERY_S", 0.05)
    a, b = await stack.new_user(), await stack.new_user()
    await scored(stack, (a, 30))
    async with tap_events(stack.broker) as tap, running_keeper(stack) as inbox:
        late = await scored(stack, (b, 20))  # committed before the suspension…
        await suspend(stack, b)
        await suspend(stack, a)
        with trio.fail_after(10):
            # Once a is off, the keeper has read the log past b's suspension too.
            while a in await stack.board.scores():
                await trio.sleep(0.05)
        await inbox.send(Committed(tuple(late)))  # …handled after it
        await drained(stack, tap, inbox, a)
        assert await stack.board.scores() == {}
        await suspend(stack, b, suspended=False)
        with trio.fail_after(10):
            while await stack.board.scores() != {b: 20}:
                await trio.sleep(0.05)


class LateReader:
    """The store as a keeper sees it when its read of every score is slow: once `late` is set,
    the read answers `older`, what Postgres held when it began, and meanwhile another worker
    rebuilt the board from a newer read (`newer`). Every other call goes to the real store."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.late: tuple[list[BoardEntry], list[BoardEntry]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stack.store, name)

    async def board_entries(self, user_ids: Sequence[int] | None = None) -> list[BoardEntry]:
        if user_ids is not None or self.late is None:
            return await self._stack.store.board_entries(user_ids)
        older, newer = self.late
        assert await self._stack.board.rebuild_if_missing(newer)
        return older


async def test_a_late_rebuild_never_overwrites_newer_scores_of_another_worker(
    stack: Stack,
) -> None:
    a, b = await stack.new_user(), await stack.new_user()
    await scored(stack, (a, 10), (b, 20))
    store = LateReader(stack)
    async with tap_events(stack.broker) as tap, trio.open_nursery() as nursery:
        inbox, keeper_inbox = trio.open_memory_channel[KeeperMsg](keeper.INBOX_SIZE)
        await nursery.start(
            functools.partial(
                keeper.run,
                keeper_inbox,
                store=store,
                board=stack.board,
                broker=stack.broker,
                config=stack.config,
            )
        )
        await tap.wait_for(lambda events: bool(tops(tap)))
        older = await stack.store.board_entries([a, b])
        await scored(stack, (a, 30))  # the other worker's commit, after this keeper's read
        newer = await stack.store.board_entries([a, b])
        store.late = (older, newer)
        stack.drop_board()
        results = await scored(stack, (b, 5))
        await inbox.send(Committed(tuple(results)))
        await finished(tap, results)
        nursery.cancel_scope.cancel()
    # The keeper's rebuild from its older read did not take a's newer 40 away.
    assert await stack.board.scores() == {a: 40, b: 25}
    assert await stack.store.score_discrepancies() == []
