"""Logging in as the public client `scoreboard-web` (authorization code + PKCE), refreshing
the access token on the open WebSocket, and logging out (the refresh token is revoked)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Request, Route

from tests.browser.board_page import (
    Sockets,
    board,
    click_action,
    fill_login_form,
    log_in,
    stored_tokens,
    wait_for_new_access_token,
    wait_for_row,
    wait_for_status,
    wait_live,
    wait_state,
)
from tests.browser.conftest import PASSWORD, Browsing, Player, ServerThread

SHORT_TTL_S = 5
# Chromium logs every answer of 400 or more as a console error: these the test itself made.
REFUSED_BY_THE_TEST = re.compile(r"status of (400|429|503) \(")


def test_register_then_log_in_through_the_login_form_and_the_board_shows_the_user(
    server: ServerThread, browsing: Browsing
) -> None:
    page = browsing.new_page()
    page.goto(server.url + "/")
    username = "ada_" + page.evaluate("() => crypto.randomUUID().slice(0, 8)")
    page.fill("#signup-form input[name=username]", username)
    page.fill("#signup-form input[name=email]", f"{username}@example.com")
    page.fill("#signup-form input[name=password]", PASSWORD)
    page.click("#signup-form button[type=submit]")

    fill_login_form(page, Player(0, username))
    wait_live(page)
    assert page.url == server.url + "/"  # the code and state are gone from the address bar
    assert page.inner_text("#whoami") == f"Signed in as {username}"
    page.wait_for_selector("#me", state="visible")  # "Not ranked yet", from /leaderboard/me
    assert page.is_hidden("#signup")
    tokens = stored_tokens(page)
    assert tokens["access_token"]
    assert tokens["refresh_token"]
    assert page.evaluate("() => localStorage.length") == 0
    assert page.context.cookies() == []

    click_action(page, "complete_task")
    wait_for_status(page, "+10 points")
    page.wait_for_function(
        "name => document.querySelector('#board tbody tr.me .username')?.textContent === name",
        arg=username,
    )
    rows = board(page)
    assert [(r["username"], r["rank"], r["score"], r["me"]) for r in rows] == [
        (username, 1, 10, True)
    ]
    page.wait_for_function("() => document.getElementById('me-rank')?.dataset.rank === '1'")


def test_deny_on_the_login_form_brings_the_page_back_saying_sign_in_was_cancelled(
    server: ServerThread, browsing: Browsing
) -> None:
    page = browsing.new_page()
    page.goto(server.url + "/")
    page.click("#login")
    page.wait_for_url(re.compile(r"/api/v1/oauth/authorize\?"))
    page.click("form button[name=decision][value=deny]")  # nothing typed: Deny needs nothing
    page.wait_for_function(
        "() => document.getElementById('notice')?.textContent.includes('Sign-in cancelled')"
    )
    assert page.url == server.url + "/"  # the error and state are gone from the address bar
    assert page.is_visible("#notice")
    assert page.is_visible("#login")
    assert page.evaluate("() => sessionStorage.length") == 0  # no tokens, no login under way


@pytest.mark.server_config(auth={"access_token_ttl_s": SHORT_TTL_S})
def test_the_page_refreshes_its_token_before_expiry_and_reauthenticates_the_same_socket(
    server: ServerThread, browsing: Browsing, player: Player
) -> None:
    page = browsing.new_page()
    sockets = Sockets().watch(page)
    log_in(page, server, player)
    first = stored_tokens(page)
    assert first["lifetime_ms"] == SHORT_TTL_S * 1000

    # Two lifetimes: the socket would have been closed at the first token's `exp`.
    second = wait_for_new_access_token(page, first["access_token"])
    third = wait_for_new_access_token(page, second)
    assert stored_tokens(page)["refresh_token"] not in (None, first["refresh_token"])  # rotated
    wait_live(page)
    click_action(page, "complete_task")
    wait_for_status(page, "+10 points")
    wait_for_row(page, player, rank=1, score=10)

    assert len(sockets.opened) == 1, "the page reconnected instead of re-authenticating"
    sent = [token for socket, token in sockets.auth_frames if socket == 0]
    assert sent[:3] == [first["access_token"], second, third]


def test_logging_out_revokes_the_refresh_token(
    server: ServerThread, browsing: Browsing, player: Player
) -> None:
    page = browsing.new_page()
    log_in(page, server, player)
    refresh_token = stored_tokens(page)["refresh_token"]

    page.click("#logout")
    page.wait_for_function(
        "() => document.getElementById('notice')?.textContent === 'You are logged out.'"
    )
    assert page.evaluate("() => sessionStorage.getItem('scoreboard.tokens')") is None
    assert page.is_visible("#login")
    assert page.is_hidden("#actions")
    wait_state(page, "public")
    refused = httpx.post(
        f"{server.url}/api/v1/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": "scoreboard-web",
        },
        timeout=30,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


def test_a_reloaded_tab_stays_logged_in_and_renews_a_due_token_before_connecting(
    server: ServerThread, browsing: Browsing, player: Player
) -> None:
    page = browsing.new_page()
    log_in(page, server, player)
    old = stored_tokens(page)["access_token"]
    # As if the tab had been away for most of the token's lifetime.
    page.evaluate(
        """() => {
            const tokens = JSON.parse(sessionStorage.getItem('scoreboard.tokens'));
            tokens.expires_at = Date.now() + 1000;
            sessionStorage.setItem('scoreboard.tokens', JSON.stringify(tokens));
        }"""
    )
    sockets = Sockets().watch(page)
    page.reload()
    wait_live(page)

    assert page.inner_text("#whoami") == f"Signed in as {player.username}"
    assert len(sockets.opened) == 1
    assert stored_tokens(page)["access_token"] != old
    assert sockets.auth_frames[0] == (0, stored_tokens(page)["access_token"])


def refuse_first(
    refusals: list[tuple[int, str]], grant_type: str | None = None
) -> Callable[[Route, Request], None]:
    """A route handler that answers the first requests with these (status, error) and a
    one-second Retry-After, then lets requests through to the server."""

    def handle(route: Route, request: Request) -> None:
        if refusals and (
            grant_type is None or f"grant_type={grant_type}" in (request.post_data or "")
        ):
            status, error = refusals.pop(0)
            route.fulfill(
                status=status,
                headers={"Retry-After": "1", "Cache-Control": "no-store"},
                content_type="application/json",
                body=json.dumps({"error": error, "error_description": "not now"}),
            )
        else:
            route.continue_()

    return handle


@pytest.mark.server_config(auth={"access_token_ttl_s": SHORT_TTL_S})
def test_a_rate_limited_or_failing_refresh_is_retried_and_the_session_goes_on(
    server: ServerThread, browsing: Browsing, player: Player
) -> None:
    page = browsing.new_page()
    browsing.allow_console_errors(REFUSED_BY_THE_TEST)
    refusals = [(429, "rate_limit_exceeded"), (503, "temporarily_unavailable")]
    page.route("**/api/v1/oauth/token", refuse_first(refusals, "refresh_token"))
    log_in(page, server, player)
    first = stored_tokens(page)

    # Each refusal asked for a second: the page waits that long and asks again, and the
    # socket closed at the old token's expiry comes back with the new token.
    wait_for_new_access_token(page, first["access_token"], timeout=SHORT_TTL_S * 4 * 1000)
    assert refusals == []
    wait_live(page)
    assert page.inner_text("#whoami") == f"Signed in as {player.username}"
    assert stored_tokens(page)["refresh_token"] != first["refresh_token"]


@pytest.mark.server_config(auth={"access_token_ttl_s": SHORT_TTL_S})
def test_a_refused_refresh_token_ends_the_session(
    server: ServerThread, browsing: Browsing, player: Player
) -> None:
    page = browsing.new_page()
    browsing.allow_console_errors(REFUSED_BY_THE_TEST)
    page.route("**/api/v1/oauth/token", refuse_first([(400, "invalid_grant")], "refresh_token"))
    log_in(page, server, player)

    page.wait_for_function(
        "() => document.getElementById('notice')?.textContent"
        " === 'Your session has ended. Please log in again.'",
        timeout=SHORT_TTL_S * 4 * 1000,
    )
    wait_state(page, "public")
    assert page.evaluate("() => sessionStorage.getItem('scoreboard.tokens')") is None


def test_logging_out_tells_the_server_again_when_it_asks_to_wait(
    server: ServerThread, browsing: Browsing, player: Player
) -> None:
    page = browsing.new_page()
    browsing.allow_console_errors(REFUSED_BY_THE_TEST)
    log_in(page, server, player)
    refresh_token = stored_tokens(page)["refresh_token"]
    refusals = [(429, "rate_limit_exceeded"), (503, "temporarily_unavailable")]
    page.route("**/api/v1/oauth/revoke", refuse_first(refusals))

    page.click("#logout")
    wait_state(page, "public")
    page.wait_for_function(
        "() => document.getElementById('notice')?.textContent === 'You are logged out.'"
    )
    assert refusals == []
    refused = httpx.post(
        f"{server.url}/api/v1/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": "scoreboard-web",
        },
        timeout=30,
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
