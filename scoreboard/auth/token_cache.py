"""Access tokens this process has verified, kept by the token string until they expire.

Verifying an RS256 token (base64, JSON, the RSA signature, every claim) is the largest cost of an
authenticated request that does no I/O; a client sends the same token with every request for
up to 15 minutes. A token verified once is known valid until its `exp` (plus the leeway the
verifier allows), so a repeat is a dictionary lookup.

What stays exact:
- revocation is not cached: callers check the deny-list (`DenyList.is_revoked`) on every
  use, so a revoked token is refused from the moment the process hears of the revocation;
- a token is verified afresh once the key ring has changed (keys added or retired), so a token
  whose key left the ring is refused as before;
- only successes are kept; a refused token is verified (and refused) again each time;
- the cache is bounded: least recently used tokens leave first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from scoreboard.auth.keys import KeyRing
from scoreboard.auth.tokens import MAX_LEEWAY_S, AccessClaims, verify_access_token
from scoreboard.clock import now_s
from scoreboard.config import Config

# About 1 KiB per entry (the token and its claims): some 10 MiB when full, which covers every
# active token of a large deployment's API process; beyond it the oldest are verified again.
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Verified:
    claims: AccessClaims
    valid_until: float
    ring_generation: int


class VerifiedTokens:
    def __init__(
        self,
        ring: KeyRing,
        config: Config,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = now_s,
    ) -> None:
        self._ring = ring
        self._config = config
        self._max_entries = max_entries
        self._clock = clock
        self._leeway_s = max(0, min(config.auth.leeway_s, MAX_LEEWAY_S))
        self._entries: OrderedDict[str, _Verified] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, as `verify_access_token` answers them; `InvalidToken` if not."""
        now = self._clock()
        known = self._entries.get(token)
        if known is not None:
            if now < known.valid_until and known.ring_generation == self._ring.generation:
                self._entries.move_to_end(token)
                return known.claims
            del self._entries[token]
        generation = self._ring.generation
        claims = verify_access_token(self._ring, token, config=self._config, now=int(now))
        # The verifier refuses a token from `exp` + leeway on.
        self._entries[token] = _Verified(claims, claims.expires_at + self._leeway_s, generation)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return claims
