"""The token and revocation endpoints (contract §1): single-use codes with reuse revoking what
they issued, rotating refresh tokens with family revocation reaching open WebSockets, the
RFC 6749 §5.2 errors, client authentication, JSON bodies and the rate limit."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import Player, new_player
from tests.http.oauth_client import (
    GENEROUS_LIMITS,
    THIRD_PARTY_REDIRECT,
    Authorization,
    new_authorization,
    obtain_code,
    redeem,
    refresh,
    register_client,
    sign_in_tokens,
)

TOKEN = "/api/v1/oauth/token"
CODES = 100
CONCURRENT_CODES = 20


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(websocket={"auth_timeout_s": 1.0}, oauth=GENEROUS_LIMITS)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def api_status(client: httpx.AsyncClient, access_token: str) -> int:
    return (await client.get("/api/v1/oauth/userinfo", headers=bearer(access_token))).status_code


async def codes_for(
    client: httpx.AsyncClient, server: ServerHandle, player: Player, count: int
) -> list[tuple[Authorization, str]]:
    """`count` codes, signed in for a few at a time (each sign-in runs argon2)."""
    codes: list[tuple[Authorization, str]] = []
    limiter = trio.CapacityLimiter(4)

    async def one() -> None:
        async with limiter:
            authorization = new_authorization(server)
            codes.append((authorization, await obtain_code(client, authorization, player.username)))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return codes


async def test_a_hundred_codes_each_redeemed_once_and_reuse_revokes_what_they_issued(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    codes = await codes_for(client, server, player, CODES)
    first = [await redeem(client, authorization, code) for authorization, code in codes]
    assert [r.status_code for r in first] == [200] * CODES
    tokens = [r.json() for r in first]
    assert [await api_status(client, t["access_token"]) for t in tokens[:3]] == [200] * 3

    second = [await redeem(client, authorization, code) for authorization, code in codes]
    assert [(r.status_code, r.json()["error"]) for r in second] == [(400, "invalid_grant")] * CODES

    access_refused = [await api_status(client, t["access_token"]) for t in tokens]
    assert access_refused == [401] * CODES
    refresh_refused = [(await refresh(client, t["refresh_token"])).json() for t in tokens]
    assert [body.get("error") for body in refresh_refused] == ["invalid_grant"] * CODES


async def test_twenty_concurrent_double_redemptions_have_exactly_one_winner_each(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    codes = await codes_for(client, server, player, CONCURRENT_CODES)
    outcomes: dict[int, list[httpx.Response]] = {n: [] for n in range(CONCURRENT_CODES)}

    async def redeem_into(n: int, authorization: Authorization, code: str) -> None:
        outcomes[n].append(await redeem(client, authorization, code))

    async with trio.open_nursery() as nursery:
        for n, (authorization, code) in enumerate(codes):
            nursery.start_soon(redeem_into, n, authorization, code)
            nursery.start_soon(redeem_into, n, authorization, code)

    winners = []
    for pair in outcomes.values():
        statuses = sorted(response.status_code for response in pair)
        assert statuses == [200, 400]
        loser = next(response for response in pair if response.status_code == 400)
        assert loser.json()["error"] == "invalid_grant"
        winners.append(next(response for response in pair if response.status_code == 200).json())
    assert len(winners) == CONCURRENT_CODES
    assert [await api_status(client, t["access_token"]) for t in winners] == [401] * 20
    # A winner whose grant was revoked while it was being answered gets no refresh token.
    refreshed = [
        (await refresh(client, t["refresh_token"])).status_code
        for t in winners
        if "refresh_token" in t
    ]
    assert set(refreshed) <= {400}


class TestCodeExpiry:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(oauth={**GENEROUS_LIMITS, "code_ttl_s": 1})

    async def test_a_code_redeemed_after_it_expired_is_invalid_grant(
        self, client: httpx.AsyncClient, server: ServerHandle
    ) -> None:
        player = await new_player(client, server)
        authorization = new_authorization(server)
        code = await obtain_code(client, authorization, player.username)
        await trio.sleep(1.2)
        response = await redeem(client, authorization, code)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_code_lifetime_is_capped_at_sixty_seconds() -> None:
    from scoreboard.http.oauth_server import MAX_CODE_TTL_S

    assert MAX_CODE_TTL_S == 60


def ws_url(server: ServerHandle) -> str:
    assert server.url is not None
    return server.url.replace("http://", "ws://") + "/api/v1/ws"


def origin(server: ServerHandle) -> list[tuple[bytes, bytes]]:
    assert server.services is not None
    return [(b"Origin", server.services.public_origin.encode())]


async def authenticated(ws: WebSocketConnection, access_token: str) -> None:
    await ws.send_message(json.dumps({"type": "auth", "token": access_token}))
    assert json.loads(await ws.get_message())["type"] == "auth_ok"


async def closed_with(ws: WebSocketConnection) -> tuple[dict[str, object], int]:
    """The error frame the server sent last, and the close code."""
    with trio.fail_after(2):
        while (frame := json.loads(await ws.get_message()))["type"] != "error":
            pass
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason is not None
    return frame, closed.value.reason.code


async def test_replaying_a_rotated_refresh_token_kills_the_family_also_on_an_open_websocket(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    first = await sign_in_tokens(client, server, player.username)
    second = (await refresh(client, first["refresh_token"])).json()
    newest = (await refresh(client, second["refresh_token"])).json()
    assert len({first["refresh_token"], second["refresh_token"], newest["refresh_token"]}) == 3
    assert await api_status(client, newest["access_token"]) == 200

    async with open_websocket_url(ws_url(server), extra_headers=origin(server)) as ws:
        await authenticated(ws, newest["access_token"])
        replay = await refresh(client, first["refresh_token"])
        assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
        assert await closed_with(ws) == ({"type": "error", "error": "token_revoked"}, 4401)

    assert (await refresh(client, newest["refresh_token"])).json()["error"] == "invalid_grant"
    assert [await api_status(client, t["access_token"]) for t in (first, second, newest)] == [
        401,
        401,
        401,
    ]


async def test_revoking_an_access_token_closes_its_websocket_and_spares_the_grant(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    tokens = await sign_in_tokens(client, server, player.username)
    async with open_websocket_url(ws_url(server), extra_headers=origin(server)) as ws:
        await authenticated(ws, tokens["access_token"])
        response = await client.post(
            "/api/v1/oauth/revoke",
            json={"token": tokens["access_token"], "token_type_hint": "access_token"},
        )
        assert response.json() == {"revoked": True}
        assert await closed_with(ws) == ({"type": "error", "error": "token_revoked"}, 4401)
    assert await api_status(client, tokens["access_token"]) == 401
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_revoking_an_unknown_token_answers_revoked(client: httpx.AsyncClient) -> None:
    for token in ("not-a-token", "a.b.c"):
        response = await client.post("/api/v1/oauth/revoke", data={"token": token})
        assert (response.status_code, response.json()) == (200, {"revoked": True})


async def test_json_bodies_are_accepted_as_the_proposal_shows(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    authorization = new_authorization(server)
    code = await obtain_code(client, authorization, player.username)
    issued = await client.post(
        TOKEN,
        json={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": authorization.redirect_uri,
            "client_id": authorization.client_id,
            "code_verifier": authorization.verifier,
        },
    )
    assert issued.status_code == 200, issued.text
    refreshed = await client.post(
        TOKEN,
        json={
            "grant_type": "refresh_token",
            "refresh_token": issued.json()["refresh_token"],
            "client_id": authorization.client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["Cache-Control"] == "no-store"
    assert refreshed.headers["Pragma"] == "no-cache"


def basic(client_id: str, secret: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


async def test_a_confidential_client_authenticates_by_basic_or_post(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    client_id, secret = await register_client(server)
    assert secret is not None
    for how in ("basic", "post"):
        authorization = new_authorization(server, client_id, THIRD_PARTY_REDIRECT)
        code = await obtain_code(client, authorization, player.username)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": THIRD_PARTY_REDIRECT,
            "code_verifier": authorization.verifier or "",
        }
        if how == "basic":
            response = await client.post(TOKEN, data=data, headers=basic(client_id, secret))
        else:
            data |= {"client_id": client_id, "client_secret": secret}
            response = await client.post(TOKEN, data=data)
        assert response.status_code == 200, (how, response.text)
    # Without its secret, as if it were public, it is refused.
    authorization = new_authorization(server, client_id, THIRD_PARTY_REDIRECT)
    code = await obtain_code(client, authorization, player.username)
    response = await redeem(client, authorization, code)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client")


async def test_token_endpoint_errors(client: httpx.AsyncClient, server: ServerHandle) -> None:
    player = await new_player(client, server)
    client_id, secret = await register_client(server)
    assert secret is not None

    async def error_of(response: httpx.Response) -> tuple[int, str]:
        assert response.headers["Cache-Control"] == "no-store"
        return response.status_code, response.json()["error"]

    for grant_type in ("password", "client_credentials", "implicit", "urn:x"):
        response = await client.post(
            TOKEN, data={"grant_type": grant_type, "client_id": "scoreboard-web"}
        )
        assert await error_of(response) == (400, "unsupported_grant_type")

    unknown = await client.post(
        TOKEN, data={"grant_type": "authorization_code", "code": "x", "client_id": "nope"}
    )
    assert await error_of(unknown) == (400, "invalid_client")
    unknown_basic = await client.post(
        TOKEN, data={"grant_type": "authorization_code", "code": "x"}, headers=basic("nope", "s")
    )
    assert await error_of(unknown_basic) == (401, "invalid_client")
    assert unknown_basic.headers["WWW-Authenticate"].startswith("Basic")

    wrong_basic = await client.post(
        TOKEN,
        data={"grant_type": "authorization_code", "code": "x"},
        headers=basic(client_id, secret + "x"),
    )
    assert await error_of(wrong_basic) == (401, "invalid_client")
    assert wrong_basic.headers["WWW-Authenticate"].startswith("Basic")
    wrong_post = await client.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "code": "x",
            "client_id": client_id,
            "client_secret": secret + "x",
        },
    )
    assert await error_of(wrong_post) == (400, "invalid_client")
    assert "WWW-Authenticate" not in wrong_post.headers

    missing = {
        "grant_type": {"client_id": "scoreboard-web", "code": "x"},
        "code": {"grant_type": "authorization_code", "client_id": "scoreboard-web"},
        "refresh_token": {"grant_type": "refresh_token", "client_id": "scoreboard-web"},
    }
    for data in missing.values():
        assert await error_of(await client.post(TOKEN, data=data)) == (400, "invalid_request")
    assert await error_of(
        await client.post(TOKEN, content=b"x", headers={"Content-Type": "text/plain"})
    ) == (400, "invalid_request")

    authorization = new_authorization(server)
    code = await obtain_code(client, authorization, player.username)
    wrong_redirect = await redeem(
        client, authorization, code, redirect_uri=authorization.redirect_uri + "/other"
    )
    assert await error_of(wrong_redirect) == (400, "invalid_grant")


class TestTokenRateLimit:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(oauth={"token_requests_per_minute_per_ip": 3})

    async def test_the_fourth_request_in_a_minute_is_refused(
        self, client: httpx.AsyncClient
    ) -> None:
        data = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "scoreboard-web"}
        statuses = [(await client.post(TOKEN, data=data)).status_code for _ in range(4)]
        assert statuses == [400, 400, 400, 429]
        limited = await client.post(TOKEN, data=data)
        assert limited.json()["error"] == "rate_limit_exceeded"
        assert int(limited.headers["Retry-After"]) >= 1
