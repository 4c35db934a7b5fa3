"""The leaderboard and the edge guard of embedded mode, in this process's memory.

Same semantics as `redis.py`, without its reasons to be a script: every method runs on the trio
loop without awaiting in the middle, so each is atomic by construction.

- The board orders by score descending, then by who reached the score first, then by user id
  (the store's order). It is empty and "not built" at start: `apply` answers None until
  `rebuild`, exactly like a missing Redis key, and `open_backends` rebuilds it from SQLite.
- The guard keeps nonces (24 h), sliding one-minute windows per IP and per user, cooldowns,
  and the sign-in, token and registration attempt windows and sign-in failure counts.
  Its memory dies with the process, while a nonce must never be accepted twice: a nonce it does
  not know is looked up in the durable history (`ClaimHistory`: the action log, the outbox and
  the dead letters) before it is claimed.
"""

from __future__ import annotations

import bisect
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from scoreboard import clock
from scoreboard.adapters.interfaces import (
    OUTCOME_UNKNOWN,
    PUBLISHING,
    Accepted,
    Board,
    BoardMissing,
    Claim,
    EdgeGuard,
    FailureDelay,
    Limited,
    MeView,
    PendingAction,
    Replayed,
    RequestCount,
)
from scoreboard.records import BoardEntry, RankChange, RankedEntry

K = TypeVar("K")

LIMIT_WINDOW_MS = 60_000
NONCE_TTL_MS = 24 * 3600 * 1000
ACCEPTED_STATUS = 202
# How often the guard forgets expired windows, cooldowns and nonces of users gone quiet.
SWEEP_INTERVAL_MS = 60_000

_SortKey = tuple[int, int, int]  # (-score, reached_ms, user_id): ascending is rank order


class MemoryBoard(Board):
    def __init__(self) -> None:
        self._built = False
        self._order: list[_SortKey] = []
        self._entries: dict[int, BoardEntry] = {}
        self._updated_at_ms = 0

    async def ping(self) -> None:
        pass

    def _rank0(self, user_id: int) -> int | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        return bisect.bisect_left(self._order, _sort_key(entry))

    def _ranked(self, start: int, stop: int) -> list[RankedEntry]:
        ranked = []
        for index in range(max(0, start), min(stop, len(self._order))):
            entry = self._entries[self._order[index][2]]
            ranked.append(RankedEntry(index + 1, entry.user_id, entry.username, entry.score))
        return ranked

    async def apply(
        self, entries: Sequence[BoardEntry], top_n: int
    ) -> tuple[list[RankChange], list[RankedEntry]] | None:
        if not self._built:
            return None
        old_ranks: dict[int, int | None] = {}
        for entry in entries:
            if entry.user_id not in old_ranks:
                old_ranks[entry.user_id] = self._rank0(entry.user_id)
        changed = False
        for entry in entries:
            current = self._entries.get(entry.user_id)
            if current is not None:
                # Store scores only grow: lower, or the same reached no earlier, is old news.
                stale = entry.score < current.score or (
                    entry.score == current.score
                    and entry.score_reached_at_ms >= current.score_reached_at_ms
                )
                if stale:
                    continue
                del self._order[bisect.bisect_left(self._order, _sort_key(current))]
            bisect.insort(self._order, _sort_key(entry))
            self._entries[entry.user_id] = entry
            changed = True
        if changed:
            self._updated_at_ms = clock.now_ms()
        changes = []
        for user_id, old in old_ranks.items():
            new = self._rank0(user_id)
            assert new is not None, "every applied user is on the board"
            changes.append(RankChange(user_id, None if old is None else old + 1, new + 1))
        return changes, self._ranked(0, top_n)

    async def remove(self, user_ids: Sequence[int]) -> bool:
        if not self._built:
            return False
        for user_id in user_ids:
            entry = self._entries.pop(user_id, None)
            if entry is not None:
                del self._order[bisect.bisect_left(self._order, _sort_key(entry))]
                self._updated_at_ms = clock.now_ms()
        return True

    async def rebuild(self, entries: Sequence[BoardEntry]) -> None:
        self._entries = {entry.user_id: entry for entry in entries}
        self._order = sorted(_sort_key(entry) for entry in self._entries.values())
        self._built = True
        self._updated_at_ms = clock.now_ms()

    async def rebuild_if_missing(self, entries: Sequence[BoardEntry]) -> bool:
        if self._built:
            return False
        await self.rebuild(entries)
        return True

    async def top(self, limit: int) -> tuple[list[RankedEntry], int]:
        if not self._built:
            raise BoardMissing("the board is not built")
        return self._ranked(0, limit), self._updated_at_ms

    async def around(self, user_id: int, radius: int) -> MeView | None:
        if not self._built:
            raise BoardMissing("the board is not built")
        rank = self._rank0(user_id)
        if rank is None:
            return None
        return MeView(
            me=self._ranked(rank, rank + 1)[0],
            above=tuple(self._ranked(rank - radius, rank)),
            below=tuple(self._ranked(rank + 1, rank + 1 + radius)),
        )

    async def scores(self) -> dict[int, int]:
        return {user_id: entry.score for user_id, entry in self._entries.items()}


