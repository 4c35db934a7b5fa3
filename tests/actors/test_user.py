"""The user actor's rules, exhaustively, through its inbox.

Its clock is each envelope's `received_at_ms`, so these tests choose the timestamps and need no
clock at all. The store is a small in-test class with the one method the actor calls.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from scoreboard.actors import user
from scoreboard.actors.messages import Barrier, Route, Score, ScorerMsg, UserMsg
from scoreboard.adapters.interfaces import BackendUnavailable, Delivery
from scoreboard.catalogue import Catalogue, load_catalogue
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, ActionStatus, Decision, RecentAction
from tests.actors.scorer_side import answering_barriers

USER_ID = 7
T0 = 1_764_500_000_000  # ms
# The limits and timing are tested on their own: the catalogue's rules (tests/actors/test_rules.py)
# would refuse most of these repeated actions first.
CATALOGUE = Catalogue(
    {
        name: dataclasses.replace(entry, unique=(), ranges=(), max_age_s=None)
        for name, entry in load_catalogue(
            Path(__file__).resolve().parents[2] / "config" / "actions.toml"
        ).types.items()
    }
)


@dataclass
class RecentActions:
    """The store, as far as the user actor uses it: the user's stored recent actions."""

    stored: list[RecentAction] = field(default_factory=list)
    calls: list[tuple[int, int]] = field(default_factory=list)

    async def recent_actions(self, user_id: int, since_ms: int) -> list[RecentAction]:
        await trio.lowlevel.checkpoint()
        self.calls.append((user_id, since_ms))
        return sorted(
            (a for a in self.stored if a.received_at_ms >= since_ms), key=lambda a: a.received_at_ms
        )

    def add(
        self,
        at_ms: int,
        action_type: str = "complete_task",
        status: ActionStatus = "completed",
        *,
        nonce: str | None = None,
    ) -> uuid.UUID:
        action_id = uuid.uuid4()
        self.stored.append(
            RecentAction(action_id, nonce or uuid.uuid4().hex, action_type, at_ms, status)
        )
        return action_id


def envelope(
    at_ms: int,
    action_type: str = "complete_task",
    *,
    data: dict[str, Any] | None = None,
    action_id: uuid.UUID | None = None,
    nonce: str | None = None,
) -> ActionEnvelope:
    if data is None:
        data = default_data(action_type, at_ms)
    return ActionEnvelope(
        action_id=action_id or uuid.uuid4(),
        user_id=USER_ID,
        action_type=action_type,
        action_data=data,
        nonce=nonce or uuid.uuid4().hex,
        received_at_ms=at_ms,
    )


def default_data(action_type: str, at_ms: int) -> dict[str, Any]:
    match action_type:
        case "complete_task":
            return {"task_id": "t-1", "completion_time": at_ms // 1000}
        case "win_match":
            return {"match_id": "m-1", "opponent_id": "u-2"}
        case "daily_login":
            return {"day": "2025-11-30"}
        case "collect_item":
            return {"item_id": "gem", "quantity": 1}
    return {}


def delivery(tag: int) -> Delivery:
    return Delivery(delivery_tag=tag, channel_id=1, body=b"", message_id=None, redelivered=False)


@dataclass
class UserActor:
    inbox: trio.MemorySendChannel[UserMsg]
    decisions: trio.MemoryReceiveChannel[ScorerMsg]
    store: RecentActions
    sent: int = 0

    async def decide(self, *envelopes: ActionEnvelope) -> list[Decision]:
        out = []
        for item in envelopes:
            self.sent += 1
            await self.inbox.send(Route(item, delivery(self.sent)))
            with trio.fail_after(5):
                score = await answering_barriers(self.decisions)
            assert score.delivery.delivery_tag == self.sent
            out.append(score.decision)
        return out

    async def one(self, item: ActionEnvelope) -> Decision:
        (decision,) = await self.decide(item)
        return decision


def config(**limits: Any) -> Config:
    return Config().replace(limits=limits) if limits else Config()


@asynccontextmanager
async def start_user(
    store: RecentActions, cfg: Config, catalogue: Catalogue = CATALOGUE
) -> AsyncIterator[UserActor]:
    inbox_send, inbox_receive = trio.open_memory_channel[UserMsg](16)
    scores_send, scores_receive = trio.open_memory_channel[ScorerMsg](16)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                user.run,
                inbox_receive,
                scores_send,
                user_id=USER_ID,
                store=store,  # type: ignore[arg-type]
                catalogue=catalogue,
                config=cfg,
            )
        )
        with inbox_send:
            yield UserActor(inbox_send, scores_receive, store)


