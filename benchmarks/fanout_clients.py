"""Lean WebSocket watchers for `benchmarks.fanout`, run as their own process.

Plain non-blocking sockets and one epoll loop, no WebSocket library: a trio-websocket client
costs more CPU per message than the server path being measured, so thousands of them would
measure the load generator. It reads one job (a JSON line) on stdin:
`{"host", "port", "origin", "tokens", "deflate"}`, connects and authenticates one socket per
token, answers `{"event": "ready", ...}`, then records the delivery latency of every
`leaderboard_update` (its `timestamp` → receipt) once a `{"window": "open"}` line arrived,
until `{"stop": true}`; answers with the latencies and counts.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import sys
import time
import zlib
from collections import Counter
from datetime import datetime
from typing import Any

from benchmarks.figures import cpu_seconds, latency_summary

CONNECT_BATCH = 200
HANDSHAKE_TIMEOUT_S = 60.0
TIMESTAMP_KEY = b'"timestamp":"'


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


class Watcher:
    __slots__ = ("buffer", "closed", "handshaken", "inflater", "latencies", "received", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.handshaken = False
        self.inflater: Any = None
        self.received = 0
        self.latencies: list[float] = []
        self.closed: str | None = None


def handshake(host: str, port: int, origin: str, deflate: bool) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /api/v1/ws HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin}",
    ]
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frames(watcher: Watcher) -> list[tuple[int, bytes]]:
    """Complete frames out of the watcher's buffer: (opcode, payload), inflated if compressed."""
    out = []
    buffer = watcher.buffer
    while len(buffer) >= 2:
        first, second = buffer[0], buffer[1]
        length = second & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                break
            (length,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                break
            (length,) = struct.unpack_from("!Q", buffer, 2)
            offset = 10
        if len(buffer) < offset + length:
            break
        payload = bytes(buffer[offset : offset + length])
        del buffer[: offset + length]
        if first & 0x40:
            payload = watcher.inflater.decompress(payload + b"\x00\x00\xff\xff")
        out.append((first & 0x0F, payload))
    return out


def latency_ms(payload: bytes, now_ms: float) -> float | None:
    start = payload.find(TIMESTAMP_KEY)
    if start < 0 or not payload.startswith(b'{"type":"leaderboard_update"'):
        return None
    start += len(TIMESTAMP_KEY)
    stamp = payload[start : payload.index(b'"', start)].decode()
    return now_ms - datetime.fromisoformat(stamp).timestamp() * 1000


def main() -> None:
    job = json.loads(sys.stdin.readline())
    host, port, tokens = job["host"], job["port"], job["tokens"]
    selector = selectors.EpollSelector()
    watchers: list[Watcher] = []
    started = time.monotonic()
    request = handshake(host, port, job["origin"], job["deflate"])
    pending = list(tokens)
    authenticating = 0
    authed = 0
    failures: Counter[str] = Counter()
    window_open = False

    def connect_some() -> None:
        nonlocal authenticating
        while pending and authenticating < CONNECT_BATCH:
            token = pending.pop()
            sock = socket.create_connection((host, port))
            sock.setblocking(False)
            sock.sendall(request)
            watcher = Watcher(sock)
            watcher.inflater = token  # the token, until the handshake answer arrives
            watchers.append(watcher)
            selector.register(sock, selectors.EVENT_READ, watcher)
            authenticating += 1

    connect_some()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    ready_sent = False
    while True:
        for key, _events in selector.select(timeout=1.0):
            watcher = key.data
            if watcher is None:
                line = sys.stdin.readline()
                command = json.loads(line) if line.strip() else {"stop": True}
                if command.get("window") == "open":
                    window_open = True
                    cpu_before = cpu_seconds()
                    continue
                cpu_s = cpu_seconds() - cpu_before if window_open else 0.0
                latencies = [ms for w in watchers for ms in w.latencies]
                emit(
                    {
                        "event": "result",
                        "updates": len(latencies),
                        "updates_per_client_min": min(
                            (len(w.latencies) for w in watchers), default=0
                        ),
                        "latency_ms": latency_summary(latencies),
                        "latencies_sample": latencies[:: max(1, len(latencies) // 20000)],
                        "closed": dict(Counter(w.closed for w in watchers if w.closed)),
                        "cpu_s": cpu_s,
                    }
                )
                return
            try:
                data = watcher.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                data = b""
                watcher.closed = type(exc).__name__
            if not data:
                watcher.closed = watcher.closed or "eof"
                selector.unregister(watcher.sock)
                watcher.sock.close()
                if not watcher.handshaken:
                    failures["handshake"] += 1
                    authenticating -= 1
                continue
            watcher.buffer += data
            if not watcher.handshaken:
                end = watcher.buffer.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = bytes(watcher.buffer[:end]).decode("latin-1")
                del watcher.buffer[: end + 4]
                if " 101 " not in head.split("\r\n", 1)[0]:
                    failures[head.split("\r\n", 1)[0]] += 1
                    watcher.closed = "refused"
                    selector.unregister(watcher.sock)
                    watcher.sock.close()
                    authenticating -= 1
                    continue
                token = watcher.inflater
                deflated = "permessage-deflate" in head.lower()
                watcher.inflater = zlib.decompressobj(-15) if deflated else None
                watcher.handshaken = True
                auth = json.dumps({"type": "auth", "token": token}).encode()
                watcher.sock.sendall(masked_frame(0x1, auth))
            now_ms = time.time() * 1000
            for opcode, payload in frames(watcher):
                if opcode == 0x9:
                    watcher.sock.send(masked_frame(0xA, payload))
                elif opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    watcher.closed = f"close {code}"
                elif opcode == 0x1:
                    if watcher.received == 0:
                        authenticating -= 1
                        authed += 1
                    watcher.received += 1
                    if window_open:
                        delay = latency_ms(payload, now_ms)
                        if delay is not None:
                            watcher.latencies.append(delay)
        connect_some()
        if not ready_sent and not pending and authenticating == 0:
            ready_sent = True
            emit(
                {
                    "event": "ready",
                    "authenticated": authed,
                    "failed": dict(failures),
                    "connect_s": time.monotonic() - started,
                }
            )
        if not ready_sent and time.monotonic() - started > HANDSHAKE_TIMEOUT_S:
            ready_sent = True
            emit({"event": "ready", "authenticated": authed, "failed": {"timeout": authenticating}})


if __name__ == "__main__":
    main()
