"""A WebSocket's mailbox that writes into its socket at once while the kernel buffer has room.

The hub offers a frame to every connection in turn and must never wait for one. Here an offer is
one non-blocking `send` on the connection's socket: the same pre-built bytes for every client,
no task switch, no queue. A user's own frames that became ready together (a `Batch`: the results
and score updates of one turn of the hub) go in one `send` of their frames back to back, each
still a complete message. Only when the kernel's send buffer is full does a frame stay behind
(in the latest-value mailbox this class extends), and a writer task is started that sends, in
order, what remains of partly written bytes (a frame is never interleaved with another), then
the pending personal frames and the newest snapshot, back to back in one buffer, and ends once
the mailbox is empty: from then on offers go straight to the socket again. A socket that takes
nothing for the send timeout is a reader that stays behind (`SlowReader`).

Closing the mailbox (a revoked token, a client too far behind on its own frames) starts a task
that raises `MailboxClosed`, so the connection closes the socket without waiting for its reader.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from scoreboard import metrics
from scoreboard.actors.frames import Batch, Frame
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
        # What the socket took only part of (the rest of a frame, or of frames the writer joined);
        # it goes out before anything else.
        self.pending: memoryview | None = None
        # The kernel buffer was full: frames wait in the mailbox and a writer task sends them.
        self.backlogged = False

    def offer_snapshot(self, frame: Frame) -> None:
        # The hub calls this for every socket at every tick: the usual case (open, not
        # backlogged, the socket takes the whole frame) is one `send` and no further calls.
        if self._close_reason is not None:
            return
        if self.backlogged:
            Mailbox.offer_snapshot(self, frame)
            return
        wire = frame.wire
        try:
            sent = self._sock.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError:
            Mailbox.close(self, GONE)
            return
        if sent == len(wire):
            metrics.frames.sent += 1
            return
        self._start_backlog()
        if sent == 0:
            Mailbox.offer_snapshot(self, frame)
            return
        self.pending = memoryview(wire)[sent:]
        metrics.frames.sent += 1  # its rest goes out first, or the connection ends

    def offer_personal(self, frame: Frame) -> bool:
        return self._offer_personal((frame,), frame.wire)

    def offer_personal_batch(self, batch: Batch) -> bool:
        return self._offer_personal(batch.frames, batch.wire)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        super().close(reason)
        self._spawn(self._report_closed)

    def detach(self) -> None:
        """No more frames: the connection is closing the socket itself."""
        if not self.closed:
            Mailbox.close(self, DETACHED)

    def _offer_personal(self, frames: tuple[Frame, ...], wire: bytes) -> bool:
        """Send `frames` (whose bytes back to back are `wire`) with one `send`; what the socket
        does not take waits: the rest of a frame it took part of in `pending`, the frames it
        took none of in the mailbox, where they count against its bound as before."""
        if self.closed:
            return False
        if self.backlogged:
            return self.queue_personal(frames)
        sent = self._send_now(wire)
        if self.closed:
            return True  # gone: the connection's reader finds out
        if sent == len(wire):
            metrics.frames.sent += len(frames)
            return True
        whole = 0  # frames the socket took all of
        taken = 0  # their bytes
        while taken + len(frames[whole].wire) <= sent:
            taken += len(frames[whole].wire)
            whole += 1
        if sent > taken:
            self.pending = memoryview(frames[whole].wire)[sent - taken :]
            whole += 1  # its rest goes out first, or the connection ends
        metrics.frames.sent += whole
        return whole == len(frames) or self.queue_personal(frames[whole:])

    def _send_now(self, wire: bytes) -> int:
        """One non-blocking `send` of `wire`: the bytes the socket took. Less than all of them
        starts the writer task; a peer that is gone closes the mailbox (`GONE`)."""
        try:
            sent = self._sock.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError:
            Mailbox.close(self, GONE)
            return 0
        if sent < len(wire):
            self._start_backlog()
        return sent

    def _start_backlog(self) -> None:
        """The kernel buffer is full: what follows waits for the writer task."""
        self.backlogged = True
        self._spawn(self._write_backlog)

    async def _write_backlog(self) -> None:
        self._counts.backlog_started()
        try:
            while True:
                await self.flush(self._send_timeout_s)
                frames = self.take_frames()
                if not frames:
                    break
                # All that waited, back to back: one send while the socket takes it all.
                wire = frames[0].wire if len(frames) == 1 else b"".join(f.wire for f in frames)
                self.pending = memoryview(wire)
                await self.flush(self._send_timeout_s)
                metrics.frames.sent += len(frames)
        finally:
            self._counts.backlog_ended()
        self.backlogged = False

    async def flush(self, timeout_s: float) -> None:
        """Send what remains of the partly written bytes, if any (whole frames, or the rest of
        one): `SlowReader` if the socket takes none of them for `timeout_s`. Cancelled, it
        leaves `pending` exact."""
        deadline = trio.current_time() + timeout_s
        while self.pending is not None:
            with trio.move_on_at(deadline) as waited:
                await trio.lowlevel.wait_writable(self._sock)
            if waited.cancelled_caught:
                raise SlowReader
            try:
                sent = self._sock.send(self.pending)
            except BlockingIOError:
                continue
            if sent:
                deadline = trio.current_time() + timeout_s
            self.pending = self.pending[sent:] if sent < len(self.pending) else None

    async def _report_closed(self) -> None:
        await trio.lowlevel.checkpoint()
        assert self.close_reason is not None
        raise MailboxClosed(self.close_reason)
