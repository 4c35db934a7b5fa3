"""The Quart-Trio application: every route but the live feed's WebSocket, which the listener
(`http/listener.py`) serves on its own lean path."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from scoreboard import json_codec
from scoreboard.http import (
    actions,
    admin,
    audit,
    leaderboard,
    moderation,
    oauth,
    openapi,
    ops,
    pages,
    users,
)
from scoreboard.http.action_route import ActionRoute
from scoreboard.http.body_guard import BodyGuard
from scoreboard.http.errors import RequestRejected, render
from scoreboard.http.ip_limit import IpLimit
from scoreboard.http.requests import MAX_BODY_BYTES
from scoreboard.http.services import Services


class OrjsonProvider(DefaultJSONProvider):
    """Quart's JSON through orjson: `jsonify` writes what it wrote before (sorted keys, compact,
    a final newline; non-ASCII text as UTF-8 rather than escapes) at a fraction of the cost."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return json_codec.dumps(obj, sort_keys=self.sort_keys).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return json_codec.loads(s)


def create_app(services: Services) -> QuartTrio:
    """The Quart application with every route."""
    # No automatic /static/<filename> route: the page's assets are served versioned (pages.py).
    app = QuartTrio("scoreboard", static_folder=None)
    app.json = OrjsonProvider(app)
    app.config["SERVICES"] = services
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False
    for module in (actions, admin, audit, moderation, leaderboard, users, ops, pages, openapi):
        app.register_blueprint(module.blueprint)
    oauth.install(app, services)

    @app.get("/api/v1/ws")
    async def live_feed_without_upgrade() -> Response:
        """Only a WebSocket upgrade reaches the live feed; the listener takes those itself."""
        response = jsonify(
            {
                "success": False,
                "error": "invalid_request",
                "message": "GET /api/v1/ws is a WebSocket: send an upgrade request",
            }
        )
        response.status_code = 426
        response.headers["Upgrade"] = "websocket"
        return response

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


def create_asgi_app(services: Services) -> BodyGuard:
    """The application as the listener serves it: each request's body is read (bounded in size
    and time) before the application sees the request (`body_guard.py`), then counted against
    its address's request limit (`ip_limit.py`) before any work is done for it, then the lean
    perform route (`action_route.py`) in front of the Quart application. Plain HTTP/1.1 perform
    requests do not come through here: the listener serves them (`perform_loop.py`)."""
    return BodyGuard(
        IpLimit(ActionRoute(create_app(services), services), services),
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout_s=services.config.server.body_timeout_s,
    )
