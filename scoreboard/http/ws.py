"""`GET /api/v1/ws` (docs/api.md, docs/websocket.md) on the project's own lean WebSocket path.

The listener (`http/listener.py`) hands over each WebSocket upgrade of this path with the request
head it read. Here the handshake is checked (Origin allow-list → 403, a token in the URL → 401,
too many sockets from the client's address → 429) and answered without any extension: no
permessage-deflate, so every frame the hub builds is the same bytes for every client, and no
client frame is ever inflated. Then one connection: wsproto parses what the client sends, and
everything the server sends goes through the connection's `SocketOutbox` (straight into the
socket while its kernel buffer has room, else its latest-value mailbox and a writer task).

One task per connection reads the client and keeps its deadlines: auth within
`websocket.auth_timeout_s` (else 1008 `auth_timeout`), the token's `exp` (4401
`token_expired`), a WebSocket ping after `websocket.ping_interval_s` of silence, and a close
after `websocket.idle_timeout_s` of silence (1008 `idle_timeout`: a client that answers neither
pings nor anything else is gone or stuck). A process that drains (SIGTERM) closes its sockets
1012 (service restart: reconnect, another process answers); an HTTP server stopped otherwise, 1001.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import random
import socket
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from werkzeug.datastructures import Headers
from wsproto.connection import SERVER, ConnectionState
from wsproto.connection import Connection as FrameConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import ParseFailed
from wsproto.utilities import LocalProtocolError, generate_accept_token

from scoreboard import clock, logs, metrics
from scoreboard.actors import hub
from scoreboard.actors.frames import Frame, encode_frame, outgoing, rfc3339_ms
from scoreboard.actors.hub import TOKEN_REVOKED
from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.addresses import address_key
from scoreboard.auth.tokens import AccessClaims
from scoreboard.http.connections import TooManyConnections
from scoreboard.http.edge_audit import audit_refusal
from scoreboard.http.errors import RequestRejected, rejection
from scoreboard.http.outbox import GONE, MailboxClosed, SlowReader, SocketOutbox
from scoreboard.http.requests import (
    audited_headers,
    authenticate,
    client_ip,
    parse_json,
)
from scoreboard.http.services import Services
from scoreboard.intake import Accepted, Refused, Replayed, Submitter, Unavailable

log = logging.getLogger(__name__)

PATH = "/api/v1/ws"
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012  # the process drains (SIGTERM): reconnect, elsewhere
CLOSE_ABNORMAL = 1006  # recorded when the client vanished without a close frame; never sent
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_HANDSHAKE_TIMEOUT_S = 2.0  # to finish a partly sent frame, send the close, hear the reply
CLOSING_READ_LIMIT = 64 * 1024  # what a closing client may still send before we stop listening
RECEIVE_BYTES = 8192
PING = Frame("", bytes(FrameConnection(SERVER).send(Ping())))
_connection_ids = itertools.count(1)


class Closing(Exception):
    """Close the connection with `code`, after sending `frame` if any."""

    def __init__(self, code: int, frame: dict[str, Any] | None = None):
        super().__init__(code)
        self.code = code
        self.frame = frame


class ClientClosed(Exception):
    """The client sent a close frame: answer it and close."""

    def __init__(self, event: CloseConnection):
        super().__init__(event.code)
        self.event = event


class PeerGone(Exception):
    """The TCP connection ended without a close frame."""


def error_frame(error: str, message: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "error": error}
    if message:
        frame["message"] = message
    return frame


def action_result(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "action_result", "data": data}


def accepted_data(action_id: uuid.UUID, nonce: str) -> dict[str, Any]:
    """The `action_result` of an action queued, not yet scored."""
    return {
        "action_id": str(action_id),
        "nonce": nonce,
        "status": "accepted",
        "score_delta": None,
        "new_score": None,
        "error": None,
    }


def rejected_before_queueing(exc: RequestRejected, nonce: str | None) -> dict[str, Any]:
    """The `action_result` of a refusal before queueing (the same error codes as HTTP)."""
    data: dict[str, Any] = {
        "action_id": None,
        "nonce": nonce,
        "status": "rejected",
        "score_delta": 0,
        "new_score": None,
        "error": exc.error,
    }
    if exc.message is not None:
        data["message"] = exc.message
    for extra in ("retry_after", "outcome"):
        if extra in exc.extra:
            data[extra] = exc.extra[extra]
    return data


def is_live_path_upgrade(head: bytes) -> h11.Request | None:
    """The request of `head` if it asks to upgrade `GET /api/v1/ws` to a WebSocket, else None
    (every other request, also one h11 cannot parse, is Hypercorn's to answer)."""
    prefix = b"GET " + PATH.encode()
    if not head.startswith(prefix) or head[len(prefix) : len(prefix) + 1] not in (b" ", b"?"):
        return None
    parser = h11.Connection(h11.SERVER)
    try:
        parser.receive_data(head)
        event = parser.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    upgrade = b",".join(value for name, value in event.headers if name == b"upgrade")
    if b"websocket" not in upgrade.lower():
        return None
    return event


async def serve(
    svc: Services,
    sock: socket.socket,
    peer: str,
    request: h11.Request,
    trailing: bytes,
    live: set[trio.CancelScope],
) -> None:
    """Answer the upgrade, or refuse it, and run the connection to its end. The caller closes
    the socket afterwards."""
    headers = Headers(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers]
    )
    key = headers.get("Sec-WebSocket-Key", "")
    if headers.get("Origin", "") not in allowed_origins(svc):
        await refuse(sock, 403, "Forbidden", "origin not allowed")
        return
    query = parse_qs(urlsplit(request.target.decode("latin-1")).query)
    if "access_token" in query or "token" in query:
        await refuse(sock, 401, "Unauthorized", "tokens are not accepted in the URL")
        return
    if headers.get("Sec-WebSocket-Version") != "13":
        version = [("Sec-WebSocket-Version", "13")]
        await refuse(sock, 426, "Upgrade Required", "WebSocket version 13 only", version)
        return
    if not _valid_key(key) or "upgrade" not in headers.get("Connection", "").lower():
        await refuse(sock, 400, "Bad Request", "not a valid WebSocket handshake")
        return
    ip = client_ip(peer, headers, svc.config.server.trusted_proxies)
    try:
        counted = svc.connections.hold_address(address_key(ip))
    except TooManyConnections:
        metrics.RATE_LIMITED.labels("websocket_connections_per_ip").inc()
        await refuse(sock, 429, "Too Many Requests", "too many connections from this address")
        return
    with counted:
        if svc.config.websocket.send_buffer_bytes:
            buffer_bytes = svc.config.websocket.send_buffer_bytes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        accept = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {generate_accept_token(key.encode()).decode()}\r\n\r\n"
        )
        with trio.move_on_after(svc.config.websocket.send_timeout_s) as too_slow:
            await send_all(sock, accept.encode())
        if too_slow.cancelled_caught:
            return
        connection = Connection(
            svc,
            sock,
            ip,
            user_agent=headers.get("User-Agent", ""),
            audited=audited_headers(headers),
        )
        live.add(connection.scope)
        try:
            await connection.run(trailing)
        finally:
            live.discard(connection.scope)


