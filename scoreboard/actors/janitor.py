"""The janitor: deletes what has expired from the OAuth tables, in small batches.

Authorization codes live 60 s, refresh tokens `oauth.refresh_token_ttl_s`, deny-list entries as
long as the access tokens they match; nothing needs them after that, except that a reused code or
rotated refresh token is still recognized (and its grant revoked) for `janitor.retention_s` after
it expired, so they are kept that long. A grant goes with its last code and refresh token. Each
batch is one short transaction of at most `janitor.batch_size` rows, so a backlog never holds
locks for long; every worker process runs a janitor, and concurrent ones skip each other's rows.
"""

from __future__ import annotations

import logging

import trio

from scoreboard import clock
from scoreboard.adapters.interfaces import Authorizations, BackendUnavailable, Purgeable
from scoreboard.config import JanitorConfig

log = logging.getLogger(__name__)

PURGEABLE: tuple[Purgeable, ...] = ("codes", "refresh_tokens", "revocations")
BATCH_TIMEOUT_S = 30.0
# Between two full batches: the store serves requests too.
BATCH_PAUSE_S = 0.05


async def run(
    *,
    store: Authorizations,
    config: JanitorConfig,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        try:
            await sweep(store, config, clock.now_ms())
        except (BackendUnavailable, trio.TooSlowError) as exc:
            log.warning(
                "janitor: sweep interrupted (%s); next one in %.0f s", exc, config.interval_s
            )
        await trio.sleep(config.interval_s)


async def sweep(store: Authorizations, config: JanitorConfig, now_ms: int) -> dict[str, int]:
    """Delete everything expired as of `now_ms`, batch by batch: the rows deleted per kind
    (and, as "grants", the grants that went with them)."""
    deleted: dict[str, int] = {}
    for what in PURGEABLE:
        # The deny-list has no use for an expired entry; codes and tokens stay for reuse checks.
        before_ms = now_ms if what == "revocations" else now_ms - int(config.retention_s * 1000)
        while True:
            with trio.fail_after(BATCH_TIMEOUT_S):
                purged = await store.purge_expired(what, before_ms, config.batch_size)
            deleted[what] = deleted.get(what, 0) + purged.rows
            deleted["grants"] = deleted.get("grants", 0) + purged.grants
            if purged.rows < config.batch_size:
                break
            await trio.sleep(BATCH_PAUSE_S)
    if any(deleted.values()):
        log.info(
            "janitor: deleted %s",
            ", ".join(f"{count} {what}" for what, count in deleted.items() if count),
        )
    return deleted
