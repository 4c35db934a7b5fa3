"""Input an attacker writes: JSON nested a thousand levels deep, login-form tokens with digits
that are not ASCII, strings with control, format and surrogate characters. Each is a clear 4xx
(or an `error` / rejected `action_result` frame on the WebSocket), never a 500 or a traceback in
the server's log, and a refused input stores nothing."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player
from tests.http.oauth_client import hidden_fields, new_authorization
from tests.http.test_ws_api import authenticate, connect, of_type, receive_until

PERFORM = "/api/v1/actions/perform"
JSON = {"Content-Type": "application/json"}
DEEP = 1500  # levels: about 3 KiB, under the 4 KiB cap
# NUL, an unpaired surrogate, a right-to-left override, a zero-width space, an escape, and
# C1's next-line: each is refused in action_data strings.
HOSTILE_STRINGS = ("t\u0000", "t\ud800", "\u202eevil", "t\u200b", "t\u001b[31m", "t\u0085")


def deeply_nested(opening: str = "[", closing: str = "]", depth: int = DEEP) -> bytes:
    return (opening * depth + closing * depth).encode()


def ascii_json(value: object) -> bytes:
    """JSON with every non-ASCII character escaped: how an unpaired surrogate travels."""
    return json.dumps(value, ensure_ascii=True).encode()


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_deeply_nested_json_is_400_on_every_json_endpoint(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    player = await new_player(client, server)
    nested_action = (
        b'{"action_type":"complete_task","nonce":"n-12345678","action_data":{"task_id":'
        + deeply_nested()
        + b"}}"
    )
    for body in (deeply_nested(), deeply_nested('{"a":', "}", 600), nested_action):
        assert len(body) <= 4096
        response = await client.post(PERFORM, content=body, headers={**JSON, **player.auth})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        response = await client.post("/api/v1/users", content=body, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        response = await client.post("/api/v1/oauth/token", content=body, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        response = await client.post("/api/v1/oauth/revoke", content=body, headers=JSON)
        assert response.status_code == 400, response.text
    assert_no_tracebacks(caplog)


async def test_deeply_nested_frames_get_an_error_frame_and_the_socket_stays(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await socket.send_message(deeply_nested().decode())
        error = await receive_until(socket, of_type("error"))
        assert error["error"] == "invalid_message", error
        await authenticate(socket, player)
        for frame in (deeply_nested(), deeply_nested('{"type":"action","a":', "}", 150)):
            await socket.send_message(frame.decode())
            error = await receive_until(socket, of_type("error"))
            assert error["error"] == "invalid_message", error
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 1}))
        assert (await receive_until(socket, of_type("pong")))["timestamp"] == 1
    assert_no_tracebacks(caplog)


async def test_a_login_form_token_with_a_superscript_digit_is_400_not_500(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    page = await client.get("/api/v1/oauth/authorize", params=new_authorization(server).params())
    fields = hidden_fields(page.text)
    kid, _expires, mac = fields["form_token"].split(".")
    for expires in ("\u00b2", "1\u00b9", "\u0663\u0663"):  # ², ¹, Arabic-Indic three
        response = await client.post(
            "/api/v1/oauth/authorize",
            data={
                **fields,
                "form_token": f"{kid}.{expires}.{mac}",
                "username": "someone",
                "password": "x" * 12,
            },
        )
        assert response.status_code == 400, response.text
        assert "expired" in response.text
    assert_no_tracebacks(caplog)


async def test_control_format_and_surrogate_characters_in_action_data_are_400(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    player = await new_player(client, server)
    nonce = "hostile-nonce-1"
    for text in HOSTILE_STRINGS:
        body = ascii_json(action(nonce, task_id=text))
        response = await client.post(PERFORM, content=body, headers={**JSON, **player.auth})
        assert response.status_code == 400, (text, response.text)
        assert response.json()["error"] == "invalid_request"
    # The same in a field of another type, and as an unpaired surrogate in a key.
    body = ascii_json(action(nonce, "win_match", opponent_id="o\u2066-1"))
    response = await client.post(PERFORM, content=body, headers={**JSON, **player.auth})
    assert response.status_code == 400, response.text
    body = ascii_json({**action(nonce), "\udfff": 1})
    response = await client.post(PERFORM, content=body, headers={**JSON, **player.auth})
    assert response.status_code == 400, response.text
    # Ordinary non-ASCII text is fine, and nothing of the above was stored: the nonce is free.
    response = await client.post(
        PERFORM,
        content=ascii_json(action(nonce, task_id="tâche-17 😀")),
        headers={**JSON, **player.auth},
    )
    assert response.status_code == 202, response.text
    assert "Idempotent-Replayed" not in response.headers
    assert_no_tracebacks(caplog)


async def test_control_characters_over_the_websocket_are_a_rejected_action_result(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    player = await new_player(client, server)
    nonce = "hostile-nonce-2"
    async with connect(server) as socket:
        await authenticate(socket, player)
        for text in HOSTILE_STRINGS:
            frame = {"type": "action", **action(nonce, task_id=text)}
            await socket.send_message(ascii_json(frame).decode())
            result = await receive_until(socket, of_type("action_result"))
            assert result["data"]["status"] == "rejected", (text, result)
            assert result["data"]["error"] == "invalid_request", (text, result)
            assert result["data"]["action_id"] is None
        await socket.send_message(json.dumps({"type": "action", **action(nonce)}))
        result = await receive_until(socket, of_type("action_result"))
        assert result["data"]["status"] == "accepted", result
        assert "replayed" not in result["data"], result
    assert_no_tracebacks(caplog)


async def test_oauth_parameters_outside_rfc_6749s_grammar_are_400_not_500(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Authlib repeats response_type, grant_type and redirect_uri in its error descriptions,
    # where a non-ASCII character, a quote or a backslash made it raise (a 500).
    params = new_authorization(server).params()
    for name, value in (
        ("response_type", "\u00b3code"),
        ("response_type", 'co"de'),
        ("redirect_uri", 'https://app.example/"cb'),
        ("client_id", "scoreboard-web\u000e"),
        ("state", "caf\u00e9"),
    ):
        response = await client.get("/api/v1/oauth/authorize", params={**params, name: value})
        assert response.status_code == 400, (name, value, response.text)
        assert response.json()["error"] == "invalid_request"
    for grant_type in ("\u00e9", 'authorization_code"', "refresh_token\\"):
        response = await client.post(
            "/api/v1/oauth/token", data={"grant_type": grant_type, "client_id": "scoreboard-web"}
        )
        assert response.status_code == 400, (grant_type, response.text)
        assert response.json()["error"] == "invalid_request"
    assert_no_tracebacks(caplog)


async def test_an_unknown_token_type_hint_is_ignored(client: httpx.AsyncClient) -> None:
    # RFC 7009 §2.1: "An invalid token type hint value is ignored".
    response = await client.post(
        "/api/v1/oauth/revoke", data={"token": "whatever", "token_type_hint": "bogus"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"revoked": True}


async def test_an_empty_binary_frame_gets_an_error_frame_and_the_socket_stays(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    player = await new_player(client, server)
    async with connect(server) as socket:
        await authenticate(socket, player)
        await socket.send_message(b"")
        error = await receive_until(socket, of_type("error"))
        assert error["error"] == "invalid_message", error
        await socket.send_message(json.dumps({"type": "ping", "timestamp": 2}))
        assert (await receive_until(socket, of_type("pong")))["timestamp"] == 2
    assert_no_tracebacks(caplog)


async def test_a_sign_in_with_nul_in_the_username_is_401_not_500(
    server: ServerHandle, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL's text cannot hold NUL: the lookup itself used to fail.
    page = await client.get("/api/v1/oauth/authorize", params=new_authorization(server).params())
    fields = hidden_fields(page.text)
    response = await client.post(
        "/api/v1/oauth/authorize",
        data={**fields, "username": "some\x00one", "password": "x" * 12},
    )
    assert response.status_code == 401, response.text
    assert "Wrong username or password" in response.text
    assert_no_tracebacks(caplog)
