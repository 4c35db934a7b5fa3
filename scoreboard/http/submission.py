"""Accepting one action: the rules shared by `POST /api/v1/actions/perform` and the WebSocket.

Order matters (contract §2): validate the payload, then the nonce (a replay is answered before any
rate limit), then the limits, all in one atomic Redis step; then the durable publish, through
the publisher actor (`actors/publisher.py`). 202 only after the broker confirmed.

When it does not, what the client is told depends on what is known:
- the broker refused the message (a nack, or returned as unroutable): nothing was queued; the
  claim is released and 503 says so; the same nonce may be used again for a fresh attempt;
- no confirm came (in time, or before the link failed): the broker may have queued it or not.
  The nonce stays bound to the action id (`OUTCOME_UNKNOWN`) and 503 says the outcome is
  unknown and to retry with the same nonce.

A request whose nonce is bound to an action that is not known to be queued (its publish is in
flight, or its outcome is unknown) publishes that action again under the same action id, with
this request's payload, and answers 202 only once that is confirmed. Publishing one action
twice is safe: the worker and the store know an action by its id, so it counts at most once;
and if the first copy never reached the queue, this one is the fresh attempt. So a replay
never answers with an action id that does not exist.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from scoreboard import metrics
from scoreboard.actors import publisher
from scoreboard.adapters.interfaces import (
    OUTCOME_UNKNOWN,
    PUBLISHING,
    Accepted,
    BackendUnavailable,
    Limited,
    PublishFailed,
    PublishOutcomeUnknown,
    Replayed,
)
from scoreboard.auth.tokens import AccessClaims
from scoreboard.catalogue import InvalidActionData
from scoreboard.http.errors import RequestRejected, invalid_request, rate_limited, unavailable
from scoreboard.http.services import Services
from scoreboard.records import ActionEnvelope

log = logging.getLogger(__name__)

NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")  # whole string: fullmatch (`$` admits "\n")
ACTION_FIELDS = frozenset({"action_type", "action_data", "nonce"})
UNAVAILABLE_RETRY_AFTER_S = 1
RELEASE_TIMEOUT_S = 2.0
OUTCOME_UNKNOWN_MESSAGE = (
    "the broker did not confirm the action in time, so it may or may not have been queued; "
    "retry with the same nonce: the answer gives its real state, and it never counts twice"
)


@dataclass(frozen=True, slots=True)
class ActionPayload:
    action_type: str
    action_data: Mapping[str, Any]
    nonce: str


@dataclass(frozen=True, slots=True)
class Submitted:
    """The action is durably queued, or was already: then `replayed_status_code` is how the
    first request was answered."""

    action_id: uuid.UUID
    nonce: str
    replayed_status_code: int | None = None


def parse_payload(
    services: Services, body: Any, *, allowed_extra: frozenset[str] = frozenset()
) -> ActionPayload:
    """The strict schema of an action: exactly these fields, and data the catalogue accepts."""
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object")
    unknown = sorted(set(body) - ACTION_FIELDS - allowed_extra)
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(ACTION_FIELDS - set(body))
    if missing:
        raise invalid_request(f"missing field(s): {', '.join(missing)}")
    nonce = body["nonce"]
    if not isinstance(nonce, str) or not NONCE_PATTERN.fullmatch(nonce):
        raise invalid_request("nonce must be 8 to 64 characters of [A-Za-z0-9_-]")
    try:
        services.catalogue.validate(body["action_type"], body["action_data"])
    except InvalidActionData as exc:
        raise invalid_request(str(exc)) from None
    return ActionPayload(body["action_type"], body["action_data"], nonce)


async def submit_action(
    services: Services,
    claims: AccessClaims,
    payload: ActionPayload,
    *,
    action_id: uuid.UUID,
    ip: str,
    user_agent: str,
    headers: Mapping[str, str],
) -> Submitted:
    """Claim the nonce and the limits, then publish with confirm. Raises `RequestRejected`."""
    config = services.config
    entry = services.catalogue.get(payload.action_type)
    assert entry is not None, "parse_payload checked the catalogue"
    now_ms = time.time_ns() // 1_000_000
    try:
        claim = await services.guard.claim(
            user_id=claims.user_id,
            nonce=payload.nonce,
            action_id=action_id,
            action_type=payload.action_type,
            ip=ip,
            now_ms=now_ms,
            cooldown_ms=int(entry.cooldown_s * 1000),
            user_limit_per_minute=config.limits.user_actions_per_minute,
            ip_limit_per_minute=config.limits.ip_requests_per_minute,
            limits_enabled=config.limits.enabled,
        )
    except BackendUnavailable:
        raise unavailable(UNAVAILABLE_RETRY_AFTER_S, "the rate limiter is unavailable") from None
    match claim:
        case Replayed(first_action_id, first_status_code) if first_status_code in (
            PUBLISHING,
            OUTCOME_UNKNOWN,
        ):
            # Not known to be queued: make sure it is, under the same id.
            again = _envelope(claims, payload, first_action_id, now_ms, ip, user_agent, headers)
            try:
                await _publish(services, again)
            except (_NotQueued, _OutcomeUnknown):
                # The first copy may still be queued (or in flight): unknown either way.
                raise _outcome_unknown() from None
            return Submitted(first_action_id, payload.nonce, replayed_status_code=202)
        case Replayed(first_action_id, first_status_code):
            return Submitted(first_action_id, payload.nonce, replayed_status_code=first_status_code)
        case Limited(retry_after_s):
            metrics.RATE_LIMITED.labels("actions").inc()
            raise rate_limited(retry_after_s)
        case Accepted():
            pass
    envelope = _envelope(claims, payload, action_id, now_ms, ip, user_agent, headers)
    try:
        await _publish(services, envelope)
    except _NotQueued as exc:
        await _release(services, claims, payload, action_id)
        raise unavailable(
            UNAVAILABLE_RETRY_AFTER_S,
            f"the action was not accepted (nothing was queued: {exc}); you may retry",
            outcome="not_queued",
        ) from None
    except _OutcomeUnknown:
        await _mark_outcome_unknown(services, claims, payload, action_id)
        raise _outcome_unknown() from None
    metrics.ACTIONS_ACCEPTED.labels(payload.action_type).inc()
    log.debug("accepted action %s (%s) of user %d", action_id, payload.action_type, claims.user_id)
    return Submitted(action_id, payload.nonce)


def _envelope(
    claims: AccessClaims,
    payload: ActionPayload,
    action_id: uuid.UUID,
    now_ms: int,
    ip: str,
    user_agent: str,
    headers: Mapping[str, str],
) -> ActionEnvelope:
    return ActionEnvelope(
        action_id=action_id,
        user_id=claims.user_id,
        action_type=payload.action_type,
        action_data=dict(payload.action_data),
        nonce=payload.nonce,
        received_at_ms=now_ms,
        ip=ip,
        user_agent=user_agent[:512],
        headers=dict(headers),
    )


class _NotQueued(Exception):
    """The broker refused the message: it is certainly not queued."""


class _OutcomeUnknown(Exception):
    """No confirm came: the broker may have queued the message or not."""


def _outcome_unknown() -> RequestRejected:
    return unavailable(UNAVAILABLE_RETRY_AFTER_S, OUTCOME_UNKNOWN_MESSAGE, outcome="unknown")


async def _publish(services: Services, envelope: ActionEnvelope) -> None:
    """Through the process's publisher, which confirms it in a batch with its neighbours.
    Raises `_NotQueued` or `_OutcomeUnknown` (which is also what anything unforeseen is)."""
    try:
        # Given up on (the timeout), the action is skipped if its batch has not left yet.
        with trio.fail_after(services.config.amqp.publish_timeout_s):
            await publisher.publish(services.publisher, envelope)
    except trio.TooSlowError:
        raise _OutcomeUnknown("no answer in time") from None
    except PublishOutcomeUnknown as exc:
        raise _OutcomeUnknown(str(exc)) from None
    except PublishFailed as exc:
        raise _NotQueued(str(exc)) from None
    except Exception as exc:
        raise _OutcomeUnknown(str(exc)) from None


async def _mark_outcome_unknown(
    services: Services, claims: AccessClaims, payload: ActionPayload, action_id: uuid.UUID
) -> None:
    """Best effort: a nonce left `PUBLISHING` is handled by a replay the same way."""
    try:
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S):
            await services.guard.mark_outcome_unknown(
                user_id=claims.user_id, nonce=payload.nonce, action_id=action_id
            )
    except BackendUnavailable:
        pass


async def _release(
    services: Services, claims: AccessClaims, payload: ActionPayload, action_id: uuid.UUID
) -> None:
    try:
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S):
            await services.guard.release(
                user_id=claims.user_id,
                nonce=payload.nonce,
                action_id=action_id,
                action_type=payload.action_type,
            )
    except BackendUnavailable:
        pass


def rejected_before_queueing(exc: RequestRejected, nonce: str | None) -> dict[str, Any]:
    """The WebSocket's `action_result` for a refusal before queueing (same error codes as HTTP)."""
    data: dict[str, Any] = {
        "action_id": None,
        "nonce": nonce,
        "status": "rejected",
        "score_delta": 0,
        "new_score": None,
        "error": exc.error,
    }
    if exc.message is not None:
        data["message"] = exc.message
    for extra in ("retry_after", "outcome"):
        if extra in exc.extra:
            data[extra] = exc.extra[extra]
    return data
