"""`GET /api/v1/admin/audit?user=U[&since=T][&limit=N][&cursor=C]`: a user's audit trail, for
admins (`scoreboard/audit.py` says what an entry holds), newest first, one page at a time."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, jsonify, request

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.audit import (
    DEFAULT_LIMIT,
    AuditQueryError,
    decode_cursor,
    encode_cursor,
    entry_json,
    parse_limit,
    parse_time_ms,
)
from scoreboard.http.admin import ADMIN_PREFIX, require_admin
from scoreboard.http.errors import RequestRejected, invalid_request, unavailable
from scoreboard.http.requests import query_args
from scoreboard.http.services import current_services

blueprint = Blueprint("audit", __name__, url_prefix=ADMIN_PREFIX)

PARAMETERS = frozenset({"user", "since", "limit", "cursor"})
MAX_USERNAME_CHARS = 64
STORE_TIMEOUT_S = 10.0


@blueprint.get("/audit")
async def audit_trail() -> Response:
    svc = current_services()
    await require_admin(svc)
    args = query_args(request.args, PARAMETERS)
    username = args.get("user", "")
    if not username or len(username) > MAX_USERNAME_CHARS:
        raise invalid_request("user is the username whose trail to read")
    try:
        since_ms = parse_time_ms(args["since"]) if "since" in args else 0
        limit = parse_limit(args["limit"]) if "limit" in args else DEFAULT_LIMIT
        before = decode_cursor(args["cursor"]) if "cursor" in args else None
    except AuditQueryError as exc:
        raise invalid_request(str(exc)) from None
    try:
        with trio.fail_after(STORE_TIMEOUT_S):
            user = await svc.store.get_user_by_username(username)
            if user is None:
                raise RequestRejected(404, "not_found", "no such user")
            # One more than the page: whether there is a next one.
            entries = await svc.store.audit_trail(
                user.user_id, since_ms=since_ms, before=before, limit=limit + 1
            )
    except (BackendUnavailable, trio.TooSlowError):
        raise unavailable(1, "the store is unavailable") from None
    page = entries[:limit]
    return jsonify(
        {
            "user": {"user_id": user.user_id, "username": user.username},
            "entries": [entry_json(entry) for entry in page],
            "next_cursor": encode_cursor(page[-1].cursor) if len(entries) > limit else None,
        }
    )
