"""`POST /api/v1/users`: registration (contract §1)."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from scoreboard.adapters.interfaces import BackendUnavailable, EmailTaken, UsernameTaken
from scoreboard.auth.users import RegistrationError, register_user
from scoreboard.http.errors import RequestRejected, unavailable
from scoreboard.http.requests import json_body
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
        # This endpoint's refusals are OAuth-style (contract §1): `error_description`.
        raise _oauth_error(exc.status, exc.error, exc.message or exc.error) from None
    if not isinstance(body, dict):
        raise _oauth_error(400, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(body) - REGISTRATION_FIELDS)
    if unknown:
        raise _oauth_error(400, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
    try:
        user_id = await register_user(
            svc.store, svc.passwords, body.get("username"), body.get("email"), body.get("password")
        )
    except RegistrationError as exc:
        raise _oauth_error(400, "invalid_request", str(exc)) from None
    except UsernameTaken:
        raise RequestRejected(409, "username_taken") from None
    except EmailTaken:
        raise RequestRejected(409, "email_taken") from None
    except BackendUnavailable:
        raise unavailable(1, "the user store is unavailable") from None
    response = jsonify({"user_id": user_id, "username": body["username"]})
    response.status_code = 201
    return response
