"""Backends of a chaos test's own, which it may stop, restart and flush: a `redis-server` and a
RabbitMQ node on free ports, their data in a temporary directory. The machine's shared services
are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.e2e.processes import free_port

RABBITMQ_START_TIMEOUT_S = 90.0


class PrivateRedis:
    """`redis-server` without persistence on a free port: `stop` and `start` keep the port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None, "redis-server is needed for the chaos tests"
        self._process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(self.url) as client:
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the private redis-server did not start"
                time.sleep(0.05)

    def flush(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.flushdb()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


class PrivateRabbit:
    """A RabbitMQ node of its own (`chaos-<pid>@localhost`), with no plugins and no config file:
    `restart` stops it (durable queues and persistent messages stay on its disk) and starts it
    again on the same ports."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.node = f"chaos-{os.getpid()}-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._directory = directory
        directory.chmod(0o777)  # the server drops to the rabbitmq user when started as root
        plugins = directory / "enabled_plugins"
        plugins.write_text("[].\n")
        plugins.chmod(0o666)
        self._env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(directory / "no-config"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "no-advanced-config"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(directory / "feature_flags"),
            "RABBITMQ_PID_FILE": str(directory / "pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(directory / "plugins-expand"),
        }
        self.started_in_s: list[float] = []

    def _ctl(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[bytes]:
        ctl = shutil.which("rabbitmqctl")
        assert ctl is not None, "rabbitmqctl is needed for the chaos tests"
        return subprocess.run(
            [ctl, "-q", "-n", self.node, *args],
            env=self._env,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self) -> None:
        server = shutil.which("rabbitmq-server")
        assert server is not None, "rabbitmq-server is needed for the chaos tests"
        started = time.monotonic()
        with (self._directory / "server.log").open("ab") as log:
            subprocess.Popen(
                [server],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while self._ctl("await_startup", "-t", "2", timeout_s=10).returncode != 0:
            assert time.monotonic() - started < RABBITMQ_START_TIMEOUT_S, (
                self._directory / "server.log"
            ).read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        self.started_in_s.append(time.monotonic() - started)

    def stop(self) -> None:
        self._ctl("stop", timeout_s=60)

    def restart(self) -> None:
        self.stop()
        self.start()
