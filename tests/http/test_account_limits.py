"""Limits on the account endpoints that one address cannot turn against everyone else: the token
endpoint (a flood from one address leaves other users' refreshes alone), sign-in (failures slow
down their own (username, address) pair and lock out nobody), and registration (limited per
address and in all, without taking the sign-ins' hashing capacity).

A second client address is 127.0.0.2: all of 127.0.0.0/8 is loopback on Linux, and the server
(on 127.0.0.1) sees it as the peer's address."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from scoreboard.adapters.interfaces import FailureDelay
from scoreboard.config import Config
from scoreboard.http.oauth import sign_in_failures_key
from scoreboard.server import ServerHandle
from tests.http.conftest import PASSWORD, new_player
from tests.http.oauth_client import (
    new_authorization,
    refresh,
    register_client,
    sign_in,
    sign_in_tokens,
)

TOKEN = "/api/v1/oauth/token"
REVOKE = "/api/v1/oauth/revoke"
OTHER_ADDRESS = "127.0.0.2"
GARBAGE_REQUESTS = 600
GARBAGE_AT_ONCE = 8


@pytest.fixture
async def elsewhere(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    """A client that connects from another address than `client`."""
    assert server.url is not None
    transport = httpx.AsyncHTTPTransport(local_address=OTHER_ADDRESS)
    async with httpx.AsyncClient(base_url=server.url, transport=transport, timeout=30) as http:
        yield http


async def garbage_token_requests(client: httpx.AsyncClient, count: int) -> list[int]:
    """`count` refreshes with made-up tokens as the web client, a few at a time."""
    statuses: list[int] = []
    limiter = trio.CapacityLimiter(GARBAGE_AT_ONCE)

    async def one() -> None:
        async with limiter:
            statuses.append((await refresh(client, uuid.uuid4().hex)).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return statuses


# -- the token endpoint


async def test_a_flood_from_one_address_leaves_other_users_refreshes_alone(
    client: httpx.AsyncClient, elsewhere: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(elsewhere, server)
    tokens = await sign_in_tokens(elsewhere, server, player.username)

    assert server.services is not None
    per_address = server.services.config.oauth.token_requests_per_minute_per_ip
    statuses = await garbage_token_requests(client, GARBAGE_REQUESTS)
    assert set(statuses) == {400, 429}
    assert statuses.count(429) >= GARBAGE_REQUESTS - per_address

    refreshed = await refresh(elsewhere, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    revoked = await elsewhere.post(
        REVOKE,
        data={
            "token": refreshed.json()["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": "scoreboard-web",
        },
    )
    assert revoked.status_code == 200, revoked.text
    # The flooding address itself is held back, with the wait it must honour.
    limited = await refresh(client, uuid.uuid4().hex)
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


class TestConfidentialClientsHaveTheirOwnLimit:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(oauth={"token_requests_per_minute_per_ip": 3})

    async def test_an_authenticated_client_is_not_held_back_by_its_address(
        self, client: httpx.AsyncClient, server: ServerHandle
    ) -> None:
        client_id, secret = await register_client(server)
        assert secret is not None
        # A wrong secret authenticates nothing: those requests count against the address.
        wrong = {
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": client_id,
            "client_secret": "not the secret",
        }
        statuses = [(await client.post(TOKEN, data=wrong)).status_code for _ in range(5)]
        assert statuses == [400, 400, 400, 429, 429]

        for _ in range(5):
            right = await client.post(
                TOKEN,
                data={"grant_type": "refresh_token", "refresh_token": "x"},
                auth=(client_id, secret),
            )
            assert (right.status_code, right.json()["error"]) == (400, "invalid_grant")
        # The web client from that address is still held back.
        assert (await refresh(client, "x")).status_code == 429


async def test_basic_credentials_that_are_not_utf8_are_invalid_client(
    client: httpx.AsyncClient,
) -> None:
    header = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:secret").decode()}
    for path in (TOKEN, REVOKE):
        response = await client.post(
            path,
            data={"grant_type": "refresh_token", "refresh_token": "x", "token": "x"},
            headers=header,
        )
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
        assert response.headers["WWW-Authenticate"].startswith("Basic")


# -- sign-in


async def test_an_attackers_failures_do_not_stop_the_owner_signing_in_elsewhere(
    client: httpx.AsyncClient, elsewhere: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    oauth = server.services.config.oauth
    owner = await new_player(elsewhere, server)
    params = new_authorization(server).params()
    statuses: list[int] = []
    # The waits double after each failure, so the attacker is soon told to wait, however
    # slowly this machine answers; the address's own limit is never reached.
    while 429 not in statuses:
        assert len(statuses) < oauth.login_attempts_per_minute_per_ip - 1
        response = await sign_in(client, params, owner.username, "wrong password!")
        statuses.append(response.status_code)
    free = oauth.login_failures_before_delay
    assert statuses[:free] == [401] * free
    assert 1 <= int(response.headers["Retry-After"]) <= oauth.login_failure_delay_max_s

    signed_in = await sign_in(elsewhere, new_authorization(server).params(), owner.username)
    assert signed_in.status_code == 302, signed_in.text


async def test_during_the_delay_not_even_the_right_password_is_checked(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    oauth = server.services.config.oauth
    player = await new_player(client, server)
    # As after a long run of failures from this address (the delay is at its maximum).
    delay = FailureDelay(
        oauth.login_failures_before_delay,
        oauth.login_failure_delay_max_s * 1000,
        oauth.login_failures_forgotten_after_s * 1000,
    )
    offsets = [0]  # failures as far apart as the delay allows, the last one now
    for failures in range(1, oauth.login_failures_before_delay + 10):
        offsets.append(offsets[-1] + delay.wait_ms(failures, offsets[-1], offsets[-1]))
    start_ms = time.time_ns() // 1_000_000 - offsets[-1]
    key = sign_in_failures_key("127.0.0.1", player.username)
    for offset in offsets:
        admitted = await server.services.guard.admit_after_failures(
            key, now_ms=start_ms + offset, delay=delay
        )
        assert admitted == 0
    for username in (player.username, player.username.upper()):
        delayed = await sign_in(client, new_authorization(server).params(), username)
        assert delayed.status_code == 429, "a sign-in during the delay is refused unchecked"
        assert int(delayed.headers["Retry-After"]) >= oauth.login_failure_delay_max_s // 2
        assert "Location" not in delayed.headers


async def test_right_passwords_are_never_counted_as_failures(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    oauth = server.services.config.oauth
    player = await new_player(client, server)
    params = new_authorization(server).params()
    for _ in range(oauth.login_attempts_per_minute_per_ip - 1):
        assert (await sign_in(client, params, player.username)).status_code == 302


async def test_a_successful_sign_in_clears_the_pairs_failures(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    free = server.services.config.oauth.login_failures_before_delay
    player = await new_player(client, server)
    params = new_authorization(server).params()
    for _ in range(2):
        for _ in range(free - 1):
            assert (await sign_in(client, params, player.username, "wrong!")).status_code == 401
        assert (await sign_in(client, params, player.username)).status_code == 302


# -- registration


def registration(username: str | None = None) -> dict[str, str]:
    username = username or f"r{uuid.uuid4().hex[:12]}"
    return {"username": username, "email": f"{username}@example.com", "password": PASSWORD}


class TestRegistrationLimits:
    PER_ADDRESS = 5
    FLOOD = 20

    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(limits={"registrations_per_minute_per_ip": self.PER_ADDRESS})

    async def test_a_flood_from_one_address_gets_429_while_sign_ins_go_on(
        self, client: httpx.AsyncClient, elsewhere: httpx.AsyncClient, server: ServerHandle
    ) -> None:
        player = await new_player(elsewhere, server)
        flood: list[httpx.Response] = []
        sign_ins: list[int] = []

        async def register_one() -> None:
            flood.append(await client.post("/api/v1/users", json=registration()))

        async def sign_in_meanwhile() -> None:
            for _ in range(3):
                response = await sign_in(
                    elsewhere, new_authorization(server).params(), player.username
                )
                sign_ins.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(self.FLOOD):
                nursery.start_soon(register_one)
            nursery.start_soon(sign_in_meanwhile)

        assert sign_ins == [302, 302, 302]
        statuses = sorted(response.status_code for response in flood)
        assert statuses == [201] * self.PER_ADDRESS + [429] * (self.FLOOD - self.PER_ADDRESS)
        for refused in (r for r in flood if r.status_code == 429):
            assert refused.json()["error"] == "rate_limit_exceeded"
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # Another address may still register: the limit is the flooding address's.
        assert (await elsewhere.post("/api/v1/users", json=registration())).status_code == 201


class TestRegistrationsInAll:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(limits={"registrations_per_minute": 3})

    async def test_registrations_from_every_address_share_the_overall_limit(
        self, client: httpx.AsyncClient, elsewhere: httpx.AsyncClient
    ) -> None:
        statuses = [
            (await http.post("/api/v1/users", json=registration())).status_code
            for http in (client, elsewhere, client, elsewhere)
        ]
        assert statuses == [201, 201, 201, 429]
