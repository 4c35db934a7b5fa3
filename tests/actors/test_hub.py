"""The fan-out hub, through its inbox: coalesced snapshots, personal routing, waiters, and that
a client who never reads costs the others nothing."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import pytest
import trio
import trio.testing

from scoreboard.actors import hub
from scoreboard.actors.frames import Batch, Frame, leaderboard_data
from scoreboard.actors.messages import (
    CancelWait,
    HubMsg,
    Rebind,
    Register,
    Unregister,
    WaitForAction,
)
from scoreboard.adapters.interfaces import BackendUnavailable, Board
from scoreboard.config import Config
from scoreboard.http.mailbox import Mailbox
from scoreboard.records import (
    ActionFinished,
    LeaderboardChanged,
    Outcome,
    RankedEntry,
    ScoreChanged,
)

T0_MS = 1_764_500_000_000


class BoardTop:
    """The one Board method the hub calls: the top at start."""

    def __init__(self, entries: list[RankedEntry], updated_at_ms: int = T0_MS, fail: bool = False):
        self.entries = entries
        self.updated_at_ms = updated_at_ms
        self.fail = fail

    async def top(self, limit: int) -> tuple[list[RankedEntry], int]:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise BackendUnavailable("redis: connection refused")
        return self.entries[:limit], self.updated_at_ms


class CountingMailbox(Mailbox):
    """A mailbox that also records every snapshot offered to it."""

    def __init__(self, personal_limit: int = 64) -> None:
        super().__init__(personal_limit)
        self.snapshots: list[Frame] = []

    def offer_snapshot(self, frame: Frame) -> None:
        self.snapshots.append(frame)
        super().offer_snapshot(frame)


def board(*scores: int) -> tuple[RankedEntry, ...]:
    return tuple(
        RankedEntry(rank, 100 + rank, f"user{100 + rank}", score)
        for rank, score in enumerate(scores, 1)
    )


def finished(
    user_id: int,
    action_id: uuid.UUID | None = None,
    outcome: Outcome | None = None,
    nonce: str = "nonce-0001",
) -> ActionFinished:
    return ActionFinished(
        user_id, action_id or uuid.uuid4(), nonce, outcome or Outcome("completed", 10, 110)
    )


@dataclass
class Hub:
    inbox: trio.MemorySendChannel[HubMsg]

    async def send(self, *messages: HubMsg) -> None:
        for msg in messages:
            await self.inbox.send(msg)
        await trio.testing.wait_all_tasks_blocked()


def config(tick_s: float = 0.1) -> Config:
    return Config().replace(websocket={"min_update_interval_s": tick_s})


@asynccontextmanager
async def start_hub(top: BoardTop, tick_s: float = 0.1) -> AsyncIterator[Hub]:
    send, receive = hub.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(hub.run, receive, board=cast(Board, top), config=config(tick_s))
        )
        with send:
            yield Hub(send)


@pytest.fixture
async def running_hub() -> AsyncIterator[Hub]:
    async with start_hub(BoardTop(list(board(300, 200)))) as started:
        yield started


def decoded(frame: Frame) -> dict[str, object]:
    value = json.loads(frame.text)
    assert isinstance(value, dict)
    return value


async def test_a_registration_gets_the_current_board_at_once(running_hub: Hub) -> None:
    mailbox = Mailbox()
    await running_hub.send(Register(1, 7, mailbox))
    (frame,) = await mailbox.wait_frames()
    assert decoded(frame) == {
        "type": "leaderboard_update",
        "data": {
            "leaderboard": [
                {"rank": 1, "user_id": 101, "username": "user101", "score": 300},
                {"rank": 2, "user_id": 102, "username": "user102", "score": 200},
            ],
            "timestamp": "2025-11-30T10:53:20.000Z",
        },
    }


async def test_many_snapshots_in_one_tick_make_one_frame_per_mailbox(
    running_hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    mailboxes = [CountingMailbox() for _ in range(3)]
    await running_hub.send(*(Register(n, None, mailbox) for n, mailbox in enumerate(mailboxes)))
    await running_hub.send(LeaderboardChanged(board(400), T0_MS + 1))
    for mailbox in mailboxes:
        assert len(mailbox.snapshots) == 2  # on registration, then the first change at once
    start = trio.current_time()
    await running_hub.send(*(LeaderboardChanged(board(500 + n), T0_MS + 2 + n) for n in range(100)))
    assert trio.current_time() - start < 0.1
    for mailbox in mailboxes:
        assert len(mailbox.snapshots) == 2  # the rest wait for the tick to end
    await trio.sleep(0.1)
    await trio.testing.wait_all_tasks_blocked()
    for mailbox in mailboxes:
        assert len(mailbox.snapshots) == 3
        assert decoded(mailbox.snapshots[-1])["data"]["leaderboard"][0]["score"] == 599  # type: ignore[index]
    # The snapshot is encoded once: every mailbox gets the very same frame object.
    assert mailboxes[0].snapshots[-1] is mailboxes[1].snapshots[-1] is mailboxes[2].snapshots[-1]


async def test_a_rebound_or_re_registered_connection_gets_each_snapshot_once_and_a_gone_none(
    running_hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    rebound, re_registered, gone = CountingMailbox(), CountingMailbox(), CountingMailbox()
    await running_hub.send(
        Register(1, 7, rebound),
        Rebind(1, 8),
        Register(2, 7, CountingMailbox()),
        Register(2, 7, re_registered),  # the same connection again: the newer mailbox only
        Register(3, None, gone),
        Unregister(3),
    )
    await running_hub.send(LeaderboardChanged(board(400), T0_MS + 1))
    assert len(rebound.snapshots) == len(re_registered.snapshots) == 2
    assert len(gone.snapshots) == 1  # on registration only
    await trio.sleep(0.1)
    await running_hub.send(LeaderboardChanged(board(500), T0_MS + 2))
    assert len(rebound.snapshots) == len(re_registered.snapshots) == 3
    assert len(gone.snapshots) == 1


async def test_the_same_top_again_goes_to_nobody_twice(
    running_hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    mailbox = CountingMailbox()
    await running_hub.send(Register(1, 7, mailbox))
    await running_hub.send(LeaderboardChanged(board(500), T0_MS + 1))
    await trio.sleep(0.3)
    # Read back from Redis (its own timestamp) or published by a second keeper.
    await running_hub.send(LeaderboardChanged(board(500), T0_MS + 2))
    await trio.sleep(0.3)
    assert len(mailbox.snapshots) == 2  # the board at registration, then the change once


async def test_a_steady_stream_of_changes_goes_out_at_most_once_a_tick(
    running_hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    mailbox = CountingMailbox()
    await running_hub.send(Register(1, None, mailbox))
    start = trio.current_time()
    for n in range(100):  # one change every 30 ms for 3 s
        await running_hub.send(LeaderboardChanged(board(1000 + n), T0_MS + n))
        await trio.sleep(0.03)
    await trio.sleep(0.1)
    elapsed = trio.current_time() - start
    broadcasts = len(mailbox.snapshots) - 1
    assert elapsed / 0.1 - 2 <= broadcasts <= elapsed / 0.1 + 1
    assert decoded(mailbox.snapshots[-1])["data"]["leaderboard"][0]["score"] == 1099  # type: ignore[index]


async def test_personal_frames_go_only_to_that_users_connections(running_hub: Hub) -> None:
    alice_phone, alice_laptop, bob = Mailbox(), Mailbox(), Mailbox()
    await running_hub.send(
        Register(1, 7, alice_phone), Register(2, 7, alice_laptop), Register(3, 8, bob)
    )
    for mailbox in (alice_phone, alice_laptop, bob):
        await mailbox.wait_frames()  # the registration snapshot
    action_id = uuid.uuid4()
    await running_hub.send(
        ScoreChanged(
            user_id=7, username="alice", old_score=100, new_score=110, rank=3, rank_change=1
        ),
        finished(7, action_id),
        finished(
            7,
            outcome=Outcome(
                "rejected",
                0,
                new_score=100,
                error="rate_limit_exceeded",
                message="rate limit exceeded",
                retry_after_s=4,
            ),
        ),
    )
    for mailbox in (alice_phone, alice_laptop):
        score, result, rejected = (decoded(frame) for frame in await mailbox.wait_frames())
        assert score == {
            "type": "score_update",
            "data": {
                "user_id": 7,
                "username": "alice",
                "old_score": 100,
                "new_score": 110,
                "rank": 3,
                "rank_change": 1,
            },
        }
        assert result == {
            "type": "action_result",
            "data": {
                "action_id": str(action_id),
                "nonce": "nonce-0001",
                "status": "completed",
                "score_delta": 10,
                "new_score": 110,
                "error": None,
            },
        }
        assert rejected["data"] == {
            "action_id": rejected["data"]["action_id"],  # type: ignore[index]
            "nonce": "nonce-0001",
            "status": "rejected",
            "score_delta": 0,
            "new_score": 100,
            "error": "rate_limit_exceeded",
            "message": "rate limit exceeded",
            "retry_after": 4,
        }
    with trio.move_on_after(0.5) as nothing_for_bob:
        await bob.wait_frames()
    assert nothing_for_bob.cancelled_caught


async def test_rebind_moves_personal_frames_and_unregister_stops_everything(
    running_hub: Hub,
) -> None:
    mailbox = CountingMailbox()
    await running_hub.send(Register(1, 7, mailbox), Rebind(1, 8))
    await mailbox.wait_frames()
    await running_hub.send(finished(7), finished(8, nonce="for-eight"))
    (frame,) = await mailbox.wait_frames()
    assert decoded(frame)["data"]["nonce"] == "for-eight"  # type: ignore[index]
    await running_hub.send(Unregister(1), finished(8), LeaderboardChanged(board(1), T0_MS + 5))
    await trio.sleep(0.2)
    with trio.move_on_after(0.5) as nothing:
        await mailbox.wait_frames()
    assert nothing.cancelled_caught
    assert len(mailbox.snapshots) == 1


async def test_a_waiter_hears_the_outcome_when_it_arrives(running_hub: Hub) -> None:
    action_id = uuid.uuid4()
    reply_send, reply_receive = trio.open_memory_channel[ActionFinished](1)
    await running_hub.send(WaitForAction(action_id, reply_send), finished(9, uuid.uuid4()))
    with pytest.raises(trio.WouldBlock):
        reply_receive.receive_nowait()
    outcome = finished(9, action_id)
    await running_hub.send(outcome, CancelWait(action_id))
    assert reply_receive.receive_nowait() == outcome


async def test_a_waiter_that_comes_after_its_outcome_still_hears_it(running_hub: Hub) -> None:
    outcome = finished(9)
    await running_hub.send(outcome)
    reply_send, reply_receive = trio.open_memory_channel[ActionFinished](1)
    await running_hub.send(WaitForAction(outcome.action_id, reply_send))
    assert reply_receive.receive_nowait() == outcome


async def test_a_cancelled_waiter_hears_nothing_and_a_gone_one_is_skipped(running_hub: Hub) -> None:
    cancelled_id, gone_id = uuid.uuid4(), uuid.uuid4()
    cancelled_send, cancelled_receive = trio.open_memory_channel[ActionFinished](1)
    gone_send, gone_receive = trio.open_memory_channel[ActionFinished](1)
    await running_hub.send(WaitForAction(cancelled_id, cancelled_send), CancelWait(cancelled_id))
    await running_hub.send(WaitForAction(gone_id, gone_send))
    gone_receive.close()
    await running_hub.send(finished(9, cancelled_id), finished(9, gone_id))
    with pytest.raises(trio.WouldBlock):
        cancelled_receive.receive_nowait()


async def test_a_registration_gets_the_newest_board(running_hub: Hub) -> None:
    newest = LeaderboardChanged(board(900, 800), T0_MS + 9)
    mailbox = Mailbox()
    await running_hub.send(LeaderboardChanged(board(1), T0_MS + 1), newest, Register(1, 7, mailbox))
    (frame,) = await mailbox.wait_frames()
    assert decoded(frame)["data"] == leaderboard_data(newest.entries, newest.updated_at_ms)


async def test_a_burst_of_events_is_handled_at_one_wake_up(running_hub: Hub) -> None:
    """Everything waiting in the inbox is handled in one trip through trio's run queue, not one
    trip per message (the run queue is long with thousands of connections): counted in the
    scheduler turns this task takes while the hub works, not in time."""
    mailbox = Mailbox(personal_limit=1000)
    await running_hub.send(Register(1, 7, mailbox))
    mailbox.take_frames()
    burst = [finished(7, nonce=f"nonce-{n:04d}") for n in range(hub.HANDLED_PER_WAKEUP)]
    for event in burst:
        running_hub.inbox.send_nowait(event)
    frames: list[Frame] = []
    turns = 0
    while len(frames) < len(burst):
        await trio.lowlevel.checkpoint()
        turns += 1
        frames += mailbox.take_frames()
    assert turns <= 3
    assert [decoded(f)["data"]["nonce"] for f in frames] == [e.nonce for e in burst]  # type: ignore[index]


class BatchMailbox(Mailbox):
    """A mailbox that also records the batches of personal frames offered to it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def offer_personal_batch(self, batch: Batch) -> bool:
        self.batches.append([decoded(frame)["data"]["nonce"] for frame in batch.frames])  # type: ignore[index]
        return super().offer_personal_batch(batch)


