"""`scoreboard serve --processes N`: one parent process runs the roles as child processes.

On the real stack, `--role all` runs N API processes and one worker process, `--role api` N API
processes, `--role worker` N worker processes (they split the shard queues between them,
docs/scaling.md; with one queue, one consumes it and the others stand by). Every API process
binds its own socket to the one port with SO_REUSEPORT, and the kernel spreads new connections
over them. The parent binds the port first
(never listening, so it receives no connection): that picks the port for `--port 0`, fails early
and clearly when the port is taken, and keeps the port while a child restarts.

A child is `scoreboard serve --processes 1` linked to its parent by a socket pair. It writes
`ready <url>` on it once its own supervisor has started every actor; when the parent is gone
(exited, or killed with SIGKILL) the child reads end-of-file and drains as on SIGTERM, so no
child outlives its parent. Each child serves its own operations listener (`/metrics`, …) on
`ops.port` + its index, so that each is scraped alone (0: a free port each, which it logs); the
parent runs no actors and serves none. Children ignore SIGINT: Ctrl-C in a terminal reaches the
whole process group, and the parent stops them itself, in the same way as on SIGTERM.

The parent is the children's supervisor, with the in-process supervisor's rules: a child that
dies is restarted after an exponentially growing delay with jitter (starting over once it has
run for a while); more than `intensity` restarts within `period` seconds and it stops every child
and exits 1, for the process manager above it to act. On SIGTERM or SIGINT it sends SIGTERM to
every child, waits for them to drain (up to `server.drain_timeout_s` and a margin), sends
SIGKILL to any still running, and exits 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from scoreboard.backoff import Backoff
from scoreboard.config import Config, Role
from scoreboard.demo import announcement
from scoreboard.http.listener import socket_url
from scoreboard.supervisor.intensity import RestartIntensity

log = logging.getLogger("scoreboard.processes")

INTENSITY = 5
PERIOD_S = 30.0
BACKOFF_MIN_S = 0.5  # a process takes about a second to start: no faster restarts than that
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_AFTER_S = 30.0
# Past the children's own drain grace: closing the backends and exiting.
STOP_MARGIN_S = 5.0
READY_PREFIX = b"ready "
LINK_READ_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Child:
    """One child process of the parent: its name (its log prefix) and its role."""

    name: str
    role: Role
    # Its place among the children: its operations listener is on `ops.port` + index.
    index: int = 0


def plan_children(config: Config) -> tuple[list[Child], str | None]:
    """The children `scoreboard serve` should run (none: run in this process), and a notice
    when fewer processes run than were asked for."""
    asked = config.server.processes
    count = asked if asked > 0 else (os.cpu_count() or 1)
    if count <= 1:
        return [], None
    if config.backend_mode == "embedded":
        notice = (
            f"embedded mode runs in one process (its backends live in that process): "
            f"--processes {asked} does not apply"
        )
        return [], notice if asked > 1 else None
    if not hasattr(socket, "SO_REUSEPORT"):
        return [], "this platform has no SO_REUSEPORT: serving from one process"
    role = config.server.role
    apis = [Child(f"api-{i}", "api") for i in range(count)] if role in ("all", "api") else []
    if role == "all":
        workers = [Child("worker-0", "worker")]
    elif role == "worker":
        workers = [Child(f"worker-{i}", "worker") for i in range(count)]
    else:
        workers = []
    return [dataclasses.replace(c, index=i) for i, c in enumerate(apis + workers)], None


def ops_port(config: Config, index: int) -> int:
    """The operations port of the `index`-th child: `ops.port` + index, so that each child is
    scraped on its own (0: each picks a free one, which it logs)."""
    return config.ops.port + index if config.ops.port else 0


def child_command(
    child: Child, config: Config, *, port: int, log_level: str, link_fd: int
) -> list[str]:
    """The command line of a child: `scoreboard serve` for one role in one process. Every other
    setting comes from the same files and environment as the parent's."""
    return [
        sys.executable,
        "-m",
        "scoreboard",
        "--log-level",
        log_level,
        "--log-format",
        config.log.format,
        "serve",
        "--host",
        config.server.host,
        "--port",
        str(port),
        "--role",
        child.role,
        "--processes",
        "1",
        "--ops-port",
        str(ops_port(config, child.index)),
        "--child-name",
        child.name,
        "--parent-fd",
        str(link_fd),
    ]


