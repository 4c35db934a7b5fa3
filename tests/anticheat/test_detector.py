"""The flag detector on streams written by hand: each flag with its evidence, the cases next to
each threshold that must not flag, the cool-off, redeliveries, and the memory bounds.

The detector judges by the decisions' times and takes its clock only to stamp `raised_at_ms`,
so these tests choose every timestamp and need nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scoreboard.anticheat.detector import FlagDetector
from scoreboard.anticheat.records import (
    BurstEvidence,
    DecidedAction,
    Flag,
    GrowthEvidence,
    RegularityEvidence,
    SharedAddressEvidence,
)
from scoreboard.catalogue import load_catalogue
from scoreboard.config import AnticheatConfig
from scoreboard.records import ActionEnvelope, Decision, Outcome

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
SETTINGS = AnticheatConfig()  # the defaults (tests/test_config.py: the same as default.toml)
RAISED_AT = 42
CATALOGUE = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "actions.toml")
_ids = iter(range(1, 10**9))


def attempt(
    user_id: int,
    at_ms: int,
    *,
    action_type: str = "complete_task",
    delta: int = 10,
    ip: str = "198.51.100.7",
    accepted: bool = True,
    claimed_s: int | None = None,
    action_id: uuid.UUID | None = None,
) -> DecidedAction:
    return DecidedAction(
        action_id=action_id or uuid.UUID(int=next(_ids)),
        user_id=user_id,
        action_type=action_type,
        decided_at_ms=at_ms,
        claimed_completion_s=claimed_s,
        score_delta=delta if accepted else 0,
        ip=ip,
        accepted=accepted,
    )


def detector(**changes: Any) -> FlagDetector:
    return FlagDetector(dataclasses.replace(SETTINGS, **changes), clock=lambda: RAISED_AT)


def feed(flags_of: FlagDetector, actions: Iterable[DecidedAction]) -> list[Flag]:
    return [flag for action in actions for flag in flags_of.observe(action)]


def every(period_ms: int, count: int, *, start_ms: int = T0) -> Iterator[int]:
    return (start_ms + n * period_ms for n in range(count))


# Bursts.


def test_a_burst_at_machine_speed_is_flagged_with_its_evidence() -> None:
    types = ["complete_task", "win_match", "collect_item", "daily_login", "complete_task"]
    burst = [
        attempt(
            7,
            T0 + offset,
            action_type=kind,
            accepted=n < 2,
            claimed_s=T0 // 1000 if kind == "complete_task" else None,
        )
        for n, (offset, kind) in enumerate(zip([0, 3, 4, 9, 15], types, strict=True))
    ]
    [flag] = feed(detector(), burst)
    assert flag.kind == "burst"
    assert flag.subject == "user:7"
    assert (flag.user_id, flag.address) == (7, "198.51.100.7")
    assert (flag.window_start_ms, flag.window_end_ms, flag.raised_at_ms) == (T0, T0 + 15, 42)
    assert flag.evidence == BurstEvidence(
        actions=5,
        span_ms=15,
        shortest_gap_ms=1,
        accepted=2,
        action_types=("collect_item", "complete_task", "daily_login", "win_match"),
        claimed_completion_span_s=0,
        threshold_actions=5,
        threshold_window_ms=300,
    )


def test_five_attempts_within_the_window_are_a_burst_and_slower_ones_are_not() -> None:
    assert [f.kind for f in feed(detector(), (attempt(1, t) for t in every(75, 5)))] == ["burst"]
    # 76 ms apart is 304 ms for five: faster than most people click, but not the rule's speed.
    assert feed(detector(), (attempt(1, t) for t in every(76, 5))) == []
    # Four at machine speed are not enough (a person can tap four buttons in a second).
    assert feed(detector(), (attempt(1, t) for t in every(1, 4))) == []


def test_a_redelivered_attempt_counts_once() -> None:
    once = attempt(3, T0)
    again = [dataclasses.replace(once, decided_at_ms=T0 + n) for n in range(10)]
    flags_of = detector()
    assert feed(flags_of, [once, *again]) == []
    assert flags_of.statistics().users == 1


def test_an_attempt_older_than_the_last_counts_as_simultaneous_with_it() -> None:
    # API processes' clocks differ by milliseconds: 100 then 50 is 100 then 100, not -50.
    times = [T0, T0 + 100, T0 + 50, T0 + 150, T0 + 200]
    [flag] = feed(detector(), (attempt(5, t) for t in times))
    assert isinstance(flag.evidence, BurstEvidence)
    assert (flag.evidence.span_ms, flag.evidence.shortest_gap_ms) == (200, 0)


# Regular intervals.


def test_perfectly_regular_intervals_are_flagged_with_their_spread() -> None:
    jitter = [0, 3, -2, 1, 0, -3, 2, 0, 1, -1, 0, 2, -2, 3, 0, -1, 1, 0, -3, 2, 0]
    times = [t + j for t, j in zip(every(7 * SECOND, 21), jitter, strict=True)]
    [flag] = feed(detector(), (attempt(9, t) for t in times))
    assert flag.kind == "regular_intervals"
    assert flag.window_start_ms == times[0]
    assert flag.window_end_ms == times[-1]
    evidence = flag.evidence
    assert isinstance(evidence, RegularityEvidence)
    assert evidence.intervals == 20
    assert evidence.span_ms == times[-1] - times[0]
    assert evidence.mean_interval_ms == pytest.approx(7000, abs=1)
    assert 0 < evidence.stdev_ms < 5
    assert evidence.cv < 0.001
    assert evidence.threshold_cv == 0.01


def test_twenty_intervals_are_needed_and_human_spread_is_not_regular() -> None:
    assert feed(detector(), (attempt(9, t) for t in every(7 * SECOND, 20))) == []
    # A person who clicks the moment a 5 s cooldown ends: ±120 ms reaction time, CV ≈ 0.02.
    reactions = [250, 410, 300, 180, 520, 270, 330, 240, 610, 290, 200, 350, 280, 450, 230]
    times, at = [], T0
    for n in range(25):
        at += 5 * SECOND + reactions[n % len(reactions)]
        times.append(at)
    assert feed(detector(), (attempt(9, t) for t in times)) == []


def test_regular_intervals_stop_counting_after_a_break_longer_than_every_window() -> None:
    flags_of = detector()
    assert feed(flags_of, (attempt(4, t) for t in every(7 * SECOND, 15))) == []
    later = T0 + 3 * HOUR
    # Fifteen before the break and six after would be 20 intervals, but the user was forgotten.
    assert feed(flags_of, (attempt(4, t) for t in every(7 * SECOND, 6, start_ms=later))) == []


# Score growth.


def population(users: int, *, start_ms: int = T0) -> list[DecidedAction]:
    """`users` people, each at an address of their own, gaining 10 points at irregular
    intervals around a pace of their own (one action every 1 to 8 minutes), for two hours."""
    rng = random.Random(users)
    actions = []
    for user_id in range(100, 100 + users):
        pace_ms = (1 + user_id % 8) * MINUTE
        at = start_ms + rng.randrange(pace_ms)
        while at < start_ms + 2 * HOUR:
            actions.append(attempt(user_id, at, ip=f"198.18.0.{user_id % 256}"))
            at += round(pace_ms * rng.uniform(0.3, 1.7))
    return actions


def farmer(user_id: int, *, points: int, start_ms: int = T0) -> list[DecidedAction]:
    """`points` points every 6 to 8 s (never regular), for two hours."""
    times, at = [], start_ms
    gaps = [6000, 7300, 6400, 7900, 6900, 7600, 6100]
    while at < start_ms + 2 * HOUR:
        times.append(at)
        at += gaps[len(times) % len(gaps)]
    return [attempt(user_id, t, action_type="win_match", delta=points) for t in times]


def in_time_order(*streams: list[DecidedAction]) -> list[DecidedAction]:
    return sorted((a for s in streams for a in s), key=lambda a: (a.decided_at_ms, a.user_id))


def test_score_growth_far_above_the_population_is_flagged_with_the_population() -> None:
    flags = feed(detector(), in_time_order(population(60), farmer(7, points=25)))
    assert [(f.kind, f.user_id) for f in flags] == [("score_growth", 7)]
    [flag] = flags
    evidence = flag.evidence
    assert isinstance(evidence, GrowthEvidence)
    assert flag.window_end_ms - flag.window_start_ms == HOUR
    assert evidence.points >= 3000
    assert evidence.population == 61
    # Raised the moment the farmer passes the minimum growth, a quarter of an hour in: the
    # others have gained 10 points per 1 to 8 minutes so far.
    assert evidence.points == 3000
    assert 10 <= evidence.population_median <= 150
    assert evidence.population_mad > 0
    z = (evidence.points - evidence.population_median) / (1.4826 * evidence.population_mad)
    assert evidence.robust_z == pytest.approx(z, abs=0.01)
    assert evidence.robust_z >= evidence.threshold_z == 20
    assert (evidence.threshold_points, evidence.threshold_population) == (3000, 30)
    assert flag.window_start_ms - T0 < evidence.population_as_of_ms <= flag.window_end_ms


def test_a_quiet_server_does_not_flag_its_only_players() -> None:
    # Below the minimum population, however far above the others.
    assert feed(detector(), in_time_order(population(20), farmer(7, points=25))) == []
    # Far above the population, but below the minimum growth: 2 points every 7 s is ~1,000/h.
    assert feed(detector(), in_time_order(population(60), farmer(7, points=2))) == []


def test_a_population_that_all_gained_the_same_still_has_a_scale() -> None:
    same = [attempt(u, T0 + u, ip=f"198.18.0.{u}") for u in range(100, 140)]
    flags = feed(detector(growth_refresh_s=1), [*same, *farmer(7, points=25, start_ms=T0 + MINUTE)])
    [flag] = flags
    assert isinstance(flag.evidence, GrowthEvidence)
    assert flag.evidence.population_mad == 0
    assert flag.evidence.robust_z == flag.evidence.points - flag.evidence.population_median


def test_refused_attempts_add_no_growth() -> None:
    refused = [dataclasses.replace(a, accepted=False, score_delta=0) for a in farmer(7, points=25)]
    flags = feed(detector(regular_max_cv=1e-9), in_time_order(population(60), refused))
    assert flags == []


# Many accounts from one address.


def test_many_accounts_from_one_address_are_flagged_with_the_users() -> None:
    accounts = [attempt(u, T0 + u * MINUTE, ip="203.0.113.9") for u in range(1, 9)]
    [flag] = feed(detector(), accounts)
    assert flag.kind == "shared_address"
    assert (flag.user_id, flag.address, flag.subject) == (
        None,
        "203.0.113.9",
        "address:203.0.113.9",
    )
    assert flag.window_end_ms == T0 + 8 * MINUTE
    assert flag.window_start_ms == flag.window_end_ms - HOUR
    assert flag.evidence == SharedAddressEvidence(
        distinct_users=8, user_ids=(8, 7, 6, 5, 4, 3, 2, 1), threshold_users=8
    )


def test_a_household_and_users_an_hour_apart_are_not_many_accounts() -> None:
    assert feed(detector(), (attempt(u, T0 + u, ip="203.0.113.9") for u in range(1, 8))) == []
    spread = (attempt(u, T0 + u * 9 * MINUTE, ip="203.0.113.9") for u in range(1, 12))
    assert feed(detector(), spread) == []


def test_ipv6_users_count_by_their_64() -> None:
    same_64 = [attempt(u, T0 + u, ip=f"2001:db8:1:2::{u:x}") for u in range(1, 9)]
    [flag] = feed(detector(), same_64)
    assert flag.address == "2001:db8:1:2::/64"
    other_64s = [attempt(u, T0 + u, ip=f"2001:db8:1:{u:x}::1") for u in range(1, 9)]
    assert feed(detector(), other_64s) == []
    mapped = [attempt(u, T0 + u, ip=f"::ffff:203.0.113.{u % 2}") for u in range(1, 17)]
    assert sorted(f.address for f in feed(detector(), mapped)) == ["203.0.113.0", "203.0.113.1"]


# Standing flags.


def metronome(user_id: int, hours: float) -> Iterator[DecidedAction]:
    """2 points every 10 s: regular, and too few points to be a growth flag."""
    count = int(hours * HOUR // (10 * SECOND))
    return (attempt(user_id, t, delta=2) for t in every(10 * SECOND, count))


def test_a_standing_flag_is_not_raised_again_until_its_cool_off_ends() -> None:
    flags = feed(detector(cooloff_s=3600), metronome(1, hours=2.5))
    assert [f.kind for f in flags] == ["regular_intervals"] * 3
    assert [f.window_end_ms - flags[0].window_end_ms for f in flags] == [0, HOUR, 2 * HOUR]


def test_a_cleared_flag_is_raised_again_at_the_next_occurrence() -> None:
    flags_of = detector()
    stream = list(metronome(1, hours=1))
    [first] = feed(flags_of, stream[:25])
    assert feed(flags_of, stream[25:40]) == []
    flags_of.clear("regular_intervals", first.subject)
    [again] = feed(flags_of, stream[40:41])
    assert again.window_end_ms == stream[40].decided_at_ms


def test_restored_flags_stand_after_a_restart() -> None:
    stream = list(metronome(1, hours=1))
    [flag] = feed(detector(), stream[:25])
    restarted = detector()
    restarted.restore([flag])
    assert feed(restarted, stream) == []
    assert restarted.statistics().standing_flags == 1


# Bounds and determinism.


def test_users_and_addresses_beyond_the_caps_are_forgotten_least_recent_first() -> None:
    flags_of = detector(max_users=100, max_addresses=50)
    feed(flags_of, (attempt(u, T0 + u, ip=f"198.18.{u // 256}.{u % 256}") for u in range(1000)))
    statistics = flags_of.statistics()
    assert (statistics.users, statistics.addresses) == (100, 50)


def test_idle_users_and_addresses_are_forgotten_after_every_window() -> None:
    flags_of = detector()
    feed(flags_of, (attempt(u, T0 + u, ip=f"198.18.0.{u}") for u in range(1, 200)))
    assert flags_of.statistics().users == 199
    feed(flags_of, [attempt(1, T0 + HOUR + MINUTE)])
    statistics = flags_of.statistics()
    assert (statistics.users, statistics.addresses) == (1, 1)


def test_the_same_stream_raises_the_same_flags() -> None:
    stream = in_time_order(
        population(60), farmer(7, points=25), list(metronome(8, hours=1)), farmer(9, points=1)
    )
    stream += [attempt(u, T0 + u, ip="203.0.113.50") for u in range(300, 310)]
    first = [f.as_json() for f in feed(detector(), stream)]
    assert first == [f.as_json() for f in feed(detector(), stream)]
    assert {(f["kind"], f["user_id"]) for f in first} == {
        ("score_growth", 7),
        ("regular_intervals", 8),
        ("shared_address", None),
    }


# Records.


def test_a_decision_becomes_a_decided_action_with_its_claimed_completion_time() -> None:
    envelope = ActionEnvelope(
        action_id=uuid.UUID(int=5),
        user_id=3,
        action_type="complete_task",
        action_data={"task_id": "t-1", "completion_time": T0 // 1000 - 2},
        nonce="n-1",
        received_at_ms=T0,
        ip="2001:db8::1",
    )
    completed = DecidedAction.from_decision(Decision(envelope, Outcome("completed", 10)), CATALOGUE)
    assert completed == DecidedAction(
        uuid.UUID(int=5), 3, "complete_task", T0, T0 // 1000 - 2, 10, "2001:db8::1", True
    )
    refused = Decision(
        dataclasses.replace(envelope, action_type="win_match", action_data={}),
        Outcome("rejected", 0, error="rate_limit_exceeded"),
    )
    action = DecidedAction.from_decision(refused, CATALOGUE)
    assert (action.accepted, action.score_delta, action.claimed_completion_s) == (False, 0, None)


def test_a_flag_is_json_with_its_kind_and_evidence() -> None:
    [flag] = feed(detector(), (attempt(1, t, claimed_s=T0 // 1000) for t in every(10, 5)))
    document = json.loads(json.dumps(flag.as_json()))
    assert document == {
        "kind": "burst",
        "user_id": 1,
        "address": "198.51.100.7",
        "window_start_ms": T0,
        "window_end_ms": T0 + 40,
        "raised_at_ms": RAISED_AT,
        "evidence": {
            "actions": 5,
            "span_ms": 40,
            "shortest_gap_ms": 10,
            "accepted": 5,
            "action_types": ["complete_task"],
            "claimed_completion_span_s": 0,
            "threshold_actions": 5,
            "threshold_window_ms": 300,
        },
    }
