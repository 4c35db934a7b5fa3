"""Spreading a revocation: this process's deny-list at once (which closes its WebSockets), and
every other API process through the events fanout (the store, written first, is where the
periodic reload finds it if the event is lost)."""

from __future__ import annotations

import logging

import trio

from scoreboard.adapters.interfaces import BackendUnavailable, PublishFailed
from scoreboard.http.services import Services
from scoreboard.records import TokensRevoked
from scoreboard.wire import encode_event

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 2.0


async def announce(svc: Services, revoked: TokensRevoked) -> None:
    """Deny what the store has already revoked, here and in every API process."""
    await svc.deny_list.deny(revoked)
    try:
        with trio.fail_after(PUBLISH_TIMEOUT_S):
            await svc.broker.publish_events([encode_event(revoked)])
    except (BackendUnavailable, PublishFailed, trio.TooSlowError) as exc:
        log.warning("revocation not published (%r); other processes reload it from the store", exc)


async def revoke(svc: Services, revoked: TokensRevoked) -> None:
    """Revoke in the store, then announce."""
    await svc.store.revoke(
        grant_ids=revoked.grant_ids, jtis=revoked.jtis, expires_at_ms=revoked.expires_at_ms
    )
    await announce(svc, revoked)