def reserve_port(host: str, port: int) -> socket.socket:
    """A SO_REUSEPORT socket bound to `host:port` and never listening: it receives no
    connection, yet holds the port for the children, which bind it with SO_REUSEPORT too. Any
    process of the same user could join such a port, a forgotten server among them, and take
    part of its connections: so the port is first bound without SO_REUSEPORT, which fails
    (EADDRINUSE) while anything listens on it, and for port 0 picks one that nothing holds."""
    with _bound(host, port, reuse_port=False) as probe:
        port = probe.getsockname()[1]
    return _bound(host, port, reuse_port=True)


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    # Host and family as the children's listener reads them (`http/listener.py:bind_socket`).
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class ProcessesGaveUp(Exception):
    """More than `intensity` child restarts within `period` seconds; every child was stopped."""


@dataclass(eq=False)
class _Running:
    child: Child
    ready: trio.Event = field(default_factory=trio.Event)
    process: trio.Process | None = None
    wait_scope: trio.CancelScope | None = None
    backoff_scope: trio.CancelScope | None = None
    url: str | None = None
    restarts: int = 0


class ProcessSupervisor:
    """Runs `children` as processes (`command(child, link_fd)` starts one), restarts those that
    die, and stops them all on `stop()`."""

    def __init__(
        self,
        children: Sequence[Child],
        command: Callable[[Child, int], list[str]],
        *,
        grace_s: float,
        intensity: int = INTENSITY,
        period: float = PERIOD_S,
        backoff_min: float = BACKOFF_MIN_S,
        backoff_max: float = BACKOFF_MAX_S,
        backoff_reset_after: float = BACKOFF_RESET_AFTER_S,
        rng: random.Random | None = None,
    ) -> None:
        self._children = [_Running(child) for child in children]
        self._command = command
        self._grace_s = grace_s
        self.backoff_reset_after = backoff_reset_after
        self._rng = rng if rng is not None else random.Random()
        self._intensity = RestartIntensity(intensity, period)
        self._backoff = Backoff(backoff_min, backoff_max, "full", self._rng)
        self._stopping = False
        self._kill_at = math.inf
        self._gave_up: ProcessesGaveUp | None = None

    def pids(self) -> dict[str, int]:
        """The running children's process ids, by child name."""
        return {
            running.child.name: running.process.pid
            for running in self._children
            if running.process is not None
        }

    def urls(self) -> list[str]:
        """What the ready children serve (the same address for every API child)."""
        return sorted({running.url for running in self._children if running.url})

    async def wait_all_ready(self) -> None:
        """Until every child has reported ready once."""
        for running in self._children:
            await running.ready.wait()

    async def run(self) -> None:
        """Start every child and keep them running until `stop()` is done; raises
        `ProcessesGaveUp` when children keep dying."""
        async with trio.open_nursery() as nursery:
            for running in self._children:
                nursery.start_soon(self._keep_running, running)
        if self._gave_up is not None:
            raise self._gave_up

    def stop(self) -> None:
        """SIGTERM to every child (they drain), SIGKILL to those still running after the grace;
        `run` returns once all have exited."""
        if self._stopping:
            return
        self._stopping = True
        self._kill_at = trio.current_time() + self._grace_s
        for running in self._children:
            if running.backoff_scope is not None:
                running.backoff_scope.cancel()
            if running.wait_scope is not None:
                running.wait_scope.deadline = self._kill_at
            if running.process is not None:
                _signal(running.process, signal.SIGTERM)

    async def _keep_running(self, running: _Running) -> None:
        attempt = 0
        while not self._stopping:
            started_at = trio.current_time()
            returncode = await self._run_once(running)
            if self._stopping:
                return
            if trio.current_time() - started_at >= self.backoff_reset_after:
                attempt = 0
            log.error("child %s %s", running.child.name, _describe_exit(returncode))
            if self._intensity.exceeded_by_one_more(trio.current_time()):
                log.critical(
                    "more than %d child restarts in %g s, the last of %s: stopping every child",
                    self._intensity.intensity,
                    self._intensity.period,
                    running.child.name,
                )
                self._gave_up = ProcessesGaveUp(
                    f"child {running.child.name} {_describe_exit(returncode)}; more than "
                    f"{self._intensity.intensity} restarts in {self._intensity.period:g} s"
                )
                self.stop()
                return
            delay = self._backoff.delay(attempt)
            attempt += 1
            running.restarts += 1
            log.warning("restarting child %s in %.1f s", running.child.name, delay)
            with trio.CancelScope() as running.backoff_scope:
                await trio.sleep(delay)
            running.backoff_scope = None

    async def _run_once(self, running: _Running) -> int:
        """Start the child, wait for it to exit (killing it past the stop deadline)."""
        ours, theirs = socket.socketpair()
        with trio.socket.from_stdlib_socket(ours) as link:
            with theirs:
                process = await trio.lowlevel.open_process(
                    self._command(running.child, theirs.fileno()),
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            running.process = process
            if self._stopping:  # `stop` came while the process was being created
                _signal(process, signal.SIGTERM)
            log.info("started child %s (pid %d)", running.child.name, process.pid)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_ready, running, link)
                    returncode = await self._wait(running, process)
                    nursery.cancel_scope.cancel()
            finally:
                running.process = None
        return returncode

    async def _wait(self, running: _Running, process: trio.Process) -> int:
        with trio.CancelScope(deadline=self._kill_at) as running.wait_scope:
            returncode = await process.wait()
        running.wait_scope = None
        if process.returncode is None:
            log.warning(
                "child %s (pid %d) still running after %g s: SIGKILL",
                running.child.name,
                process.pid,
                self._grace_s,
            )
            process.kill()
            returncode = await process.wait()
        return returncode

    async def _read_ready(self, running: _Running, link: trio.socket.SocketType) -> None:
        received = b""
        while b"\n" not in received and len(received) < LINK_READ_BYTES:
            chunk = await link.recv(LINK_READ_BYTES)
            if not chunk:
                return
            received += chunk
        line = received.split(b"\n", 1)[0]
        if line.startswith(READY_PREFIX):
            url = line[len(READY_PREFIX) :].decode("ascii", errors="replace").strip()
            running.url = url if url != "-" else None
            log.info("child %s ready%s", running.child.name, f" on {url}" if running.url else "")
            running.ready.set()


