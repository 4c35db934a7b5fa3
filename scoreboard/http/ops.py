"""Operations endpoints: liveness, readiness, actor statistics, metrics (docs/operations.md).

Every process, whatever its role, serves them on its own operations listener (`[ops]`, by
default on 127.0.0.1 and a port the kernel picks, logged at start): a bare ASGI application
(`OpsApp`) on its own Hypercorn server, apart from the public port, so that a worker, which
serves no HTTP otherwise, can be watched, and a scrape never queues behind public traffic.

The public port keeps `/healthz` and `/readyz` (load balancers probe them there); it serves
`/metrics` and `/api/v1/supervisor` only with `ops.expose_on_public_port`. With an ops token
(`SCOREBOARD_OPS_TOKEN` or `_FILE`) those two need `Authorization: Bearer <token>`, wherever they
are served; `/api/v1/supervisor` shows a crash's exception text only to a request bearing the
token, else its type alone (the text may hold addresses, user input or a backend's error).
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from hypercorn.utils import wrap_app
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from quart import Blueprint, Response, jsonify, request

from scoreboard import json_codec, metrics
from scoreboard.adapters.interfaces import Board, Broker, Store
from scoreboard.config import Config, ConfigError, OpsConfig
from scoreboard.drain import Drain
from scoreboard.http.services import current_services
from scoreboard.supervisor import ChildStatistics, Supervision

log = logging.getLogger(__name__)

blueprint = Blueprint("ops", __name__)

BACKEND_PING_TIMEOUT_S = 2.0
QUEUE_DEPTH_TIMEOUT_S = 2.0
BACKEND_NAMES = {
    "real": ("postgres", "redis", "rabbitmq"),
    "embedded": ("sqlite", "memory_board", "sqlite_outbox"),
}
OPS_PATHS = ("/healthz", "/readyz", "/api/v1/supervisor", "/metrics")
GUARDED_PATHS = ("/api/v1/supervisor", "/metrics")
LISTEN_BACKLOG = 64


def load_ops_token(ops: OpsConfig) -> str | None:
    """The ops bearer token, from the setting or its file; None when neither is set."""
    if ops.token and ops.token_file:
        raise ConfigError("set ops.token or ops.token_file (SCOREBOARD_OPS_TOKEN[_FILE]), not both")
    token = ops.token
    if ops.token_file:
        try:
            token = Path(ops.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"ops.token_file {ops.token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"ops.token_file {ops.token_file} is empty")
    return token or None


class _DefaultRegistry(Collector):
    """The process-wide metrics (`scoreboard.metrics`, and the process and GC collectors)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


@dataclass(frozen=True)
class Observed:
    """What the operations endpoints report on, in any role: the supervision tree, the backends,
    and the registry of this server's metrics."""

    config: Config
    supervision: Supervision
    store: Store
    board: Board
    broker: Broker
    token: str | None
    registry: CollectorRegistry
    # The worker role reads the queues' depths at each scrape (the API's would be the same).
    reads_queues: bool
    # Set when the process stops: `/readyz` answers 503, responses close their connections.
    drain: Drain = field(default_factory=Drain)

    @classmethod
    def build(
        cls,
        config: Config,
        supervision: Supervision,
        *,
        store: Store,
        board: Board,
        broker: Broker,
        server_collector: metrics.ServerCollector,
    ) -> Observed:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_DefaultRegistry())
        registry.register(server_collector)
        return cls(
            config=config,
            supervision=supervision,
            store=store,
            board=board,
            broker=broker,
            token=load_ops_token(config.ops),
            registry=registry,
            reads_queues=config.server.role in ("all", "worker"),
        )

    def authorized(self, authorization: str | None) -> bool:
        """Whether the request bears the ops token (never, when none is configured)."""
        if self.token is None or not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        )

    def admits(self, path: str, authorization: str | None) -> bool:
        """Whether a request for `path` may be answered: the guarded paths need the token when
        one is configured."""
        if path not in GUARDED_PATHS or self.token is None:
            return True
        return self.authorized(authorization)


