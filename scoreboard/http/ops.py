"""Operations endpoints (docs/api.md): liveness, readiness, actor statistics, metrics."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Blueprint, Response, jsonify

from scoreboard.http.services import Services, current_services
from scoreboard.supervisor import ChildStatistics

blueprint = Blueprint("ops", __name__)

BACKEND_PING_TIMEOUT_S = 2.0
BACKEND_NAMES = {
    "real": ("postgres", "redis", "rabbitmq"),
    "embedded": ("sqlite", "memory_board", "sqlite_outbox"),
}


async def _answers(ping: Callable[[], Awaitable[None]]) -> bool:
    with trio.move_on_after(BACKEND_PING_TIMEOUT_S):
        try:
            await ping()
        except Exception:
            return False
        return True
    return False


async def backend_health(svc: Services) -> dict[str, bool]:
    results: dict[str, bool] = {}

    async def check(name: str, ping: Callable[[], Awaitable[None]]) -> None:
        results[name] = await _answers(ping)

    names = BACKEND_NAMES[svc.config.backend_mode]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check, names[0], svc.store.ping)
        nursery.start_soon(check, names[1], svc.board.ping)
        nursery.start_soon(check, names[2], svc.broker.ping)
    return results


@blueprint.get("/healthz")
async def healthz() -> Response:
    # The process id tells which of several API processes on one port answered.
    return jsonify({"status": "ok", "pid": os.getpid()})


@blueprint.get("/readyz")
async def readyz() -> Response:
    svc = current_services()
    backends = await backend_health(svc)
    actors_running = svc.supervision.all_running
    ready = actors_running and all(backends.values())
    body: dict[str, Any] = {
        "ready": ready,
        "actors_running": actors_running,
        "backends": backends,
        "limits_enabled": svc.config.limits.enabled,
        "role": svc.config.server.role,
        "backend_mode": svc.config.backend_mode,
    }
    if not svc.config.limits.enabled:
        body["warning"] = "rate limits and cooldowns are disabled (SCOREBOARD_LIMITS_ENABLED=false)"
    response = jsonify(body)
    response.status_code = 200 if ready else 503
    return response


@blueprint.get("/api/v1/supervisor")
async def supervisor() -> Response:
    stats = current_services().supervision.statistics()
    return jsonify({"actors": [statistics_json(stat) for stat in stats]})


def statistics_json(stat: ChildStatistics) -> dict[str, Any]:
    json: dict[str, Any] = {
        "id": stat.id,
        "state": stat.state,
        "restarts": stat.restarts,
        "last_error": stat.last_error,
        "uptime_s": stat.uptime_s,
        "inbox_depth": stat.inbox_depth,
        "inbox_peak": stat.inbox_peak,
    }
    if stat.children is not None:
        json["children"] = stat.children
    return json


def metric_rows(stats: list[ChildStatistics]) -> list[ChildStatistics]:
    """The rows that make steady metric series: a dynamic supervisor's row, not the rows of its
    busiest children, which come and go with the load."""
    dynamic = [f"{stat.id}/" for stat in stats if stat.children is not None]
    return [stat for stat in stats if not stat.id.startswith(tuple(dynamic))]


def connection_metrics(svc: Services) -> list[str]:
    """The listener's and the live feed's figures: open connections, how WebSockets closed,
    sockets whose kernel buffer is full, and the hub's fan-outs."""
    counts, broadcast = svc.connections, svc.broadcast
    lines = [
        "# HELP scoreboard_connections_open Open TCP connections (HTTP and WebSocket).",
        "# TYPE scoreboard_connections_open gauge",
        f"scoreboard_connections_open {counts.open}",
        "# HELP scoreboard_websocket_backlogged WebSockets whose kernel send buffer is full.",
        "# TYPE scoreboard_websocket_backlogged gauge",
        f"scoreboard_websocket_backlogged {counts.backlogged}",
        "# HELP scoreboard_websocket_closes_total WebSockets closed, by close code (1006: the "
        "client vanished without a close).",
        "# TYPE scoreboard_websocket_closes_total counter",
    ]
    lines += [
        f'scoreboard_websocket_closes_total{{code="{code}"}} {count}'
        for code, count in sorted(counts.closes.items())
    ]
    lines += [
        "# HELP scoreboard_broadcasts_total Leaderboard snapshots sent to every WebSocket.",
        "# TYPE scoreboard_broadcasts_total counter",
        f"scoreboard_broadcasts_total {broadcast.broadcasts}",
        "# HELP scoreboard_broadcast_fanout_seconds How long the last snapshot's fan-out took.",
        "# TYPE scoreboard_broadcast_fanout_seconds gauge",
        f"scoreboard_broadcast_fanout_seconds {broadcast.last_fanout_s:.6f}",
        "# HELP scoreboard_broadcast_interval_seconds The current least time between snapshots "
        "(the configured minimum, stretched while fan-outs take long).",
        "# TYPE scoreboard_broadcast_interval_seconds gauge",
        f"scoreboard_broadcast_interval_seconds {broadcast.interval_s:.6f}",
    ]
    return lines


@blueprint.get("/metrics")
async def metrics() -> Response:
    svc = current_services()
    lines = [
        "# HELP scoreboard_actor_restarts_total Restarts of each supervised actor.",
        "# TYPE scoreboard_actor_restarts_total counter",
    ]
    stats = metric_rows(svc.supervision.statistics())
    lines += [f'scoreboard_actor_restarts_total{{actor="{s.id}"}} {s.restarts}' for s in stats]
    lines += [
        "# HELP scoreboard_actor_inbox_depth Messages waiting in each actor's inbox.",
        "# TYPE scoreboard_actor_inbox_depth gauge",
    ]
    lines += [f'scoreboard_actor_inbox_depth{{actor="{s.id}"}} {s.inbox_depth or 0}' for s in stats]
    lines += [
        "# HELP scoreboard_actor_running Whether each actor runs (1) or not (0).",
        "# TYPE scoreboard_actor_running gauge",
    ]
    lines += [
        f'scoreboard_actor_running{{actor="{s.id}"}} {int(s.state == "running")}' for s in stats
    ]
    lines += [
        "# HELP scoreboard_websocket_connections Open WebSocket connections.",
        "# TYPE scoreboard_websocket_connections gauge",
        f"scoreboard_websocket_connections {svc.connections.websockets}",
    ]
    lines += connection_metrics(svc)
    return Response(
        "\n".join(lines) + "\n", content_type="text/plain; version=0.0.4; charset=utf-8"
    )
