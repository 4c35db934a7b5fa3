"""The flags actor: decisions offered without waiting (a full inbox drops and counts them),
flags stored with their evidence, standing flags restored after a restart, operators' clears
followed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import trio
import trio.testing

from scoreboard.actors import flags
from scoreboard.anticheat.records import DecidedAction, Flag, FlagQuery, FlagRecord
from scoreboard.config import AnticheatConfig

SETTINGS = AnticheatConfig()


@dataclass
class FlagShelf:
    """What the flags actor needs of a store, in memory."""

    records: list[FlagRecord] = field(default_factory=list)
    outage: trio.Event | None = None

    async def add_flags(self, new: list[Flag]) -> list[int]:
        if self.outage is not None:
            await self.outage.wait()
        ids = []
        for flag in new:
            self.records.append(FlagRecord(len(self.records) + 1, flag))
            ids.append(len(self.records))
        return ids

    async def list_flags(self, query: FlagQuery) -> list[FlagRecord]:
        found = [
            record
            for record in reversed(self.records)
            if (not query.standing_only or record.cleared_at_ms is None)
            and (query.before_id is None or record.flag_id < query.before_id)
        ]
        return found[: query.limit]

    async def cleared_flags(self, since_ms: int) -> list[FlagRecord]:
        return [
            r for r in self.records if r.cleared_at_ms is not None and r.cleared_at_ms >= since_ms
        ]

    def clear(self, flag_id: int) -> None:
        record = self.records[flag_id - 1]
        self.records[flag_id - 1] = replace(record, cleared_at_ms=flags.wall_ms(), cleared_by="t")


def attempt(user_id: int, at_ms: int) -> DecidedAction:
    return DecidedAction(uuid.uuid4(), user_id, "win_match", at_ms, None, 25, "203.0.113.9", True)


def burst(user_id: int, start_ms: int) -> list[DecidedAction]:
    return [attempt(user_id, start_ms + 10 * n) for n in range(SETTINGS.burst_actions)]


@asynccontextmanager
async def flags_actor(shelf: FlagShelf, stats: flags.FlagStats) -> AsyncIterator[flags.FlagsHandle]:
    handle, inbox = flags.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: flags.run(
                inbox,
                store=shelf,  # type: ignore[arg-type]
                settings=SETTINGS,
                stats=stats,
                task_status=task_status,
            )
        )
        with handle:
            yield handle
        nursery.cancel_scope.cancel()


async def test_a_burst_is_stored_with_its_evidence() -> None:
    shelf, stats = FlagShelf(), flags.FlagStats()
    async with flags_actor(shelf, stats) as handle:
        flags.observe(handle, stats, burst(7, 1_000_000))
        await trio.testing.wait_all_tasks_blocked()
    [record] = shelf.records
    assert record.flag.kind == "burst"
    assert record.flag.subject == "user:7"
    assert record.flag.evidence.actions == SETTINGS.burst_actions  # type: ignore[union-attr]
    assert (stats.observed, stats.raised, stats.dropped) == (SETTINGS.burst_actions, 1, 0)


async def test_a_full_inbox_drops_and_counts_without_waiting() -> None:
    shelf, stats = FlagShelf(outage=trio.Event()), flags.FlagStats()
    async with flags_actor(shelf, stats) as handle:
        flags.observe(handle, stats, burst(1, 1_000_000))
        await trio.testing.wait_all_tasks_blocked()  # the actor is stuck storing the flag
        for n in range(flags.INBOX_SIZE + 3):
            flags.observe(handle, stats, [attempt(2, 2_000_000 + 1000 * n)])
        assert stats.dropped == 3
        assert shelf.outage is not None
        shelf.outage.set()
        await trio.testing.wait_all_tasks_blocked()
    assert stats.observed == SETTINGS.burst_actions + flags.INBOX_SIZE


async def test_standing_flags_stand_after_a_restart_and_a_clear_lets_them_rise_again() -> None:
    shelf, stats = FlagShelf(), flags.FlagStats()
    now = flags.wall_ms()
    async with flags_actor(shelf, stats) as handle:
        flags.observe(handle, stats, burst(5, now))
        await trio.testing.wait_all_tasks_blocked()
    assert len(shelf.records) == 1

    async with flags_actor(shelf, stats) as handle:
        flags.observe(handle, stats, burst(5, now + 10_000))
        await trio.testing.wait_all_tasks_blocked()
        assert len(shelf.records) == 1  # restored: it still stands

        shelf.clear(1)
        with trio.fail_after(flags.CLEARS_EVERY_S * 3):
            while True:
                flags.observe(handle, stats, burst(5, flags.wall_ms() + 20_000))
                await trio.testing.wait_all_tasks_blocked()
                if len(shelf.records) == 2:
                    break
                await trio.sleep(0.2)
    assert shelf.records[1].flag.subject == "user:5"
