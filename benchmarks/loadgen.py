"""The client side of the benchmarks, run as its own process: `python -m benchmarks.loadgen`.

It reads one job (a JSON line) on stdin and answers with JSON lines on stdout:

- `{"kind": "http", ...}`: POST /api/v1/actions/perform at a fixed arrival rate (open loop: each
  request is sent when it is due, whether or not earlier ones have answered) over a pool of
  keep-alive connections; answers with the counts and the 202 latencies, each measured from
  the moment the request was due, so a slow server cannot hide its queueing.
- `{"kind": "ws", ...}`: connect and authenticate one WebSocket per token, answer
  `{"event": "ready"}`, then record every leaderboard update until a `stop` line arrives;
  answers with the delivery latencies (the keeper's commit timestamp in the frame → receipt).
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from benchmarks.figures import cpu_seconds, latency_summary
from scoreboard.loadtest.http11 import HttpConnection, HttpError, Origin, json_post

REQUEST_TIMEOUT_S = 10.0
SCHEDULE_LEAD_S = 0.1  # the first request is due this long after the job arrives


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


PERFORM_PATH = "/api/v1/actions/perform"


def action_body(index: int) -> bytes:
    return orjson.dumps(
        {
            "action_type": "complete_task",
            "action_data": {"task_id": f"bench-{index}", "completion_time": int(time.time())},
            "nonce": uuid.uuid4().hex,
        }
    )


async def perform_open_loop(job: dict[str, Any]) -> dict[str, Any]:
    tokens: list[str] = job["tokens"]
    rate: float = job["rate"]
    total = round(rate * job["duration_s"])
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    accepted_ms: list[float] = []
    accept_times: list[float] = []  # time.monotonic(): comparable with the server process
    worst_dispatch_lag_s = 0.0
    origin = Origin.parse(job["url"])
    # The generator shares the machine with the server: every request is one pre-built head (per
    # token) and a body, sent on a plain keep-alive connection. A general-purpose client (httpx)
    # spent 0.6 ms of CPU per request, taken from the server it measures.
    heads = [HttpConnection(origin).json_post_head(PERFORM_PATH, token) for token in tokens]

    async def connection(due_requests: trio.MemoryReceiveChannel[tuple[int, float]]) -> None:
        http = HttpConnection(origin, connect_timeout_s=REQUEST_TIMEOUT_S)
        async with due_requests:
            while True:
                # One cancel scope per connection, not per request: its deadline runs only while
                # a request is in flight. A timeout cancels it for good, so it is made anew.
                with trio.CancelScope() as scope:
                    async for index, due in due_requests:
                        message = json_post(heads[index % len(heads)], action_body(index))
                        scope.deadline = trio.current_time() + REQUEST_TIMEOUT_S
                        try:
                            response = await http.send(message)
                        except HttpError as exc:
                            errors[type(exc).__name__] += 1
                            continue
                        finally:
                            scope.deadline = math.inf
                        statuses[response.status] += 1
                        if response.status == 202:
                            accepted_ms.append((trio.current_time() - due) * 1000)
                            accept_times.append(time.monotonic())
                    await http.aclose()
                    return
                errors["Timeout"] += 1

    cpu_before = cpu_seconds()
    send_due, receive_due = trio.open_memory_channel[tuple[int, float]](math.inf)
    async with trio.open_nursery() as nursery:
        async with receive_due:
            for _ in range(job["connections"]):
                nursery.start_soon(connection, receive_due.clone())
        start = trio.current_time() + SCHEDULE_LEAD_S
        async with send_due:
            for index in range(total):
                due = start + index / rate
                if due > trio.current_time():
                    await trio.sleep_until(due)
                else:
                    # Late already: a timer's cancel scope would only cost CPU, but the
                    # connections must still get their turn.
                    await trio.lowlevel.checkpoint()
                worst_dispatch_lag_s = max(worst_dispatch_lag_s, trio.current_time() - due)
                send_due.send_nowait((index, due))
    elapsed_s = trio.current_time() - start
    return {
        "sent": total,
        "accepted": len(accepted_ms),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "errors": dict(errors),
        "latency_ms": latency_summary(accepted_ms),
        "elapsed_s": elapsed_s,
        "first_accept_at": min(accept_times, default=None),
        "last_accept_at": max(accept_times, default=None),
        "worst_dispatch_lag_ms": worst_dispatch_lag_s * 1000,
        "cpu_s": cpu_seconds() - cpu_before,
    }


def epoch_ms(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp() * 1000


class Watcher:
    """One WebSocket client; keeps the delivery latency of every update after the window opens."""

    def __init__(self, window: dict[str, float]) -> None:
        self.window = window
        self.latencies_ms: list[float] = []
        self.latest: list[dict[str, Any]] | None = None
        self.failure: str | None = None

    async def connect(self, nursery: trio.Nursery, job: dict[str, Any], token: str) -> None:
        try:
            ws = await connect_websocket_url(
                nursery, job["ws_url"], extra_headers=[(b"Origin", job["origin"].encode())]
            )
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            reply = json.loads(await ws.get_message())
        except (ConnectionClosed, HandshakeError, OSError) as exc:
            self.failure = type(exc).__name__
            return
        if reply.get("type") != "auth_ok":
            self.failure = f"auth refused: {reply.get('error')}"
            return
        nursery.start_soon(self.receive_updates, ws)

    async def receive_updates(self, ws: WebSocketConnection) -> None:
        try:
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] != "leaderboard_update":
                    continue
                received_ms = time.time() * 1000
                data = message["data"]
                self.latest = data["leaderboard"]
                committed_ms = epoch_ms(data["timestamp"])
                if committed_ms >= self.window["opened_ms"]:
                    self.latencies_ms.append(received_ms - committed_ms)
        except ConnectionClosed as exc:
            self.failure = f"closed {exc.reason.code if exc.reason else None}"


async def read_line() -> str:
    return await trio.to_thread.run_sync(sys.stdin.readline)


async def watch_leaderboard(job: dict[str, Any]) -> None:
    window = {"opened_ms": float("inf")}
    watchers = [Watcher(window) for _ in job["tokens"]]
    async with trio.open_nursery() as nursery:
        connect_started = trio.current_time()
        for watcher, token in zip(watchers, job["tokens"], strict=True):
            await watcher.connect(nursery, job, token)
        connect_s = trio.current_time() - connect_started
        window["opened_ms"] = time.time() * 1000
        cpu_before = cpu_seconds()
        emit({"event": "ready", "connect_s": connect_s})
        await read_line()  # the parent's "stop"
        cpu_s = cpu_seconds() - cpu_before
        nursery.cancel_scope.cancel()
    async with httpx.AsyncClient(base_url=job["origin"], timeout=REQUEST_TIMEOUT_S) as client:
        final_board = (await client.get("/api/v1/leaderboard")).json()["leaderboard"]
    latencies = [ms for watcher in watchers for ms in watcher.latencies_ms]
    failures = Counter(w.failure for w in watchers if w.failure is not None)
    emit(
        {
            "event": "result",
            "clients": len(watchers),
            "failed": dict(failures),
            "updates": len(latencies),
            "updates_per_client_min": min(len(w.latencies_ms) for w in watchers),
            "latency_ms": latency_summary(latencies),
            "saw_final_board": sum(w.latest == final_board for w in watchers),
            "cpu_s": cpu_s,
        }
    )


async def main() -> None:
    job = json.loads(await read_line())
    if job["kind"] == "http":
        emit({"event": "result", **await perform_open_loop(job)})
    else:
        await watch_leaderboard(job)


if __name__ == "__main__":
    trio.run(main)
