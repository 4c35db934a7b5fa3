"""Taking in one action: the use case behind `POST /api/v1/actions/perform` and the WebSocket's
`perform` message. It answers with a typed result (`Accepted`, `Replayed`, `Refused`,
`Unavailable`); the HTTP routes and the WebSocket only render it (`http/actions.py`,
`http/ws.py`, both through `http/errors.py:rejection` for refusals).

Order matters: validate the payload, then the nonce (a replay is answered before any rate limit),
then the limits, all in one atomic Redis step; then the durable publish, through the publisher
actor (`actors/publisher.py`). `Accepted` only after the broker confirmed.

When it does not, what the client is told depends on what is known:
- the broker refused the message (a nack, or returned as unroutable): nothing was queued; the
  claim is released and `Unavailable(outcome="not_queued")` says so; the same nonce may be used
  again for a fresh attempt;
- no confirm came (in time, or before the link failed): the broker may have queued it or not.
  The nonce stays bound to the action id (`OUTCOME_UNKNOWN`) and `Unavailable(outcome="unknown")`
  says to retry with the same nonce.

A request whose nonce is bound to an action that is not known to be queued (its publish is in
flight, or its outcome is unknown) publishes that action again under the same action id, with
this request's payload, and is `Replayed` only once that is confirmed. Publishing one action
twice is safe: the worker and the store know an action by its id, so it counts at most once;
and if the first copy never reached the queue, this one is the fresh attempt. So a replay
never answers with an action id that does not exist.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import trio

from scoreboard import clock, metrics
from scoreboard.actors import publisher
from scoreboard.actors.publisher import PublisherHandle
from scoreboard.adapters import interfaces
from scoreboard.adapters.interfaces import (
    OUTCOME_UNKNOWN,
    PUBLISHING,
    ActionLog,
    BackendUnavailable,
    EdgeGuard,
    PublishFailed,
    PublishOutcomeUnknown,
)
from scoreboard.catalogue import Catalogue, InvalidActionData
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, ActionRecord

log = logging.getLogger(__name__)

NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")  # whole string: fullmatch (`$` admits "\n")
ACTION_FIELDS = frozenset({"action_type", "action_data", "nonce"})
UNAVAILABLE_RETRY_AFTER_S = 1
RELEASE_TIMEOUT_S = 2.0
LOOKUP_TIMEOUT_S = 5.0
OUTCOME_UNKNOWN_MESSAGE = (
    "the broker did not confirm the action in time, so it may or may not have been queued; "
    "retry with the same nonce: the answer gives its real state, and it never counts twice"
)


# The counter's child of each action type, bound once (`labels` takes a lock and builds its key
# on every call); as many as the catalogue has types, which `parse_payload` checked.
_accepted_counter = functools.cache(metrics.ACTIONS_ACCEPTED.labels)


@dataclass(frozen=True, slots=True)
class ActionPayload:
    action_type: str
    action_data: Mapping[str, Any]
    nonce: str


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who performs the action, and what of their request the audit log keeps."""

    user_id: int
    ip: str
    user_agent: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Accepted:
    """The action is durably queued: the broker confirmed it."""

    action_id: uuid.UUID
    nonce: str


