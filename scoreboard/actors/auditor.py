"""The auditor: the API process's refusals at the edge, written to the audit trail in batches.

A request handler that refuses an action (a 4xx on `POST /api/v1/actions/perform`, a refused
`action` frame on the WebSocket) hands the refusal to `record`, which never waits: it puts the
refusal in the auditor's bounded inbox, or, when the inbox is full (the store is slow or down,
or a flood of refusals outruns it), drops it and counts it in `AuditStats.dropped`. The edge is
never slowed by its own audit trail.

The auditor takes what is waiting, up to `MAX_BATCH`, and appends it with one store call (one
transaction). A store that does not answer is tried again with backoff for up to
`WRITE_PATIENCE_S`; then the batch is dropped and counted, so an outage costs audit rows (and
says how many), never the inbox's bound or a request's time. A batch the store refuses outright
(a bug) is logged, dropped and counted too: the audit trail never takes the API down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from scoreboard import metrics
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.retry import call_with_retries
from scoreboard.records import EdgeRefusal

log = logging.getLogger(__name__)

INBOX_SIZE = 4096  # refusals waiting for the store; past it, new ones are dropped and counted
MAX_BATCH = 512
WRITE_TIMEOUT_S = 5.0
WRITE_PATIENCE_S = 30.0


class RefusalStore(Protocol):
    """What the auditor needs of the `Store`."""

    async def record_edge_refusals(self, refusals: Sequence[EdgeRefusal]) -> None: ...


@dataclass(slots=True)
class AuditStats:
    """What happened to the refusals handed to `record` (also counted in `/metrics`)."""

    recorded: int = 0
    dropped: int = 0

    def add_recorded(self, count: int) -> None:
        self.recorded += count
        metrics.AUDIT_REFUSALS_RECORDED.inc(count)

    def add_dropped(self, count: int) -> None:
        self.dropped += count
        metrics.AUDIT_REFUSALS_DROPPED.inc(count)


@dataclass(frozen=True, slots=True)
class AuditHandle:
    """How request handlers reach the auditor: its inbox and its counters."""

    inbox: trio.MemorySendChannel[EdgeRefusal]
    stats: AuditStats = field(default_factory=AuditStats)


def open_inbox(
    size: int = INBOX_SIZE,
) -> tuple[AuditHandle, trio.MemoryReceiveChannel[EdgeRefusal]]:
    send, receive = trio.open_memory_channel[EdgeRefusal](size)
    return AuditHandle(send), receive


def record(auditor: AuditHandle, refusal: EdgeRefusal) -> None:
    """Hand a refusal to the auditor without waiting; dropped and counted when it cannot take
    it now."""
    try:
        auditor.inbox.send_nowait(refusal)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        auditor.stats.add_dropped(1)


async def run(
    inbox: trio.MemoryReceiveChannel[EdgeRefusal],
    *,
    store: RefusalStore,
    stats: AuditStats,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with inbox:
        task_status.started()
        while True:
            try:
                batch = await inboxes.receive_batch(inbox, MAX_BATCH)
            except trio.EndOfChannel:
                return
            await _write(store, stats, batch)


async def _write(store: RefusalStore, stats: AuditStats, batch: list[EdgeRefusal]) -> None:
    with trio.move_on_after(WRITE_PATIENCE_S):
        try:
            await call_with_retries(
                lambda: store.record_edge_refusals(batch),
                what=f"auditor: recording {len(batch)} refusals",
                timeout_s=WRITE_TIMEOUT_S,
                attempts=math.inf,
            )
        except Exception:
            # The store refused the data itself: a bug to fix, not a reason to stop the edge.
            log.exception("auditor: the store refused %d refusals; they are dropped", len(batch))
            stats.add_dropped(len(batch))
            return
        stats.add_recorded(len(batch))
        return
    stats.add_dropped(len(batch))
    log.warning("auditor: the store did not take %d refusals; they are dropped", len(batch))