def allowed_origins(svc: Services) -> set[str]:
    return {svc.public_origin}


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


async def refuse(
    sock: socket.socket,
    status: int,
    reason: str,
    body: str,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    """An HTTP answer instead of the upgrade; then the connection closes."""
    payload = body.encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers or ()),
    ]
    with trio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT_S):
        await send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await linger(sock)


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        await trio.lowlevel.wait_writable(sock)
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        view = view[sent:]


async def receive_some(sock: socket.socket) -> bytes:
    """The next bytes from the client; b"" at its end. Raises `PeerGone` on a reset."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise PeerGone from exc


async def linger(sock: socket.socket, frames: FrameConnection | None = None) -> None:
    """Half-close and read what the client still sends until it closes too (or, given its
    frame parser, until its close frame arrives): closing a socket with unread data would reset
    the connection and could lose what was sent last."""
    try:
        sock.shutdown(socket.SHUT_WR)
        read = 0
        while read < CLOSING_READ_LIMIT:
            data = await receive_some(sock)
            if not data:
                return
            read += len(data)
            if frames is not None:
                frames.receive_data(data)
                if any(isinstance(event, CloseConnection) for event in frames.events()):
                    return
    except (OSError, PeerGone, ParseFailed, LocalProtocolError):
        return


class Connection:
    """One authenticated WebSocket: its socket, outbox, frame parser and deadlines."""

    __slots__ = (
        "audited",
        "auth_deadline",
        "claims",
        "expiry_deadline",
        "frames",
        "id",
        "ip",
        "last_heard",
        "last_ping",
        "message_bytes",
        "message_parts",
        "outbox",
        "ping_spread",
        "scope",
        "sock",
        "svc",
        "user_agent",
        "username",
    )

    def __init__(
        self,
        svc: Services,
        sock: socket.socket,
        ip: str,
        *,
        user_agent: str,
        audited: dict[str, str],
    ) -> None:
        self.svc = svc
        self.sock = sock
        self.ip = ip
        self.user_agent = user_agent[:512]
        self.audited = audited
        self.id = next(_connection_ids)
        self.frames = FrameConnection(SERVER)
        self.outbox: SocketOutbox | None = None
        self.claims: AccessClaims | None = None
        self.username: str | None = None
        now = trio.current_time()
        self.auth_deadline = now + svc.config.websocket.auth_timeout_s
        self.expiry_deadline = float("inf")
        self.last_heard = now
        self.last_ping = now
        # Sockets opened together would all be pinged together: spread them over ±10 %.
        self.ping_spread = random.uniform(0.9, 1.1)
        self.message_parts: list[Any] = []  # of one message: all str (text) or all bytes
        self.message_bytes = 0
        # Cancelled when the server shuts down: the connection then closes 1012 or 1001.
        self.scope = trio.CancelScope()

    async def run(self, trailing: bytes) -> None:
        closing: Closing | ClientClosed | None = None
        with self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    self.outbox = SocketOutbox(
                        self.sock,
                        spawn=nursery.start_soon,
                        send_timeout_s=self.svc.config.websocket.send_timeout_s,
                        counts=self.svc.connections,
                    )
                    try:
                        await self.converse(trailing)
                    finally:
                        self.outbox.detach()
            except* Exception as group:
                closing = self.closing_for(group)
        if self.scope.cancelled_caught and closing is None:
            draining = self.svc.observed.drain.draining
            closing = Closing(CLOSE_SERVICE_RESTART if draining else CLOSE_GOING_AWAY)
        await self.finish(closing)

    def closing_for(self, group: BaseExceptionGroup[Exception]) -> Closing | ClientClosed | None:
        """How to end, from what ended the connection: the first deliberate close wins; a
        client that vanished needs none; anything else is a bug, logged, and closes 1011."""
        errors = _leaves(group)
        for error in errors:
            match error:
                case Closing() | ClientClosed():
                    return error
                case MailboxClosed(reason=reason) if reason == TOKEN_REVOKED:
                    return Closing(CLOSE_UNAUTHORIZED, error_frame("token_revoked"))
                case MailboxClosed() | SlowReader():
                    return Closing(CLOSE_TRY_AGAIN_LATER)
        if all(isinstance(error, PeerGone | OSError) for error in errors):
            return None
        log.error("WebSocket connection %d failed", self.id, exc_info=group)
        return Closing(CLOSE_INTERNAL_ERROR)

    async def converse(self, trailing: bytes) -> None:
        if trailing:
            self.frames.receive_data(trailing)
        claims = await self.authenticate_first()
        self.claims = claims
        try:
            counted = self.svc.connections.hold_user(claims.user_id)
        except TooManyConnections:
            raise Closing(CLOSE_POLICY, error_frame("too_many_connections")) from None
        # Released whatever ends the session, also a client gone while auth_ok is sent.
        with counted:
            try:
                await self.open_session(claims)
                await self.read_messages()
            finally:
                await hub.unregister(self.svc.hub, self.id)

    async def authenticate_first(self) -> AccessClaims:
        message = await self.receive_json()
        if message.get("type") != "auth":
            raise Closing(
                CLOSE_POLICY, error_frame("auth_required", "the first message must be auth")
            )
        return self.verify(message)

    def verify(self, message: dict[str, Any]) -> AccessClaims:
        token = message.get("token")
        if not isinstance(token, str):
            raise Closing(CLOSE_UNAUTHORIZED, error_frame("invalid_token"))
        try:
            claims = authenticate(self.svc, token, "read")
        except RequestRejected:
            raise Closing(CLOSE_UNAUTHORIZED, error_frame("invalid_token")) from None
        self.expiry_deadline = trio.current_time() + (claims.expires_at - clock.now_s())
        return claims

    async def open_session(self, claims: AccessClaims) -> None:
        try:
            user = await self.svc.store.get_user(claims.user_id)
        except BackendUnavailable:
            user = None
        self.username = user.username if user else None
        self.personal(self.auth_ok(claims))
        assert self.outbox is not None
        await hub.register(
            self.svc.hub,
            self.id,
            claims.user_id,
            self.outbox,
            grant_id=claims.grant_id,
            jti=claims.jti,
        )
        # Denied between the check and the registration, the hub was told before it knew us.
        if self.svc.deny_list.is_revoked(claims):
            raise Closing(CLOSE_UNAUTHORIZED, error_frame("token_revoked"))

    async def receive_json(self) -> dict[str, Any]:
        while True:
            raw = await self.receive_message()
            try:
                # As strict as the HTTP bodies, and by the same parser (bounded nesting).
                message = parse_json(raw.encode("utf-8") if isinstance(raw, str) else raw)
            except ValueError:
                message = None
            if isinstance(message, dict) and isinstance(message.get("type"), str):
                return message
            self.personal(error_frame("invalid_message", "messages are JSON objects with a type"))

    async def receive_message(self) -> str | bytes:
        """The client's next complete message. Meanwhile: pongs answer pings, and the
        connection's deadlines are kept (each raises `Closing`, except a ping's)."""
        while True:
            message = self.next_parsed_message()
            if message is not None:
                return message
            with trio.move_on_at(self.next_deadline()):
                data = await receive_some(self.sock)
                if not data:
                    raise PeerGone
                self.last_heard = trio.current_time()
                self.frames.receive_data(data)
                continue
            self.deadline_passed()

    def next_parsed_message(self) -> str | bytes | None:
        try:
            for event in self.frames.events():
                match event:
                    case TextMessage(data=text):
                        self.take_part(text, len(text.encode()))
                        if event.message_finished:
                            return "".join(self.take_message())
                    case BytesMessage(data=data):
                        self.take_part(bytes(data), len(data))
                        if event.message_finished:
                            return b"".join(self.take_message())
                    case Ping():
                        self.control(outgoing_control(self.frames.send(event.response())))
                    case Pong():
                        pass
                    case CloseConnection():
                        raise ClientClosed(event)
        except ParseFailed as exc:
            raise Closing(exc.code) from None
        return None

    def take_part(self, part: str | bytes, size: int) -> None:
        self.message_bytes += size
        if self.message_bytes > self.svc.config.websocket.max_message_bytes:
            raise Closing(CLOSE_TOO_BIG)
        self.message_parts.append(part)

    def take_message(self) -> list[Any]:
        parts, self.message_parts, self.message_bytes = self.message_parts, [], 0
        return parts

    def next_deadline(self) -> float:
        if self.claims is None:
            return self.auth_deadline
        websocket = self.svc.config.websocket
        ping_at = (
            max(self.last_heard, self.last_ping) + websocket.ping_interval_s * self.ping_spread
        )
        return min(self.expiry_deadline, self.last_heard + websocket.idle_timeout_s, ping_at)

    def deadline_passed(self) -> None:
        now = trio.current_time()
        if self.claims is None:
            raise Closing(CLOSE_POLICY, error_frame("auth_timeout"))
        if now >= self.expiry_deadline:
            raise Closing(CLOSE_UNAUTHORIZED, error_frame("token_expired"))
        if now >= self.last_heard + self.svc.config.websocket.idle_timeout_s:
            raise Closing(CLOSE_POLICY, error_frame("idle_timeout"))
        self.last_ping = now
        self.control(PING)

    async def read_messages(self) -> None:
        while True:
            message = await self.receive_json()
            match message["type"]:
                case "auth":
                    await self.reauthenticate(message)
                case "ping":
                    self.personal({"type": "pong", "timestamp": message.get("timestamp")})
                case "action":
                    await self.perform(message)
                case other:
                    self.personal(error_frame("unknown_type", f"unknown message type {other!r}"))

    async def reauthenticate(self, message: dict[str, Any]) -> None:
        claims = self.verify(message)
        assert self.claims is not None
        if claims.user_id != self.claims.user_id:
            raise Closing(CLOSE_FORBIDDEN, error_frame("sub_mismatch"))
        self.claims = claims
        await hub.rebind(
            self.svc.hub, self.id, claims.user_id, grant_id=claims.grant_id, jti=claims.jti
        )
        self.personal(self.auth_ok(claims))

    def auth_ok(self, claims: AccessClaims) -> dict[str, Any]:
        return {
            "type": "auth_ok",
            "data": {
                "user_id": claims.user_id,
                "username": self.username,
                "expires_at": rfc3339_ms(claims.expires_at * 1000),
            },
        }

    async def perform(self, message: dict[str, Any]) -> None:
        assert self.claims is not None
        nonce = message.get("nonce") if isinstance(message.get("nonce"), str) else None
        action_id = uuid.uuid4()
        if "write" not in self.claims.scope:
            self.refuse(
                RequestRejected(403, "insufficient_scope", "this needs the 'write' scope"),
                message,
                nonce,
            )
            return
        payload = self.svc.intake.parse(message, allowed_extra=frozenset({"type"}))
        if isinstance(payload, Refused):
            self.refuse(rejection(payload), message, nonce)
            return
        submitter = Submitter(self.claims.user_id, self.ip, self.user_agent, self.audited)
        with logs.action_context(action_id):
            submitted = await self.svc.intake.submit(payload, submitter, action_id=action_id)
        match submitted:
            case Refused() | Unavailable() as refused:
                self.refuse(rejection(refused), message, nonce)
            case Accepted(accepted_id, accepted_nonce):
                self.personal(action_result(accepted_data(accepted_id, accepted_nonce)))
            case Replayed(replayed_id, replayed_nonce, _, record):
                data = accepted_data(replayed_id, replayed_nonce)
                data["replayed"] = True
                if record is not None:
                    data.update(
                        status=record.outcome.status,
                        score_delta=record.outcome.score_delta,
                        new_score=record.outcome.new_score,
                        error=record.outcome.error,
                    )
                self.personal(action_result(data))

    def refuse(self, rejected: RequestRejected, message: dict[str, Any], nonce: str | None) -> None:
        """The `action_result` of an action refused before it was queued; the refusal of
        `message` goes to the audit trail."""
        assert self.claims is not None
        metrics.ACTIONS_REFUSED.labels(rejected.error).inc()
        audit_refusal(
            self.svc,
            rejected,
            channel="websocket",
            user_id=self.claims.user_id,
            attempted=message,
            ip=self.ip,
            user_agent=self.user_agent,
            headers=self.audited,
        )
        self.personal(action_result(rejected_before_queueing(rejected, nonce)))

    def personal(self, frame: dict[str, Any]) -> None:
        self.control(outgoing(encode_frame(frame)))

    def control(self, frame: Frame) -> None:
        assert self.outbox is not None
        if not self.outbox.offer_personal(frame) and self.outbox.close_reason != GONE:
            raise Closing(CLOSE_TRY_AGAIN_LATER)

    async def finish(self, closing: Closing | ClientClosed | None) -> None:
        """The closing handshake (bounded), then the socket closes."""
        code = (
            CLOSE_ABNORMAL
            if closing is None
            else closing.event.code
            if isinstance(closing, ClientClosed)
            else closing.code
        )
        self.svc.connections.websocket_closed(code)
        if closing is None:
            return
        assert self.outbox is not None
        with trio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT_S):
            try:
                # What is left of a frame the writer had begun goes first: frames stay whole.
                await self.outbox.flush(CLOSE_HANDSHAKE_TIMEOUT_S)
                if isinstance(closing, ClientClosed):
                    await send_all(self.sock, self.frames.send(closing.event.response()))
                    return
                data = b"" if closing.frame is None else outgoing(encode_frame(closing.frame)).wire
                if self.frames.state is ConnectionState.OPEN:
                    data += self.frames.send(CloseConnection(code=closing.code))
                await send_all(self.sock, data)
                await linger(self.sock, self.frames)
            except (OSError, SlowReader):
                return


def outgoing_control(wire: bytes) -> Frame:
    return Frame("", bytes(wire))


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    leaves: list[Exception] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves += _leaves(error)
        else:
            leaves.append(error)
    return leaves
