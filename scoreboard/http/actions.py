"""`/api/v1/actions/*` (docs/api.md)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from scoreboard import logs, metrics
from scoreboard.actors import hub
from scoreboard.actors.frames import rfc3339_ms
from scoreboard.http.edge_audit import audit_refusal
from scoreboard.http.errors import RequestRejected, insufficient_scope, invalid_request, rejection
from scoreboard.http.requests import (
    RequestHeaders,
    audited_headers,
    authenticate,
    bearer_from,
    bearer_token,
    client_ip,
    read_json,
    request_data,
)
from scoreboard.http.services import Services, current_services
from scoreboard.intake import (
    Accepted,
    Refused,
    Replayed,
    Submitted,
    Submitter,
    Unavailable,
    stored_action,
)
from scoreboard.records import ActionRecord, Outcome

blueprint = Blueprint("actions", __name__)

MAX_WAIT_S = 10.0
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)
COMPLETED_MESSAGE = "Action completed successfully"


def prefer_wait_s(header: str | None) -> float:
    """Seconds from `Prefer: wait=N` (RFC 7240), capped at 10; 0 when absent or malformed."""
    if not header:
        return 0.0
    match = PREFER_WAIT.search(header)
    return min(float(match.group(1)), MAX_WAIT_S) if match else 0.0


def location(action_id: uuid.UUID | str) -> str:
    return f"/api/v1/actions/{action_id}"


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer of `POST /api/v1/actions/perform`, whichever layer sends it: the Quart
    route (`as_response`) or the lean ASGI route (`http/action_route.py`)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def refusal(cls, rejection: RequestRejected) -> Answer:
        return cls(rejection.status, rejection.body(), dict(rejection.headers))

    def as_response(self) -> Response:
        response = jsonify(self.body)
        response.status_code = self.status
        for name, value in self.headers.items():
            response.headers[name] = value
        return response


@dataclass(frozen=True, slots=True)
class PerformRequest:
    """What performing an action reads of the HTTP request."""

    headers: RequestHeaders  # read by lowercase name
    token_in_url: bool
    remote_addr: str | None
    content_length: int | None
    read_body: Callable[[], Awaitable[bytes]]


def accepted_response(
    action_id: uuid.UUID | str, status: str = "accepted", *, replayed: bool = False
) -> Answer:
    action_id = str(action_id)
    headers = {"Location": location(action_id)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    body = {"success": True, "action_id": action_id, "status": status}
    return Answer(202, body, headers)


def outcome_response(action_id: uuid.UUID, outcome: Outcome) -> Answer:
    """The body for a finished action (200), or its refusal (422 / 429)."""
    status, error, retry_after_s = outcome.status, outcome.error, outcome.retry_after_s
    body: dict[str, Any]
    if status == "completed":
        body = {
            "success": True,
            "action_id": str(action_id),
            "score_delta": outcome.score_delta,
            "new_score": outcome.new_score,
            "message": COMPLETED_MESSAGE,
        }
        code = 200
    else:
        body = {
            "success": False,
            "action_id": str(action_id),
            "error": error or ("action_failed" if status == "failed" else "invalid_action"),
            "message": outcome.message or f"the action ended {status}",
        }
        code = 422
        if error == "rate_limit_exceeded" and retry_after_s is not None:
            body["retry_after"] = retry_after_s
            code = 429
    headers = {"Location": location(action_id)}
    if code == 429 and retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return Answer(code, body, headers)


def record_json(record: ActionRecord) -> dict[str, Any]:
    return {
        "action_id": str(record.action_id),
        "action_type": record.action_type,
        "status": record.outcome.status,
        "score_delta": record.outcome.score_delta,
        "new_score": record.outcome.new_score,
        "error": record.outcome.error,
        "message": record.outcome.message,
        "created_at": rfc3339_ms(record.created_at_ms),
        "processed_at": rfc3339_ms(record.processed_at_ms) if record.processed_at_ms else None,
    }


def replay_response(replayed: Replayed) -> Answer:
    """The first answer again, with the action's current status. When the store does not
    answer, a first 202 is repeated as it was (the action is queued, that much is known)."""
    record = replayed.record
    if replayed.first_status_code != 202:
        if not replayed.store_answered:
            raise rejection(Unavailable("the store is unavailable"))
        if record is not None:
            # A replay is refused no wait: a rate-limited first answer comes back as 422.
            answer = outcome_response(record.action_id, replace(record.outcome, retry_after_s=None))
            answer.headers["Idempotent-Replayed"] = "true"
            return answer
    status = record.outcome.status if record else "accepted"
    return accepted_response(replayed.action_id, status, replayed=True)


@blueprint.post("/api/v1/actions/perform")
async def perform() -> Response:
    answer = await perform_action(
        current_services(),
        PerformRequest(
            headers=request.headers,
            token_in_url="access_token" in request.args,
            remote_addr=request.remote_addr,
            content_length=request.content_length,
            read_body=lambda: request_data(request),
        ),
    )
    return answer.as_response()


@dataclass(slots=True)
class _Attempt:
    """What a request has shown of itself so far, for the audit trail of its refusal."""

    user_id: int | None = None
    body: object = None


async def perform_action(svc: Services, request: PerformRequest) -> Answer:
    """`POST /api/v1/actions/perform` (docs/api.md), refusals included: each refusal of the
    client's goes to the audit trail."""
    started = time.perf_counter()
    attempt = _Attempt()
    # The action id `_perform` sets holds for the lines logged after it, up to the end of this
    # request (the next request on the connection runs in the same task): set and reset here,
    # without the generator and frames of a context manager on the hot path.
    scope = logs.current_action_id.set(None)
    try:
        answer = await _perform(svc, request, attempt)
    except RequestRejected as refused:
        metrics.ACTIONS_REFUSED.labels(refused.error).inc()
        headers = request.headers
        audit_refusal(
            svc,
            refused,
            channel="http",
            user_id=attempt.user_id,
            attempted=attempt.body,
            ip=client_ip(request.remote_addr, headers, svc.config.server.trusted_proxies),
            user_agent=headers.get("user-agent", ""),
            headers=audited_headers(headers),
        )
        return Answer.refusal(refused)
    finally:
        logs.current_action_id.reset(scope)
    if answer.status == 202:  # accepted and queued; a waited-for outcome counts its wait too
        metrics.ACCEPT_LATENCY.observe(time.perf_counter() - started)
    return answer