def _sort_key(entry: BoardEntry) -> _SortKey:
    return (-entry.score, entry.score_reached_at_ms, entry.user_id)


class ClaimHistory(Protocol):
    """What the durable side knows of claims the guard may have forgotten (a restart)."""

    async def nonce_holder(self, user_id: int, nonce: str) -> uuid.UUID | None:
        """The action that took this nonce, if it is stored, queued or dead-lettered."""
        ...

    async def queued_action(self, action_id: uuid.UUID) -> PendingAction | None:
        """The action if it is accepted and waiting in the queue."""
        ...


@dataclass(slots=True)
class _Nonce:
    action_id: uuid.UUID
    first_status_code: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class _Failures:
    count: int
    last_ms: int
    forget_at_ms: int


@dataclass(frozen=True, slots=True)
class _Cooldown:
    until_ms: int
    action_id: uuid.UUID


class MemoryEdgeGuard(EdgeGuard):
    def __init__(self, history: ClaimHistory):
        self._history = history
        self._nonces: dict[tuple[int, str], _Nonce] = {}
        self._pending: dict[uuid.UUID, PendingAction] = {}
        # Sliding windows: (claim time, action id) in time order.
        self._ip_windows: dict[str, list[tuple[int, uuid.UUID]]] = {}
        self._user_windows: dict[int, list[tuple[int, uuid.UUID]]] = {}
        self._cooldowns: dict[tuple[int, str], _Cooldown] = {}
        self._attempts: dict[str, list[tuple[int, uuid.UUID]]] = {}
        self._requests: dict[str, list[tuple[int, uuid.UUID]]] = {}
        self._failures: dict[str, _Failures] = {}
        self._next_sweep_ms = 0

    async def ping(self) -> None:
        pass

    async def claim(
        self,
        *,
        user_id: int,
        nonce: str,
        action_id: uuid.UUID,
        action_type: str,
        ip: str,
        now_ms: int,
        cooldown_ms: int,
        user_limit_per_minute: int,
        ip_limit_per_minute: int,
        limits_enabled: bool,
    ) -> Claim:
        if limits_enabled and min(user_limit_per_minute, ip_limit_per_minute) < 1:
            raise ValueError("rate limits must admit at least one action a minute")
        self._sweep(now_ms)
        key = (user_id, nonce)
        if key not in self._nonces:
            holder = await self._history.nonce_holder(user_id, nonce)
            # Another claim of this nonce may have run while we awaited: the memory decides.
            if holder is not None and key not in self._nonces:
                self._nonces[key] = _Nonce(holder, ACCEPTED_STATUS, now_ms + NONCE_TTL_MS)
        # From here on nothing awaits: the check and the record are one atomic step.
        known = self._nonces.get(key)
        if known is not None:
            return Replayed(known.action_id, known.first_status_code)
        if limits_enabled:
            wait_ms = max(
                _window_wait(self._ip_windows.get(ip, []), ip_limit_per_minute, now_ms),
                _window_wait(self._user_windows.get(user_id, []), user_limit_per_minute, now_ms),
            )
            cooldown = self._cooldowns.get((user_id, action_type))
            if cooldown is not None:
                wait_ms = max(wait_ms, cooldown.until_ms - now_ms)
            if wait_ms > 0:
                return Limited(max(1, math.ceil(wait_ms / 1000)))
            bisect.insort(self._ip_windows.setdefault(ip, []), (now_ms, action_id))
            bisect.insort(self._user_windows.setdefault(user_id, []), (now_ms, action_id))
            if cooldown_ms > 0:
                self._cooldowns[(user_id, action_type)] = _Cooldown(now_ms + cooldown_ms, action_id)
        self._nonces[key] = _Nonce(action_id, PUBLISHING, now_ms + NONCE_TTL_MS)
        self._pending[action_id] = PendingAction(user_id, action_type, nonce, now_ms)
        return Accepted()

    async def release(
        self, *, user_id: int, nonce: str, action_id: uuid.UUID, action_type: str
    ) -> None:
        """Undo what the claim of this action recorded, and nothing a later claim did (nothing
        at all once a replay got it queued). The IP window keeps the entry: the request was
        made, and the IP limit counts requests."""
        known = self._nonces.get((user_id, nonce))
        if known is not None and known.action_id == action_id:
            if known.first_status_code != PUBLISHING:
                return
            del self._nonces[(user_id, nonce)]
        window = self._user_windows.get(user_id, [])
        window[:] = [(ms, held) for ms, held in window if held != action_id]
        cooldown = self._cooldowns.get((user_id, action_type))
        if cooldown is not None and cooldown.action_id == action_id:
            del self._cooldowns[(user_id, action_type)]
        self._pending.pop(action_id, None)

    async def set_first_status(self, *, user_id: int, nonce: str, status_code: int) -> None:
        known = self._nonces.get((user_id, nonce))
        if known is not None:
            known.first_status_code = status_code

    async def mark_queued(self, actions: Sequence[tuple[int, str, uuid.UUID]]) -> None:
        now_ms = clock.now_ms()
        for user_id, nonce, action_id in actions:
            known = self._nonces.get((user_id, nonce))
            if known is None:
                self._nonces[(user_id, nonce)] = _Nonce(
                    action_id, ACCEPTED_STATUS, now_ms + NONCE_TTL_MS
                )
            elif known.action_id == action_id and known.first_status_code in (
                PUBLISHING,
                OUTCOME_UNKNOWN,
            ):
                known.first_status_code = ACCEPTED_STATUS

    async def mark_outcome_unknown(self, *, user_id: int, nonce: str, action_id: uuid.UUID) -> None:
        known = self._nonces.get((user_id, nonce))
        if known is not None and (known.action_id, known.first_status_code) == (
            action_id,
            PUBLISHING,
        ):
            known.first_status_code = OUTCOME_UNKNOWN

    async def pending_action(self, action_id: uuid.UUID) -> PendingAction | None:
        pending = self._pending.get(action_id)
        if pending is not None:
            return pending
        return await self._history.queued_action(action_id)

    async def count_attempts(self, limits: Sequence[tuple[str, int]], *, now_ms: int) -> int:
        if any(limit < 1 for _key, limit in limits):
            raise ValueError("a limit must admit at least one attempt a minute")
        self._sweep(now_ms)
        wait_ms = max(
            (_window_wait(self._attempts.get(key, []), limit, now_ms) for key, limit in limits),
            default=0,
        )
        if wait_ms > 0:
            return math.ceil(wait_ms / 1000)
        attempt = uuid.uuid4()
        for key, _limit in limits:
            bisect.insort(self._attempts.setdefault(key, []), (now_ms, attempt))
        return 0

    async def count_request(self, key: str, limit: int, *, now_ms: int) -> RequestCount:
        """Nothing awaits between the check and the record: one atomic step in this process
        (embedded mode is one process)."""
        if limit < 1:
            raise ValueError("a limit must admit at least one request a minute")
        self._sweep(now_ms)
        window = self._requests.setdefault(key, [])
        wait_ms = _window_wait(window, limit, now_ms)
        if wait_ms > 0:
            return RequestCount(False, 0, max(1, math.ceil(wait_ms / 1000)))
        bisect.insort(window, (now_ms, uuid.uuid4()))
        reset_ms = window[0][0] + LIMIT_WINDOW_MS - now_ms
        return RequestCount(True, limit - len(window), max(1, math.ceil(reset_ms / 1000)))

    async def admit_after_failures(self, key: str, *, now_ms: int, delay: FailureDelay) -> int:
        self._sweep(now_ms)
        known = self._failures.get(key)
        if known is not None and known.forget_at_ms <= now_ms:
            known = None
        failures, last_ms = (known.count, known.last_ms) if known else (0, 0)
        wait_ms = delay.wait_ms(failures, last_ms, now_ms)
        if wait_ms > 0:
            return math.ceil(wait_ms / 1000)
        self._failures[key] = _Failures(failures + 1, now_ms, now_ms + delay.forget_after_ms)
        return 0

    async def forget_failures(self, key: str) -> None:
        self._failures.pop(key, None)

    def _sweep(self, now_ms: int) -> None:
        """Forget what has expired, now and then, so quiet users and IPs cost no memory."""
        if now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + SWEEP_INTERVAL_MS
        _prune_all(self._ip_windows, now_ms)
        _prune_all(self._user_windows, now_ms)
        _prune_all(self._attempts, now_ms)
        _prune_all(self._requests, now_ms)
        for failures_key in [k for k, f in self._failures.items() if f.forget_at_ms <= now_ms]:
            del self._failures[failures_key]
        for cooldown_key in [k for k, c in self._cooldowns.items() if c.until_ms <= now_ms]:
            del self._cooldowns[cooldown_key]
        for nonce_key in [k for k, n in self._nonces.items() if n.expires_ms <= now_ms]:
            self._pending.pop(self._nonces.pop(nonce_key).action_id, None)


def _prune(window: list[tuple[int, uuid.UUID]], now_ms: int) -> None:
    """Drop the claims that left the window (at or before `now - window`)."""
    del window[: bisect.bisect_right(window, (now_ms - LIMIT_WINDOW_MS, _MAX_UUID))]


_MAX_UUID = uuid.UUID(int=2**128 - 1)


def _prune_all(windows: dict[K, list[tuple[int, uuid.UUID]]], now_ms: int) -> None:
    for owner in list(windows):
        _prune(windows[owner], now_ms)
        if not windows[owner]:
            del windows[owner]


def _window_wait(window: list[tuple[int, uuid.UUID]], limit: int, now_ms: int) -> int:
    """How long until the window has room for one more (0: it has room now)."""
    _prune(window, now_ms)
    if len(window) < limit:
        return 0
    leaving_ms, _ = window[len(window) - limit]
    return leaving_ms + LIMIT_WINDOW_MS - now_ms
