"""Browser tests: the real server in a thread, the machine's Chromium driven by Playwright.

How it fits together (the simplest arrangement that stays robust):

- The tests are plain synchronous pytest tests. Playwright's sync API runs in the test's own
  thread (it brings its own event loop), and the server runs `run_server` under its own
  `trio.run` in a background thread (`ServerThread`). The two only meet over real sockets; the
  test reaches into the server's loop with `trio.from_thread` to stop it.
- Chromium is Debian's `chromium` package at /usr/bin/chromium, never Playwright's download.
  A missing one is installed with apt-get; if that fails the suite fails, in CI too.
- Every page opened through `Browsing.new_page` records console errors and uncaught exceptions;
  the fixture's teardown fails the test if there were any. The only exception is a connection
  refused by a server a test deliberately stopped (`Browsing.allow_refused_connections`).
- The server listens on an explicit free port, so a test can stop it and start it again on the
  same address with the same backends (the page's origin must not change).
- The browser suite runs on the embedded backends (SQLite, in-process broker and board): the
  page knows only the wire contract, which the contract suites check on both kinds of backends.
  One Chromium serves the whole package. (Playwright's sync API leaves an asyncio loop marked
  as running in the test thread while it is open, so the real backends' fixtures, which call
  `asyncio.run`, could not run beside it; `browser` is package-scoped so that it is closed
  before any later test directory's fixtures run.)
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    sync_playwright,
)

from scoreboard.config import Config
from scoreboard.server import ServerHandle, run_server
from tests.http.conftest import PASSWORD as PASSWORD
from tests.http.conftest import issue_token

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


# --- Chromium and Playwright ---------------------------------------------------------------


def _install_chromium() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The machine's Chromium; installed from Debian if missing, a failure if it cannot be."""
    if not CHROMIUM.exists():
        _install_chromium()
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return str(CHROMIUM)


@pytest.fixture(scope="package")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


REFUSED = re.compile(r"net::ERR_CONNECTION_REFUSED")


@dataclass
class Browsing:
    """The browser contexts of one test, and what their pages said on the console."""

    browser: Browser
    origin: str = ""
    contexts: list[BrowserContext] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    allow_refused: bool = False
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def new_page(self, viewport: ViewportSize | None = None) -> Page:
        """A page in a context of its own (its own sessionStorage: its own user)."""
        context = self.browser.new_context(viewport=viewport or DESKTOP)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        return page

    def allow_refused_connections(self) -> None:
        """From now on, a connection to our origin refused (the server is down on purpose) is
        expected: Chromium logs each failed WebSocket or fetch attempt as a console error."""
        self.allow_refused = True

    def allow_console_errors(self, pattern: re.Pattern[str]) -> None:
        """Console errors matching `pattern` are expected (a test that refuses requests on
        purpose: Chromium logs each answer of 400 or more)."""
        self.allowed.append(pattern)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error" or any(p.search(message.text) for p in self.allowed):
            return
        text = f"console.error: {message.text} ({message.location.get('url', '')})"
        if self.allow_refused and self._refused_by_our_server(message):
            self.refused.append(text)
        else:
            self.errors.append(text)

    def _refused_by_our_server(self, message: ConsoleMessage) -> bool:
        if not REFUSED.search(message.text):
            return False
        socket_origin = self.origin.replace("http://", "ws://", 1)
        ours = (f"'{socket_origin}/api/v1/ws'", f"'{self.origin}/")
        return any(o in message.text for o in ours) or message.location.get("url", "").startswith(
            self.origin
        )

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browsing(browser: Browser, server: ServerThread) -> Iterator[Browsing]:
    """Torn down before the server stops, so no page sees the end of the server."""
    session = Browsing(browser, origin=server.url)
    yield session
    session.close()
    assert session.errors == [], "the browser console reported errors:\n" + "\n".join(
        session.errors
    )


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerThread:
    """`run_server` under its own `trio.run` in a background thread, stoppable and restartable."""

    def __init__(self, config: Config):
        self.config = config
        self.handle: ServerHandle | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        if self.handle is not None and self.handle.url is not None:
            return self.handle.url  # the bound address, also on port 0
        return self.config.public_origin

    def start(self) -> ServerThread:
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._run, name="scoreboard-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            pytest.fail(f"the server did not start within {START_TIMEOUT_S} s")
        if self._failure is not None:
            raise RuntimeError("the server failed to start") from self._failure
        return self

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the test thread by start() and stop()
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.handle = await nursery.start(run_server, self.config)
            self._ready.set()
            await self._stop.wait()
            await self.handle.supervisor.shutdown()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            pytest.fail(f"the server did not stop within {STOP_TIMEOUT_S} s")
        self._thread = None
        if self._failure is not None:
            raise RuntimeError("the server failed") from self._failure

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def backend_mode() -> str:
    """Overrides the root conftest's: the browser suite runs on the embedded backends."""
    return "embedded"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server_config(**sections): settings of the browser test's server, as Config.replace",
    )


@pytest.fixture
def page_config(config: Config, request: pytest.FixtureRequest) -> Config:
    """The test configuration on a fixed free port, plus the test's `server_config` marker."""
    # A stopping server waits this long for open WebSockets before closing them.
    configured = config.replace(server={"port": free_port(), "shutdown_grace_s": 1.0})
    marker = request.node.get_closest_marker("server_config")
    return configured.replace(**marker.kwargs) if marker else configured


@pytest.fixture
def server(page_config: Config) -> Iterator[ServerThread]:
    running = ServerThread(page_config).start()
    try:
        yield running
    finally:
        running.stop()


# --- players ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Player:
    user_id: int
    username: str
    password: str = PASSWORD


def register(server: ServerThread, username: str | None = None) -> Player:
    username = username or f"p{uuid.uuid4().hex[:10]}"
    response = httpx.post(
        f"{server.url}/api/v1/users",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return Player(response.json()["user_id"], username)


@pytest.fixture
def player(server: ServerThread) -> Player:
    return register(server)


def token_for(server: ServerThread, player: Player, ttl_s: int | None = None) -> str:
    assert server.handle is not None
    return issue_token(server.handle, player.user_id, ttl_s=ttl_s)


def perform(server: ServerThread, player: Player, action_type: str, **data: Any) -> dict[str, Any]:
    """An action over HTTP, waiting for its outcome (`Prefer: wait`)."""
    from tests.http.conftest import action

    response = httpx.post(
        f"{server.url}/api/v1/actions/perform",
        json=action(action_type=action_type, **data),
        headers={"Authorization": f"Bearer {token_for(server, player)}", "Prefer": "wait=10"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


SETTLED = """() => [...document.querySelectorAll('[data-value]')]
    .every(el => el.textContent.replace(/\\D/g, '') === el.dataset.value)"""


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG under tests/artifacts/, once every score has finished counting up."""
    page.wait_for_function(SETTLED, timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path