async def _answers(ping: Callable[[], Awaitable[None]]) -> bool:
    with trio.move_on_after(BACKEND_PING_TIMEOUT_S):
        try:
            await ping()
        except Exception:
            return False
        return True
    return False


async def backend_health(observed: Observed) -> dict[str, bool]:
    results: dict[str, bool] = {}

    async def check(name: str, ping: Callable[[], Awaitable[None]]) -> None:
        results[name] = await _answers(ping)

    names = BACKEND_NAMES[observed.config.backend_mode]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check, names[0], observed.store.ping)
        nursery.start_soon(check, names[1], observed.board.ping)
        nursery.start_soon(check, names[2], observed.broker.ping)
    return results


def healthz_body() -> dict[str, Any]:
    # The process id tells which of several API processes on one port answered.
    return {"status": "ok", "pid": os.getpid()}


async def unconsumed_queues(observed: Observed) -> list[str] | None:
    """The action queues no worker consumes; None when the broker did not say."""
    with trio.move_on_after(BACKEND_PING_TIMEOUT_S):
        try:
            return await observed.broker.unconsumed_queues()
        except Exception:
            return None
    return None


async def readiness(observed: Observed) -> tuple[int, dict[str, Any]]:
    config = observed.config
    backends = await backend_health(observed)
    actors_running = observed.supervision.all_running
    draining = observed.drain.draining
    broker_answers = backends[BACKEND_NAMES[config.backend_mode][2]]
    unconsumed = await unconsumed_queues(observed) if broker_answers else None
    reasons = [f"{name} does not answer" for name, answers in backends.items() if not answers]
    reasons += [f"no worker consumes {queue}" for queue in unconsumed or ()]
    if not actors_running:
        reasons.append("an actor of this process is not running")
    if draining:
        reasons.append("the process is draining (shutting down)")
    ready = not reasons
    body: dict[str, Any] = {
        "ready": ready,
        "reasons": reasons,
        "draining": draining,
        "unconsumed_queues": unconsumed,
        "actors_running": actors_running,
        "backends": backends,
        "limits_enabled": config.limits.enabled,
        "role": config.server.role,
        "backend_mode": config.backend_mode,
    }
    if not config.limits.enabled:
        body["warning"] = "rate limits and cooldowns are disabled (SCOREBOARD_LIMITS_ENABLED=false)"
    return (200 if ready else 503), body


def supervisor_body(observed: Observed, *, with_error_text: bool) -> dict[str, Any]:
    stats = observed.supervision.statistics()
    return {"actors": [statistics_json(stat, with_error_text) for stat in stats]}


def statistics_json(stat: ChildStatistics, with_error_text: bool = False) -> dict[str, Any]:
    last_error = stat.last_error
    if last_error is not None and not with_error_text:
        last_error = last_error.split(":", 1)[0]  # `Type: message` → the type alone
    json: dict[str, Any] = {
        "id": stat.id,
        "state": stat.state,
        "restarts": stat.restarts,
        "last_error": last_error,
        "uptime_s": stat.uptime_s,
        "inbox_depth": stat.inbox_depth,
        "inbox_peak": stat.inbox_peak,
    }
    if stat.children is not None:
        json["children"] = stat.children
    return json


async def metrics_text(observed: Observed) -> bytes:
    """The Prometheus text exposition of this process, the queues' depths read just now."""
    if observed.reads_queues:
        depths = None
        with trio.move_on_after(QUEUE_DEPTH_TIMEOUT_S):
            try:
                depths = await observed.broker.queue_depths()
            except Exception as exc:
                log.debug("queue depths unavailable: %s", exc)
        for queue, depth in (depths or {}).items():
            metrics.QUEUE_DEPTH.labels(queue).set(depth)
    # Collecting is plain, quick Python (no I/O): fine on the trio thread.
    return generate_latest(observed.registry)


