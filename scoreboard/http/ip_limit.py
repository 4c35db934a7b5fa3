"""ASGI middleware: the per-address request limit (`limits.ip_requests_per_minute`, default 100).

Every HTTP request to the API (`/api/...`) counts against its client address's sliding one-minute
window, whatever becomes of it afterwards (a 401, a 422, another limit's 429): the count is taken
before the application does any work for the request. The count is one atomic step in the edge
guard (a Redis script on the real stack, shared by every API process; the in-memory guard in
embedded mode), so the limit holds exactly across processes. A request the window has no room
for is answered 429 `rate_limit_exceeded` with `Retry-After` (at least 1 s) and is not counted
itself: a client that waits as told gets in.

The client address is the peer's, or, behind a trusted proxy (`server.trusted_proxies`), the last
untrusted hop of `X-Forwarded-For`; an IPv6 address counts as its /64 (`scoreboard.addresses`).
Every answer on a limited path carries the IETF draft's headers (draft-ietf-httpapi-ratelimit-
headers): `RateLimit-Policy: "ip";q=100;w=60` and `RateLimit: "ip";r=<remaining>;t=<seconds>`.

Not limited: health and readiness, metrics, the pages and their static files (none is under
`/api/`), and everything while `limits.enabled` is off. If the guard does not answer in time (Redis
down), the request goes on uncounted: the limits that need the guard to decide (actions, sign-in)
refuse with 503 on their own, and reads stay available.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from scoreboard import clock, json_codec, metrics
from scoreboard.adapters.interfaces import BackendUnavailable, RequestCount
from scoreboard.addresses import address_key
from scoreboard.http.errors import rate_limited
from scoreboard.http.requests import RequestHeaders, client_ip, scope_headers
from scoreboard.http.services import Services

log = logging.getLogger(__name__)

LIMITED_PREFIX = "/api/"
POLICY = "ip"
WINDOW_S = 60
GUARD_TIMEOUT_S = 2.0


class IpLimit:
    """An ASGI application: counts each API request, then hands it to `app` or answers 429."""

    def __init__(self, app: ASGIFramework, services: Services) -> None:
        self.app = app
        self._services = services

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(LIMITED_PREFIX)
            or not self._services.config.limits.enabled  # saves reading the headers
        ):
            await self.app(scope, receive, send)
            return
        client = scope["client"]
        counted = await count_request(
            self._services, client[0] if client else None, scope_headers(scope["headers"])
        )
        if counted is None:
            await self.app(scope, receive, send)
            return
        if not counted.admitted:
            await _too_many(send, counted.retry_after_s, counted.headers)
            return

        async def send_with_headers(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *counted.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True, slots=True)
class Counted:
    """One request counted: admitted or not, and the `RateLimit` headers of its answer."""

    admitted: bool
    retry_after_s: int  # refused: the Retry-After of the 429
    headers: list[tuple[bytes, bytes]]


async def count_request(
    services: Services, remote_addr: str | None, headers: RequestHeaders
) -> Counted | None:
    """Count one API request from `remote_addr` (behind a trusted proxy, its forwarded client)
    against its address's window; None when it goes on uncounted (limits off, or the guard
    failed). Called by `IpLimit` and by the listener's lean perform loop
    (`http/perform_loop.py`), so both count and answer the same way."""
    limits = services.config.limits
    if not limits.enabled:
        return None
    ip = client_ip(remote_addr, headers, services.config.server.trusted_proxies)
    try:
        with trio.fail_after(GUARD_TIMEOUT_S):
            count = await services.guard.count_request(
                f"ip:{address_key(ip)}", limits.ip_requests_per_minute, now_ms=clock.now_ms()
            )
    except (BackendUnavailable, trio.TooSlowError) as exc:
        log.warning("the per-address limit is not counted: the guard failed (%r)", exc)
        return None
    if not count.admitted:
        metrics.RATE_LIMITED.labels("requests_per_ip").inc()
    return Counted(count.admitted, count.reset_s, _headers(limits.ip_requests_per_minute, count))


def _headers(limit: int, count: RequestCount) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-policy", f'"{POLICY}";q={limit};w={WINDOW_S}'.encode()),
        (b"ratelimit", f'"{POLICY}";r={count.remaining};t={count.reset_s}'.encode()),
    ]


async def _too_many(
    send: ASGISendCallable, retry_after_s: int, headers: list[tuple[bytes, bytes]]
) -> None:
    refusal = rate_limited(retry_after_s)  # what every other 429 of the API answers
    body = json_codec.dumps(refusal.body(), sort_keys=True) + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                *(
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in refusal.headers.items()
                ),
                *headers,
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