@pytest.fixture
def store() -> RecentActions:
    return RecentActions()


@pytest.fixture
def cfg() -> Config:
    return config()


@pytest.fixture
async def actor(store: RecentActions, cfg: Config) -> AsyncIterator[UserActor]:
    async with start_user(store, cfg) as started:
        yield started


def completed(decision: Decision, points: int = 10) -> bool:
    return (
        decision.outcome.status == "completed"
        and decision.outcome.score_delta == points
        and decision.outcome.error is None
    )


def rate_limited(decision: Decision, retry_after_s: int) -> bool:
    return (
        decision.outcome.status == "rejected"
        and decision.outcome.error == "rate_limit_exceeded"
        and decision.outcome.score_delta == 0
        and decision.outcome.retry_after_s == retry_after_s
    )


def invalid(decision: Decision, message: str) -> bool:
    return (
        decision.outcome.status == "rejected"
        and decision.outcome.error == "invalid_action"
        and decision.outcome.score_delta == 0
        and decision.outcome.message == message
        and decision.outcome.retry_after_s is None
    )


# Scoring and preconditions.


async def test_an_action_completes_for_the_catalogues_points(actor: UserActor) -> None:
    decisions = await actor.decide(
        envelope(T0), envelope(T0 + 2000, "win_match"), envelope(T0 + 4000, "collect_item")
    )
    assert [d.outcome.score_delta for d in decisions] == [10, 25, 2]
    assert all(d.outcome.status == "completed" and d.flags == () for d in decisions)


async def test_an_unknown_action_type_is_invalid(actor: UserActor) -> None:
    decision = await actor.one(envelope(T0, "fly_to_the_moon", data={}))
    assert invalid(decision, "unknown action_type 'fly_to_the_moon'")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"task_id": "t-1"}, "action_data.completion_time is required"),
        (
            {"task_id": "t-1", "completion_time": T0 // 1000, "bonus": 5},
            "unknown action_data field(s): bonus",
        ),
        (
            {"task_id": "", "completion_time": T0 // 1000},
            "action_data.task_id must be a string of 1 to 200 characters",
        ),
        (
            {"task_id": "t-1", "completion_time": "soon"},
            "action_data.completion_time must be an integer",
        ),
        (
            {"task_id": "t-1", "completion_time": True},
            "action_data.completion_time must be an integer",
        ),
    ],
)
async def test_action_data_must_match_the_catalogue(
    actor: UserActor, data: dict[str, Any], message: str
) -> None:
    assert invalid(await actor.one(envelope(T0, data=data)), message)


