"""`/api/v1/leaderboard` and `/api/v1/leaderboard/me` (docs/api.md), read from the Redis board.

The board is a cache of Postgres. When it is missing (Redis restarted empty, or was flushed) it
is never served as an empty leaderboard: the first request that finds it missing rebuilds it
from the store, at once, and answers from the new board; requests meanwhile get 503 with
`Retry-After`. The rebuild swaps the board in only if nobody (a keeper) has built it meanwhile,
and it goes on even if the client that started it leaves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from quart import Blueprint, Response, jsonify, request

from scoreboard.actors.frames import rfc3339_ms
from scoreboard.adapters.interfaces import BackendUnavailable, BoardMissing
from scoreboard.http.errors import invalid_request, unavailable
from scoreboard.http.requests import authenticate, bearer_token
from scoreboard.http.services import Services, current_services

T = TypeVar("T")
log = logging.getLogger(__name__)

blueprint = Blueprint("leaderboard", __name__)

NEIGHBOURS = 5
BOARD_READ_TIMEOUT_S = 5.0
REBUILD_TIMEOUT_S = 30.0  # reads every user with a score from the store, then writes them
DIGITS = re.compile(r"[0-9]{1,9}")


async def read_board(svc: Services, read: Callable[[], Awaitable[T]]) -> T:
    """`read()` from the board; a missing board is rebuilt first (or 503, Retry-After)."""
    try:
        with trio.fail_after(BOARD_READ_TIMEOUT_S):
            return await read()
    except BoardMissing:
        pass
    except (BackendUnavailable, trio.TooSlowError):
        raise unavailable(1, "the leaderboard is unavailable") from None
    if svc.board_rebuild.locked():
        raise unavailable(1, "the leaderboard is being rebuilt")
    async with svc.board_rebuild:
        try:
            with trio.CancelScope(shield=True), trio.fail_after(REBUILD_TIMEOUT_S):
                built = await svc.board.rebuild_if_missing(await svc.store.board_entries())
            outcome = "rebuilt it" if built else "another process rebuilt it meanwhile"
            log.warning("leaderboard: the board was missing; %s", outcome)
            with trio.fail_after(BOARD_READ_TIMEOUT_S):
                return await read()
        except (BackendUnavailable, trio.TooSlowError):
            raise unavailable(1, "the leaderboard is being rebuilt") from None


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
    entries, updated_at_ms = await read_board(svc, lambda: svc.board.top(limit))
    return jsonify(
        {"leaderboard": [e.as_json() for e in entries], "updated_at": rfc3339_ms(updated_at_ms)}
    )


@blueprint.get("/api/v1/leaderboard/me")
async def leaderboard_me() -> Response:
    svc = current_services()
    claims = authenticate(svc, bearer_token(request), "read")
    view = await read_board(svc, lambda: svc.board.around(claims.user_id, NEIGHBOURS))
    try:
        with trio.fail_after(BOARD_READ_TIMEOUT_S):
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
