"""Retrying a backend call that failed transiently, with the backoff policy
(`scoreboard/backoff.py`).

A backend that did not answer (`BackendUnavailable`) or did not answer in time (the call site's
`fail_after`) may answer the next time, and so may a call that says it is safe to repeat (e.g.
`Broker.settle` after `PublishFailed`); anything else is a real error and propagates at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.backoff import Backoff

T = TypeVar("T")
log = logging.getLogger(__name__)

# A backend that is back is used again within 2 s.
RETRY_BACKOFF = Backoff(minimum=0.1, maximum=2.0)


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout_s: float,
    attempts: float,
    also_retry: tuple[type[Exception], ...] = (),
) -> T:
    """`await call()` within `timeout_s`, up to `attempts` times (`math.inf`: until it works);
    the last transient failure propagates. `also_retry`: more exceptions that are transient."""
    transient: tuple[type[Exception], ...] = (BackendUnavailable, trio.TooSlowError, *also_retry)
    delays = RETRY_BACKOFF.delays()
    attempt = 1
    while True:
        try:
            with trio.fail_after(timeout_s):
                return await call()
        except transient as exc:
            if attempt >= attempts:
                raise
            limit = "" if math.isinf(attempts) else f" of {attempts:g}"
            delay = next(delays)
            log.warning(
                "%s failed (%r), attempt %d%s; again in %.1f s", what, exc, attempt, limit, delay
            )
        await trio.sleep(delay)
        attempt += 1
