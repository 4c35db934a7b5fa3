"""The operators' moderation endpoints, behind the `admin` scope (`http/admin.py`):

- `GET /api/v1/admin/flags`: the behavioural flags, newest first, paged. Query: `user` (a user
  id), `since` (an RFC 3339 time, epoch ms, or a span back such as `2h`), `kind`, `standing`
  (`true`: only flags not cleared), `limit` (1 to 500, default 50), `before` (the `next_before`
  of the previous page). Answers `{"flags": [...], "next_before": id | null}`.
- `POST /api/v1/admin/flags/{id}/clear`: clear a flag (once; clearing it again answers the flag
  as it is). 404 `not_found` for no such flag.
- `POST /api/v1/admin/users/{id}/suspend` and `.../unsuspend`: the user's further actions are
  refused `account_suspended` and the user leaves the board, or both are undone. Answers
  `{"user_id", "suspended", "changed"}`; 404 `not_found` for no such user.

The POSTs take no body: an empty one or `{}`; anything else is 400 `invalid_request`, and
over 4 KiB 413.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from quart import Blueprint, Response, jsonify, request

from scoreboard import clock
from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.anticheat.records import FLAG_KINDS, FlagQuery
from scoreboard.http.admin import ADMIN_PREFIX, require_admin
from scoreboard.http.errors import RequestRejected, invalid_request, unavailable
from scoreboard.http.requests import query_args, request_data
from scoreboard.http.services import current_services
from scoreboard.since import InvalidSince, parse_since

T = TypeVar("T")

blueprint = Blueprint("moderation", __name__, url_prefix=ADMIN_PREFIX)

FLAG_QUERY_PARAMETERS = frozenset({"user", "since", "kind", "standing", "limit", "before"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ID = 2**63 - 1


def _not_found(what: str) -> RequestRejected:
    return RequestRejected(404, "not_found", what)


async def _stored(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except BackendUnavailable:
        raise unavailable(1, "the store is unavailable") from None


async def _no_body() -> None:
    if (await request_data(request)).strip() not in (b"", b"{}"):
        raise invalid_request("this endpoint takes no body (or {})")


def _positive_int(name: str, raw: str | None, maximum: int = MAX_ID) -> int | None:
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise invalid_request(f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


@blueprint.get("/flags")
async def list_flags() -> Response:
    svc = current_services()
    await require_admin(svc)
    args = query_args(request.args, FLAG_QUERY_PARAMETERS)
    kind = args.get("kind")
    if kind is not None and kind not in FLAG_KINDS:
        raise invalid_request(f"kind must be one of {', '.join(FLAG_KINDS)}")
    standing = args.get("standing", "false")
    if standing not in ("true", "false"):
        raise invalid_request("standing must be true or false")
    since_ms: int | None = None
    if (since := args.get("since")) is not None:
        try:
            since_ms = parse_since(since, clock.now_ms())
        except InvalidSince as exc:
            raise invalid_request(f"since: {exc}") from None
    limit = _positive_int("limit", args.get("limit"), MAX_LIMIT) or DEFAULT_LIMIT
    query = FlagQuery(
        user_id=_positive_int("user", args.get("user")),
        since_ms=since_ms,
        kind=kind,
        standing_only=standing == "true",
        before_id=_positive_int("before", args.get("before")),
        limit=limit,
    )
    records = await _stored(lambda: svc.store.list_flags(query))
    next_before = records[-1].flag_id if len(records) == limit else None
    return jsonify({"flags": [record.as_json() for record in records], "next_before": next_before})


@blueprint.post("/flags/<int:flag_id>/clear")
async def clear_flag(flag_id: int) -> Response:
    svc = current_services()
    claims = await require_admin(svc)
    await _no_body()
    if flag_id > MAX_ID:
        raise _not_found(f"no flag {flag_id}")
    record = await _stored(lambda: svc.store.clear_flag(flag_id, f"user:{claims.user_id}"))
    if record is None:
        raise _not_found(f"no flag {flag_id}")
    return jsonify({"flag": record.as_json()})


async def _set_suspended(user_id: int, suspended: bool) -> Response:
    svc = current_services()
    claims = await require_admin(svc)
    await _no_body()
    user = None if user_id > MAX_ID else await _stored(lambda: svc.store.get_user(user_id))
    if user is None:
        raise _not_found(f"no user {user_id}")
    changed = await _stored(
        lambda: svc.store.set_suspended(user.username, suspended, f"user:{claims.user_id}")
    )
    if changed is None:
        raise _not_found(f"no user {user_id}")
    return jsonify({"user_id": user_id, "suspended": suspended, "changed": changed[1]})


@blueprint.post("/users/<int:user_id>/suspend")
async def suspend(user_id: int) -> Response:
    return await _set_suspended(user_id, True)


@blueprint.post("/users/<int:user_id>/unsuspend")
async def unsuspend(user_id: int) -> Response:
    return await _set_suspended(user_id, False)
