"""The leaderboard keeper: Redis follows Postgres, and every API process hears about it.

For each committed batch (or, when it fell behind, the batches waiting together) it writes the
changed users' absolute scores from Postgres to the board (never increments, so a redelivery
cannot count twice), then publishes, in one broker call, a
`ScoreChanged` for each user whose score moved, a `LeaderboardChanged` when the top differs from
the one it last published, and an `ActionFinished` for every result (duplicates too: a client
waiting for a redelivered action hears its outcome).

A suspended user is off the board: the store's board entries leave them out, so every rebuild
does, and the keeper follows the store's suspension log (on start, and with its periodic check,
every `BOARD_CHECK_EVERY_S`) to take users off the board when they are suspended and put their
stored score back when they are unsuspended, from whichever process the operator did it.

The board is a cache: when its key is missing (Redis restarted or was flushed) the keeper rebuilds
it from Postgres, on start, when a write finds it gone, and when its periodic check does; on
start an existing board is brought up to Postgres too. A board write that fails is retried until
it works, holding the batch: the scorer waits behind the keeper rather than leave Redis behind
Postgres.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Protocol, assert_never

import trio

from scoreboard import clock
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.messages import Committed, KeeperMsg
from scoreboard.actors.retry import call_with_retries
from scoreboard.adapters.interfaces import (
    ActionLog,
    BackendUnavailable,
    Board,
    Broker,
    Moderation,
    PublishFailed,
)
from scoreboard.config import Config
from scoreboard.records import (
    ActionFinished,
    BoardEntry,
    CommitResult,
    Event,
    LeaderboardChanged,
    RankChange,
    RankedEntry,
    ScoreChanged,
)
from scoreboard.wire import encode_events

log = logging.getLogger(__name__)


class BoardSource(ActionLog, Moderation, Protocol):
    """What the keeper reads: the users' scores, and who is suspended."""


INBOX_SIZE = 64  # whole batches: dozens let the scorer commit ahead while Redis is slow
BOARD_CHECK_EVERY_S = 5.0  # how soon a lost board key is rebuilt when no batch finds it first
BOARD_TIMEOUT_S = 10.0
REBUILD_TIMEOUT_S = 120.0  # reads every user with a score, then writes them all
CATCH_UP_CHUNK = 1000  # scores per board write on start: each is one Redis script, kept short
PUBLISH_TIMEOUT_S = 10.0
PUBLISH_ATTEMPTS = 3
SUSPENSIONS_CHUNK = 1000
# A keeper that fell behind takes the batches waiting in its inbox together, up to about this many
# results: one board write and one publish for all of them instead of a round trip to Redis and
# one to RabbitMQ per batch, which under load made the snapshots wait for each other.
MERGED_RESULTS = 1000

KeeperHandle = trio.MemorySendChannel[KeeperMsg]
"""How the scorer reaches the keeper: the sending end of its inbox."""


def open_inbox() -> tuple[KeeperHandle, trio.MemoryReceiveChannel[KeeperMsg]]:
    """The keeper's inbox: the handle its sender uses, and the end the keeper reads."""
    return trio.open_memory_channel[KeeperMsg](INBOX_SIZE)


async def update_board(keeper: KeeperHandle, results: Sequence[CommitResult]) -> None:
    """Have the board and every API process follow the committed batch `results`."""
    await keeper.send(Committed(tuple(results)))


