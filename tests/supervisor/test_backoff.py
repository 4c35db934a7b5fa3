"""Restart delays: exponential ceilings, jitter within bounds."""

from __future__ import annotations

import random

import pytest

from scoreboard.supervisor import Jitter, backoff_delay


@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_delays_stay_between_minimum_and_a_doubling_ceiling(jitter: Jitter) -> None:
    rng = random.Random(1)
    for attempt in range(20):
        ceiling = min(10.0, 0.1 * 2**attempt)
        for _ in range(200):
            delay = backoff_delay(attempt, minimum=0.1, maximum=10.0, jitter=jitter, rng=rng)
            assert 0.1 <= delay <= ceiling


def test_equal_jitter_keeps_at_least_half_the_ceiling() -> None:
    rng = random.Random(2)
    delays = [
        backoff_delay(10, minimum=0.1, maximum=10.0, jitter="equal", rng=rng) for _ in range(500)
    ]
    assert min(delays) >= 5.0
    assert max(delays) <= 10.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(3)
    delays = [
        backoff_delay(10, minimum=0.1, maximum=10.0, jitter="full", rng=rng) for _ in range(500)
    ]
    assert min(delays) < 1.0
    assert max(delays) > 9.0


def test_the_same_seed_gives_the_same_delays() -> None:
    def draw(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [
            backoff_delay(n, minimum=0.1, maximum=10.0, jitter="full", rng=rng) for n in range(8)
        ]

    assert draw(42) == draw(42)


def test_huge_attempt_counts_do_not_overflow() -> None:
    delay = backoff_delay(10_000, minimum=0.1, maximum=10.0, jitter="full", rng=random.Random(4))
    assert 0.1 <= delay <= 10.0


def test_zero_minimum_means_no_delay() -> None:
    assert backoff_delay(5, minimum=0.0, maximum=10.0, jitter="full", rng=random.Random(5)) == 0.0