def _signal(process: trio.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class ParentLink:
    """A child's end of the socket pair to its parent (`--parent-fd`)."""

    def __init__(self, fd: int) -> None:
        self._socket = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))

    async def report_ready(self, url: str | None) -> None:
        await self._socket.send(READY_PREFIX + (url or "-").encode("ascii") + b"\n")

    async def wait_until_gone(self) -> None:
        """Return once the parent's end is closed: it exited, or was killed."""
        while await self._socket.recv(LINK_READ_BYTES):
            pass

    def close(self) -> None:
        self._socket.close()


async def run_parent(config: Config, children: Sequence[Child], log_level: str) -> int:
    """The `scoreboard serve` main with children: 0 after SIGTERM/SIGINT, 1 on a give-up."""
    server = config.server
    serves_http = any(child.role == "api" for child in children)
    with contextlib.ExitStack() as stack:
        port = server.port
        url = None
        if serves_http:
            try:
                reservation = stack.enter_context(reserve_port(server.host, server.port))
            except OSError as exc:
                log.critical("cannot listen on %s:%d: %s", server.host, server.port, exc)
                return 1
            port = reservation.getsockname()[1]
            url = socket_url(reservation)
        signals = stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
        group = ProcessSupervisor(
            children,
            lambda child, fd: child_command(
                child, config, port=port, log_level=log_level, link_fd=fd
            ),
            grace_s=server.drain_timeout_s + STOP_MARGIN_S,
        )

        async def announce_when_ready() -> None:
            await group.wait_all_ready()
            apis = sum(child.role == "api" for child in children)
            log.info(
                "scoreboard ready: %d API and %d worker process(es)%s; pids %s",
                apis,
                len(children) - apis,
                f" on {url}" if url else "",
                group.pids(),
            )
            if url is not None:
                for line in announcement(url, None, embedded=False):
                    print(line, flush=True)

        async def stop_on_signal() -> None:
            async for signum in signals:
                log.info("received %s: stopping every child", signal.Signals(signum).name)
                group.stop()

        exit_code = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce_when_ready)
            nursery.start_soon(stop_on_signal)
            try:
                await group.run()
            except ProcessesGaveUp as exc:
                log.critical("gave up: %s", exc)
                exit_code = 1
            nursery.cancel_scope.cancel()
        log.info("every child has exited")
        return exit_code
