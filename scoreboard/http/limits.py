"""The attempt limits of the account endpoints: sign-in, token and revocation, registration."""

from __future__ import annotations

from scoreboard import clock
from scoreboard.http.services import Services


async def over_limit(svc: Services, limits: list[tuple[str, int]]) -> int:
    """Count an attempt against every (key, per-minute limit) at once, or against none: 0 if
    admitted, else the seconds to wait. Nothing is limited while `limits.enabled` is off."""
    if not svc.config.limits.enabled:
        return 0
    return await svc.guard.count_attempts(limits, now_ms=clock.now_ms())
