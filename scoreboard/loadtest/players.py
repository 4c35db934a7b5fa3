"""One WebSocket per player in the main process: it carries the player's actions when the
transport is `ws` or `mixed`, and receives the `action_result` of every action of that player,
however it was sent (which is how the load test learns that an action was processed)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import trio

from scoreboard.loadtest.accounts import Account
from scoreboard.loadtest.http11 import Origin
from scoreboard.loadtest.ledger import Ledger
from scoreboard.loadtest.websocket import (
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameReader,
    HandshakeRefused,
    ProtocolError,
    check_upgrade,
    client_frame,
    close_code_of,
    new_key,
    parse_head,
    retry_pause_s,
    split_head,
    text_frame,
    upgrade_request,
)

WS_PATH = "/api/v1/ws"
USER_AGENT = "scoreboard-loadtest/1"
OUTBOX_FRAMES = 100_000
RECONNECT_DELAY_S = 0.5
CONNECT_ATTEMPTS = 5
AUTH_TIMEOUT_S = 10.0
RECEIVE_BYTES = 65536  # below malloc's mmap threshold: a larger read buffer costs a mapping


class SocketRefused(Exception):
    """The server did not let a WebSocket in; `reason` says how (HTTP status or close code),
    `retry` whether the failure was in transit (worth another try) rather than a refusal."""

    def __init__(self, reason: str, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


async def open_socket(
    origin: Origin, origin_header: str, token: str, *, offer_deflate: bool
) -> tuple[trio.SocketStream, FrameReader, list[tuple[int, bytes]]]:
    """Connect, upgrade and authenticate: the stream, its reader and the messages that came
    after `auth_ok` in the same read."""
    try:
        stream = await trio.open_tcp_stream(origin.host, origin.port)
    except OSError as exc:
        raise SocketRefused(f"connect: {exc}", retry=True) from exc
    try:
        key = new_key()
        await stream.send_all(
            upgrade_request(
                origin.host_header,
                WS_PATH,
                origin_header,
                key,
                offer_deflate=offer_deflate,
                user_agent=USER_AGENT,
            )
        )
        buffer = b""
        while (parts := split_head(buffer)) is None:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise SocketRefused("closed during the upgrade", retry=True)
            buffer += chunk
        head, rest = parts
        status, reason, headers = parse_head(head)
        try:
            deflate = check_upgrade(status, reason, headers, key, rest, offered=offer_deflate)
        except HandshakeRefused as refused:
            reason = f"HTTP {refused.status} on upgrade"
            raise SocketRefused(reason, retry=refused.status >= 500) from None
        reader = FrameReader(deflate)
        await stream.send_all(text_frame(json.dumps({"type": "auth", "token": token})))
        messages = reader.feed(rest)
        with trio.fail_after(AUTH_TIMEOUT_S):
            while True:
                for index, (opcode, payload) in enumerate(messages):
                    if opcode == CLOSE:
                        code, text = close_code_of(payload)
                        raise SocketRefused(f"close {code} {text}".strip())
                    if opcode != TEXT:
                        continue
                    message = json.loads(payload)
                    if message.get("type") == "error":
                        raise SocketRefused(f"error {message.get('error')}")
                    if message.get("type") == "auth_ok":
                        return stream, reader, messages[index + 1 :]
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise SocketRefused("closed before auth_ok", retry=True)
                messages = reader.feed(chunk)
    except BaseException:
        stream.socket.close()
        raise


class PlayerSocket:
    def __init__(
        self,
        account: Account,
        origin: Origin,
        origin_header: str,
        ledger: Ledger,
        *,
        offer_deflate: bool,
    ) -> None:
        self.account = account
        self.origin = origin
        self.origin_header = origin_header
        self.ledger = ledger
        self.offer_deflate = offer_deflate
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
        self.drops: list[str] = []
        self.reconnects = 0
        self.connect_retries = 0
        self.frames = 0
        self.closing = False

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a frame without waiting; False when the outbox is full."""
        try:
            self.outbox_send.send_nowait(text_frame(json.dumps(message)))
        except trio.WouldBlock:
            return False
        return True

    def reauthenticate(self) -> None:
        self.send({"type": "auth", "token": self.account.access_token})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the socket open until cancelled: the first connection's refusal is raised
        (before `started`), later drops are recorded and the socket reconnects."""
        first = True
        attempt = 0
        while True:
            try:
                stream, reader, pending = await open_socket(
                    self.origin,
                    self.origin_header,
                    self.account.access_token,
                    offer_deflate=self.offer_deflate,
                )
            except (SocketRefused, OSError, trio.TooSlowError, ProtocolError, ValueError) as exc:
                in_transit = not isinstance(exc, SocketRefused | ProtocolError | ValueError)
                retry = exc.retry if isinstance(exc, SocketRefused) else in_transit
                if first and (not retry or attempt == CONNECT_ATTEMPTS - 1):
                    reason = getattr(exc, "reason", f"{type(exc).__name__}: {exc}")
                    raise SocketRefused(reason) from exc
                if not first:
                    self.drops.append(f"reconnect failed: {exc}")
                self.connect_retries += 1
                await trio.sleep(retry_pause_s(attempt))
                attempt += 1
                continue
            attempt = 0
            if first:
                task_status.started()
                first = False
            else:
                self.reconnects += 1
            reason = await self._session(stream, reader, pending)
            if self.closing:
                return
            self.drops.append(reason)
            await trio.sleep(RECONNECT_DELAY_S)

    async def _session(
        self, stream: trio.SocketStream, reader: FrameReader, pending: list[tuple[int, bytes]]
    ) -> str:
        reason = "closed"
        async with stream, trio.open_nursery() as nursery:

            async def write() -> None:
                try:
                    async for frame in self.outbox_receive:
                        await stream.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(write)
            try:
                self._messages(pending, time.monotonic())
                while True:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        reason = "closed without a close frame"
                        break
                    closed = self._messages(reader.feed(data), time.monotonic())
                    if closed is not None:
                        reason = closed
                        break
            except (trio.BrokenResourceError, OSError, ProtocolError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            nursery.cancel_scope.cancel()
        return reason

    def _messages(self, messages: list[tuple[int, bytes]], now: float) -> str | None:
        for opcode, payload in messages:
            self.frames += 1
            if opcode == TEXT:
                if b"action_result" in payload:
                    message = json.loads(payload)
                    if message.get("type") == "action_result":
                        self.ledger.on_socket_result(message.get("data") or {}, now)
            elif opcode == PING:
                with contextlib.suppress(trio.WouldBlock):
                    self.outbox_send.send_nowait(client_frame(PONG, payload))
            elif opcode == CLOSE:
                code, text = close_code_of(payload)
                return f"close {code} {text}".strip()
        return None
