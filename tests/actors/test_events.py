"""The API side against the real RabbitMQ and Redis: the events actor's subscription feeding the
hub, and from there a connection's mailbox."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from scoreboard.actors import events, hub
from scoreboard.actors.messages import HubMsg
from scoreboard.actors.revocations import DenyList
from scoreboard.http.mailbox import Mailbox
from scoreboard.records import (
    ActionFinished,
    BoardEntry,
    Event,
    LeaderboardChanged,
    Outcome,
    RankedEntry,
    ScoreChanged,
    TokensRevoked,
)
from scoreboard.wire import decode_events, encode_event, encode_events
from tests.actors.stack import Stack

pytestmark = pytest.mark.timeout(60)


def outcome(user_id: int) -> ActionFinished:
    return ActionFinished(
        user_id=user_id,
        action_id=uuid.uuid4(),
        nonce="nonce-00000001",
        outcome=Outcome("completed", 10, 110),
    )


PROBE_MS = -1  # the updated_at_ms of the probe events that show the actor is subscribed


async def subscribed(stack: Stack, received: trio.MemoryReceiveChannel[HubMsg]) -> None:
    """Publish probes until one comes through: from then on nothing published is missed."""
    probe = encode_event(LeaderboardChanged((), PROBE_MS))
    with trio.fail_after(10):
        while True:
            await stack.broker.publish_events([probe])
            with trio.move_on_after(0.1):
                while not is_probe(await received.receive()):
                    pass
                return


def is_probe(msg: HubMsg) -> bool:
    return isinstance(msg, LeaderboardChanged) and msg.updated_at_ms == PROBE_MS


async def next_event(received: trio.MemoryReceiveChannel[HubMsg]) -> HubMsg:
    """The next message that is not a late probe."""
    while is_probe(msg := await received.receive()):
        pass
    return msg


@asynccontextmanager
async def running_events(stack: Stack) -> AsyncIterator[trio.MemoryReceiveChannel[HubMsg]]:
    send, receive = hub.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(start_events(stack, send))
        await subscribed(stack, receive)
        yield receive
        nursery.cancel_scope.cancel()


def start_events(stack: Stack, hub_send: trio.MemorySendChannel[HubMsg]) -> functools.partial[Any]:
    return functools.partial(
        events.run,
        hub_send,
        broker=stack.broker,
        deny_list=DenyList(hub_send),
        board=stack.board,
        board_size=stack.config.leaderboard.size,
    )


async def test_events_reach_the_hub_decoded_and_garbage_is_dropped(stack: Stack) -> None:
    published: list[Event] = [
        LeaderboardChanged((RankedEntry(1, 7, "alice", 110),), 1_764_500_000_000),
        ScoreChanged(7, "alice", old_score=100, new_score=110, rank=1, rank_change=2),
        outcome(7),
    ]
    async with running_events(stack) as received:
        await stack.broker.publish_events([b"not an event", b'{"v": 1, "kind": "gossip"}'])
        for event in published:
            await stack.broker.publish_events([encode_event(event)])
        with trio.fail_after(10):
            got = [await next_event(received) for _ in published]
        assert got == published


async def test_a_batch_of_events_in_one_message_reaches_the_hub_in_order(stack: Stack) -> None:
    published: list[Event] = [
        ScoreChanged(7, "alice", old_score=100, new_score=110, rank=1, rank_change=0),
        LeaderboardChanged((RankedEntry(1, 7, "alice", 110),), 1_764_500_000_000),
        outcome(7),
        outcome(8),
    ]
    assert decode_events(encode_events(published)) == published
    async with running_events(stack) as received:
        # A batch with one malformed event is dropped whole, and nothing else is held up.
        spoiled = json.loads(encode_events(published[:1]))
        spoiled["events"].append({"kind": "score", "user_id": "seven"})
        await stack.broker.publish_events([json.dumps(spoiled).encode()])
        await stack.broker.publish_events([encode_events(published)])
        with trio.fail_after(10):
            got = [await next_event(received) for _ in published]
        assert got == published


async def test_events_waiting_together_reach_the_hub_in_order_around_a_revocation(
    stack: Stack,
) -> None:
    """Messages that wait together are forwarded in one go; a revocation among them still goes
    through the deny-list (which tells the hub) exactly where it stood."""
    revoked = TokensRevoked(("grant-1",), (), 1_764_500_000_000)
    first: list[Event] = [
        ScoreChanged(7, "alice", old_score=100, new_score=110, rank=1, rank_change=0),
        revoked,
        outcome(7),
    ]
    second: list[Event] = [outcome(8), outcome(9)]
    async with running_events(stack) as received:
        await stack.broker.publish_events(
            [encode_events(first), b"not an event", encode_events(second)]
        )
        with trio.fail_after(10):
            got = [await next_event(received) for _ in range(5)]
        assert got == [first[0], revoked, first[2], *second]


async def test_an_outcome_from_the_worker_reaches_the_users_connection(stack: Stack) -> None:
    await stack.board.rebuild([])  # as a keeper's start does: an empty board, but a built one
    hub_send, hub_receive = hub.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(hub.run, hub_receive, board=stack.board, config=stack.config)
        )
        await nursery.start(start_events(stack, hub_send.clone()))
        mailbox = Mailbox()
        await hub.register(hub_send, 1, 7, mailbox)
        (first,) = await mailbox.wait_frames()
        assert json.loads(first.text)["data"]["leaderboard"] == []  # the empty board, from Redis
        result = outcome(7)
        with trio.fail_after(10):
            while True:  # until the subscription is up, a published outcome can miss it
                await stack.broker.publish_events([encode_event(result)])
                with trio.move_on_after(0.2):
                    # The subscription's resync may send the same board again first.
                    frames = [json.loads(frame.text) for frame in await mailbox.wait_frames()]
                    if results := [f for f in frames if f["type"] == "action_result"]:
                        break
        assert results[0]["data"]["action_id"] == str(result.action_id)
        nursery.cancel_scope.cancel()


def entries(*scores: int) -> list[BoardEntry]:
    return [
        BoardEntry(100 + n, f"user{100 + n}", score, 1_764_500_000_000 + n)
        for n, score in enumerate(scores)
    ]


async def next_board(received: trio.MemoryReceiveChannel[HubMsg]) -> LeaderboardChanged:
    while not isinstance(msg := await received.receive(), LeaderboardChanged):
        pass
    return msg


async def test_a_subscription_hands_the_hub_the_board_it_may_have_missed(stack: Stack) -> None:
    """A change the keeper published before this process subscribed (or while the broker was
    away) reaches the hub all the same: the board as Redis holds it, with no event."""
    await stack.board.rebuild(entries(30, 20))
    send, receive = hub.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(start_events(stack, send))
        with trio.fail_after(10):
            board = await next_board(receive)
        assert [(e.user_id, e.score) for e in board.entries] == [(100, 30), (101, 20)]
        nursery.cancel_scope.cancel()


async def test_the_board_is_read_again_until_redis_has_it(stack: Stack) -> None:
    stack.drop_board()
    send, receive = hub.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(start_events(stack, send))
        with trio.move_on_after(1):
            await next_board(receive)
            raise AssertionError("a board before there was one")
        await stack.board.rebuild(entries(5))
        with trio.fail_after(events.RESYNC_BACKOFF.maximum + 5):
            board = await next_board(receive)
        assert [(e.user_id, e.score) for e in board.entries] == [(100, 5)]
        nursery.cancel_scope.cancel()


async def test_an_event_after_the_subscription_makes_the_read_unneeded(stack: Stack) -> None:
    """The event came through the subscription, so it is at least as new as any read: a read
    that answered later (here a board that appears afterwards) is not handed over."""
    stack.drop_board()
    send, receive = hub.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(start_events(stack, send))
        await subscribed(stack, receive)  # a leaderboard event came through
        await stack.board.rebuild(entries(99))
        with trio.move_on_after(events.RESYNC_BACKOFF.maximum + 1):
            while True:
                msg = await receive.receive()
                assert not isinstance(msg, LeaderboardChanged) or is_probe(msg), msg
        nursery.cancel_scope.cancel()
