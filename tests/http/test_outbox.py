"""The socket outbox on a real socket pair: a user's frames of one turn go out in one `send`, a
send the kernel takes only part of resumes exactly where it stopped, and a socket that takes
nothing for the send timeout is a slow reader."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from typing_extensions import Buffer

from scoreboard.actors.frames import Frame, batch, outgoing
from scoreboard.http.connections import ConnectionCounts
from scoreboard.http.mailbox import OVERFLOW
from scoreboard.http.outbox import GONE, MailboxClosed, SlowReader, SocketOutbox

SMALL_BUFFER = 4096


class CountingSocket(socket.socket):
    """A real socket that counts the `send` calls made on it."""

    sends = 0

    def send(self, data: Buffer, flags: int = 0, /) -> int:
        self.sends += 1
        return super().send(data, flags)


@dataclass
class Pair:
    server: CountingSocket
    client: socket.socket
    outbox: SocketOutbox
    counts: ConnectionCounts

    async def read(self, size: int) -> bytes:
        """Exactly `size` bytes from the client's end, as they come."""
        received = bytearray()
        with trio.fail_after(10):
            while len(received) < size:
                await trio.lowlevel.wait_readable(self.client)
                received += self.client.recv(65536)
        return bytes(received)


def open_pair(
    nursery: trio.Nursery, *, small_buffers: bool = False, send_timeout_s: float = 10.0
) -> Pair:
    server_end, client = socket.socketpair()
    server = CountingSocket(server_end.family, server_end.type, fileno=server_end.detach())
    if small_buffers:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    for sock in (server, client):
        sock.setblocking(False)
    counts = ConnectionCounts(max_per_user=10, max_per_address=10)
    outbox = SocketOutbox(
        server, spawn=nursery.start_soon, send_timeout_s=send_timeout_s, counts=counts
    )
    return Pair(server, client, outbox, counts)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as opened:
        yield opened
        opened.cancel_scope.cancel()


def frames(prefix: str, count: int, size: int = 40) -> list[Frame]:
    return [outgoing(f'{{"n": "{prefix}-{n:03d}-{"x" * size}"}}') for n in range(count)]


async def test_a_batch_is_one_send_of_its_frames_back_to_back(nursery: trio.Nursery) -> None:
    pair = open_pair(nursery)
    ready = batch(frames("result", 5))
    assert pair.outbox.offer_personal_batch(ready)
    assert pair.server.sends == 1
    assert await pair.read(len(ready.wire)) == b"".join(frame.wire for frame in ready.frames)
    assert not pair.outbox.backlogged


async def test_a_partial_send_resumes_exactly_where_it_stopped(nursery: trio.Nursery) -> None:
    pair = open_pair(nursery, small_buffers=True)
    # More than both kernel buffers hold: the socket takes part of it, cutting some frame.
    first = batch(frames("first", 60, size=400))
    assert pair.outbox.offer_personal_batch(first)
    assert pair.outbox.backlogged
    assert pair.server.sends == 1
    # While backlogged, what comes is queued in order behind it; the snapshot comes last.
    second = batch(frames("second", 3))
    board = outgoing('{"board": 1}')
    assert pair.outbox.offer_personal_batch(second)
    pair.outbox.offer_snapshot(board)
    expected = first.wire + second.wire + board.wire
    # The client reads now: every byte once, in order, nothing lost or duplicated.
    assert await pair.read(len(expected)) == expected
    with trio.fail_after(10):
        while pair.outbox.backlogged:
            await trio.sleep(0.01)
    # Back on direct writes, in step.
    after = batch(frames("after", 2))
    assert pair.outbox.offer_personal_batch(after)
    assert await pair.read(len(after.wire)) == after.wire


async def test_frames_the_socket_took_none_of_count_against_the_bound() -> None:
    with pytest.raises(ExceptionGroup) as raised:  # noqa: PT012
        async with trio.open_nursery() as nursery:
            pair = open_pair(nursery, small_buffers=True)
            assert pair.outbox.offer_personal_batch(batch(frames("fill", 60, size=400)))
            assert pair.outbox.backlogged
            # What waits counts frames: 65 single offers would overflow, so does one batch of 65.
            assert not pair.outbox.offer_personal_batch(batch(frames("more", 65)))
            assert pair.outbox.close_reason == OVERFLOW
    # The closed mailbox ends the connection (which closes the socket 1013).
    assert raised.group_contains(MailboxClosed)


async def test_a_socket_that_takes_nothing_for_the_timeout_is_a_slow_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ExceptionGroup) as raised:  # noqa: PT012
        async with trio.open_nursery() as nursery:
            pair = open_pair(nursery, small_buffers=True, send_timeout_s=5.0)
            assert pair.outbox.offer_personal_batch(batch(frames("fill", 60, size=400)))
            assert pair.outbox.backlogged
    assert raised.group_contains(SlowReader)


async def test_a_batch_to_a_closed_outbox_is_refused(nursery: trio.Nursery) -> None:
    pair = open_pair(nursery)
    pair.outbox.detach()
    assert not pair.outbox.offer_personal_batch(batch(frames("late", 2)))
    assert pair.server.sends == 0


async def test_a_snapshot_the_socket_takes_part_of_resumes_exactly_and_the_newest_follows(
    nursery: trio.Nursery,
) -> None:
    pair = open_pair(nursery, small_buffers=True)
    # A snapshot larger than both kernel buffers: the socket takes part of it.
    big = outgoing('{"board": "' + "x" * 60_000 + '"}')
    pair.outbox.offer_snapshot(big)
    assert pair.outbox.backlogged
    assert pair.server.sends == 1
    # While backlogged, snapshots are latest-value: the older one is never sent.
    older, newest = outgoing('{"board": 2}'), outgoing('{"board": 3}')
    pair.outbox.offer_snapshot(older)
    pair.outbox.offer_snapshot(newest)
    assert pair.server.sends == 1
    expected = big.wire + newest.wire
    assert await pair.read(len(expected)) == expected
    with trio.fail_after(10):
        while pair.outbox.backlogged:
            await trio.sleep(0.01)
    # Back on direct writes: one send per snapshot.
    sends = pair.server.sends
    pair.outbox.offer_snapshot(older)
    assert pair.server.sends == sends + 1
    assert await pair.read(len(older.wire)) == older.wire


async def test_a_snapshot_to_a_gone_peer_closes_the_outbox_and_sends_nothing_more(
    nursery: trio.Nursery,
) -> None:
    pair = open_pair(nursery)
    pair.client.close()
    pair.outbox.offer_snapshot(outgoing('{"board": 1}'))
    assert pair.outbox.close_reason == GONE
    assert not pair.outbox.backlogged
    pair.outbox.offer_snapshot(outgoing('{"board": 2}'))
    assert pair.server.sends == 1
    assert pair.outbox.take_frames() == []
