"""`/api/v1/leaderboard` and `/api/v1/leaderboard/me` (contract §3), read from the Redis board."""

from __future__ import annotations

import re

import trio
from quart import Blueprint, Response, jsonify, request

from scoreboard.actors.frames import rfc3339_ms
from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.http.errors import invalid_request, unavailable
from scoreboard.http.requests import authenticate, bearer_token
from scoreboard.http.services import current_services

blueprint = Blueprint("leaderboard", __name__)

NEIGHBOURS = 5
BOARD_READ_TIMEOUT_S = 5.0
DIGITS = re.compile(r"[0-9]{1,9}")



def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() admits "²" (int() then fails: a 500) and "٣".
    if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise invalid_request(f"limit must be an integer from 1 to {maximum}")
    return int(raw)


@blueprint.get("/api/v1/leaderboard")
async def leaderboard() -> Response:
    svc = current_services()
    limit = parse_limit(
        request.args.get("limit"), svc.config.leaderboard.size, svc.config.leaderboard.max_limit
    )
    try:
        with trio.fail_after(BOARD_READ_TIMEOUT_S):
            entries, updated_at_ms = await svc.board.top(limit)
    except (BackendUnavailable, trio.TooSlowError):
        raise unavailable(1, "the leaderboard is unavailable") from None
    return jsonify(
        {"leaderboard": [e.as_json() for e in entries], "updated_at": rfc3339_ms(updated_at_ms)}
    )


@blueprint.get("/api/v1/leaderboard/me")
async def leaderboard_me() -> Response:
    svc = current_services()
    claims = authenticate(svc, bearer_token(request), "read")
    try:
        with trio.fail_after(BOARD_READ_TIMEOUT_S):
            view = await svc.board.around(claims.user_id, NEIGHBOURS)
            user = None if view is not None else await svc.store.get_user(claims.user_id)
    except (BackendUnavailable, trio.TooSlowError):
        raise unavailable(1, "the leaderboard is unavailable") from None
    if view is not None:
        return jsonify(
            {
                **view.me.as_json(),
                "above": [e.as_json() for e in view.above],
                "below": [e.as_json() for e in view.below],
            }
        )
    return jsonify(
        {
            "rank": None,
            "user_id": claims.user_id,
            "username": user.username if user else None,
            "score": user.score if user else 0,
            "above": [],
            "below": [],
        }
    )