@dataclass(frozen=True, slots=True)
class Replayed:
    """The nonce was used before: this is its first action, queued (`first_status_code` is how
    its first request was answered), as the store knows it now. `record` is None when the store
    has not stored it yet or did not answer (`store_answered` tells which)."""

    action_id: uuid.UUID
    nonce: str
    first_status_code: int
    record: ActionRecord | None
    store_answered: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """Refused before anything was claimed or queued: invalid, or over a limit."""

    error: Literal["invalid_request", "rate_limit_exceeded"]
    message: str | None = None
    retry_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A backend did not answer. `outcome` says what became of the action: `unknown` (it may have
    been queued: retry with the same nonce to learn its state) or `not_queued` (nothing
    happened); None when nothing was attempted."""

    message: str
    outcome: Literal["unknown", "not_queued"] | None = None
    retry_after_s: int = UNAVAILABLE_RETRY_AFTER_S


Submitted = Accepted | Replayed | Refused | Unavailable


def parse_payload(
    catalogue: Catalogue, body: Any, *, allowed_extra: frozenset[str] = frozenset()
) -> ActionPayload | Refused:
    """The strict schema of an action: exactly these fields, and data the catalogue accepts."""
    if not isinstance(body, dict):
        return _invalid("the body must be a JSON object")
    # Exactly the fields (nearly every body) is neither unknown nor missing: no sets to build.
    if body.keys() != ACTION_FIELDS:
        unknown = sorted(set(body) - ACTION_FIELDS - allowed_extra)
        if unknown:
            return _invalid(f"unknown field(s): {', '.join(unknown)}")
        missing = sorted(ACTION_FIELDS - set(body))
        if missing:
            return _invalid(f"missing field(s): {', '.join(missing)}")
    nonce = body["nonce"]
    if not isinstance(nonce, str) or not NONCE_PATTERN.fullmatch(nonce):
        return _invalid("nonce must be 8 to 64 characters of [A-Za-z0-9_-]")
    try:
        catalogue.validate(body["action_type"], body["action_data"])
    except InvalidActionData as exc:
        return _invalid(str(exc))
    return ActionPayload(body["action_type"], body["action_data"], nonce)


def _invalid(message: str) -> Refused:
    return Refused("invalid_request", message)


async def stored_action(
    actions: ActionLog, action_id: uuid.UUID
) -> ActionRecord | Unavailable | None:
    """The action as the store keeps it (None: not stored yet), or `Unavailable`."""
    try:
        with trio.fail_after(LOOKUP_TIMEOUT_S):
            return await actions.get_action(action_id)
    except (BackendUnavailable, trio.TooSlowError):
        return Unavailable("the store is unavailable")


@dataclass(frozen=True)
class Intake:
    """What taking in an action needs: the catalogue and limits, the edge guard (nonces and
    rate limits), the process's publisher, and the action log (for replays)."""

    catalogue: Catalogue
    config: Config
    guard: EdgeGuard
    publisher: PublisherHandle
    actions: ActionLog

    def parse(
        self, body: Any, *, allowed_extra: frozenset[str] = frozenset()
    ) -> ActionPayload | Refused:
        return parse_payload(self.catalogue, body, allowed_extra=allowed_extra)

    async def submit(
        self, payload: ActionPayload, submitter: Submitter, *, action_id: uuid.UUID
    ) -> Submitted:
        """Claim the nonce and the limits, then publish with confirm."""
        entry = self.catalogue.get(payload.action_type)
        assert entry is not None, "parse_payload checked the catalogue"
        limits = self.config.limits
        now_ms = clock.now_ms()
        try:
            claim = await self.guard.claim(
                user_id=submitter.user_id,
                nonce=payload.nonce,
                action_id=action_id,
                action_type=payload.action_type,
                ip=submitter.ip,
                now_ms=now_ms,
                cooldown_ms=int(entry.cooldown_s * 1000),
                user_limit_per_minute=limits.user_actions_per_minute,
                ip_limit_per_minute=limits.ip_requests_per_minute,
                limits_enabled=limits.enabled,
            )
        except BackendUnavailable:
            return Unavailable("the rate limiter is unavailable")
        match claim:
            case interfaces.Replayed(first_action_id, first_status_code) if first_status_code in (
                PUBLISHING,
                OUTCOME_UNKNOWN,
            ):
                # Not known to be queued: make sure it is, under the same id.
                again = _envelope(payload, submitter, first_action_id, now_ms)
                if await self._publish(again) is not None:
                    # The first copy may still be queued (or in flight): unknown either way.
                    return Unavailable(OUTCOME_UNKNOWN_MESSAGE, "unknown")
                return await self._replayed(first_action_id, payload.nonce, 202)
            case interfaces.Replayed(first_action_id, first_status_code):
                return await self._replayed(first_action_id, payload.nonce, first_status_code)
            case interfaces.Limited(retry_after_s):
                metrics.RATE_LIMITED.labels("actions").inc()
                return Refused("rate_limit_exceeded", retry_after_s=retry_after_s)
            case interfaces.Accepted():
                pass
        match await self._publish(_envelope(payload, submitter, action_id, now_ms)):
            case None:
                _accepted_counter(payload.action_type).inc()
                log.debug(
                    "accepted action %s (%s) of user %d",
                    action_id,
                    payload.action_type,
                    submitter.user_id,
                )
                return Accepted(action_id, payload.nonce)
            case _NotQueued(reason):
                # Nothing queued: the client may retry with the same nonce.
                release = functools.partial(
                    self.guard.release,
                    user_id=submitter.user_id,
                    nonce=payload.nonce,
                    action_id=action_id,
                    action_type=payload.action_type,
                )
                await _best_effort(release)
                return Unavailable(
                    f"the action was not accepted (nothing was queued: {reason}); you may retry",
                    "not_queued",
                )
            case _OutcomeUnknown():
                # A nonce left `PUBLISHING` (if this fails) is handled by a replay the same way.
                mark = functools.partial(
                    self.guard.mark_outcome_unknown,
                    user_id=submitter.user_id,
                    nonce=payload.nonce,
                    action_id=action_id,
                )
                await _best_effort(mark)
                return Unavailable(OUTCOME_UNKNOWN_MESSAGE, "unknown")

    async def remember_first_answer(
        self, submitter: Submitter, payload: ActionPayload, status_code: int
    ) -> None:
        """How the action's first request was answered, for its replays (best effort)."""
        with contextlib.suppress(BackendUnavailable):
            await self.guard.set_first_status(
                user_id=submitter.user_id, nonce=payload.nonce, status_code=status_code
            )

    async def _replayed(self, action_id: uuid.UUID, nonce: str, first_status_code: int) -> Replayed:
        found = await stored_action(self.actions, action_id)
        if isinstance(found, Unavailable):
            return Replayed(action_id, nonce, first_status_code, None, store_answered=False)
        return Replayed(action_id, nonce, first_status_code, found, store_answered=True)

    async def _publish(self, envelope: ActionEnvelope) -> _NotQueued | _OutcomeUnknown | None:
        """Through the process's publisher, which confirms it in a batch with its neighbours:
        None once confirmed. Anything unforeseen is an unknown outcome."""
        try:
            # Given up on (the timeout), the action is skipped if its batch has not left yet.
            with trio.fail_after(self.config.amqp.publish_timeout_s):
                await publisher.publish(self.publisher, envelope)
        except trio.TooSlowError:
            return _OutcomeUnknown()
        except PublishOutcomeUnknown:
            return _OutcomeUnknown()
        except PublishFailed as exc:
            return _NotQueued(str(exc))
        except Exception:
            return _OutcomeUnknown()
        return None


async def _best_effort(update: Callable[[], Awaitable[None]]) -> None:
    """An edge-guard update the answer does not wait long for, nor a cancelled request stops."""
    try:
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S):
            await update()
    except BackendUnavailable:
        pass


@dataclass(frozen=True, slots=True)
class _NotQueued:
    """The broker refused the message: it is certainly not queued."""

    reason: str


@dataclass(frozen=True, slots=True)
class _OutcomeUnknown:
    """No confirm came: the broker may have queued the message or not."""


def _envelope(
    payload: ActionPayload, submitter: Submitter, action_id: uuid.UUID, now_ms: int
) -> ActionEnvelope:
    return ActionEnvelope(
        action_id=action_id,
        user_id=submitter.user_id,
        action_type=payload.action_type,
        action_data=dict(payload.action_data),
        nonce=payload.nonce,
        received_at_ms=now_ms,
        ip=submitter.ip,
        user_agent=submitter.user_agent[:512],
        headers=dict(submitter.headers),
    )
