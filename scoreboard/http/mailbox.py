"""A connection's latest-value mailbox: what the hub leaves for one WebSocket client (the hub's
`Subscriber`).

The hub offers frames without ever waiting; the connection's writer task takes them when the
client can accept more. Leaderboard snapshots are latest-value (a new one replaces the unsent
one, so a slow client gets the newest board, never a backlog); the user's own frames (action
results, score updates) are kept in order up to a bound, past which the client is too far behind
and the mailbox closes itself (the writer then closes the socket 1013). The bound counts frames,
however they arrive: a batch of n frames counts n, exactly as n single offers would.
"""

from __future__ import annotations

from collections import deque

import trio

from scoreboard import metrics
from scoreboard.actors.frames import Batch, Frame

PERSONAL_FRAMES_LIMIT = 64  # a few own frames a second; 64 unread means the client stopped reading
OVERFLOW = "overflow"


class Mailbox:
    __slots__ = ("_close_reason", "_personal", "_personal_limit", "_snapshot", "_wakeup")

    def __init__(self, personal_limit: int = PERSONAL_FRAMES_LIMIT) -> None:
        self._personal_limit = personal_limit
        self._personal: deque[Frame] = deque()
        self._snapshot: Frame | None = None
        # Made only while a writer waits: thousands of idle mailboxes need no event each.
        self._wakeup: trio.Event | None = None
        self._close_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def overflowed(self) -> bool:
        return self._close_reason == OVERFLOW

    def offer_snapshot(self, frame: Frame) -> None:
        """Replace the unsent snapshot, if any, with this one."""
        if self.closed:
            return
        if self._snapshot is not None:
            metrics.frames.superseded += 1
        self._snapshot = frame
        self._wake()

    def offer_personal(self, frame: Frame) -> bool:
        """Queue a frame for this client; False, and the mailbox closes, when it is behind."""
        return self.queue_personal((frame,))

    def offer_personal_batch(self, batch: Batch) -> bool:
        """Queue the batch's frames, in order; False, and the mailbox closes, when it is behind."""
        return self.queue_personal(batch.frames)

    def queue_personal(self, frames: tuple[Frame, ...]) -> bool:
        """Queue `frames` in order; past the bound (which counts frames) the mailbox closes and
        keeps none of them, as offering them one by one would end."""
        if self.closed:
            return False
        if len(self._personal) + len(frames) > self._personal_limit:
            self.close(OVERFLOW)
            return False
        self._personal.extend(frames)
        self._wake()
        return True

    def close(self, reason: str) -> None:
        """Drop what is unsent and wake the writer; no frames follow. The first reason stays."""
        if self.closed:
            return
        self._close_reason = reason
        self._personal.clear()
        self._snapshot = None
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def wait_frames(self) -> list[Frame]:
        """The pending personal frames, then the latest snapshot; waits until there is one of
        them. An empty list means the mailbox is closed."""
        if self._personal or self._snapshot is not None or self.closed:
            await trio.lowlevel.checkpoint()
        else:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
            self._wakeup = None
        return self.take_frames()

    def take_frames(self) -> list[Frame]:
        """What `wait_frames` returns, without waiting: possibly nothing."""
        frames = list(self._personal)
        self._personal.clear()
        if self._snapshot is not None:
            frames.append(self._snapshot)
            self._snapshot = None
        return frames
