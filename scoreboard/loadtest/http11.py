"""A small HTTP/1.1 client on trio streams: keep-alive connections, Content-Length and chunked
bodies, nothing else (no TLS, no redirects, no cookies).

A general-purpose client costs more CPU per request than the server under test spends at a few
thousand requests per second; this one parses only the status line, the headers and the body.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio

from scoreboard.loadtest.websocket import parse_head

RECEIVE_BYTES = 65536
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
USER_AGENT = "scoreboard-loadtest/1"


class HttpError(Exception):
    """The connection failed or the server's answer was not HTTP/1.1 as expected."""


class ConnectionLost(HttpError):
    """The connection broke before the answer was complete."""


@dataclass(frozen=True)
class Origin:
    """Where the server is: `http://host:port`, as given on the command line."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(
                f"{url}: only http:// URLs (run the load test next to the server or behind "
                "the TLS terminator)"
            )
        if not parts.hostname:
            raise ValueError(f"{url}: no host")
        return cls(parts.hostname, parts.port or 80)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_header}"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class HttpConnection:
    """One keep-alive connection; reconnects by itself when the server closed it."""

    def __init__(self, origin: Origin, *, connect_timeout_s: float = 10.0) -> None:
        self.origin = origin
        self.connect_timeout_s = connect_timeout_s
        # A plain non-blocking socket waited on with trio.lowlevel.wait_readable/wait_writable:
        # trio's SocketStream checkpoints and wraps every send and receive, which was a sixth of
        # the load test's CPU per action, taken from the server on the same machine.
        self._socket: socket.socket | None = None
        self._buffer = b""

    async def aclose(self) -> None:
        self._drop()
        await trio.lowlevel.checkpoint()

    def _drop(self) -> None:
        if self._socket is not None:
            sock, self._socket = self._socket, None
            trio.lowlevel.notify_closing(sock)
            sock.close()

    async def _connected(self) -> socket.socket:
        if self._socket is None:
            with trio.fail_after(self.connect_timeout_s):
                try:
                    stream = await trio.open_tcp_stream(self.origin.host, self.origin.port)
                except OSError as exc:
                    raise HttpError(f"connect: {exc}") from exc
            # The connected socket (TCP_NODELAY set by trio) taken over from the stream.
            self._socket = socket.socket(fileno=stream.socket.detach())
            self._socket.setblocking(False)
            self._buffer = b""
        return self._socket

    async def _send_all(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)

    def encode(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """The request's bytes, for `send`: callers that send many alike build them once."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.origin.host_header}"]
        lines += [f"User-Agent: {USER_AGENT}"]
        lines += [f"{name}: {value}" for name, value in headers or []]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def json_post_head(self, target: str, token: str) -> bytes:
        """The head of a JSON POST with `token`, without its Content-Length and blank line:
        built once, then sent with many bodies (`json_post`)."""
        return self.encode(
            "POST",
            target,
            headers=[("Content-Type", "application/json"), ("Authorization", f"Bearer {token}")],
        )[:-2]

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Response:
        return await self.send(self.encode(method, target, headers=headers, body=body), method)

    async def send(self, message: bytes, method: str = "POST") -> Response:
        """Send one encoded request and read its answer. A connection the server closed while
        idle is reopened once (callers send only requests that are safe to resend: every POST
        of the load test carries its idempotency nonce)."""
        reused = self._socket is not None
        try:
            return await self._exchange(message, method)
        except ConnectionLost:
            await self.aclose()
            if not reused:
                raise
        except HttpError:
            await self.aclose()
            raise
        return await self._exchange(message, method)

    async def _exchange(self, message: bytes, method: str) -> Response:
        sock = await self._connected()
        try:
            await self._send_all(sock, message)
            if not self._buffer:
                # The answer cannot be there yet: wait rather than try a recv bound to fail. It
                # is also the exchange's checkpoint, which the plain socket does not give.
                await trio.lowlevel.wait_readable(sock)
            response = await self._read_response(method)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._drop()  # cancelled (a caller's timeout) halfway through an exchange
            raise
        if response.headers.get("connection", "").lower() == "close":
            await self.aclose()
        return response

    async def _receive(self) -> bytes:
        assert self._socket is not None
        while True:
            try:
                chunk = self._socket.recv(RECEIVE_BYTES)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._socket)
        if not chunk:
            raise trio.BrokenResourceError("the server closed the connection")
        return chunk

    async def _read_response(self, method: str) -> Response:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HttpError("response head too large")
            self._buffer += await self._receive()
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        try:
            status, _reason, headers = parse_head(head)
        except Exception as exc:
            raise HttpError(str(exc)) from exc
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        elif "content-length" in headers:
            body = await self._read_exactly(int(headers["content-length"]))
        else:
            body = await self._read_until_closed()
        return Response(status, headers, body)

    async def _read_exactly(self, size: int) -> bytes:
        if size > MAX_BODY_BYTES:
            raise HttpError(f"body of {size} bytes")
        while len(self._buffer) < size:
            self._buffer += await self._receive()
        body, self._buffer = self._buffer[:size], self._buffer[size:]
        return body

    async def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            self._buffer += await self._receive()
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        return line

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self._read_line()).split(b";")[0].strip(), 16)
            if size == 0:
                while await self._read_line():  # trailers up to the empty line
                    pass
                return b"".join(parts)
            parts.append(await self._read_exactly(size))
            await self._read_line()

    async def _read_until_closed(self) -> bytes:
        while True:
            try:
                self._buffer += await self._receive()
            except trio.BrokenResourceError:
                break
        body, self._buffer = self._buffer, b""
        await self.aclose()
        return body

    async def get(self, target: str, *, token: str | None = None) -> Response:
        return await self.request("GET", target, headers=_auth(token))

    async def post_json(
        self,
        target: str,
        payload: Any,
        *,
        token: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> Response:
        headers = [("Content-Type", "application/json"), *_auth(token), *(extra or [])]
        return await self.request("POST", target, headers=headers, body=orjson.dumps(payload))

    async def post_form(self, target: str, form: str) -> Response:
        headers = [("Content-Type", "application/x-www-form-urlencoded")]
        return await self.request("POST", target, headers=headers, body=form.encode("ascii"))


def json_post(head: bytes, body: bytes) -> bytes:
    """The bytes of one POST: a head from `json_post_head`, then `body`."""
    return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)


def _auth(token: str | None) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")] if token else []


class HttpPool:
    """A fixed number of keep-alive connections shared by concurrent tasks."""

    def __init__(self, origin: Origin, size: int) -> None:
        self._connections = [HttpConnection(origin) for _ in range(size)]
        self._free, self._taken = trio.open_memory_channel[HttpConnection](size)
        for connection in self._connections:
            self._free.send_nowait(connection)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[HttpConnection]:
        connection = await self._taken.receive()
        try:
            yield connection
        finally:
            self._free.send_nowait(connection)

    async def aclose(self) -> None:
        for connection in self._connections:
            await connection.aclose()
