"""ASGI middleware: every HTTP request's body is read, bounded in size and time, before the
application sees the request.

An application that answers from the headers alone (401, 403, 415, a 404 or 405 for a POST…)
while the body is still on its way leaves an HTTP/1.1 connection half-read: the server cannot
start the next request on it, and Hypercorn does not close it either, so a keep-alive client's
next request is never answered. Reading the body first means every answer follows the whole
request and the connection is reused. A body that cannot be read within the bounds is not
drained: a declared or actual size over the cap reaches the application (which answers 413), a
body that does not arrive within `server.body_timeout_s` is answered 408 here, and either
answer carries `Connection: close`, after which the server closes the socket.

The last message of every response is sent shielded from cancellation. Hypercorn recycles or
closes the connection inside that `send`, and emits `http.disconnect` from it, on which
Quart-Trio cancels the request's tasks, the sender included: unshielded, the cancellation lands
in the middle and leaves the connection neither recycled nor closed.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
)

# ASGI messages as plain mappings: this module reads and writes only a few documented keys.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# `Connection` is an HTTP/1 header; HTTP/2 and 3 end a request by resetting its stream.
CONNECTION_HEADER_VERSIONS = frozenset({"1.0", "1.1"})
CONNECTION_CLOSE = (b"connection", b"close")


class BodyGuard:
    def __init__(self, app: ASGIFramework, *, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(
        self, scope: Scope, asgi_receive: ASGIReceiveCallable, asgi_send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, asgi_receive, asgi_send)
            return
        receive, send = cast(Receive, asgi_receive), cast(Send, asgi_send)
        http1 = scope.get("http_version") in CONNECTION_HEADER_VERSIONS
        if _declared_length(scope) > self.max_body_bytes:
            await self._call_app(scope, receive, _guarded_send(send, close_connection=http1))
            return
        read: deque[Message] = deque()
        complete: bool | None = None
        with trio.move_on_after(self.body_timeout_s) as reading:
            complete = await self._read_body(receive, read)
        if reading.cancelled_caught:
            await _request_timeout(send, self.body_timeout_s, close_connection=http1)
            return
        if complete is None:
            return  # the client went away
        guarded = _guarded_send(send, close_connection=http1 and not complete)
        await self._call_app(scope, _replaying_receive(read, receive), guarded)

    async def _call_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, cast(ASGIReceiveCallable, receive), cast(ASGISendCallable, send))

    async def _read_body(self, receive: Receive, read: deque[Message]) -> bool | None:
        """Read into `read` until the body ends (True) or passes the cap (False); None if the
        client disconnected."""
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            read.append(message)
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
            if size > self.max_body_bytes:
                return False


def _declared_length(scope: HTTPScope) -> int:
    """The Content-Length; 0 when absent (h11 and h2 refuse a malformed one before the app)."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _replaying_receive(read: deque[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        if read:
            return read.popleft()
        return await receive()

    return replayed


def _guarded_send(send: Send, *, close_connection: bool) -> Send:
    async def guarded(message: Message) -> None:
        if close_connection and message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), CONNECTION_CLOSE]}
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return guarded


async def _request_timeout(send: Send, timeout_s: float, *, close_connection: bool) -> None:
    body = request_timeout_body(timeout_s)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    guarded = _guarded_send(send, close_connection=close_connection)
    await guarded({"type": "http.response.start", "status": 408, "headers": headers})
    await guarded({"type": "http.response.body", "body": body})


def request_timeout_body(timeout_s: float) -> bytes:
    """The 408 of a body that did not arrive in time (here, and in `http/perform_loop.py`)."""
    return json.dumps(
        {
            "success": False,
            "error": "request_timeout",
            "message": f"the request body did not arrive within {timeout_s:g} s",
        }
    ).encode()
