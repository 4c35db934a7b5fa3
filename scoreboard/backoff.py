"""The one backoff policy: delays that double from a minimum up to a maximum, with jitter.

Every loop that waits before trying again uses it: the supervisors' restarts
(`supervisor/supervisor.py`, `supervisor/dynamic.py`, `processes.py`), a backend call that failed
transiently (`actors/retry.py`) and the wait for the backends at start-up (`backends.py`).
Jitter keeps crashing siblings, or processes that lost the same backend at the same moment, from
trying again in lockstep. (The reconnects of the RabbitMQ client are aio-pika's own, at a fixed
interval; the sign-in delays of `FailureDelay` are a limit on a client, not a retry.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "equal"]
"""full: uniform over [minimum, ceiling]; equal: half the ceiling fixed, the other half random."""

# 2**64 times any useful minimum is far past any useful maximum; beyond it floats would overflow.
_MAX_DOUBLINGS = 64


def backoff_delay(
    attempt: int, *, minimum: float, maximum: float, jitter: Jitter, rng: random.Random
) -> float:
    """The delay before try number `attempt` (0 for the first retry), in seconds.

    The ceiling doubles with each attempt from `minimum` up to `maximum`; the result always lies
    within [minimum, ceiling].
    """
    ceiling = min(maximum, minimum * 2.0 ** min(attempt, _MAX_DOUBLINGS))
    if jitter == "full":
        return rng.uniform(minimum, ceiling)
    return max(minimum, ceiling / 2 + rng.uniform(0.0, ceiling / 2))


@dataclass(frozen=True, slots=True)
class Backoff:
    """A backoff policy; `delays()` yields the waits of one run of retries, one per retry."""

    minimum: float
    maximum: float
    jitter: Jitter = "full"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.minimum <= self.maximum:
            raise ValueError(f"need 0 <= minimum <= maximum, got {self.minimum}, {self.maximum}")

    def delay(self, attempt: int) -> float:
        return backoff_delay(
            attempt,
            minimum=self.minimum,
            maximum=self.maximum,
            jitter=self.jitter,
            rng=self.rng,
        )

    def delays(self) -> Iterator[float]:
        attempt = 0
        while True:
            yield self.delay(attempt)
            attempt += 1
