"""The shapes of the actors' inbox loops, and the request-reply of their client functions.

- `receive_batch`: wait for one message, then take what else is already waiting, up to a
  bound: batches grow with the load and stay single messages when it is light (the publisher's
  confirms, the scorer's group commit);
- `receive_until`: the next message or, at a deadline, None: work on a tick besides the inbox
  (the hub's broadcasts, the keeper's board check);
- `take_waiting`: what is already waiting, without a checkpoint: an actor that handles many
  small messages takes them all at one wake-up (each receive is otherwise a trip through
  trio's run queue, which thousands of connection tasks make long);
- `reply`: answer a request without ever waiting on the requester;
- `call`: send a request that carries its own reply channel and wait for the one answer (what
  an actor's client functions do for their callers).

Each receive raises `trio.EndOfChannel` once the inbox is closed and drained, as trio's own does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")

REPLY_BUFFER = 1  # a request gets exactly one answer, which must never make the actor wait


async def receive_batch(inbox: trio.MemoryReceiveChannel[T], max_size: int) -> list[T]:
    """The next message and whatever else is waiting behind it, at most `max_size` in all."""
    batch = [await inbox.receive()]
    batch += take_waiting(inbox, max_size - 1)
    return batch


def take_waiting(inbox: trio.MemoryReceiveChannel[T], max_size: int) -> list[T]:
    """The messages already waiting, at most `max_size`, without waiting or checkpointing;
    a closed inbox gives what is left (the next receive raises `trio.EndOfChannel`)."""
    batch: list[T] = []
    while len(batch) < max_size:
        try:
            batch.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


async def receive_until(inbox: trio.MemoryReceiveChannel[T], deadline: float) -> T | None:
    """The next message, or None once `deadline` (trio's clock) has passed; a deadline already
    past wins over a waiting message, so the ticking work is never starved by a busy inbox."""
    with trio.move_on_at(deadline):
        return await inbox.receive()
    return None


def reply(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Answer a request without waiting; a requester that left, or was answered already, is
    skipped."""
    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(value)


def gone(channel: trio.MemorySendChannel[T]) -> bool:
    """The requester closed its end: it gave up (cancelled, timed out) and wants no answer."""
    return channel.statistics().open_receive_channels == 0


async def call(
    inbox: trio.MemorySendChannel[T], request: Callable[[trio.MemorySendChannel[R]], T]
) -> R:
    """Send `request(reply_channel)` to the actor and wait for its answer. A caller cancelled
    meanwhile (its timeout, its client gone) closes its end, so the actor sees it `gone`."""
    reply_send, reply_receive = trio.open_memory_channel[R](REPLY_BUFFER)
    with reply_receive:
        await inbox.send(request(reply_send))
        return await reply_receive.receive()