# The public port's routes (the Quart application).


def _not_found() -> Response:
    response = jsonify({"success": False, "error": "not_found", "message": "not found"})
    response.status_code = 404
    return response


def _unauthorized() -> Response:
    response = jsonify(
        {"success": False, "error": "invalid_token", "message": "the ops token is required"}
    )
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="scoreboard-ops"'
    return response


@blueprint.get("/healthz")
async def healthz() -> Response:
    return jsonify(healthz_body())


@blueprint.get("/readyz")
async def readyz() -> Response:
    status, body = await readiness(current_services().observed)
    response = jsonify(body)
    response.status_code = status
    return response


@blueprint.get("/api/v1/supervisor")
async def supervisor() -> Response:
    observed = current_services().observed
    if not observed.config.ops.expose_on_public_port:
        return _not_found()
    authorization = request.headers.get("Authorization")
    if not observed.admits("/api/v1/supervisor", authorization):
        return _unauthorized()
    return jsonify(supervisor_body(observed, with_error_text=observed.authorized(authorization)))


@blueprint.get("/metrics")
async def public_metrics() -> Response:
    observed = current_services().observed
    if not observed.config.ops.expose_on_public_port:
        return _not_found()
    if not observed.admits("/metrics", request.headers.get("Authorization")):
        return _unauthorized()
    return Response(await metrics_text(observed), content_type=CONTENT_TYPE_PLAIN_0_0_4)


# The operations listener.


class OpsApp:
    """The operations endpoints as a bare ASGI application: four GET routes, no framework."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
        raw_authorization = headers.get("authorization")
        authorization = raw_authorization.decode("latin-1") if raw_authorization else None
        status, content_type, body, extra = await self.answer(scope["method"], path, authorization)
        response_headers: list[tuple[bytes, bytes]] = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        if scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def answer(
        self, method: str, path: str, authorization: str | None
    ) -> tuple[int, str, bytes, list[tuple[bytes, bytes]]]:
        observed = self.observed
        if path not in OPS_PATHS:
            return _json(404, {"success": False, "error": "not_found", "message": "not found"})
        if method not in ("GET", "HEAD"):
            status, kind, body, _ = _json(
                405, {"success": False, "error": "method_not_allowed", "message": "GET only"}
            )
            return status, kind, body, [(b"allow", b"GET, HEAD")]
        if not observed.admits(path, authorization):
            status, kind, body, _ = _json(
                401,
                {
                    "success": False,
                    "error": "invalid_token",
                    "message": "the ops token is required",
                },
            )
            return status, kind, body, [(b"www-authenticate", b'Bearer realm="scoreboard-ops"')]
        if path == "/healthz":
            return _json(200, healthz_body())
        if path == "/readyz":
            return _json(*await readiness(observed))
        if path == "/api/v1/supervisor":
            with_text = observed.authorized(authorization)
            return _json(200, supervisor_body(observed, with_error_text=with_text))
        return 200, CONTENT_TYPE_PLAIN_0_0_4, await metrics_text(observed), []


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes, list[tuple[bytes, bytes]]]:
    return status, "application/json", json_codec.dumps(body) + b"\n", []


def bind_ops_socket(config: Config) -> socket.socket:
    """The operations listener's socket, bound and listening: a port in use (or a host that is
    not this machine's) fails the start with a `ConfigError` naming the setting."""
    host = config.ops.host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, config.ops.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the operations listener cannot listen on {config.ops.host}:{config.ops.port} "
            f"(ops.host, ops.port / --ops-port): {exc.strerror or exc}"
        ) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_ops(
    observed: Observed,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the operations endpoints on `sock` until cancelled; reports started with the
    addresses it serves."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    app = wrap_app(OpsApp(observed), config.wsgi_max_body_size, "asgi")
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    await worker_serve(app, config, sockets=sockets, task_status=task_status)