async def test_a_users_frames_of_one_wake_up_are_offered_as_one_batch(running_hub: Hub) -> None:
    phone, laptop, other = BatchMailbox(), BatchMailbox(), BatchMailbox()
    await running_hub.send(Register(1, 7, phone), Register(2, 7, laptop), Register(3, 8, other))
    events = [finished(7 + n % 2, nonce=f"nonce-{n:04d}") for n in range(6)]
    await hub.notify_all(running_hub.inbox, events)
    await trio.testing.wait_all_tasks_blocked()
    for mailbox in (phone, laptop):
        assert mailbox.batches == [["nonce-0000", "nonce-0002", "nonce-0004"]]
    assert other.batches == [["nonce-0001", "nonce-0003", "nonce-0005"]]
    # The same bytes for every connection of the user: built once.
    phone_frames, laptop_frames = phone.take_frames(), laptop.take_frames()
    assert [frame.wire for frame in phone_frames] == [frame.wire for frame in laptop_frames]


async def test_a_registration_between_events_delivers_the_frames_before_it_first(
    running_hub: Hub,
) -> None:
    first, second = BatchMailbox(), BatchMailbox()
    await running_hub.send(Register(1, 7, first))
    for event in (finished(7, nonce="before"), Register(2, 7, second), finished(7, nonce="after")):
        running_hub.inbox.send_nowait(event)
    await trio.testing.wait_all_tasks_blocked()
    assert first.batches == [["before"], ["after"]]
    assert second.batches == [["after"]]


