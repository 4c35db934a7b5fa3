"""Keep-alive connections that send a request's head before its body, as real clients do: an
answer decided from the headers alone (401, 403, 404, 405, 413, 415, 400) must leave the
connection usable for the next request, or close it with `Connection: close`; a body that
trickles in is answered 408 and closed after `server.body_timeout_s`, not held."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player
from tests.http.raw_http import RawConnection, RawResponse

BODY_DELAY_S = 0.05
NEXT_ANSWER_TIMEOUT_S = 5
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def answer_then_healthz(
    server: ServerHandle, path: str, headers: dict[str, str], body: bytes, *, chunked: bool = False
) -> RawResponse:
    """The repro: head, the body 50 ms later, read the answer, then `GET /healthz` on the same
    socket, which must be answered unless the first answer said `Connection: close` (then the
    server must close the socket)."""
    assert server.url is not None
    connection = await RawConnection.open(server.url)
    try:
        if chunked:
            await connection.send_head("POST", path, {**headers, "Transfer-Encoding": "chunked"})
        else:
            await connection.send_head("POST", path, headers, len(body))
        await trio.sleep(BODY_DELAY_S)
        await connection.send_body(body)
        with trio.fail_after(NEXT_ANSWER_TIMEOUT_S):
            first = await connection.response()
            if first.closes:
                assert await connection.closed_by_server(), (path, first)
                return first
            healthz = await connection.request("GET", "/healthz")
        assert healthz.status == 200, (path, first, healthz)
        return first
    finally:
        await connection.aclose()


async def test_every_post_route_answers_the_next_request_after_an_early_answer(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    writer = await new_player(client, server)
    reader = await new_player(client, server, scope="read")
    payload = json.dumps(action()).encode()
    registration = b'{"username":"early","email":"early@example.com","password":"0123456789"}'
    cases = [
        # (path, headers, body, the status decided before the body is read)
        ("/api/v1/actions/perform", {**JSON, "Authorization": "Bearer a.b.c"}, payload, 401),
        ("/api/v1/actions/perform", {**JSON, **reader.auth}, payload, 403),
        ("/api/v1/actions/perform", {**TEXT, **writer.auth}, payload, 415),
        ("/api/v1/users", TEXT, registration, 415),
        ("/api/v1/oauth/token", TEXT, b"grant_type=refresh_token&refresh_token=x", 400),
        ("/api/v1/oauth/revoke", TEXT, b"token=x", 400),
        ("/api/v1/oauth/authorize", TEXT, b"username=a&password=b", 400),
        ("/api/v1/leaderboard", JSON, b"{}", 405),
        ("/healthz", FORM, b"a=b", 405),
        ("/api/v1/no-such-route", JSON, b"{}", 404),
    ]
    for path, headers, body, status in cases:
        answer = await answer_then_healthz(server, path, headers, body)
        assert answer.status == status, (path, answer)
    # The bodies read were not acted on: the action's nonce is still free.
    response = await client.post(
        "/api/v1/actions/perform", content=payload, headers={**JSON, **writer.auth}
    )
    assert response.status_code == 202, response.text


async def test_a_declared_oversized_body_is_refused_and_the_connection_closed(
    server: ServerHandle,
) -> None:
    oversized = b"{" + b" " * 5000 + b"}"
    for path in ("/api/v1/actions/perform", "/api/v1/users", "/api/v1/oauth/token"):
        for chunked in (False, True):
            answer = await answer_then_healthz(server, path, JSON, oversized, chunked=chunked)
            # The token endpoint words every bad body as RFC 6749's 400 invalid_request.
            assert answer.status in (400, 401, 413), (path, chunked, answer)
            assert answer.closes, (path, chunked, answer)


async def test_a_keep_alive_connection_serves_many_requests_with_split_bodies(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    assert server.url is not None
    connection = await RawConnection.open(server.url)
    try:
        for _ in range(5):
            body = json.dumps(action()).encode()
            await connection.send_head(
                "POST", "/api/v1/actions/perform", {**JSON, **player.auth}, len(body)
            )
            await trio.sleep(BODY_DELAY_S)
            await connection.send_body(body)
            with trio.fail_after(NEXT_ANSWER_TIMEOUT_S):
                answer = await connection.response()
            assert answer.status in (202, 429), answer
            assert not answer.closes, answer
    finally:
        await connection.aclose()


class TestSlowBodies:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"auth_timeout_s": 1.0}, server={"body_timeout_s": 0.5})

    async def test_a_trickled_body_is_answered_408_and_closed(self, server: ServerHandle) -> None:
        assert server.url is not None
        connection = await RawConnection.open(server.url)
        body = json.dumps(action()).encode()
        try:
            await connection.send_head("POST", "/api/v1/users", JSON, len(body))
            with trio.fail_after(NEXT_ANSWER_TIMEOUT_S):
                async with trio.open_nursery() as nursery:

                    async def trickle() -> None:
                        for byte in body[:-1]:
                            await connection.send_body(bytes([byte]), end=False)
                            await trio.sleep(0.1)

                    nursery.start_soon(trickle)
                    answer = await connection.response()
                    nursery.cancel_scope.cancel()
                assert answer.status == 408, answer
                assert answer.closes, answer
                assert json.loads(answer.body)["error"] == "request_timeout"
                assert await connection.closed_by_server()
        finally:
            await connection.aclose()

    async def test_a_head_without_its_body_is_answered_408_and_closed(
        self, server: ServerHandle
    ) -> None:
        assert server.url is not None
        connection = await RawConnection.open(server.url)
        try:
            await connection.send_head("POST", "/api/v1/actions/perform", JSON, 100)
            with trio.fail_after(NEXT_ANSWER_TIMEOUT_S):
                answer = await connection.response()
                assert answer.status == 408, answer
                assert answer.closes, answer
                assert await connection.closed_by_server()
        finally:
            await connection.aclose()
