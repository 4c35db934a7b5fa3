"""The fuzzing battery's server: the real application in a thread of its own (schemathesis and
the properties are synchronous), on both backends (tests/fuzz/ is a contract suite), with a log
watcher that fails the test on any traceback or error the server logs.

Examples are bounded (`FUZZ_SETTINGS`) so the battery stays well under two minutes; under CI the
examples are derandomized, so a run that landed green stays green, and locally each run explores
new ones (a failure prints the seed that reproduces it).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, settings

from scoreboard.config import Config
from tests.browser.conftest import ServerThread
from tests.http.conftest import PASSWORD, issue_token

T = TypeVar("T")

FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    # A failing example is reported as found: shrinking a live server's answers costs minutes.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
REQUEST_TIMEOUT_S = 15  # no answer by then is a hang


class ServerLog(logging.Handler):
    """Every record the server logs with a traceback, or at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.problems.append(self.format(record))


@dataclass
class FuzzServer:
    thread: ServerThread
    user_id: int
    username: str
    token: str

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `function(*args)` on the server's trio loop (to look into its store)."""
        token = self.thread._token
        assert token is not None
        return trio.from_thread.run(function, *args, trio_token=token)

    @property
    def services(self) -> Any:
        assert self.thread.handle is not None
        return self.thread.handle.services


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    watcher = ServerLog()
    watcher.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(watcher)
    try:
        yield watcher
    finally:
        root.removeHandler(watcher)
    assert not watcher.problems, "the server logged:\n" + "\n\n".join(watcher.problems)


@pytest.fixture
def fuzz_config(config: Config) -> Config:
    """Limits off, so that generated requests reach the code behind them rather than 429."""
    return config.replace(limits={"enabled": False}, websocket={"auth_timeout_s": 2.0})


@pytest.fixture
def fuzz_server(fuzz_config: Config, server_log: ServerLog) -> Iterator[FuzzServer]:
    thread = ServerThread(fuzz_config).start()
    try:
        assert thread.handle is not None
        username = f"f{uuid.uuid4().hex[:10]}"
        response = httpx.post(
            f"{thread.url}/api/v1/users",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert response.status_code == 201, response.text
        user_id = response.json()["user_id"]
        yield FuzzServer(thread, user_id, username, issue_token(thread.handle, user_id))
    finally:
        thread.stop()
