"""A worker process of `scoreboard loadtest`: many authenticated WebSockets that watch the board.

Run as `python -m scoreboard.loadtest.watchers` by the load test, which talks to it in JSON lines
(a job on stdin, then commands; events on stdout). Each socket is opened and authenticated with
trio, then handed to one epoll set that a single task drains: one wake-up reads every socket that
has data, so the cost per frame is a `recv`, a frame header, a dictionary lookup and a timestamp.
A leaderboard snapshot is parsed once per process (every socket receives the same text), and
only the parts the figures need are kept: per socket, when each snapshot arrived.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import resource
import select
import socket
import struct
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio

from scoreboard.loadtest.histogram import Histogram, Series
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
    close_frame,
    new_key,
    parse_head,
    retry_pause_s,
    split_head,
    text_frame,
    upgrade_request,
)

RECEIVE_BYTES = 262144
CONNECT_ATTEMPTS = 5
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; not exported by Python
ANCILLARY_BYTES = socket.CMSG_SPACE(16)
TIMESPEC = struct.Struct("qq")
MAX_EVENTS = 4096
SNAPSHOT_CACHE = 4096
PROGRESS_INTERVAL_S = 0.5
MAX_HEAD_BYTES = 65536


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def final_top_of(finish: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    return tuple((int(uid), int(score)) for uid, score in finish["final_top"])


def epoch_seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


class Snapshot:
    """One distinct leaderboard_update: when the server stamped it, and the board it shows."""

    __slots__ = ("index", "scores", "stamped_at", "top")

    def __init__(self, index: int, stamped_at: float, top: tuple[tuple[int, int], ...]) -> None:
        self.index = index
        self.stamped_at = stamped_at  # epoch seconds
        self.top = top  # (user_id, score) in rank order
        self.scores = dict(top)


@dataclass(frozen=True)
class Refusal:
    """Why a socket did not open; `retry` when the failure was in transit, not a refusal."""

    reason: str
    retry: bool = False


class Watcher:
    """One socket: its reader and what it saw."""

    __slots__ = (
        "account",
        "closed",
        "last_other",
        "last_snapshot",
        "last_update_at",
        "number",
        "other_frames",
        "reader",
        "sock",
        "timeline_at",
        "timeline_snapshot",
        "updates",
        "window_updates",
    )

    def __init__(self, number: int, account: int) -> None:
        self.number = number
        self.account = account
        self.sock: socket.socket | None = None
        self.reader: FrameReader | None = None
        self.closed: str | None = None
        self.updates = 0
        self.window_updates = 0
        self.other_frames = 0
        self.last_update_at = 0.0
        self.last_snapshot = -1
        self.last_other = b""
        self.timeline_at: array[float] | None = None
        self.timeline_snapshot: array[int] | None = None


class Worker:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.host: str = job["host"]
        self.port: int = job["port"]
        self.tokens: dict[int, str] = {int(k): v for k, v in job["tokens"].items()}
        self.leaders: list[int] = job["leaders"]
        self.watchers = [Watcher(number, account) for number, account in job["clients"]]
        for watcher in self.watchers[: job["track_clients"]]:
            watcher.timeline_at = array("d")
            watcher.timeline_snapshot = array("I")
        self.epoll = select.epoll()
        self.by_fd: dict[int, Watcher] = {}
        self.snapshot_of: dict[bytes, Snapshot] = {}
        self.snapshots: list[Snapshot] = []
        self.refused: Counter[str] = Counter()
        self.retries = 0
        self.connected = 0
        self.connect_s = 0.0
        self.frames = 0
        self.malformed = 0
        self.dropped: Counter[str] = Counter()
        self.dropped_in_window = 0
        self.window_start = math.inf
        self.window_end = math.inf
        self.wall_minus_monotonic = time.time() - time.monotonic()
        self.final_top: tuple[tuple[int, int], ...] | None = None  # known at the finish
        self.short_of_final: set[int] = set()  # open sockets that do not show it yet
        self.all_on_final = trio.Event()
        self.lag = Histogram()
        self.lag_series = Series()
        self.gap = Histogram()
        # Per wake-up while sending: how long the oldest data it read had waited in the kernel.
        self.read_delay = Histogram()
        self.updates_per_second: Counter[int] = Counter()

    # -- connecting

    async def connect_all(self) -> None:
        started = time.monotonic()
        limiter = trio.Semaphore(self.job["connect_concurrency"])
        async with trio.open_nursery() as nursery:
            for watcher in self.watchers:
                await limiter.acquire()
                nursery.start_soon(self._connect_one, watcher, limiter)
        self.connect_s = time.monotonic() - started

    async def _connect_one(self, watcher: Watcher, limiter: trio.Semaphore) -> None:
        """Like the web page: a connection that fails in transit (reset, closed, timed out,
        a 5xx) is tried again after a growing pause; a refusal (4xx on the upgrade, a close
        code, an error message) is final."""
        try:
            for attempt in range(CONNECT_ATTEMPTS):
                with trio.move_on_after(self.job["connect_timeout_s"]) as scope:
                    refusal = await self._open(watcher)
                if scope.cancelled_caught:
                    refusal = Refusal("timeout (connect, upgrade or auth)", retry=True)
                if refusal is None:
                    self.connected += 1
                    return
                if watcher.sock is not None:
                    watcher.sock.close()
                    watcher.sock = None
                if not refusal.retry or attempt == CONNECT_ATTEMPTS - 1:
                    self.refused[refusal.reason] += 1
                    return
                self.retries += 1
                await trio.sleep(retry_pause_s(attempt))
        finally:
            limiter.release()

    async def _open(self, watcher: Watcher) -> Refusal | None:
        """Open, upgrade and authenticate one socket; why it failed, or None."""
        family, kind, proto, _name, address = (
            await trio.socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watcher.sock = sock
        trio_sock = trio.socket.from_stdlib_socket(sock)
        try:
            await trio_sock.connect(address)
            key = new_key()
            offered = self.job["offer_deflate"]
            request = upgrade_request(
                self.job["host_header"],
                self.job["path"],
                self.job["origin"],
                key,
                offer_deflate=offered,
                user_agent=self.job["user_agent"],
            )
            await _send_all(trio_sock, request)
            buffer = b""
            while (parts := split_head(buffer)) is None:
                chunk = await trio_sock.recv(65536)
                if not chunk or len(buffer) > MAX_HEAD_BYTES:
                    return Refusal("closed during the upgrade", retry=True)
                buffer += chunk
            head, rest = parts
            status, reason, headers = parse_head(head)
            try:
                deflate = check_upgrade(status, reason, headers, key, rest, offered=offered)
            except HandshakeRefused as refused:
                return Refusal(f"HTTP {refused.status} on upgrade", retry=refused.status >= 500)
            reader = FrameReader(deflate)
            token = self.tokens[watcher.account]
            await _send_all(trio_sock, text_frame(json.dumps({"type": "auth", "token": token})))
            messages = reader.feed(rest)
            while True:
                for index, (opcode, payload) in enumerate(messages):
                    if opcode == CLOSE:
                        code, text = close_code_of(payload)
                        return Refusal(f"close {code} {text}".strip())
                    if opcode != TEXT:
                        continue
                    message = json.loads(payload)
                    if message.get("type") == "error":
                        return Refusal(f"error {message.get('error')}")
                    if message.get("type") == "auth_ok":
                        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                        watcher.reader = reader
                        self.by_fd[sock.fileno()] = watcher
                        self.epoll.register(sock.fileno(), select.EPOLLIN)
                        self._messages(watcher, messages[index + 1 :], time.monotonic())
                        return None
                chunk = await trio_sock.recv(65536)
                if not chunk:
                    return Refusal("closed before auth_ok", retry=True)
                messages = reader.feed(chunk)
        except OSError as exc:
            return Refusal(f"{type(exc).__name__}: {exc}", retry=True)
        except (ProtocolError, ValueError) as exc:
            return Refusal(f"{type(exc).__name__}: {exc}")

    # -- receiving

    async def receive_forever(self) -> None:
        """Drain every readable socket at each wake-up. Each read carries the kernel's arrival
        time (SO_TIMESTAMPNS), so a wake-up that comes late (this process short of CPU) does
        not add to the latencies measured; how late it came is recorded apart (`read_delay`),
        because a process that stays behind lets its sockets' receive buffers fill, and then
        the server sees slow readers."""
        poll = self.epoll.poll
        by_fd = self.by_fd
        monotonic = time.monotonic
        buffer = bytearray(RECEIVE_BYTES)
        view = memoryview(buffer)
        unpack = TIMESPEC.unpack_from
        while True:
            await trio.lowlevel.wait_readable(self.epoll.fileno())
            events = poll(0, MAX_EVENTS)
            wall_minus_monotonic = time.time() - monotonic()
            earliest = math.inf
            for fd, _events in events:
                watcher = by_fd.get(fd)
                if watcher is None or watcher.sock is None:
                    continue
                try:
                    size, ancillary, _flags, _address = watcher.sock.recvmsg_into(
                        [view], ANCILLARY_BYTES
                    )
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._drop(watcher, f"socket error {exc.errno}")
                    continue
                if not size:
                    self._drop(watcher, "closed without a close frame")
                    continue
                if ancillary:
                    seconds, nanoseconds = unpack(ancillary[0][2])
                    now = seconds + nanoseconds * 1e-9 - wall_minus_monotonic
                else:
                    now = monotonic()
                earliest = min(earliest, now)
                assert watcher.reader is not None
                try:
                    messages = watcher.reader.feed(bytes(view[:size]))
                except ProtocolError as exc:
                    self._drop(watcher, f"protocol error: {exc}")
                    continue
                self._messages(watcher, messages, now)
            done = monotonic()
            if earliest < math.inf and self.window_start <= done < self.window_end:
                self.read_delay.add((done - earliest) * 1000)

    def _messages(self, watcher: Watcher, messages: list[tuple[int, bytes]], now: float) -> None:
        for opcode, payload in messages:
            self.frames += 1
            if opcode == TEXT:
                snapshot = self.snapshot_of.get(payload)
                if snapshot is None and b"leaderboard_update" in payload:
                    try:
                        snapshot = self._parse_snapshot(payload)
                    except (ValueError, KeyError, TypeError):
                        self.malformed += 1
                if snapshot is not None:
                    self._update(watcher, snapshot, now)
                else:
                    watcher.other_frames += 1
                    watcher.last_other = payload
            elif opcode == PING:
                self._send(watcher, client_frame(PONG, payload))
            elif opcode == CLOSE:
                code, text = close_code_of(payload)
                self._send(watcher, close_frame(code if code < 5000 else 1000))
                self._drop(watcher, self._close_reason(watcher, code, text))
                return

    def _parse_snapshot(self, payload: bytes) -> Snapshot | None:
        message = json.loads(payload)
        if message.get("type") != "leaderboard_update":
            return None
        data = message["data"]
        top = tuple((int(row["user_id"]), int(row["score"])) for row in data["leaderboard"])
        snapshot = Snapshot(len(self.snapshots), epoch_seconds(data["timestamp"]), top)
        self.snapshots.append(snapshot)
        if len(self.snapshot_of) >= SNAPSHOT_CACHE:
            self.snapshot_of.clear()
        self.snapshot_of[payload] = snapshot
        return snapshot

    def _update(self, watcher: Watcher, snapshot: Snapshot, now: float) -> None:
        watcher.updates += 1
        if self.window_start <= now < self.window_end:
            watcher.window_updates += 1
            second = int(now - self.window_start)
            self.updates_per_second[second] += 1
            self.gap.add((now - max(watcher.last_update_at, self.window_start)) * 1000)
            lag_ms = (now + self.wall_minus_monotonic - snapshot.stamped_at) * 1000
            self.lag.add(lag_ms)
            self.lag_series.add(second, lag_ms)
        watcher.last_update_at = now
        watcher.last_snapshot = snapshot.index
        if snapshot.top == self.final_top:
            self._no_longer_awaited(watcher)
        if watcher.timeline_at is not None and watcher.timeline_snapshot is not None:
            watcher.timeline_at.append(now)
            watcher.timeline_snapshot.append(snapshot.index)

    def _close_reason(self, watcher: Watcher, code: int, text: str) -> str:
        reason = f"close {code} {text}".strip()
        if watcher.last_other:
            try:
                last = json.loads(watcher.last_other)
                if last.get("type") == "error":
                    reason += f" (error {last.get('error')})"
            except ValueError:
                pass
        return reason

    def _send(self, watcher: Watcher, frame: bytes) -> None:
        if watcher.sock is None:
            return
        try:
            watcher.sock.send(frame)
        except OSError as exc:
            self._drop(watcher, f"send failed: {exc}")

    def _drop(self, watcher: Watcher, reason: str) -> None:
        if watcher.sock is None:
            return
        if watcher.closed is None:
            watcher.closed = reason
            self.dropped[reason] += 1
            if time.monotonic() < self.window_end:
                self.dropped_in_window += 1
        self._no_longer_awaited(watcher)
        fd = watcher.sock.fileno()
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)
        watcher.sock.close()
        watcher.sock = None

    # -- commands

    def reauthenticate(self, tokens: dict[int, str]) -> None:
        self.tokens.update(tokens)
        for watcher in self.watchers:
            token = tokens.get(watcher.account)
            if token is not None and watcher.sock is not None:
                self._send(watcher, text_frame(json.dumps({"type": "auth", "token": token})))

    def shows(self, watcher: Watcher, top: tuple[tuple[int, int], ...]) -> bool:
        return watcher.last_snapshot >= 0 and self.snapshots[watcher.last_snapshot].top == top

    async def settle(self, finish: dict[str, Any]) -> None:
        """Until every open socket shows the final top 10, for at most the screen bound. The
        run ends once the server has processed every action, when the last updates may still be
        on their way (the machine busy): such an update is late or missing only past the bound,
        as during the run."""
        self.final_top = final_top = final_top_of(finish)
        self.short_of_final = {
            watcher.number
            for watcher in self.watchers
            if watcher.sock is not None and not self.shows(watcher, final_top)
        }
        if self.short_of_final:
            with trio.move_on_after(finish["bound_s"]):
                await self.all_on_final.wait()

    def _no_longer_awaited(self, watcher: Watcher) -> None:
        if self.final_top is None:
            return  # the finish has not come: nothing awaited yet
        self.short_of_final.discard(watcher.number)
        if not self.short_of_final:
            self.all_on_final.set()

    def result(self, finish: dict[str, Any]) -> dict[str, Any]:
        for watcher in self.watchers:  # a socket closed during the run counts until its end
            if watcher.reader is not None and self.window_end < math.inf:
                tail = self.window_end - max(watcher.last_update_at, self.window_start)
                if tail > 0:
                    self.gap.add(tail * 1000)
        a2s = ActionToScreen(self, finish)
        final_top = final_top_of(finish)
        on_final = sum(1 for watcher in self.watchers if self.shows(watcher, final_top))
        return {
            "event": "result",
            "clients": len(self.watchers),
            "connected": self.connected,
            "refused": dict(self.refused),
            "connect_retries": self.retries,
            "connect_s": self.connect_s,
            "dropped": dict(self.dropped),
            "dropped_in_window": self.dropped_in_window,
            "open_at_end": sum(1 for w in self.watchers if w.sock is not None),
            "frames": self.frames,
            "malformed": self.malformed,
            "other_frames": sum(w.other_frames for w in self.watchers),
            "snapshots_distinct": len(self.snapshots),
            "window_updates": [w.window_updates for w in self.watchers if w.reader is not None],
            "updates_per_second": {str(s): n for s, n in self.updates_per_second.items()},
            "lag": self.lag.to_json(),
            "lag_series": self.lag_series.to_json(),
            "gap": self.gap.to_json(),
            "read_delay": self.read_delay.to_json(),
            "on_final_board": on_final,
            **a2s.figures(),
        }


class ActionToScreen:
    """For each (leader action, tracked socket): when the first snapshot that shows the action
    arrived. Scores only grow, so a snapshot shows an action of user u exactly when it shows
    u with a score at least the `new_score` the server reported for that action."""

    def __init__(self, worker: Worker, finish: dict[str, Any]) -> None:
        self.histogram = Histogram()
        self.series = Series()
        self.late = 0
        self.bound_s: float = finish["bound_s"]
        leaders = {uid: position for position, uid in enumerate(worker.leaders)}
        tracked = [w for w in worker.watchers if w.timeline_at is not None and w.reader]
        actions = sorted(finish["actions"], key=lambda action: action[2])  # by due time
        pairs = len(actions) * len(tracked)
        self.step = max(1, math.ceil(pairs / finish["pair_budget"]))
        actions = actions[:: self.step]
        self.tracked_clients = len(tracked)
        self.tracked_actions = len(actions)
        shown: list[list[tuple[int, float]]] = [[] for _ in worker.leaders]
        for uid, new_score, due in actions:
            shown[leaders[uid]].append((new_score, due))
        for per_leader in shown:
            per_leader.sort()
        thresholds = [[score for score, _due in per_leader] for per_leader in shown]
        dues = [[due for _score, due in per_leader] for per_leader in shown]
        counts = [
            tuple(
                bisect.bisect_right(thresholds[position], snapshot.scores.get(uid, -1))
                for position, uid in enumerate(worker.leaders)
            )
            for snapshot in worker.snapshots
        ]
        start = worker.window_start
        for watcher in tracked:
            assert watcher.timeline_at is not None
            assert watcher.timeline_snapshot is not None
            pointers = [0] * len(worker.leaders)
            for at, index in zip(watcher.timeline_at, watcher.timeline_snapshot, strict=True):
                for position, count in enumerate(counts[index]):
                    first = pointers[position]
                    if count > first:
                        for due in dues[position][first:count]:
                            self._record(at - due, int(due - start))
                        pointers[position] = count
            for position, pointer in enumerate(pointers):
                self.histogram.add_missing(len(dues[position]) - pointer)

    def _record(self, latency_s: float, due_second: int) -> None:
        self.histogram.add(latency_s * 1000)
        self.series.add(due_second, latency_s * 1000)
        if latency_s > self.bound_s:
            self.late += 1

    def figures(self) -> dict[str, Any]:
        return {
            "a2s": self.histogram.to_json(),
            "a2s_series": self.series.to_json(),
            "a2s_late": self.late,
            "a2s_tracked_clients": self.tracked_clients,
            "a2s_tracked_actions": self.tracked_actions,
            "a2s_sampling_step": self.step,
        }


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


class Lines:
    """JSON lines from the parent on stdin."""

    def __init__(self) -> None:
        self.stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self.buffer = b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def report_progress(worker: Worker) -> None:
    while True:
        emit(
            {
                "event": "progress",
                "connected": worker.connected,
                "refused": sum(worker.refused.values()),
                "frames": worker.frames,
                "dropped": sum(worker.dropped.values()),
            }
        )
        await trio.sleep(PROGRESS_INTERVAL_S)


async def report_once_settled(
    worker: Worker, finish: dict[str, Any], done: trio.CancelScope
) -> None:
    await worker.settle(finish)
    emit(worker.result(finish))
    done.cancel()


async def main() -> None:
    raise_open_files_limit()
    lines = Lines()
    job = await lines.next()
    if job is None:
        return
    worker = Worker(job)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.receive_forever)
        nursery.start_soon(report_progress, worker)
        await worker.connect_all()
        emit(
            {
                "event": "ready",
                "connected": worker.connected,
                "refused": dict(worker.refused),
                "connect_s": worker.connect_s,
            }
        )
        while (command := await lines.next()) is not None:
            if command["cmd"] == "window":
                worker.window_start = command["start"]
                worker.window_end = command["end"]
            elif command["cmd"] == "tokens":
                worker.reauthenticate({int(k): v for k, v in command["tokens"].items()})
            elif command["cmd"] == "finish":
                # Token refreshes still come (and are needed) while the screens settle.
                nursery.start_soon(report_once_settled, worker, command, nursery.cancel_scope)
        nursery.cancel_scope.cancel()
    for watcher in worker.watchers:
        if watcher.sock is not None:
            watcher.sock.close()


if __name__ == "__main__":
    trio.run(main)
