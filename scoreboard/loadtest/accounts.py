"""The load test's players: registered through the API and signed in the way the bundled web page
does it (authorization code with PKCE S256 as the public client `scoreboard-web`, through the
server's own login form), then kept signed in with rotating refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from scoreboard.loadtest.http11 import HttpConnection, Response

WEB_CLIENT = "scoreboard-web"
SCOPE = "read write"
REFRESH_AT_FRACTION = 0.75  # of a token's lifetime, as the web page does
INPUT_TAG = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
ATTRIBUTE = re.compile(r'([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*"([^"]*)"')


class SetupError(Exception):
    """The server refused to create or sign in a load-test user; the message says why."""


@dataclass
class Account:
    """One player: its name, id, current tokens, and when to refresh them (time.monotonic())."""

    index: int
    username: str
    user_id: int = 0
    access_token: str = ""
    refresh_token: str = ""
    refresh_due: float = 0.0


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of the login form: the authorization request and the form's token."""
    fields: dict[str, str] = {}
    for tag in INPUT_TAG.findall(page):
        attributes = {name.lower(): html.unescape(value) for name, value in ATTRIBUTE.findall(tag)}
        if attributes.get("type", "").lower() == "hidden" and "name" in attributes:
            fields[attributes["name"]] = attributes.get("value", "")
    return fields


def _limits_hint(response: Response, what: str) -> SetupError:
    retry = response.headers.get("retry-after", "?")
    return SetupError(
        f"{what} answered 429 (rate limited, Retry-After {retry} s): the server's sign-in and "
        "token limits are on. Load tests need SCOREBOARD_LIMITS_ENABLED=false on the server."
    )


class SignIn:
    """Registration and the OAuth flow against one server, over one keep-alive connection."""

    def __init__(self, http: HttpConnection, origin: str, password: str) -> None:
        self.http = http
        self.origin = origin
        self.redirect_uri = f"{origin}/callback"
        self.password = password

    async def register(self, account: Account) -> bool:
        """True when the user was created, False when it exists already (it is reused)."""
        response = await self.http.post_json(
            "/api/v1/users",
            {
                "username": account.username,
                "email": f"{account.username}@loadtest.example.com",
                "password": self.password,
            },
        )
        if response.status == 201:
            account.user_id = int(response.json()["user_id"])
            return True
        if response.status == 409:
            return False
        if response.status == 429:
            raise _limits_hint(response, "POST /api/v1/users")
        raise SetupError(
            f"POST /api/v1/users for {account.username}: {response.status} "
            f"{response.body[:200].decode(errors='replace')}"
        )

    async def sign_in(self, account: Account) -> None:
        """The authorization code flow with PKCE, through the login form."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": WEB_CLIENT,
                "redirect_uri": self.redirect_uri,
                "scope": SCOPE,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        form_page = await self.http.get(f"/api/v1/oauth/authorize?{query}")
        if form_page.status != 200:
            raise SetupError(
                f"GET /api/v1/oauth/authorize: {form_page.status} (is --origin the server's "
                f"SCOREBOARD_PUBLIC_ORIGIN? the redirect URI sent was {self.redirect_uri})"
            )
        fields = hidden_fields(form_page.body.decode("utf-8", "replace"))
        fields.update(username=account.username, password=self.password)
        answer = await self.http.post_form("/api/v1/oauth/authorize", urlencode(fields))
        if answer.status == 429:
            raise _limits_hint(answer, "the login form")
        if answer.status != 302:
            raise SetupError(
                f"signing in {account.username} answered {answer.status}, not 302: an existing "
                "user with another password? (use another --user-prefix or the --password it has)"
            )
        location = urlsplit(answer.headers.get("location", ""))
        params = {key: values[0] for key, values in parse_qs(location.query).items()}
        if params.get("state") != state or "code" not in params:
            raise SetupError(f"the authorization redirect lacks the code or state: {location}")
        await self._tokens(
            account,
            {
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": self.redirect_uri,
                "client_id": WEB_CLIENT,
                "code_verifier": verifier,
            },
        )

    async def refresh(self, account: Account) -> None:
        await self._tokens(
            account,
            {
                "grant_type": "refresh_token",
                "refresh_token": account.refresh_token,
                "client_id": WEB_CLIENT,
            },
        )

    async def _tokens(self, account: Account, form: dict[str, str]) -> None:
        response = await self.http.post_form("/api/v1/oauth/token", urlencode(form))
        if response.status == 429:
            raise _limits_hint(response, "POST /api/v1/oauth/token")
        if response.status != 200:
            raise SetupError(
                f"POST /api/v1/oauth/token ({form['grant_type']}) for {account.username}: "
                f"{response.status} {response.body[:200].decode(errors='replace')}"
            )
        tokens = response.json()
        account.access_token = tokens["access_token"]
        account.refresh_token = tokens["refresh_token"]
        lifetime_s = float(tokens.get("expires_in", 900))
        account.refresh_due = time.monotonic() + lifetime_s * REFRESH_AT_FRACTION
        if not account.user_id:
            account.user_id = int(jwt_subject(account.access_token))


def jwt_subject(token: str) -> str:
    """The `sub` claim of an access token (RFC 9068 says it is the user's id), unverified: the
    load test only needs to know which user a token belongs to."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])