async def test_a_completion_time_more_than_30_s_after_acceptance_is_in_the_future(
    actor: UserActor,
) -> None:
    at_limit, past_limit = await actor.decide(
        envelope(T0, data={"task_id": "t-1", "completion_time": T0 // 1000 + 30}),
        envelope(
            T0 + 10_000, data={"task_id": "t-2", "completion_time": (T0 + 10_000) // 1000 + 31}
        ),
    )
    assert completed(at_limit)
    assert invalid(past_limit, "completion_time is in the future")
    assert user.IMPOSSIBLE_TIMING in past_limit.flags


async def test_a_completion_time_older_than_the_message_ttl_is_scored_and_flagged(
    actor: UserActor,
) -> None:
    ttl_s = Config().amqp.message_ttl_ms // 1000
    at_limit, past_limit = await actor.decide(
        envelope(T0, data={"task_id": "t-1", "completion_time": T0 // 1000 - ttl_s}),
        envelope(
            T0 + 10_000,
            data={"task_id": "t-2", "completion_time": (T0 + 10_000) // 1000 - ttl_s - 1},
        ),
    )
    assert completed(at_limit)
    assert at_limit.flags == ()
    assert completed(past_limit)
    assert past_limit.flags == (user.STALE_TIMING,)


async def test_actions_under_a_second_apart_are_flagged_rapid_fire_whatever_their_fate(
    actor: UserActor,
) -> None:
    first, close, spaced, invalid_and_close = await actor.decide(
        envelope(T0),
        envelope(T0 + 999, "win_match"),
        envelope(T0 + 1999, "daily_login"),
        envelope(T0 + 2500, "no_such_type", data={}),
    )
    assert first.flags == ()
    assert completed(close, 25)
    assert close.flags == (user.RAPID_FIRE,)
    assert spaced.flags == ()
    assert invalid_and_close.flags == (user.RAPID_FIRE,)


# Cooldowns.


async def test_a_second_action_of_a_type_within_its_cooldown_is_rate_limited(
    actor: UserActor,
) -> None:
    decisions = await actor.decide(
        envelope(T0),
        envelope(T0 + 1_000),  # 4 s left
        envelope(T0 + 1_800),  # 3.2 s left: rounded up
        envelope(T0 + 4_999),  # 1 ms left: at least one second
        envelope(T0 + 5_000),  # the cooldown has passed
    )
    assert completed(decisions[0])
    assert rate_limited(decisions[1], 4)
    assert rate_limited(decisions[2], 4)
    assert rate_limited(decisions[3], 1)
    assert completed(decisions[4])


async def test_the_cooldown_counts_from_the_last_completed_action_not_a_rejected_one(
    actor: UserActor,
) -> None:
    decisions = await actor.decide(
        envelope(T0),
        envelope(T0 + 4_000),  # rejected: does not restart the cooldown
        envelope(T0 + 5_000),
    )
    assert rate_limited(decisions[1], 1)
    assert completed(decisions[2])


async def test_cooldowns_are_per_action_type(actor: UserActor) -> None:
    decisions = await actor.decide(
        envelope(T0, "complete_task"),
        envelope(T0 + 1_000, "win_match"),
        envelope(T0 + 2_000, "daily_login"),
        envelope(T0 + 3_000, "collect_item"),
        envelope(T0 + 3_500, "win_match"),
    )
    assert [d.outcome.status for d in decisions] == ["completed"] * 4 + ["rejected"]
    assert rate_limited(decisions[4], 3)


async def test_an_invalid_action_does_not_start_a_cooldown(actor: UserActor) -> None:
    bad = {"task_id": "t-1", "completion_time": T0 // 1000 + 3600}
    decisions = await actor.decide(envelope(T0, data=bad), envelope(T0 + 1_000))
    assert invalid(decisions[0], "completion_time is in the future")
    assert completed(decisions[1])


async def test_a_cooldown_longer_than_a_minute_is_remembered_across_a_restart(
    store: RecentActions,
) -> None:
    slow = Catalogue(
        {
            "weekly_quest": dataclasses.replace(
                CATALOGUE.types["daily_login"], name="weekly_quest", cooldown_s=300.0
            )
        }
    )
    store.add(T0 - 200_000, "weekly_quest")
    async with start_user(store, config(), slow) as actor:
        decision = await actor.one(envelope(T0, "weekly_quest", data={"day": "2025-11-30"}))
        assert rate_limited(decision, 100)
        assert store.calls == [(USER_ID, T0 - 300_000)]


# The per-user limit: at most 10 completed actions in any 60 s window.


def ten_in_a_minute() -> list[ActionEnvelope]:
    """Ten actions 6 s apart (beyond the 5 s cooldown): T0, T0+6 s, … T0+54 s."""
    return [envelope(T0 + n * 6_000) for n in range(10)]


async def test_the_eleventh_completed_action_in_a_minute_is_rate_limited(actor: UserActor) -> None:
    decisions = await actor.decide(*ten_in_a_minute())
    assert all(completed(d) for d in decisions)
    eleventh = await actor.one(envelope(T0 + 59_999, "win_match"))
    # The oldest of the ten leaves the window at T0 + 60 s.
    assert rate_limited(eleventh, 1)


async def test_the_window_slides(actor: UserActor) -> None:
    await actor.decide(*ten_in_a_minute())
    at_60 = await actor.one(envelope(T0 + 60_000, "win_match"))
    assert completed(at_60, 25)  # T0 is out: (T0, T0 + 60 s] holds 9 + this one
    at_61 = await actor.one(envelope(T0 + 61_000, "daily_login"))
    # (T0 + 1 s, T0 + 61 s] holds 10 already; the one at T0 + 6 s leaves at T0 + 66 s.
    assert rate_limited(at_61, 5)
    at_66 = await actor.one(envelope(T0 + 66_000, "daily_login"))
    assert completed(at_66, 5)


async def test_rejected_actions_do_not_count_toward_the_limit(actor: UserActor) -> None:
    decisions = await actor.decide(
        envelope(T0),
        *(envelope(T0 + 100 * n, "no_such_type", data={}) for n in range(1, 20)),
        *(envelope(T0 + 2_100 + 500 * n) for n in range(5)),  # all within complete_task's cooldown
    )
    assert sum(d.outcome.status == "completed" for d in decisions) == 1
    rest = await actor.decide(*(envelope(T0 + 6_000 * n) for n in range(1, 10)))
    assert all(completed(d) for d in rest)  # 10 completed in all


async def test_the_configured_limit_applies(store: RecentActions) -> None:
    async with start_user(store, config(user_actions_per_minute=3)) as actor:
        decisions = await actor.decide(
            envelope(T0, "complete_task"),
            envelope(T0 + 1_000, "win_match"),
            envelope(T0 + 2_000, "daily_login"),
            envelope(T0 + 3_000, "collect_item"),
        )
        assert [d.outcome.status for d in decisions] == ["completed"] * 3 + ["rejected"]
        assert rate_limited(decisions[3], 57)


async def test_an_action_received_before_later_ones_counts_them_too(actor: UserActor) -> None:
    """A retried action comes back after younger ones; the window holds whichever way."""
    later = [envelope(T0 + 10_000 + n * 6_000) for n in range(10)]  # T0+10 s … T0+64 s
    assert all(completed(d) for d in await actor.decide(*later))
    early = await actor.one(envelope(T0, "win_match"))
    # [T0, T0+60 s) would hold it and nine of the later ones: fine; with one more it would not.
    assert completed(early, 25)
    earlier_still = await actor.one(envelope(T0 + 5_000, "daily_login"))
    assert earlier_still.outcome.status == "rejected"
    assert earlier_still.outcome.error == "rate_limit_exceeded"


async def test_limits_off_admits_everything_but_still_checks_validity(store: RecentActions) -> None:
    async with start_user(store, config(enabled=False)) as actor:
        decisions = await actor.decide(*(envelope(T0 + n) for n in range(50)))
        assert all(completed(d) for d in decisions)
        assert decisions[1].flags == (user.RAPID_FIRE,)
        bad = await actor.one(
            envelope(T0 + 100, data={"task_id": "t", "completion_time": T0 // 1000 + 99})
        )
        assert invalid(bad, "completion_time is in the future")


# Redeliveries and nonces.


async def test_a_redelivery_is_forwarded_as_first_decided_and_not_counted_again(
    actor: UserActor,
) -> None:
    first = envelope(T0)
    decisions = await actor.decide(first, first, dataclasses.replace(first, attempts=1))
    assert all(completed(d) for d in decisions)
    assert decisions[2].envelope.attempts == 1
    rejected = envelope(T0 + 1_000)
    again = await actor.decide(rejected, rejected)
    assert rate_limited(again[0], 4)
    assert again[1] == again[0]
    # Nine more fit in the minute: the redeliveries did not count.
    assert all(
        completed(d) for d in await actor.decide(*(envelope(T0 + 6_000 * n) for n in range(1, 10)))
    )


async def test_the_same_nonce_under_a_new_action_id_is_not_counted_again(actor: UserActor) -> None:
    first = envelope(T0, nonce="nonce-00000001")
    copy = envelope(T0 + 2_000, nonce="nonce-00000001")
    original, duplicate = await actor.decide(first, copy)
    assert completed(original)
    assert duplicate.envelope == copy
    assert completed(duplicate)  # mirrors the first; the store answers with the stored outcome
    assert completed(await actor.one(envelope(T0 + 5_000)))  # no cooldown from the copy


# Restarts: the history comes from the store.


async def test_history_is_loaded_once_from_a_minute_before_the_first_action(
    store: RecentActions, actor: UserActor
) -> None:
    await actor.decide(envelope(T0), envelope(T0 + 6_000), envelope(T0 + 12_000))
    assert store.calls == [(USER_ID, T0 - 60_000)]


async def test_history_is_read_only_once_the_scorer_has_committed_what_it_holds(
    store: RecentActions, actor: UserActor
) -> None:
    """A reaped predecessor's decisions may still wait in the scorer: they must be in the store
    before this actor reads it."""
    await actor.inbox.send(Route(envelope(T0), delivery(1)))
    barrier = await actor.decisions.receive()
    assert isinstance(barrier, Barrier)
    await trio.testing.wait_all_tasks_blocked()
    assert store.calls == []
    barrier.reply.send_nowait(None)
    score = await actor.decisions.receive()
    assert isinstance(score, Score)
    assert store.calls == [(USER_ID, T0 - 60_000)]
    # Only before the first read: a later, older window is read at once.
    await actor.inbox.send(Route(envelope(T0 - 100_000), delivery(2)))
    assert isinstance(await actor.decisions.receive(), Score)
    assert len(store.calls) == 2


async def test_limits_survive_a_restart(store: RecentActions) -> None:
    for n in range(10):
        store.add(T0 - 55_000 + n * 6_000, ["complete_task", "win_match"][n % 2])
    store.add(T0 - 30_000, "daily_login", status="rejected")
    async with start_user(store, config()) as actor:
        over = await actor.one(envelope(T0, "collect_item"))
        assert rate_limited(over, 5)  # the oldest stored one, at T0-55 s, leaves at T0+5 s
        assert completed(await actor.one(envelope(T0 + 5_000, "collect_item")), 2)


async def test_a_cooldown_survives_a_restart(store: RecentActions) -> None:
    store.add(T0 - 2_000, "win_match")
    store.add(T0 - 1_000, "complete_task", status="rejected")
    async with start_user(store, config()) as actor:
        win, task = await actor.decide(envelope(T0, "win_match"), envelope(T0 + 1, "complete_task"))
        assert rate_limited(win, 3)
        assert completed(task)


async def test_a_stored_action_redelivered_after_a_restart_is_not_counted_again(
    store: RecentActions,
) -> None:
    for n in range(9):
        store.add(T0 - 54_000 + n * 6_000)
    last_id = store.add(T0)
    async with start_user(store, config()) as actor:
        redelivered = await actor.one(envelope(T0, action_id=last_id))
        assert redelivered.outcome.status == "completed"
        assert redelivered.envelope.action_id == last_id
        # Ten in the window, counting the redelivered one once; the oldest leaves at T0 + 6 s.
        assert rate_limited(await actor.one(envelope(T0 + 1_000, "win_match")), 5)


async def test_a_stored_nonce_under_a_new_action_id_after_a_restart_is_not_counted_again(
    store: RecentActions,
) -> None:
    store.add(T0, nonce="nonce-00000001")
    async with start_user(store, config()) as actor:
        # Past the stored action's cooldown: judged afresh, the copy would complete and start one.
        copy = envelope(T0 + 6_000, nonce="nonce-00000001")
        duplicate = await actor.one(copy)
        assert duplicate.envelope == copy
        assert completed(duplicate)  # as the stored one was; the store answers for it
        assert completed(await actor.one(envelope(T0 + 8_000)))  # no cooldown from the copy


async def test_an_action_older_than_the_loaded_history_loads_more(store: RecentActions) -> None:
    store.add(T0 - 100_000, "win_match")
    async with start_user(store, config()) as actor:
        assert completed(await actor.one(envelope(T0)))
        # A retried action from before the loaded window: its own neighbourhood is loaded.
        retried = await actor.one(envelope(T0 - 98_000, "win_match"))
        assert rate_limited(retried, 3)
        assert store.calls == [(USER_ID, T0 - 60_000), (USER_ID, T0 - 158_000)]


async def test_a_store_that_does_not_answer_holds_the_action_until_it_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Flaky(RecentActions):
        down_for = 4

        async def recent_actions(self, user_id: int, since_ms: int) -> list[RecentAction]:
            await trio.lowlevel.checkpoint()
            if self.down_for:
                self.down_for -= 1
                raise BackendUnavailable("postgres: connection refused")
            return await super().recent_actions(user_id, since_ms)

    flaky = Flaky()
    async with start_user(flaky, config()) as actor:
        # An outage is no reason to crash (a restart would only find the store down again).
        assert completed(await actor.one(envelope(T0)))
    assert flaky.down_for == 0


async def test_a_failed_action_that_comes_again_is_judged_afresh(store: RecentActions) -> None:
    failed_id = store.add(T0, status="failed")  # the store refused it; an operator replays it
    async with start_user(store, config()) as actor:
        replayed = await actor.one(envelope(T0, action_id=failed_id))
        assert completed(replayed)
        assert replayed.envelope.action_id == failed_id
        # And it counts from now on: its cooldown holds the next one.
        assert rate_limited(await actor.one(envelope(T0 + 1_000)), 4)
