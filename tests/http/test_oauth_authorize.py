"""The authorization endpoint (contract §1): exact redirect URIs, PKCE S256, the login form,
RFC 6749 §4.1.2.1 errors, and the login rate limits."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.http.conftest import PASSWORD, new_player
from tests.http.oauth_client import (
    GENEROUS_LIMITS,
    THIRD_PARTY_REDIRECT,
    hidden_fields,
    new_authorization,
    obtain_code,
    query_of,
    redeem,
    register_client,
    sign_in,
)

AUTHORIZE = "/api/v1/oauth/authorize"

REDIRECT_URI_MUTATIONS = {
    "trailing slash": "https://app.example.com/cb/",
    "host case": "https://APP.example.com/cb",
    "added query": "https://app.example.com/cb?next=1",
    "fragment": "https://app.example.com/cb#x",
    "good@evil": "https://app.example.com@evil.example/cb",
    "port": "https://app.example.com:8443/cb",
    "path prefix": "https://app.example.com/c",
    "path suffix": "https://app.example.com/cb/evil",
    "percent-encoding": "https://app.example.com/%63b",
    "http instead of https": "http://app.example.com/cb",
    "subdomain": "https://evil.app.example.com/cb",
    "look-alike host": "https://app.examp1e.com/cb",
}


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(websocket={"auth_timeout_s": 1.0}, oauth=GENEROUS_LIMITS)


async def test_twelve_redirect_uri_mutations_get_twelve_error_pages_and_no_redirect(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert len(REDIRECT_URI_MUTATIONS) == 12
    client_id, _secret = await register_client(server)
    exact = new_authorization(server, client_id, THIRD_PARTY_REDIRECT)
    assert (await client.get(AUTHORIZE, params=exact.params())).status_code == 200

    error_pages, redirects = 0, 0
    for mutated in REDIRECT_URI_MUTATIONS.values():
        response = await client.get(AUTHORIZE, params=exact.params(redirect_uri=mutated))
        if response.status_code == 400 and response.headers["Content-Type"].startswith("text/html"):
            error_pages += 1
        if "Location" in response.headers or 300 <= response.status_code < 400:
            redirects += 1
    assert (error_pages, redirects) == (12, 0)


async def test_an_unknown_client_gets_an_error_page_never_a_redirect(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    authorization = new_authorization(server, "no-such-client", THIRD_PARTY_REDIRECT)
    response = await client.get(AUTHORIZE, params=authorization.params())
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "invalid_client" in response.text


async def test_a_missing_redirect_uri_gets_an_error_page(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    authorization = new_authorization(server)
    response = await client.get(AUTHORIZE, params=authorization.params(redirect_uri=None))
    assert response.status_code == 400
    assert "Location" not in response.headers


async def test_errors_after_the_redirect_uri_is_verified_go_to_the_client_with_state(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    authorization = new_authorization(server)
    for overrides, error in (
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "superuser"}, "invalid_scope"),
    ):
        response = await client.get(AUTHORIZE, params=authorization.params(**overrides))
        assert response.status_code == 302, response.text
        query = query_of(response.headers["Location"])
        assert response.headers["Location"].startswith(authorization.redirect_uri + "?")
        assert query["error"] == error
        assert query["state"] == authorization.state
        assert "code" not in query


async def test_pkce_refusals_and_the_one_valid_s256(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    rejected: list[str] = []

    # At the authorization endpoint: the public client without a challenge, and `plain`.
    for name, overrides in (
        ("missing challenge", {"code_challenge": None, "code_challenge_method": None}),
        ("plain", {"code_challenge_method": "plain"}),
    ):
        authorization = new_authorization(server)
        response = await client.get(AUTHORIZE, params=authorization.params(**overrides))
        if response.status_code == 302:
            query = query_of(response.headers["Location"])
            if query.get("error") == "invalid_request" and "code" not in query:
                rejected.append(name)

    # At the token endpoint: the verifier must hash to the challenge, 43-128 unreserved chars.
    verifiers = {
        "wrong verifier": None,
        "42-char verifier": "a" * 42,
        "129-char verifier": "a" * 129,
        "bad characters": "a" * 42 + "+/=",
    }
    for name, verifier in verifiers.items():
        authorization = new_authorization(server)
        if verifier is not None:
            authorization.verifier = verifier
            authorization.challenge = pkce_challenge(verifier)
        code = await obtain_code(client, authorization, player.username)
        sent = verifier if verifier is not None else "b" * 64
        response = await redeem(client, authorization, code, code_verifier=sent)
        if response.status_code == 400 and response.json()["error"] in (
            "invalid_grant",
            "invalid_request",
        ):
            rejected.append(name)

    # A verifier sent for a code that had no challenge (a confidential client without PKCE).
    client_id, secret = await register_client(server)
    assert secret is not None
    no_pkce = new_authorization(server, client_id, THIRD_PARTY_REDIRECT, pkce=False)
    code = await obtain_code(client, no_pkce, player.username)
    response = await redeem(client, no_pkce, code, client_secret=secret, code_verifier="c" * 64)
    if response.status_code == 400 and response.json()["error"] == "invalid_request":
        rejected.append("verifier without challenge")

    valid = new_authorization(server)
    accepted = await redeem(client, valid, await obtain_code(client, valid, player.username))

    assert rejected == [
        "missing challenge",
        "plain",
        "wrong verifier",
        "42-char verifier",
        "129-char verifier",
        "bad characters",
        "verifier without challenge",
    ]
    assert accepted.status_code == 200, accepted.text


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def test_the_login_form_is_plain_escaped_html_bound_to_the_request(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    authorization = new_authorization(server)
    authorization.state = '"><script>alert(1)</script>'
    page = await client.get(AUTHORIZE, params=authorization.params())
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<script" not in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    fields = hidden_fields(page.text)
    assert fields["state"] == authorization.state
    assert fields["form_token"]


async def test_bad_credentials_show_the_form_again_with_an_error(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    authorization = new_authorization(server)
    response = await sign_in(client, authorization.params(), player.username, "wrong password!")
    assert response.status_code == 401
    assert "Location" not in response.headers
    assert "Wrong username or password" in response.text
    assert hidden_fields(response.text)["state"] == authorization.state


async def test_a_username_signs_in_in_any_case(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    for typed in (player.username.upper(), player.username.capitalize()):
        response = await sign_in(client, new_authorization(server).params(), typed)
        assert response.status_code == 302, response.text


async def test_a_tampered_or_unsigned_form_is_not_processed(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    authorization = new_authorization(server)
    page = await client.get(AUTHORIZE, params=authorization.params())
    fields = hidden_fields(page.text)
    other_state = {**fields, "state": "another-state"}
    unsigned = {key: value for key, value in fields.items() if key != "form_token"}
    for posted in (other_state, unsigned):
        response = await client.post(
            AUTHORIZE, data={**posted, "username": player.username, "password": "x" * 12}
        )
        assert response.status_code == 400
        assert "Location" not in response.headers
        assert "expired" in response.text


async def test_a_disabled_account_cannot_sign_in(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    await server.services.store.disable_user(player.username, 0)
    response = await sign_in(client, new_authorization(server).params(), player.username)
    assert response.status_code == 401


class TestLoginLimitPerAddress:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(oauth={"login_attempts_per_minute_per_ip": 3})

    async def test_the_fourth_attempt_from_one_address_is_refused(
        self, client: httpx.AsyncClient, server: ServerHandle
    ) -> None:
        params = new_authorization(server).params()
        statuses = [
            (await sign_in(client, params, f"nobody{n}", "wrong password!")).status_code
            for n in range(4)
        ]
        assert statuses == [401, 401, 401, 429]


class TestPlainHttpOrigin:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(public={"origin": "http://board.example"})

    async def test_oauth_refuses_a_public_origin_without_tls(
        self, client: httpx.AsyncClient, server: ServerHandle
    ) -> None:
        params = new_authorization(server).params()
        response = await client.get(AUTHORIZE, params=params)
        assert (response.status_code, response.json()["error"]) == (400, "insecure_transport")


async def deny(client: httpx.AsyncClient, params: dict[str, str], **extra: str) -> httpx.Response:
    """GET the authorize page, then press its Deny button (no username or password)."""
    form_page = await client.get(AUTHORIZE, params=params)
    assert form_page.status_code == 200, form_page.text
    assert 'name="decision" value="deny"' in form_page.text
    return await client.post(AUTHORIZE, data={**hidden_fields(form_page.text), **extra})


async def test_deny_sends_access_denied_and_the_state_back_to_the_client(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    client_id, _secret = await register_client(server)
    for authorization in (
        new_authorization(server),
        new_authorization(server, client_id, THIRD_PARTY_REDIRECT),
    ):
        response = await deny(client, authorization.params(), decision="deny")
        assert response.status_code == 302, response.text
        location = response.headers["Location"]
        assert location.startswith(authorization.redirect_uri + "?")
        query = query_of(location)
        assert (query["error"], query["state"]) == ("access_denied", authorization.state)
        assert "code" not in query
        assert response.headers["Cache-Control"] == "no-store"


async def test_deny_replayed_denies_again_and_issues_nothing(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    player = await new_player(client, server)
    authorization = new_authorization(server)
    form_page = await client.get(AUTHORIZE, params=authorization.params())
    fields = {**hidden_fields(form_page.text), "decision": "deny"}
    for _ in range(2):
        response = await client.post(AUTHORIZE, data=fields)
        assert query_of(response.headers["Location"])["error"] == "access_denied"
    # The same form still signs in: denying consumed nothing the user may need.
    signed_in = await client.post(
        AUTHORIZE,
        data={**hidden_fields(form_page.text), "username": player.username, "password": PASSWORD},
    )
    assert "code" in query_of(signed_in.headers["Location"])


async def test_a_deny_that_is_malformed_or_not_from_the_form_redirects_nowhere(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    authorization = new_authorization(server)
    form_page = await client.get(AUTHORIZE, params=authorization.params())
    fields = hidden_fields(form_page.text)
    # A deny without the form's token, or with parameters changed under it: a fresh form.
    for forged in (
        {**fields, "form_token": "forged", "decision": "deny"},
        {**fields, "state": "another", "decision": "deny"},
    ):
        response = await client.post(AUTHORIZE, data=forged)
        assert response.status_code == 400
        assert "Location" not in response.headers
        assert "expired" in response.text
    # A redirect URI that is not the client's: an error page, never a redirect.
    response = await client.post(
        AUTHORIZE,
        data={**fields, "redirect_uri": "https://evil.example/cb", "decision": "deny"},
    )
    assert (response.status_code, "Location" in response.headers) == (400, False)
    # Any other decision is a sign-in, which needs a password.
    for decision in ("DENY", "deny ", "x" * 3000):
        response = await client.post(AUTHORIZE, data={**fields, "decision": decision})
        assert response.status_code == 401
        assert "Location" not in response.headers
