"""The API process's keeper of what verification trusts: the deny-list and the signing keys.

The wiring loads the deny-list (`load_deny_list`) before the HTTP server starts. This actor runs
after the server (so that its trouble never restarts the server) and reloads the list every
`oauth.revocation_poll_s`: revocations normally arrive at once as events, and the reload catches
any whose event was lost or that no broker carried (the CLI of embedded mode). What the reload
finds new goes to the hub, which closes the WebSockets of those grants. Every
`oauth.key_refresh_s` it also reloads the key ring, so that keys added by `scoreboard keys
rotate` (or by another process) verify here before they sign anywhere. A store that does not
answer, or not in time, is logged and tried again at the next poll; it never crashes the actor.
"""

from __future__ import annotations

import logging
import time

import trio

from scoreboard.actors.messages import HubMsg
from scoreboard.adapters.interfaces import BackendUnavailable, Store
from scoreboard.auth.key_encryption import KeyEncryptionError
from scoreboard.auth.keys import KeyRing, NoSigningKey
from scoreboard.auth.revocations import RevocationList
from scoreboard.config import Config

log = logging.getLogger(__name__)

STORE_TIMEOUT_S = 10.0


async def load_deny_list(store: Store, revocations: RevocationList) -> None:
    """Load every deny-list entry in force (before anything verifies a token)."""
    revocations.merge(await store.revocations(time.time_ns() // 1_000_000))


async def _reload(
    store: Store, revocations: RevocationList, hub: trio.MemorySendChannel[HubMsg]
) -> None:
    for revoked in revocations.merge(await store.revocations(time.time_ns() // 1_000_000)):
        await hub.send(revoked)


async def run(
    hub: trio.MemorySendChannel[HubMsg],
    *,
    store: Store,
    revocations: RevocationList,
    keyring: KeyRing,
    config: Config,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with hub:
        task_status.started()
        keys_due = trio.current_time() + config.oauth.key_refresh_s
        while True:
            try:
                with trio.fail_after(STORE_TIMEOUT_S):
                    await _reload(store, revocations, hub)
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
