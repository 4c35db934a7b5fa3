"""A third-party-style OAuth client for the tests: PKCE, the login form, the token endpoint."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import httpx

from scoreboard.auth.clients import new_client
from scoreboard.server import ServerHandle
from tests.http.conftest import PASSWORD

WEB_CLIENT = "scoreboard-web"
HIDDEN_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
# Limits high enough for batteries that sign in a hundred times from one address.
GENEROUS_LIMITS = {
    "login_attempts_per_minute_per_ip": 100_000,
    "login_failures_before_delay": 100_000,
    "token_requests_per_minute_per_ip": 100_000,
    "token_requests_per_minute_per_client": 100_000,
}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)  # 64 characters of the unreserved set
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def web_redirect_uri(server: ServerHandle) -> str:
    assert server.services is not None
    return f"{server.services.public_origin}/callback"


def hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in HIDDEN_FIELD.findall(page)}


def query_of(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


@dataclass
class Authorization:
    client_id: str
    redirect_uri: str
    verifier: str | None
    challenge: str | None
    state: str

    def params(self, **overrides: str | None) -> dict[str, str]:
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "read write",
            "state": self.state,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256" if self.challenge else None,
        }
        params.update(overrides)
        return {key: value for key, value in params.items() if value is not None}


def new_authorization(
    server: ServerHandle,
    client_id: str = WEB_CLIENT,
    redirect_uri: str | None = None,
    *,
    pkce: bool = True,
) -> Authorization:
    verifier, challenge = pkce_pair() if pkce else (None, None)
    return Authorization(
        client_id=client_id,
        redirect_uri=redirect_uri or web_redirect_uri(server),
        verifier=verifier,
        challenge=challenge,
        state=secrets.token_urlsafe(16),
    )


async def sign_in(
    client: httpx.AsyncClient,
    params: dict[str, str],
    username: str,
    password: str = PASSWORD,
) -> httpx.Response:
    """GET the authorize page, then post its login form as a browser would."""
    form_page = await client.get("/api/v1/oauth/authorize", params=params)
    assert form_page.status_code == 200, form_page.text
    fields = hidden_fields(form_page.text)
    return await client.post(
        "/api/v1/oauth/authorize", data={**fields, "username": username, "password": password}
    )


async def obtain_code(
    client: httpx.AsyncClient,
    authorization: Authorization,
    username: str,
    password: str = PASSWORD,
) -> str:
    response = await sign_in(client, authorization.params(), username, password)
    assert response.status_code == 302, response.text
    query = query_of(response.headers["Location"])
    assert query["state"] == authorization.state
    return query["code"]


async def redeem(
    client: httpx.AsyncClient,
    authorization: Authorization,
    code: str,
    **extra: str,
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": authorization.redirect_uri,
        "client_id": authorization.client_id,
    }
    if authorization.verifier is not None:
        data["code_verifier"] = authorization.verifier
    data.update(extra)
    return await client.post("/api/v1/oauth/token", data=data)


async def refresh(
    client: httpx.AsyncClient, refresh_token: str, client_id: str = WEB_CLIENT
) -> httpx.Response:
    return await client.post(
        "/api/v1/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
    )


async def sign_in_tokens(
    client: httpx.AsyncClient, server: ServerHandle, username: str
) -> dict[str, str]:
    """The whole flow for the web client: a token response."""
    authorization = new_authorization(server)
    code = await obtain_code(client, authorization, username)
    response = await redeem(client, authorization, code)
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


THIRD_PARTY_REDIRECT = "https://app.example.com/cb"


async def register_client(
    server: ServerHandle,
    client_type: Literal["public", "confidential"] = "confidential",
    redirect_uris: tuple[str, ...] = (THIRD_PARTY_REDIRECT,),
) -> tuple[str, str | None]:
    """A client the operator registered (what `scoreboard clients add` does): id and secret."""
    assert server.services is not None
    record, secret = new_client(f"app-{uuid.uuid4().hex[:10]}", client_type, list(redirect_uris))
    await server.services.store.add_client(record)
    return record.client_id, secret
