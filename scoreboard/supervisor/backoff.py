"""Exponential restart delays with jitter, so crashing siblings do not restart in lockstep."""

from __future__ import annotations

import random
from typing import Literal

Jitter = Literal["full", "equal"]
"""full: uniform over [minimum, ceiling]; equal: half the ceiling fixed, the other half random."""

# 2**64 times any useful minimum is far past any useful maximum; beyond it floats would overflow.
_MAX_DOUBLINGS = 64


def backoff_delay(
    attempt: int, *, minimum: float, maximum: float, jitter: Jitter, rng: random.Random
) -> float:
    """The delay before restart number `attempt` (0 for the first) of one child, in seconds.

    The ceiling doubles with each attempt from `minimum` up to `maximum`; the result always lies
    within [minimum, ceiling].
    """
    ceiling = min(maximum, minimum * 2.0 ** min(attempt, _MAX_DOUBLINGS))
    if jitter == "full":
        return rng.uniform(minimum, ceiling)
    return max(minimum, ceiling / 2 + rng.uniform(0.0, ceiling / 2))
