"""The one backoff policy as the retry loops use it: `Backoff.delays()`."""

from __future__ import annotations

import itertools
import random

import pytest

from scoreboard.backoff import Backoff


@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_each_delay_lies_under_a_ceiling_that_doubles_up_to_the_maximum(jitter: str) -> None:
    policy = Backoff(minimum=0.1, maximum=2.0, jitter=jitter, rng=random.Random(7))  # type: ignore[arg-type]
    for attempt, delay in enumerate(itertools.islice(policy.delays(), 12)):
        assert 0.1 <= delay <= min(2.0, 0.1 * 2**attempt)


def test_two_runs_of_one_policy_start_again_from_the_minimum() -> None:
    policy = Backoff(minimum=0.5, maximum=0.5)
    assert list(itertools.islice(policy.delays(), 3)) == [0.5, 0.5, 0.5]
    assert next(policy.delays()) == 0.5


def test_a_policy_whose_minimum_exceeds_its_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="minimum"):
        Backoff(minimum=3.0, maximum=1.0)
