"""The scorer's logic, through its inbox, with small in-test classes for the two protocol
methods it calls (`commit_actions`, `fail_action`) and the one it settles with (`settle`).
The same behaviour against the real PostgreSQL and RabbitMQ is in test_pipeline.py."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import pytest
import trio
import trio.testing

from scoreboard.actors import flags, scorer
from scoreboard.actors.messages import Barrier, Committed, KeeperMsg, Score, ScorerMsg, Unjudged
from scoreboard.adapters.interfaces import BackendUnavailable, Delivery, UnknownUser
from scoreboard.catalogue import configured_catalogue
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, CommitResult, Decision, Outcome

T0 = 1_764_500_000_000


def score(tag: int, user_id: int = 1, attempts: int = 0) -> Score:
    envelope = ActionEnvelope(
        action_id=uuid.uuid4(),
        user_id=user_id,
        action_type="daily_login",
        action_data={"day": f"day-{tag}"},
        nonce=f"nonce-{tag:08d}",
        received_at_ms=T0 + tag,
        attempts=attempts,
    )
    return Score(Decision(envelope, Outcome("completed", 5)), Delivery(tag, 1, b"", None, False))


def result_of(decision: Decision) -> CommitResult:
    envelope = decision.envelope
    return CommitResult(
        action_id=envelope.action_id,
        user_id=envelope.user_id,
        username=f"user{envelope.user_id}",
        nonce=envelope.nonce,
        outcome=dataclasses.replace(decision.outcome, new_score=decision.outcome.score_delta),
        old_score=0,
        score_reached_at_ms=T0,
        duplicate=False,
    )


@dataclass
class Ledger:
    """Everything the scorer did, in order: commits, failures recorded, settlements."""

    events: list[tuple[str, object]] = field(default_factory=list)
    unknown_users: frozenset[int] = frozenset()
    poison_days: frozenset[str] = frozenset()
    outages: int = 0
    commit_gate: trio.Event | None = None

    async def commit_actions(self, decisions: Sequence[Decision]) -> list[CommitResult]:
        await trio.lowlevel.checkpoint()
        if self.commit_gate is not None:
            await self.commit_gate.wait()
        if self.outages:
            self.outages -= 1
            raise BackendUnavailable("postgres: connection reset")
        unknown = {d.envelope.user_id for d in decisions} & self.unknown_users
        if unknown:
            raise UnknownUser(unknown)
        if any(d.envelope.action_data["day"] in self.poison_days for d in decisions):
            raise ValueError("invalid byte sequence for encoding UTF8: 0x00")
        self.events.append(("commit", [d.envelope.nonce for d in decisions]))
        return [result_of(d) for d in decisions]

    async def fail_action(self, envelope: ActionEnvelope, reason: str) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append(("fail", envelope.nonce))

    async def settle(
        self,
        *,
        ack: Sequence[Delivery] = (),
        retry: Sequence[tuple[Delivery, ActionEnvelope]] = (),
        dead: Sequence[tuple[Delivery, str]] = (),
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append(
            (
                "settle",
                {
                    "ack": [d.delivery_tag for d in ack],
                    "retry": [d.delivery_tag for d, _ in retry],
                    "dead": [(d.delivery_tag, reason) for d, reason in dead],
                },
            )
        )

    def commits(self) -> list[object]:
        return [what for kind, what in self.events if kind == "commit"]

    def settlements(self) -> list[dict[str, list[object]]]:
        return [what for kind, what in self.events if kind == "settle"]  # type: ignore[misc]


@dataclass
class Scorer:
    inbox: trio.MemorySendChannel[ScorerMsg]
    keeper: trio.MemoryReceiveChannel[KeeperMsg]
    ledger: Ledger


@asynccontextmanager
async def start_scorer(
    ledger: Ledger, max_batch: int = 500, keeper_buffer: int = 100, linger_ms: int = 0
) -> AsyncIterator[Scorer]:
    config = Config().replace(scorer={"max_batch": max_batch, "linger_ms": linger_ms})
    inbox_send, inbox_receive = scorer.open_inbox()
    keeper_send, keeper_receive = trio.open_memory_channel[KeeperMsg](keeper_buffer)
    # Nobody reads the flags inbox here: the scorer drops what does not fit, and goes on.
    flags_send, _flags_receive = flags.open_inbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                scorer.run,
                inbox_receive,
                keeper_send,
                flags_send,
                store=ledger,  # type: ignore[arg-type]
                broker=ledger,  # type: ignore[arg-type]
                config=config,
                catalogue=configured_catalogue(config),
                flag_stats=flags.FlagStats(),
            )
        )
        with inbox_send:
            yield Scorer(inbox_send, keeper_receive, ledger)


async def test_what_waits_during_a_commit_is_the_next_batch_up_to_max_batch() -> None:
    ledger = Ledger(commit_gate=trio.Event())
    async with start_scorer(ledger, max_batch=100) as running:
        running.inbox.send_nowait(score(1))
        await trio.testing.wait_all_tasks_blocked()  # committing [1]
        for tag in range(2, 102):
            running.inbox.send_nowait(score(tag))
        assert ledger.commit_gate is not None
        ledger.commit_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [len(nonces) for nonces in ledger.commits()] == [1, 100]  # type: ignore[arg-type]
        batches = [running.keeper.receive_nowait() for _ in range(2)]
    results = [r for batch in batches if isinstance(batch, Committed) for r in batch.results]
    assert [r.nonce for r in results] == [f"nonce-{tag:08d}" for tag in range(1, 102)]


async def test_many_actions_make_few_transactions() -> None:
    ledger = Ledger()
    async with start_scorer(ledger, max_batch=100) as running:
        async with trio.open_nursery() as producers:
            for producer in range(10):
                tags = range(producer * 100 + 1, producer * 100 + 101)
                producers.start_soon(send_all, running.inbox.clone(), tags)
        await trio.testing.wait_all_tasks_blocked()
    sizes = [len(nonces) for nonces in ledger.commits()]  # type: ignore[arg-type]
    assert sum(sizes) == 1000
    assert max(sizes) <= 100
    assert len(sizes) <= 50, sizes
    acked = [tag for settlement in ledger.settlements() for tag in settlement["ack"]]
    assert sorted(acked) == list(range(1, 1001))  # type: ignore[type-var]


async def send_all(inbox: trio.MemorySendChannel[ScorerMsg], tags: range) -> None:
    with inbox:
        for tag in tags:
            await inbox.send(score(tag))


async def test_a_lone_action_is_committed_at_once() -> None:
    ledger = Ledger()
    async with start_scorer(ledger) as running:
        await running.inbox.send(score(1))
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.commits() == [["nonce-00000001"]]
        assert ledger.settlements() == [{"ack": [1], "retry": [], "dead": []}]


async def test_what_arrives_within_the_linger_joins_the_batch(
    autojump_clock: trio.abc.Clock,
) -> None:
    ledger = Ledger()
    async with start_scorer(ledger, linger_ms=5) as running:
        await running.inbox.send(score(1))
        await trio.sleep(0.004)
        await running.inbox.send(score(2))
        await trio.sleep(0.002)  # the linger is over: 1 and 2 are committed together
        await running.inbox.send(score(3))
        await trio.sleep(0.010)
        assert ledger.commits() == [["nonce-00000001", "nonce-00000002"], ["nonce-00000003"]]
        assert [s["ack"] for s in ledger.settlements()] == [[1, 2], [3]]


async def test_a_full_batch_is_committed_without_lingering(
    autojump_clock: trio.abc.Clock,
) -> None:
    ledger = Ledger()
    async with start_scorer(ledger, max_batch=2, linger_ms=1000) as running:
        started = trio.current_time()
        await running.inbox.send(score(1))
        await running.inbox.send(score(2))
        while not ledger.commits():
            await trio.sleep(0.001)
        assert trio.current_time() - started < 1.0
        assert ledger.commits() == [["nonce-00000001", "nonce-00000002"]]


async def test_deliveries_are_acknowledged_only_after_the_commit() -> None:
    ledger = Ledger(commit_gate=trio.Event())
    async with start_scorer(ledger) as running:
        for tag in (1, 2, 3):
            running.inbox.send_nowait(score(tag))
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.events == []  # the commit is in flight: nothing settled
        assert ledger.commit_gate is not None
        ledger.commit_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        kinds = [kind for kind, _ in ledger.events]
        assert kinds == ["commit", "settle"]
        batch = running.keeper.receive_nowait()
        assert isinstance(batch, Committed)
        assert [r.nonce for r in batch.results] == [
            "nonce-00000001",
            "nonce-00000002",
            "nonce-00000003",
        ]


async def test_the_keeper_has_the_results_before_the_deliveries_are_acknowledged() -> None:
    """So that a scorer dying in between leaves them to be redelivered, and the keeper hears."""
    ledger = Ledger()
    async with start_scorer(ledger, keeper_buffer=0) as running:
        running.inbox.send_nowait(score(1))
        await trio.testing.wait_all_tasks_blocked()
        assert [kind for kind, _ in ledger.events] == ["commit"]
        batch = await running.keeper.receive()
        assert isinstance(batch, Committed)
        await trio.testing.wait_all_tasks_blocked()
        assert [kind for kind, _ in ledger.events] == ["commit", "settle"]


async def test_a_barrier_is_answered_once_what_came_before_it_is_committed() -> None:
    ledger = Ledger(commit_gate=trio.Event())
    reply_send, reply_receive = trio.open_memory_channel[None](1)
    async with start_scorer(ledger) as running:
        running.inbox.send_nowait(score(1))
        running.inbox.send_nowait(Barrier(reply_send))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            reply_receive.receive_nowait()
        assert ledger.commit_gate is not None
        ledger.commit_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [kind for kind, _ in ledger.events] == ["commit", "settle"]
        reply_receive.receive_nowait()


async def test_a_barrier_alone_is_answered_at_once() -> None:
    ledger = Ledger()
    reply_send, reply_receive = trio.open_memory_channel[None](1)
    async with start_scorer(ledger) as running:
        await running.inbox.send(Barrier(reply_send))
        with trio.fail_after(1):
            await reply_receive.receive()
    assert ledger.events == []


async def test_an_outage_holds_the_batch_until_the_store_answers_and_counts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = Ledger(outages=20)
    async with start_scorer(ledger) as running:
        for tag in range(1, 4):
            running.inbox.send_nowait(score(tag))
        await trio.sleep(5)
        assert ledger.events == []  # held: not split, not retried through the broker
        await trio.sleep(60)
        assert ledger.commits() == [["nonce-00000001", "nonce-00000002", "nonce-00000003"]]
        assert ledger.settlements() == [{"ack": [1, 2, 3], "retry": [], "dead": []}]


async def test_actions_of_unknown_users_are_dead_lettered_and_the_rest_committed() -> None:
    ledger = Ledger(unknown_users=frozenset({66}))
    async with start_scorer(ledger) as running:
        for tag, user_id in [(1, 1), (2, 66), (3, 2), (4, 66)]:
            running.inbox.send_nowait(score(tag, user_id))
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.commits() == [["nonce-00000001", "nonce-00000003"]]
        assert ledger.settlements() == [
            {"ack": [1, 3], "retry": [], "dead": [(2, "unknown user 66"), (4, "unknown user 66")]}
        ]
        batch = running.keeper.receive_nowait()
        assert isinstance(batch, Committed)
        assert len(batch.results) == 2


async def test_a_batch_of_unknown_users_only_commits_nothing_and_hands_the_keeper_nothing() -> None:
    ledger = Ledger(unknown_users=frozenset({66}))
    async with start_scorer(ledger) as running:
        await running.inbox.send(score(1, 66))
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.commits() == []
        assert ledger.settlements() == [{"ack": [], "retry": [], "dead": [(1, "unknown user 66")]}]
        with pytest.raises(trio.WouldBlock):
            running.keeper.receive_nowait()


async def test_a_poison_action_is_isolated_and_retried_while_the_rest_commit() -> None:
    ledger = Ledger(poison_days=frozenset({"day-5"}))
    async with start_scorer(ledger) as running:
        for tag in range(1, 9):
            running.inbox.send_nowait(score(tag))
        await trio.testing.wait_all_tasks_blocked()
        committed = sorted(nonce for nonces in ledger.commits() for nonce in nonces)  # type: ignore[attr-defined]
        assert committed == [f"nonce-{tag:08d}" for tag in (1, 2, 3, 4, 6, 7, 8)]
        (settlement,) = ledger.settlements()
        assert sorted(settlement["ack"]) == [1, 2, 3, 4, 6, 7, 8]  # type: ignore[type-var]
        assert settlement["retry"] == [5]
        assert settlement["dead"] == []


async def test_a_poison_action_on_its_last_attempt_is_recorded_failed_and_dead_lettered() -> None:
    ledger = Ledger(poison_days=frozenset({"day-2"}))
    last = Config().amqp.max_attempts - 1
    async with start_scorer(ledger) as running:
        running.inbox.send_nowait(score(1))
        running.inbox.send_nowait(score(2, attempts=last))
        await trio.testing.wait_all_tasks_blocked()
        assert ("fail", "nonce-00000002") in ledger.events
        (settlement,) = ledger.settlements()
        assert settlement["ack"] == [1]
        assert settlement["retry"] == []
        ((tag, reason),) = cast(list[tuple[int, str]], settlement["dead"])
        assert tag == 2
        assert "invalid byte sequence" in reason


async def test_an_unjudged_action_is_retried_then_failed_never_acknowledged() -> None:
    """What a user actor crashed on: settled like an action the store refused."""
    ledger = Ledger()
    last = Config().amqp.max_attempts - 1
    async with start_scorer(ledger) as running:
        for tag, attempts in ((1, 0), (2, last)):
            decided = score(tag, attempts=attempts)
            reason = "its user actor crashed while judging it"
            running.inbox.send_nowait(Unjudged(decided.decision.envelope, decided.delivery, reason))
        running.inbox.send_nowait(score(3))
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.commits() == [["nonce-00000003"]]
        assert ("fail", "nonce-00000002") in ledger.events
        (settlement,) = ledger.settlements()
        assert settlement == {
            "ack": [3],
            "retry": [1],
            "dead": [(2, "its user actor crashed while judging it")],
        }
