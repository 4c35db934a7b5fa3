"""Accepting one action: the rules shared by `POST /api/v1/actions/perform` and the WebSocket.

Order matters (contract §2): validate the payload, then the nonce (a replay is answered before any
rate limit), then the limits, all in one atomic Redis step; then the durable publish, through
the publisher actor (`actors/publisher.py`). 202 only after the broker confirmed; if it does not,
the claim is released and the client may retry with the same nonce.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from scoreboard.actors.messages import Publish
from scoreboard.adapters.interfaces import (
    Accepted,
    BackendUnavailable,
    Limited,
    PublishFailed,
    Replayed,
)
from scoreboard.auth.tokens import AccessClaims
from scoreboard.catalogue import InvalidActionData
from scoreboard.http.errors import RequestRejected, invalid_request, rate_limited, unavailable
from scoreboard.http.services import Services
from scoreboard.model import ActionEnvelope

NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")  # whole string: fullmatch (`$` admits "\n")
ACTION_FIELDS = frozenset({"action_type", "action_data", "nonce"})
UNAVAILABLE_RETRY_AFTER_S = 1
RELEASE_TIMEOUT_S = 2.0


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
        case Replayed(first_action_id, first_status_code):
            return Submitted(first_action_id, payload.nonce, replayed_status_code=first_status_code)
        case Limited(retry_after_s):
            raise rate_limited(retry_after_s)
        case Accepted():
            pass
    envelope = ActionEnvelope(
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
    try:
        with trio.fail_after(config.amqp.publish_timeout_s):
            await _publish(services, envelope)
    except (PublishFailed, BackendUnavailable, trio.TooSlowError) as exc:
        await _release(services, claims, payload, action_id)
        raise unavailable(
            UNAVAILABLE_RETRY_AFTER_S, f"the action was not accepted: {exc}"
        ) from None
    return Submitted(action_id, payload.nonce)


async def _publish(services: Services, envelope: ActionEnvelope) -> None:
    """Through the process's publisher, which confirms it in a batch with its neighbours."""
    reply_send, reply_receive = trio.open_memory_channel[Exception | None](1)
    # Leaving closes the receiver: a request that gave up is skipped or its answer dropped.
    with reply_receive:
        await services.publisher.send(Publish(envelope, reply_send))
        failure = await reply_receive.receive()
    if failure is not None:
        raise failure


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
    if "retry_after" in exc.extra:
        data["retry_after"] = exc.extra["retry_after"]
    return data
