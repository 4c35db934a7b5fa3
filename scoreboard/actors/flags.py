"""The flags actor: the behavioural flags (`scoreboard.anticheat`), raised from the stream of
decisions and stored with their evidence for operators. It never changes a score.

The scorer hands it every decision it committed (accepted and refused, with the client's
address from the envelope) with `observe`, which never waits: the inbox is bounded, and a batch
that does not fit is dropped and counted (`FlagStats.dropped`, logged). Losing a few decisions
under overload makes a flag later or never; it cannot lose a score, and nothing on the scoring
path ever waits for this actor.

Other sources feed it the same way: whoever learns of an attempt the worker never sees (the
refusals at the API's edge, which the audit trail records) calls `observe` with
`DecidedAction`s built from it.

Flags are written to the store (`Store.add_flags`) as they are raised; a store outage holds the
actor (retrying), and what arrives meanwhile is dropped and counted. On start the flags that
still stand (raised within `anticheat.cooloff_s`, not cleared) are restored into the detector, so
a restart does not raise them again; every `CLEARS_EVERY_S` it reads the flags operators cleared
(from any process) and lets the detector raise those again at the next occurrence.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never

import trio

from scoreboard import clock, metrics
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.messages import FlagsMsg, Observe
from scoreboard.actors.retry import call_with_retries
from scoreboard.adapters.interfaces import Store
from scoreboard.anticheat.detector import FlagDetector
from scoreboard.anticheat.records import DecidedAction, Flag, FlagQuery
from scoreboard.config import AnticheatConfig

log = logging.getLogger(__name__)

INBOX_SIZE = 1024  # committed batches (each up to scorer.max_batch decisions)
STORE_TIMEOUT_S = 10.0
CLEARS_EVERY_S = 5.0
# A clear is stamped when its transaction starts and may commit a little later: each look
# reaches this far back (clearing a flag again in the detector changes nothing).
CLEARS_OVERLAP_MS = 60_000
RESTORE_PAGE = 1000
DROP_LOG_EVERY_S = 10.0

FlagsHandle = trio.MemorySendChannel[FlagsMsg]
"""How the scorer (and any other source of decisions) reaches the flags actor."""


@dataclass(slots=True)
class FlagStats:
    """Counts since the process started, shared by the senders and the actor."""

    observed: int = 0
    dropped: int = 0
    raised: int = 0
    _last_drop_log: float = -math.inf


def open_inbox() -> tuple[FlagsHandle, trio.MemoryReceiveChannel[FlagsMsg]]:
    return trio.open_memory_channel[FlagsMsg](INBOX_SIZE)


def observe(flags: FlagsHandle, stats: FlagStats, actions: Sequence[DecidedAction]) -> None:
    """Hand decided attempts to the flags actor without waiting; dropped (and counted) when its
    inbox is full or it is gone."""
    if not actions:
        return
    try:
        flags.send_nowait(Observe(tuple(actions)))
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        stats.dropped += len(actions)
        metrics.FLAGS_DROPPED.inc(len(actions))
        now = trio.current_time()
        if now - stats._last_drop_log >= DROP_LOG_EVERY_S:
            stats._last_drop_log = now
            log.warning(
                "flags: the flags actor is behind; %d decisions dropped so far (scores are not "
                "affected)",
                stats.dropped,
            )


def wall_ms() -> int:
    return clock.now_ms()


async def run(
    inbox: trio.MemoryReceiveChannel[FlagsMsg],
    *,
    store: Store,
    settings: AnticheatConfig,
    stats: FlagStats,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with inbox:
        detector = FlagDetector(settings, wall_ms)
        cooloff_ms = int(settings.cooloff_s * 1000)
        clears_since_ms = wall_ms()
        detector.restore(await _standing_flags(store, clears_since_ms - cooloff_ms))
        applied_clears: dict[int, int] = {}
        task_status.started()
        next_clears_at = trio.current_time() + CLEARS_EVERY_S
        while True:
            try:
                msg = await inboxes.receive_until(inbox, next_clears_at)
            except trio.EndOfChannel:
                return
            match msg:
                case None:
                    clears_since_ms = await _follow_clears(
                        store, detector, clears_since_ms, applied_clears
                    )
                    next_clears_at = trio.current_time() + CLEARS_EVERY_S
                case Observe(actions):
                    raised: list[Flag] = []
                    for action in actions:
                        raised += detector.observe(action)
                    stats.observed += len(actions)
                    metrics.FLAGS_OBSERVED.inc(len(actions))
                    if raised:
                        await _store_flags(store, raised)
                        stats.raised += len(raised)
                        for flag in raised:
                            metrics.FLAGS_RAISED.labels(flag.kind).inc()
                case _:
                    assert_never(msg)


async def _store_flags(store: Store, flags: list[Flag]) -> None:
    ids = await call_with_retries(
        functools.partial(store.add_flags, flags),
        what=f"storing {len(flags)} flag(s)",
        timeout_s=STORE_TIMEOUT_S,
        attempts=math.inf,
    )
    for flag_id, flag in zip(ids, flags, strict=True):
        log.warning(
            "flags: raised %s #%d for %s (%s)", flag.kind, flag_id, flag.subject, flag.evidence
        )


async def _standing_flags(store: Store, raised_since_ms: int) -> list[Flag]:
    standing: list[Flag] = []
    before_id: int | None = None
    while True:
        page = await call_with_retries(
            functools.partial(
                store.list_flags,
                FlagQuery(
                    since_ms=raised_since_ms,
                    standing_only=True,
                    before_id=before_id,
                    limit=RESTORE_PAGE,
                ),
            ),
            what="reading the standing flags",
            timeout_s=STORE_TIMEOUT_S,
            attempts=math.inf,
        )
        standing += [record.flag for record in page]
        if len(page) < RESTORE_PAGE:
            return standing
        before_id = page[-1].flag_id


async def _follow_clears(
    store: Store, detector: FlagDetector, since_ms: int, applied: dict[int, int]
) -> int:
    """Let the detector raise again what operators cleared (each clear once: `applied` holds
    the flag ids and clear times within the overlap); the time to look from next."""
    now = wall_ms()
    cleared = await call_with_retries(
        functools.partial(store.cleared_flags, since_ms - CLEARS_OVERLAP_MS),
        what="reading the cleared flags",
        timeout_s=STORE_TIMEOUT_S,
        attempts=math.inf,
    )
    for record in cleared:
        if record.flag_id not in applied and record.cleared_at_ms is not None:
            applied[record.flag_id] = record.cleared_at_ms
            detector.clear(record.flag.kind, record.flag.subject)
    for flag_id, cleared_at_ms in list(applied.items()):
        if cleared_at_ms < since_ms - 2 * CLEARS_OVERLAP_MS:
            del applied[flag_id]
    return now