class _Keeper:
    def __init__(self, store: BoardSource, board: Board, broker: Broker, config: Config) -> None:
        self._store = store
        self._board = board
        self._broker = broker
        self._top_n = config.leaderboard.size
        self._published_top: tuple[RankedEntry, ...] | None = None
        self._suspensions_seen = 0
        # As of the suspension log read so far: a batch committed before a suspension and
        # handled after it must not put the user back.
        self._suspended: set[int] = set()

    async def start(self) -> None:
        """Bring the board up to Postgres, then publish its top. A missing board is rebuilt. An
        existing one gets every stored score applied, older never overwriting newer (so other
        workers' writes are safe): that repairs a batch a previous keeper took and never wrote;
        and the users suspended meanwhile are taken off it."""
        self._suspensions_seen, suspended = await call_with_retries(
            self._store.suspension_state,
            what="reading the suspended users",
            timeout_s=BOARD_TIMEOUT_S,
            attempts=math.inf,
        )
        self._suspended = set(suspended)
        entries = await self._all_entries()
        if await self._write([]) is None:
            await self._rebuild(entries)
        else:
            for start in range(0, len(entries), CATCH_UP_CHUNK):
                await self._apply(entries[start : start + CATCH_UP_CHUNK])
            await self._remove(suspended)
        await self.check_board()

    async def check_board(self) -> None:
        """Follow the suspension log; rebuild the board if its key is missing; publish the top
        if it changed (on start, when nothing was published yet, always)."""
        restored = await self._follow_suspensions()
        _changes, top = await self._apply(restored)
        events: list[Event] = []
        self._leaderboard_event(top, events)
        if events:
            await self._publish(events)

    async def handle(self, results: Sequence[CommitResult]) -> None:
        entries = await self._entries(results)
        changes, top = await self._apply(entries)
        # The outcomes last: whoever waits for one finds the scores moved already.
        events = _score_changes(results, changes)
        self._leaderboard_event(top, events)
        events += [
            ActionFinished(result.user_id, result.action_id, result.nonce, result.outcome)
            for result in results
        ]
        await self._publish(events)

    async def _entries(self, results: Sequence[CommitResult]) -> list[BoardEntry]:
        """Each changed user's newest absolute score. A user with only redelivered actions is
        read back from the store: the first delivery may have been committed by a scorer that
        died before this keeper wrote the board."""
        latest: dict[int, BoardEntry] = {}
        redelivered: set[int] = set()
        for result in results:
            if result.outcome.status != "completed" or result.user_id in self._suspended:
                continue
            if result.duplicate:
                redelivered.add(result.user_id)
            else:
                latest[result.user_id] = BoardEntry(
                    result.user_id, result.username, result.new_score, result.score_reached_at_ms
                )
        stale = sorted(redelivered - latest.keys())
        if stale:
            latest.update(
                (entry.user_id, entry)
                for entry in await call_with_retries(
                    functools.partial(self._store.board_entries, stale),
                    what="reading redelivered users' scores",
                    timeout_s=BOARD_TIMEOUT_S,
                    attempts=math.inf,
                )
            )
        return list(latest.values())

    async def _apply(self, entries: list[BoardEntry]) -> tuple[list[RankChange], list[RankedEntry]]:
        applied = await self._write(entries)
        if applied is None:
            await self._rebuild(await self._all_entries())
            applied = await self._write(entries)
            if applied is None:
                raise BackendUnavailable("the board vanished again right after its rebuild")
        return applied

    async def _follow_suspensions(self) -> list[BoardEntry]:
        """Take the users suspended since the last look off the board; the board entries of
        those unsuspended, to apply."""
        latest: dict[int, bool] = {}
        while True:
            changes = await call_with_retries(
                functools.partial(
                    self._store.suspension_changes, self._suspensions_seen, SUSPENSIONS_CHUNK
                ),
                what="reading the suspension log",
                timeout_s=BOARD_TIMEOUT_S,
                attempts=math.inf,
            )
            for change in changes:
                latest[change.user_id] = change.suspended
                self._suspensions_seen = change.change_id
                if change.suspended:
                    self._suspended.add(change.user_id)
                else:
                    self._suspended.discard(change.user_id)
            if len(changes) < SUSPENSIONS_CHUNK:
                break
        await self._remove([user_id for user_id, suspended in latest.items() if suspended])
        unsuspended = [user_id for user_id, suspended in latest.items() if not suspended]
        if not unsuspended:
            return []
        # The store leaves out whoever is suspended again by now.
        entries: list[BoardEntry] = await call_with_retries(
            functools.partial(self._store.board_entries, unsuspended),
            what="reading unsuspended users' scores",
            timeout_s=BOARD_TIMEOUT_S,
            attempts=math.inf,
        )
        return [entry for entry in entries if entry.score > 0]

    async def _remove(self, user_ids: list[int]) -> None:
        """A missing board needs nothing removed: its rebuild leaves suspended users out."""
        if user_ids:
            log.info("keeper: taking %d suspended user(s) off the board", len(user_ids))
            await call_with_retries(
                functools.partial(self._board.remove, user_ids),
                what="taking suspended users off the board",
                timeout_s=BOARD_TIMEOUT_S,
                attempts=math.inf,
            )

    async def _write(
        self, entries: list[BoardEntry]
    ) -> tuple[list[RankChange], list[RankedEntry]] | None:
        return await call_with_retries(
            functools.partial(self._board.apply, entries, self._top_n),
            what="writing the board",
            timeout_s=BOARD_TIMEOUT_S,
            attempts=math.inf,
        )

    async def _all_entries(self) -> list[BoardEntry]:
        return await call_with_retries(
            self._store.board_entries,
            what="reading every score",
            timeout_s=REBUILD_TIMEOUT_S,
            attempts=math.inf,
        )

    async def _rebuild(self, entries: list[BoardEntry]) -> None:
        """Swap a board built from `entries` in, only if it is still missing then. Another
        worker may have rebuilt it meanwhile from a newer read of the store and written newer
        scores since: then `entries` are applied like any batch, where an older score never
        overwrites a newer one (the apply script compares score and reach time)."""
        log.warning("keeper: the board is missing; rebuilding it from the store")
        built = await call_with_retries(
            functools.partial(self._board.rebuild_if_missing, entries),
            what="rebuilding the board",
            timeout_s=REBUILD_TIMEOUT_S,
            attempts=math.inf,
        )
        if built:
            log.info("keeper: rebuilt the board with %d users", len(entries))
            return
        log.info("keeper: another process rebuilt the board first; merging %d scores", len(entries))
        for start in range(0, len(entries), CATCH_UP_CHUNK):
            if await self._write(entries[start : start + CATCH_UP_CHUNK]) is None:
                raise BackendUnavailable("the board vanished again during its rebuild")

    def _leaderboard_event(self, top: list[RankedEntry], events: list[Event]) -> None:
        if tuple(top) != self._published_top:
            events.append(LeaderboardChanged(tuple(top), clock.now_ms()))

    async def _publish(self, events: list[Event]) -> None:
        """One broker message for all of them. Events are notifications: if the broker cannot take
        them they are dropped with a warning (the committed outcomes are safe in Postgres), and
        the top is published again with the next batch."""
        try:
            await call_with_retries(
                functools.partial(self._broker.publish_events, [encode_events(events)]),
                what=f"publishing {len(events)} events",
                timeout_s=PUBLISH_TIMEOUT_S,
                attempts=PUBLISH_ATTEMPTS,
                # A repeat may duplicate some events, which clients take as they come.
                also_retry=(PublishFailed,),
            )
        except (BackendUnavailable, trio.TooSlowError, PublishFailed) as exc:
            log.warning("keeper: dropped %d events the broker did not take (%r)", len(events), exc)
            return
        for event in events:
            if isinstance(event, LeaderboardChanged):
                self._published_top = event.entries


