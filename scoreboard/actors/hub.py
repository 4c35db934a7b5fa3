"""The fan-out hub: one per API process, between the events exchange and every WebSocket.

It owns the connection registry and never waits for a connection: each connection registers a
`Subscriber` (its latest-value mailbox, `http/mailbox.py`) whose offers return at once (a
socket's mailbox writes the frame straight into the socket when its kernel buffer has room). A
leaderboard snapshot is encoded once, JSON and WebSocket framing, and the same frame is offered
to every mailbox, at most once per tick: the newest snapshot of a tick replaces the older ones.
A tick is `websocket.min_update_interval_s` from the end of a fan-out to the start of the next
(so no client gets two updates within a tick), stretched while fan-outs take long: a fan-out may
take at most `MAX_BROADCAST_SHARE` of the time, counted from one start to the next, so with many
sockets every client gets fewer updates instead of the process falling behind on everything
else. A user's own frames (score
updates, action results) go to that user's connections only, and action results also to HTTP
requests waiting for them (`Prefer: wait=N`). The user's frames of one wake-up (the results and
score updates of a committed batch, handed over with `notify_all`) are delivered together at its
end, in order and back to back, so each connection gets them with one `send`; any other message
(a registration, a revocation) first delivers those before it. A revoked grant or access token
(`TokensRevoked`) closes the connections authenticated with it: their writers send
`token_revoked` and close 4401.

Connections and requests use the client functions (`register`, `unregister`, `rebind`,
`waiting_for`); the events actor and the deny-list hand it events with `notify_all` and `notify`.
A hub that starts without the board (Redis down, or no keeper has rebuilt it yet) gets it from
the events actor, which reads the board whenever its subscription starts (again).
The hub handles every message already waiting at one wake-up (up to `HANDLED_PER_WAKEUP`): with
thousands of connection tasks in trio's run queue, one message per trip through it left the
events of a busy second hundreds of milliseconds behind.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import assert_never

import trio

from scoreboard import clock, metrics
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.frames import (
    Frame,
    action_result_frame,
    batch,
    leaderboard_frame,
    outgoing,
    score_update_frame,
)
from scoreboard.actors.messages import (
    CancelWait,
    HubMsg,
    Rebind,
    Register,
    Subscriber,
    Unregister,
    WaitForAction,
)
from scoreboard.adapters.interfaces import BackendUnavailable, Board
from scoreboard.config import Config
from scoreboard.records import (
    ActionFinished,
    Event,
    LeaderboardChanged,
    ScoreChanged,
    TokensRevoked,
)

log = logging.getLogger(__name__)

INBOX_SIZE = 4096  # events, registrations and waiters of every connection; it drains fast
TOKEN_REVOKED = "token_revoked"  # why the hub closes a subscriber whose token was revoked
# A leaving connection or request tells the hub, even when cancelled; a hub that is down (and
# restarts empty) holds it no longer than this.
LEAVE_TIMEOUT_S = 2.0
RECENT_RESULTS = 4096  # outcomes kept so a waiter that arrives after its outcome still gets it
BOARD_READ_TIMEOUT_S = 5.0
# Messages handled at one wake-up: each receive would otherwise wait a whole trip through trio's
# run queue, long with thousands of connections, and the events of a busy second pile up behind
# it. Bounded so that a burst does not hold the run queue much longer than a fan-out does: each
# of a user's own frames goes to all of that user's connections (dozens when a load test signs
# many sockets in as one player), and at a few hundred events a second per process a turn of the
# run queue rarely finds more than this waiting.
HANDLED_PER_WAKEUP = 64
# Of the process's time a fan-out may take (wall time: a process starved of CPU is behind too);
# beyond it the tick stretches, leaving the rest to reading clients and serving HTTP.
MAX_BROADCAST_SHARE = 0.75


HubHandle = trio.MemorySendChannel[HubMsg]
"""How connections, requests and the events actor reach the hub: the sending end of its inbox."""


def open_inbox() -> tuple[HubHandle, trio.MemoryReceiveChannel[HubMsg]]:
    """The hub's inbox: the handle its clients use, and the end the hub reads."""
    return trio.open_memory_channel[HubMsg](INBOX_SIZE)


async def register(
    hub: HubHandle,
    connection_id: int,
    user_id: int | None,
    subscriber: Subscriber,
    *,
    grant_id: str | None = None,
    jti: str | None = None,
) -> None:
    """Send `subscriber` the leaderboard from now on (at once the current one), and `user_id`'s
    own frames; close it when the token's grant or jti is revoked."""
    await hub.send(Register(connection_id, user_id, subscriber, grant_id, jti))


async def rebind(
    hub: HubHandle,
    connection_id: int,
    user_id: int | None,
    *,
    grant_id: str | None = None,
    jti: str | None = None,
) -> None:
    """The connection re-authenticated: its frames follow `user_id`, its revocation the new
    token's grant and jti."""
    await hub.send(Rebind(connection_id, user_id, grant_id, jti))


