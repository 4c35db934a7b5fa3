"""The auditor: refusals handed to it never wait, are written in batches, and are dropped and
counted (never blocking) when its inbox is full or the store does not take them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import trio

from scoreboard.actors import auditor
from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.sqlite import SQLiteStore, open_sqlite
from scoreboard.records import EdgeRefusal


def refusal(n: int, user_id: int | None = None) -> EdgeRefusal:
    return EdgeRefusal(
        user_id=user_id,
        action_type="complete_task",
        nonce=f"nonce-{n:06d}",
        channel="http",
        status_code=400,
        error="invalid_request",
        message="missing field(s): task_id",
        ip="203.0.113.7",
        user_agent="pytest\x00",  # what no PostgreSQL text holds is mended, not refused
        headers={"origin": "https://evil.example"},
        refused_at_ms=1_764_500_000_000 + n,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with open_sqlite(tmp_path / "var", load_sqlite_migrations()) as database:
        yield SQLiteStore(database)


async def test_refusals_are_written_in_batches_to_the_trail(
    store: SQLiteStore, nursery: trio.Nursery
) -> None:
    user_id = await store.create_user("ada", "ada@example.test", "hash")
    handle, inbox = auditor.open_inbox()
    for n in range(1_000):
        auditor.record(handle, refusal(n, user_id))
    await nursery.start(
        lambda task_status: auditor.run(
            inbox, store=store, stats=handle.stats, task_status=task_status
        )
    )
    with trio.fail_after(30):
        while handle.stats.recorded < 1_000:
            await trio.sleep(0.01)
    assert handle.stats.dropped == 0
    entries = await store.audit_trail(user_id, since_ms=0, before=None, limit=2_000)
    assert len(entries) == 1_000
    assert entries[0].nonce == "nonce-000999"
    assert entries[0].user_agent == "pytest\ufffd"
    assert dict(entries[0].headers) == {"origin": "https://evil.example"}


async def test_a_full_inbox_drops_and_counts_without_waiting() -> None:
    handle, _inbox = auditor.open_inbox(size=3)
    for n in range(10):
        auditor.record(handle, refusal(n))  # synchronous: a handler never waits on it
    assert (handle.stats.dropped, handle.stats.recorded) == (7, 0)


class DownStore:
    """A store that does not answer until `back` is set."""

    def __init__(self) -> None:
        self.back = False
        self.written: list[EdgeRefusal] = []

    async def record_edge_refusals(self, refusals: Sequence[EdgeRefusal]) -> None:
        if not self.back:
            raise BackendUnavailable("down")
        self.written.extend(refusals)


async def test_a_store_that_does_not_answer_costs_the_batch_never_the_actor(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    down = DownStore()
    handle, inbox = auditor.open_inbox(size=4)
    await nursery.start(
        lambda task_status: auditor.run(
            inbox,
            store=down,
            stats=handle.stats,
            task_status=task_status,
        )
    )
    auditor.record(handle, refusal(1))
    await trio.sleep(1)  # the actor holds that one, retrying; the inbox fills behind it
    for n in range(2, 12):
        auditor.record(handle, refusal(n))
    assert handle.stats.dropped == 6  # 4 wait in the inbox, the other 6 did not fit
    await trio.sleep(auditor.WRITE_PATIENCE_S)
    assert handle.stats.dropped == 7  # the first batch given up on
    down.back = True
    await trio.sleep(auditor.WRITE_PATIENCE_S)
    assert [r.nonce for r in down.written] == [f"nonce-{n:06d}" for n in range(2, 6)]
    assert (handle.stats.recorded, handle.stats.dropped) == (4, 7)
