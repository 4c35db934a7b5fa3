"""A WebSocket's mailbox that writes into its socket at once while the kernel buffer has room.

The hub offers a frame to every connection in turn and must never wait for one. Here an offer is
one non-blocking `send` on the connection's socket: the same pre-built bytes for every client,
no task switch, no queue. Only when the kernel's send buffer is full does the frame stay behind
(in the latest-value mailbox this class extends), and a writer task is started that sends, in
order, what remains of a partly written frame (a frame is never interleaved with another), then
the pending personal frames, then the newest snapshot, and ends once the mailbox is empty: from
then on offers go straight to the socket again. A socket that takes none of a frame for the
send timeout is a reader that stays behind (`SlowReader`).

Closing the mailbox (a revoked token, a client too far behind on its own frames) starts a task
that raises `MailboxClosed`, so the connection closes the socket without waiting for its reader.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from scoreboard import metrics
from scoreboard.actors.frames import Frame
from scoreboard.http.connections import ConnectionCounts
from scoreboard.http.mailbox import Mailbox

GONE = "gone"  # a send failed: the peer is gone, and the connection's reader finds out
DETACHED = "detached"  # the connection is ending and closes the socket itself

Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class SlowReader(Exception):
    """The socket took none of a frame for the send timeout: its reader stays behind."""


class MailboxClosed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SocketOutbox(Mailbox):
    __slots__ = ("_counts", "_send_timeout_s", "_sock", "_spawn", "backlogged", "pending")

    def __init__(
        self,
        sock: socket.socket,
        *,
        spawn: Spawn,
        send_timeout_s: float,
        counts: ConnectionCounts,
    ) -> None:
        super().__init__()
        self._sock = sock
        self._spawn = spawn
        self._send_timeout_s = send_timeout_s
        self._counts = counts
        # What remains of a frame the socket took only part of; it goes out before anything else.
        self.pending: memoryview | None = None
        # The kernel buffer was full: frames wait in the mailbox and a writer task sends them.
        self.backlogged = False

    def offer_snapshot(self, frame: Frame) -> None:
        if self.closed:
            return
        if self.backlogged or not self._write(frame):
            super().offer_snapshot(frame)

    def offer_personal(self, frame: Frame) -> bool:
        if self.closed:
            return False
        if not self.backlogged and self._write(frame):
            return True
        return super().offer_personal(frame)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        super().close(reason)
        self._spawn(self._report_closed)

    def detach(self) -> None:
        """No more frames: the connection is closing the socket itself."""
        if not self.closed:
            Mailbox.close(self, DETACHED)

    def _write(self, frame: Frame) -> bool:
        """Send `frame` now; False if the socket took none of it (the caller keeps it)."""
        try:
            sent = self._sock.send(frame.wire)
        except BlockingIOError:
            sent = 0
        except OSError:
            Mailbox.close(self, GONE)
            return True
        if sent == len(frame.wire):
            metrics.frames.sent += 1
            return True
        self.backlogged = True
        self._spawn(self._write_backlog)
        if sent:
            self.pending = memoryview(frame.wire)[sent:]
            metrics.frames.sent += 1  # its rest goes out first, or the connection ends
            return True
        return False

    async def _write_backlog(self) -> None:
        self._counts.backlog_started()
        try:
            while True:
                await self.flush(self._send_timeout_s)
                frames = self.take_frames()
                if not frames:
                    break
                for frame in frames:
                    self.pending = memoryview(frame.wire)
                    await self.flush(self._send_timeout_s)
                    metrics.frames.sent += 1
        finally:
            self._counts.backlog_ended()
        self.backlogged = False

    async def flush(self, timeout_s: float) -> None:
        """Send what remains of the partly written frame, if any: `SlowReader` if the socket
        does not take it all within `timeout_s`. Cancelled, it leaves `pending` exact."""
        if self.pending is None:
            return
        with trio.move_on_after(timeout_s):
            while self.pending is not None:
                await trio.lowlevel.wait_writable(self._sock)
                try:
                    sent = self._sock.send(self.pending)
                except BlockingIOError:
                    continue
                self.pending = self.pending[sent:] if sent < len(self.pending) else None
            return
        raise SlowReader

    async def _report_closed(self) -> None:
        await trio.lowlevel.checkpoint()
        assert self.close_reason is not None
        raise MailboxClosed(self.close_reason)
