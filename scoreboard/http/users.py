"""`POST /api/v1/users`: registration (docs/api.md), limited per client IP and in all, and
hashed in a bounded share of the hashing capacity that never delays a sign-in."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from scoreboard import metrics
from scoreboard.adapters.interfaces import BackendUnavailable, EmailTaken, UsernameTaken
from scoreboard.auth.passwords import HashingBusy
from scoreboard.auth.users import RegistrationError, create_account, validate_registration
from scoreboard.http.errors import RequestRejected, unavailable
from scoreboard.http.limits import over_limit
from scoreboard.http.requests import client_ip, json_body
from scoreboard.http.services import current_services

blueprint = Blueprint("users", __name__)

REGISTRATION_FIELDS = frozenset({"username", "email", "password"})


def _oauth_error(status: int, error: str, description: str) -> RequestRejected:
    return RequestRejected(status, error, extra={"error_description": description})


@blueprint.post("/api/v1/users")
async def register() -> Response:
    svc = current_services()
    try:
        body = await json_body(request)
    except RequestRejected as exc:
        # This endpoint's refusals are OAuth-style (docs/api.md): `error_description`.
        raise _oauth_error(exc.status, exc.error, exc.message or exc.error) from None
    if not isinstance(body, dict):
        raise _oauth_error(400, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(body) - REGISTRATION_FIELDS)
    if unknown:
        raise _oauth_error(400, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
    try:
        registration = validate_registration(
            body.get("username"), body.get("email"), body.get("password")
        )
    except RegistrationError as exc:
        raise _oauth_error(400, "invalid_request", str(exc)) from None
    limits = svc.config.limits
    ip = client_ip(request.remote_addr, request.headers, svc.config.server.trusted_proxies)
    try:
        # Per address, and from all addresses together: each registration hashes a password.
        wait_s = await over_limit(
            svc,
            [
                (f"register:ip:{ip}", limits.registrations_per_minute_per_ip),
                ("register:all", limits.registrations_per_minute),
            ],
        )
        if wait_s:
            metrics.RATE_LIMITED.labels("registrations").inc()
            raise RequestRejected(
                429,
                "rate_limit_exceeded",
                headers={"Retry-After": str(wait_s)},
                extra={
                    "retry_after": wait_s,
                    "error_description": f"too many registrations; retry in {wait_s} s",
                },
            )
        user_id = await create_account(svc.store, svc.passwords, registration)
    except HashingBusy:
        raise unavailable(1, "too many registrations at once") from None
    except UsernameTaken:
        raise RequestRejected(409, "username_taken") from None
    except EmailTaken:
        raise RequestRejected(409, "email_taken") from None
    except BackendUnavailable:
        raise unavailable(1, "the user store is unavailable") from None
    response = jsonify({"user_id": user_id, "username": body["username"]})
    response.status_code = 201
    return response
