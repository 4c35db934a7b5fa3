"""What the tests do with the scoreboard page: sign in, read the board, watch the socket."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Page, WebSocket

from tests.browser.conftest import Player, ServerThread

WAIT_MS = 15_000

BOARD_ROWS = """rows => rows.map(row => ({
    user_id: Number(row.dataset.userId),
    rank: Number(row.cells[0].textContent),
    username: row.querySelector('.username').textContent,
    score: Number(row.cells[2].dataset.value),
    me: row.classList.contains('me'),
}))"""


@dataclass
class Sockets:
    """The page's WebSockets and the `auth` frames it sent on each."""

    opened: list[WebSocket] = field(default_factory=list)
    auth_frames: list[tuple[int, str]] = field(default_factory=list)  # (socket index, token)

    def watch(self, page: Page) -> Sockets:
        page.on("websocket", self._opened)
        return self

    def _opened(self, socket: WebSocket) -> None:
        index = len(self.opened)
        self.opened.append(socket)
        socket.on("framesent", lambda payload: self._sent(index, payload))

    def _sent(self, index: int, payload: str | bytes) -> None:
        frame = json.loads(payload)
        if frame.get("type") == "auth":
            self.auth_frames.append((index, frame["token"]))


def wait_state(page: Page, state: str) -> None:
    """Until the connection indicator says `state` (live, reconnecting, public, …)."""
    page.wait_for_function(
        "state => document.getElementById('connection')?.dataset.state === state",
        arg=state,
        timeout=WAIT_MS,
    )


def wait_live(page: Page) -> None:
    wait_state(page, "live")


def board(page: Page) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.eval_on_selector_all("#board tbody tr", BOARD_ROWS)
    return rows


def wait_for_row(
    page: Page, player: Player, *, rank: int, score: int, timeout: int = WAIT_MS
) -> None:
    """Until the page shows `player` at `rank` with `score` (the target, not the count-up)."""
    page.wait_for_function(
        """([id, rank, score]) => {
            const row = document.querySelector(`#board tbody tr[data-user-id="${id}"]`);
            return row !== null && row.cells[0].textContent === String(rank)
                && row.cells[2].dataset.value === String(score);
        }""",
        arg=[player.user_id, rank, score],
        timeout=timeout,
    )


def click_action(page: Page, action_type: str) -> None:
    page.click(f"#action-buttons button[data-action-type='{action_type}']")


def action_status(page: Page) -> str:
    return page.inner_text("#action-status")


def wait_for_status(page: Page, fragment: str) -> str:
    page.wait_for_function(
        "fragment => document.getElementById('action-status')?.textContent.includes(fragment)",
        arg=fragment,
        timeout=WAIT_MS,
    )
    return action_status(page)


def log_in(page: Page, server: ServerThread, player: Player) -> None:
    """The real thing: the page's Log in button, the authorization server's form, /callback."""
    page.goto(server.url + "/")
    page.click("#login")
    fill_login_form(page, player)
    wait_live(page)


def fill_login_form(page: Page, player: Player) -> None:
    page.wait_for_url(re.compile(r"/api/v1/oauth/authorize\?"))
    page.fill("input[name=username]", player.username)
    page.fill("input[name=password]", player.password)
    page.click("form button[type=submit]:not([name=decision])")


def stored_tokens(page: Page) -> dict[str, Any]:
    tokens: dict[str, Any] = page.evaluate(
        "() => JSON.parse(sessionStorage.getItem('scoreboard.tokens'))"
    )
    return tokens


def wait_for_new_access_token(page: Page, old: str, timeout: int = WAIT_MS) -> str:
    page.wait_for_function(
        """old => {
            const tokens = JSON.parse(sessionStorage.getItem('scoreboard.tokens'));
            return tokens !== null && tokens.access_token !== old;
        }""",
        arg=old,
        timeout=timeout,
    )
    token: str = stored_tokens(page)["access_token"]
    return token
