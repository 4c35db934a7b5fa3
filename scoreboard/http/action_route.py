"""`POST /api/v1/actions/perform` as a lean ASGI route in front of the Quart application.

Most perform requests never come here: the listener serves plain HTTP/1.1 ones on its own loop
(`http/perform_loop.py`), with this module's `perform` and `encode_answer`. This route answers
those that reach Hypercorn (HTTP/1.0, chunked bodies, h2c, heads the lean loop does not take).

The perform route is the hot path of the API: at hundreds of requests a second, Quart's request
and response objects, its context locals, routing and response conversion cost more CPU than the
action itself. This ASGI application answers that one route from the raw ASGI scope, reads the
body straight from `receive`, and writes the answer with two `send` calls; everything else
(other routes, other methods on this path, WebSockets, lifespan) goes to the Quart application
unchanged. The rules are not copied: it calls the same `perform_action` as the Quart route
(`http/actions.py`), with the same body checks (`http/requests.py:read_json`), so statuses,
bodies and headers are the same either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
)
from werkzeug.exceptions import InternalServerError

from scoreboard import json_codec
from scoreboard.http.actions import Answer, PerformRequest, perform_action
from scoreboard.http.requests import MAX_BODY_BYTES, RequestHeaders, body_too_large, scope_headers
from scoreboard.http.services import Services

log = logging.getLogger(__name__)

PERFORM_PATH = "/api/v1/actions/perform"


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class ActionRoute:
    """An ASGI application: the perform route itself, everything else to `app`."""

    def __init__(self, app: ASGIFramework, services: Services) -> None:
        self.app = app
        self._services = services

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" and scope["path"] == PERFORM_PATH and scope["method"] == "POST":
            await self._perform(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _perform(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        headers = scope_headers(scope["headers"])
        client = scope["client"]
        try:
            answer = await perform(
                self._services,
                headers,
                scope["query_string"],
                client[0] if client else None,
                lambda: _read_body(receive),
            )
        except ClientGone:
            return
        await _send_answer(send, answer)


async def perform(
    services: Services,
    headers: RequestHeaders,
    query_string: bytes,
    remote_addr: str | None,
    read_body: Callable[[], Awaitable[bytes]],
) -> Answer:
    """The answer to one `POST /api/v1/actions/perform`, whichever server read it: this ASGI
    route or the listener's lean loop (`http/perform_loop.py`). `ClientGone` (from `read_body`)
    passes through; any other failure is the route's 500."""
    # Nearly every request has no query: nothing to parse then.
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True) if query_string else {}
    request = PerformRequest(
        headers=headers,
        token_in_url="access_token" in query,
        remote_addr=remote_addr,
        content_length=_content_length(headers),
        read_body=read_body,
    )
    try:
        return await perform_action(services, request)
    except ClientGone:
        raise
    except Exception:
        log.exception("POST %s failed", PERFORM_PATH)
        return Answer(
            500,
            {"success": False, "error": "server_error", "message": InternalServerError.description},
        )


def _content_length(headers: RequestHeaders) -> int | None:
    value = headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _read_body(receive: ASGIReceiveCallable) -> bytes:
    """The whole body, refused with 413 as soon as it passes the cap (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise body_too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def encode_answer(answer: Answer) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of `answer`. The body is the bytes Quart's `jsonify` writes: sorted
    keys, compact, a final newline."""
    body = json_codec.dumps(answer.body, sort_keys=True) + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in answer.headers.items()
    ]
    return body, headers


async def _send_answer(send: ASGISendCallable, answer: Answer) -> None:
    body, headers = encode_answer(answer)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
