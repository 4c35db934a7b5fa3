"""The wall clock, read in one place.

Every wall-clock time the server stamps or compares (acceptance times, token and code expiry,
revocations, sweeps, `started_at` in the statistics) comes from `now_ms()` or `now_s()`, so a
test can freeze or move it for all of them at once with `frozen(...)`. Deadlines and timeouts
are not wall-clock times: they use trio's monotonic clock (`trio.current_time()`,
`fail_after`), which a jump of the system clock cannot shorten or stretch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

_source: Callable[[], int] = time.time_ns


def now_ms() -> int:
    """Unix time in whole milliseconds."""
    return _source() // 1_000_000


def now_s() -> float:
    """Unix time in seconds."""
    return _source() / 1_000_000_000


class FrozenClock:
    """A clock that stands still until moved: what `now_ms()` answers inside `frozen(...)`."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def advance(self, seconds: float) -> None:
        self.at_ms += round(seconds * 1000)

    def _ns(self) -> int:
        return self.at_ms * 1_000_000


@contextlib.contextmanager
def frozen(at_ms: int) -> Iterator[FrozenClock]:
    """Stop the clock at `at_ms` (Unix milliseconds) for the block; for tests. Not nestable
    across threads that need the real time meanwhile: the whole process sees the frozen clock."""
    global _source
    clock = FrozenClock(at_ms)
    previous, _source = _source, clock._ns
    try:
        yield clock
    finally:
        _source = previous
