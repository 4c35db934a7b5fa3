"""`GET /api/v1/ws` against the real server (contract §4): the handshake's Origin check, the auth
exchange and its timeout, re-auth, expiry, frame limits, ping, actions over the socket, and the
pushes (`score_update`, `leaderboard_update`, `action_result`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import Player, action, issue_token, new_player
from tests.prometheus import sample, total

Frame = dict[str, Any]
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
RECEIVE_TIMEOUT_S = 10


def ws_url(server: ServerHandle, query: str = "") -> str:
    assert server.url is not None
    return server.url.replace("http://", "ws://", 1) + "/api/v1/ws" + query


@asynccontextmanager
async def connect(
    server: ServerHandle, *, origin: str | None = None, query: str = ""
) -> AsyncIterator[WebSocketConnection]:
    assert server.url is not None
    headers = [(b"Origin", (origin if origin is not None else server.url).encode())]
    async with open_websocket_url(
        ws_url(server, query), extra_headers=headers, disconnect_timeout=5
    ) as socket:
        yield socket


async def receive(socket: WebSocketConnection) -> Frame:
    with trio.fail_after(RECEIVE_TIMEOUT_S):
        message = await socket.get_message()
    frame: Frame = json.loads(message)
    return frame


async def receive_until(socket: WebSocketConnection, wanted: Callable[[Frame], bool]) -> Frame:
    """The next frame `wanted` accepts, skipping others (leaderboard updates come any time)."""
    with trio.fail_after(RECEIVE_TIMEOUT_S):
        while True:
            frame = await receive(socket)
            if wanted(frame):
                return frame


def of_type(kind: str) -> Callable[[Frame], bool]:
    return lambda frame: frame["type"] == kind


def not_leaderboard(frame: Frame) -> bool:
    return bool(frame["type"] != "leaderboard_update")


async def closed_with(socket: WebSocketConnection, code: int) -> list[Frame]:
    """Read until the server closes; assert the close code; the frames read before it."""
    frames: list[Frame] = []
    reason: CloseReason | None = None
    with trio.fail_after(RECEIVE_TIMEOUT_S):
        while reason is None:
            try:
                frames.append(json.loads(await socket.get_message()))
            except ConnectionClosed as closed:
                reason = closed.reason
    assert reason.code == code, (reason, frames)
    return frames


async def authenticate(socket: WebSocketConnection, player: Player) -> Frame:
    """Send auth; assert auth_ok and the leaderboard that follows at once; the auth_ok data."""
    await socket.send_message(json.dumps({"type": "auth", "token": player.token}))
    ok = await receive(socket)
    assert ok["type"] == "auth_ok", ok
    assert ok["data"]["user_id"] == player.user_id
    assert ok["data"]["username"] == player.username
    expires_at = ok["data"]["expires_at"]
    assert RFC3339.match(expires_at), ok
    board = await receive(socket)
    assert board["type"] == "leaderboard_update", board
    assert set(board["data"]) == {"leaderboard", "timestamp"}, board
    assert isinstance(board["data"]["leaderboard"], list)
    assert RFC3339.match(board["data"]["timestamp"]), board
    data: Frame = ok["data"]
    return data


def action_frame(**kwargs: Any) -> str:
    return json.dumps({"type": "action", **action(**kwargs)})


# The handshake


async def test_a_foreign_origin_is_rejected_with_403(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    assert server.url is not None
    for origin in ("https://evil.example", "null", "", server.url + "/", "http://localhost:1"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with connect(server, origin=origin):
                pytest.fail(f"the handshake with Origin {origin!r} was accepted")
        assert rejected.value.status_code == 403, origin
    # No Origin header at all.
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(ws_url(server)):
            pytest.fail("the handshake without Origin was accepted")
    assert rejected.value.status_code == 403


async def test_a_token_in_the_url_is_rejected(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    for query in (f"?access_token={player.token}", f"?token={player.token}"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with connect(server, query=query):
                pytest.fail("a token in the URL was accepted")
        assert rejected.value.status_code == 401


# Authentication


async def test_no_auth_within_the_timeout_closes_1008(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    started = trio.current_time()
    async with connect(server) as socket:
        frames = await closed_with(socket, 1008)
    waited = trio.current_time() - started
    assert 0.9 <= waited < 5, waited  # the tests' auth timeout is 1 s
    assert [f["type"] for f in frames] == ["error"]


async def test_a_first_message_other_than_auth_closes_1008(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    async with connect(server) as socket:
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 1}))
        frames = await closed_with(socket, 1008)
    assert [f["type"] for f in frames] == ["error"]


async def test_a_bad_token_is_invalid_token_then_4401(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    head, payload, signature = player.token.split(".")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    expired = issue_token(server, player.user_id, ttl_s=-120)
    for token in ("garbage", "", f"{head}.{payload}.{flipped}", expired, None, 17):
        async with connect(server) as socket:
            await socket.send_message(json.dumps({"type": "auth", "token": token}))
            frames = await closed_with(socket, 4401)
        assert frames == [{"type": "error", "error": "invalid_token"}], (token, frames)


async def test_auth_ok_then_at_once_the_leaderboard(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        data = await authenticate(socket, player)
        assert set(data) == {"user_id", "username", "expires_at"}
        expires_at = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
        assert abs(expires_at.timestamp() - (time.time() + 900)) < 60


async def test_ping_is_answered_with_pong_and_garbage_with_an_error(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 1764500000123}))
        pong = await receive_until(socket, not_leaderboard)
        assert pong == {"type": "pong", "timestamp": 1764500000123}
        await socket.send_message("not json")
        error = await receive_until(socket, not_leaderboard)
        assert error["type"] == "error"
        assert error["error"] == "invalid_message"
        await socket.send_message(json.dumps({"type": "subscribe"}))
        error = await receive_until(socket, not_leaderboard)
        assert error["type"] == "error"
        assert error["error"] == "unknown_type"
        # The connection is still usable.
        await socket.send_message(json.dumps({"type": "ping", "timestamp": "t"}))
        assert await receive_until(socket, not_leaderboard) == {"type": "pong", "timestamp": "t"}


async def test_a_frame_over_4_kib_closes_1009(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        padding = "x" * 4096
        await socket.send_message(json.dumps({"type": "ping", "timestamp": padding}))
        await closed_with(socket, 1009)
    # Before auth too.
    async with connect(server) as socket:
        await socket.send_message("x" * 5000)
        await closed_with(socket, 1009)


async def test_reauth_with_the_same_users_fresh_token_keeps_the_connection(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        first = await authenticate(socket, player)
        fresh = issue_token(server, player.user_id)
        await socket.send_message(json.dumps({"type": "auth", "token": fresh}))
        ok = await receive_until(socket, not_leaderboard)
        assert ok["type"] == "auth_ok", ok
        assert ok["data"]["user_id"] == player.user_id
        assert ok["data"]["username"] == player.username
        assert ok["data"]["expires_at"] >= first["expires_at"]
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 2}))
        assert await receive_until(socket, not_leaderboard) == {"type": "pong", "timestamp": 2}


async def test_reauth_with_another_users_token_is_sub_mismatch_then_4403(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    other = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        await socket.send_message(json.dumps({"type": "auth", "token": other.token}))
        frames = await closed_with(socket, 4403)
    assert [f for f in frames if not_leaderboard(f)] == [{"type": "error", "error": "sub_mismatch"}]


async def test_reauth_with_a_bad_token_is_invalid_token_then_4401(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        await socket.send_message(json.dumps({"type": "auth", "token": "garbage"}))
        frames = await closed_with(socket, 4401)
    assert [f for f in frames if not_leaderboard(f)] == [
        {"type": "error", "error": "invalid_token"}
    ]


async def test_at_exp_without_a_new_token_the_socket_closes_4401(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    short = Player(player.user_id, player.username, issue_token(server, player.user_id, ttl_s=2))
    async with connect(server) as socket:
        data = await authenticate(socket, short)
        exp = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00")).timestamp()
        frames = await closed_with(socket, 4401)
        closed_at = time.time()
    assert [f for f in frames if not_leaderboard(f)] == [
        {"type": "error", "error": "token_expired"}
    ]
    # At exp, not at exp plus the verifier's leeway.
    assert exp - 0.5 <= closed_at < exp + 5, (exp, closed_at)


async def test_a_fresh_token_before_exp_keeps_the_socket_open(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    short = Player(player.user_id, player.username, issue_token(server, player.user_id, ttl_s=2))
    async with connect(server) as socket:
        await authenticate(socket, short)
        await socket.send_message(json.dumps({"type": "auth", "token": player.token}))
        assert (await receive_until(socket, not_leaderboard))["type"] == "auth_ok"
        # Past the first token's exp: still open.
        await trio.sleep(3)  # not synchronisation: the time that must pass without a close
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 3}))
        assert await receive_until(socket, not_leaderboard) == {"type": "pong", "timestamp": 3}


# Actions over the socket, and pushes


async def test_an_action_over_the_socket_is_accepted_then_completed(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        body = action()
        await socket.send_message(json.dumps({"type": "action", **body}))
        accepted = await receive_until(socket, of_type("action_result"))
        action_id = accepted["data"]["action_id"]
        assert re.fullmatch(r"[0-9a-f-]{36}", action_id)
        assert accepted["data"] == {
            "action_id": action_id,
            "nonce": body["nonce"],
            "status": "accepted",
            "score_delta": None,
            "new_score": None,
            "error": None,
        }
        # The outcome and the score update, in whichever order they come.
        pushed: dict[str, Frame] = {}
        with trio.fail_after(RECEIVE_TIMEOUT_S):
            while len(pushed) < 2:
                frame = await receive_until(socket, not_leaderboard)
                assert frame["type"] in ("action_result", "score_update"), frame
                assert frame["type"] not in pushed, (frame, pushed)
                pushed[frame["type"]] = frame
        completed = pushed["action_result"]
        assert completed["data"] == {
            "action_id": action_id,
            "nonce": body["nonce"],
            "status": "completed",
            "score_delta": 10,
            "new_score": 10,
            "error": None,
        }
        update = pushed["score_update"]
        assert update["data"] == {
            "user_id": player.user_id,
            "username": player.username,
            "old_score": 0,
            "new_score": 10,
            "rank": 1,
            "rank_change": update["data"]["rank_change"],
        }
        assert isinstance(update["data"]["rank_change"], int)
        # The same action is visible over HTTP as the user's own.
        response = await client.get(f"/api/v1/actions/{action_id}", headers=player.auth)
        assert response.status_code == 200
        assert response.json()["status"] == "completed"
        # A replay of the nonce over the socket answers the first action, no second effect.
        await socket.send_message(json.dumps({"type": "action", **body}))
        replay = await receive_until(socket, of_type("action_result"))
        assert replay["data"]["action_id"] == action_id
        assert replay["data"]["status"] == "completed"
        assert replay["data"]["new_score"] == 10


async def test_an_http_action_is_reported_on_the_socket(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        body = action(action_type="win_match")
        response = await client.post("/api/v1/actions/perform", json=body, headers=player.auth)
        assert response.status_code == 202, response.text
        result = await receive_until(socket, of_type("action_result"))
        assert result["data"]["action_id"] == response.json()["action_id"]
        assert result["data"]["nonce"] == body["nonce"]
        assert result["data"]["status"] == "completed"
        assert result["data"]["score_delta"] == 25
        assert result["data"]["new_score"] == 25


async def test_an_invalid_action_over_the_socket_is_one_rejected_result(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        invalid: list[dict[str, Any]] = [
            {**action(), "score": 1000},
            {**action(), "nonce": "short"},
            {**action(), "action_type": "hack"},
            {**action(), "action_data": {"task_id": 1}},
            {k: v for k, v in action().items() if k != "action_data"},
        ]
        for body in invalid:
            await socket.send_message(json.dumps({"type": "action", **body}))
            result = await receive_until(socket, not_leaderboard)
            assert result["type"] == "action_result", result
            data = result["data"]
            assert data["status"] == "rejected", result
            assert data["error"] == "invalid_request", result
            assert data["action_id"] is None
            assert data["nonce"] == (body["nonce"] if isinstance(body.get("nonce"), str) else None)
            assert data["score_delta"] == 0
            assert data["new_score"] is None
        # Exactly one result each: the next frame answers a ping, not a second result.
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 4}))
        assert await receive_until(socket, not_leaderboard) == {"type": "pong", "timestamp": 4}
        # The cooldown over the socket is the same 429 error code as HTTP.
        await socket.send_message(action_frame())
        assert (await receive_until(socket, of_type("action_result")))["data"]["status"] == (
            "accepted"
        )
        await socket.send_message(action_frame())
        limited = await receive_until(
            socket, lambda f: f["type"] == "action_result" and f["data"]["status"] == "rejected"
        )
        assert limited["data"]["error"] == "rate_limit_exceeded"
        assert 1 <= limited["data"]["retry_after"] <= 5


async def test_a_read_only_token_cannot_act_over_the_socket(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server, scope="read")
    async with connect(server) as socket:
        await authenticate(socket, player)
        await socket.send_message(action_frame())
        result = await receive_until(socket, not_leaderboard)
        assert result["type"] == "action_result"
        assert result["data"]["status"] == "rejected"
        assert result["data"]["error"] == "insufficient_scope"


async def test_others_get_the_leaderboard_update_and_only_the_actor_its_score_update(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    actor = await new_player(client, server)
    watcher = await new_player(client, server)
    async with connect(server) as actor_socket, connect(server) as watcher_socket:
        await authenticate(actor_socket, actor)
        await authenticate(watcher_socket, watcher)
        response = await client.post(
            "/api/v1/actions/perform",
            json=action(),
            headers={**actor.auth, "Prefer": "wait=10"},
        )
        assert response.status_code == 200, response.text
        update = await receive_until(
            watcher_socket,
            lambda f: f["type"] == "leaderboard_update" and bool(f["data"]["leaderboard"]),
        )
        assert update["data"]["leaderboard"] == [
            {"rank": 1, "user_id": actor.user_id, "username": actor.username, "score": 10}
        ]
        assert RFC3339.match(update["data"]["timestamp"])
        own = await receive_until(actor_socket, of_type("score_update"))
        assert own["data"]["user_id"] == actor.user_id
        assert own["data"]["new_score"] == 10
        # The watcher gets no score_update and no action_result of someone else: the next
        # personal frame it gets answers its own ping.
        await watcher_socket.send_message(json.dumps({"type": "ping", "timestamp": 5}))
        assert await receive_until(watcher_socket, not_leaderboard) == {
            "type": "pong",
            "timestamp": 5,
        }


class TestConnectionCaps:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"auth_timeout_s": 1.0, "max_connections_per_user": 1})

    async def test_a_user_over_the_cap_is_closed_and_a_closed_socket_frees_its_place(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        player = await new_player(client, server)
        async with connect(server) as first:
            await authenticate(first, player)
            async with connect(server) as second:
                await second.send_message(json.dumps({"type": "auth", "token": player.token}))
                frames = await closed_with(second, 1008)
            assert [f["type"] for f in frames] == ["error"]
            assert frames[0]["error"] == "too_many_connections"
        # The first one closed: its place is free again (the server notices the close soon).
        with trio.fail_after(10):
            while True:
                async with connect(server) as third:
                    await third.send_message(json.dumps({"type": "auth", "token": player.token}))
                    frame = await receive(third)
                    if frame["type"] == "auth_ok":
                        break
                await trio.sleep(0.05)


class TestConnectionsPerIp:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"auth_timeout_s": 1.0, "max_connections_per_ip": 1})

    async def test_an_address_over_the_cap_is_rejected_with_429(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        player = await new_player(client, server)
        assert server.ops_url is not None
        async with httpx.AsyncClient(base_url=server.ops_url) as ops:
            before = (await ops.get("/metrics")).text
            async with connect(server) as first:
                await authenticate(first, player)
                with pytest.raises(ConnectionRejected) as rejected:
                    async with connect(server):
                        pytest.fail("a second connection from the address was accepted")
                assert rejected.value.status_code == 429
                metrics = (await ops.get("/metrics")).text
        assert sample(metrics, "scoreboard_websocket_connections") == 1
        limit = {"limit": "websocket_connections_per_ip"}
        assert total(metrics, "scoreboard_rate_limited_total", **limit) == 1 + total(
            before, "scoreboard_rate_limited_total", **limit
        )
        # auth_ok and the first leaderboard, at least, went out.
        frames_sent = "scoreboard_websocket_frames_sent_total"
        assert total(metrics, frames_sent) >= total(before, frames_sent) + 2