def _score_changes(results: Sequence[CommitResult], changes: list[RankChange]) -> list[Event]:
    """A `ScoreChanged` per user whose score moved in this batch, from their first old score to
    their last new one; `rank_change` is positive when they climbed (0 when new to the board)."""
    first_old: dict[int, int] = {}
    last: dict[int, CommitResult] = {}
    for result in results:
        if result.duplicate or result.new_score == result.old_score:
            continue
        first_old.setdefault(result.user_id, result.old_score)
        last[result.user_id] = result
    ranks = {change.user_id: change for change in changes}
    events: list[Event] = []
    for user_id, result in last.items():
        change = ranks.get(user_id)
        if change is None:
            continue
        moved = change.old_rank - change.new_rank if change.old_rank is not None else 0
        events.append(
            ScoreChanged(
                user_id=user_id,
                username=result.username,
                old_score=first_old[user_id],
                new_score=result.new_score,
                rank=change.new_rank,
                rank_change=moved,
            )
        )
    return events


def _waiting_results(inbox: trio.MemoryReceiveChannel[KeeperMsg]) -> list[CommitResult]:
    """The results of the batches already waiting, in commit order, up to about
    `MERGED_RESULTS`; handled with the one just received as a single batch (the newest score of
    each user wins, and every outcome is announced)."""
    results: list[CommitResult] = []
    while len(results) < MERGED_RESULTS and (waiting := inboxes.take_waiting(inbox, 1)):
        results += waiting[0].results
    return results


async def run(
    inbox: trio.MemoryReceiveChannel[KeeperMsg],
    *,
    store: BoardSource,
    board: Board,
    broker: Broker,
    config: Config,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with inbox:
        keeper = _Keeper(store, board, broker, config)
        await keeper.start()
        task_status.started()
        next_check_at = trio.current_time() + BOARD_CHECK_EVERY_S
        while True:
            try:
                msg = await inboxes.receive_until(inbox, next_check_at)
            except trio.EndOfChannel:
                return
            # Handling a batch finds a missing board as surely as the check does.
            match msg:
                case None:
                    await keeper.check_board()
                case Committed(results):
                    await keeper.handle([*results, *_waiting_results(inbox)])
                case _:
                    assert_never(msg)
            next_check_at = trio.current_time() + BOARD_CHECK_EVERY_S
