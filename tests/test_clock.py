"""The one wall clock: real by default, frozen and moved by tests, seen by every reader."""

from __future__ import annotations

import time

from scoreboard import clock
from scoreboard.auth.revocations import RevocationList
from scoreboard.auth.tokens import AccessClaims
from scoreboard.records import TokensRevoked


def test_now_follows_the_system_clock() -> None:
    before = time.time_ns() // 1_000_000
    now = clock.now_ms()
    assert before <= now <= time.time_ns() // 1_000_000
    assert abs(clock.now_s() * 1000 - clock.now_ms()) < 1000


def test_a_frozen_clock_stands_still_until_moved_and_is_restored() -> None:
    with clock.frozen(1_700_000_000_000) as frozen:
        assert clock.now_ms() == 1_700_000_000_000
        assert clock.now_s() == 1_700_000_000.0
        frozen.advance(1.5)
        assert clock.now_ms() == 1_700_000_001_500
    assert clock.now_ms() > 1_700_000_001_500


def test_the_readers_of_the_clock_see_the_frozen_time() -> None:
    revoked = RevocationList()
    revoked.add(TokensRevoked(("grant-1",), (), expires_at_ms=1_700_000_060_000))
    with clock.frozen(1_700_000_000_000) as frozen:
        assert revoked.merge([]) == []
        assert revoked.is_revoked(_claims("grant-1"))
        frozen.advance(60)
        revoked.merge([])
        assert not revoked.is_revoked(_claims("grant-1"))


def _claims(grant_id: str) -> AccessClaims:
    return AccessClaims(
        user_id=1,
        scope=frozenset({"read"}),
        jti="j",
        client_id="c",
        grant_id=grant_id,
        expires_at=0,
        issued_at=0,
    )
