"""The deny-list's one writer: what is new is refused at once and closes its WebSockets through
the hub, once; what is known already tells the hub nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from scoreboard.actors import hub
from scoreboard.actors.messages import HubMsg
from scoreboard.actors.revocations import DenyList
from scoreboard.auth.tokens import AccessClaims
from scoreboard.records import Revocation, TokensRevoked

FAR_MS = 4_102_444_800_000  # 2100: nothing here expires


def claims(grant_id: str | None, jti: str) -> AccessClaims:
    return AccessClaims(
        user_id=7,
        scope=frozenset({"read"}),
        jti=jti,
        client_id="scoreboard-web",
        grant_id=grant_id,
        expires_at=FAR_MS // 1000,
        issued_at=FAR_MS // 1000 - 900,
    )


@dataclass
class StoredList:
    """The store's deny-list (the one method the deny-list reads)."""

    entries: list[Revocation] = field(default_factory=list)

    async def revocations(self, now_ms: int) -> list[Revocation]:
        await trio.lowlevel.checkpoint()
        return [entry for entry in self.entries if entry.expires_at_ms > now_ms]


def told(hub_inbox: trio.MemoryReceiveChannel[HubMsg]) -> list[object]:
    messages: list[object] = []
    while True:
        try:
            messages.append(hub_inbox.receive_nowait())
        except trio.WouldBlock:
            return messages


async def test_a_revocation_is_refused_at_once_and_the_hub_hears_only_what_is_new() -> None:
    hub_handle, hub_inbox = hub.open_inbox()
    deny_list = DenyList(hub_handle)
    assert not deny_list.is_revoked(claims("g1", "j1"))
    await deny_list.deny(TokensRevoked(("g1",), (), FAR_MS))
    assert deny_list.is_revoked(claims("g1", "j1"))
    assert deny_list.is_revoked(claims(None, "j2")) is False
    # The same revocation again (this process's own event, coming back): nothing new.
    await deny_list.deny(TokensRevoked(("g1",), ("j2",), FAR_MS))
    assert deny_list.is_revoked(claims(None, "j2"))
    assert told(hub_inbox) == [
        TokensRevoked(("g1",), (), FAR_MS),
        TokensRevoked((), ("j2",), FAR_MS),
    ]


async def test_the_start_loads_silently_and_a_reload_tells_the_hub_what_it_found() -> None:
    hub_handle, hub_inbox = hub.open_inbox()
    store = StoredList([Revocation("grant", "g1", FAR_MS)])
    deny_list = DenyList(hub_handle)
    await deny_list.load(store)  # type: ignore[arg-type]
    assert deny_list.is_revoked(claims("g1", "j1"))
    assert told(hub_inbox) == []  # no connection exists yet
    store.entries.append(Revocation("jti", "j9", FAR_MS))
    await deny_list.reload(store)  # type: ignore[arg-type]
    assert deny_list.is_revoked(claims(None, "j9"))
    assert told(hub_inbox) == [TokensRevoked((), ("j9",), FAR_MS)]
