"""The API process's keeper of what verification trusts: the deny-list and the signing keys.

`DenyList` is the process's deny-list and its only writer: every revocation the process learns of
(one it made itself, another process's event, the periodic reload) goes through `deny` or
`reload`, which add it and have the hub close the WebSockets of whatever is new. Requests read
it with `is_revoked`.

The wiring loads the list (`DenyList.load`) before the HTTP server starts. This actor runs after
the server (so that its trouble never restarts the server) and reloads the list every
`oauth.revocation_poll_s`: revocations normally arrive at once as events, and the reload catches
any whose event was lost or that no broker carried (the CLI of embedded mode). Every
`oauth.key_refresh_s` it also reloads the key ring, so that keys added by `scoreboard keys
rotate` (or by another process) verify here before they sign anywhere. A store that does not
answer, or not in time, is logged and tried again at the next poll; it never crashes the actor.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from scoreboard import clock
from scoreboard.actors import hub
from scoreboard.actors.hub import HubHandle
from scoreboard.adapters.interfaces import Authorizations, BackendUnavailable, SigningKeys
from scoreboard.auth.key_encryption import KeyEncryptionError
from scoreboard.auth.keys import KeyRing, NoSigningKey
from scoreboard.auth.revocations import RevocationList
from scoreboard.auth.tokens import AccessClaims
from scoreboard.config import Config
from scoreboard.records import TokensRevoked

log = logging.getLogger(__name__)

STORE_TIMEOUT_S = 10.0


class DenyList:
    """The revoked grants and `jti`s this process refuses, and the hub told of each new one."""

    def __init__(self, hub_handle: HubHandle) -> None:
        self._hub = hub_handle
        self._revoked = RevocationList()

    def is_revoked(self, claims: AccessClaims) -> bool:
        """A set lookup, no I/O: every request asks."""
        return self._revoked.is_revoked(claims)

    async def load(self, store: Authorizations) -> None:
        """Everything in force in the store, before any connection exists to be closed."""
        self._revoked.merge(await store.revocations(clock.now_ms()))

    async def deny(self, revoked: TokensRevoked) -> None:
        """Refuse these from now on, and close the WebSockets authenticated with them."""
        new = self._revoked.add(revoked)
        if new.grant_ids or new.jtis:
            await hub.notify(self._hub, new)

    async def reload(self, store: Authorizations) -> None:
        """Take in the store's list (what expired leaves); what was new closes its WebSockets."""
        for new in self._revoked.merge(await store.revocations(clock.now_ms())):
            await hub.notify(self._hub, new)


class DenyListAndKeys(Authorizations, SigningKeys, Protocol):
    """What this actor reloads: the deny-list and the signing keys."""


async def run(
    deny_list: DenyList,
    *,
    store: DenyListAndKeys,
    keyring: KeyRing,
    config: Config,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    keys_due = trio.current_time() + config.oauth.key_refresh_s
    while True:
        try:
            with trio.fail_after(STORE_TIMEOUT_S):
                await deny_list.reload(store)
        except (BackendUnavailable, trio.TooSlowError) as exc:
            log.warning("revocations: reload failed (%r); retrying", exc)
        if trio.current_time() >= keys_due:
            keys_due = trio.current_time() + config.oauth.key_refresh_s
            try:
                with trio.fail_after(STORE_TIMEOUT_S):
                    await keyring.refresh(store)
            except (BackendUnavailable, NoSigningKey, trio.TooSlowError) as exc:
                log.warning("keys: refresh failed (%r); keeping the current keys", exc)
            except KeyEncryptionError as exc:
                log.error("keys: cannot decrypt (%s); keeping the current keys", exc)
        await trio.sleep(config.oauth.revocation_poll_s)
