"""Running `scoreboard serve` as real processes, configured for one test's own backends (real
ones, or an embedded data directory of its own)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import trio

from scoreboard.auth.keys import KeyRing, load_or_create_keyring
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import open_backends
from scoreboard.config import Config
from tests.http.conftest import PASSWORD

OPS_LISTENER = re.compile(r"operations endpoints on (http://[0-9.]+:[0-9]+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_environment(
    config: Config, *, port: int, role: str, limits_enabled: bool, processes: int = 1
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}
    env.update(
        {
            "SCOREBOARD_LIMITS_ENABLED": "true" if limits_enabled else "false",
            "SCOREBOARD_SERVER_HOST": "127.0.0.1",
            "SCOREBOARD_SERVER_PORT": str(port),
            "SCOREBOARD_SERVER_ROLE": role,
            "SCOREBOARD_SERVER_PROCESSES": str(processes),
            "SCOREBOARD_LIMITS_IP_REQUESTS_PER_MINUTE": str(config.limits.ip_requests_per_minute),
            "SCOREBOARD_AMQP_RETRY_DELAYS_MS": ",".join(map(str, config.amqp.retry_delays_ms)),
        }
    )
    if config.backend_mode == "embedded":  # the three URLs stay unset
        env["SCOREBOARD_EMBEDDED_DATA_DIR"] = config.embedded.data_dir
        return env
    env.update(
        {
            "SCOREBOARD_DATABASE_URL": config.database.url,
            "SCOREBOARD_REDIS_URL": config.redis.url,
            "SCOREBOARD_REDIS_PREFIX": config.redis.prefix,
            "SCOREBOARD_AMQP_URL": config.amqp.url,
            "SCOREBOARD_AMQP_QUEUE": config.amqp.queue,
            "SCOREBOARD_AMQP_FAILED_QUEUE": config.amqp.failed_queue,
            "SCOREBOARD_AMQP_DEAD_LETTER_EXCHANGE": config.amqp.dead_letter_exchange,
            "SCOREBOARD_AMQP_EVENTS_EXCHANGE": config.amqp.events_exchange,
            "SCOREBOARD_AMQP_SHARDS": str(config.amqp.shards),
            "SCOREBOARD_AMQP_QUEUE_TYPE": config.amqp.queue_type,
        }
    )
    return env


async def registered_user(client: httpx.AsyncClient) -> int:
    """A new account, registered through the server `client` talks to; its user id."""
    name = f"p{uuid.uuid4().hex[:12]}"
    response = await client.post(
        "/api/v1/users",
        json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201, response.text
    user_id: int = response.json()["user_id"]
    return user_id


async def signing_keys(config: Config) -> KeyRing:
    """The servers' signing keys, from their store (the processes may hold it: not exclusive)."""
    async with open_backends(config, exclusive=False) as backends:
        return await load_or_create_keyring(backends.store)


def access_token(keys: KeyRing, config: Config, server: ServerProcess, user_id: int) -> str:
    """A `read write` access token for `user_id` as `server` issues them (its port names the
    issuer)."""
    token, _claims = issue_access_token(
        keys,
        config=config.replace(server={"port": server.port}),
        user_id=user_id,
        client_id="scoreboard-web",
        scope="read write",
    )
    return token


class ServerProcess:
    """One `scoreboard serve` process; its log goes to a file the test can read."""

    def __init__(
        self,
        config: Config,
        log_dir: Path,
        *,
        role: str,
        limits_enabled: bool = False,
        port: int | None = None,
        processes: int = 1,
        arguments: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
    ):
        self.port = port or free_port()
        self.role = role
        self.url = f"http://127.0.0.1:{self.port}"
        # A restart on the same port must not find the ready line of the process before it.
        self.log_path = log_dir / f"{role}-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self._env = server_environment(
            config, port=self.port, role=role, limits_enabled=limits_enabled, processes=processes
        )
        self._env.update(environment or {})
        # Arguments before `serve` (`--log-format json`, `--log-level DEBUG`).
        self._arguments = list(arguments)
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # How many "scoreboard ready" lines the log held when the latest start began: a start
        # that gave up before it was ready (its backends down) must not count as a later one.
        self._ready_before = 0
        # Where the latest start's lines begin in the log file.
        self._log_offset = 0

    def _ready_lines(self) -> int:
        return self.log().count("scoreboard ready") if self.log_path.exists() else 0

    def start(self) -> None:
        self.starts += 1
        self._ready_before = self._ready_lines()
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "scoreboard", *self._arguments, "serve"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_of_latest_start(self) -> str:
        """What the latest start has logged so far, from its first line (some of it may come
        before its ready line)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def ops_urls(self) -> list[str]:
        """The operations listeners the process (or its children) logged, in order."""
        return OPS_LISTENER.findall(self.log())

    async def wait_started(self, timeout_s: float = 30) -> None:
        """Until the process (its latest start) logs that it is ready: its signal handlers are
        set, whatever its backends say."""
        with trio.fail_after(timeout_s):
            while self._ready_lines() <= self._ready_before:
                assert self._process is not None
                await trio.sleep(0.1)

    async def wait_ready(self, timeout_s: float = 30) -> None:
        """Until the process (its latest start) logs that it is ready (and, with HTTP, /readyz
        answers 200)."""
        with trio.fail_after(timeout_s):
            while self._ready_lines() <= self._ready_before:
                assert self._process is not None
                assert self._process.poll() is None, self.log()
                await trio.sleep(0.1)
            if self.role == "worker":
                return
            async with httpx.AsyncClient(base_url=self.url) as client:
                while (await client.get("/readyz")).status_code != 200:
                    await trio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no chance to ack, close or flush anything."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(10)

    async def wait_exit(self, timeout_s: float = 20) -> int:
        """Until the process exits by itself; its exit status."""
        assert self._process is not None
        with trio.fail_after(timeout_s):
            while self._process.poll() is None:
                await trio.sleep(0.05)
        return self._process.returncode

    async def send_sigterm(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        await trio.lowlevel.checkpoint()

    async def terminate(self, timeout_s: float = 20) -> int:
        """SIGTERM and wait: the graceful drain."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout_s):
            while self._process.poll() is None:
                await trio.sleep(0.05)
        return self._process.returncode

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
