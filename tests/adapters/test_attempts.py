"""Login and token-endpoint attempt windows (`EdgeGuard.count_attempt`) in Redis; the same tests
run against the in-memory guard in test_embedded_attempts.py."""

from __future__ import annotations

from typing import Any

from tests.adapters.test_redis import T0, backend

__all__ = ["backend"]


async def test_attempts_are_a_sliding_minute_per_key(backend: Any) -> None:
    guard = backend.guard
    waits = [
        await guard.count_attempt("login:ip:1", limit_per_minute=3, now_ms=T0 + n * 1000)
        for n in range(4)
    ]
    assert waits == [0, 0, 0, 57]
    assert await guard.count_attempt("login:ip:2", limit_per_minute=3, now_ms=T0 + 4000) == 0
    # The first attempt leaves the window a minute after it was made.
    assert await guard.count_attempt("login:ip:1", limit_per_minute=3, now_ms=T0 + 60_000) == 0
    assert await guard.count_attempt("login:ip:1", limit_per_minute=3, now_ms=T0 + 60_001) == 1


async def test_a_refused_attempt_is_not_counted(backend: Any) -> None:
    guard = backend.guard
    for _ in range(2):
        assert await guard.count_attempt("token:client:x", limit_per_minute=2, now_ms=T0) == 0
    for _ in range(5):
        assert await guard.count_attempt("token:client:x", limit_per_minute=2, now_ms=T0) == 60
    assert await guard.count_attempt("token:client:x", limit_per_minute=2, now_ms=T0 + 60_000) == 0
