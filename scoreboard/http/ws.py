"""`GET /api/v1/ws` (contract §4): one connection actor per socket.

The connection owns its socket and a latest-value mailbox registered with the hub. Everything the
server sends goes through that mailbox and one writer task, so the hub never waits for this
client, and a client that stops reading is closed 1013 without slowing anyone else.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any

import trio
from quart import Blueprint, Response, websocket

from scoreboard.actors.frames import Frame, encode_frame, rfc3339_ms
from scoreboard.actors.mailbox import TOKEN_REVOKED, Mailbox
from scoreboard.actors.messages import Rebind, Register, Unregister
from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.auth.tokens import AccessClaims
from scoreboard.http.errors import RequestRejected
from scoreboard.http.requests import audited_headers, authenticate, client_ip
from scoreboard.http.services import Services, current_services
from scoreboard.http.submission import parse_payload, rejected_before_queueing, submit_action

blueprint = Blueprint("ws", __name__)

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SEND_TIMEOUT_S = 2.0
_connection_ids = itertools.count(1)


class CloseConnection(Exception):
    def __init__(self, code: int, frame: dict[str, Any] | None = None):
        super().__init__(code)
        self.code = code
        self.frame = frame



def error_frame(error: str, message: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "error": error}
    if message:
        frame["message"] = message
    return frame


@blueprint.websocket("/api/v1/ws")
async def ws() -> Response | None:
    svc = current_services()
    if websocket.headers.get("Origin", "") not in allowed_origins(svc):
        return Response("origin not allowed", status=403)
    if "access_token" in websocket.args or "token" in websocket.args:
        return Response("tokens are not accepted in the URL", status=401)
    ip = client_ip(websocket.remote_addr, websocket.headers, svc.config.server.trusted_proxies)
    if svc.connections.per_ip.get(ip, 0) >= svc.config.websocket.max_connections_per_ip:
        return Response("too many connections from this address", status=429)
    svc.connections.per_ip[ip] = svc.connections.per_ip.get(ip, 0) + 1
    try:
        await websocket.accept()
        await Connection(svc, ip).run()
    finally:
        remaining = svc.connections.per_ip[ip] - 1
        if remaining:
            svc.connections.per_ip[ip] = remaining
        else:
            del svc.connections.per_ip[ip]
    return None


def allowed_origins(svc: Services) -> set[str]:
    return {svc.public_origin}


class Connection:
    def __init__(self, svc: Services, ip: str):
        self.svc = svc
        self.ip = ip
        self.id = next(_connection_ids)
        self.mailbox = Mailbox()
        self.claims: AccessClaims | None = None
        self.username: str | None = None
        self.expiry_deadline = 0.0

    async def run(self) -> None:
        try:
            claims = await self.authenticate_first()
            self.claims = claims
            self.count_connection(claims)
            # Released whatever ends the session, also a client gone while auth_ok is sent.
            try:
                await self.open_session(claims)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.write_frames)
                    nursery.start_soon(self.watch_expiry)
                    await self.read_messages()
                    nursery.cancel_scope.cancel()
            finally:
                await self.close_session(claims)
        except* CloseConnection as group:
            closing = group.exceptions[0]
            assert isinstance(closing, CloseConnection)
            await self.close(closing.code, closing.frame)

    async def authenticate_first(self) -> AccessClaims:
        with trio.move_on_after(self.svc.config.websocket.auth_timeout_s):
            message = await self.receive_json()
            if message.get("type") != "auth":
                raise CloseConnection(
                    CLOSE_POLICY, error_frame("auth_required", "the first message must be auth")
                )
            return self.verify(message)
        raise CloseConnection(CLOSE_POLICY, error_frame("auth_timeout"))

    def verify(self, message: dict[str, Any]) -> AccessClaims:
        token = message.get("token")
        if not isinstance(token, str):
            raise CloseConnection(CLOSE_UNAUTHORIZED, error_frame("invalid_token"))
        try:
            claims = authenticate(self.svc, token, "read")
        except RequestRejected:
            raise CloseConnection(CLOSE_UNAUTHORIZED, error_frame("invalid_token")) from None
        self.expiry_deadline = trio.current_time() + (claims.expires_at - time.time())
        return claims

    def count_connection(self, claims: AccessClaims) -> None:
        counts = self.svc.connections.per_user
        if counts.get(claims.user_id, 0) >= self.svc.config.websocket.max_connections_per_user:
            raise CloseConnection(CLOSE_POLICY, error_frame("too_many_connections"))
        counts[claims.user_id] = counts.get(claims.user_id, 0) + 1

    async def open_session(self, claims: AccessClaims) -> None:
        try:
            user = await self.svc.store.get_user(claims.user_id)
        except BackendUnavailable:
            user = None
        self.username = user.username if user else None
        await self.send_now(self.auth_ok(claims))
        await self.svc.hub.send(
            Register(self.id, claims.user_id, self.mailbox, claims.grant_id, claims.jti)
        )

    async def close_session(self, claims: AccessClaims) -> None:
        with trio.CancelScope(shield=True):
            await self.svc.hub.send(Unregister(self.id))
        counts = self.svc.connections.per_user
        counts[claims.user_id] -= 1
        if not counts[claims.user_id]:
            del counts[claims.user_id]

    async def receive_json(self) -> dict[str, Any]:
        while True:
            raw = await websocket.receive()
            try:
                message = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                message = None
            if isinstance(message, dict) and isinstance(message.get("type"), str):
                return message
            await self.send_now(
                error_frame("invalid_message", "messages are JSON objects with a type")
            )

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
            raise CloseConnection(CLOSE_FORBIDDEN, error_frame("sub_mismatch"))
        self.claims = claims
        await self.svc.hub.send(Rebind(self.id, claims.user_id, claims.grant_id, claims.jti))
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
        try:
            if "write" not in self.claims.scope:
                raise RequestRejected(403, "insufficient_scope", "this needs the 'write' scope")
            payload = parse_payload(self.svc, message, allowed_extra=frozenset({"type"}))
            submitted = await submit_action(
                self.svc,
                self.claims,
                payload,
                action_id=uuid.uuid4(),
                ip=self.ip,
                user_agent=websocket.headers.get("User-Agent", ""),
                headers=audited_headers(websocket.headers),
            )
        except RequestRejected as exc:
            self.personal({"type": "action_result", "data": rejected_before_queueing(exc, nonce)})
            return
        data: dict[str, Any] = {
            "action_id": str(submitted.action_id),
            "nonce": submitted.nonce,
            "status": "accepted",
            "score_delta": None,
            "new_score": None,
            "error": None,
        }
        if submitted.replayed_status_code is not None:
            data["replayed"] = True
            try:
                record = await self.svc.store.get_action(submitted.action_id)
            except BackendUnavailable:
                record = None
            if record is not None:
                data.update(
                    status=record.status,
                    score_delta=record.score_delta,
                    new_score=record.new_score,
                    error=record.error,
                )
        self.personal({"type": "action_result", "data": data})

    def personal(self, frame: dict[str, Any]) -> None:
        if not self.mailbox.offer_personal(encode_frame(frame)):
            raise CloseConnection(CLOSE_TRY_AGAIN_LATER)

    async def send_now(self, frame: dict[str, Any]) -> None:
        await self.send_encoded(encode_frame(frame))

    async def send_encoded(self, frame: Frame) -> None:
        """A client that does not take a frame within the send timeout is behind: 1013."""
        with trio.move_on_after(self.svc.config.websocket.send_timeout_s) as scope:
            await websocket.send(frame)
        if scope.cancelled_caught:
            raise CloseConnection(CLOSE_TRY_AGAIN_LATER)

    async def write_frames(self) -> None:
        while True:
            frames = await self.mailbox.wait_frames()
            if not frames and self.mailbox.closed:
                if self.mailbox.close_reason == TOKEN_REVOKED:
                    raise CloseConnection(CLOSE_UNAUTHORIZED, error_frame("token_revoked"))
                raise CloseConnection(CLOSE_TRY_AGAIN_LATER)
            for frame in frames:
                await self.send_encoded(frame)

    async def watch_expiry(self) -> None:
        while True:
            await trio.sleep_until(self.expiry_deadline)
            if trio.current_time() >= self.expiry_deadline:
                raise CloseConnection(CLOSE_UNAUTHORIZED, error_frame("token_expired"))

    async def close(self, code: int, frame: dict[str, Any] | None) -> None:
        with trio.move_on_after(CLOSE_SEND_TIMEOUT_S):
            if frame is not None:
                await websocket.send(encode_frame(frame))
            await websocket.close(code)
