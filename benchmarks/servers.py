"""`scoreboard serve` started the way an operator starts it: a process of its own, configured
through the environment, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from scoreboard.config import Config
from scoreboard.loadtest.http11 import HttpConnection, HttpError, Origin

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
SERVE = [sys.executable, "-m", "scoreboard", "serve"]


class ServerFailed(RuntimeError):
    """The server did not become ready; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def processes_option_available() -> bool:
    """Whether this checkout's `scoreboard serve` has `--processes` (several API processes)."""
    done = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, check=False)
    return "--processes" in done.stdout


def server_environment(config: Config, port: int) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}
    amqp = config.amqp
    env.update(
        {
            "SCOREBOARD_SERVER_HOST": "127.0.0.1",
            "SCOREBOARD_SERVER_PORT": str(port),
            "SCOREBOARD_DATABASE_URL": config.database.url,
            "SCOREBOARD_REDIS_URL": config.redis.url,
            "SCOREBOARD_REDIS_PREFIX": config.redis.prefix,
            "SCOREBOARD_AMQP_URL": amqp.url,
            "SCOREBOARD_AMQP_QUEUE": amqp.queue,
            "SCOREBOARD_AMQP_FAILED_QUEUE": amqp.failed_queue,
            "SCOREBOARD_AMQP_DEAD_LETTER_EXCHANGE": amqp.dead_letter_exchange,
            "SCOREBOARD_AMQP_EVENTS_EXCHANGE": amqp.events_exchange,
            "SCOREBOARD_LIMITS_ENABLED": "true" if config.limits.enabled else "false",
            "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_IP": str(
                config.websocket.max_connections_per_ip
            ),
            "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_USER": str(
                config.websocket.max_connections_per_user
            ),
        }
    )
    return env


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int
    command: list[str]
    log_path: Path


async def _wait_ready(process: trio.Process, url: str, log_path: Path) -> None:
    http = HttpConnection(Origin.parse(url), connect_timeout_s=2)
    try:
        with trio.fail_after(READY_TIMEOUT_S):
            while True:
                if process.returncode is not None:
                    raise ServerFailed(
                        f"the server exited ({process.returncode}):\n{_tail(log_path)}"
                    )
                try:
                    if (await http.get("/readyz")).status == 200:
                        return
                except HttpError:
                    pass
                await trio.sleep(0.2)
    except trio.TooSlowError:
        raise ServerFailed(f"not ready in {READY_TIMEOUT_S:g} s:\n{_tail(log_path)}") from None
    finally:
        await http.aclose()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.asynccontextmanager
async def running_server(
    config: Config, log_path: Path, *, processes: int | None
) -> AsyncIterator[RunningServer]:
    """`scoreboard serve` on a free port until the block ends, then SIGTERM (SIGKILL if it does
    not stop in STOP_TIMEOUT_S)."""
    port = free_port()
    command = [*SERVE, "--host", "127.0.0.1", "--port", str(port)]
    if processes is not None:
        command += ["--processes", str(processes)]
    url = f"http://127.0.0.1:{port}"
    async with trio.open_nursery() as nursery:
        with log_path.open("ab") as log:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    env=server_environment(config, port),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            )
        try:
            await _wait_ready(process, url, log_path)
            yield RunningServer(url, process.pid, command, log_path)
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(STOP_TIMEOUT_S):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
