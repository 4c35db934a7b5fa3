"""Attempt windows and failure delays (test_attempts.py) against the in-memory guard of embedded
mode, and its forgetting by the clock it is given (Redis forgets by key expiry)."""

from __future__ import annotations

from typing import Any

from tests.adapters.test_attempts import (
    DELAY,
    test_a_refused_attempt_is_not_a_failure,
    test_a_refused_attempt_is_not_counted,
    test_an_attempt_one_key_refuses_is_counted_in_no_other,
    test_attempts_are_a_sliding_minute_per_key,
    test_failures_beyond_the_free_ones_double_the_wait_up_to_the_maximum,
    test_forgetting_failures_lifts_the_delay,
    test_no_limits_admit_everything,
)
from tests.adapters.test_embedded_board import backend
from tests.adapters.test_redis import T0

__all__ = [
    "backend",
    "test_a_refused_attempt_is_not_a_failure",
    "test_a_refused_attempt_is_not_counted",
    "test_an_attempt_one_key_refuses_is_counted_in_no_other",
    "test_attempts_are_a_sliding_minute_per_key",
    "test_failures_beyond_the_free_ones_double_the_wait_up_to_the_maximum",
    "test_forgetting_failures_lifts_the_delay",
    "test_no_limits_admit_everything",
]


async def test_failures_are_forgotten_after_a_quiet_while(backend: Any) -> None:
    guard = backend.guard
    for _ in range(4):
        await guard.admit_after_failures("login:w:ip", now_ms=T0, delay=DELAY)
    assert await guard.admit_after_failures("login:w:ip", now_ms=T0, delay=DELAY) > 0
    later = T0 + DELAY.forget_after_ms
    assert await guard.admit_after_failures("login:w:ip", now_ms=later, delay=DELAY) == 0