async def unregister(hub: HubHandle, connection_id: int) -> None:
    """Forget the connection; done even while the caller is being cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT_S):
        await hub.send(Unregister(connection_id))


async def notify(hub: HubHandle, event: Event) -> None:
    """An event from the worker (or this process's revocation) for the connections."""
    await hub.send(event)


async def notify_all(hub: HubHandle, events: Iterable[Event]) -> None:
    """`notify` each of `events` in order, with one checkpoint for all of them while the inbox
    has room: a checkpoint per event is a trip through trio's run queue each, and a committed
    batch holds an outcome per action."""
    for event in events:
        try:
            hub.send_nowait(event)
        except trio.WouldBlock:
            await hub.send(event)
    await trio.lowlevel.checkpoint()


@dataclass(frozen=True, slots=True)
class AwaitedOutcome:
    """The outcome `waiting_for` waits for."""

    _reply: trio.MemoryReceiveChannel[ActionFinished]

    async def wait(self) -> ActionFinished:
        """Once the worker has decided the action (bound it at the call site)."""
        return await self._reply.receive()


@asynccontextmanager
async def waiting_for(hub: HubHandle, action_id: uuid.UUID) -> AsyncIterator[AwaitedOutcome]:
    """Within the block, `await outcome.wait()` returns the action's outcome once it is decided,
    or at once if the hub saw it recently; enter it before the action can be decided."""
    reply_send, reply_receive = trio.open_memory_channel[ActionFinished](inboxes.REPLY_BUFFER)
    with reply_receive:
        await hub.send(WaitForAction(action_id, reply_send))
        try:
            yield AwaitedOutcome(reply_receive)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT_S):
                await hub.send(CancelWait(action_id))


@dataclass
class BroadcastStats:
    """What the hub reports about its fan-outs (read by /metrics)."""

    broadcasts: int = 0
    last_fanout_s: float = 0.0
    interval_s: float = 0.0


def _about(action_id: uuid.UUID) -> dict[str, str]:
    """The log record's action id (`scoreboard/logs.py`)."""
    return {"action_id": str(action_id)}


