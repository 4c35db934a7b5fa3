"""The access-token deny-list of one API process: revoked grants and `jti`s, in memory.

Every request checks it (a set lookup, no I/O). The store holds the shared list; this copy is
owned by the process's `DenyList` (`actors/revocations.py`), which keeps it fresh from
`TokensRevoked` events (which every process receives at once over the events fanout) and from a
periodic reload, which also covers a revocation whose event was lost or that came from a process
without a broker (the CLI in embedded mode). Entries leave once every access token they could
match has expired.
"""

from __future__ import annotations

from collections.abc import Iterable

from scoreboard import clock
from scoreboard.auth.tokens import AccessClaims
from scoreboard.records import Revocation, TokensRevoked


class RevocationList:
    def __init__(self) -> None:
        self._grants: dict[str, int] = {}
        self._jtis: dict[str, int] = {}

    def is_revoked(self, claims: AccessClaims) -> bool:
        return claims.jti in self._jtis or (
            claims.grant_id is not None and claims.grant_id in self._grants
        )

    def add(self, revoked: TokensRevoked) -> TokensRevoked:
        """Deny these; answers the part that was not denied before."""
        new_grants = _add(self._grants, revoked.grant_ids, revoked.expires_at_ms)
        new_jtis = _add(self._jtis, revoked.jtis, revoked.expires_at_ms)
        return TokensRevoked(new_grants, new_jtis, revoked.expires_at_ms)

    def merge(
        self, entries: Iterable[Revocation], now_ms: int | None = None
    ) -> list[TokensRevoked]:
        """Take in the store's list and forget what has expired; answers what was new."""
        now = clock.now_ms() if now_ms is None else now_ms
        for table in (self._grants, self._jtis):
            for value in [value for value, expires in table.items() if expires <= now]:
                del table[value]
        news = []
        for entry in entries:
            event = (
                TokensRevoked((entry.value,), (), entry.expires_at_ms)
                if entry.kind == "grant"
                else TokensRevoked((), (entry.value,), entry.expires_at_ms)
            )
            new = self.add(event)
            if new.grant_ids or new.jtis:
                news.append(new)
        return news


def _add(table: dict[str, int], values: Iterable[str], expires_at_ms: int) -> tuple[str, ...]:
    new = []
    for value in values:
        if value not in table:
            new.append(value)
        table[value] = max(table.get(value, 0), expires_at_ms)
    return tuple(new)