async def _perform(svc: Services, request: PerformRequest, attempt: _Attempt) -> Answer:
    headers = request.headers
    token = bearer_from(headers.get("authorization", ""), token_in_url=request.token_in_url)
    claims = authenticate(svc, token, None)
    attempt.user_id = claims.user_id  # a refusal for the scope is the user's, in their trail
    if "write" not in claims.scope:
        raise insufficient_scope("write")
    body = await read_json(headers.get("content-type"), request.content_length, request.read_body)
    attempt.body = body
    payload = svc.intake.parse(body)
    if isinstance(payload, Refused):
        raise rejection(payload)
    wait_s = prefer_wait_s(headers.get("prefer"))
    submitter = Submitter(
        user_id=claims.user_id,
        ip=client_ip(request.remote_addr, headers, svc.config.server.trusted_proxies),
        user_agent=headers.get("user-agent", ""),
        headers=audited_headers(headers),
    )
    action_id = uuid.uuid4()
    action_id_text = str(action_id)  # the log context and the answer: formatted once
    logs.current_action_id.set(action_id_text)
    if not wait_s:
        submitted = await svc.intake.submit(payload, submitter, action_id=action_id)
        return _unless_accepted(submitted) or accepted_response(action_id_text)
    # Waiting from before the action is queued: its outcome cannot slip past.
    async with hub.waiting_for(svc.hub, action_id) as awaited:
        submitted = await svc.intake.submit(payload, submitter, action_id=action_id)
        if (answer := _unless_accepted(submitted)) is not None:
            return answer
        finished = None
        with trio.move_on_after(wait_s):
            finished = await awaited.wait()
    if finished is None:
        return accepted_response(action_id_text)
    answer = outcome_response(action_id, finished.outcome)
    await svc.intake.remember_first_answer(submitter, payload, answer.status)
    return answer


def _unless_accepted(submitted: Submitted) -> Answer | None:
    """The answer to a submission the intake did not accept as a new action (a replay, or a
    refusal, raised); None for `Accepted`."""
    match submitted:
        case Replayed() as replayed:
            return replay_response(replayed)
        case Refused() | Unavailable() as refused:
            raise rejection(refused)
        case Accepted():
            return None


@blueprint.get("/api/v1/actions/types")
async def action_types() -> Response:
    return jsonify(current_services().catalogue.as_json())


@blueprint.get("/api/v1/actions/<action_id>")
async def get_action(action_id: str) -> Response:
    svc = current_services()
    claims = authenticate(svc, bearer_token(request), "read")
    try:
        parsed = uuid.UUID(action_id)
    except ValueError:
        raise invalid_request("action_id must be a UUID") from None
    record = await stored_action(svc.store, parsed)
    if isinstance(record, Unavailable):
        raise rejection(record)
    if record is None:
        pending = await svc.guard.pending_action(parsed)
        if pending is None or pending.user_id != claims.user_id:
            raise RequestRejected(404, "not_found", "no such action")
        return jsonify(
            {
                "action_id": str(parsed),
                "action_type": pending.action_type,
                "status": "accepted",
                "score_delta": None,
                "new_score": None,
                "error": None,
                "created_at": rfc3339_ms(pending.created_at_ms),
                "processed_at": None,
            }
        )
    if record.user_id != claims.user_id:
        raise RequestRejected(404, "not_found", "no such action")
    return jsonify(record_json(record))
