"""The operators' endpoints under `/api/v1/admin/`, and the guard every one of them takes.

`require_admin` answers 401 `invalid_token` without a valid bearer token and 403
`insufficient_scope` without the `admin` scope. The scope alone is not trusted: the account is
read from the store on every admin request (these are rare), so an account whose admin mark
was taken away (`scoreboard users revoke-admin`), or that was disabled, is refused at once,
even with an access token issued before.

`GET /api/v1/admin/me` says who the admin is (a console checks it before showing anything).
Other admin routes live in their own modules, each on a blueprint with
`url_prefix=ADMIN_PREFIX` and each starting with `claims = await require_admin(svc)`.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.auth.clients import ADMIN_SCOPE
from scoreboard.auth.tokens import AccessClaims
from scoreboard.http.errors import RequestRejected, insufficient_scope, unavailable
from scoreboard.http.requests import authenticate, bearer_token
from scoreboard.http.services import Services, current_services

ADMIN_PREFIX = "/api/v1/admin"

blueprint = Blueprint("admin", __name__, url_prefix=ADMIN_PREFIX)


async def require_admin(svc: Services) -> AccessClaims:
    """The caller's claims if the caller is an admin now; else the refusal to answer."""
    claims = authenticate(svc, bearer_token(request), ADMIN_SCOPE)
    try:
        user = await svc.store.get_user(claims.user_id)
    except BackendUnavailable:
        raise unavailable(1, "the user store is unavailable") from None
    if user is None or user.disabled or not user.admin:
        refusal: RequestRejected = insufficient_scope(ADMIN_SCOPE)
        refusal.message = "this account is not an admin"
        raise refusal
    return claims


@blueprint.get("/me")
async def me() -> Response:
    svc = current_services()
    claims = await require_admin(svc)
    return jsonify({"user_id": claims.user_id, "scope": sorted(claims.scope)})
