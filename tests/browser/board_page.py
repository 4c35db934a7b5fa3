"""What the tests do with the scoreboard page: sign in, read the board, watch the socket."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Page, WebSocket

from tests.browser.conftest import Player, ServerThread, token_for

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


def sign_in_with_token(
    page: Page, server: ServerThread, player: Player, ttl_s: int | None = None
) -> None:
    """Puts an access token (made by the server's key ring) where the page keeps its tokens."""
    lifetime_ms = (ttl_s or 900) * 1000
    tokens = json.dumps(
        {
            "access_token": token_for(server, player, ttl_s),
            "refresh_token": None,
            "lifetime_ms": lifetime_ms,
        }
    )
    page.add_init_script(
        "if (!sessionStorage.getItem('scoreboard.tokens')) {"
        f" const tokens = {tokens}; tokens.expires_at = Date.now() + tokens.lifetime_ms;"
        " sessionStorage.setItem('scoreboard.tokens', JSON.stringify(tokens)); }"
    )
    page.goto(server.url + "/")
    wait_live(page)


def wait_live(page: Page) -> None:
    page.wait_for_function(
        "() => document.getElementById('connection').dataset.state === 'live'", timeout=WAIT_MS
    )


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
        "fragment => document.getElementById('action-status').textContent.includes(fragment)",
        arg=fragment,
        timeout=WAIT_MS,
    )
    return action_status(page)