async def test_notify_all_keeps_the_order_and_waits_for_room_in_a_full_inbox() -> None:
    send, receive = trio.open_memory_channel[HubMsg](2)
    events = [finished(7, nonce=f"nonce-{n:04d}") for n in range(10)]
    received: list[HubMsg] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.notify_all, send, events)
        while len(received) < len(events):
            await trio.testing.wait_all_tasks_blocked()
            received.append(await receive.receive())  # one at a time: the sender must wait
    assert received == events


async def test_without_redis_the_hub_starts_empty_and_takes_the_first_event() -> None:
    async with start_hub(BoardTop([], fail=True)) as started:
        mailbox = Mailbox()
        await started.send(Register(1, 7, mailbox))
        with trio.move_on_after(0.2) as nothing:
            await mailbox.wait_frames()
        assert nothing.cancelled_caught
        await started.send(LeaderboardChanged(board(5), T0_MS))
        (frame,) = await mailbox.wait_frames()
        assert decoded(frame)["type"] == "leaderboard_update"


async def test_an_overflowing_mailbox_is_closed_and_dropped_while_the_others_carry_on(
    running_hub: Hub,
) -> None:
    stuck, reader = Mailbox(personal_limit=4), Mailbox()
    await running_hub.send(Register(1, 7, stuck), Register(2, 7, reader))
    for n in range(10):
        await running_hub.send(finished(7, nonce=f"nonce-{n:04d}"))
        assert len(await reader.wait_frames()) in (1, 2)  # + the registration snapshot, first time
    assert stuck.overflowed
    assert await stuck.wait_frames() == []


