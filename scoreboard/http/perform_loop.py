"""`POST /api/v1/actions/perform` on the listener's own lean HTTP/1.1 loop.

The perform route is the API's hot path. Served by Hypercorn, each request costs more in its
TCPServer, h11 parsing and writing, the task per request and the ASGI middleware chain than in
`perform_action` itself. The listener (`http/listener.py`) hands this loop every connection
whose first request head is a plain perform request (`parse_head`: `POST
/api/v1/actions/perform`, any query, HTTP/1.1, one Host, one valid Content-Length, no
Transfer-Encoding, no Upgrade, no Expect but `100-continue`, every header line well formed).
Anything else, from the first request on or from a later one on the same keep-alive connection,
goes to Hypercorn with the bytes read so far: a connection may start here and end in Hypercorn,
never the reverse.

The answers are those of the ASGI chain, byte for byte but for Hypercorn's `server` header: the
body is read first, within `MAX_BODY_BYTES` (a larger declared body is not read: the answer says
`Connection: close`) and `server.body_timeout_s` (408 and close, as `http/body_guard.py`), then
the request is counted against its address's limit (`http/ip_limit.py:count_request`), then
answered by the same `perform` as the ASGI route (`http/action_route.py`). Each answer is written
with one send. `Connection: close` ends the connection after the answer when the client asked
for it, when the body was not read, while the process drains (as `CloseWhenDraining`), and after
Hypercorn's `keep_alive_max_requests` answers. A client gone before its body is complete has
nothing performed.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from wsgiref.handlers import format_date_time

import trio

from scoreboard import clock
from scoreboard.http import ws
from scoreboard.http.action_route import PERFORM_PATH, encode_answer, perform
from scoreboard.http.actions import Answer
from scoreboard.http.body_guard import request_timeout_body
from scoreboard.http.errors import rate_limited
from scoreboard.http.ip_limit import count_request
from scoreboard.http.requests import MAX_BODY_BYTES, body_too_large
from scoreboard.http.services import Services

PREFIX = b"POST " + PERFORM_PATH.encode()
# The request line, its target as h11 reads one (visible ASCII); the query is the route's to read.
REQUEST_LINE = re.compile(
    rb"POST " + re.escape(PERFORM_PATH.encode()) + rb"(\?[\x21-\x7e]*)? HTTP/1\.1"
)
# A header line as RFC 9110 writes one (h11 reads the same): a token, a colon, optional blanks,
# a value of visible characters (obs-text too) with single blanks or tabs inside. No folding.
FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)
CONTINUE = b"HTTP/1.1 100 \r\n\r\n"
CONNECTION_CLOSE = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class PerformHead:
    """A perform request head this loop serves."""

    headers: dict[str, str]  # each header's first value by lowercase name (`first_values`)
    query: bytes  # after the "?", as Hypercorn's ASGI scope has it
    content_length: int
    close: bool  # the client said `Connection: close`
    expects_continue: bool
    size: int  # bytes up to and including the blank line


def parse_head(received: bytes) -> PerformHead | None:
    """The perform request at the start of `received` (which holds a whole head), or None if
    it is anything else, however slightly: Hypercorn answers those as it always did."""
    if not received.startswith(PREFIX):
        return None
    end = received.find(b"\r\n\r\n")
    lines = received[:end].split(b"\r\n")
    request_line = REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None
    headers: dict[str, str] = {}
    content_length: int | None = None
    hosts = 0
    close = expects_continue = False
    for line in lines[1:]:
        field = FIELD.fullmatch(line)
        if field is None:
            return None
        name, value = field[1].lower(), field[2]
        if name == b"content-length":
            if content_length is not None or not value.isdigit():
                return None
            content_length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            close = close or b"close" in (token.strip() for token in value.lower().split(b","))
        elif name == b"expect":
            if value.lower() != b"100-continue":
                return None
            expects_continue = True
        elif name in (b"transfer-encoding", b"upgrade"):
            return None
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    if content_length is None or hosts != 1:
        return None
    query = request_line[1] or b"?"
    return PerformHead(headers, query[1:], content_length, close, expects_continue, end + 4)


async def serve(
    svc: Services,
    conn: socket.socket,
    peer: str,
    received: bytes,
    next_head: Callable[[bytes], Awaitable[bytes | None]],
    max_requests: int,
) -> bytes | None:
    """Answer the perform requests at the start of `received` and after it on `conn`, one at a
    time. Returns the bytes read from the first other request on (Hypercorn's to serve), or None
    once the connection is done. `next_head` waits for the next whole head after the bytes it is
    given (None: the connection is idle too long, gone, or the server stops)."""
    served = 0
    while (head := parse_head(received)) is not None:
        served += 1
        rest = await answer(
            svc, conn, peer, head, received[head.size :], last=served >= max_requests
        )
        if rest is None:
            return None
        next_received = await next_head(rest)
        if next_received is None:
            return None
        received = next_received
    return received


async def answer(
    svc: Services, conn: socket.socket, peer: str, head: PerformHead, rest: bytes, *, last: bool
) -> bytes | None:
    """Read the body of `head` (the start of it in `rest`), answer, and return what came after
    the body; None when the connection is closed."""
    length = head.content_length
    # Who ends the connection decides how its answer says so, as through Hypercorn: h11 puts
    # `Connection: close` last when the client ends it (Hypercorn, at its request count, the
    # same place); the ASGI chain's `connection: close` (an unread body, a 408, the drain) comes
    # before Hypercorn's `date`.
    client_closes = head.close or last
    server_closes = False
    read_body: Callable[[], Awaitable[bytes]] = too_large
    if length > MAX_BODY_BYTES:
        server_closes = True  # the body is not read; `read_json` refuses its declared length
    else:
        if len(rest) < length:
            if head.expects_continue and not await send(conn, CONTINUE):
                return None
            timeout_s = svc.config.server.body_timeout_s
            with trio.move_on_after(timeout_s) as reading:
                completed = await receive_at_least(conn, rest, length)
            if reading.cancelled_caught:
                await send_and_close(conn, request_timeout(timeout_s, client_closes=client_closes))
                return None
            if completed is None:
                return None  # the client went away: nothing performed
            rest = completed
        body, rest = rest[:length], rest[length:]

        async def given() -> bytes:
            return body

        read_body = given

    counted = await count_request(svc, peer, head.headers)
    if counted is not None and not counted.admitted:
        reply = Answer.refusal(rate_limited(counted.retry_after_s))
    else:
        reply = await perform(svc, head.headers, head.query, peer, read_body)
    content, headers = encode_answer(reply)
    if counted is not None:
        headers += counted.headers
    server_closes = server_closes or svc.observed.drain.draining
    if server_closes and not client_closes:
        headers.append(CONNECTION_CLOSE)
    data = encode(reply.status, headers, content, client_closes=client_closes)
    if server_closes or client_closes:
        await send_and_close(conn, data)
        return None
    return rest if await send(conn, data) else None


def request_timeout(timeout_s: float, *, client_closes: bool) -> bytes:
    """The 408 of a body not read within `timeout_s`, as `BodyGuard` answers it."""
    body = request_timeout_body(timeout_s)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if not client_closes:
        headers.append(CONNECTION_CLOSE)
    return encode(408, headers, body, client_closes=client_closes)


async def too_large() -> bytes:
    raise body_too_large()


async def receive_at_least(conn: socket.socket, received: bytes, size: int) -> bytes | None:
    """`received` and what follows it on `conn`, at least `size` bytes; None if the client
    closed or reset the connection first."""
    buffer = bytearray(received)
    while len(buffer) < size:
        try:
            data = await ws.receive_some(conn)
        except ws.PeerGone:
            return None
        if not data:
            return None
        buffer += data
    return bytes(buffer)


class HttpDate:
    """The `Date` header's value (RFC 9110 §6.6.1: an origin server with a clock sends it),
    formatted once a second rather than for every answer."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        second = int(clock.now_s())
        if second != self._second:
            self._second, self._value = second, format_date_time(second).encode("ascii")
        return self._value


http_date = HttpDate()


def encode(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, client_closes: bool
) -> bytes:
    """A whole answer as Hypercorn's h11 writes one: no reason phrase, the headers as given,
    `date`, and `Connection: close` last when the client ends the connection after it."""
    lines = [b"HTTP/1.1 %d \r\n" % status]
    lines += [b"%s: %s\r\n" % header for header in headers]
    lines.append(b"date: %s\r\n" % http_date())
    if client_closes:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


async def send(conn: socket.socket, data: bytes) -> bool:
    """Write `data` (at once while the socket's buffer has room); False if the client is gone."""
    try:
        try:
            sent = conn.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await ws.send_all(conn, data[sent:])
    except OSError:
        return False
    return True


async def send_and_close(conn: socket.socket, data: bytes) -> None:
    """Write the last answer, then half-close and read until the client closes too (briefly):
    closing with unread bytes would reset the connection, and the answer could be lost."""
    with trio.move_on_after(ws.CLOSE_HANDSHAKE_TIMEOUT_S):
        if await send(conn, data):
            await ws.linger(conn)
