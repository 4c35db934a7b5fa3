"""Attempt windows and failure delays of the edge guard (`EdgeGuard.count_attempts`,
`admit_after_failures`) in Redis; the same tests run against the in-memory guard in
test_embedded_attempts.py."""

from __future__ import annotations

from typing import Any

from scoreboard.adapters.interfaces import FailureDelay
from scoreboard.adapters.redis import edge_prefixes
from tests.adapters.test_redis import T0, backend, raw

__all__ = ["backend", "raw"]

DELAY = FailureDelay(free_failures=2, max_delay_ms=8000, forget_after_ms=600_000)


async def test_attempts_are_a_sliding_minute_per_key(backend: Any) -> None:
    guard = backend.guard
    waits = [
        await guard.count_attempts([("login:ip:1", 3)], now_ms=T0 + n * 1000) for n in range(4)
    ]
    assert waits == [0, 0, 0, 57]
    assert await guard.count_attempts([("login:ip:2", 3)], now_ms=T0 + 4000) == 0
    # The first attempt leaves the window a minute after it was made.
    assert await guard.count_attempts([("login:ip:1", 3)], now_ms=T0 + 60_000) == 0
    assert await guard.count_attempts([("login:ip:1", 3)], now_ms=T0 + 60_001) == 1


async def test_a_refused_attempt_is_not_counted(backend: Any) -> None:
    guard = backend.guard
    for _ in range(2):
        assert await guard.count_attempts([("token:client:x", 2)], now_ms=T0) == 0
    for _ in range(5):
        assert await guard.count_attempts([("token:client:x", 2)], now_ms=T0) == 60
    assert await guard.count_attempts([("token:client:x", 2)], now_ms=T0 + 60_000) == 0


async def test_an_attempt_one_key_refuses_is_counted_in_no_other(backend: Any) -> None:
    guard = backend.guard
    both = [("register:ip:a", 2), ("register:all", 3)]
    assert [await guard.count_attempts(both, now_ms=T0) for _ in range(2)] == [0, 0]
    # Address a is full: its next hundred attempts leave the shared window alone.
    for _ in range(100):
        assert await guard.count_attempts(both, now_ms=T0 + 1000) == 59
    other = [("register:ip:b", 2), ("register:all", 3)]
    assert await guard.count_attempts(other, now_ms=T0 + 2000) == 0
    # Now the shared window is full: b is refused by it, and b's own window does not count it.
    assert await guard.count_attempts(other, now_ms=T0 + 3000) == 57
    assert await guard.count_attempts([("register:ip:b", 2)], now_ms=T0 + 3000) == 0


async def test_no_limits_admit_everything(backend: Any) -> None:
    assert await backend.guard.count_attempts([], now_ms=T0) == 0


async def test_failures_beyond_the_free_ones_double_the_wait_up_to_the_maximum(
    backend: Any,
) -> None:
    guard = backend.guard
    now = T0
    waits = []
    for _ in range(8):
        wait = await guard.admit_after_failures("login:u:ip", now_ms=now, delay=DELAY)
        waits.append(wait)
        if wait:
            now += wait * 1000
            assert await guard.admit_after_failures("login:u:ip", now_ms=now, delay=DELAY) == 0
    # Two free failures, then 1, 2, 4 s, and the 8 s maximum from then on.
    assert waits == [0, 0, 1, 2, 4, 8, 8, 8]
    # Another pair is not held back.
    assert await guard.admit_after_failures("login:u:other-ip", now_ms=now, delay=DELAY) == 0


async def test_a_refused_attempt_is_not_a_failure(backend: Any) -> None:
    guard = backend.guard
    for _ in range(2):
        await guard.admit_after_failures("login:r:ip", now_ms=T0, delay=DELAY)
    for _ in range(20):
        assert await guard.admit_after_failures("login:r:ip", now_ms=T0, delay=DELAY) == 1
    # One second on, the third failure may happen; the twenty refusals did not lengthen it.
    assert await guard.admit_after_failures("login:r:ip", now_ms=T0 + 1000, delay=DELAY) == 0


async def test_forgetting_failures_lifts_the_delay(backend: Any) -> None:
    guard = backend.guard
    for _ in range(3):
        await guard.admit_after_failures("login:v:ip", now_ms=T0, delay=DELAY)
    assert await guard.admit_after_failures("login:v:ip", now_ms=T0, delay=DELAY) > 0
    await guard.forget_failures("login:v:ip")
    assert await guard.admit_after_failures("login:v:ip", now_ms=T0, delay=DELAY) == 0
    await guard.forget_failures("login:never-failed:ip")


async def test_redis_forgets_failures_by_expiry(backend: Any, raw: Any, redis_prefix: str) -> None:
    await backend.guard.admit_after_failures("login:x:ip", now_ms=T0, delay=DELAY)
    ttl_ms = raw.pttl(f"{edge_prefixes(redis_prefix)[1]}failures:login:x:ip")
    assert 0 < ttl_ms <= DELAY.forget_after_ms
