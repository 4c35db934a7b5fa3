"""The latest-value mailbox: snapshots replace each other, personal frames queue up to a bound."""

from __future__ import annotations

import functools

import trio
import trio.testing

from scoreboard.actors.frames import Frame, outgoing
from scoreboard.http.mailbox import OVERFLOW, Mailbox


@functools.cache
def frame(text: str) -> Frame:
    """One frame per text: frames compare by identity, as the hub sends the same one to all."""
    return outgoing(text)


async def test_a_new_snapshot_replaces_the_unsent_one() -> None:
    mailbox = Mailbox()
    for n in range(100):
        mailbox.offer_snapshot(frame(f"snapshot {n}"))
    assert await mailbox.wait_frames() == [frame("snapshot 99")]


async def test_personal_frames_come_in_order_before_the_snapshot() -> None:
    mailbox = Mailbox()
    mailbox.offer_snapshot(frame("old board"))
    assert mailbox.offer_personal(frame("result 1"))
    mailbox.offer_snapshot(frame("new board"))
    assert mailbox.offer_personal(frame("result 2"))
    assert await mailbox.wait_frames() == [frame("result 1"), frame("result 2"), frame("new board")]


async def test_wait_frames_blocks_until_an_offer_and_takes_everything() -> None:
    mailbox = Mailbox()
    got: list[list[Frame]] = []

    async def writer() -> None:
        got.append(await mailbox.wait_frames())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        mailbox.offer_snapshot(frame("binary board"))
    assert got == [[frame("binary board")]]
    # Taken frames are gone; the next wait waits again.
    with trio.move_on_after(1) as scope:
        await mailbox.wait_frames()
    assert scope.cancelled_caught


async def test_a_client_too_far_behind_overflows_and_is_closed() -> None:
    mailbox = Mailbox(personal_limit=3)
    assert all(mailbox.offer_personal(frame(f"result {n}")) for n in range(3))
    assert not mailbox.overflowed
    assert not mailbox.offer_personal(frame("result 3"))
    assert mailbox.overflowed
    assert mailbox.closed
    assert mailbox.close_reason == OVERFLOW
    # The backlog is dropped: the writer closes the socket instead of sending it.
    assert await mailbox.wait_frames() == []
    assert not mailbox.offer_personal(frame("later"))


async def test_close_wakes_a_waiting_writer_and_keeps_the_first_reason() -> None:
    mailbox = Mailbox()
    got: list[list[Frame]] = []

    async def writer() -> None:
        got.append(await mailbox.wait_frames())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close("token_revoked")
        mailbox.close("overflow")
    assert got == [[]]
    assert mailbox.close_reason == "token_revoked"
    assert not mailbox.overflowed
    mailbox.offer_snapshot(frame("ignored"))
    assert await mailbox.wait_frames() == []
