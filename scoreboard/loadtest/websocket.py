"""The client side of RFC 6455 and RFC 7692 (permessage-deflate), as small as a load generator
needs: the upgrade request and its answer, an incremental reader of server frames, and masked
client frames.

Thousands of sockets per process are read by one epoll loop (see `watchers`), so the reader is a
plain object fed with bytes, not a task. The upgrade offers permessage-deflate exactly as
browsers do (`permessage-deflate; client_max_window_bits`): a server that accepts it costs what
it costs for real clients. Client frames are sent uncompressed (RSV1 clear), which the
extension allows.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import zlib
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BROWSER_DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFLATE_TAIL = b"\x00\x00\xff\xff"

CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA
CLOSE_NO_STATUS = 1005


class ProtocolError(Exception):
    """The server broke RFC 6455 or RFC 7692."""


class HandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, reason: str, body: bytes):
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


@dataclass(frozen=True)
class Deflate:
    """What the server agreed to: whether it resets its compressor after each message."""

    server_no_context_takeover: bool
    server_max_window_bits: int


def retry_pause_s(attempt: int) -> float:
    """Before another try at a connection that failed in transit: 0.25-0.5 s, then doubling,
    as the web page reconnects."""
    base = 0.25 * 2.0**attempt
    return base + random.uniform(0, base)


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def upgrade_request(
    host: str, path: str, origin: str, key: str, *, offer_deflate: bool, user_agent: str
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin}",
        f"User-Agent: {user_agent}",
    ]
    if offer_deflate:
        lines.append(f"Sec-WebSocket-Extensions: {BROWSER_DEFLATE_OFFER}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """The response head and the bytes after it, or None while the head is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    return buffer[:end], buffer[end + 4 :]


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status code, reason phrase and headers (names lower-cased, repeats joined by commas)."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def check_upgrade(
    status: int, reason: str, headers: dict[str, str], key: str, body: bytes, *, offered: bool
) -> Deflate | None:
    """The negotiated compression (None: none) of a 101 answer; raises for anything else."""
    if status != 101:
        raise HandshakeRefused(status, reason, body)
    if headers.get("upgrade", "").lower() != "websocket":
        raise ProtocolError("101 without Upgrade: websocket")
    if "upgrade" not in headers.get("connection", "").lower():
        raise ProtocolError("101 without Connection: Upgrade")
    if headers.get("sec-websocket-accept") != accept_value(key):
        raise ProtocolError("wrong Sec-WebSocket-Accept")
    extensions = headers.get("sec-websocket-extensions", "").strip()
    if not extensions:
        return None
    if not offered:
        raise ProtocolError(f"the server accepted an extension nobody offered: {extensions}")
    return parse_deflate_answer(extensions)


def parse_deflate_answer(extensions: str) -> Deflate:
    """RFC 7692 section 7.1: the parameters of the one permessage-deflate the server chose."""
    if "," in extensions:
        raise ProtocolError(f"more than one extension accepted: {extensions}")
    name, *params = (part.strip() for part in extensions.split(";"))
    if name.lower() != "permessage-deflate":
        raise ProtocolError(f"unknown extension accepted: {name}")
    no_context_takeover = False
    window_bits = 15
    for param in params:
        key, _, value = param.partition("=")
        key = key.strip().lower()
        value = value.strip().strip('"')
        if key == "server_no_context_takeover":
            no_context_takeover = True
        elif key == "server_max_window_bits":
            if not value.isdigit() or not 8 <= int(value) <= 15:
                raise ProtocolError(f"bad server_max_window_bits {value!r}")
            window_bits = int(value)
        elif key == "client_max_window_bits":
            continue  # limits what we would compress; we send uncompressed
        elif key != "client_no_context_takeover":
            raise ProtocolError(f"unknown permessage-deflate parameter {key!r}")
    return Deflate(no_context_takeover, window_bits)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.3)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    if not length:
        return header + mask
    repeated = (mask * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return header + mask + masked.to_bytes(length, "little")


def text_frame(text: str) -> bytes:
    return client_frame(TEXT, text.encode("utf-8"))


def close_frame(code: int = 1000) -> bytes:
    return client_frame(CLOSE, code.to_bytes(2, "big"))


def close_code_of(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        return CLOSE_NO_STATUS, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


class FrameReader:
    """Server frames in, whole messages out: `feed(bytes)` returns `(opcode, payload)` pairs,
    text and binary messages reassembled from fragments and inflated when compressed."""

    __slots__ = (
        "_buffer",
        "_compressed",
        "_deflate",
        "_fragment_opcode",
        "_fragments",
        "_inflater",
    )

    def __init__(self, deflate: Deflate | None) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._compressed = False
        self._deflate = deflate
        self._inflater = zlib.decompressobj(-15) if deflate else None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[int, bytes]] = []
        position = 0
        size = len(buffer)
        while size - position >= 2:
            first = buffer[position]
            second = buffer[position + 1]
            length = second & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            if second & 0x80:
                raise ProtocolError("the server masked a frame")
            if length > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"frame of {length} bytes")
            end = start + length
            if end > size:
                break
            self._frame(first, buffer[start:end], messages)
            position = end
        self._buffer = buffer[position:] if position < size else b""
        return messages

    def _frame(self, first: int, payload: bytes, messages: list[tuple[int, bytes]]) -> None:
        final = first & 0x80
        rsv1 = first & 0x40
        opcode = first & 0x0F
        if first & 0x30:
            raise ProtocolError("RSV2/RSV3 set")
        if opcode >= CLOSE:
            if not final or len(payload) > 125 or rsv1:
                raise ProtocolError("bad control frame")
            messages.append((opcode, payload))
            return
        if opcode == CONTINUATION:
            if not self._fragments:
                raise ProtocolError("continuation without a first fragment")
            if rsv1:
                raise ProtocolError("RSV1 on a continuation frame")
        else:
            if self._fragments:
                raise ProtocolError("a new message inside a fragmented one")
            if opcode not in (TEXT, BINARY):
                raise ProtocolError(f"unknown opcode {opcode}")
            if rsv1 and self._deflate is None:
                raise ProtocolError("RSV1 without permessage-deflate")
            self._fragment_opcode = opcode
            self._compressed = bool(rsv1)
            if final:  # the common case: one frame, one message
                messages.append((opcode, self._inflate(payload) if rsv1 else payload))
                return
        self._fragments.append(payload)
        if final:
            whole = b"".join(self._fragments)
            self._fragments = []
            if self._compressed:
                whole = self._inflate(whole)
            messages.append((self._fragment_opcode, whole))

    def _inflate(self, payload: bytes) -> bytes:
        assert self._deflate is not None
        assert self._inflater is not None
        if self._deflate.server_no_context_takeover:
            self._inflater = zlib.decompressobj(-15)
        try:
            message = self._inflater.decompress(payload + DEFLATE_TAIL, MAX_MESSAGE_BYTES)
        except zlib.error as exc:
            raise ProtocolError(f"bad compressed message: {exc}") from None
        if self._inflater.unconsumed_tail:
            raise ProtocolError("compressed message over the size limit")
        return message