async def test_a_client_that_never_reads_does_not_delay_the_others() -> None:
    """Real time: 500 readers, one mailbox nobody drains and one that overflows on personal
    frames. Every snapshot reaches every reader, because the hub's offers are O(1) and never
    wait; the undrained mailbox holds just the newest snapshot. The latencies are printed, not
    asserted: speed is measured by the benchmarks (`python -m benchmarks.fanout`)."""
    readers = 500
    rounds = 200
    async with start_hub(BoardTop(list(board(0))), tick_s=0.0) as started:
        never_read, overflowing = CountingMailbox(), Mailbox(personal_limit=8)
        await started.send(Register(0, 6, never_read), Register(1, 7, overflowing))
        latest_seen = [-1] * readers
        target = 0
        caught_up = trio.Event()

        async def read(index: int, mailbox: Mailbox) -> None:
            while True:
                for frame in await mailbox.wait_frames():
                    data = decoded(frame)["data"]
                    latest_seen[index] = data["leaderboard"][0]["score"]  # type: ignore[index]
                if min(latest_seen) >= target:
                    caught_up.set()

        latencies = []
        async with trio.open_nursery() as nursery:
            for index in range(readers):
                mailbox = Mailbox()
                nursery.start_soon(read, index, mailbox)
                await started.inbox.send(Register(index + 2, 1000 + index, mailbox))
            for round_number in range(1, rounds + 1):
                target = round_number
                caught_up = trio.Event()
                began = time.perf_counter()
                await started.inbox.send(finished(7, nonce=f"nonce-{round_number:04d}"))
                snapshot = LeaderboardChanged(board(round_number), T0_MS + round_number)
                await started.inbox.send(snapshot)
                await caught_up.wait()
                latencies.append(time.perf_counter() - began)
            nursery.cancel_scope.cancel()
        assert overflowing.overflowed
        assert len(never_read.snapshots) == rounds + 1
        (pending,) = await never_read.wait_frames()
        assert decoded(pending)["data"]["leaderboard"][0]["score"] == rounds  # type: ignore[index]
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        median = statistics.median(latencies)
        print(
            f"{rounds} rounds to {readers} readers:",
            f"p99 {p99 * 1000:.1f} ms, median {median * 1000:.1f} ms",
        )