class _Hub:
    def __init__(
        self, tick_s: float, latest: LeaderboardChanged | None, stats: BroadcastStats
    ) -> None:
        self.tick_s = tick_s
        self.stats = stats
        stats.interval_s = tick_s
        self.connections: dict[int, tuple[int | None, Subscriber]] = {}
        # Each connection's `offer_snapshot`, bound once at registration: the fan-out calls it
        # for every socket at every tick, and looks nothing else up.
        self.snapshot_offers: dict[int, Callable[[Frame], None]] = {}
        self.by_user: dict[int, dict[int, Subscriber]] = {}
        # Each connection's token: (grant_id, jti).
        self.credentials: dict[int, tuple[str | None, str | None]] = {}
        self.latest = latest
        self.latest_frame: Frame | None = None
        self.unsent = False
        self.next_broadcast_at = -math.inf
        self.waiters: dict[uuid.UUID, list[trio.MemorySendChannel[ActionFinished]]] = {}
        self.recent: OrderedDict[uuid.UUID, ActionFinished] = OrderedDict()
        # Each user's own frames of this turn, in order, delivered together at its end.
        self.personal: dict[int, list[Frame]] = {}

    def broadcast_due_at(self) -> float:
        return self.next_broadcast_at if self.unsent else math.inf

    def snapshot_frame(self) -> Frame | None:
        if self.latest is None:
            return None
        if self.latest_frame is None:
            self.latest_frame = outgoing(
                leaderboard_frame(self.latest.entries, self.latest.updated_at_ms)
            )
        return self.latest_frame

    def broadcast(self) -> None:
        frame = self.snapshot_frame()
        self.unsent = False
        began = trio.current_time()
        if frame is not None:
            for offer in self.snapshot_offers.values():
                offer(frame)
        fanout_s = trio.current_time() - began
        if self.latest is not None:
            metrics.BROADCAST_LATENCY.observe(
                max(0.0, clock.now_s() - self.latest.updated_at_ms / 1000)
            )
        # From the start of this fan-out to the start of the next. A client that got this one
        # last waits a whole tick after its end (never two updates within a tick for anyone);
        # a long fan-out takes at most MAX_BROADCAST_SHARE of the time, its own included.
        interval_s = max(fanout_s + self.tick_s, fanout_s / MAX_BROADCAST_SHARE)
        self.next_broadcast_at = began + interval_s
        self.stats.broadcasts += 1
        self.stats.last_fanout_s = fanout_s
        self.stats.interval_s = interval_s

    def handle(self, msg: HubMsg) -> None:
        if not isinstance(msg, ScoreChanged | ActionFinished):
            # Registrations and revocations see every frame before them delivered, as if each
            # had gone out at once.
            self.deliver_personal()
        match msg:
            case Register(connection_id, user_id, mailbox, grant_id, jti):
                self.unregister(connection_id)
                self.bind(connection_id, user_id, mailbox)
                self.credentials[connection_id] = (grant_id, jti)
                if (frame := self.snapshot_frame()) is not None:
                    mailbox.offer_snapshot(frame)
            case Unregister(connection_id):
                self.unregister(connection_id)
            case Rebind(connection_id, user_id, grant_id, jti):
                if connection_id in self.connections:
                    _old_user, mailbox = self.connections[connection_id]
                    self.unregister(connection_id)
                    self.bind(connection_id, user_id, mailbox)
                    self.credentials[connection_id] = (grant_id, jti)
            case WaitForAction(action_id, reply):
                if action_id in self.recent:
                    inboxes.reply(reply, self.recent[action_id])
                else:
                    self.waiters.setdefault(action_id, []).append(reply)
            case CancelWait(action_id):
                self.waiters.pop(action_id, None)
            case LeaderboardChanged():
                # The same top again (the events actor's resync after the hub's own first read,
                # or two keepers publishing the same top) goes to nobody twice.
                if self.latest is None or msg.entries != self.latest.entries:
                    self.latest = msg
                    self.latest_frame = None
                    self.unsent = True
            case ScoreChanged():
                if msg.user_id in self.by_user:
                    self.queue_personal(msg.user_id, outgoing(score_update_frame(msg)))
            case ActionFinished():
                # A thousand outcomes a second: the log record's id is built only when it is logged.
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "action %s %s",
                        msg.action_id,
                        msg.outcome.status,
                        extra=_about(msg.action_id),
                    )
                self.remember(msg)
                for reply in self.waiters.pop(msg.action_id, ()):
                    inboxes.reply(reply, msg)
                if msg.user_id in self.by_user:
                    self.queue_personal(msg.user_id, outgoing(action_result_frame(msg)))
            case TokensRevoked(grant_ids, jtis):
                self.close_revoked(frozenset(grant_ids), frozenset(jtis))
            case _:
                assert_never(msg)

    def bind(self, connection_id: int, user_id: int | None, mailbox: Subscriber) -> None:
        self.connections[connection_id] = (user_id, mailbox)
        self.snapshot_offers[connection_id] = mailbox.offer_snapshot
        if user_id is not None:
            self.by_user.setdefault(user_id, {})[connection_id] = mailbox

    def close_revoked(self, grant_ids: frozenset[str], jtis: frozenset[str]) -> None:
        revoked = [
            connection_id
            for connection_id, (grant_id, jti) in self.credentials.items()
            if grant_id in grant_ids or jti in jtis
        ]
        for connection_id in revoked:
            _user_id, mailbox = self.connections[connection_id]
            mailbox.close(TOKEN_REVOKED)
            self.unregister(connection_id)

    def unregister(self, connection_id: int) -> None:
        self.credentials.pop(connection_id, None)
        self.snapshot_offers.pop(connection_id, None)
        user_id, _mailbox = self.connections.pop(connection_id, (None, None))
        if user_id is not None:
            mailboxes = self.by_user[user_id]
            del mailboxes[connection_id]
            if not mailboxes:
                del self.by_user[user_id]

    def queue_personal(self, user_id: int, frame: Frame) -> None:
        self.personal.setdefault(user_id, []).append(frame)

    def deliver_personal(self) -> None:
        """Each user's frames of this turn, back to back in one `Batch` built once for all of
        that user's connections: one `send` per connection instead of one per frame."""
        for user_id, frames in self.personal.items():
            ready = batch(frames)
            overflowed = [
                connection_id
                for connection_id, mailbox in self.by_user.get(user_id, {}).items()
                if not mailbox.offer_personal_batch(ready)
            ]
            # The mailbox closed itself; its writer closes the socket 1013 and unregisters.
            for connection_id in overflowed:
                self.unregister(connection_id)
        self.personal.clear()

    def remember(self, result: ActionFinished) -> None:
        self.recent[result.action_id] = result
        if len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)


async def read_top(board: Board, size: int) -> LeaderboardChanged:
    """The board's top as a snapshot, as the hub's first one and the events actor's resync
    (`actors/events.py`) read it."""
    with trio.fail_after(BOARD_READ_TIMEOUT_S):
        entries, updated_at_ms = await board.top(size)
    return LeaderboardChanged(tuple(entries), updated_at_ms or clock.now_ms())


async def run(
    inbox: trio.MemoryReceiveChannel[HubMsg],
    *,
    board: Board,
    config: Config,
    stats: BroadcastStats | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Without the board (Redis down, or no keeper has rebuilt it yet) the hub starts all the
    same, and the board comes with the keeper's next event or the events actor's resync."""
    with inbox:
        try:
            latest: LeaderboardChanged | None = await read_top(board, config.leaderboard.size)
        except (BackendUnavailable, trio.TooSlowError) as exc:
            log.warning("hub: no initial leaderboard (%s); it comes with the events", exc)
            latest = None
        hub = _Hub(config.websocket.min_update_interval_s, latest, stats or BroadcastStats())
        task_status.started()
        while True:
            try:
                msg = await inboxes.receive_until(inbox, hub.broadcast_due_at())
            except trio.EndOfChannel:
                return
            if msg is None:
                hub.broadcast()
            else:
                hub.handle(msg)
                # A broadcast that fell due meanwhile goes first at the next turn.
                for waiting in inboxes.take_waiting(inbox, HANDLED_PER_WAKEUP):
                    hub.handle(waiting)
                hub.deliver_personal()
