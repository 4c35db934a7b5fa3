"""The Quart-Trio application and its Hypercorn server, run as a supervised child."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from scoreboard.http import actions, leaderboard, oauth, ops, pages, users, ws
from scoreboard.http.errors import RequestRejected, render
from scoreboard.http.requests import MAX_BODY_BYTES
from scoreboard.http.services import Services

log = logging.getLogger(__name__)


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("scoreboard")
    app.config["SERVICES"] = services
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False
    for module in (actions, leaderboard, users, ws, ops, pages):
        app.register_blueprint(module.blueprint)
    oauth.install(app, services)

    @app.errorhandler(RequestRejected)
    async def rejected(exc: RequestRejected) -> Response:
        return render(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        error = {404: "not_found", 405: "method_not_allowed", 413: "invalid_request"}.get(
            code, "invalid_request" if code < 500 else "server_error"
        )
        response = jsonify({"success": False, "error": error, "message": exc.description})
        response.status_code = code
        return response

    return app


def hypercorn_config(services: Services, host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.websocket_max_message_size = services.config.websocket.max_message_bytes
    config.graceful_timeout = services.config.server.shutdown_grace_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve_http(
    app: QuartTrio,
    config: HypercornConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; report the bound addresses once listening."""
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