class SlowMailbox(CountingMailbox):
    """A mailbox whose offers take time on the hub's clock, as thousands of socket writes do;
    it notes when each snapshot reached it."""

    def __init__(self, clock: trio.testing.MockClock, offer_s: float) -> None:
        super().__init__()
        self.clock = clock
        self.offer_s = offer_s
        self.offered_at: list[float] = []

    def offer_snapshot(self, frame: Frame) -> None:
        self.clock.jump(self.offer_s)
        self.offered_at.append(trio.current_time())
        super().offer_snapshot(frame)


async def changing_board_under(
    tick_s: float, mailboxes: list[SlowMailbox], stats: hub.BroadcastStats
) -> float:
    """A hub whose board changes every 10 ms for 1 s; the time that took."""
    send, receive = hub.open_inbox()
    top = BoardTop(list(board(1)))
    run = functools.partial(
        hub.run, receive, board=cast(Board, top), config=config(tick_s), stats=stats
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        async with send:
            for n, mailbox in enumerate(mailboxes):
                await send.send(Register(n, None, mailbox))
            start = trio.current_time()
            for change in itertools.count():
                if trio.current_time() - start >= 1:
                    break
                await send.send(LeaderboardChanged(board(100 + change), T0_MS + change))
                await trio.sleep(0.01)
            elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return elapsed


def gaps(mailbox: SlowMailbox) -> list[float]:
    """Between the snapshots the mailbox got after the one on registration."""
    times = mailbox.offered_at[1:]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_the_tick_stretches_while_fan_outs_take_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """25 offers of 4 ms each: a 100 ms fan-out, so one every 133 ms from start to start (the
    fan-out three quarters of the time), however often the board changes or however short the
    configured tick."""
    stats = hub.BroadcastStats()
    mailboxes = [SlowMailbox(autojump_clock, 0.004) for _ in range(25)]
    elapsed = await changing_board_under(0.01, mailboxes, stats)
    period = 0.1 / hub.MAX_BROADCAST_SHARE
    broadcasts = len(mailboxes[0].snapshots) - 1
    assert stats.last_fanout_s == pytest.approx(0.1)
    assert stats.interval_s == pytest.approx(period)
    assert elapsed / period - 2 <= broadcasts <= elapsed / period + 1
    assert broadcasts == stats.broadcasts
    for mailbox in mailboxes:
        assert min(gaps(mailbox)) == pytest.approx(period)


async def test_no_client_gets_two_updates_within_a_tick_however_long_the_fan_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 100 ms fan-out with a 100 ms tick: the next starts a tick after this one ended, so
    the client written last waits the whole tick too."""
    stats = hub.BroadcastStats()
    mailboxes = [SlowMailbox(autojump_clock, 0.004) for _ in range(25)]
    await changing_board_under(0.1, mailboxes, stats)
    assert stats.interval_s == pytest.approx(0.2)
    for mailbox in mailboxes:
        assert min(gaps(mailbox)) >= 0.1 - 1e-9


async def test_the_tick_is_the_configured_one_while_fan_outs_are_quick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stats = hub.BroadcastStats()
    send, receive = hub.open_inbox()
    top = BoardTop(list(board(1)))
    run = functools.partial(
        hub.run, receive, board=cast(Board, top), config=config(0.1), stats=stats
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        async with send:
            await send.send(Register(1, None, Mailbox()))
            for n in range(10):
                await send.send(LeaderboardChanged(board(100 + n), T0_MS + n))
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert stats.interval_s == pytest.approx(0.1)
    assert stats.broadcasts >= 9


async def test_an_outcome_is_logged_with_its_action_id_at_debug(
    running_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="scoreboard.actors.hub")
    outcome = finished(7)
    await running_hub.send(outcome)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("action ")]
    assert record.__dict__["action_id"] == str(outcome.action_id)
