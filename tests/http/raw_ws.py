"""A WebSocket client on a bare trio socket, for what library clients hide or refuse to do:
offer permessage-deflate and see what was agreed, send frames with the compression bit set,
leave pings unanswered, stop reading with a small receive buffer."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
RECEIVE_TIMEOUT_S = 10


@dataclass
class Received:
    opcode: int
    payload: bytes
    fin: bool
    rsv1: bool

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def close_code(self) -> int:
        assert self.opcode == OP_CLOSE
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


@dataclass
class RawWebSocket:
    sock: trio.socket.SocketType
    status: int
    headers: dict[str, str]
    buffer: bytearray = field(default_factory=bytearray)

    async def send_frame(self, opcode: int, payload: bytes, *, rsv1: bool = False) -> None:
        mask = os.urandom(4)
        first = 0x80 | (0x40 if rsv1 else 0) | opcode
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, length)
        # XOR with the repeated mask, as one big-integer operation (fast for large payloads).
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        data = header + mask + masked
        while data:
            sent = await self.sock.send(data)
            data = data[sent:]

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_frame(OP_TEXT, json.dumps(message).encode())

    async def receive(self) -> Received:
        """The next frame; EOFError when the server closed the TCP connection."""
        with trio.fail_after(RECEIVE_TIMEOUT_S):
            while True:
                frame = self._parse()
                if frame is not None:
                    return frame
                data = await self.sock.recv(65536)
                if not data:
                    raise EOFError
                self.buffer += data

    async def receive_json(self) -> Any:
        """The next text frame's JSON, skipping pings."""
        while True:
            frame = await self.receive()
            if frame.opcode == OP_PING:
                continue
            assert frame.opcode == OP_TEXT, frame
            assert not frame.rsv1, "a compressed frame"
            return frame.json()

    def take_buffered(self) -> list[Received]:
        """The complete frames already received and not yet taken, without reading more."""
        frames = []
        while (frame := self._parse()) is not None:
            frames.append(frame)
        return frames

    def _parse(self) -> Received | None:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        assert not second & 0x80, "the server masked a frame"
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buffer, 2)
            offset = 10
        if len(buffer) < offset + length:
            return None
        payload = bytes(buffer[offset : offset + length])
        del buffer[: offset + length]
        return Received(first & 0x0F, payload, bool(first & 0x80), bool(first & 0x40))

    async def aclose(self) -> None:
        self.sock.close()
        await trio.lowlevel.checkpoint()


async def open_raw_websocket(
    url: str,
    *,
    origin: str | None,
    path: str = "/api/v1/ws",
    extra_headers: tuple[str, ...] = (),
    receive_buffer: int | None = None,
) -> RawWebSocket:
    """Connect and send the upgrade; the answer's status and headers, whatever it is."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect((parts.hostname, parts.port))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *([f"Origin: {origin}"] if origin is not None else []),
        *extra_headers,
    ]
    await sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = bytearray()
    with trio.fail_after(RECEIVE_TIMEOUT_S):
        while b"\r\n\r\n" not in received:
            data = await sock.recv(65536)
            if not data:
                break
            received += data
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1]) if status_line else 0
    return RawWebSocket(sock, status, headers, bytearray(rest))
